-- Bundles: a bundle is sold as one line; the customer chooses, for each of its sets,
-- exactly `choose` distinct variants among the set's eligible ones. Priced either at a
-- fixed price or at a percentage off the sum of the chosen parts (basis points).

CREATE TABLE bundles (
    id                 text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    name               text NOT NULL,
    pricing_kind       text NOT NULL CHECK (pricing_kind IN ('fixed', 'percent_off')),
    fixed_price_minor  bigint CHECK (fixed_price_minor >= 0),
    currency           char(3) CHECK (currency ~ '^[A-Z]{3}$'),
    percent_off_bp     bigint CHECK (percent_off_bp BETWEEN 0 AND 10000),
    active             boolean NOT NULL DEFAULT true,
    CHECK ((pricing_kind = 'fixed' AND fixed_price_minor IS NOT NULL AND currency IS NOT NULL)
        OR (pricing_kind = 'percent_off' AND percent_off_bp IS NOT NULL))
);

CREATE TABLE bundle_sets (
    bundle_id  text NOT NULL REFERENCES bundles (id) ON DELETE CASCADE,
    set_id     text NOT NULL CHECK (set_id ~ '^[A-Za-z0-9_-]{1,64}$'),
    choose     bigint NOT NULL CHECK (choose BETWEEN 1 AND 100),
    position   bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (bundle_id, set_id)
);

CREATE TABLE bundle_set_variants (
    bundle_id   text NOT NULL,
    set_id      text NOT NULL,
    variant_id  text NOT NULL REFERENCES variants (id),
    PRIMARY KEY (bundle_id, set_id, variant_id),
    FOREIGN KEY (bundle_id, set_id) REFERENCES bundle_sets (bundle_id, set_id) ON DELETE CASCADE
);
