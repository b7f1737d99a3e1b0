//! Rulesets in Redis: publishing a version built from PostgreSQL, and reading exactly what
//! one quote needs from the current versions.
//!
//! A ruleset version lives under its own keys (`pricing:ruleset-bundle-v2:{N}:…`,
//! `discount:ruleset-bundle-v2:{N}…`), laid out per entry (one hash field per variant, per
//! bundle, per discount) so a quote reads only the entries its lines name, whatever the
//! catalog's size. Each entry is one line of `|`-separated fields at fixed positions (the
//! statements below say which), and the read script replies with one flat array of fixed
//! positions, so a quote decodes its reply by splitting strings, on the native server and
//! on Spin alike, without building JSON values. The encoding is part of the keys
//! ([`RULESET_ENCODING`](crate::keys::RULESET_ENCODING)). Publishing builds the next version beside the current one and then
//! switches the version key in one script, only forward; the replaced version stays
//! readable for `checkout_session_ttl_seconds` more, then expires.
//!
//! Version numbers come from PostgreSQL (`ruleset_versions`) and only grow, so orders from
//! before and after a Redis loss never carry one number for two rulesets. A quote that
//! finds no current version in Redis although PostgreSQL says one was published
//! republishes it, once, under a lock (DESIGN §4, invariant 8).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::cache::{DiscountEntries, PricingEntries, RulesetCache, assemble};
use super::engine::{
    BundlePricing, Discount, DiscountKind, DiscountTarget, PriceBreak, PriceList, PricingInput, VariantPrices,
};
use super::money::Currency;
use crate::error::{Error, ErrorCode, Result};
use crate::keys::{Keys, RulesetKind};
use crate::metrics::{self, Cache};
use crate::ports::{Redis, RedisArg, RedisReply, Sql, SqlValue};
use crate::script::{Script, lua, unexpected};

static SWITCH: Script = Script::new(lua!("pricing/switch.lua"));
static READ: Script = Script::new(lua!("pricing/read_parts.lua", "pricing/read.lua"));
static READ_ONE: Script = Script::new(lua!("pricing/read_parts.lua", "pricing/read_one.lua"));
static ELIGIBILITY: Script = Script::new(lua!("pricing/eligibility.lua"));

/// A version under construction expires by itself if its publish dies before switching.
const BUILD_TTL_MS: i64 = 60 * 60 * 1000;
/// How long one republish after a loss may hold its lock.
const REPUBLISH_LOCK_MS: i64 = 60 * 1000;
/// How long a request that finds another one republishing waits for it to finish (then
/// 503), asking Redis again every [`REPUBLISH_POLL_MS`].
const REPUBLISH_WAIT: Duration = Duration::from_secs(3);
const REPUBLISH_POLL_MS: u64 = 20;
/// What the lock holds for [`REPUBLISH_FAILED_MS`] after a republish failed, so that the
/// requests waiting for it answer its 503 at once instead of each doing it again.
const REPUBLISH_FAILED: &str = "failed";
const REPUBLISH_FAILED_MS: i64 = 1000;

/// What a request found at the republish lock.
enum RepublishLock {
    /// It is this request's now.
    Taken,
    /// Another request is republishing.
    Held,
    /// The last republish failed within [`REPUBLISH_FAILED_MS`].
    Failed,
}

/// Hands out the next version number of a kind: one more than the last handed out, and
/// never below `$2` (one above what Redis serves, for data published before the numbers
/// were kept here).
const NEXT_VERSION: &str = "\
INSERT INTO ruleset_versions (kind, version) VALUES ($1, $2)
ON CONFLICT (kind) DO UPDATE SET version = GREATEST(ruleset_versions.version + 1, EXCLUDED.version)
RETURNING version";

/// The kinds ever published.
const PUBLISHED_KINDS: &str = "SELECT kind FROM ruleset_versions";

/// The last version number handed out for a kind (`$1`).
const HANDED_OUT: &str = "SELECT version FROM ruleset_versions WHERE kind = $1";

/// How many of the newest version numbers a republish that PostgreSQL's rows refused
/// looks through for the version Redis served before (each refused publish uses one up).
const SEARCHED_VERSIONS: usize = 64;

/// Rows per page when building, and fields per HSET.
const PAGE: i64 = 1000;
/// How much longer than a checkout session a replaced version stays readable.
const REPLACED_MARGIN_MS: i64 = 10 * 60 * 1000;

/// A field no quote can ask for (no id holds a `:`), whose value is longer than any `hash-max-listpack-value` a
/// deployment sets (64 bytes by default), written into every hash a quote reads by field.
/// Below `hash-max-listpack-entries` (128 by default, more on some servers) Redis would
/// keep such a hash as a listpack, where each field `HMGET` asks for is a scan of every
/// entry: 32 µs for the 9 definitions a bench quote reads among 200 discounts, against
/// 2 µs in the hashtable encoding. The field holds the hash in that encoding, as written
/// and after a restart, a restore or a copy.
const HASHTABLE_FIELD: &str = ":hashtable";
/// The field of a discount version's definitions that lists the order discounts (which a
/// discount's own id therefore may not be).
const ORDER_FIELD: &str = "_order";
const HASHTABLE_FIELD_BYTES: usize = 4096;

// Every entry is one line of fields separated by `|` at fixed positions (an absent value
// is an empty field), decoded by `Fields` below; ids cannot hold a `|` (`[A-Za-z0-9_-]`).

/// `currency|group|parent|priority`
const PRICE_LISTS: &str = "\
SELECT id, concat_ws('|', currency, COALESCE(customer_group, ''), COALESCE(parent_id, ''), priority)
FROM price_lists WHERE id > $1 ORDER BY id LIMIT $2";

