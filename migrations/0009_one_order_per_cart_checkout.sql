-- One cart never ends in two orders (DESIGN §4, invariant 4: one live checkout per cart).
-- The cart's lock in Redis keeps a second checkout from starting while one is live; a lock
-- lost (deleted, a Redis restored without it) let a second session start beside the
-- first, and both could be paid. PostgreSQL, the record of truth, now refuses the order of
-- a session whose cart has been ordered since that session's payment intent was created
-- (its checkout_sessions row): the later order of the two is refused and its payment
-- refunded, whichever session is paid first. Legitimately no other order of a cart can
-- come in that window: the session holds the cart's lock from its start to its end.
--
-- One row per cart ever ordered: its latest order's session and when it was written. The
-- order's statement claims the row (an upsert, so two orders of one cart at once are
-- serialised on it).
CREATE TABLE cart_orders (
    cart_ref             text PRIMARY KEY,
    checkout_session_id  text NOT NULL,
    ordered_at           timestamptz NOT NULL
);

INSERT INTO cart_orders (cart_ref, checkout_session_id, ordered_at)
SELECT DISTINCT ON (cart_ref) cart_ref, checkout_session_id, created_at
FROM orders
ORDER BY cart_ref, created_at DESC;
