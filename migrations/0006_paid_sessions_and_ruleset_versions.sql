-- Paid checkout sessions and ruleset version numbers: what PostgreSQL keeps so that a
-- Redis loss loses no paid checkout and never reuses a ruleset version (DESIGN §4,
-- invariant 8).

-- A checkout session from the moment its payment intent exists: the frozen quote, line
-- definitions and demand, the intent, and the one deadline (Redis clock, epoch ms) that
-- governs payment; its holds last until holds_deadline_ms. ended_state is set when it ends
-- without an order (CANCELLED, EXPIRED, FAILED); a session with an order is done.
CREATE TABLE checkout_sessions (
    id                 text PRIMARY KEY,
    cart_ref           text NOT NULL,
    customer_id        text,
    total_minor        bigint NOT NULL CHECK (total_minor >= 0),
    currency           char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    payment_intent_id  text NOT NULL,
    intent             jsonb NOT NULL,
    deadline_ms        bigint NOT NULL,
    holds_deadline_ms  bigint NOT NULL CHECK (holds_deadline_ms >= deadline_ms),
    metadata           jsonb NOT NULL,
    ended_state        text CHECK (ended_state IN ('CANCELLED', 'EXPIRED', 'FAILED')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    ended_at           timestamptz
);
CREATE INDEX checkout_sessions_live ON checkout_sessions (holds_deadline_ms) WHERE ended_at IS NULL;

-- The units per variant a paid session holds, for putting its holds back on a lazy load.
CREATE TABLE checkout_session_lines (
    session_id  text NOT NULL REFERENCES checkout_sessions (id),
    variant_id  text NOT NULL REFERENCES variants (id),
    quantity    bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (session_id, variant_id)
);
CREATE INDEX checkout_session_lines_variant_id ON checkout_session_lines (variant_id);

-- The last ruleset version number handed out per kind ('pricing', 'discount'): numbers
-- only grow, so a republish after a Redis loss never reuses one.
CREATE TABLE ruleset_versions (
    kind     text PRIMARY KEY CHECK (kind IN ('pricing', 'discount')),
    version  bigint NOT NULL CHECK (version > 0)
);

-- Orders refused because on-hand could not cover them (never clamped): counted for
-- /metrics and `commerce check`.
CREATE TABLE orders_refused (
    checkout_session_id  text PRIMARY KEY,
    payment_intent_id    text NOT NULL,
    shortages            jsonb NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now()
);
