//! `commerce check` and `GET /v1/admin/check`: compares what Redis holds with the record of
//! truth in PostgreSQL and reports every drift; `--repair` (`POST
//! /v1/admin/check/repair`) fixes what can be fixed and says what it did.
//!
//! What is compared:
//! - each variant's stock against on-hand, by row version, so a change PostgreSQL
//!   committed and Redis never mirrored (an order's, an admin's) is found, and a change in
//!   flight is not taken for drift; and its per-order limit, once the versions agree;
//! - each variant's reserved total against the sum of its holds, and nothing negative;
//! - holds of checkout sessions that no longer exist or have ended (orphans);
//! - live sessions without their cart lock or their holds, and live paid sessions that
//!   PostgreSQL keeps whose holds Redis lacks, or that Redis lost altogether;
//! - refunds and intent cancellations not yet accepted by the gateway, and their age.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::app::App;
use crate::cart::Carts;
use crate::checkout::{Checkouts, FrozenCart, LockHolder, Relocked, paid};
use crate::error::{Error, Result};
use crate::ids::{ExternalHolderId, Holder, Quantity, SessionId, VariantId};
use crate::inventory::{Inventory, Level};
use crate::keys::VariantKeys;
use crate::ports::{Http, Redis, RedisArg, RedisReply, Sql, SqlValue};
use crate::pricing::store::Rulesets;
use crate::scan::Scan;
use crate::script::{Script, lua, tag, unexpected};

static PAGE: Script = Script::new(lua!("check/page.lua"));
static FIX_RESERVED: Script = Script::new(lua!("inventory/purge.lua", "check/fix_reserved.lua"));

/// Variants per page.
const PAGE_SIZE: i64 = 500;

/// A refund or cancellation pending longer than this is drift: the gateway has not
/// accepted it through many retries.
const OUTBOX_STALE_SECONDS: i64 = 15 * 60;

/// Live paid sessions PostgreSQL keeps (not ended, no order), with what they hold.
const LIVE_PAID: &str = "\
SELECT s.id, s.holds_deadline_ms, sl.variant_id, sl.quantity
FROM checkout_sessions s JOIN checkout_session_lines sl ON sl.session_id = s.id
WHERE s.ended_at IS NULL AND s.holds_deadline_ms > $1
  AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.checkout_session_id = s.id)";

/// Refunds and cancellations the gateway has not accepted yet: how many, the oldest's age.
/// How long ago (ms) PostgreSQL wrote the order of session `$1` (no row: none).
const ORDER_AGE: &str = "\
SELECT (extract(epoch FROM now() - created_at) * 1000)::bigint FROM orders WHERE checkout_session_id = $1";

const OUTBOX_BACKLOG: &str = "\
SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::bigint, 0)
FROM payment_outbox WHERE state = 'pending'";

/// One disagreement between Redis and PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// What kind: `stock`, `max-per-order`, `unmirrored`, `reserved`, `negative`,
    /// `orphan-hold`, `holder-index`, `session-lock`, `session-holds`, `session-ordered`,
    /// `session-ended`, `paid-session-holds`, `paid-session-missing`, `paid-session-ended`,
    /// `outbox`, `ruleset`.
    pub kind: &'static str,
    /// What it is about (a variant, a session, a holder).
    pub subject: String,
    /// What was found.
    pub detail: String,
    /// What `--repair` did about it (empty: not repaired).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub repaired: String,
}

/// What a check found (and, with repair, did).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// No drift left.
    pub ok: bool,
    /// Variants compared.
    pub variants: u64,
    /// Checkout sessions in Redis looked at.
    pub sessions: u64,
    /// Refunds and cancellations waiting for the gateway.
    pub outbox_pending: i64,
    /// Age of the oldest of them, seconds.
    pub outbox_oldest_seconds: i64,
    /// Every drift found.
    pub drift: Vec<Drift>,
}

