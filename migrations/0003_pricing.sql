-- Price lists and discounts: the rules a quote applies. They reach Redis only through a
-- publish, which builds a new ruleset version and switches to it atomically.

CREATE TABLE price_lists (
    id              text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    currency        char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- NULL: the list applies to every customer (after the group's own lists).
    customer_group  text CHECK (customer_group ~ '^[A-Za-z0-9_-]{1,64}$'),
    parent_id       text REFERENCES price_lists (id),
    priority        bigint NOT NULL DEFAULT 0,
    CHECK (parent_id IS NULL OR parent_id <> id)
);

-- Quantity breaks: the entry with the highest min_quantity reached applies.
CREATE TABLE price_list_entries (
    price_list_id     text NOT NULL REFERENCES price_lists (id) ON DELETE CASCADE,
    variant_id        text NOT NULL REFERENCES variants (id),
    min_quantity      bigint NOT NULL DEFAULT 1 CHECK (min_quantity BETWEEN 1 AND 100000),
    unit_price_minor  bigint NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (price_list_id, variant_id, min_quantity)
);
CREATE INDEX price_list_entries_variant_id ON price_list_entries (variant_id);

CREATE TABLE discounts (
    id               text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    kind             text NOT NULL CHECK (kind IN ('percentage', 'fixed')),
    basis_points     bigint CHECK (basis_points BETWEEN 0 AND 10000),
    amount_minor     bigint CHECK (amount_minor >= 0),
    currency         char(3) CHECK (currency ~ '^[A-Z]{3}$'),
    -- variants: the variants in discount_variants; bundles: those in discount_bundles;
    -- order: the order once, when its subtotal reaches threshold_minor.
    target           text NOT NULL CHECK (target IN ('variants', 'order', 'bundles')),
    threshold_minor  bigint NOT NULL DEFAULT 0 CHECK (threshold_minor >= 0),
    priority         bigint NOT NULL DEFAULT 0,
    exclusive        boolean NOT NULL DEFAULT false,
    starts_at        timestamptz,
    ends_at          timestamptz,
    active           boolean NOT NULL DEFAULT true,
    CHECK ((kind = 'percentage' AND basis_points IS NOT NULL)
        OR (kind = 'fixed' AND amount_minor IS NOT NULL AND currency IS NOT NULL)),
    CHECK (starts_at IS NULL OR ends_at IS NULL OR starts_at < ends_at)
);

CREATE TABLE discount_variants (
    discount_id  text NOT NULL REFERENCES discounts (id) ON DELETE CASCADE,
    variant_id   text NOT NULL REFERENCES variants (id),
    PRIMARY KEY (discount_id, variant_id)
);
CREATE INDEX discount_variants_variant_id ON discount_variants (variant_id);

CREATE TABLE discount_bundles (
    discount_id  text NOT NULL REFERENCES discounts (id) ON DELETE CASCADE,
    bundle_id    text NOT NULL REFERENCES bundles (id),
    PRIMARY KEY (discount_id, bundle_id)
);
