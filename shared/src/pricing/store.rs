//! Rulesets in Redis: publishing a version built from PostgreSQL, and reading exactly what
//! one quote needs from the current versions.
//!
//! A ruleset version lives under its own keys (`pricing:ruleset-bundle:{N}:…`,
//! `discount:ruleset-bundle:{N}…`), laid out per entry (one hash field per variant, per
//! bundle, per discount) so a quote reads only the entries its lines name, whatever the
//! catalog's size. Publishing builds the next version beside the current one and then
//! switches the version key in one script, only forward; the replaced version stays
//! readable for `checkout_session_ttl_seconds` more, then expires.
//!
//! Version numbers come from PostgreSQL (`ruleset_versions`) and only grow, so orders from
//! before and after a Redis loss never carry one number for two rulesets. A quote that
//! finds no current version in Redis although PostgreSQL says one was published
//! republishes it, once, under a lock (DESIGN §4, invariant 8).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use super::engine::{
    BundlePricing, Discount, DiscountKind, DiscountTarget, PriceBreak, PriceList, PricingInput, VariantPrices,
};
use super::money::Currency;
use crate::error::{Error, PortError, Result};
use crate::keys::{Keys, RulesetKind};
use crate::ports::{Redis, RedisArg, RedisReply, Sql, SqlValue};
use crate::script::{Script, unexpected};

static SWITCH: Script = Script::new(include_str!("switch.lua"));
static READ: Script = Script::new(include_str!("read.lua"));

/// A version under construction expires by itself if its publish dies before switching.
const BUILD_TTL_MS: i64 = 60 * 60 * 1000;
/// How long one republish after a loss may hold its lock.
const REPUBLISH_LOCK_MS: i64 = 60 * 1000;

/// Hands out the next version number of a kind: one more than the last handed out, and
/// never below `$2` (one above what Redis serves, for data published before the numbers
/// were kept here).
const NEXT_VERSION: &str = "\
INSERT INTO ruleset_versions (kind, version) VALUES ($1, $2)
ON CONFLICT (kind) DO UPDATE SET version = GREATEST(ruleset_versions.version + 1, EXCLUDED.version)
RETURNING version";

/// The kinds ever published.
const PUBLISHED_KINDS: &str = "SELECT kind FROM ruleset_versions";

/// Rows per page when building, and fields per HSET.
const PAGE: i64 = 1000;
/// How much longer than a checkout session a replaced version stays readable.
const REPLACED_MARGIN_MS: i64 = 10 * 60 * 1000;

const PRICE_LISTS: &str = "\
SELECT id, json_build_object('currency', currency, 'group', customer_group,
                             'parent', parent_id, 'priority', priority)::text
FROM price_lists WHERE id > $1 ORDER BY id LIMIT $2";

const VARIANT_PRICES: &str = "\
SELECT v.id, json_build_object('base', v.base_price_minor, 'currency', v.currency, 'entries',
    COALESCE((SELECT json_agg(json_build_array(e.price_list_id, e.min_quantity, e.unit_price_minor)
                              ORDER BY e.price_list_id, e.min_quantity)
              FROM price_list_entries e WHERE e.variant_id = v.id), '[]'::json))::text
FROM variants v WHERE v.id > $1 ORDER BY v.id LIMIT $2";

const BUNDLE_PRICES: &str = "\
SELECT id, json_build_object('kind', pricing_kind, 'price', fixed_price_minor, 'currency', currency,
                             'basisPoints', percent_off_bp)::text
FROM bundles WHERE active AND id > $1 ORDER BY id LIMIT $2";

const DISCOUNTS: &str = "\
SELECT id, json_build_object('kind', kind, 'basisPoints', basis_points, 'amount', amount_minor,
    'currency', currency, 'target', target, 'threshold', threshold_minor, 'priority', priority,
    'exclusive', exclusive,
    'startsAt', (extract(epoch FROM starts_at) * 1000)::bigint,
    'endsAt', (extract(epoch FROM ends_at) * 1000)::bigint)::text
FROM discounts WHERE active AND id > $1 ORDER BY id LIMIT $2";

const ORDER_DISCOUNTS: &str = "\
SELECT COALESCE(json_agg(id ORDER BY id), '[]'::json)::text FROM discounts WHERE active AND target = 'order'";

const DISCOUNTS_BY_VARIANT: &str = "\
SELECT dv.variant_id, json_agg(dv.discount_id ORDER BY dv.discount_id)::text
FROM discount_variants dv JOIN discounts d ON d.id = dv.discount_id AND d.active AND d.target = 'variants'
WHERE dv.variant_id > $1 GROUP BY dv.variant_id ORDER BY dv.variant_id LIMIT $2";