/// One variant as Redis holds it.
struct RedisVariant {
    present: bool,
    stock: i64,
    /// The row version whose on-hand the stock mirrors.
    max: i64,
    /// The per-order limit; `None`: none.
    limit: Option<i64>,
    reserved: i64,
    held: i64,
    holders: Vec<(String, i64)>,
}

/// Checks Redis against PostgreSQL; with `repair`, fixes what can be fixed on the way.
pub async fn run<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, repair: bool) -> Result<CheckReport> {
    let checker = Checker { app, repair };
    let mut report = CheckReport::default();
    let now = checker.variants(&mut report).await?;
    checker.deleted_variants(&mut report).await?;
    checker.sessions(&mut report, now).await?;
    checker.paid_sessions(&mut report, now).await?;
    checker.outbox(&mut report).await?;
    checker.rulesets(&mut report).await?;
    report.ok = report.drift.iter().all(|d| !d.repaired.is_empty());
    Ok(report)
}

struct Checker<'a, R, S, H> {
    app: &'a App<R, S, H>,
    repair: bool,
}

impl<R: Redis, S: Sql, H: Http> Checker<'_, R, S, H> {
    fn inventory(&self) -> Inventory<'_, R, S> {
        Inventory::new(&self.app.redis, &self.app.sql, &self.app.keys)
    }

    async fn sql(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>> {
        self.app.sql.query(statement, params).await.map_err(Error::from)
    }

    async fn redis(&self, command: &str, args: Vec<RedisArg>) -> Result<Vec<RedisReply>> {
        self.app.redis.execute(command, args).await.map_err(Error::from)
    }

    /// Compares every variant, page by page; returns the Redis clock.
    async fn variants(&self, report: &mut CheckReport) -> Result<i64> {
        let mut after = String::new();
        let mut now = 0;
        let mut checkout_holders: BTreeMap<SessionId, Vec<VariantId>> = BTreeMap::new();
        let mut external_holders: BTreeMap<String, Vec<VariantId>> = BTreeMap::new();
        loop {
            let levels = self.inventory().levels_page(&after, PAGE_SIZE).await?;
            let Some(last) = levels.last() else { break };
            after = last.variant.to_string();
            let (clock, found) = self.read_page(&levels).await?;
            now = clock;
            for (level, seen) in levels.iter().zip(found) {
                let variant = &level.variant;
                report.variants += 1;
                self.compare_variant(report, level, &seen).await?;
                for (holder, _) in &seen.holders {
                    if let Some(id) = holder
                        .strip_prefix("checkout:")
                        .and_then(|s| SessionId::parse(s).ok())
                    {
                        checkout_holders.entry(id).or_default().push(variant.clone());
                    } else if let Some(id) = holder.strip_prefix("external:") {
                        external_holders
                            .entry(id.to_owned())
                            .or_default()
                            .push(variant.clone());
                    }
                }
            }
        }
        for (session, variants) in checkout_holders {
            self.check_holder(report, &session, &variants).await?;
        }
        for (id, variants) in external_holders {
            if let Ok(id) = ExternalHolderId::parse(&id) {
                self.check_index(report, &Holder::External(id), &variants).await?;
            }
        }
        Ok(now)
    }

    /// A paid session Redis shows between its payment and its order's end
    /// (PAYMENT_CONFIRMED, ORDER_CREATED). While its webhook runs that is no drift; one
    /// whose order PostgreSQL wrote longer ago than a request may run (the webhook's request
    /// cut short after the order's statement) still holds the units its order took, so they
    /// are counted twice until its holds end: drift, and the repair finishes it as a read
    /// of it would (stock committed, cart emptied, lock released). One without an order is
    /// the sweep's, once past its deadline.
    async fn check_unfinished(&self, report: &mut CheckReport, id: &str, state: &str) -> Result<()> {
        let Ok(session) = SessionId::parse(id) else {
            return Ok(());
        };
        let rows = self.sql(ORDER_AGE, &[SqlValue::Text(id.to_owned())]).await?;
        let Some(age_ms) = rows.first().and_then(|r| r.first()?.as_int()) else {
            return self.check_refunded(report, &session, state).await;
        };
        let request_timeout = i64::try_from(self.app.settings.request_timeout_ms).unwrap_or(i64::MAX);
        if age_ms <= request_timeout {
            return Ok(());
        }
        let mut repaired = String::new();
        if self.repair {
            let state = Checkouts::new(self.app).meet(&session).await?;
            repaired = format!("met as a read of it would: {state}");
        }
        report.drift.push(Drift {
            kind: "session-ordered",
            subject: id.to_owned(),
            detail: format!(
                "{state} in Redis, but its order was written in PostgreSQL {} s ago: its holds count the units the order took",
                age_ms / 1000
            ),
            repaired,
        });
        Ok(())
    }

    /// A paid session Redis shows confirmed, without an order, that PostgreSQL ended FAILED
    /// with its refund owed (the request that refunded it stopped before it moved Redis):
    /// drift, and the repair moves it as a read of it would.
    async fn check_refunded(&self, report: &mut CheckReport, session: &SessionId, state: &str) -> Result<()> {
        let kept = paid::load(&self.app.sql, session.as_str()).await?;
        if state != "PAYMENT_CONFIRMED" || kept.and_then(|k| k.ended_state).as_deref() != Some("FAILED") {
            return Ok(());
        }
        let mut repaired = String::new();
        if self.repair {
            let state = Checkouts::new(self.app).meet(session).await?;
            repaired = format!("met as a read of it would: {state}");
        }
        report.drift.push(Drift {
            kind: "session-ended",
            subject: session.to_string(),
            detail: format!("{state} in Redis, but PostgreSQL ended it FAILED with its refund owed"),
            repaired,
        });
        Ok(())
    }

    /// Stock Redis keeps for a variant the catalog no longer has (deleted from PostgreSQL)
    /// would still be sold: drift, unless it is empty. The repair empties it.
    async fn deleted_variants(&self, report: &mut CheckReport) -> Result<()> {
        let inventory = self.inventory();
        let deleted = inventory.deleted_from_catalog().await?;
        for (variant, stock) in inventory.stocked(&deleted).await? {
            let mut repaired = String::new();
            if self.repair {
                inventory.empty_deleted(std::slice::from_ref(&variant)).await?;
                repaired = "stock emptied".into();
            }
            report.drift.push(Drift {
                kind: "stock",
                subject: variant.to_string(),
                detail: format!("Redis keeps {stock} on hand for a variant PostgreSQL no longer has"),
                repaired,
            });
        }
        Ok(())
    }

    /// An outside holder's index (`inventory:holder:{H}`) must name every variant it
    /// holds: its release (`DELETE /v1/inventory/reservations/{H}`) frees what the index
    /// names, and a hold left out of it would stay until its deadline. The repair adds
    /// what is missing, for as long as those holds last.
    async fn check_index(&self, report: &mut CheckReport, holder: &Holder, held: &[VariantId]) -> Result<()> {
        let index = self.app.keys.holder_holds(holder);
        let members = self.redis("SMEMBERS", vec![index.as_str().into()]).await?;
        let missing: Vec<&VariantId> = held
            .iter()
            .filter(|v| !members.iter().any(|m| m.as_text() == Some(v.as_str())))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let mut repaired = String::new();
        if self.repair {
            let mut added = Vec::new();
            let mut until = 0;
            for variant in &missing {
                let holds = self.app.keys.variant(variant).holds;
                let deadline = self
                    .redis("ZSCORE", vec![holds.into(), holder.to_string().into()])
                    .await?;
                // A hold gone since the page was read (released, expired) is not added.
                let Some(deadline) = deadline
                    .first()
                    .and_then(RedisReply::as_text)
                    .and_then(|d| d.parse::<f64>().ok())
                else {
                    continue;
                };
                until = until.max(deadline as i64);
                self.redis("SADD", vec![index.as_str().into(), variant.as_str().into()])
                    .await?;
                added.push(variant.as_str());
            }
            // As long as its longest hold: set if it has no expiry, else only lengthened.
            if until > 0 {
                for only in ["NX", "GT"] {
                    let args = vec![index.as_str().into(), RedisArg::Int(until), only.into()];
                    self.redis("PEXPIREAT", args).await?;
                }
            }
            repaired = if added.is_empty() {
                "released meanwhile: nothing to add".into()
            } else if added.len() == missing.len() {
                "added to the holder's index".into()
            } else {
                format!(
                    "added {} to the holder's index (the rest released meanwhile)",
                    added.join(", ")
                )
            };
        }
        let ids: Vec<&str> = missing.iter().map(|v| v.as_str()).collect();
        report.drift.push(Drift {
            kind: "holder-index",
            subject: holder.to_string(),
            detail: format!(
                "holds on {} that the holder's index does not name (its release would leave them)",
                ids.join(", ")
            ),
            repaired,
        });
        Ok(())
    }

    /// What Redis holds for these variants, and Redis's clock: one script, or on a Redis
    /// Cluster one per variant (all at once; the clock is the earliest node's).
    async fn read_page(&self, levels: &[Level]) -> Result<(i64, Vec<RedisVariant>)> {
        if !self.app.redis.is_cluster() {
            return self.read_batch(levels).await;
        }
        let each =
            futures_util::future::join_all(levels.iter().map(|l| self.read_batch(std::slice::from_ref(l))))
                .await;
        let mut now = i64::MAX;
        let mut found = Vec::with_capacity(levels.len());
        for page in each {
            let (clock, seen) = page?;
            now = now.min(clock);
            found.extend(seen);
        }
        Ok((if found.is_empty() { 0 } else { now }, found))
    }

    async fn read_batch(&self, levels: &[Level]) -> Result<(i64, Vec<RedisVariant>)> {
        let keys: Vec<VariantKeys> = levels.iter().map(|l| self.app.keys.variant(&l.variant)).collect();
        let flat: Vec<&str> = keys.iter().flat_map(VariantKeys::with_version).collect();
        let reply = PAGE.run(&self.app.redis, &flat, Vec::new()).await?;
        if tag(&reply) != "OK" {
            return Err(unexpected(&reply));
        }
        let now = reply
            .get(1)
            .and_then(RedisReply::as_int)
            .ok_or_else(|| unexpected(&reply))?;
        let mut found = Vec::with_capacity(levels.len());
        let mut rest = reply[2..].iter();
        for _ in levels {
            let mut next_int = || {
                rest.next()
                    .and_then(RedisReply::as_int)
                    .ok_or_else(|| unexpected(&reply))
            };
            let present = next_int()? == 1;
            let (stock, max, limit, reserved, held, n) = (
                next_int()?,
                next_int()?,
                next_int()?,
                next_int()?,
                next_int()?,
                next_int()?,
            );
            let mut holders = Vec::new();
            for _ in 0..n {
                let holder = rest
                    .next()
                    .and_then(RedisReply::as_text)
                    .ok_or_else(|| unexpected(&reply))?;
                let quantity = rest
                    .next()
                    .and_then(RedisReply::as_int)
                    .ok_or_else(|| unexpected(&reply))?;
                holders.push((holder.to_owned(), quantity));
            }
            found.push(RedisVariant {
                present,
                stock,
                max,
                limit: (limit > 0).then_some(limit),
                reserved,
                held,
                holders,
            });
        }
        Ok((now, found))
    }

    async fn compare_variant(
        &self,
        report: &mut CheckReport,
        level: &Level,
        seen: &RedisVariant,
    ) -> Result<()> {
        let (variant, on_hand, version) = (&level.variant, level.on_hand, level.version);
        let mut found = Vec::new();
        if seen.present {
            if seen.max < version {
                // A change PostgreSQL committed that Redis does not have: Redis holds the
                // on-hand of an older version (the next change would bring it up to date).
                found.push((
                    "unmirrored",
                    format!(
                        "PostgreSQL is at version {version} (on-hand {on_hand}); Redis has the on-hand of version {} (stock {})",
                        seen.max, seen.stock
                    ),
                ));
            } else if seen.max == version && seen.stock != on_hand {
                found.push((
                    "stock",
                    format!("Redis stock {} but on-hand {on_hand}", seen.stock),
                ));
            } else if seen.max == version && seen.limit != level.max_per_order {
                let limit = |l: Option<i64>| l.map_or("none".to_owned(), |l| l.to_string());
                found.push((
                    "max-per-order",
                    format!(
                        "Redis limit {} but PostgreSQL's {}",
                        limit(seen.limit),
                        limit(level.max_per_order)
                    ),
                ));
            } else if seen.max > version {
                found.push((
                    "stock",
                    format!(
                        "Redis has applied version {} beyond PostgreSQL's {version}",
                        seen.max
                    ),
                ));
            }
        }
        if seen.stock < 0 || seen.reserved < 0 {
            found.push((
                "negative",
                format!("stock {} reserved {}", seen.stock, seen.reserved),
            ));
        }
        let mut reserved_drift = false;
        if seen.reserved != seen.held {
            reserved_drift = true;
            found.push((
                "reserved",
                format!(
                    "reserved total {} but the holds sum to {}",
                    seen.reserved, seen.held
                ),
            ));
        }
        for (kind, detail) in found {
            let mut repaired = String::new();
            if self.repair {
                repaired = match kind {
                    "reserved" => String::new(),
                    _ => {
                        self.inventory().reload(std::slice::from_ref(variant)).await?;
                        "stock reloaded from PostgreSQL".into()
                    }
                };
            }
            report.drift.push(Drift {
                kind,
                subject: variant.to_string(),
                detail,
                repaired,
            });
        }
        if reserved_drift && self.repair {
            let k = self.app.keys.variant(variant);
            let mut fixed = None;
            for _ in 0..64 {
                let reply = FIX_RESERVED
                    .run(&self.app.redis, &[&k.reserved, &k.holds, &k.hold_qty], Vec::new())
                    .await?;
                if tag(&reply) == "OK" {
                    let int = |i: usize| reply.get(i).and_then(RedisReply::as_int);
                    fixed = int(1).zip(int(2));
                    break;
                }
            }
            if let (Some((sum, dropped)), Some(drift)) = (
                fixed,
                report.drift.iter_mut().rev().find(|d| d.kind == "reserved"),
            ) {
                drift.repaired = match dropped {
                    0 => format!("reserved total set to the holds' sum, {sum}"),
                    n => format!(
                        "{n} hold(s) without a deadline dropped; reserved total set to the holds' sum, {sum}"
                    ),
                };
            }
        }
        Ok(())
    }

    /// A checkout session that holds stock must exist and be live (or be a live paid
    /// session PostgreSQL keeps, whose holds were put back after a loss).
    async fn check_holder(
        &self,
        report: &mut CheckReport,
        session: &SessionId,
        variants: &[VariantId],
    ) -> Result<()> {
        let state = self
            .redis(
                "HGET",
                vec![self.app.keys.checkout_session(session).into(), "state".into()],
            )
            .await?;
        let state = state.first().and_then(RedisReply::as_text).map(str::to_owned);
        let live = match state.as_deref() {
            Some("CREATED" | "LOCKED" | "PAYMENT_PENDING" | "PAYMENT_CONFIRMED" | "ORDER_CREATED") => true,
            Some(_) => false,
            None => paid::load(&self.app.sql, session.as_str())
                .await?
                .is_some_and(|kept| kept.is_live()),
        };
        if live {
            return Ok(());
        }
        let ids: Vec<String> = variants.iter().map(ToString::to_string).collect();
        let mut repaired = String::new();
        if self.repair {
            // PostgreSQL first: a paid session it still thought live would have its holds
            // put back by the next reload.
            if let Some(ended @ ("CANCELLED" | "EXPIRED" | "FAILED")) = state.as_deref() {
                paid::end(&self.app.sql, session.as_str(), ended).await?;
            }
            let released = self
                .inventory()
                .release(&Holder::Checkout(session.clone()), variants)
                .await?;
            repaired = format!("released {released} unit(s)");
        }
        report.drift.push(Drift {
            kind: "orphan-hold",
            subject: format!("checkout:{session}"),
            detail: format!(
                "holds on {} for a session that is {}",
                ids.join(", "),
                state.as_deref().unwrap_or("gone")
            ),
            repaired,
        });
        Ok(())
    }

    /// Live sessions in Redis: their cart lock and their holds.
    async fn sessions(&self, report: &mut CheckReport, now: i64) -> Result<()> {
        let pattern = format!("{}checkout:session:*", self.app.keys.prefix());
        let mut scan = Scan::new(&self.app.redis, pattern, 500);
        while let Some(keys) = scan.next_page().await? {
            for key in &keys {
                report.sessions += 1;
                self.check_session(report, key, now).await?;
            }
        }
        Ok(())
    }

    async fn check_session(&self, report: &mut CheckReport, key: &str, now: i64) -> Result<()> {
        let fields = self
            .redis(
                "HMGET",
                vec![
                    key.into(),
                    "id".into(),
                    "state".into(),
                    "cart".into(),
                    "deadline".into(),
                ],
            )
            .await?;
        let text = |i: usize| fields.get(i).and_then(RedisReply::as_text);
        let (Some(id), Some(state), Some(cart), Some(deadline)) = (
            text(0),
            text(1),
            text(2),
            fields.get(3).and_then(RedisReply::as_int),
        ) else {
            return Ok(());
        };
        if matches!(state, "PAYMENT_CONFIRMED" | "ORDER_CREATED") {
            return self.check_unfinished(report, id, state).await;
        }
        if !matches!(state, "LOCKED" | "PAYMENT_PENDING") || deadline <= now {
            return Ok(());
        }
        let Ok(session) = SessionId::parse(id) else {
            return Ok(());
        };
        let Some(cart) = crate::checkout::parse_cart_ref(cart) else {
            return Ok(());
        };
        let grace = i64::from(self.app.settings.hold_grace_seconds) * 1000;
        // Whether a repair below took something for the session (its lock, its holds).
        let mut took = false;
        let metadata = self
            .redis("GET", vec![self.app.keys.checkout_metadata(&session).into()])
            .await?;
        let metadata = metadata
            .first()
            .and_then(RedisReply::as_text)
            .and_then(|m| serde_json::from_str::<Value>(m).ok());
        let carts = Carts::of(self.app);
        let holder = self.redis("GET", vec![carts.lock_key(&cart).into()]).await?;
        if holder.first().and_then(RedisReply::as_text) != Some(id) {
            // The cart as the session froze it, and as it is now: a cart built again after
            // a Redis loss (another `created`) is another cart, whose lock is none of this
            // session's business (its payment still becomes its order): no drift.
            let frozen = metadata.as_ref().map(FrozenCart::of).unwrap_or_default();
            let now_cart = self
                .redis(
                    "HMGET",
                    vec![
                        carts.key(&cart).into(),
                        "version".into(),
                        "created".into(),
                        "written".into(),
                    ],
                )
                .await?;
            let cart_is = |i: usize| now_cart.get(i).and_then(RedisReply::as_int);
            let other_life =
                frozen.generation.is_some() && cart_is(1).is_some_and(|c| Some(c) != frozen.generation);
            let written = now_cart.get(2).and_then(RedisReply::as_text);
            let moved = cart_is(0).is_some()
                && (frozen.version.is_some() && cart_is(0) != frozen.version
                    || frozen.written.is_some() && written != frozen.written.as_deref());
            if !other_life {
                let relocked = match self.repair {
                    true => Some(
                        Checkouts::new(self.app)
                            .relock(&session, deadline + grace)
                            .await?,
                    ),
                    false => None,
                };
                let ended = matches!(
                    relocked,
                    Some(Relocked::Cancelled(_) | Relocked::MovedOn(_) | Relocked::Ordered)
                );
                let repaired = match relocked {
                    Some(Relocked::Taken) => {
                        took = true;
                        "cart lock taken again for the session".into()
                    }
                    Some(Relocked::Cancelled(now)) => {
                        format!("session cancelled: its cart changed since it froze it (now version {now})")
                    }
                    Some(Relocked::MovedOn(state)) => format!("none: the session is {state} now"),
                    Some(Relocked::Ordered) => "session finished: PostgreSQL has its order".into(),
                    _ => String::new(),
                };
                let detail = match moved {
                    true => format!(
                        "live {state} session does not hold its cart's lock, and its cart changed since it froze it"
                    ),
                    false => format!("live {state} session does not hold its cart's lock"),
                };
                report.drift.push(Drift {
                    kind: "session-lock",
                    subject: id.to_owned(),
                    detail,
                    repaired,
                });
                if ended {
                    return Ok(());
                }
            }
        }
        let demand = metadata
            .as_ref()
            .map(crate::checkout::frozen_demand)
            .transpose()?
            .unwrap_or_default();
        let holder = Holder::Checkout(session.clone());
        let mut missing: Vec<(VariantId, Quantity)> = Vec::new();
        for (variant, quantity) in &demand {
            let held = self
                .redis(
                    "HGET",
                    vec![
                        self.app.keys.variant(variant).hold_qty.into(),
                        holder.to_string().into(),
                    ],
                )
                .await?;
            if held.first().and_then(RedisReply::as_int) == Some(i64::from(quantity.get())) {
                continue;
            }
            // A variant whose stock Redis has not loaded yet has no holds either: its lazy
            // load brings both back (as `paid_sessions` reads it), so nothing is missing.
            let stock = self.app.keys.variant(variant).stock;
            let loaded = self.redis("EXISTS", vec![stock.into()]).await?;
            if loaded.first().and_then(RedisReply::as_int) == Some(1) {
                missing.push((variant.clone(), *quantity));
            }
        }
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|(v, q)| format!("{v}×{}", q.get())).collect();
            let mut repaired = String::new();
            // A reserve the stock cannot cover stays reported as not repaired.
            if self.repair
                && self
                    .inventory()
                    .reserve(&holder, &demand, deadline + grace - now)
                    .await
                    .is_ok()
            {
                repaired = "holds taken again".into();
                took = true;
            }
            report.drift.push(Drift {
                kind: "session-holds",
                subject: id.to_owned(),
                detail: format!("live {state} session lacks its holds: {}", names.join(", ")),
                repaired,
            });
        }
        // The session may have ended (cancelled, paid into an order) between the reads
        // above and the repairs, its ending releasing what it held before the repair took
        // it again: read once more, an ended session gives back what the repair took.
        if took && Checkouts::new(self.app).meet_lock_holder(id).await? == LockHolder::Ended {
            let variants: Vec<VariantId> = demand.into_iter().map(|(v, _)| v).collect();
            self.inventory().release(&holder, &variants).await?;
        }
        Ok(())
    }

    /// Live paid sessions PostgreSQL keeps: where Redis has the variant's stock, it must
    /// have the session's hold too (else the units could be sold twice).
    async fn paid_sessions(&self, report: &mut CheckReport, now: i64) -> Result<()> {
        let rows = self.sql(LIVE_PAID, &[SqlValue::Int(now)]).await?;
        let mut missing = std::collections::BTreeSet::new();
        for row in rows {
            let (Some(session), Some(variant), Some(quantity)) = (
                row.first().and_then(SqlValue::as_text),
                row.get(2)
                    .and_then(SqlValue::as_text)
                    .and_then(|v| VariantId::parse(v).ok()),
                row.get(3).and_then(SqlValue::as_int),
            ) else {
                return Err(Error::Internal(format!("unexpected paid session row: {row:?}")));
            };
            // Redis may know better: a session it saw end (the request that ended it lost
            // PostgreSQL before marking it) is over in PostgreSQL too.
            let id = SessionId::parse(session)
                .map_err(|_| Error::Internal(format!("bad session id {session}")))?;
            let state = self
                .redis(
                    "HGET",
                    vec![self.app.keys.checkout_session(&id).into(), "state".into()],
                )
                .await?;
            if state.first().and_then(RedisReply::as_text).is_none() {
                // Redis lost it (a restart without persistence, a flush): it comes back on
                // first use, and its holds with its variants' stock; said once per session.
                if missing.insert(id.clone()) {
                    let mut repaired = String::new();
                    if self.repair {
                        Checkouts::new(self.app).put_back(&id).await?;
                        repaired = "put back from PostgreSQL".into();
                    }
                    report.drift.push(Drift {
                        kind: "paid-session-missing",
                        subject: session.to_owned(),
                        detail: "a live paid session PostgreSQL keeps is not in Redis".into(),
                        repaired,
                    });
                }
                continue;
            }
            if let Some(ended @ ("CANCELLED" | "EXPIRED" | "FAILED")) =
                state.first().and_then(RedisReply::as_text)
            {
                let mut repaired = String::new();
                if self.repair {
                    paid::end(&self.app.sql, session, ended).await?;
                    repaired = format!("marked {ended} in PostgreSQL");
                }
                report.drift.push(Drift {
                    kind: "paid-session-ended",
                    subject: session.to_owned(),
                    detail: format!("Redis has the session {ended}; PostgreSQL still keeps it live"),
                    repaired,
                });
                continue;
            }
            let keys = self.app.keys.variant(&variant);
            let holder = format!("checkout:{session}");
            let stock = self.redis("EXISTS", vec![keys.stock.as_str().into()]).await?;
            if stock.first().and_then(RedisReply::as_int) != Some(1) {
                continue;
            }
            let held = self
                .redis(
                    "HGET",
                    vec![keys.hold_qty.as_str().into(), holder.as_str().into()],
                )
                .await?;
            if held.first().and_then(RedisReply::as_int) == Some(quantity) {
                continue;
            }
            let mut repaired = String::new();
            if self.repair {
                self.inventory().reload(std::slice::from_ref(&variant)).await?;
                repaired = "stock reloaded from PostgreSQL with the session's holds".into();
            }
            report.drift.push(Drift {
                kind: "paid-session-holds",
                subject: session.to_owned(),
                detail: format!("paid session holds {quantity} of {variant} in PostgreSQL, not in Redis"),
                repaired,
            });
        }
        Ok(())
    }

    /// Ruleset versions PostgreSQL published that Redis does not serve (a pointer or a
    /// version's hash lost); repaired by republishing them, as the next quote would.
    async fn rulesets(&self, report: &mut CheckReport) -> Result<()> {
        let rulesets = Rulesets::new(&self.app.redis, &self.app.sql, &self.app.keys);
        let unserved = rulesets.unserved().await?;
        if unserved.is_empty() {
            return Ok(());
        }
        let repaired = if self.repair {
            rulesets.republish().await?;
            "republished from PostgreSQL".to_owned()
        } else {
            String::new()
        };
        for kind in unserved {
            report.drift.push(Drift {
                kind: "ruleset",
                subject: format!("{}-ruleset-version", kind.name()),
                detail: "published in PostgreSQL, not served by Redis (its pointer or a hash of its version is missing)".into(),
                repaired: repaired.clone(),
            });
        }
        Ok(())
    }

    async fn outbox(&self, report: &mut CheckReport) -> Result<()> {
        let rows = self.sql(OUTBOX_BACKLOG, &[]).await?;
        let row = rows.first();
        report.outbox_pending = row.and_then(|r| r.first()?.as_int()).unwrap_or(0);
        report.outbox_oldest_seconds = row.and_then(|r| r.get(1)?.as_int()).unwrap_or(0);
        if report.outbox_oldest_seconds > OUTBOX_STALE_SECONDS {
            report.drift.push(Drift {
                kind: "outbox",
                subject: "payment_outbox".into(),
                detail: format!(
                    "{} refund(s)/cancellation(s) pending, the oldest for {} s",
                    report.outbox_pending, report.outbox_oldest_seconds
                ),
                repaired: String::new(),
            });
        }
        Ok(())
    }
}
