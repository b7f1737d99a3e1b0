//! The bundle cache: bundle definitions, their choice sets and eligible variants, loaded
//! lazily from PostgreSQL into `bundle:{B}:…` keys (one hash slot per bundle) and kept for
//! `bundle_ttl_seconds`. A bundle line's choices are checked against it in one script.

pub mod routes;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::app::App;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{BundleId, SetId, VariantId};
use crate::keys::{BundleKeys, Keys};
use crate::metrics::{self, Cache};
use crate::ports::{Http, Redis, RedisArg, RedisReply, Sql, SqlValue};
use crate::script::{Script, lua, tag, unexpected};

static GET: Script = Script::new(lua!("bundle/get.lua"));
static STORE: Script = Script::new(lua!("bundle/store.lua"));
static CHECK: Script = Script::new(lua!("bundle/check.lua"));
static INVALIDATE: Script = Script::new(lua!("bundle/invalidate.lua"));

/// One row per (set, eligible variant) of an active bundle.
const BUNDLE_ROWS: &str = "\
SELECT b.id, b.name, b.pricing_kind, b.fixed_price_minor, b.currency, b.percent_off_bp,
       s.set_id, s.choose, v.variant_id
FROM bundles b
JOIN bundle_sets s ON s.bundle_id = b.id
LEFT JOIN bundle_set_variants v ON v.bundle_id = s.bundle_id AND v.set_id = s.set_id
WHERE b.id = $1 AND b.active
ORDER BY s.position, s.set_id, v.variant_id";

/// Every active bundle's id, for warming the cache.
const ACTIVE_BUNDLES: &str = "SELECT id FROM bundles WHERE active ORDER BY id";

/// How a bundle is priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum BundlePricing {
    /// A fixed price per bundle.
    #[serde(rename_all = "camelCase")]
    Fixed {
        /// Minor units.
        price: i64,
        /// ISO 4217 code.
        currency: String,
    },
    /// A percentage off the sum of the chosen parts, in basis points (10000 = 100 %).
    #[serde(rename_all = "camelCase")]
    PercentOff {
        /// Basis points off.
        basis_points: i64,
    },
}

/// One choice set: pick exactly `choose` distinct variants among `variant_ids`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleSet {
    /// The set.
    pub set_id: String,
    /// How many variants to choose.
    pub choose: i64,
    /// The eligible variants.
    pub variant_ids: Vec<String>,
}

/// A bundle as `GET /v1/bundles/{bundle}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    /// The bundle.
    pub bundle_id: String,
    /// Display name.
    pub name: String,
    /// How it is priced.
    pub pricing: BundlePricing,
    /// Its choice sets, in display order.
    pub sets: Vec<BundleSet>,
}

/// A bundle line's choices: per set, the chosen variants (validated ids, sorted, distinct).
pub type Choices = BTreeMap<SetId, Vec<VariantId>>;

/// The bundle cache over a Redis and a PostgreSQL port.
pub struct Bundles<'a, R, S> {
    redis: &'a R,
    sql: &'a S,
    keys: &'a Keys,
    ttl_ms: i64,
}

impl<'a, R: Redis, S: Sql> Bundles<'a, R, S> {
    /// The cache; entries live `ttl_seconds`.
    pub fn new(redis: &'a R, sql: &'a S, keys: &'a Keys, ttl_seconds: u32) -> Self {
        Self {
            redis,
            sql,
            keys,
            ttl_ms: i64::from(ttl_seconds) * 1000,
        }
    }

    /// The cache of an app: its ports and keys, entries living `bundle_ttl_seconds`.
    pub fn of<H: Http>(app: &'a App<R, S, H>) -> Self {
        Self::new(&app.redis, &app.sql, &app.keys, app.settings.bundle_ttl_seconds)
    }

    /// The bundle, from the cache or (once) from PostgreSQL. Unknown or inactive: 404.
    pub async fn get(&self, bundle: &BundleId) -> Result<Bundle> {
        let keys = self.keys.bundle(bundle);
        for round in 0..3 {
            let reply = self
                .run(&GET, &[&keys.definition, &keys.generation], Vec::new())
                .await?;
            if round == 0 {
                metrics::cache(Cache::Bundle, tag(&reply) != "MISSING", 1);
            }
            match (tag(&reply), reply.get(1)) {
                ("OK", Some(json)) => {
                    let text = json.as_text().ok_or_else(|| unexpected(&reply))?;
                    return serde_json::from_str(text).map_err(|_| unexpected(&reply));
                }
                ("MISSING", Some(generation)) => {
                    let generation = generation.as_int().ok_or_else(|| unexpected(&reply))?;
                    self.load(bundle, &keys, generation).await?;
                }
                _ => return Err(unexpected(&reply)),
            }
        }
        Err(Error::Unavailable {
            dependency: "redis",
            message: format!("bundle {bundle} keeps being invalidated while loading"),
        })
    }

