-- Money that leaves the shop: refunds owed and payment intents to cancel, kept as an outbox
-- in PostgreSQL and sent to the gateway until it gives a final answer (DESIGN §4,
-- invariant 6). One row per (kind, payment intent): a second mismatched payment for the
-- same session is another intent and gets its own refund; the same intent twice is one.
--
-- state: 'pending' (owed; sent when next_attempt_at is reached), 'sent' (the gateway
-- accepted it, or had already done it), 'refused' (the gateway said no for good, e.g.
-- nothing left to refund or an intent that succeeded before it could be cancelled; kept
-- and listed, with the reason in last_error, for a person to look at).
-- attempts counts claims by a drainer; a claim also pushes next_attempt_at forward by a
-- short lease, so a drainer that dies mid-send leaves the row due again, not lost.

CREATE TABLE payment_outbox (
    kind                 text NOT NULL CHECK (kind IN ('refund', 'cancel_intent')),
    payment_intent_id    text NOT NULL CHECK (payment_intent_id <> ''),
    checkout_session_id  text NOT NULL,
    -- Refunds only: what goes back, in minor units of currency.
    amount_minor         bigint CHECK (amount_minor >= 0),
    currency             text CHECK (currency ~ '^[A-Z]{3}$'),
    reason               text NOT NULL,
    state                text NOT NULL DEFAULT 'pending'
                         CHECK (state IN ('pending', 'sent', 'refused')),
    attempts             bigint NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    last_error           text,
    -- The gateway's id of what it did (the refund `re_…`), when it names one.
    gateway_object_id    text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    -- When the gateway gave its final answer (sent or refused).
    sent_at              timestamptz,
    PRIMARY KEY (kind, payment_intent_id),
    CHECK ((kind = 'refund') = (amount_minor IS NOT NULL AND currency IS NOT NULL))
);
-- Drainers take the oldest due rows first; the admin list reads newest first.
CREATE INDEX payment_outbox_pending ON payment_outbox (created_at) WHERE state = 'pending';
CREATE INDEX payment_outbox_created ON payment_outbox (created_at);

-- The refunds flagged before the outbox existed were never sent: they become pending
-- refunds, keyed by their intent, and go out at the first drain.
INSERT INTO payment_outbox (kind, payment_intent_id, checkout_session_id, amount_minor, currency,
                            reason, created_at)
SELECT 'refund', payment_intent_id, checkout_session_id, amount_minor, currency::text, reason,
       created_at
FROM payment_refunds_due
ORDER BY created_at
ON CONFLICT (kind, payment_intent_id) DO NOTHING;

-- Dropped rather than kept as a view: its one-row-per-session shape is the bug this table
-- fixes, and nothing should go on reading or writing it.
DROP TABLE payment_refunds_due;
