//! The deterministic demo catalog of `commerce seed --variants N`: products `prod-1…`
//! (four variants each), variants `var-1 … var-N` with a base price in EUR, and 100 units
//! on hand of each. Running it again gives the same catalog and resets stock to 100.

use crate::error::{PortError, Result};
use crate::ports::{Sql, SqlValue};

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
ON CONFLICT (variant_id) DO UPDATE SET on_hand = EXCLUDED.on_hand,
    version = inventory_levels.version + 1, updated_at = now()";

/// Writes the demo catalog with `variants` variants, calling `progress` with the number of
/// variants written so far. Redis is not touched: reconcile afterwards.
pub async fn seed(sql: &impl Sql, variants: i64, mut progress: impl FnMut(i64)) -> Result<()> {
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
        progress(to);
        from = to + 1;
    }
    Ok(())
}

async fn run(sql: &impl Sql, statement: &str, from: i64, to: i64, extra: &[SqlValue]) -> Result<()> {
    let mut params = vec![SqlValue::Int(from), SqlValue::Int(to)];
    params.extend_from_slice(extra);
    sql.execute(statement, &params).await.map_err(PortError::sql)?;
    Ok(())
}