/// `base|currency` then `|list|min quantity|unit price` per tier, by list and quantity.
const VARIANT_PRICES: &str = "\
SELECT v.id, concat_ws('|', v.base_price_minor, v.currency)
    || COALESCE((SELECT string_agg(concat_ws('|', '', e.price_list_id, e.min_quantity, e.unit_price_minor), ''
                                   ORDER BY e.price_list_id, e.min_quantity)
                 FROM price_list_entries e WHERE e.variant_id = v.id), '')
FROM variants v WHERE v.id > $1 ORDER BY v.id LIMIT $2";

/// `fixed|price|currency|` or `percent_off|||basis points`
const BUNDLE_PRICES: &str = "\
SELECT id, concat_ws('|', pricing_kind, COALESCE(fixed_price_minor::text, ''), COALESCE(currency, ''),
                     COALESCE(percent_off_bp::text, ''))
FROM bundles WHERE active AND id > $1 ORDER BY id LIMIT $2";

/// `kind|basis points|amount|currency|target|threshold|priority|exclusive (1/0)|starts at|ends at`
/// (instants in epoch milliseconds; PostgreSQL's `-infinity` start and `infinity` end are no bound,
/// an `infinity` start and a `-infinity` end the farthest instants: never starts, always ended)
const DISCOUNTS: &str = "\
SELECT id, concat_ws('|', kind, COALESCE(basis_points::text, ''), COALESCE(amount_minor::text, ''),
    COALESCE(currency, ''), target, threshold_minor, priority, CASE WHEN exclusive THEN 1 ELSE 0 END,
    CASE WHEN starts_at IS NULL OR starts_at = '-infinity' THEN ''
         WHEN starts_at = 'infinity' THEN '9223372036854775807'
         ELSE (extract(epoch FROM starts_at) * 1000)::bigint::text END,
    CASE WHEN ends_at IS NULL OR ends_at = 'infinity' THEN ''
         WHEN ends_at = '-infinity' THEN '-9223372036854775808'
         ELSE (extract(epoch FROM ends_at) * 1000)::bigint::text END)
FROM discounts WHERE active AND id > $1 ORDER BY id LIMIT $2";

/// Discount ids `a|b|…`, here and in the two statements below.
const ORDER_DISCOUNTS: &str = "\
SELECT COALESCE(string_agg(id, '|' ORDER BY id), '') FROM discounts WHERE active AND target = 'order'";

const DISCOUNTS_BY_VARIANT: &str = "\
SELECT dv.variant_id, string_agg(dv.discount_id, '|' ORDER BY dv.discount_id)
FROM discount_variants dv JOIN discounts d ON d.id = dv.discount_id AND d.active AND d.target = 'variants'
WHERE dv.variant_id > $1 GROUP BY dv.variant_id ORDER BY dv.variant_id LIMIT $2";

const DISCOUNTS_BY_BUNDLE: &str = "\
SELECT db.bundle_id, string_agg(db.discount_id, '|' ORDER BY db.discount_id)
FROM discount_bundles db JOIN discounts d ON d.id = db.discount_id AND d.active AND d.target = 'bundles'
WHERE db.bundle_id > $1 GROUP BY db.bundle_id ORDER BY db.bundle_id LIMIT $2";

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Publication {
    /// `pricing` or `discount`.
    pub kind: &'static str,
    /// The version this publish built.
    pub version: i64,
    /// The version it replaced (0: none), or the newer one that was already current.
    pub previous_version: i64,
    /// False when a newer publish switched first: this version was built but never
    /// served (it expires by itself).
    pub switched: bool,
    /// Entries written (hash fields).
    pub entries: u64,
}

/// The versions a quote was computed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Versions {
    /// Pricing ruleset version.
    pub pricing: i64,
    /// Discount ruleset version (0: none published).
    pub discounts: i64,
}

/// What a publish has copied so far: the entries written, the rows it could not serve, and
/// the variants each discount targets (`discount:eligibility:{D}`, written once switched).
struct Copy {
    entries: u64,
    invalid: Vec<Value>,
    eligible: BTreeMap<String, Vec<String>>,
}

/// Where a statement's rows come from, and whether an entry decodes as a quote reads it.
struct Rows {
    table: &'static str,
    decodes: fn(&str, &str) -> bool,
    /// Rows of a variant and the discounts targeting it, kept inverted in `Copy::eligible`.
    eligibility: bool,
}

static PRICE_LIST_ROWS: Rows = Rows {
    table: "price_lists",
    decodes: |id, entry| price_list(id, entry).is_ok(),
    eligibility: false,
};
static VARIANT_ROWS: Rows = Rows {
    table: "variants",
    decodes: |id, entry| variant_prices(id, entry).is_ok(),
    eligibility: false,
};
static BUNDLE_ROWS: Rows = Rows {
    table: "bundles",
    decodes: |_, entry| bundle_pricing(entry).is_ok(),
    eligibility: false,
};
static DISCOUNT_ROWS: Rows = Rows {
    table: "discounts",
    decodes: |id, entry| id != ORDER_FIELD && discount(id, entry).is_ok(),
    eligibility: false,
};
/// Lists of discount ids: any list of ids reads.
static TARGET_ROWS: Rows = Rows {
    table: "discount_targets",
    decodes: |_, _| true,
    eligibility: false,
};
/// A variant's list of discount ids, which also make the discounts' eligibility sets.
static VARIANT_TARGET_ROWS: Rows = Rows {
    eligibility: true,
    ..TARGET_ROWS
};

/// Rows at most that a refused publish names.
const INVALID_SHOWN: usize = 20;

/// A publish refused because PostgreSQL holds rows no quote could read: the version
/// served before stays current.
fn invalid_ruleset(kind: RulesetKind, current: i64, mut invalid: Vec<Value>) -> Error {
    let count = invalid.len();
    invalid.truncate(INVALID_SHOWN);
    Error::Unprocessable {
        code: ErrorCode::InvalidRuleset,
        message: format!(
            "{count} {} row(s) in PostgreSQL cannot be served (a currency that is not ISO 4217, \
             a number out of range, or a field their kind needs left empty): nothing was \
             published, version {current} stays current",
            kind.name()
        ),
        details: json!({ "count": count, "invalid": invalid, "currentVersion": current }),
    }
}

