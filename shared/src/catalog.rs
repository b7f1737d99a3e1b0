//! The deterministic demo catalog of `commerce seed --variants N`: products `prod-1…`
//! (four variants each), variants `var-1 … var-N` with a base price in EUR, and 100 units
//! on hand of each. Running it again gives the same catalog and resets stock to 100.
//! Also: the check that variants named by clients exist in the catalog.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::{Error, ErrorCode, Result};
use crate::ids::VariantId;
use crate::keys::Keys;
use crate::metrics::{self, Cache};
use crate::ports::{Redis, RedisArg, RedisReply, Sql, SqlValue};

/// Units on hand of every seeded variant.
pub const SEED_ON_HAND: i64 = 100;

/// Variants per seeded product.
const VARIANTS_PER_PRODUCT: i64 = 4;

/// Rows per seeding statement, so progress shows on large catalogs.
const SEED_CHUNK: i64 = 10_000;

const SEED_PRODUCTS: &str = "\
INSERT INTO products (id, name)
SELECT 'prod-' || g, 'Demo product ' || g FROM generate_series($1::bigint, $2::bigint) g
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name";

/// Prices are spread from 5.00 to 99.00 EUR by a fixed formula, so they are the same on
/// every run.
const SEED_VARIANTS: &str = "\
INSERT INTO variants (id, product_id, sku, name, base_price_minor, currency)
SELECT 'var-' || g, 'prod-' || ((g - 1) / $3::bigint + 1), 'SKU-' || lpad(g::text, 8, '0'),
       'Demo variant ' || g, 500 + (g * 7919 % 95) * 100, 'EUR'
FROM generate_series($1::bigint, $2::bigint) g
ON CONFLICT (id) DO UPDATE SET product_id = EXCLUDED.product_id, sku = EXCLUDED.sku,
    name = EXCLUDED.name, base_price_minor = EXCLUDED.base_price_minor, currency = EXCLUDED.currency";

const SEED_LEVELS: &str = "\
INSERT INTO inventory_levels (variant_id, on_hand)
SELECT 'var-' || g, $3::bigint FROM generate_series($1::bigint, $2::bigint) g
ON CONFLICT (variant_id) DO UPDATE SET on_hand = EXCLUDED.on_hand, max_per_order = NULL,
    version = inventory_levels.version + 1, updated_at = now()";

/// The demo bundles, written when the catalog has at least [`BUNDLE_MIN_VARIANTS`]:
/// `bundle-1` "Outfit" (2 of var-1…8 and 1 of var-9…12, fixed 49.99 EUR), `bundle-2`
/// "Any three" (3 of var-1…20, 15 % off), `bundle-3` "Duo" (1 of var-1…4 and 1 of
/// var-5…8, 10 % off).
const SEED_BUNDLES: &str = "\
INSERT INTO bundles (id, name, pricing_kind, fixed_price_minor, currency, percent_off_bp) VALUES
    ('bundle-1', 'Outfit: two tops and a cap', 'fixed', 4999, 'EUR', NULL),
    ('bundle-2', 'Any three, 15% off', 'percent_off', NULL, NULL, 1500),
    ('bundle-3', 'Duo, 10% off', 'percent_off', NULL, NULL, 1000)
ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, pricing_kind = EXCLUDED.pricing_kind,
    fixed_price_minor = EXCLUDED.fixed_price_minor, currency = EXCLUDED.currency,
    percent_off_bp = EXCLUDED.percent_off_bp, active = true";

const SEED_BUNDLE_SETS: &str = "\
INSERT INTO bundle_sets (bundle_id, set_id, choose, position) VALUES
    ('bundle-1', 'tops', 2, 1), ('bundle-1', 'caps', 1, 2),
    ('bundle-2', 'items', 3, 1),
    ('bundle-3', 'first', 1, 1), ('bundle-3', 'second', 1, 2)
ON CONFLICT (bundle_id, set_id) DO UPDATE SET choose = EXCLUDED.choose, position = EXCLUDED.position";

