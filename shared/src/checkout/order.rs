//! The order in PostgreSQL: written once per checkout session, in one statement with its
//! lines and the stock it takes (DESIGN §4: PostgreSQL first, then Redis).

use serde_json::{Value, json};

use crate::error::{Error, PortError, Result};
use crate::ids::{Quantity, VariantId};
use crate::inventory::StockChange;
use crate::outbox;
use crate::ports::{Sql, SqlValue};

/// Inserts the order (nothing if the session already has one: the unique
/// `checkout_session_id`), its lines, and decrements on-hand per variant, returning each
/// stock change. The decrement reads the previous on-hand of the very row version it
/// updates (locking subquery), so the change is exact under concurrent updates; on-hand
/// never goes below zero.
const WRITE_ORDER: &str = "\
WITH ins AS (
    INSERT INTO orders (id, checkout_session_id, state_version, cart_ref, customer_id, currency,
                        subtotal_minor, discount_total_minor, total_minor, payment_intent_id,
                        pricing_version, discount_version, quote)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::text::jsonb)
    ON CONFLICT (checkout_session_id) DO NOTHING
    RETURNING id
), lines AS (
    INSERT INTO order_lines (order_id, line_id, variant_id, bundle_id, quantity, unit_price_minor,
                             line_total_minor, discount_minor, definition)
    SELECT ins.id, l.line_id, l.variant_id, l.bundle_id, l.quantity, l.unit_price, l.line_total,
           l.discount, l.definition
    FROM ins, jsonb_to_recordset($14::text::jsonb)
        AS l(line_id text, variant_id text, bundle_id text, quantity bigint, unit_price bigint,
             line_total bigint, discount bigint, definition jsonb)
), stock AS (
    UPDATE inventory_levels lv
    SET on_hand = GREATEST(prev.on_hand - prev.quantity, 0), version = lv.version + 1, updated_at = now()
    FROM (SELECT i.variant_id, i.on_hand, d.quantity
          FROM ins, jsonb_to_recordset($15::text::jsonb) AS d(variant_id text, quantity bigint)
          JOIN inventory_levels i ON i.variant_id = d.variant_id
          FOR UPDATE OF i) prev
    WHERE lv.variant_id = prev.variant_id
    RETURNING lv.variant_id, prev.quantity, lv.on_hand - prev.on_hand AS delta, lv.on_hand, lv.version
), changes AS (
    INSERT INTO order_stock_changes (order_id, variant_id, quantity, delta, on_hand_after, version)
    SELECT ins.id, s.variant_id, s.quantity, s.delta, s.on_hand, s.version FROM ins, stock s
    RETURNING variant_id, delta, on_hand_after, version
)
SELECT variant_id, delta, on_hand_after, version FROM changes";

/// The stock changes an existing order made (a retry mirrors the same ones).
const ORDER_CHANGES: &str = "\
SELECT c.variant_id, c.delta, c.on_hand_after, c.version
FROM order_stock_changes c JOIN orders o ON o.id = c.order_id
WHERE o.checkout_session_id = $1 ORDER BY c.variant_id";

const ORDER_ID: &str = "SELECT id, state_version FROM orders WHERE checkout_session_id = $1";

/// Everything the order row holds.
pub struct NewOrder<'a> {
    /// `ord_…`.
    pub id: &'a str,
    /// The checkout session.
    pub session: &'a str,
    /// The session's state version at payment confirmation (the fence).
    pub state_version: i64,
    /// `session:<cart>` or `customer:<id>`.
    pub cart_ref: &'a str,
    /// The customer, for a customer's cart.
    pub customer: Option<&'a str>,
    /// The frozen quote (with versions).
    pub quote: &'a Value,
    /// Line definitions by line id.
    pub definitions: &'a Value,
    /// Units per variant taken from stock.
    pub demand: &'a [(VariantId, Quantity)],
    /// The confirmed payment intent.
    pub payment_intent: &'a str,
}

