//! `commerce migrate`: applies the versioned SQL files of `migrations/` in order, each in
//! its own transaction, recording them in `schema_migrations`. Safe to run concurrently
//! and repeatedly: an advisory lock serialises runs and applied versions are skipped.

use commerce_core::error::{Dependency, PortError};

use crate::pg_port::NativePg;

/// Every migration, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "catalog_and_inventory",
        include_str!("../../migrations/0001_catalog_and_inventory.sql"),
    ),
    (2, "bundles", include_str!("../../migrations/0002_bundles.sql")),
    (3, "pricing", include_str!("../../migrations/0003_pricing.sql")),
    (4, "orders", include_str!("../../migrations/0004_orders.sql")),
    (
        5,
        "payment_outbox",
        include_str!("../../migrations/0005_payment_outbox.sql"),
    ),
    (
        6,
        "paid_sessions_and_ruleset_versions",
        include_str!("../../migrations/0006_paid_sessions_and_ruleset_versions.sql"),
    ),
    (
        7,
        "max_per_order",
        include_str!("../../migrations/0007_max_per_order.sql"),
    ),
    (
        8,
        "sessions_end_with_their_order",
        include_str!("../../migrations/0008_sessions_end_with_their_order.sql"),
    ),
    (
        9,
        "one_order_per_cart_checkout",
        include_str!("../../migrations/0009_one_order_per_cart_checkout.sql"),
    ),
    (
        10,
        "one_order_per_cart_content",
        include_str!("../../migrations/0010_one_order_per_cart_content.sql"),
    ),
    (
        11,
        "frozen_cart_by_its_lines",
        include_str!("../../migrations/0011_frozen_cart_by_its_lines.sql"),
    ),
    (
        12,
        "sessions_released",
        include_str!("../../migrations/0012_sessions_released.sql"),
    ),
];

/// Applies the migrations not yet applied to the current schema; returns their names.
pub async fn migrate(pg: &NativePg) -> Result<Vec<&'static str>, PortError> {
    let mut client = pg.client().await?;
    let server = |e: tokio_postgres::Error| PortError::server(Dependency::Postgres, e.to_string());
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let tx = client.transaction().await.map_err(server)?;
        // One lock per schema, so parallel test schemas migrate side by side.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema()))", &[])
            .await
            .map_err(server)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version bigint PRIMARY KEY,
                 name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(server)?;
        let done = tx
            .query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version])
            .await
            .map_err(server)?
            .is_some();
        if !done {
            tx.batch_execute(sql).await.map_err(server)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await
            .map_err(server)?;
            applied.push(*name);
        }
        tx.commit().await.map_err(server)?;
    }
    Ok(applied)
}
