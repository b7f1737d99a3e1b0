//! The inventory store: stock, holds and reservations (DESIGN §3–§5, invariants 1, 2, 3
//! and 7).
//!
//! Redis decides every sale: each variant keeps its on-hand stock, the sum of its live
//! holds, and its holds in a sorted set by deadline. Every script that reads or changes a
//! variant first drops its expired holds, so an expired hold never blocks a sale.
//! PostgreSQL is the record of on-hand stock; a missing stock key is loaded from it on
//! first use, and every change to on-hand commits there first and is then mirrored into
//! Redis exactly once (see `apply_stock.lua`).

pub mod routes;

use futures_util::future::join_all;
use serde::Serialize;
use serde_json::json;

use crate::catalog;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{Holder, Quantity, SessionId, VariantId};
use crate::keys::{Keys, VariantKeys};
use crate::metrics::{self, Cache, Event};
use crate::ports::{Redis, RedisArg, RedisReply, Sql, SqlValue};
use crate::scan::Scan;
use crate::script::{Script, lua, tag, unexpected};

static RESERVE: Script = Script::new(lua!("inventory/purge.lua", "inventory/reserve.lua"));
static RELEASE: Script = Script::new(lua!("inventory/purge.lua", "inventory/release.lua"));
static VIEW: Script = Script::new(lua!("inventory/purge.lua", "inventory/view.lua"));
static SWEEP: Script = Script::new(lua!("inventory/purge.lua", "inventory/sweep.lua"));
static LOAD_STOCK: Script = Script::new(lua!(
    "inventory/purge.lua",
    "inventory/stock.lua",
    "inventory/load_stock.lua"
));
static APPLY_STOCK: Script = Script::new(lua!("inventory/stock.lua", "inventory/apply_stock.lua"));
static PUT_BACK: Script = Script::new(lua!("inventory/purge.lua", "inventory/put_back.lua"));
static HOLD_INDEX: Script = Script::new(lua!("inventory/hold_index.lua"));
pub(crate) static COMMIT: Script = Script::new(lua!(
    "inventory/purge.lua",
    "inventory/stock.lua",
    "inventory/commit.lua"
));

/// On-hand, version and existence of the variants `WHERE` picks (in id order), with the
/// holds of each variant's live paid checkout sessions that PostgreSQL keeps (sessions with
/// a payment intent, neither ended nor ordered) as JSON `[[session, quantity, holds
/// deadline ms], …]` (the load script skips those past their deadline), and the per-order
/// limit (NULL: none).
///
/// The holds are gathered from the live sessions (`checkout_sessions_live`: a session ends
/// with its order, or without one), once for all the variants picked, not from every line
/// ever sold of each variant: their cost follows the sessions waiting for a payment, not
/// the orders a variant has had.
macro_rules! levels_where {
    ($where:literal) => {
        concat!(
            "WITH picked AS (
    SELECT v.id FROM variants v WHERE ",
            $where,
            "
), live AS (
    SELECT sl.variant_id,
           json_agg(json_build_array(sl.session_id, sl.quantity, s.holds_deadline_ms))::text AS holds
    FROM checkout_sessions s JOIN checkout_session_lines sl ON sl.session_id = s.id
    WHERE s.ended_at IS NULL AND sl.variant_id IN (SELECT id FROM picked)
      AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.checkout_session_id = s.id)
    GROUP BY sl.variant_id
)
SELECT p.id, COALESCE(l.on_hand, 0), COALESCE(l.version, 0), COALESCE(live.holds, '[]'),
       l.max_per_order
FROM picked p
LEFT JOIN inventory_levels l ON l.variant_id = p.id
LEFT JOIN live ON live.variant_id = p.id
ORDER BY p.id"
        )
    };
}

/// The levels of the variants named (`$1`), for the lazy load.
const LEVELS_OF: &str = levels_where!("v.id = ANY($1)");

/// Which of the sessions `$1` PostgreSQL has ended (with or without an order).
const ENDED_OF: &str = "SELECT id FROM checkout_sessions WHERE id = ANY($1) AND ended_at IS NOT NULL";

/// One page of every variant's levels, for reconcile and the check (keyset pagination by
/// id).
const LEVELS_PAGE: &str = levels_where!("v.id > $1 ORDER BY v.id LIMIT $2");

/// Sets on-hand (`$2`, NULL: unchanged) and, if `$3`, the per-order limit (`$4`, NULL:
/// none), and returns on-hand with the new row version and the limit (0: none). No row:
/// the variant has no level yet (or is unknown).
const UPDATE_LEVEL: &str = "\
UPDATE inventory_levels
SET on_hand = COALESCE($2::bigint, on_hand),
    max_per_order = CASE WHEN $3::boolean THEN $4::bigint ELSE max_per_order END,
    version = version + 1, updated_at = now()
WHERE variant_id = $1
RETURNING on_hand, version, COALESCE(max_per_order, 0)";

/// First level of a known variant (on-hand 0 unless `$2` says otherwise). No row: unknown
/// variant, or a concurrent insert won.
const INSERT_LEVEL: &str = "\
INSERT INTO inventory_levels (variant_id, on_hand, version, max_per_order)
SELECT id, COALESCE($2::bigint, 0), 1, CASE WHEN $3::boolean THEN $4::bigint END FROM variants WHERE id = $1
ON CONFLICT (variant_id) DO NOTHING
RETURNING on_hand, version, COALESCE(max_per_order, 0)";

