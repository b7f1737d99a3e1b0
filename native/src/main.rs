//! `commerce`: the native server and the admin jobs of spin-commerce.
// The async jobs nest deep enough (a cluster-safe store call inside a job inside the CLI)
// that the layout of `run` needs more than the default query depth.
#![recursion_limit = "256"]

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use commerce_core::backup;
use commerce_core::bundle::Bundles;
use commerce_core::ids::BundleId;
use commerce_core::inventory::Inventory;
use commerce_core::keys::RulesetKind;
use commerce_core::ports::{Redis, Sql};
use commerce_core::pricing::store::Rulesets;
use commerce_core::{Settings, catalog, outbox};
use commerce_native::gateway::Gateway;
use commerce_native::progress::Progress;
use commerce_native::redis_port::printable_url;
use commerce_native::{EnvConfig, build_app, migrate, serve};
use tokio::net::TcpListener;

/// Many small short-lived allocations per request on every worker thread: glibc's
/// allocator spent a fifth of the server's time in `malloc`, `free` and consolidation
/// under `scripts/bench` (profiled with `perf`); mimalloc keeps them thread-local.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Overdue checkout sessions `commerce sweep` ends per page.
const OVERDUE_PAGE: i64 = 500;

/// spin-commerce outside Spin. Settings come from `COMMERCE_*` environment variables
/// (`COMMERCE_REDIS_URL`, `COMMERCE_DATABASE_URL`, `COMMERCE_ADMIN_TOKEN`, …); the flags
/// below override them.
#[derive(Parser)]
#[command(name = "commerce", version)]
struct Cli {
    /// Redis address (overrides COMMERCE_REDIS_URL).
    #[arg(long, global = true)]
    redis_url: Option<String>,
    /// PostgreSQL address (overrides COMMERCE_DATABASE_URL).
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Namespace in front of every Redis key (overrides COMMERCE_KEY_PREFIX).
    #[arg(long, global = true)]
    key_prefix: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve every route of every component over HTTP.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: String,
    },
    /// Apply the PostgreSQL migrations.
    Migrate,
    /// Write the deterministic demo catalog, stock, price lists, discounts and bundles,
    /// then load stock into Redis and publish the pricing and discount rulesets.
    Seed {
        /// Number of variants (`var-1 … var-N`).
        #[arg(long, default_value_t = 1000)]
        variants: i64,
        /// Number of discounts (the 4 demo ones, then generated ones).
        #[arg(long, default_value_t = catalog::SEED_DISCOUNTS_DEFAULT)]
        discounts: i64,
    },
    /// Build the next pricing and discount ruleset versions from PostgreSQL and switch.
    Publish,
    /// Rebuild Redis stock from PostgreSQL.
    Reconcile,
    /// Purge expired holds of every variant (those no request touches), then end the
    /// checkout sessions waiting for a payment past their deadline (their intents
    /// cancelled; what `commerce serve` does periodically, for deployments without it).
    Sweep,
    /// Send the refunds and intent cancellations the payment outbox owes (one pass; what
    /// `commerce serve` does periodically, for deployments without it, such as Spin).
    Drain {
        /// Most rows to take up in this pass.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Load every active bundle into the bundle cache.
    Warm,
    /// Write every Redis key of the namespace to a file (SCAN + DUMP, with time to live).
    Backup {
        /// The file to write.
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Restore a backup file into Redis, all or nothing: the file's checksum is checked,
    /// every entry is restored under a staging name, and only then moved to its own name
    /// (replacing the key there); then run `commerce reconcile`.
    Restore {
        /// The file to read.
        #[arg(long = "in")]
        input: std::path::PathBuf,
    },
    /// Copy every Redis key of the namespace to another Redis.
    Copy {
        /// The Redis to copy to.
        #[arg(long)]
        to_redis_url: String,
    },
    /// Compare Redis with PostgreSQL (stock against on-hand, holds of sessions that no
    /// longer exist, live sessions without their lock or holds, unmirrored stock changes,
    /// the refund backlog); print the report and exit 1 on drift.
    Check {
        /// Fix what can be fixed, say what was done, then check again.
        #[arg(long)]
        repair: bool,
    },
    /// A local Stripe-compatible payment gateway for development: Stripe's PaymentIntent
    /// (create, retrieve, confirm, cancel) and Refund routes; confirming an intent
    /// (`POST /v1/payment_intents/{id}/confirm`, as `stripe payment_intents confirm` does)
    /// sends the signed `payment_intent.succeeded` event to the app's webhook.
    Gateway {
        /// Address to listen on (the app's COMMERCE_PAYMENT_GATEWAY_URL).
        #[arg(long, default_value = "127.0.0.1:4242")]
        listen: String,
        /// Where the signed events of confirmed intents are sent.
        #[arg(long, default_value = "http://127.0.0.1:3000/v1/checkout/payment-webhook")]
        webhook_url: String,
        /// The secret events are signed with (the app's COMMERCE_WEBHOOK_SECRET).
        #[arg(long, env = "COMMERCE_WEBHOOK_SECRET", hide_env_values = true)]
        webhook_secret: String,
        /// The secret key callers must send as Bearer (the app's
        /// COMMERCE_PAYMENT_GATEWAY_KEY).
        #[arg(long, env = "COMMERCE_PAYMENT_GATEWAY_KEY", hide_env_values = true)]
        api_key: String,
    },
    /// Print a customer token (HS256 JWT signed with COMMERCE_JWT_SECRET), for trying the
    /// customer routes.
    Token {
        /// The customer id (`sub`).
        #[arg(long)]
        customer: String,
        /// The customer's pricing group (`group`).
        #[arg(long)]
        group: Option<String>,
        /// Hours until it expires.
        #[arg(long, default_value_t = 24)]
        hours: i64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = EnvConfig::new();
    for (name, value) in [
        ("redis_url", &cli.redis_url),
        ("database_url", &cli.database_url),
        ("key_prefix", &cli.key_prefix),
    ] {
        if let Some(value) = value {
            config = config.set(name, value);
        }
    }
    let settings = Settings::from_config(&config).map_err(anyhow::Error::msg)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli.command, settings))
}

