-- One cart never ends in two orders (DESIGN §4, invariant 4: one live checkout per cart).
-- The cart's lock in Redis keeps a second checkout from starting while one is live; a lock
-- lost (deleted, a Redis restored without it) let a second session start beside the
-- first, and both could be paid. PostgreSQL, the record of truth, now keeps per cart the
-- newest cart version an order was made of (the version its session froze when it locked
-- the cart), and refuses an order of a version not newer than that: two sessions that
-- froze the same cart (the second one let in by the lost lock) cannot both be ordered,
-- whichever is paid first and however long either order takes to be written. A cart's
-- versions only grow, and an order moves its cart's version on (emptied), so a checkout
-- that follows an order always freezes a newer one.
--
-- Versions are counted per life of the cart's key (cart_generation: when the cart was
-- created, epoch ms, Redis clock): a customer's cart lost with Redis and built again under
-- the same key starts its versions again, and is another cart.
CREATE TABLE cart_orders (
    cart_ref             text NOT NULL,
    cart_generation      bigint NOT NULL,
    cart_version         bigint NOT NULL,
    checkout_session_id  text NOT NULL,
    PRIMARY KEY (cart_ref, cart_generation)
);