/// Writes the order, or finds the one already written for the session; returns its stock
/// changes either way.
pub async fn write(sql: &impl Sql, order: &NewOrder<'_>) -> Result<Vec<StockChange>> {
    let q = order.quote;
    let int = |v: &Value, what: &str| {
        v.as_i64()
            .ok_or_else(|| Error::Internal(format!("frozen quote lacks {what}")))
    };
    let lines: Vec<Value> = q["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let id = l["lineId"].as_str().unwrap_or_default();
            let definition = &order.definitions[id];
            let discount: i64 = l["discounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["amount"].as_i64())
                .sum();
            json!({
                "line_id": id,
                "variant_id": definition["variantId"],
                "bundle_id": definition["bundleId"],
                "quantity": l["quantity"],
                "unit_price": l["unitPrice"],
                "line_total": l["lineTotal"],
                "discount": discount,
                "definition": definition,
            })
        })
        .collect();
    let demand: Vec<Value> = order
        .demand
        .iter()
        .map(|(v, q)| json!({"variant_id": v.as_str(), "quantity": q.get()}))
        .collect();
    let params = [
        SqlValue::Text(order.id.to_owned()),
        SqlValue::Text(order.session.to_owned()),
        SqlValue::Int(order.state_version),
        SqlValue::Text(order.cart_ref.to_owned()),
        order
            .customer
            .map_or(SqlValue::Null, |c| SqlValue::Text(c.to_owned())),
        SqlValue::Text(q["currency"].as_str().unwrap_or_default().to_owned()),
        SqlValue::Int(int(&q["subtotal"], "subtotal")?),
        SqlValue::Int(int(&q["discountTotal"], "discountTotal")?),
        SqlValue::Int(int(&q["total"], "total")?),
        SqlValue::Text(order.payment_intent.to_owned()),
        SqlValue::Int(int(&q["versions"]["pricing"], "versions")?),
        SqlValue::Int(int(&q["versions"]["discounts"], "versions")?),
        SqlValue::Text(q.to_string()),
        SqlValue::Text(Value::Array(lines).to_string()),
        SqlValue::Text(Value::Array(demand).to_string()),
    ];
    let rows = sql.query(WRITE_ORDER, &params).await.map_err(PortError::sql)?;
    if !rows.is_empty() {
        return parse_changes(&rows);
    }
    changes_of(sql, order.session).await
}

/// The stock changes of the session's order (empty if it has none).
pub async fn changes_of(sql: &impl Sql, session: &str) -> Result<Vec<StockChange>> {
    let rows = sql
        .query(ORDER_CHANGES, &[SqlValue::Text(session.to_owned())])
        .await
        .map_err(PortError::sql)?;
    parse_changes(&rows)
}

/// The id and fencing version of the session's order, if written.
pub async fn find(sql: &impl Sql, session: &str) -> Result<Option<(String, i64)>> {
    let rows = sql
        .query(ORDER_ID, &[SqlValue::Text(session.to_owned())])
        .await
        .map_err(PortError::sql)?;
    Ok(rows
        .first()
        .and_then(|r| Some((r.first()?.as_text()?.to_owned(), r.get(1)?.as_int()?))))
}

/// Records a payment that must be given back: a refund in the payment outbox, keyed by its
/// intent (see [`outbox::enqueue_refund`]); sending it is the outbox's job.
pub async fn flag_refund(
    sql: &impl Sql,
    session: &str,
    intent: &str,
    amount: i64,
    currency: &str,
    reason: &str,
) -> Result<()> {
    outbox::enqueue_refund(sql, session, intent, amount, currency, reason).await
}

fn parse_changes(rows: &[Vec<SqlValue>]) -> Result<Vec<StockChange>> {
    rows.iter()
        .map(|r| {
            let variant = r
                .first()
                .and_then(SqlValue::as_text)
                .and_then(|v| VariantId::parse(v).ok());
            match (
                variant,
                r.get(1).and_then(SqlValue::as_int),
                r.get(2).and_then(SqlValue::as_int),
                r.get(3).and_then(SqlValue::as_int),
            ) {
                (Some(variant), Some(delta), Some(on_hand), Some(version)) => Ok(StockChange {
                    variant,
                    delta,
                    on_hand,
                    version,
                }),
                _ => Err(Error::Internal(format!("unexpected stock change row: {r:?}"))),
            }
        })
        .collect()
}