async fn run(command: Command, settings: Settings) -> anyhow::Result<()> {
    if let Command::Token {
        customer,
        group,
        hours,
    } = &command
    {
        anyhow::ensure!(!settings.jwt_secret.is_empty(), "set COMMERCE_JWT_SECRET first");
        commerce_core::ids::CustomerId::parse(customer)?;
        let exp = commerce_core::auth::now_s() + hours * 3600;
        let claims = serde_json::json!({ "sub": customer, "group": group, "exp": exp });
        println!("{}", commerce_core::auth::sign(&claims, &settings.jwt_secret));
        return Ok(());
    }
    if let Command::Gateway {
        listen,
        webhook_url,
        webhook_secret,
        api_key,
    } = &command
    {
        anyhow::ensure!(!api_key.is_empty(), "--api-key must not be empty");
        anyhow::ensure!(!webhook_secret.is_empty(), "--webhook-secret must not be empty");
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let tag = format!("{}_", &commerce_native::gateway::random_token()[..8]);
        let gateway = Gateway::serve(listener, api_key, webhook_secret, Some(webhook_url.clone()), &tag);
        eprintln!(
            "commerce: local payment gateway on {}, events to {webhook_url}",
            gateway.base
        );
        tokio::select! {
            () = gateway.wait() => anyhow::bail!("the gateway stopped"),
            _ = tokio::signal::ctrl_c() => eprintln!("commerce: stopping"),
        }
        return Ok(());
    }
    let app = build_app(settings)?;
    let inventory = Inventory::new(&app.redis, &app.sql, &app.keys);
    match command {
        Command::Serve { listen } => {
            let listener = TcpListener::bind(&listen)
                .await
                .with_context(|| format!("binding {listen}"))?;
            eprintln!("commerce: serving on http://{}", listener.local_addr()?);
            let app = Arc::new(app);
            tokio::select! {
                served = serve(listener, app) => served?,
                _ = tokio::signal::ctrl_c() => eprintln!("commerce: stopping"),
            }
        }
        Command::Migrate => {
            let applied = migrate::migrate(&app.sql).await?;
            eprintln!("commerce: {} migration(s) applied {applied:?}", applied.len());
        }
        Command::Seed { variants, discounts } => {
            anyhow::ensure!(
                (1..=10_000_000).contains(&variants),
                "--variants must be from 1 to 10000000"
            );
            anyhow::ensure!(
                (0..=100_000).contains(&discounts),
                "--discounts must be from 0 to 100000"
            );
            let mut progress = Progress::new("variants seeded", u64::try_from(variants).ok());
            catalog::seed(&app.sql, variants, discounts, |done| {
                progress.set(u64::try_from(done).unwrap_or(0))
            })
            .await?;
            progress.finish();
            eprintln!("commerce: {variants} variants in PostgreSQL");
            let mut progress = Progress::new("variants loaded into Redis", u64::try_from(variants).ok());
            let report = inventory.reconcile(|done| progress.set(done)).await?;
            progress.finish();
            eprintln!("commerce: {} variants in Redis", report.variants);
            publish(&app).await?;
        }
        Command::Publish => publish(&app).await?,
        Command::Reconcile => {
            let mut progress = Progress::new("variants reconciled", variant_count(&app).await?);
            let report = inventory.reconcile(|done| progress.set(done)).await?;
            progress.finish();
            eprintln!(
                "commerce: reconcile done, {} variants, {} deleted from the catalog emptied",
                report.variants, report.deleted
            );
        }
        Command::Backup { out } => {
            // Where the file goes is checked before the namespace is read: written beside,
            // then renamed, so a failed backup never leaves a half file under the name.
            let partial = out.with_extension("partial");
            std::fs::write(&partial, b"").with_context(|| format!("writing {}", partial.display()))?;
            let mut writer = backup::Writer::new();
            let mut progress = Progress::new("keys backed up", key_count(&app).await);
            let mut done = 0;
            let count = backup::export(&app.redis, &app.keys, |entry| {
                writer.push(&entry);
                done += 1;
                progress.set(done);
                Ok(())
            })
            .await?;
            progress.finish();
            let file = writer.finish();
            std::fs::write(&partial, &file).with_context(|| format!("writing {}", partial.display()))?;
            std::fs::rename(&partial, &out).with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "commerce: backed up {count} keys to {} ({} bytes)",
                out.display(),
                file.len()
            );
        }
        Command::Restore { input } => {
            let bytes = std::fs::read(&input).with_context(|| format!("reading {}", input.display()))?;
            let entries = backup::decode(&bytes).with_context(|| format!("reading {}", input.display()))?;
            let restored = restore(&app.redis, &app.keys, &entries).await?;
            eprintln!(
                "commerce: restored {restored} keys; run `commerce reconcile` to align stock with PostgreSQL"
            );
        }
        Command::Copy { to_redis_url } => {
            let target = commerce_native::NativeRedis::new(
                &to_redis_url,
                std::time::Duration::from_millis(app.settings.redis_timeout_ms),
                &app.settings.redis_ca_file,
            )?;
            // The target must answer before the namespace is read.
            target
                .execute("PING", Vec::new())
                .await
                .map_err(|e| anyhow::anyhow!("{}: {e}", printable_url(&to_redis_url)))?;
            let mut entries = Vec::new();
            let mut progress = Progress::new("keys read", key_count(&app).await);
            let count = backup::export(&app.redis, &app.keys, |entry| {
                entries.push(entry);
                progress.set(entries.len() as u64);
                Ok(())
            })
            .await?;
            progress.finish();
            let copied = restore(&target, &app.keys, &entries).await?;
            let to = printable_url(&to_redis_url);
            eprintln!("commerce: copied {copied} of {count} keys to {to}");
        }
        Command::Warm => {
            let bundles = Bundles::new(&app.redis, &app.sql, &app.keys, app.settings.bundle_ttl_seconds);
            let mut progress = Progress::new("bundles warmed", None);
            let (warmed, skipped) = bundles.warm(|done| progress.set(done)).await?;
            progress.finish();
            eprintln!("commerce: warm done, {warmed} bundles cached");
            if !skipped.is_empty() {
                let ids: Vec<&str> = skipped.iter().map(BundleId::as_str).collect();
                eprintln!(
                    "commerce: skipped {} active bundles without sets: {}",
                    ids.len(),
                    ids.join(", ")
                );
            }
        }
        Command::Check { repair } => {
            // Exit 1 means drift; a check that could not run (a dependency down) is 2, so
            // a monitor can tell the two apart.
            let app = &app;
            let run = |repair| async move {
                commerce_core::check::run(app, repair)
                    .await
                    .unwrap_or_else(|error| {
                        eprintln!("commerce: could not check: {error}");
                        std::process::exit(2)
                    })
            };
            let mut report = run(repair).await;
            if repair {
                for drift in &report.drift {
                    eprintln!(
                        "commerce: {} {}: {} -> {}",
                        drift.kind,
                        drift.subject,
                        drift.detail,
                        if drift.repaired.is_empty() {
                            "not repaired"
                        } else {
                            &drift.repaired
                        }
                    );
                }
                report = run(false).await;
            }
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.ok {
                eprintln!(
                    "commerce: {} drift(s) between Redis and PostgreSQL",
                    report.drift.len()
                );
                std::process::exit(1);
            }
            eprintln!(
                "commerce: Redis agrees with PostgreSQL ({} variants, {} sessions)",
                report.variants, report.sessions
            );
        }
        // Answered above, without connecting to anything.
        Command::Token { .. } | Command::Gateway { .. } => {}
        Command::Drain { limit } => {
            let report = outbox::drain(&app, limit).await?;
            for attempt in &report.attempts {
                println!("{attempt}");
            }
            eprintln!(
                "commerce: drain done: {} sent, {} refused, {} left for a later attempt",
                report.sent(),
                report.refused(),
                report.retrying()
            );
        }
        Command::Sweep => {
            let mut progress = Progress::new("variants swept", None);
            let visited = inventory.sweep(|done| progress.set(done)).await?;
            progress.finish();
            // Then the sessions waiting for a payment past their deadline, page by page
            // (a page ends each of its sessions or leaves it to the webhook under way).
            let checkouts = commerce_core::checkout::Checkouts::new(&app);
            let mut expired = 0;
            for _ in 0..10_000 {
                let ended = checkouts.expire_overdue(OVERDUE_PAGE).await?;
                expired += ended;
                if ended < OVERDUE_PAGE as u64 {
                    break;
                }
            }
            eprintln!(
                "commerce: sweep done, {visited} variants visited, {expired} overdue checkout session(s) ended"
            );
        }
    }
    Ok(())
}