/// Publishes and reads rulesets.
pub struct Rulesets<'a, R, S> {
    redis: &'a R,
    sql: &'a S,
    keys: &'a Keys,
}

impl<'a, R: Redis, S: Sql> Rulesets<'a, R, S> {
    /// The ruleset store.
    pub fn new(redis: &'a R, sql: &'a S, keys: &'a Keys) -> Self {
        Self { redis, sql, keys }
    }

    async fn redis(&self, command: &str, args: Vec<RedisArg>) -> Result<Vec<RedisReply>> {
        self.redis.execute(command, args).await.map_err(Error::from)
    }

    /// Builds the next version of a ruleset from PostgreSQL under new keys, switches to it
    /// in one script (only forward) and announces it on the channel named like the version
    /// key. A quote never sees half a version; two publishes at once build two versions.
    pub async fn publish(&self, kind: RulesetKind, replaced_ttl_seconds: u32) -> Result<Publication> {
        let current = self
            .redis("GET", vec![self.keys.ruleset_version(kind).into()])
            .await?
            .first()
            .and_then(RedisReply::as_int)
            .unwrap_or(0);
        let next = self
            .sql
            .query(
                NEXT_VERSION,
                &[SqlValue::Text(kind.name().to_owned()), SqlValue::Int(current + 1)],
            )
            .await?;
        let version = next
            .first()
            .and_then(|r| r.first()?.as_int())
            .ok_or_else(|| Error::Internal("no ruleset version handed out".into()))?;
        let keys = self.keys.ruleset_keys(kind, version);
        let mut copy = Copy {
            entries: 0,
            invalid: Vec::new(),
            eligible: BTreeMap::new(),
        };
        match kind {
            RulesetKind::Pricing => {
                self.copy_pages(PRICE_LISTS, &keys[0], &PRICE_LIST_ROWS, &mut copy)
                    .await?;
                self.copy_pages(VARIANT_PRICES, &keys[1], &VARIANT_ROWS, &mut copy)
                    .await?;
                self.copy_pages(BUNDLE_PRICES, &keys[2], &BUNDLE_ROWS, &mut copy)
                    .await?;
            }
            RulesetKind::Discounts => {
                self.copy_pages(DISCOUNTS, &keys[0], &DISCOUNT_ROWS, &mut copy)
                    .await?;
                let order = self.sql.query(ORDER_DISCOUNTS, &[]).await?;
                let order = order
                    .first()
                    .and_then(|r| r.first()?.as_text())
                    .unwrap_or("")
                    .to_owned();
                self.write(&keys[0], vec![(ORDER_FIELD.to_owned(), order)])
                    .await?;
                self.copy_pages(DISCOUNTS_BY_VARIANT, &keys[1], &VARIANT_TARGET_ROWS, &mut copy)
                    .await?;
                self.copy_pages(DISCOUNTS_BY_BUNDLE, &keys[2], &TARGET_ROWS, &mut copy)
                    .await?;
            }
        }
        if !copy.invalid.is_empty() {
            // Never switched to, so never read; dropped now rather than left to expire.
            for key in &keys {
                self.redis("DEL", vec![key.as_str().into()]).await?;
            }
            return Err(invalid_ruleset(kind, current, copy.invalid));
        }
        let entries = copy.entries;
        // Every hash but the price lists, which a quote reads whole.
        let by_field = match kind {
            RulesetKind::Pricing => &keys[1..],
            RulesetKind::Discounts => &keys[..],
        };
        for key in by_field {
            let marker = "-".repeat(HASHTABLE_FIELD_BYTES);
            self.write(key, vec![(HASHTABLE_FIELD.to_owned(), marker)])
                .await?;
        }
        let replaced_ms = i64::from(replaced_ttl_seconds) * 1000 + REPLACED_MARGIN_MS;
        let (switched, previous_version) = self.switch(kind, version, &keys, replaced_ms).await?;
        if switched && kind == RulesetKind::Discounts {
            self.write_eligibility(version, previous_version, &copy.eligible)
                .await?;
        }
        Ok(Publication {
            kind: kind.name(),
            version,
            previous_version,
            switched,
            entries,
        })
    }

    /// Moves the version pointer to `version` (only forward), makes the new version's keys
    /// permanent and the replaced version's expire after `replaced_ms`, and announces it:
    /// one script (on a Redis Cluster, [`Self::switch_per_slot`]). Returns whether it
    /// switched, and the version before.
    async fn switch(
        &self,
        kind: RulesetKind,
        version: i64,
        keys: &[String],
        replaced_ms: i64,
    ) -> Result<(bool, i64)> {
        if self.redis.is_cluster() {
            return self.switch_per_slot(kind, version, keys, replaced_ms).await;
        }
        let version_key = self.keys.ruleset_version(kind);
        let mut script_keys = vec![version_key.as_str()];
        script_keys.extend(keys.iter().map(String::as_str));
        let reply = SWITCH
            .run(
                self.redis,
                &script_keys,
                vec![
                    RedisArg::Int(version),
                    self.keys.ruleset_stem(kind).into(),
                    kind.suffixes().join(",").into(),
                    RedisArg::Int(replaced_ms),
                    self.keys.ruleset_channel(kind).into(),
                ],
            )
            .await?;
        let previous = reply
            .get(1)
            .and_then(RedisReply::as_int)
            .ok_or_else(|| unexpected(&reply))?;
        Ok((
            reply.first().and_then(RedisReply::as_text) == Some("OK"),
            previous,
        ))
    }