const SEED_BUNDLE_VARIANTS: &str = "\
INSERT INTO bundle_set_variants (bundle_id, set_id, variant_id)
SELECT b, s, 'var-' || g FROM (VALUES
    ('bundle-1', 'tops', 1, 8), ('bundle-1', 'caps', 9, 12),
    ('bundle-2', 'items', 1, 20),
    ('bundle-3', 'first', 1, 4), ('bundle-3', 'second', 5, 8)) AS r(b, s, lo, hi),
    generate_series(lo, hi) g
ON CONFLICT DO NOTHING";

/// The demo price lists: `pl-default` for everyone (every 10th variant 10 % off),
/// `pl-wholesale` for group `wholesale` under `pl-default` (every 2nd variant 20 % off,
/// 30 % from 10 units), `pl-vip` for group `vip` (every 3rd variant 15 % off).
const SEED_PRICE_LISTS: &str = "\
INSERT INTO price_lists (id, currency, customer_group, parent_id, priority) VALUES
    ('pl-default', 'EUR', NULL, NULL, 0),
    ('pl-wholesale', 'EUR', 'wholesale', 'pl-default', 10),
    ('pl-vip', 'EUR', 'vip', NULL, 5)
ON CONFLICT (id) DO UPDATE SET currency = EXCLUDED.currency, customer_group = EXCLUDED.customer_group,
    parent_id = EXCLUDED.parent_id, priority = EXCLUDED.priority";

const SEED_PRICE_ENTRIES: &str = "\
INSERT INTO price_list_entries (price_list_id, variant_id, min_quantity, unit_price_minor)
SELECT l, v.id, q, v.base_price_minor * pct / 100
FROM variants v
JOIN LATERAL (VALUES ('pl-default', 1, 90, 10), ('pl-wholesale', 1, 80, 2), ('pl-wholesale', 10, 70, 2),
                     ('pl-vip', 1, 85, 3)) AS r(l, q, pct, every)
  ON substr(v.id, 5)::bigint % every = 0
WHERE v.id ~ '^var-[0-9]+$' AND substr(v.id, 5)::bigint BETWEEN $1 AND $2
ON CONFLICT (price_list_id, variant_id, min_quantity) DO UPDATE SET unit_price_minor = EXCLUDED.unit_price_minor";

/// The demo discounts: `disc-1` 10 % off var-1…10 (priority 10), `disc-2` 5 EUR off
/// orders from 100 EUR (priority 5), `disc-3` 20 % off `bundle-2`, exclusive (priority 8),
/// `disc-4` 5 % off var-11…20 (priority 1); then `disc-5…N`, each 1–20 % off 50 variants.
const SEED_DISCOUNTS: &str = "\
INSERT INTO discounts (id, kind, basis_points, amount_minor, currency, target, threshold_minor, priority, exclusive)
SELECT * FROM (VALUES
    ('disc-1', 'percentage', 1000::bigint, NULL::bigint, NULL, 'variants', 0::bigint, 10::bigint, false),
    ('disc-2', 'fixed', NULL, 500, 'EUR', 'order', 10000, 5, false),
    ('disc-3', 'percentage', 2000, NULL, NULL, 'bundles', 0, 8, true),
    ('disc-4', 'percentage', 500, NULL, NULL, 'variants', 0, 1, false)) AS d
WHERE $1::bigint >= 4
UNION ALL
SELECT 'disc-' || g, 'percentage', (g % 20 + 1) * 100, NULL, NULL, 'variants', 0, g % 7, false
FROM generate_series(5, $1::bigint) g
ON CONFLICT (id) DO UPDATE SET kind = EXCLUDED.kind, basis_points = EXCLUDED.basis_points,
    amount_minor = EXCLUDED.amount_minor, currency = EXCLUDED.currency, target = EXCLUDED.target,
    threshold_minor = EXCLUDED.threshold_minor, priority = EXCLUDED.priority, exclusive = EXCLUDED.exclusive";

