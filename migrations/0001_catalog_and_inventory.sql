-- Catalog and stock on hand: the record of truth that Redis mirrors.
-- Money is integer minor units beside an ISO 4217 currency code; never a float.

CREATE TABLE products (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE variants (
    id                text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    product_id        text NOT NULL REFERENCES products (id),
    sku               text NOT NULL UNIQUE,
    name              text NOT NULL,
    base_price_minor  bigint NOT NULL CHECK (base_price_minor >= 0),
    currency          char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX variants_product_id ON variants (product_id);

-- `version` grows by one with every change of on_hand; Redis records which versions its
-- stock reflects, so each committed change is mirrored exactly once.
CREATE TABLE inventory_levels (
    variant_id  text PRIMARY KEY REFERENCES variants (id),
    on_hand     bigint NOT NULL CHECK (on_hand >= 0),
    version     bigint NOT NULL DEFAULT 1,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