    /// [`Self::switch`] on a Redis Cluster, where the pointer and each version's keys live
    /// in different slots: the new keys are made permanent first (so the pointer never
    /// names keys that may expire), then the pointer moves (the same script, on its key
    /// alone), then the replaced version's keys get their expiry. A switch refused as
    /// stale lets the new keys expire again.
    async fn switch_per_slot(
        &self,
        kind: RulesetKind,
        version: i64,
        keys: &[String],
        replaced_ms: i64,
    ) -> Result<(bool, i64)> {
        for key in keys {
            self.redis("PERSIST", vec![key.as_str().into()]).await?;
        }
        let version_key = self.keys.ruleset_version(kind);
        let reply = SWITCH
            .run(
                self.redis,
                &[&version_key],
                vec![
                    RedisArg::Int(version),
                    self.keys.ruleset_stem(kind).into(),
                    "".into(),
                    RedisArg::Int(replaced_ms),
                    version_key.as_str().into(),
                ],
            )
            .await?;
        let previous = reply
            .get(1)
            .and_then(RedisReply::as_int)
            .ok_or_else(|| unexpected(&reply))?;
        let switched = reply.first().and_then(RedisReply::as_text) == Some("OK");
        let expiring = if switched {
            (previous > 0).then(|| self.keys.ruleset_keys(kind, previous))
        } else {
            Some(keys.to_vec())
        };
        for key in expiring.unwrap_or_default() {
            self.redis("PEXPIRE", vec![key.into(), RedisArg::Int(replaced_ms)])
                .await?;
        }
        Ok((switched, previous))
    }

    /// Copies `(id, entry)` rows, page by page, into a hash of the version being built.
    /// Each entry is first decoded as a quote will decode it: one that would not decode is
    /// not copied but noted in `copy.invalid`, and the publish is then refused.
    async fn copy_pages(&self, statement: &str, key: &str, rows_of: &Rows, copy: &mut Copy) -> Result<()> {
        let mut after = String::new();
        loop {
            let rows = self
                .sql
                .query(statement, &[SqlValue::Text(after.clone()), SqlValue::Int(PAGE)])
                .await?;
            let mut fields: Vec<(String, String)> = rows
                .iter()
                .filter_map(|r| Some((r.first()?.as_text()?.to_owned(), r.get(1)?.as_text()?.to_owned())))
                .collect();
            if fields.len() != rows.len() {
                return Err(Error::Internal(format!("malformed ruleset rows for {key}")));
            }
            let Some((last, _)) = fields.last() else { break };
            after = last.clone();
            fields.retain(|(id, entry)| {
                let served = (rows_of.decodes)(id, entry);
                if !served {
                    copy.invalid
                        .push(json!({ "table": rows_of.table, "id": id, "entry": entry }));
                }
                served
            });
            copy.entries += fields.len() as u64;
            if rows_of.eligibility {
                for (variant, discounts) in &fields {
                    for discount in discounts.split('|') {
                        copy.eligible
                            .entry(discount.to_owned())
                            .or_default()
                            .push(variant.clone());
                    }
                }
            }
            if !fields.is_empty() {
                self.write(key, fields).await?;
            }
        }
        Ok(())
    }

