-- One cart never ends in two orders, held by the orders themselves. An order records the
-- cart it was made of as its session froze it: which life of the cart's key
-- (cart_generation: the cart's `created`, epoch ms, Redis clock), its version then, and the
-- units per variant it held (cart_demand, as frozen). The same frozen cart ordered twice
-- (two sessions that froze it, the second let in by a lost lock) is refused by the unique
-- index, whichever is paid first and however long either order takes to be written. A
-- cart changed since (a newer version, other lines) or built again after a Redis loss is
-- another cart. Orders of sessions that froze no version (older ones) are not compared.
--
-- It replaces 0009's cart_orders (the newest version ordered per cart): a version alone
-- refused carts whose versions a restored backup had rewound, though their lines were new.
ALTER TABLE orders
    ADD COLUMN cart_generation bigint,
    ADD COLUMN cart_version bigint,
    ADD COLUMN cart_demand text;

CREATE UNIQUE INDEX orders_one_per_frozen_cart
    ON orders (cart_ref, cart_generation, cart_version, cart_demand);

DROP TABLE cart_orders;