const DISCOUNTS_BY_BUNDLE: &str = "\
SELECT db.bundle_id, json_agg(db.discount_id ORDER BY db.discount_id)::text
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
        self.redis.execute(command, args).await.map_err(PortError::redis)
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
            .await
            .map_err(PortError::sql)?;
        let version = next
            .first()
            .and_then(|r| r.first()?.as_int())
            .ok_or_else(|| Error::Internal("no ruleset version handed out".into()))?;
        let keys = self.keys.ruleset_keys(kind, version);
        let mut entries = 0;
        match kind {
            RulesetKind::Pricing => {
                entries += self.copy_pages(PRICE_LISTS, &keys[0]).await?;
                entries += self.copy_pages(VARIANT_PRICES, &keys[1]).await?;
                entries += self.copy_pages(BUNDLE_PRICES, &keys[2]).await?;
            }
            RulesetKind::Discounts => {
                entries += self.copy_pages(DISCOUNTS, &keys[0]).await?;
                let order = self
                    .sql
                    .query(ORDER_DISCOUNTS, &[])
                    .await
                    .map_err(PortError::sql)?;
                let order = order
                    .first()
                    .and_then(|r| r.first()?.as_text())
                    .unwrap_or("[]")
                    .to_owned();
                self.write(&keys[0], vec![("_order".to_owned(), order)]).await?;
                entries += self.copy_pages(DISCOUNTS_BY_VARIANT, &keys[1]).await?;
                entries += self.copy_pages(DISCOUNTS_BY_BUNDLE, &keys[2]).await?;
            }
        }
        let replaced_ms = i64::from(replaced_ttl_seconds) * 1000 + REPLACED_MARGIN_MS;
        let (switched, previous_version) = if self.redis.is_cluster() {
            self.switch_per_slot(kind, version, &keys, replaced_ms).await?
        } else {
            self.switch(kind, version, &keys, replaced_ms).await?
        };
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
    /// one script. Returns whether it switched, and the version before.
    async fn switch(&self, kind: RulesetKind, version: i64, keys: &[String], replaced_ms: i64) -> Result<(bool, i64)> {
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
                    version_key.as_str().into(),
                ],
            )
            .await
            .map_err(PortError::redis)?;
        let previous = reply
            .get(1)
            .and_then(RedisReply::as_int)
            .ok_or_else(|| unexpected(&reply))?;
        Ok((reply.first().and_then(RedisReply::as_text) == Some("OK"), previous))
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
            .await
            .map_err(PortError::redis)?;
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

    /// Copies `(field, json)` rows, page by page, into a hash of the version being built.
    async fn copy_pages(&self, statement: &str, key: &str) -> Result<u64> {
        let mut after = String::new();
        let mut copied = 0;
        loop {
            let rows = self
                .sql
                .query(statement, &[SqlValue::Text(after.clone()), SqlValue::Int(PAGE)])
                .await
                .map_err(PortError::sql)?;
            let fields: Vec<(String, String)> = rows
                .iter()
                .filter_map(|r| Some((r.first()?.as_text()?.to_owned(), r.get(1)?.as_text()?.to_owned())))
                .collect();
            if fields.len() != rows.len() {
                return Err(Error::Internal(format!("malformed ruleset rows for {key}")));
            }
            let Some((last, _)) = fields.last() else { break };
            after = last.clone();
            copied += fields.len() as u64;
            self.write(key, fields).await?;
        }
        Ok(copied)
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
    /// and bundles, as the engine's input (prices in `currency` for `customer_group`).
    pub async fn read(
        &self,
        variants: &BTreeSet<String>,
        bundles: &BTreeSet<String>,
        currency: Currency,
        customer_group: Option<String>,
    ) -> Result<(PricingInput, Versions)> {
        let mut args = vec![
            self.keys.ruleset_stem(RulesetKind::Pricing).into(),
            self.keys.ruleset_stem(RulesetKind::Discounts).into(),
            RedisArg::Int(variants.len() as i64),
        ];
        args.extend(variants.iter().map(|v| RedisArg::from(v.as_str())));
        args.push(RedisArg::Int(bundles.len() as i64));
        args.extend(bundles.iter().map(|b| RedisArg::from(b.as_str())));
        let version_keys = [
            self.keys.ruleset_version(RulesetKind::Pricing),
            self.keys.ruleset_version(RulesetKind::Discounts),
        ];
        let mut reply = READ
            .run(self.redis, &[&version_keys[0], &version_keys[1]], args.clone())
            .await
            .map_err(PortError::redis)?;
        if reply.first().and_then(RedisReply::as_text) == Some("UNPUBLISHED") {
            self.republish().await?;
            reply = READ
                .run(self.redis, &[&version_keys[0], &version_keys[1]], args)
                .await
                .map_err(PortError::redis)?;
        }
        let text = match reply.first().and_then(RedisReply::as_text) {
            Some("UNPUBLISHED") => return Err(not_published()),
            Some(text) => text,
            None => return Err(unexpected(&reply)),
        };
        let read: Value = serde_json::from_str(text).map_err(|_| unexpected(&reply))?;
        decode(&read, variants, bundles, currency, customer_group)
    }
}