    /// Writes `discount:eligibility:{D}` (DESIGN §3), the variants each discount of the
    /// version just switched to targets, each set replaced in one script, and deletes the
    /// sets of discounts the replaced version had and this one targets no variant with.
    /// They are a view for operators and other readers: a quote reads its own version's
    /// `:variants` index, so it never sees a set of another version. A publish that a newer
    /// one overtook meanwhile leaves the sets to it.
    async fn write_eligibility(
        &self,
        version: i64,
        previous: i64,
        eligible: &BTreeMap<String, Vec<String>>,
    ) -> Result<()> {
        let current = self
            .redis(
                "GET",
                vec![self.keys.ruleset_version(RulesetKind::Discounts).into()],
            )
            .await?;
        if current.first().and_then(RedisReply::as_int) != Some(version) {
            return Ok(());
        }
        for (discount, variants) in eligible {
            let key = self.keys.discount_eligibility(discount);
            let variants = variants.iter().map(|v| RedisArg::from(v.as_str())).collect();
            ELIGIBILITY.run(self.redis, &[&key], variants).await?;
        }
        if previous > 0 {
            let definitions = self
                .keys
                .ruleset_keys(RulesetKind::Discounts, previous)
                .swap_remove(0);
            let replaced = self.redis("HKEYS", vec![definitions.into()]).await?;
            for id in replaced.iter().filter_map(RedisReply::as_text) {
                if id != ORDER_FIELD && id != HASHTABLE_FIELD && !eligible.contains_key(id) {
                    self.redis("DEL", vec![self.keys.discount_eligibility(id).into()])
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn write(&self, key: &str, fields: Vec<(String, String)>) -> Result<()> {
        let mut args = vec![RedisArg::from(key)];
        for (field, value) in fields {
            args.push(field.into());
            args.push(value.into());
        }
        self.redis("HSET", args).await?;
        self.redis("PEXPIRE", vec![key.into(), RedisArg::Int(BUILD_TTL_MS)])
            .await?;
        Ok(())
    }

    /// Reads, in one script call, the current versions and the entries for these variants
    /// and bundles, as the engine's input (prices in `currency` for `customer_group`). The
    /// entries come from `cache` when it holds them for the current versions (the script
    /// then answers only the versions and the clock), and what is read is kept there.
    ///
    /// On a Redis Cluster, `pointers` are the versions [`Self::pointers`] has just read, if
    /// the caller read them beside something else (a cart's quote: see
    /// [`price_cart`](super::quote::price_cart)); only those versions' entries are then
    /// read. On one server `pointers` is not used: the script reads the pointers in the
    /// same atomic step as the entries.
    pub async fn read(
        &self,
        cache: &RulesetCache,
        pointers: Option<Versions>,
        variants: &BTreeSet<String>,
        bundles: &BTreeSet<String>,
        currency: Currency,
        customer_group: Option<String>,
    ) -> Result<(PricingInput, Versions)> {
        // On a Redis Cluster the entries are read every time (see `cache`).
        let cached = !self.redis.is_cluster();
        let mut held = cached
            .then(|| cache.input(variants, bundles, currency, &customer_group))
            .flatten();
        let args = |held: &Option<(Versions, PricingInput)>| {
            let versions = held.as_ref().map(|(v, _)| *v);
            let mut args = vec![
                self.keys.ruleset_stem(RulesetKind::Pricing).into(),
                self.keys.ruleset_stem(RulesetKind::Discounts).into(),
                RedisArg::Int(versions.map_or(0, |v| v.pricing)),
                RedisArg::Int(versions.map_or(0, |v| v.discounts)),
                RedisArg::Int(variants.len() as i64),
            ];
            args.extend(variants.iter().map(|v| RedisArg::from(v.as_str())));
            args.push(RedisArg::Int(bundles.len() as i64));
            args.extend(bundles.iter().map(|b| RedisArg::from(b.as_str())));
            args
        };
        let mut reply = self.read_reply(variants, bundles, args(&held), pointers).await?;
        if reply == UNPUBLISHED || self.lost_discounts(cache, &reply).await? {
            self.republish().await?;
            held = None;
            reply = self.read_reply(variants, bundles, args(&held), None).await?;
        }
        if reply == UNPUBLISHED {
            return Err(not_published());
        }
        let Read {
            versions,
            now_ms,
            entries,
        } = parse(&reply, variants, bundles)?;
        match entries {
            None => {
                let (_, mut input) = held
                    .filter(|(v, _)| *v == versions)
                    .ok_or_else(|| corrupt("versions held"))?;
                metrics::cache(Cache::Ruleset, true, 1);
                input.now_ms = now_ms;
                Ok((input, versions))
            }
            Some((pricing, discounts)) => {
                metrics::cache(Cache::Ruleset, false, 1);
                let input = assemble(
                    &pricing,
                    &discounts,
                    variants,
                    bundles,
                    currency,
                    customer_group,
                    now_ms,
                )
                .ok_or_else(|| corrupt("reply"))?;
                if cached {
                    cache.keep(versions, pricing, discounts);
                }
                Ok((input, versions))
            }
        }
    }
}

/// The read script's reply when no pricing version is current.
const UNPUBLISHED: &str = "UNPUBLISHED";

/// How long a process takes PostgreSQL's word that no discount version was ever published.
const NO_DISCOUNTS_MS: i64 = 5_000;

impl<R: Redis, S: Sql> Rulesets<'_, R, S> {
    /// Whether a read found no discount version current although PostgreSQL says one was
    /// published: its pointer was lost alone (deleted by hand, a partial restore), and
    /// quoting on would drop every discount. PostgreSQL is asked only when the pointer is
    /// missing, and a "never published" is believed for a few seconds.
    async fn lost_discounts(&self, cache: &RulesetCache, reply: &str) -> Result<bool> {
        if reply.lines().nth(1) != Some("0") {
            return Ok(false);
        }
        let now = crate::clock::wall_clock_ms();
        if cache.knows_no_discounts(now) {
            return Ok(false);
        }
        let published = self.published().await?.contains(&RulesetKind::Discounts);
        if !published {
            cache.no_discounts_until(now + NO_DISCOUNTS_MS);
        }
        Ok(published)
    }
}

/// The one text a read script answers.
fn reply_text(reply: Vec<RedisReply>) -> Result<String> {
    match <[RedisReply; 1]>::try_from(reply) {
        Ok([RedisReply::Bytes(text)]) => String::from_utf8(text).map_err(|_| corrupt("reply")),
        Ok([RedisReply::Status(text)]) => Ok(text),
        Ok(other) => Err(unexpected(&other)),
        Err(other) => Err(unexpected(&other)),
    }
}

impl<R: Redis, S: Sql> Rulesets<'_, R, S> {
    /// The versions both pointers name now (0: none), read at once, one `GET` each: on a
    /// Redis Cluster they live in slots of their own, apart from the versions they name.
    pub async fn pointers(&self) -> Result<Versions> {
        let version = |kind: RulesetKind| {
            let key = self.keys.ruleset_version(kind);
            async move {
                let reply = self.redis("GET", vec![key.into()]).await?;
                Ok::<i64, Error>(reply.first().and_then(RedisReply::as_int).unwrap_or(0))
            }
        };
        let (pricing, discounts) =
            futures_util::future::join(version(RulesetKind::Pricing), version(RulesetKind::Discounts)).await;
        Ok(Versions {
            pricing: pricing?,
            discounts: discounts?,
        })
    }

    /// The read script's reply (`read.lua`): one script on one server. On a Redis Cluster
    /// both version pointers at once (unless the caller has read them: `pointers`), then
    /// each version's part at once (`read_one.lua`), joined into the same lines.
    async fn read_reply(
        &self,
        variants: &BTreeSet<String>,
        bundles: &BTreeSet<String>,
        args: Vec<RedisArg>,
        pointers: Option<Versions>,
    ) -> Result<String> {
        if !self.redis.is_cluster() {
            let keys = [
                self.keys.ruleset_version(RulesetKind::Pricing),
                self.keys.ruleset_version(RulesetKind::Discounts),
            ];
            let reply = READ.run(self.redis, &[&keys[0], &keys[1]], args).await?;
            return reply_text(reply);
        }
        let Versions { pricing, discounts } = match pointers {
            Some(read) => read,
            None => self.pointers().await?,
        };
        if pricing == 0 {
            return Ok(UNPUBLISHED.to_owned());
        }
        let mut asked = vec![RedisArg::Int(variants.len() as i64)];
        asked.extend(variants.iter().map(|v| RedisArg::from(v.as_str())));
        asked.push(RedisArg::Int(bundles.len() as i64));
        asked.extend(bundles.iter().map(|b| RedisArg::from(b.as_str())));
        let part = |kind: RulesetKind, version: i64| {
            let keys = if version > 0 {
                self.keys.ruleset_keys(kind, version)
            } else {
                Vec::new()
            };
            let mut args = vec![RedisArg::from(kind.name())];
            args.extend(asked.iter().cloned());
            async move {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                let reply = READ_ONE.run(self.redis, &keys, args).await?;
                reply_text(reply)
            }
        };
        let (prices, offers) = futures_util::future::join(
            part(RulesetKind::Pricing, pricing),
            part(RulesetKind::Discounts, discounts),
        )
        .await;
        let (prices, offers) = (prices?, offers?);
        if prices == UNPUBLISHED || offers == UNPUBLISHED {
            return Ok(UNPUBLISHED.to_owned());
        }
        Ok(format!("{pricing}\n{discounts}\n{prices}\n{offers}"))
    }

    /// Republishes, from PostgreSQL, every kind PostgreSQL says was published and Redis no
    /// longer serves (after a restart without persistence or a flush), under a lock so one
    /// request does it. The others wait for it, as a lazy stock load serves every caller,
    /// and answer 503 with Retry-After only if it takes longer than [`REPUBLISH_WAIT_MS`].
    /// Never published: 409.
    pub(crate) async fn republish(&self) -> Result<()> {
        let kinds = self.published().await?;
        if !kinds.contains(&RulesetKind::Pricing) {
            return Err(not_published());
        }
        let lock = self.keys.ruleset_republish_lock(RulesetKind::Pricing);
        let waiting_since = Instant::now();
        loop {
            match self.take_republish_lock(&lock).await? {
                RepublishLock::Taken => break,
                RepublishLock::Failed => {
                    return Err(Error::Unavailable {
                        dependency: "rulesets",
                        message: "the republish after a Redis loss just failed".into(),
                    });
                }
                RepublishLock::Held if waiting_since.elapsed() >= REPUBLISH_WAIT => {
                    return Err(Error::Unavailable {
                        dependency: "rulesets",
                        message: "the rulesets are being republished after a Redis loss".into(),
                    });
                }
                RepublishLock::Held => {}
            }
            self.redis.pause(REPUBLISH_POLL_MS).await;
            // Done by the holder: served. Failed: marked so, and answered next turn.
            if self.serves_all(&kinds).await? {
                return Ok(());
            }
        }
        let outcome = self.republish_unserved(kinds).await;
        // Done: the waiters find the rulesets served. Failed: they answer its 503 at once
        // for a second (its Retry-After), rather than each doing the work again.
        let ended = match &outcome {
            Ok(()) => self.redis("DEL", vec![lock.into()]).await,
            Err(_) => {
                let failed = vec![
                    lock.into(),
                    REPUBLISH_FAILED.into(),
                    "PX".into(),
                    RedisArg::Int(REPUBLISH_FAILED_MS),
                ];
                self.redis("SET", failed).await
            }
        };
        ended?;
        outcome
    }

    /// Publishes again each of `kinds` that Redis does not serve, under the republish lock.
    async fn republish_unserved(&self, kinds: Vec<RulesetKind>) -> Result<()> {
        for kind in kinds {
            if self.serves(kind).await? {
                continue;
            }
            // Nothing was served, so no checkout can be reading a replaced version.
            if let Err(e) = self.publish(kind, 0).await {
                self.serve_last(kind, e).await?;
            }
        }
        Ok(())
    }
}

impl<R: Redis, S: Sql> Rulesets<'_, R, S> {
    /// Takes the lock of a republish after a loss, unless another request holds it or the
    /// last one just failed (one `SET … NX GET`: the value it found).
    async fn take_republish_lock(&self, lock: &str) -> Result<RepublishLock> {
        let found = self
            .redis(
                "SET",
                vec![
                    lock.into(),
                    "1".into(),
                    "NX".into(),
                    "PX".into(),
                    RedisArg::Int(REPUBLISH_LOCK_MS),
                    "GET".into(),
                ],
            )
            .await?;
        Ok(match found.first() {
            None | Some(RedisReply::Nil) => RepublishLock::Taken,
            Some(value) if value.as_text() == Some(REPUBLISH_FAILED) => RepublishLock::Failed,
            Some(_) => RepublishLock::Held,
        })
    }

    /// Whether Redis serves every one of `kinds`.
    async fn serves_all(&self, kinds: &[RulesetKind]) -> Result<bool> {
        for &kind in kinds {
            if !self.serves(kind).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The kinds PostgreSQL says were published.
    async fn published(&self) -> Result<Vec<RulesetKind>> {
        let kinds = self.sql.query(PUBLISHED_KINDS, &[]).await?;
        Ok([RulesetKind::Pricing, RulesetKind::Discounts]
            .into_iter()
            .filter(|k| {
                kinds
                    .iter()
                    .any(|r| r.first().and_then(SqlValue::as_text) == Some(k.name()))
            })
            .collect())
    }

    /// The kinds PostgreSQL says were published and Redis does not serve (`commerce
    /// check`: a quote would republish them).
    pub(crate) async fn unserved(&self) -> Result<Vec<RulesetKind>> {
        let mut unserved = Vec::new();
        for kind in self.published().await? {
            if !self.serves(kind).await? {
                unserved.push(kind);
            }
        }
        Ok(unserved)
    }

    /// Whether Redis serves a version of `kind`: its pointer names a version whose entries
    /// are there (not one that another encoding published, or whose keys were lost).
    async fn serves(&self, kind: RulesetKind) -> Result<bool> {
        let pointer = self
            .redis("GET", vec![self.keys.ruleset_version(kind).into()])
            .await?;
        let Some(version) = pointer.first().and_then(RedisReply::as_int) else {
            return Ok(false);
        };
        self.whole(kind, version).await
    }

    /// Whether every hash of a version that always exists once published is there, each
    /// holding the `:hashtable` field (see `read_parts.lua`): all but the price lists.
    async fn whole(&self, kind: RulesetKind, version: i64) -> Result<bool> {
        let marked = self.marked(kind, version);
        let exists = self
            .redis("EXISTS", marked.iter().map(|k| k.as_str().into()).collect())
            .await?;
        Ok(exists.first().and_then(RedisReply::as_int) == Some(marked.len() as i64))
    }

    /// The hashes of a version that always exist once it is published (one slot: they
    /// share the version's hash tag).
    fn marked(&self, kind: RulesetKind, version: i64) -> Vec<String> {
        let mut keys = self.keys.ruleset_keys(kind, version);
        if kind == RulesetKind::Pricing {
            keys.remove(0);
        }
        keys
    }

    /// A republish that PostgreSQL's rows refused (one no quote can serve, written since
    /// the last publish): the version Redis served before is served again if its entries
    /// are all still there (only its pointer was lost), so one bad row never turns quotes
    /// into errors. If they are gone too, the answer is a 503: the shop cannot quote until
    /// an admin mends the rows, which the admin's own publish names (a shopper is not told
    /// them, nor told with a 422 that their request was wrong).
    async fn serve_last(&self, kind: RulesetKind, refused: Error) -> Result<()> {
        if !matches!(
            &refused,
            Error::Unprocessable {
                code: ErrorCode::InvalidRuleset,
                ..
            }
        ) {
            return Err(refused);
        }
        if let Some(version) = self.last_served(kind).await? {
            let keys = self.keys.ruleset_keys(kind, version);
            self.switch(kind, version, &keys, REPLACED_MARGIN_MS).await?;
            return Ok(());
        }
        Err(Error::Unavailable {
            dependency: "rulesets",
            message: format!(
                "the {} ruleset Redis served was lost, and PostgreSQL now holds rows no quote \
                 can serve: an admin's POST /v1/admin/{}/publish names them",
                kind.name(),
                kind.name()
            ),
        })
    }

    /// The newest version PostgreSQL handed out (of the last [`SEARCHED_VERSIONS`]) whose
    /// entries Redis keeps whole and for good: the one it served last. A replaced version
    /// has an expiry, and so has one still being built; a refused one was deleted.
    async fn last_served(&self, kind: RulesetKind) -> Result<Option<i64>> {
        let rows = self
            .sql
            .query(HANDED_OUT, &[SqlValue::Text(kind.name().to_owned())])
            .await?;
        let newest = rows.first().and_then(|r| r.first()?.as_int()).unwrap_or(0);
        for version in (1..=newest).rev().take(SEARCHED_VERSIONS) {
            if !self.whole(kind, version).await? {
                continue;
            }
            let marked = self.marked(kind, version);
            let ttl = self.redis("PTTL", vec![marked[0].as_str().into()]).await?;
            if ttl.first().and_then(RedisReply::as_int) == Some(-1) {
                return Ok(Some(version));
            }
        }
        Ok(None)
    }
}

fn not_published() -> Error {
    Error::Conflict {
        code: ErrorCode::RulesetNotPublished,
        message: "no pricing ruleset has been published yet (POST /v1/admin/pricing/publish)".into(),
        details: Value::Null,
    }
}

fn corrupt(what: &str) -> Error {
    Error::Internal(format!("malformed ruleset entry: {what}"))
}

/// The read script's reply, line by line (see `read.lua` for the layout).
struct Reply<'r> {
    lines: std::str::Split<'r, char>,
}

impl<'r> Reply<'r> {
    fn int(&mut self, what: &str) -> Result<i64> {
        self.lines
            .next()
            .and_then(|line| line.parse().ok())
            .ok_or_else(|| corrupt(what))
    }

    fn count(&mut self, what: &str) -> Result<usize> {
        usize::try_from(self.int(what)?).map_err(|_| corrupt(what))
    }

    /// An entry, `None` where the script found none (an empty line).
    fn entry(&mut self, what: &str) -> Result<Option<&'r str>> {
        match self.lines.next() {
            Some("") => Ok(None),
            Some(line) => Ok(Some(line)),
            None => Err(corrupt(what)),
        }
    }
}

/// The `|`-separated fields of one stored entry, read in their fixed order.
struct Fields<'e> {
    entry: &'e str,
    fields: std::str::Split<'e, char>,
}

