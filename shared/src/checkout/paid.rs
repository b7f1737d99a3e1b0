//! Paid sessions in PostgreSQL: from the moment its payment intent exists, a session (its
//! frozen lines and totals, intent and deadline) is also kept in PostgreSQL, so a Redis loss
//! loses no paid checkout (DESIGN §4, invariant 8). The inventory's lazy load and reconcile
//! put the holds of live ones back (see `inventory::LEVELS_OF`); a webhook for a session
//! Redis forgot completes it from here.

use serde_json::Value;

use crate::error::{Error, Result};
use crate::ids::{Quantity, VariantId};
use crate::ports::{Sql, SqlValue};
use crate::pricing::money::{Currency, Money};

/// Saves (or, for a retry, moves the deadlines of) a paid session and its held lines, in
/// one statement. An ended session is left as it is.
const SAVE: &str = "\
WITH s AS (
    INSERT INTO checkout_sessions (id, cart_ref, customer_id, total_minor, currency, payment_intent_id,
                                   intent, deadline_ms, holds_deadline_ms, metadata)
    VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb, $8, $9, $10::text::jsonb)
    ON CONFLICT (id) DO UPDATE
        SET deadline_ms = EXCLUDED.deadline_ms, holds_deadline_ms = EXCLUDED.holds_deadline_ms
        WHERE checkout_sessions.ended_at IS NULL
    RETURNING id
)
INSERT INTO checkout_session_lines (session_id, variant_id, quantity)
SELECT s.id, d.variant_id, d.quantity
FROM s, jsonb_to_recordset($11::text::jsonb) AS d(variant_id text, quantity bigint)
ON CONFLICT (session_id, variant_id) DO NOTHING";

/// Marks a paid session ended without an order (its holds are no longer put back).
const END: &str = "\
UPDATE checkout_sessions SET ended_state = $2, ended_at = now() WHERE id = $1 AND ended_at IS NULL";

/// Its release ran whole (holds and lock freed, intent cancelled where it had to be).
const RELEASED: &str = "\
UPDATE checkout_sessions SET released_at = now() WHERE id = $1 AND ended_at IS NOT NULL AND released_at IS NULL";

/// A paid session as kept.
const LOAD: &str = "\
SELECT cart_ref, total_minor, currency, payment_intent_id, intent::text, deadline_ms, metadata::text,
       COALESCE(ended_state, ''),
       COALESCE((SELECT o.id FROM orders o WHERE o.checkout_session_id = checkout_sessions.id), '')
FROM checkout_sessions WHERE id = $1";

/// What is kept of a paid session.
#[derive(Debug, Clone)]
pub struct PaidSession<'a> {
    /// The session id.
    pub id: &'a str,
    /// `session:<cart>` or `customer:<id>`.
    pub cart_ref: &'a str,
    /// The customer, for a customer's cart.
    pub customer: Option<&'a str>,
    /// The frozen total.
    pub total: Money,
    /// The intent's id.
    pub intent_id: &'a str,
    /// The intent as the payment-intent route answers it (JSON).
    pub intent: &'a Value,
    /// Until when payment is accepted (epoch ms, Redis clock).
    pub deadline_ms: i64,
    /// Until when its holds last.
    pub holds_deadline_ms: i64,
    /// The frozen quote, definitions and demand.
    pub metadata: &'a Value,
    /// Units per variant it holds.
    pub demand: &'a [(VariantId, Quantity)],
}