    /// Checks a bundle line's choices: every set chosen, each with exactly `choose`
    /// distinct eligible variants. A broken choice is 422 `INVALID_BUNDLE_CHOICE` naming
    /// the set; an unknown bundle is 422 `UNKNOWN_BUNDLE`.
    pub async fn check(&self, bundle: &BundleId, choices: &Choices) -> Result<()> {
        let keys = self.keys.bundle(bundle);
        let eligibility: Vec<String> = choices.keys().map(|set| keys.eligibility(set)).collect();
        let mut all_keys = vec![keys.sets.as_str(), keys.generation.as_str()];
        all_keys.extend(eligibility.iter().map(String::as_str));
        let mut args = Vec::new();
        for (set, variants) in choices {
            args.push(RedisArg::from(set.as_str()));
            args.push(RedisArg::Int(variants.len() as i64));
            args.extend(variants.iter().map(|v| RedisArg::from(v.as_str())));
        }
        for round in 0..3 {
            let reply = self.run(&CHECK, &all_keys, args.clone()).await?;
            if round == 0 {
                metrics::cache(Cache::Bundle, !matches!(tag(&reply), "MISSING" | "LOST"), 1);
            }
            // Where the reply gives the generation to reload from.
            let generation_at = match tag(&reply) {
                "OK" => return Ok(()),
                "MISSING" => 1,
                // A set's eligibility lost alone is reloaded once with the rest of the
                // bundle; still without it after that, the set has no eligible variant.
                "LOST" if round == 0 => 4,
                "INVALID" | "LOST" => return Err(invalid_choice(&reply)),
                _ => return Err(unexpected(&reply)),
            };
            let generation = reply
                .get(generation_at)
                .and_then(RedisReply::as_int)
                .ok_or_else(|| unexpected(&reply))?;
            self.load(bundle, &keys, generation).await.map_err(|e| match e {
                Error::NotFound { message, .. } => Error::Unprocessable {
                    code: ErrorCode::UnknownBundle,
                    message,
                    details: json!({ "bundleId": bundle.as_str() }),
                },
                other => other,
            })?;
        }
        Err(Error::Unavailable {
            dependency: "redis",
            message: format!("bundle {bundle} keeps being invalidated while loading"),
        })
    }

    /// Drops the bundle's cache; the next use reloads it from PostgreSQL.
    pub async fn invalidate(&self, bundle: &BundleId) -> Result<()> {
        let keys = self.keys.bundle(bundle);
        let sets = self
            .redis
            .execute("HKEYS", vec![keys.sets.as_str().into()])
            .await?;
        let eligibility: Vec<String> = sets
            .iter()
            .filter_map(|s| SetId::parse(s.as_text()?).ok())
            .map(|s| keys.eligibility(&s))
            .collect();
        let mut all = vec![
            keys.definition.as_str(),
            keys.sets.as_str(),
            keys.generation.as_str(),
        ];
        all.extend(eligibility.iter().map(String::as_str));
        self.run(&INVALIDATE, &all, vec![RedisArg::Int(self.ttl_ms)])
            .await?;
        Ok(())
    }

    /// Reloads every active bundle from PostgreSQL into the cache (what was cached of it is
    /// dropped first, so a bundle changed in PostgreSQL, or partly lost from Redis, is
    /// cached as it is now), calling `progress` with the count of bundles done. Returns
    /// the bundles cached and those skipped: an active bundle with no sets is none a
    /// shopper can choose (its GET is 404), so nothing of it is cached.
    pub async fn warm(&self, mut progress: impl FnMut(u64)) -> Result<(u64, Vec<BundleId>)> {
        let rows = self.sql.query(ACTIVE_BUNDLES, &[]).await?;
        let (mut warmed, mut skipped) = (0, Vec::new());
        for id in rows
            .iter()
            .filter_map(|r| BundleId::parse(r.first()?.as_text()?).ok())
        {
            self.invalidate(&id).await?;
            match self.get(&id).await {
                Ok(_) => warmed += 1,
                Err(Error::NotFound { .. }) => skipped.push(id),
                Err(other) => return Err(other),
            }
            progress(warmed + skipped.len() as u64);
        }
        Ok((warmed, skipped))
    }

