-- A per-order purchase limit per variant (flash sales): no one holder (a checkout session,
-- a trusted caller's reservation) may hold more than max_per_order units of the variant.
-- NULL: no limit. A change bumps the row's version, like a change of on_hand, so the
-- limit is mirrored into Redis with the stock, exactly once and in order.
ALTER TABLE inventory_levels
    ADD COLUMN max_per_order bigint CHECK (max_per_order > 0);