/// Most variants one request may name (availability, reservation).
pub const MAX_BATCH: usize = 500;

/// How often a script that ran out of purge budget is run again before giving up. Each run
/// purges up to 500 expired holds, so this bounds a single call's work, not correctness.
const MAX_PURGE_ROUNDS: usize = 64;

/// How much longer than its holds a holder's index lives on a Redis Cluster, where it is
/// kept on another node's clock.
const INDEX_MARGIN_MS: i64 = 60_000;

/// Rows per reconcile page.
const RECONCILE_PAGE: i64 = 500;

/// What a variant has: units on hand, units held by live holds, what can still be sold,
/// and the most one order may hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StockView {
    /// The variant.
    pub variant_id: String,
    /// Units on hand.
    pub stock: i64,
    /// Units held by live (unexpired) holds.
    pub reserved: i64,
    /// `stock - reserved`, never below zero.
    pub sellable: i64,
    /// The per-order purchase limit: the most units one holder may hold; `None`: no limit.
    pub max_per_order: Option<i64>,
}

impl StockView {
    fn new(variant: &VariantId, stock: i64, reserved: i64, limit: i64) -> Self {
        Self {
            variant_id: variant.to_string(),
            stock,
            reserved,
            sellable: (stock - reserved).max(0),
            max_per_order: (limit > 0).then_some(limit),
        }
    }
}

/// A change an admin makes to a variant's level: on-hand, the per-order limit, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LevelChange {
    /// New on-hand; `None`: unchanged.
    pub on_hand: Option<i64>,
    /// `Some(limit)` sets the per-order limit (`Some(None)` clears it); `None`: unchanged.
    pub max_per_order: Option<Option<MaxPerOrder>>,
}

/// A per-order purchase limit: a whole number of units from 1 to [`MaxPerOrder::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPerOrder(i64);

impl MaxPerOrder {
    /// The largest limit: a hold is at most this many units anyway.
    pub const MAX: i64 = Quantity::MAX as i64;

    /// Reads `maxPerOrder` from a request body: a positive integer up to [`Self::MAX`],
    /// or `null` (no limit). Anything else is a 400.
    pub fn from_json(value: &serde_json::Value) -> Result<Option<Self>> {
        if value.is_null() {
            return Ok(None);
        }
        value
            .as_i64()
            .filter(|n| (1..=Self::MAX).contains(n))
            .map(|n| Some(Self(n)))
            .ok_or_else(|| {
                Error::bad_request(
                    ErrorCode::InvalidMaxPerOrder,
                    format!(
                        "maxPerOrder must be an integer from 1 to {}, or null for no limit",
                        Self::MAX
                    ),
                )
            })
    }

    /// The limit in units.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// A hold over a variant's per-order limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OverLimit {
    /// The variant.
    pub variant_id: String,
    /// Units asked for.
    pub requested: i64,
    /// The most one order may hold.
    pub max_per_order: i64,
}

/// A granted reservation: every line held until `deadline_ms` (Redis clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// When the holds expire, epoch milliseconds.
    pub deadline_ms: i64,
}

/// Counts a request for holds (a direct reservation, a checkout start) by its outcome in
/// `commerce_reservations_total`: granted, or refused for short stock. A hold that only
/// extends one already counted (the payment intent's) is not counted again.
pub fn count_request<T>(outcome: &Result<T>) {
    match outcome {
        Ok(_) => metrics::event(Event::ReservationGranted),
        Err(e) if e.error_code() == ErrorCode::InsufficientInventory => {
            metrics::event(Event::ReservationRefused);
        }
        Err(_) => {}
    }
}

/// What one run of the reserve script held, and what the holder held before on each
/// variant.
struct Taken {
    deadline_ms: i64,
    previous: Vec<Previous>,
}

/// A holder's hold on a variant before a reservation changed it (quantity 0: none).
#[derive(Debug, Clone, Copy)]
struct Previous {
    quantity: i64,
    deadline_ms: i64,
}

/// One committed change of a variant's on-hand in PostgreSQL, to mirror into Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockChange {
    /// The variant.
    pub variant: VariantId,
    /// On-hand after the change.
    pub on_hand: i64,
    /// The row version of the change.
    pub version: i64,
}

/// A variant that could not be held in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Shortage {
    /// The short variant.
    pub variant_id: String,
    /// Units asked for.
    pub requested: i64,
    /// Units this holder could have had.
    pub sellable: i64,
}

/// A variant's stock as PostgreSQL records it, with the holds of its live paid sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Level {
    pub(crate) variant: VariantId,
    pub(crate) on_hand: i64,
    pub(crate) version: i64,
    /// The per-order purchase limit; `None`: no limit.
    pub(crate) max_per_order: Option<i64>,
    /// `(session, quantity, deadline ms)` of live paid checkout sessions.
    holds: Vec<(SessionId, i64, i64)>,
}