    /// Reads the bundle from PostgreSQL and stores it, unless invalidated meanwhile.
    async fn load(&self, bundle: &BundleId, keys: &BundleKeys, generation: i64) -> Result<()> {
        let rows = self
            .sql
            .query(BUNDLE_ROWS, &[SqlValue::Text(bundle.to_string())])
            .await?;
        let definition = assemble(bundle, &rows)?;
        let set_ids: Vec<SetId> = definition
            .sets
            .iter()
            .map(|s| SetId::parse(&s.set_id))
            .collect::<Result<_>>()?;
        let eligibility: Vec<String> = set_ids.iter().map(|s| keys.eligibility(s)).collect();
        let mut all = vec![
            keys.definition.as_str(),
            keys.sets.as_str(),
            keys.generation.as_str(),
        ];
        all.extend(eligibility.iter().map(String::as_str));
        let json = serde_json::to_string(&definition).map_err(|e| Error::Internal(e.to_string()))?;
        let mut args = vec![RedisArg::Int(generation), RedisArg::Int(self.ttl_ms), json.into()];
        for set in &definition.sets {
            args.push(set.set_id.as_str().into());
            args.push(RedisArg::Int(set.choose));
            args.push(RedisArg::Int(set.variant_ids.len() as i64));
            args.extend(set.variant_ids.iter().map(|v| RedisArg::from(v.as_str())));
        }
        // A STALE reply means an invalidation ran meanwhile; the caller simply looks again.
        self.run(&STORE, &all, args).await?;
        Ok(())
    }

    async fn run(&self, script: &Script, keys: &[&str], args: Vec<RedisArg>) -> Result<Vec<RedisReply>> {
        script.run(self.redis, keys, args).await.map_err(Error::from)
    }
}

/// Builds the bundle from its (set, variant) rows; no rows: unknown or inactive (404).
fn assemble(bundle: &BundleId, rows: &[Vec<SqlValue>]) -> Result<Bundle> {
    let first = rows
        .first()
        .ok_or_else(|| Error::not_found(ErrorCode::BundleNotFound, format!("unknown bundle: {bundle}")))?;
    let text = |row: &[SqlValue], i: usize| row.get(i).and_then(SqlValue::as_text).map(str::to_owned);
    let int = |row: &[SqlValue], i: usize| row.get(i).and_then(SqlValue::as_int);
    let bad = || Error::Internal(format!("malformed bundle row for {bundle}"));
    let pricing = match text(first, 2).as_deref() {
        Some("fixed") => BundlePricing::Fixed {
            price: int(first, 3).ok_or_else(bad)?,
            currency: text(first, 4).ok_or_else(bad)?,
        },
        Some("percent_off") => BundlePricing::PercentOff {
            basis_points: int(first, 5).ok_or_else(bad)?,
        },
        _ => return Err(bad()),
    };
    let mut sets: Vec<BundleSet> = Vec::new();
    for row in rows {
        let set_id = text(row, 6).ok_or_else(bad)?;
        if sets.last().is_none_or(|s| s.set_id != set_id) {
            sets.push(BundleSet {
                set_id,
                choose: int(row, 7).ok_or_else(bad)?,
                variant_ids: Vec::new(),
            });
        }
        if let (Some(set), Some(variant)) = (sets.last_mut(), text(row, 8)) {
            set.variant_ids.push(variant);
        }
    }
    Ok(Bundle {
        bundle_id: bundle.to_string(),
        name: text(first, 1).ok_or_else(bad)?,
        pricing,
        sets,
    })
}

fn invalid_choice(reply: &[RedisReply]) -> Error {
    let text = |i: usize| {
        reply
            .get(i)
            .and_then(RedisReply::as_text)
            .unwrap_or("")
            .to_owned()
    };
    let (set, reason, detail) = (text(1), text(2), text(3));
    let message = match reason.as_str() {
        "missing" => format!("set {set} must be chosen"),
        "unknown" => format!("the bundle has no set {set}"),
        "count" => format!("set {set} needs exactly {detail} variant(s)"),
        _ => format!("variant {detail} is not eligible in set {set}"),
    };
    Error::Unprocessable {
        code: ErrorCode::InvalidBundleChoice,
        message,
        details: json!({ "setId": set, "reason": reason }),
    }
}