impl<'e> Fields<'e> {
    fn of(entry: &'e str) -> Self {
        Self {
            entry,
            fields: entry.split('|'),
        }
    }

    fn text(&mut self) -> Result<&'e str> {
        self.fields.next().ok_or_else(|| corrupt(self.entry))
    }

    /// A field that may be empty (absent).
    fn optional(&mut self) -> Result<Option<&'e str>> {
        Ok(Some(self.text()?).filter(|field| !field.is_empty()))
    }

    fn int<T: std::str::FromStr>(&mut self) -> Result<T> {
        self.text()?.parse().map_err(|_| corrupt(self.entry))
    }

    fn optional_int<T: std::str::FromStr>(&mut self) -> Result<Option<T>> {
        self.optional()?
            .map(|field| field.parse().map_err(|_| corrupt(self.entry)))
            .transpose()
    }

    fn currency(&mut self) -> Result<Currency> {
        Currency::parse(self.text()?).map_err(|_| corrupt(self.entry))
    }

    /// Whether every field has been read.
    fn done(&mut self) -> bool {
        self.fields.next().is_none()
    }
}

/// What a read script answered: the current versions, the clock, and the versions'
/// entries for the variants and bundles asked, or none when the current versions are
/// those whose entries the caller holds.
struct Read {
    versions: Versions,
    now_ms: i64,
    entries: Option<(PricingEntries, DiscountEntries)>,
}