impl<R: Redis, S: Sql> Rulesets<'_, R, S> {
    /// Republishes, from PostgreSQL, every kind PostgreSQL says was published and Redis no
    /// longer serves (after a restart without persistence or a flush), under a lock so one
    /// request does it while the others answer 503 with Retry-After. Never published: 409.
    async fn republish(&self) -> Result<()> {
        let kinds = self
            .sql
            .query(PUBLISHED_KINDS, &[])
            .await
            .map_err(PortError::sql)?;
        let kinds: Vec<RulesetKind> = [RulesetKind::Pricing, RulesetKind::Discounts]
            .into_iter()
            .filter(|k| {
                kinds
                    .iter()
                    .any(|r| r.first().and_then(SqlValue::as_text) == Some(k.name()))
            })
            .collect();
        if !kinds.contains(&RulesetKind::Pricing) {
            return Err(not_published());
        }
        let lock = self.keys.ruleset_republish_lock(RulesetKind::Pricing);
        let taken = self
            .redis(
                "SET",
                vec![
                    lock.as_str().into(),
                    "1".into(),
                    "NX".into(),
                    "PX".into(),
                    RedisArg::Int(REPUBLISH_LOCK_MS),
                ],
            )
            .await?;
        if taken.first().and_then(RedisReply::as_text) != Some("OK") {
            return Err(Error::Unavailable {
                dependency: "rulesets",
                message: "the rulesets are being republished after a Redis loss".into(),
            });
        }
        let mut outcome = Ok(());
        for kind in kinds {
            let served = self
                .redis("GET", vec![self.keys.ruleset_version(kind).into()])
                .await?;
            if served.first().is_some_and(|r| r.as_int().is_some()) {
                continue;
            }
            // Nothing was served, so no checkout can be reading a replaced version.
            if let Err(e) = self.publish(kind, 0).await {
                outcome = Err(e);
                break;
            }
        }
        self.redis("DEL", vec![lock.into()]).await?;
        outcome
    }
}

fn not_published() -> Error {
    Error::Conflict {
        code: "RULESET_NOT_PUBLISHED",
        message: "no pricing ruleset has been published yet (POST /v1/admin/pricing/publish)".into(),
        details: Value::Null,
    }
}

fn corrupt(what: &str) -> Error {
    Error::Internal(format!("malformed ruleset entry: {what}"))
}

