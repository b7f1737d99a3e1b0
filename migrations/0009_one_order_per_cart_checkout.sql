-- One cart never ends in two orders (DESIGN §4, invariant 4: one live checkout per cart).
-- The cart's lock in Redis keeps a second checkout from starting while one is live; a lock
-- lost (deleted, a Redis restored without it) let a second session start beside the
-- first, and both could be paid. PostgreSQL, the record of truth, now counts the orders of
-- each cart (cart_orders) and refuses an order that is not the next one the session
-- expected: a session notes the cart's count when its payment intent is created
-- (checkout_sessions.cart_orders_seen), and its order is a compare-and-set on that count.
-- Whichever of two sessions of one cart is paid second is refused and its payment
-- refunded; two orders at once are serialised on the cart's row.
--
-- A cart is counted per life of its key (cart_generation: when the cart was created, epoch
-- ms, Redis clock): a customer's cart lost with Redis and built again under the same key is
-- another cart, so a session paid before the loss is not refused for what was ordered
-- from the new one.
CREATE TABLE cart_orders (
    cart_ref             text NOT NULL,
    cart_generation      bigint NOT NULL,
    orders               bigint NOT NULL CHECK (orders > 0),
    checkout_session_id  text NOT NULL,
    PRIMARY KEY (cart_ref, cart_generation)
);

ALTER TABLE checkout_sessions
    ADD COLUMN cart_generation bigint NOT NULL DEFAULT 0,
    ADD COLUMN cart_orders_seen bigint NOT NULL DEFAULT 0;

-- The orders already written, counted as one life of each cart (generation 0, which the
-- sessions saved before this migration have too).
INSERT INTO cart_orders (cart_ref, cart_generation, orders, checkout_session_id)
SELECT DISTINCT ON (cart_ref) cart_ref, 0,
       count(*) OVER (PARTITION BY cart_ref), checkout_session_id
FROM orders
ORDER BY cart_ref, created_at DESC;

UPDATE checkout_sessions s
SET cart_orders_seen = c.orders
FROM cart_orders c
WHERE s.ended_at IS NULL AND c.cart_ref = s.cart_ref AND c.cart_generation = 0;