/// Decodes the read script's reply: fixed-position lines, each entry split on `|`, no JSON.
fn parse(reply: &str, variants: &BTreeSet<String>, bundles: &BTreeSet<String>) -> Result<Read> {
    let mut reply = Reply {
        lines: reply.split('\n'),
    };
    let versions = Versions {
        pricing: reply.int("version")?,
        discounts: reply.int("version")?,
    };
    let now_ms = reply.int("clock")?;
    if reply.lines.clone().next().is_none() {
        return Ok(Read {
            versions,
            now_ms,
            entries: None,
        });
    }

    let mut pricing = PricingEntries::default();
    let count = reply.count("list count")?;
    pricing.lists.reserve(count);
    for _ in 0..count {
        let id = reply.entry("list id")?.ok_or_else(|| corrupt("list id"))?;
        let entry = reply.entry(id)?.ok_or_else(|| corrupt(id))?;
        pricing.lists.push(price_list(id, entry)?);
    }

    for id in variants {
        let prices = reply
            .entry(id)?
            .map(|entry| variant_prices(id, entry))
            .transpose()?;
        pricing.variants.insert(id.clone(), prices);
    }
    for id in bundles {
        let price = reply.entry(id)?.map(bundle_pricing).transpose()?;
        pricing.bundles.insert(id.clone(), price);
    }

    let mut discounts = DiscountEntries::default();
    for (asked, by_subject) in [
        (variants, &mut discounts.by_variant),
        (bundles, &mut discounts.by_bundle),
    ] {
        for subject in asked {
            let ids = reply
                .entry(subject)?
                .map_or_else(Vec::new, |ids| ids.split('|').map(str::to_owned).collect());
            by_subject.insert(subject.clone(), ids);
        }
    }
    let count = reply.count("discount count")?;
    for _ in 0..count {
        let id = reply
            .entry("discount id")?
            .ok_or_else(|| corrupt("discount id"))?;
        let Some(entry) = reply.entry(id)? else { continue };
        let discount = discount(id, entry)?;
        if matches!(discount.target, DiscountTarget::OrderSubtotal { .. }) {
            discounts.order.push(id.to_owned());
        }
        discounts.definitions.insert(id.to_owned(), discount);
    }
    Ok(Read {
        versions,
        now_ms,
        entries: Some((pricing, discounts)),
    })
}