/// What a reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileReport {
    /// Variants whose Redis stock was rewritten from PostgreSQL.
    pub variants: u64,
    /// Variants Redis kept stock for that the catalog no longer has: emptied (those already
    /// empty are not counted).
    pub deleted: u64,
}

impl Level {
    /// The level of a variant the catalog no longer has: nothing on hand, no limit.
    fn deleted(variant: &VariantId) -> Self {
        Self {
            variant: variant.clone(),
            on_hand: 0,
            version: 0,
            max_per_order: None,
            holds: Vec::new(),
        }
    }
}

/// The inventory store over a Redis and a PostgreSQL port.
pub struct Inventory<'a, R, S> {
    redis: &'a R,
    sql: &'a S,
    keys: &'a Keys,
}

/// A script reply, checked for its leading tag.
struct Reply(Vec<RedisReply>);

impl Reply {
    fn tag(&self) -> &str {
        tag(&self.0)
    }

    /// The integers after the tag.
    fn ints(&self) -> Result<Vec<i64>> {
        self.0[1..]
            .iter()
            .map(|r| r.as_int().ok_or_else(|| unexpected(&self.0)))
            .collect()
    }
}

impl<'a, R: Redis, S: Sql> Inventory<'a, R, S> {
    /// The store over the given ports and key namespace.
    pub fn new(redis: &'a R, sql: &'a S, keys: &'a Keys) -> Self {
        Self { redis, sql, keys }
    }

    /// Stock, live reserved and sellable units of each variant, in one script call (plus a
    /// PostgreSQL load for variants Redis does not have yet); on a Redis Cluster, one call
    /// per variant, all at once. Unknown variants are a 422 naming them.
    pub async fn views(&self, variants: &[VariantId]) -> Result<Vec<StockView>> {
        if !self.redis.is_cluster() {
            return self.view_batch(variants).await;
        }
        let each = join_all(variants.iter().map(|v| self.view_batch(std::slice::from_ref(v)))).await;
        let mut views = Vec::with_capacity(variants.len());
        for view in each {
            views.extend(view?);
        }
        Ok(views)
    }

    /// [`Self::views`] as one script call.
    async fn view_batch(&self, variants: &[VariantId]) -> Result<Vec<StockView>> {
        let keys: Vec<VariantKeys> = variants.iter().map(|v| self.keys.variant(v)).collect();
        let flat: Vec<&str> = keys.iter().flat_map(VariantKeys::with_limit).collect();
        let reply = self.run_loaded(&VIEW, &flat, Vec::new(), variants).await?;
        let ints = reply.ints()?;
        if ints.len() != 3 * variants.len() {
            return Err(unexpected(&reply.0));
        }
        Ok(variants
            .iter()
            .zip(ints.chunks(3))
            .map(|(v, srl)| StockView::new(v, srl[0], srl[1], srl[2]))
            .collect())
    }

    /// Holds every line for `holder` until `ttl_ms` from now, all or nothing. The
    /// quantities SET the holder's holds, so a retried reservation never adds. Variants
    /// the holder holds but does not name keep their holds. A line over its variant's
    /// per-order limit, and over what the holder already holds, is a 422
    /// (`MAX_PER_ORDER_EXCEEDED`), short stock a 409; either way nothing is held.
    ///
    /// On a standalone Redis this is one script: nobody ever sees part of it. On a Redis
    /// Cluster each variant lives in its own slot, so the variants are taken one call
    /// each, in variant-id order, all ending at the first call's deadline; when one falls
    /// short (or a call fails), those already taken are put back as they were. Meanwhile
    /// another caller may see a unit briefly held and then released (and be refused it
    /// for that moment); no unit is ever sold twice, since each call checks its own
    /// variant's stock. A 409 then names the first short variant only.
    pub async fn reserve(
        &self,
        holder: &Holder,
        lines: &[(VariantId, Quantity)],
        ttl_ms: i64,
    ) -> Result<Reservation> {
        let index = self.keys.holder_holds(holder);
        if !self.redis.is_cluster() {
            let taken = self.take(holder, Some(&index), lines, ttl_ms, 0).await?;
            return Ok(Reservation {
                deadline_ms: taken.deadline_ms,
            });
        }
        let mut order: Vec<&(VariantId, Quantity)> = lines.iter().collect();
        order.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        let mut deadline_ms = 0;
        let mut taken: Vec<(&VariantId, Previous)> = Vec::with_capacity(order.len());
        for line in order {
            match self
                .take(holder, None, std::slice::from_ref(line), ttl_ms, deadline_ms)
                .await
            {
                Ok(held) => {
                    deadline_ms = held.deadline_ms;
                    taken.extend(held.previous.first().map(|p| (&line.0, *p)));
                }
                Err(e) => {
                    self.put_back(holder, &taken).await;
                    return Err(e);
                }
            }
        }
        // The index is written once every hold is, so a refused reservation leaves nothing.
        // Should this call fail, the holds still end at their deadline, and a checkout's
        // release names its variants itself.
        let mut args = vec![RedisArg::Int(ttl_ms + INDEX_MARGIN_MS)];
        args.extend(lines.iter().map(|(v, _)| RedisArg::from(v.as_str())));
        if let Err(e) = HOLD_INDEX.run(self.redis, &[&index], args).await {
            self.put_back(holder, &taken).await;
            return Err(e.into());
        }
        Ok(Reservation { deadline_ms })
    }