/// Restores `entries` all or nothing ([`backup::restore`]), with a bar for each phase:
/// every payload staged and checked by Redis, then every key moved to its own name.
async fn restore(
    redis: &impl commerce_core::ports::Redis,
    keys: &commerce_core::keys::Keys,
    entries: &[backup::Entry],
) -> anyhow::Result<u64> {
    let total = Some(entries.len() as u64);
    let mut staging = Some(Progress::new("keys staged", total));
    let mut promoting = None;
    let restored = backup::restore(redis, keys, entries, |phase, done| match phase {
        backup::Phase::Staged => staging.iter_mut().for_each(|bar| bar.set(done)),
        backup::Phase::Promoted => {
            if let Some(bar) = staging.take() {
                bar.finish();
            }
            promoting
                .get_or_insert_with(|| Progress::new("keys restored", total))
                .set(done);
        }
    })
    .await;
    staging.into_iter().chain(promoting).for_each(Progress::finish);
    Ok(restored?)
}

/// How many variants PostgreSQL has stock for (the size of a reconcile), if it says. A
/// PostgreSQL out of reach fails the reconcile here, rather than after a second timeout.
async fn variant_count(app: &commerce_native::NativeApp) -> anyhow::Result<Option<u64>> {
    let rows = app.sql.query("SELECT count(*) FROM variants", &[]).await?;
    let count = rows.first().and_then(|r| r.first()?.as_int());
    Ok(count.and_then(|n| u64::try_from(n).ok()))
}

/// How many keys a backup or copy takes: all of Redis's when there is no namespace,
/// unknown otherwise.
async fn key_count(app: &commerce_native::NativeApp) -> Option<u64> {
    if !app.keys.prefix().is_empty() {
        return None;
    }
    let reply = app.redis.execute("DBSIZE", Vec::new()).await.ok()?;
    u64::try_from(reply.first()?.as_int()?).ok()
}

async fn publish(app: &commerce_native::NativeApp) -> anyhow::Result<()> {
    let rulesets = Rulesets::new(&app.redis, &app.sql, &app.keys);
    for kind in [RulesetKind::Pricing, RulesetKind::Discounts] {
        let p = rulesets
            .publish(kind, app.settings.checkout_session_ttl_seconds)
            .await?;
        eprintln!(
            "commerce: published {} ruleset version {} ({} entries, replaced {})",
            p.kind, p.version, p.entries, p.previous_version
        );
    }
    Ok(())
}