/// Saves a paid session (idempotent; a retry moves the deadlines of a live one).
pub async fn save(sql: &impl Sql, session: &PaidSession<'_>) -> Result<()> {
    let demand: Vec<Value> = session
        .demand
        .iter()
        .map(|(v, q)| serde_json::json!({ "variant_id": v.as_str(), "quantity": q.get() }))
        .collect();
    let params = [
        SqlValue::Text(session.id.to_owned()),
        SqlValue::Text(session.cart_ref.to_owned()),
        session
            .customer
            .map_or(SqlValue::Null, |c| SqlValue::Text(c.to_owned())),
        SqlValue::Int(session.total.minor),
        SqlValue::Text(session.total.currency.to_string()),
        SqlValue::Text(session.intent_id.to_owned()),
        SqlValue::Text(session.intent.to_string()),
        SqlValue::Int(session.deadline_ms),
        SqlValue::Int(session.holds_deadline_ms),
        SqlValue::Text(session.metadata.to_string()),
        SqlValue::Text(Value::Array(demand).to_string()),
    ];
    match sql.execute(SAVE, &params).await {
        Ok(_) => Ok(()),
        // A variant deleted from the catalog since the session froze it (no line may name
        // it): the 422 naming what is gone, not a 500.
        Err(e) if e.is_sqlstate("23503") => {
            let ids: Vec<String> = session.demand.iter().map(|(v, _)| v.to_string()).collect();
            let missing: Vec<String> = crate::catalog::missing(sql, ids)
                .await?
                .iter()
                .map(ToString::to_string)
                .collect();
            if missing.is_empty() {
                return Err(e.into());
            }
            Err(crate::catalog::unknown_variants(&missing))
        }
        Err(e) => Err(e.into()),
    }
}

/// Marks a paid session ended as `state` (CANCELLED, EXPIRED, FAILED); nothing if it was
/// never paid for or has ended already.
pub async fn end(sql: &impl Sql, session: &str, state: &str) -> Result<()> {
    sql.execute(
        END,
        &[
            SqlValue::Text(session.to_owned()),
            SqlValue::Text(state.to_owned()),
        ],
    )
    .await?;
    Ok(())
}

/// Records that the ended session `session`'s release ran whole: the sweep no longer
/// meets it ([`crate::checkout`]'s `CUT_SHORT`).
pub async fn released(sql: &impl Sql, session: &str) -> Result<()> {
    sql.execute(RELEASED, &[SqlValue::Text(session.to_owned())])
        .await?;
    Ok(())
}

/// A kept paid session, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    /// `session:<cart>` or `customer:<id>`.
    pub cart_ref: String,
    /// The frozen total.
    pub total: Money,
    /// The intent's id.
    pub intent_id: String,
    /// The intent (JSON text).
    pub intent: String,
    /// Until when payment is accepted.
    pub deadline_ms: i64,
    /// The frozen quote, definitions and demand (JSON text).
    pub metadata: String,
    /// How it ended without an order, if it did.
    pub ended_state: Option<String>,
    /// Its order, once written (then it is over, whatever Redis remembers).
    pub order: Option<String>,
}

impl Kept {
    /// Whether the session may still take its payment and its holds still count.
    pub fn is_live(&self) -> bool {
        self.ended_state.is_none() && self.order.is_none()
    }
}

/// Reads a kept paid session.
pub async fn load(sql: &impl Sql, session: &str) -> Result<Option<Kept>> {
    let rows = sql.query(LOAD, &[SqlValue::Text(session.to_owned())]).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let bad = || Error::Internal(format!("malformed paid session row {session}"));
    let text = |i: usize| {
        row.get(i)
            .and_then(SqlValue::as_text)
            .map(str::to_owned)
            .ok_or_else(bad)
    };
    let int = |i: usize| row.get(i).and_then(SqlValue::as_int).ok_or_else(bad);
    let ended = text(7)?;
    let order = text(8)?;
    Ok(Some(Kept {
        cart_ref: text(0)?,
        total: Money::new(int(1)?, Currency::parse(text(2)?.trim()).map_err(|_| bad())?),
        intent_id: text(3)?,
        intent: text(4)?,
        deadline_ms: int(5)?,
        metadata: text(6)?,
        ended_state: (!ended.is_empty()).then_some(ended),
        order: (!order.is_empty()).then_some(order),
    }))
}