    /// Returns a holder's holds on these variants to what they were before (a Redis
    /// Cluster reservation that did not go through). Best effort: a hold that cannot be
    /// put back now still ends at its deadline.
    async fn put_back(&self, holder: &Holder, taken: &[(&VariantId, Previous)]) {
        let name = holder.to_string();
        join_all(taken.iter().map(|(variant, previous)| {
            let k = self.keys.variant(variant);
            let args = vec![
                RedisArg::from(name.as_str()),
                RedisArg::Int(previous.quantity),
                RedisArg::Int(previous.deadline_ms),
            ];
            async move {
                let _ = PUT_BACK
                    .run(self.redis, &[&k.reserved, &k.holds, &k.hold_qty], args)
                    .await;
            }
        }))
        .await;
    }

    /// One run of `reserve.lua` over `lines` (with the holder's index, or without it on a
    /// Redis Cluster), ending at `deadline_ms` (0: `ttl_ms` from now on Redis's clock).
    async fn take(
        &self,
        holder: &Holder,
        index: Option<&str>,
        lines: &[(VariantId, Quantity)],
        ttl_ms: i64,
        deadline_ms: i64,
    ) -> Result<Taken> {
        let variant_keys: Vec<VariantKeys> = lines.iter().map(|(v, _)| self.keys.variant(v)).collect();
        let mut keys: Vec<&str> = index.into_iter().collect();
        keys.extend(variant_keys.iter().flat_map(VariantKeys::with_limit));
        let mut args = vec![
            RedisArg::from(holder.to_string()),
            RedisArg::Int(ttl_ms),
            RedisArg::Int(deadline_ms),
        ];
        for (variant, quantity) in lines {
            args.push(variant.as_str().into());
            args.push(RedisArg::Int(quantity.get().into()));
        }
        let variants: Vec<VariantId> = lines.iter().map(|(v, _)| v.clone()).collect();
        let reply = self.run_loaded(&RESERVE, &keys, args, &variants).await?;
        match reply.tag() {
            "OK" => {
                let ints = reply.ints()?;
                let (deadline_ms, previous) = ints.split_first().ok_or_else(|| unexpected(&reply.0))?;
                Ok(Taken {
                    deadline_ms: *deadline_ms,
                    previous: previous
                        .chunks_exact(2)
                        .map(|p| Previous {
                            quantity: p[0],
                            deadline_ms: p[1],
                        })
                        .collect(),
                })
            }
            "SHORT" => {
                let shortages: Vec<Shortage> = reply
                    .ints()?
                    .chunks(3)
                    .filter_map(|c| {
                        let (variant, _) = lines.get(usize::try_from(c[0]).ok()?)?;
                        Some(Shortage {
                            variant_id: variant.to_string(),
                            requested: c[1],
                            sellable: c[2],
                        })
                    })
                    .collect();
                Err(Error::Conflict {
                    code: ErrorCode::InsufficientInventory,
                    message: format!("{} variant(s) do not have enough sellable stock", shortages.len()),
                    details: json!({ "shortages": shortages }),
                })
            }
            "LIMIT" => {
                let over: Vec<OverLimit> = reply
                    .ints()?
                    .chunks_exact(3)
                    .filter_map(|c| {
                        let (variant, _) = lines.get(usize::try_from(c[0]).ok()?)?;
                        Some(OverLimit {
                            variant_id: variant.to_string(),
                            requested: c[1],
                            max_per_order: c[2],
                        })
                    })
                    .collect();
                let first = over.first().ok_or_else(|| unexpected(&reply.0))?;
                Err(Error::Unprocessable {
                    code: ErrorCode::MaxPerOrderExceeded,
                    message: format!(
                        "at most {} unit(s) of {} per order, {} asked for",
                        first.max_per_order, first.variant_id, first.requested
                    ),
                    details: json!({
                        "variantId": first.variant_id,
                        "requested": first.requested,
                        "maxPerOrder": first.max_per_order,
                        "exceeded": over,
                    }),
                })
            }
            _ => Err(unexpected(&reply.0)),
        }
    }

    /// Drops every hold of `holder` and returns the units released. `known` names variants
    /// the caller knows the holder may hold besides those in its index (a checkout's frozen
    /// demand: holds put back from PostgreSQL after a Redis loss are in no index).
    pub async fn release(&self, holder: &Holder, known: &[VariantId]) -> Result<i64> {
        let index = self.keys.holder_holds(holder);
        let members = self
            .redis
            .execute("SMEMBERS", vec![index.as_str().into()])
            .await?;
        let mut variants: Vec<VariantId> = members
            .iter()
            .filter_map(|m| VariantId::parse(m.as_text()?).ok())
            .collect();
        for variant in known {
            if !variants.contains(variant) {
                variants.push(variant.clone());
            }
        }
        if !self.redis.is_cluster() {
            return self.release_batch(holder, Some(&index), &variants).await;
        }
        let each = join_all(
            variants
                .iter()
                .map(|v| self.release_batch(holder, None, std::slice::from_ref(v))),
        )
        .await;
        let mut released = 0;
        for units in each {
            released += units?;
        }
        self.redis.execute("DEL", vec![index.as_str().into()]).await?;
        Ok(released)
    }