/// cjson encodes an empty Lua table as `{}`: read it as an empty list.
fn list(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

/// Parses a JSON document stored as a hash value (absent: `None`).
fn stored(value: &Value) -> Result<Option<Value>> {
    match value.as_str() {
        None => Ok(None),
        Some(text) => serde_json::from_str(text).map(Some).map_err(|_| corrupt(text)),
    }
}

fn currency_of(value: &Value) -> Result<Currency> {
    Currency::parse(value.as_str().ok_or_else(|| corrupt("currency"))?)
}

fn int(value: &Value, what: &str) -> Result<i64> {
    value.as_i64().ok_or_else(|| corrupt(what))
}

fn decode(
    read: &Value,
    variants: &BTreeSet<String>,
    bundles: &BTreeSet<String>,
    currency: Currency,
    customer_group: Option<String>,
) -> Result<(PricingInput, Versions)> {
    let versions = Versions {
        pricing: int(&read["pricing"], "version")?,
        discounts: int(&read["discounts"], "version")?,
    };
    let lists = list(&read["lists"])
        .chunks(2)
        .map(|pair| {
            let id = pair[0].as_str().ok_or_else(|| corrupt("list id"))?.to_owned();
            let list = stored(pair.get(1).unwrap_or(&Value::Null))?.ok_or_else(|| corrupt(&id))?;
            Ok(PriceList {
                currency: currency_of(&list["currency"])?,
                customer_group: list["group"].as_str().map(str::to_owned),
                parent_id: list["parent"].as_str().map(str::to_owned),
                priority: i32::try_from(int(&list["priority"], "priority")?)
                    .map_err(|_| corrupt("priority"))?,
                id,
            })
        })
        .collect::<Result<Vec<_>>>()?;

    let mut variant_prices = Vec::new();
    for (id, entry) in variants.iter().zip(list(&read["prices"])) {
        let Some(entry) = stored(entry)? else { continue };
        let mut by_list: BTreeMap<String, Vec<PriceBreak>> = BTreeMap::new();
        for e in list(&entry["entries"]) {
            let (Some(list_id), Some(min), Some(unit)) = (e[0].as_str(), e[1].as_u64(), e[2].as_i64()) else {
                return Err(corrupt(id));
            };
            by_list.entry(list_id.to_owned()).or_default().push(PriceBreak {
                min_quantity: u32::try_from(min).map_err(|_| corrupt(id))?,
                unit_minor: unit,
            });
        }
        variant_prices.push(VariantPrices {
            variant_id: id.clone(),
            base_minor: int(&entry["base"], "base price")?,
            currency: currency_of(&entry["currency"])?,
            entries: by_list.into_iter().collect(),
        });
    }

    let mut bundle_prices = BTreeMap::new();
    for (id, entry) in bundles.iter().zip(list(&read["bundles"])) {
        let Some(entry) = stored(entry)? else { continue };
        let pricing = match entry["kind"].as_str() {
            Some("fixed") => BundlePricing::Fixed {
                unit_minor: int(&entry["price"], "bundle price")?,
                currency: currency_of(&entry["currency"])?,
            },
            Some("percent_off") => BundlePricing::PercentOff {
                basis_points: u32::try_from(int(&entry["basisPoints"], "basis points")?)
                    .map_err(|_| corrupt(id))?,
            },
            _ => return Err(corrupt(id)),
        };
        bundle_prices.insert(id.clone(), pricing);
    }

    // Who each discount applies to, among the quoted variants and bundles.
    let mut targets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (ids, subjects) in [
        (&read["variantDiscounts"], variants),
        (&read["bundleDiscounts"], bundles),
    ] {
        for (subject, discounts) in subjects.iter().zip(list(ids)) {
            for discount in stored(discounts)?.as_ref().map_or(&[][..], list) {
                let discount = discount.as_str().ok_or_else(|| corrupt("discount id"))?;
                targets
                    .entry(discount.to_owned())
                    .or_default()
                    .insert(subject.clone());
            }
        }
    }
    let mut discounts = Vec::new();
    for pair in list(&read["definitions"]) {
        let id = pair[0].as_str().ok_or_else(|| corrupt("discount id"))?.to_owned();
        let Some(d) = stored(&pair[1])? else { continue };
        let applies_to = targets.remove(&id).unwrap_or_default();
        let target = match d["target"].as_str() {
            Some("variants") => DiscountTarget::Variants(applies_to),
            Some("bundles") => DiscountTarget::Bundles(applies_to),
            Some("order") => DiscountTarget::OrderSubtotal {
                threshold_minor: int(&d["threshold"], "threshold")?,
            },
            _ => return Err(corrupt(&id)),
        };
        let kind = match d["kind"].as_str() {
            Some("percentage") => DiscountKind::Percentage {
                basis_points: u32::try_from(int(&d["basisPoints"], "basis points")?)
                    .map_err(|_| corrupt(&id))?,
            },
            Some("fixed") => DiscountKind::Fixed {
                amount_minor: int(&d["amount"], "amount")?,
                currency: currency_of(&d["currency"])?,
            },
            _ => return Err(corrupt(&id)),
        };
        discounts.push(Discount {
            kind,
            target,
            priority: i32::try_from(int(&d["priority"], "priority")?).map_err(|_| corrupt(&id))?,
            exclusive: d["exclusive"].as_bool().unwrap_or(false),
            starts_at_ms: d["startsAt"].as_i64(),
            ends_at_ms: d["endsAt"].as_i64(),
            id,
        });
    }
    let input = PricingInput {
        price_lists: lists,
        variants: variant_prices,
        bundles: bundle_prices,
        discounts,
        customer_group,
        currency,
        now_ms: int(&read["now"], "clock")?,
    };
    Ok((input, versions))
}
