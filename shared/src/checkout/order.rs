//! The order in PostgreSQL: written once per checkout session, in one statement with its
//! lines and the stock it takes (DESIGN §4: PostgreSQL first, then Redis).

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::ids::{Quantity, VariantId};
use crate::inventory::StockChange;
use crate::metrics::{self, Event};
use crate::ports::{Sql, SqlValue};

/// Inserts the order (nothing if the session already has one: the unique
/// `checkout_session_id`), its lines, and decrements on-hand per variant, returning each
/// stock change. The demanded rows are locked first (`FOR UPDATE`, in variant order, so two
/// orders never deadlock) and re-read at their latest committed version, so the change is
/// exact under concurrent orders; and the order is written only if on-hand covers every
/// line: PostgreSQL refuses what it cannot cover, never clamps (DESIGN §4, invariant 1).
/// The CHECK (on_hand >= 0) stands behind it. One cart never ends in two orders: the order
/// records the cart as its session froze it (life, version, lines), and a unique index
/// refuses the same frozen cart ordered twice (a second checkout of it, let in by a lost
/// lock), whichever is paid first; two such orders at once are serialised on the index.
/// The paid session ends with its order (`ended_at`; `ended_state` stays NULL), so it
/// leaves the live sessions whose holds a stock load puts back. No row: the order exists
/// already, or was refused (see [`write`]).
const WRITE_ORDER: &str = "\
WITH demand AS (
    SELECT d.variant_id, d.quantity FROM jsonb_to_recordset($15::text::jsonb) AS d(variant_id text, quantity bigint)
), prev AS (
    SELECT i.variant_id, i.on_hand, d.quantity
    FROM demand d JOIN inventory_levels i ON i.variant_id = d.variant_id
    ORDER BY i.variant_id
    FOR UPDATE OF i
), covered AS (
    SELECT (SELECT count(*) FROM prev WHERE prev.on_hand >= prev.quantity) = (SELECT count(*) FROM demand) AS ok
), live AS (
    -- The paid session, still live and its holds still standing, read after its row lock
    -- (a refund owed for it ends it first; then no order): an order is never written once
    -- its units may have been held or sold again.
    SELECT cs.id FROM checkout_sessions cs
    WHERE cs.id = $2 AND cs.ended_at IS NULL
      AND cs.holds_deadline_ms > (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    FOR UPDATE
), frozen AS (
    -- frozen_cart_lines($14) of migration 0011, written out: a SQL function with a FROM is
    -- planned at every call: PostgreSQL's CPU per purchase was a quarter higher with it.
    SELECT md5(COALESCE(string_agg(l.definition::text || ' x' || l.quantity, E'\\n'
                                   ORDER BY l.definition::text, l.quantity), '')) AS lines
    FROM jsonb_to_recordset($14::text::jsonb) AS l(definition jsonb, quantity bigint)
), ins AS (
    INSERT INTO orders (id, checkout_session_id, state_version, cart_ref, customer_id, currency,
                        subtotal_minor, discount_total_minor, total_minor, payment_intent_id,
                        pricing_version, discount_version, quote, cart_generation, cart_version,
                        cart_lines)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::text::jsonb, $16, $17,
           frozen.lines
    FROM covered, frozen, live WHERE covered.ok
    ON CONFLICT DO NOTHING
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
    SET on_hand = prev.on_hand - prev.quantity, version = lv.version + 1, updated_at = now()
    FROM ins, prev
    WHERE lv.variant_id = prev.variant_id
    RETURNING lv.variant_id, prev.quantity, lv.on_hand - prev.on_hand AS delta, lv.on_hand, lv.version
), changes AS (
    INSERT INTO order_stock_changes (order_id, variant_id, quantity, delta, on_hand_after, version)
    SELECT ins.id, s.variant_id, s.quantity, s.delta, s.on_hand, s.version FROM ins, stock s
    RETURNING variant_id, on_hand_after, version
), ended AS (
    UPDATE checkout_sessions cs SET ended_at = now()
    FROM ins
    WHERE cs.id = $2 AND cs.ended_at IS NULL
)
SELECT variant_id, on_hand_after, version FROM changes";

/// What on-hand lacks for a demand: `[{variantId, requested, onHand}]` of the short
/// variants, as JSON text (empty array: nothing is short).
const SHORTAGES: &str = "\
SELECT COALESCE(json_agg(json_build_object('variantId', d.variant_id, 'requested', d.quantity,
                                           'onHand', COALESCE(i.on_hand, 0)))::text, '[]')