    /// One run of `release.lua` (with the holder's index, or without it on a cluster).
    async fn release_batch(
        &self,
        holder: &Holder,
        index: Option<&str>,
        variants: &[VariantId],
    ) -> Result<i64> {
        let variant_keys: Vec<VariantKeys> = variants.iter().map(|v| self.keys.variant(v)).collect();
        let mut keys: Vec<&str> = index.into_iter().collect();
        keys.extend(variant_keys.iter().flat_map(VariantKeys::as_array));
        let reply = Reply(
            RELEASE
                .run(self.redis, &keys, vec![holder.to_string().into()])
                .await?,
        );
        match (reply.tag(), reply.ints()?.as_slice()) {
            ("OK", [released]) => Ok(*released),
            _ => Err(unexpected(&reply.0)),
        }
    }

    /// Mirrors an order's committed PostgreSQL stock decrements into Redis and drops the
    /// holder's holds, in one script (on a Redis Cluster, one per variant, then the index
    /// goes). Safe to repeat, per variant: each change is applied once, by its row version.
    pub async fn commit(&self, holder: &Holder, changes: &[StockChange]) -> Result<()> {
        let index = self.keys.holder_holds(holder);
        if !self.redis.is_cluster() {
            return self.commit_batch(holder, Some(&index), changes).await;
        }
        for outcome in join_all(
            changes
                .iter()
                .map(|c| self.commit_batch(holder, None, std::slice::from_ref(c))),
        )
        .await
        {
            outcome?;
        }
        self.redis.execute("DEL", vec![index.as_str().into()]).await?;
        Ok(())
    }

    /// One run of `commit.lua` (with the holder's index, or without it on a cluster).
    async fn commit_batch(
        &self,
        holder: &Holder,
        index: Option<&str>,
        changes: &[StockChange],
    ) -> Result<()> {
        let (keys, args) = self.commit_call(holder, index, changes);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let variants: Vec<VariantId> = changes.iter().map(|c| c.variant.clone()).collect();
        let reply = self.run_loaded(&COMMIT, &keys, args, &variants).await?;
        match reply.tag() {
            "OK" => Ok(()),
            _ => Err(unexpected(&reply.0)),
        }
    }

    /// `commit.lua`'s keys and arguments for `changes` (with the holder's index, or
    /// without it on a cluster).
    fn commit_call(
        &self,
        holder: &Holder,
        index: Option<&str>,
        changes: &[StockChange],
    ) -> (Vec<String>, Vec<RedisArg>) {
        let mut keys: Vec<String> = index.into_iter().map(str::to_owned).collect();
        for c in changes {
            let k = self.keys.variant(&c.variant);
            keys.extend([k.stock, k.reserved, k.holds, k.hold_qty, k.stock_version]);
        }
        let mut args = vec![RedisArg::from(holder.to_string())];
        for c in changes {
            args.extend([RedisArg::Int(c.on_hand), RedisArg::Int(c.version)]);
        }
        (keys, args)
    }

    /// [`Self::commit`] on a single server as a step of a [`Chain`](crate::script::Chain):
    /// `commit.lua`'s keys and arguments. The step goes on after `OK`; any other reply
    /// (stock Redis lost) is for [`Self::commit`] to meet.
    pub(crate) fn commit_step(
        &self,
        holder: &Holder,
        changes: &[StockChange],
    ) -> (Vec<String>, Vec<RedisArg>) {
        self.commit_call(holder, Some(&self.keys.holder_holds(holder)), changes)
    }

    /// What [`Self::commit`] records of a commit a chain ran (`reply`, its step's reply):
    /// the stock was in Redis. Whether it committed.
    pub(crate) fn chain_committed(&self, reply: &[RedisReply]) -> bool {
        let committed = tag(reply) == "OK";
        if committed {
            metrics::cache(Cache::Stock, true, 1);
        }
        committed
    }

    /// Sets a variant's on-hand stock and/or its per-order limit: PostgreSQL first, then
    /// Redis (the newest row version wins, see `stock.lua`). Returns the new
    /// view.
    pub async fn set_level(&self, variant: &VariantId, change: LevelChange) -> Result<StockView> {
        let limit = change.max_per_order.flatten().map(MaxPerOrder::get);
        let params = [
            SqlValue::Text(variant.to_string()),
            change.on_hand.map_or(SqlValue::Null, SqlValue::Int),
            SqlValue::Bool(change.max_per_order.is_some()),
            limit.map_or(SqlValue::Null, SqlValue::Int),
        ];
        let mut written = None;
        // Update, else insert the first level, else a concurrent insert won: update.
        for statement in [UPDATE_LEVEL, INSERT_LEVEL, UPDATE_LEVEL] {
            let rows = self.sql.query(statement, &params).await?;
            if let Some(row) = rows.first() {
                written = Some(int_columns::<3>(row)?);
                break;
            }
        }
        let Some([on_hand, version, limit]) = written else {
            return Err(unknown_variants(std::slice::from_ref(variant), 404));
        };
        let keys = self.keys.variant(variant);
        self.run_loaded(
            &APPLY_STOCK,
            &[&keys.stock, &keys.stock_version, &keys.max_per_order],
            vec![
                RedisArg::Int(on_hand),
                RedisArg::Int(version),
                RedisArg::Int(limit),
            ],
            std::slice::from_ref(variant),
        )
        .await
        .map_err(|error| match error {
            // The change stands in PostgreSQL: say so, and how Redis catches up (the same
            // request again, or any later change of the variant, carries it).
            Error::Unavailable { dependency, message } => Error::Unavailable {
                dependency,
                message: format!(
                    "{message}; the change is saved in PostgreSQL (row version {version}, on-hand \
                     {on_hand}) but not yet in Redis: send the request again"
                ),
            },
            other => other,
        })?;
        Ok(self.views(std::slice::from_ref(variant)).await?.remove(0))
    }