const SEED_DISCOUNT_VARIANTS: &str = "\
INSERT INTO discount_variants (discount_id, variant_id)
SELECT 'disc-1', 'var-' || g FROM generate_series(1, least(10, $2::bigint)) g
UNION ALL
SELECT 'disc-4', 'var-' || g FROM generate_series(11, least(20, $2::bigint)) g
UNION ALL
SELECT 'disc-' || d, 'var-' || ((d * 50 + k) % $2::bigint + 1)
FROM generate_series(5, $1::bigint) d, generate_series(0, 49) k
ON CONFLICT DO NOTHING";

const SEED_DISCOUNT_BUNDLES: &str = "\
INSERT INTO discount_bundles (discount_id, bundle_id) VALUES ('disc-3', 'bundle-2') ON CONFLICT DO NOTHING";

/// Fewest variants for which the demo bundles are seeded.
pub const BUNDLE_MIN_VARIANTS: i64 = 20;

/// Demo discounts when the seed is not told how many.
pub const SEED_DISCOUNTS_DEFAULT: i64 = 4;

/// Writes the demo catalog with `variants` variants, price lists, `discounts` discounts
/// (at least the 4 demo ones; 0 for none) and the demo bundles when there are enough
/// variants, calling `progress` with the number of variants written so far. Redis is not
/// touched: reconcile and publish afterwards.
pub async fn seed(
    sql: &impl Sql,
    variants: i64,
    discounts: i64,
    mut progress: impl FnMut(i64),
) -> Result<()> {
    let products = (variants + VARIANTS_PER_PRODUCT - 1) / VARIANTS_PER_PRODUCT;
    run(sql, SEED_PRODUCTS, 1, products, &[]).await?;
    let mut from = 1;
    while from <= variants {
        let to = (from + SEED_CHUNK - 1).min(variants);
        run(
            sql,
            SEED_VARIANTS,
            from,
            to,
            &[SqlValue::Int(VARIANTS_PER_PRODUCT)],
        )
        .await?;
        run(sql, SEED_LEVELS, from, to, &[SqlValue::Int(SEED_ON_HAND)]).await?;
        if from == 1 {
            sql.execute(SEED_PRICE_LISTS, &[]).await?;
        }
        run(sql, SEED_PRICE_ENTRIES, from, to, &[]).await?;
        progress(to);
        from = to + 1;
    }
    if variants >= BUNDLE_MIN_VARIANTS {
        for statement in [SEED_BUNDLES, SEED_BUNDLE_SETS, SEED_BUNDLE_VARIANTS] {
            sql.execute(statement, &[]).await?;
        }
    }
    // Fresh planner statistics: publishing right after a bulk load is ~10× slower without.
    sql.execute(
        "ANALYZE products, variants, inventory_levels, price_lists, price_list_entries, discounts, discount_variants",
        &[],
    )
    .await?;
    if discounts > 0 {
        let counts = [
            SqlValue::Int(discounts.max(SEED_DISCOUNTS_DEFAULT)),
            SqlValue::Int(variants),
        ];
        sql.execute(SEED_DISCOUNTS, &counts[..1]).await?;
        sql.execute(SEED_DISCOUNT_VARIANTS, &counts).await?;
        if variants >= BUNDLE_MIN_VARIANTS {
            sql.execute(SEED_DISCOUNT_BUNDLES, &[]).await?;
        }
    }
    Ok(())
}

async fn run(sql: &impl Sql, statement: &str, from: i64, to: i64, extra: &[SqlValue]) -> Result<()> {
    let mut params = vec![SqlValue::Int(from), SqlValue::Int(to)];
    params.extend_from_slice(extra);
    sql.execute(statement, &params).await?;
    Ok(())
}

/// Variants recently confirmed to exist, per namespace-qualified key, with when they were
/// confirmed. Natively this spares the lookup on most requests; in a Spin component it
/// lives for one request and the Redis cache does the work.
static KNOWN_VARIANTS: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

/// How long a confirmed variant is trusted in process and in Redis.
const KNOWN_FOR: Duration = Duration::from_secs(300);
const REDIS_KNOWN_FOR_MS: i64 = 24 * 60 * 60 * 1000;
const MAX_KNOWN: usize = 100_000;