FROM jsonb_to_recordset($1::text::jsonb) AS d(variant_id text, quantity bigint)
LEFT JOIN inventory_levels i ON i.variant_id = d.variant_id
WHERE COALESCE(i.on_hand, 0) < d.quantity";

/// The session whose order is of the same frozen cart as session `$5`'s (cart `$1`, life
/// `$2`, version `$3`, lines `$4`): the order that refuses `$5`'s.
const SAME_CART_ORDERED: &str = "\
SELECT checkout_session_id FROM orders
WHERE cart_ref = $1 AND cart_generation = $2 AND cart_version = $3
  AND cart_lines = frozen_cart_lines($4::text::jsonb) AND checkout_session_id <> $5";

/// Records an order PostgreSQL refused (once per session).
const RECORD_REFUSAL: &str = "\
INSERT INTO orders_refused (checkout_session_id, payment_intent_id, shortages)
VALUES ($1, $2, $3::text::jsonb) ON CONFLICT (checkout_session_id) DO NOTHING";

/// The stock changes an existing order made (a retry mirrors the same ones).
const ORDER_CHANGES: &str = "\
SELECT c.variant_id, c.on_hand_after, c.version
FROM order_stock_changes c JOIN orders o ON o.id = c.order_id
WHERE o.checkout_session_id = $1 ORDER BY c.variant_id";

const ORDER_ID: &str =
    "SELECT id, state_version, payment_intent_id FROM orders WHERE checkout_session_id = $1";

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
    /// The cart as the session froze it: which life of its key (its `created`) and its
    /// version then (`None` for sessions from before they were kept: not compared).
    pub cart: Option<(i64, i64)>,
}

/// What writing an order came to.
#[derive(Debug)]
pub enum Written {
    /// The order stands (written now or by an earlier attempt): its id, and its stock
    /// changes.
    Placed(String, Vec<StockChange>),
    /// On-hand could not cover it: no order, nothing taken; the shortages as JSON.
    Refused(Value),
    /// Another checkout of the same frozen cart was ordered (the session named): no order,
    /// nothing taken.
    CartOrdered(String),
    /// The paid session had ended (its refund owed) or its holds had, with on-hand enough:
    /// no order, nothing taken, no refusal recorded.
    Lapsed,
}