    /// Rewrites every variant's Redis stock from PostgreSQL, page by page, calling
    /// `progress` with the running count. Exact under concurrent stock changes: a page
    /// value older than a change Redis already applied is read again.
    pub async fn reconcile(&self, mut progress: impl FnMut(u64)) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        let mut after = String::new();
        loop {
            let mut levels = self.levels_page(&after, RECONCILE_PAGE).await?;
            let Some(last) = levels.last() else { break };
            after = last.variant.to_string();
            let read = levels.len() as u64;
            self.overwrite(std::mem::take(&mut levels)).await?;
            report.variants += read;
            progress(report.variants);
        }
        let deleted = self.deleted_from_catalog().await?;
        // Those already empty are left as they are, and not counted.
        let stocked: Vec<VariantId> = self
            .stocked(&deleted)
            .await?
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        self.empty_deleted(&stocked).await?;
        report.deleted = stocked.len() as u64;
        Ok(report)
    }

    /// The variants whose stock Redis keeps that the catalog no longer has (deleted from
    /// PostgreSQL since Redis loaded them), found by a walk over the stock keys, asking
    /// PostgreSQL a page at a time. A walk can meet a key twice: each is named once.
    pub(crate) async fn deleted_from_catalog(&self) -> Result<Vec<VariantId>> {
        let mut deleted = Vec::new();
        let mut scan = Scan::new(self.redis, self.keys.all_stock_pattern(), 500);
        while let Some(found) = scan.next_page().await? {
            let ids: Vec<String> = found
                .iter()
                .filter_map(|k| self.keys.variant_of_holds_key(k))
                .map(|v| v.to_string())
                .collect();
            if !ids.is_empty() {
                deleted.extend(catalog::missing(self.sql, ids).await?);
            }
        }
        deleted.sort();
        deleted.dedup();
        Ok(deleted)
    }

    /// Of these variants, those whose stock Redis keeps is not empty, with it.
    pub(crate) async fn stocked(&self, variants: &[VariantId]) -> Result<Vec<(VariantId, i64)>> {
        let mut stocked = Vec::new();
        for variant in variants {
            let stock = self
                .redis
                .execute("GET", vec![self.keys.variant(variant).stock.into()])
                .await?;
            let stock = stock.first().and_then(RedisReply::as_int).unwrap_or(0);
            if stock != 0 {
                stocked.push((variant.clone(), stock));
            }
        }
        Ok(stocked)
    }

    /// Empties the stock of variants the catalog no longer has: nothing on hand, whatever
    /// version Redis applied ('rewind'), so nothing more of them is sold (holds already
    /// taken stay until released). One created again meanwhile under the same id is
    /// loaded from PostgreSQL after.
    pub(crate) async fn empty_deleted(&self, stocked: &[VariantId]) -> Result<()> {
        if stocked.is_empty() {
            return Ok(());
        }
        let levels: Vec<Level> = stocked.iter().map(Level::deleted).collect();
        self.load_stock(&levels, "rewind").await?;
        let back = self.read_levels(stocked).await?;
        if !back.is_empty() {
            self.overwrite(back).await?;
        }
        Ok(())
    }

    /// One page of every variant's level, in id order after `after` (keyset pagination),
    /// for reconcile and `commerce check`.
    pub(crate) async fn levels_page(&self, after: &str, limit: i64) -> Result<Vec<Level>> {
        let rows = self
            .sql
            .query(
                LEVELS_PAGE,
                &[SqlValue::Text(after.to_owned()), SqlValue::Int(limit)],
            )
            .await?;
        parse_levels(&rows)
    }

    /// Rewrites these variants' Redis stock from PostgreSQL, with the holds of their live
    /// paid sessions (a repair). Exact under concurrent changes, as [`Self::reconcile`].
    pub async fn reload(&self, variants: &[VariantId]) -> Result<()> {
        self.overwrite(self.read_levels(variants).await?).await
    }

    /// Writes these levels, read from PostgreSQL, over Redis's stock. A level older than a
    /// change Redis already applied is refused and read again: a change ran meanwhile.
    /// One whose row version has not moved since is not behind a change but ahead of
    /// PostgreSQL's rows (PostgreSQL restored from an older copy while Redis kept the
    /// newer): PostgreSQL, the record of truth, is written over it, limit included
    /// ('rewind'). A change that committed meanwhile was refused by Redis, still ahead, so
    /// the rewound rows are read once more, and any that moved is written again.
    async fn overwrite(&self, mut levels: Vec<Level>) -> Result<()> {
        let unmoved_since = |read: &[Level], again: &Level| {
            read.iter()
                .any(|before| before.variant == again.variant && before.version == again.version)
        };
        for _ in 0..MAX_PURGE_ROUNDS {
            let stale = self.load_stock(&levels, "force").await?;
            if stale.is_empty() {
                return Ok(());
            }
            let (unmoved, mut moved): (Vec<Level>, Vec<Level>) = self
                .read_levels(&stale)
                .await?
                .into_iter()
                .partition(|again| unmoved_since(&levels, again));
            if !unmoved.is_empty() {
                self.load_stock(&unmoved, "rewind").await?;
                let rewound: Vec<VariantId> = unmoved.iter().map(|l| l.variant.clone()).collect();
                let again = self.read_levels(&rewound).await?;
                moved.extend(again.into_iter().filter(|l| !unmoved_since(&unmoved, l)));
            }
            if moved.is_empty() {
                return Ok(());
            }
            levels = moved;
        }
        Err(Error::Unavailable {
            dependency: "postgres",
            message: "stock kept changing while it was reloaded: try again".into(),
        })
    }

    /// Purges expired holds of every variant in the namespace (idle variants that no
    /// request touches), found by either of their two keys (a variant may have lost one).
    /// Returns the variants visited.
    pub async fn sweep(&self, mut progress: impl FnMut(u64)) -> Result<u64> {
        let mut seen = std::collections::HashSet::new();
        for pattern in [self.keys.all_holds_pattern(), self.keys.all_hold_qty_pattern()] {
            let mut scan = Scan::new(self.redis, pattern, 500);
            while let Some(found) = scan.next_page().await? {
                for variant in found.iter().filter_map(|k| self.keys.variant_of_holds_key(k)) {
                    if !seen.insert(variant.clone()) {
                        continue;
                    }
                    let k = self.keys.variant(&variant);
                    self.run_purged(&SWEEP, &[&k.reserved, &k.holds, &k.hold_qty], Vec::new())
                        .await?;
                }
                progress(seen.len() as u64);
            }
        }
        Ok(seen.len() as u64)
    }

    /// Runs a script until it is not out of purge budget.
    async fn run_purged(&self, script: &Script, keys: &[&str], args: Vec<RedisArg>) -> Result<Reply> {
        for _ in 0..MAX_PURGE_ROUNDS {
            let reply = Reply(script.run(self.redis, keys, args.clone()).await?);
            if reply.tag() != "RETRY" {
                return Ok(reply);
            }
        }
        Err(Error::Internal(
            "expired holds still pending after the purge budget".into(),
        ))
    }

    /// Runs a script; if it reports variants whose stock Redis does not have, loads them
    /// from PostgreSQL and runs it again. The script reports missing variants by their
    /// index in `variants`.
    async fn run_loaded(
        &self,
        script: &Script,
        keys: &[&str],
        args: Vec<RedisArg>,
        variants: &[VariantId],
    ) -> Result<Reply> {
        // Two rounds suffice unless the stock keys are being deleted concurrently.
        for round in 0..3 {
            let reply = self.run_purged(script, keys, args.clone()).await?;
            if round == 0 {
                metrics::cache(Cache::Stock, reply.tag() != "MISSING", 1);
            }
            if reply.tag() != "MISSING" {
                return Ok(reply);
            }
            let missing: Vec<VariantId> = reply
                .ints()?
                .into_iter()
                .filter_map(|i| variants.get(usize::try_from(i).ok()?).cloned())
                .collect();
            let levels = self.read_levels(&missing).await?;
            if levels.len() < missing.len() {
                let known: Vec<&VariantId> = levels.iter().map(|l| &l.variant).collect();
                let unknown: Vec<VariantId> = missing.into_iter().filter(|v| !known.contains(&v)).collect();
                return Err(unknown_variants(&unknown, 422));
            }
            self.load_stock(&levels, "fill").await?;
        }
        Err(Error::Internal("stock keys vanished while loading".into()))
    }

    /// Reads on-hand, row version and live session holds of the given variants from
    /// PostgreSQL; unknown variants are left out.
    async fn read_levels(&self, variants: &[VariantId]) -> Result<Vec<Level>> {
        let ids = variants.iter().map(ToString::to_string).collect();
        let rows = self.sql.query(LEVELS_OF, &[SqlValue::TextArray(ids)]).await?;
        parse_levels(&rows)
    }

    /// Writes levels into Redis with their live session holds (`fill`: only missing keys;
    /// `force`: all, refusing stale ones), in one script (on a Redis Cluster, one per
    /// variant). Returns the variants refused as stale.
    async fn load_stock(&self, levels: &[Level], mode: &str) -> Result<Vec<VariantId>> {
        let stale = if self.redis.is_cluster() {
            let each = join_all(
                levels
                    .iter()
                    .map(|l| self.load_batch(std::slice::from_ref(l), mode)),
            )
            .await;
            let mut stale = Vec::new();
            for refused in each {
                stale.extend(refused?);
            }
            stale
        } else {
            self.load_batch(levels, mode).await?
        };
        self.release_ended_holders(levels).await?;
        Ok(stale)
    }

    /// Gives back the holds a load wrote for sessions that ended while it ran: PostgreSQL
    /// listed them live, then a cancel (an expiry, an order) ended them there and released
    /// their holds in Redis before the load wrote those holds again. A session is marked
    /// ended in PostgreSQL before its holds are released in Redis, so reading PostgreSQL
    /// again after the load finds every such session. One query, and only when the load
    /// carried session holds.
    async fn release_ended_holders(&self, levels: &[Level]) -> Result<()> {
        let mut sessions: std::collections::BTreeMap<&str, (&SessionId, Vec<VariantId>)> =
            std::collections::BTreeMap::new();
        for level in levels {
            for (session, _, _) in &level.holds {
                let (_, variants) = sessions
                    .entry(session.as_str())
                    .or_insert_with(|| (session, Vec::new()));
                variants.push(level.variant.clone());
            }
        }
        if sessions.is_empty() {
            return Ok(());
        }
        let ids = sessions.keys().map(|s| (*s).to_owned()).collect();
        let rows = self.sql.query(ENDED_OF, &[SqlValue::TextArray(ids)]).await?;
        for row in rows {
            let Some((session, variants)) = row
                .first()
                .and_then(SqlValue::as_text)
                .and_then(|id| sessions.get(id))
            else {
                continue;
            };
            self.release(&Holder::Checkout((*session).clone()), variants)
                .await?;
        }
        Ok(())
    }

    /// One run of `load_stock.lua`.
    async fn load_batch(&self, levels: &[Level], mode: &str) -> Result<Vec<VariantId>> {
        let keys: Vec<VariantKeys> = levels.iter().map(|l| self.keys.variant(&l.variant)).collect();
        let flat: Vec<&str> = keys.iter().flat_map(VariantKeys::with_version).collect();
        let mut args = vec![RedisArg::from(mode)];
        for level in levels {
            args.push(RedisArg::Int(level.on_hand));
            args.push(RedisArg::Int(level.version));
            args.push(RedisArg::Int(level.max_per_order.unwrap_or(0)));
            args.push(RedisArg::Int(level.holds.len() as i64));
            for (session, quantity, deadline) in &level.holds {
                args.push(Holder::Checkout(session.clone()).to_string().into());
                args.push(RedisArg::Int(*quantity));
                args.push(RedisArg::Int(*deadline));
            }
        }
        let reply = Reply(LOAD_STOCK.run(self.redis, &flat, args).await?);
        let results = reply.ints()?;
        if reply.tag() != "OK" || results.len() != levels.len() {
            return Err(unexpected(&reply.0));
        }
        Ok(levels
            .iter()
            .zip(results)
            .filter(|(_, r)| *r < 0)
            .map(|(l, _)| l.variant.clone())
            .collect())
    }
}