const EXISTING_VARIANTS: &str = "SELECT id FROM variants WHERE id = ANY($1)";

/// Which of the ids `$1` the catalog does not have.
const MISSING_VARIANTS: &str = "\
SELECT u.id FROM unnest($1::text[]) AS u(id) WHERE NOT EXISTS (SELECT 1 FROM variants v WHERE v.id = u.id)";

/// Which of `ids` the catalog does not have (deleted from PostgreSQL, or never there).
pub(crate) async fn missing(sql: &impl Sql, ids: Vec<String>) -> Result<Vec<VariantId>> {
    let rows = sql.query(MISSING_VARIANTS, &[SqlValue::TextArray(ids)]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| VariantId::parse(r.first()?.as_text()?).ok())
        .collect())
}

/// The 422 for variants a request body names that the catalog does not have:
/// `UNKNOWN_VARIANT`, naming them in `details.variantIds`.
pub fn unknown_variants(ids: &[String]) -> Error {
    Error::Unprocessable {
        code: ErrorCode::UnknownVariant,
        message: format!("unknown variant(s): {}", ids.join(", ")),
        details: json!({ "variantIds": ids }),
    }
}

/// Fails with 422 `UNKNOWN_VARIANT` unless every variant is in the catalog. Looks in the
/// process cache, then `catalog:variant:{V}` in Redis (one MGET), then PostgreSQL, and
/// remembers what it confirmed.
pub async fn require_variants(
    redis: &impl Redis,
    sql: &impl Sql,
    keys: &Keys,
    variants: &[VariantId],
) -> Result<()> {
    let cache_keys: Vec<String> = variants.iter().map(|v| keys.catalog_variant(v)).collect();
    let unconfirmed: Vec<usize> = {
        let known = KNOWN_VARIANTS.lock().unwrap_or_else(|e| e.into_inner());
        (0..variants.len())
            .filter(|&i| {
                known
                    .as_ref()
                    .and_then(|k| k.get(&cache_keys[i]))
                    .is_none_or(|at| at.elapsed() > KNOWN_FOR)
            })
            .collect()
    };
    metrics::cache(Cache::Catalog, true, (variants.len() - unconfirmed.len()) as u64);
    if unconfirmed.is_empty() {
        return Ok(());
    }
    let cached = redis
        .execute(
            "MGET",
            unconfirmed
                .iter()
                .map(|&i| RedisArg::from(&cache_keys[i]))
                .collect(),
        )
        .await?;
    let missing: Vec<usize> = unconfirmed
        .iter()
        .zip(&cached)
        .filter(|(_, hit)| matches!(hit, RedisReply::Nil))
        .map(|(&i, _)| i)
        .collect();
    metrics::cache(Cache::Catalog, true, (unconfirmed.len() - missing.len()) as u64);
    metrics::cache(Cache::Catalog, false, missing.len() as u64);
    if !missing.is_empty() {
        let ids: Vec<String> = missing.iter().map(|&i| variants[i].to_string()).collect();
        let rows = sql
            .query(EXISTING_VARIANTS, &[SqlValue::TextArray(ids.clone())])
            .await?;
        let found: Vec<&str> = rows.iter().filter_map(|r| r.first()?.as_text()).collect();
        let unknown: Vec<String> = ids
            .iter()
            .filter(|id| !found.contains(&id.as_str()))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(unknown_variants(&unknown));
        }
        for &i in &missing {
            redis
                .execute(
                    "SET",
                    vec![
                        (&cache_keys[i]).into(),
                        "1".into(),
                        "PX".into(),
                        RedisArg::Int(REDIS_KNOWN_FOR_MS),
                    ],
                )
                .await?;
        }
    }
    let mut known = KNOWN_VARIANTS.lock().unwrap_or_else(|e| e.into_inner());
    let known = known.get_or_insert_with(HashMap::new);
    if known.len() + unconfirmed.len() > MAX_KNOWN {
        known.clear();
    }
    let now = Instant::now();
    for i in unconfirmed {
        known.insert(cache_keys[i].clone(), now);
    }
    Ok(())
}