/// `currency|group|parent|priority`
fn price_list(id: &str, entry: &str) -> Result<PriceList> {
    let mut fields = Fields::of(entry);
    let list = PriceList {
        id: id.to_owned(),
        currency: fields.currency()?,
        customer_group: fields.optional()?.map(str::to_owned),
        parent_id: fields.optional()?.map(str::to_owned),
        priority: fields.int()?,
    };
    if !fields.done() {
        return Err(corrupt(entry));
    }
    Ok(list)
}

/// `base|currency` then `|list|min quantity|unit price` per tier, grouped by list.
fn variant_prices(id: &str, entry: &str) -> Result<VariantPrices> {
    let mut prices = Fields::of(entry);
    let (base_minor, currency) = (prices.int()?, prices.currency()?);
    let mut entries: Vec<(String, Vec<PriceBreak>)> = Vec::new();
    while let Some(list_id) = prices.fields.next() {
        let tier = PriceBreak {
            min_quantity: prices.int()?,
            unit_minor: prices.int()?,
        };
        match entries.last_mut() {
            Some((last, tiers)) if last == list_id => tiers.push(tier),
            _ => entries.push((list_id.to_owned(), vec![tier])),
        }
    }
    Ok(VariantPrices {
        variant_id: id.to_owned(),
        base_minor,
        currency,
        entries,
    })
}

/// `fixed|price|currency|` or `percent_off|||basis points`
fn bundle_pricing(entry: &str) -> Result<BundlePricing> {
    let mut b = Fields::of(entry);
    match (b.text()?, b.optional_int()?, b.optional()?, b.optional_int()?) {
        ("fixed", Some(unit_minor), Some(code), _) => Ok(BundlePricing::Fixed {
            unit_minor,
            currency: Currency::parse(code).map_err(|_| corrupt(entry))?,
        }),
        ("percent_off", _, _, Some(basis_points)) => Ok(BundlePricing::PercentOff { basis_points }),
        _ => Err(corrupt(entry)),
    }
}

/// A discount definition (see `DISCOUNTS`), its variant and bundle targets left empty.
fn discount(id: &str, entry: &str) -> Result<Discount> {
    let mut d = Fields::of(entry);
    let (kind, basis_points, amount, amount_currency) =
        (d.text()?, d.optional_int()?, d.optional_int()?, d.optional()?);
    let kind = match (kind, basis_points, amount, amount_currency) {
        ("percentage", Some(basis_points), _, code) => DiscountKind::Percentage {
            basis_points,
            currency: code
                .map(Currency::parse)
                .transpose()
                .map_err(|_| corrupt(entry))?,
        },
        ("fixed", _, Some(amount_minor), Some(code)) => DiscountKind::Fixed {
            amount_minor,
            currency: Currency::parse(code).map_err(|_| corrupt(entry))?,
        },
        _ => return Err(corrupt(entry)),
    };
    let target = match (d.text()?, d.int()?) {
        ("variants", _) => DiscountTarget::Variants(BTreeSet::new()),
        ("bundles", _) => DiscountTarget::Bundles(BTreeSet::new()),
        ("order", threshold_minor) => DiscountTarget::OrderSubtotal { threshold_minor },
        _ => return Err(corrupt(entry)),
    };
    let discount = Discount {
        id: id.to_owned(),
        kind,
        target,
        priority: d.int()?,
        exclusive: d.text()? == "1",
        starts_at_ms: d.optional_int()?,
        ends_at_ms: d.optional_int()?,
    };
    if !d.done() {
        return Err(corrupt(entry));
    }
    Ok(discount)
}