/// Writes the order, or finds the one already written for the session; returns its stock
/// changes either way. An order that on-hand cannot cover is not written: it is recorded in
/// `orders_refused` and answered [`Written::Refused`]; nor is one of a frozen cart another
/// session's order was already made of ([`Written::CartOrdered`]).
pub async fn write(sql: &impl Sql, order: &NewOrder<'_>) -> Result<Written> {
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
    let demand = Value::Array(demand).to_string();
    let lines = Value::Array(lines).to_string();
    // The frozen cart the unique index compares: its life and version ($16, $17), and its
    // lines ($14, digested as `frozen_cart_lines` does).
    let (generation, version) = match order.cart {
        Some((generation, version)) => (SqlValue::Int(generation), SqlValue::Int(version)),
        None => (SqlValue::Null, SqlValue::Null),
    };
    let params = vec![
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
        SqlValue::Text(lines.clone()),
        SqlValue::Text(demand.clone()),
        generation.clone(),
        version.clone(),
    ];
    let rows = match sql.query(WRITE_ORDER, &params).await {
        Ok(rows) => rows,
        // The CHECK behind the guard (23514): treated as the shortage it is.
        Err(e) if e.is_sqlstate(CHECK_VIOLATION) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if !rows.is_empty() {
        metrics::event(Event::OrderPlaced);
        return Ok(Written::Placed(order.id.to_owned(), parse_changes(&rows)?));
    }
    if let Some((id, _, _)) = find(sql, order.session).await? {
        return Ok(Written::Placed(id, changes_of(sql, order.session).await?));
    }
    if order.cart.is_some()
        && let Some(other) = sql
            .query(
                SAME_CART_ORDERED,
                &[
                    SqlValue::Text(order.cart_ref.to_owned()),
                    generation,
                    version,
                    SqlValue::Text(lines),
                    SqlValue::Text(order.session.to_owned()),
                ],
            )
            .await?
            .first()
    {
        let other = other.first().and_then(SqlValue::as_text).unwrap_or_default();
        return Ok(Written::CartOrdered(other.to_owned()));
    }
    let shortages = sql.query(SHORTAGES, &[SqlValue::Text(demand)]).await?;
    let shortages = shortages
        .first()
        .and_then(|r| r.first()?.as_text())
        .unwrap_or("[]")
        .to_owned();
    if shortages == "[]" {
        // On-hand covers it: the session was not live (see `live` in `WRITE_ORDER`).
        return Ok(Written::Lapsed);
    }
    let recorded = sql
        .execute(
            RECORD_REFUSAL,
            &[
                SqlValue::Text(order.session.to_owned()),
                SqlValue::Text(order.payment_intent.to_owned()),
                SqlValue::Text(shortages.clone()),
            ],
        )
        .await?;
    if recorded > 0 {
        metrics::event(Event::OversellRefused);
    }
    Ok(Written::Refused(
        serde_json::from_str(&shortages).unwrap_or(Value::Null),
    ))
}

/// The stock changes of the session's order (empty if it has none).
pub async fn changes_of(sql: &impl Sql, session: &str) -> Result<Vec<StockChange>> {
    let rows = sql
        .query(ORDER_CHANGES, &[SqlValue::Text(session.to_owned())])
        .await?;
    parse_changes(&rows)
}

/// The id, fencing version and payment intent of the session's order, if written.
pub async fn find(sql: &impl Sql, session: &str) -> Result<Option<(String, i64, String)>> {
    let rows = sql.query(ORDER_ID, &[SqlValue::Text(session.to_owned())]).await?;
    Ok(rows.first().and_then(|r| {
        Some((
            r.first()?.as_text()?.to_owned(),
            r.get(1)?.as_int()?,
            r.get(2)?.as_text()?.to_owned(),
        ))
    }))
}

/// The id of the order of session `session`: `ord_` and 32 hex digits of a digest of the
/// session id, the same at every attempt (one order per session, whatever is retried) and
/// telling nothing of the session, whose id is an anonymous shopper's capability: an order
/// id shown on a receipt gives no way back to the session, nor to its cart.
pub fn id_of(session: &str) -> String {
    let digest = sha1_smol::Sha1::from(format!("order:{session}"))
        .digest()
        .to_string();
    format!("ord_{}", &digest[..32])
}

/// The SQLSTATE of a CHECK constraint's refusal.
const CHECK_VIOLATION: &str = "23514";

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
            ) {
                (Some(variant), Some(on_hand), Some(version)) => Ok(StockChange {
                    variant,
                    on_hand,
                    version,
                }),
                _ => Err(Error::Internal(format!("unexpected stock change row: {r:?}"))),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_id_is_the_same_at_every_attempt_and_tells_nothing_of_its_session() {
        let session = "cs_0c8d5a1e9b7f4c2d8e6a3b1f0d9c7e5a";
        let id = id_of(session);
        assert_eq!(id, id_of(session));
        assert_ne!(id, id_of("cs_0c8d5a1e9b7f4c2d8e6a3b1f0d9c7e5b"));
        assert!(id.starts_with("ord_") && id.len() == 36, "{id}");
        assert!(!id.contains(session.trim_start_matches("cs_")), "{id}");
    }
}
