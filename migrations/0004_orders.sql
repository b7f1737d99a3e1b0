-- Orders: one per checkout session, whatever is retried or duplicated (the unique
-- checkout_session_id), written in one statement with their lines and the stock they
-- take. state_version is the session's state version when the payment was confirmed: the
-- fence that ties the order to that exact step.

CREATE TABLE orders (
    id                    text PRIMARY KEY,
    checkout_session_id   text NOT NULL UNIQUE,
    state_version         bigint NOT NULL,
    cart_ref              text NOT NULL,
    customer_id           text,
    currency              char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    subtotal_minor        bigint NOT NULL CHECK (subtotal_minor >= 0),
    discount_total_minor  bigint NOT NULL CHECK (discount_total_minor >= 0),
    total_minor           bigint NOT NULL CHECK (total_minor >= 0),
    payment_intent_id     text NOT NULL,
    pricing_version       bigint NOT NULL,
    discount_version      bigint NOT NULL,
    quote                 jsonb NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE order_lines (
    order_id          text NOT NULL REFERENCES orders (id),
    line_id           text NOT NULL,
    variant_id        text REFERENCES variants (id),
    bundle_id         text REFERENCES bundles (id),
    quantity          bigint NOT NULL CHECK (quantity > 0),
    unit_price_minor  bigint NOT NULL CHECK (unit_price_minor >= 0),
    line_total_minor  bigint NOT NULL CHECK (line_total_minor >= 0),
    discount_minor    bigint NOT NULL CHECK (discount_minor >= 0),
    definition        jsonb NOT NULL,
    PRIMARY KEY (order_id, line_id)
);

-- What the order took from stock, per variant (bundle parts included): the change to
-- mirror into Redis, kept so that a retry after a crash mirrors the same change.
CREATE TABLE order_stock_changes (
    order_id       text NOT NULL REFERENCES orders (id),
    variant_id     text NOT NULL REFERENCES variants (id),
    quantity       bigint NOT NULL,
    delta          bigint NOT NULL,
    on_hand_after  bigint NOT NULL,
    version        bigint NOT NULL,
    PRIMARY KEY (order_id, variant_id)
);

-- Payments that arrived for a session that could no longer be sold.
CREATE TABLE payment_refunds_due (
    checkout_session_id  text PRIMARY KEY,
    payment_intent_id    text NOT NULL,
    amount_minor         bigint NOT NULL,
    currency             char(3) NOT NULL,
    reason               text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now()
);