/// Parses `(id, on_hand, version, session holds JSON, max_per_order)` rows.
fn parse_levels(rows: &[Vec<SqlValue>]) -> Result<Vec<Level>> {
    rows.iter()
        .map(|row| {
            let bad = || Error::Internal(format!("unexpected inventory row: {row:?}"));
            let variant = row
                .first()
                .and_then(SqlValue::as_text)
                .and_then(|s| VariantId::parse(s).ok())
                .ok_or_else(bad)?;
            let on_hand = row.get(1).and_then(SqlValue::as_int).ok_or_else(bad)?;
            let version = row.get(2).and_then(SqlValue::as_int).ok_or_else(bad)?;
            let holds: Vec<(String, i64, i64)> = row
                .get(3)
                .and_then(SqlValue::as_text)
                .and_then(|t| serde_json::from_str(t).ok())
                .ok_or_else(bad)?;
            let holds = holds
                .into_iter()
                .map(|(session, quantity, deadline)| {
                    let session = SessionId::parse(&session).map_err(|_| bad())?;
                    Ok((session, quantity, deadline))
                })
                .collect::<Result<_>>()?;
            let max_per_order = match row.get(4) {
                Some(SqlValue::Null) => None,
                Some(SqlValue::Int(limit)) => Some(*limit),
                _ => return Err(bad()),
            };
            Ok(Level {
                variant,
                on_hand,
                version,
                max_per_order,
                holds,
            })
        })
        .collect()
}

/// Reads the first `N` columns of a row as integers.
fn int_columns<const N: usize>(row: &[SqlValue]) -> Result<[i64; N]> {
    let mut out = [0; N];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = row
            .get(i)
            .and_then(SqlValue::as_int)
            .ok_or_else(|| Error::Internal(format!("unexpected row: {row:?}")))?;
    }
    Ok(out)
}

/// The error for variants the catalog does not have: 404 when the path names it, 422 when
/// a body does.
fn unknown_variants(variants: &[VariantId], status: u16) -> Error {
    let ids: Vec<String> = variants.iter().map(ToString::to_string).collect();
    let unknown = catalog::unknown_variants(&ids);
    if status == 404 {
        Error::not_found(ErrorCode::VariantNotFound, unknown.to_string())
    } else {
        unknown
    }
}
