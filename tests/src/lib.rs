//! Test helpers: every test gets the whole app on its own port, its own PostgreSQL schema
//! and its own Redis key namespace, so tests run in parallel on one Redis and one
//! PostgreSQL, and talks to it over HTTP like a client.
//!
//! The services come from `COMMERCE_REDIS_URL` and `COMMERCE_DATABASE_URL`, which
//! `scripts/test` sets after starting them. The app runs as the Redis user of
//! `COMMERCE_REDIS_URL` (`app`, limited to the keys under `COMMERCE_KEY_PREFIX`: each
//! test's prefix is nested under it); the tests' own look-ups and clean-ups use
//! `COMMERCE_REDIS_ADMIN_URL` when set. A `rediss://` URL is verified against
//! `COMMERCE_REDIS_CA_FILE`, by the app and by the tests alike. The app answers either from the native server
//! in the test process or from a real Spin host (`COMMERCE_TEST_HOST=spin`, see [`host`]);
//! the tests are the same for both.

pub mod faults;
pub mod gateway;
pub mod host;
pub mod proxy;
pub mod redis_link;
pub mod topology;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use commerce_core::Settings;
use commerce_native::{EnvConfig, NativeApp, build_app, migrate, serve};
use redis::AsyncCommands;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::host::{Host, SpinProcess};
use crate::redis_link::TestRedis;

/// The admin token every test app is configured with.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The payment gateway key of [`TestApp::shop`].
pub const GATEWAY_KEY: &str = "sk_test_fake";

/// The webhook secret of [`TestApp::shop`].
pub const WEBHOOK_SECRET: &str = "whsec_test";

/// The JWT secret every test app is configured with.
pub const JWT_SECRET: &str = "test-jwt-secret";

/// A valid customer token (one hour) for `customer`.
pub fn customer_token(customer: &str) -> String {
    let exp = commerce_core::auth::now_s() + 3600;
    commerce_core::auth::sign(&serde_json::json!({ "sub": customer, "exp": exp }), JWT_SECRET)
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// One running app with its own namespace.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The HTTP client.
    pub http: reqwest::Client,
    /// The app over the native adapters on the same namespace, for calling stores
    /// directly (whichever host answers HTTP).
    pub app: Arc<NativeApp>,
    /// A direct Redis connection (to the server as the admin user, [`admin_redis_url`], or
    /// to the test's own server or cluster), for checking invariants.
    pub redis: TestRedis,
    /// A direct PostgreSQL connection (search_path = the test schema).
    pub pg: tokio_postgres::Client,
    /// The namespace: PostgreSQL schema name.
    pub namespace: String,
    /// The Redis key prefix: the namespace under `COMMERCE_KEY_PREFIX` ([`key_prefix_for`]).
    pub key_prefix: String,
    /// The `spin up` answering HTTP when the host is Spin; killed when the app is dropped.
    spin: Option<SpinProcess>,
}

/// A reply: status and JSON body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body parsed as JSON (`Value::Null` if it was not JSON).
    pub body: Value,
}

impl Reply {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// `database_url` with `search_path` set to the schema `namespace`.
fn schema_url(database_url: &str, namespace: &str) -> String {
    let separator = if database_url.contains('?') { '&' } else { '?' };
    format!("{database_url}{separator}options=-c%20search_path%3D{namespace}")
}

/// The `commerce` binary built beside the test executable (`target/<profile>/commerce`);
/// `scripts/test` builds it before the tests.
pub fn commerce_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps/<test>");
    let binary = profile.join("commerce");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p commerce-native` first (scripts/test does)",
        binary.display()
    );
    binary
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with scripts/test"))
}

/// The Redis URL of the tests' own look-ups and clean-ups: the admin user's
/// (`COMMERCE_REDIS_ADMIN_URL`, which `scripts/services` prints), else the app's.
pub fn admin_redis_url() -> String {
    std::env::var("COMMERCE_REDIS_ADMIN_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| required_env("COMMERCE_REDIS_URL"))
}

/// A redis-rs client for `url`; a `rediss://` server is verified against
/// `COMMERCE_REDIS_CA_FILE` when that is set, as the app does with `redis_ca_file`.
pub fn redis_client(url: &str) -> redis::Client {
    let ca_file = std::env::var("COMMERCE_REDIS_CA_FILE").unwrap_or_default();
    if url.starts_with("rediss://") && !ca_file.is_empty() {
        let root_cert =
            std::fs::read(&ca_file).unwrap_or_else(|e| panic!("COMMERCE_REDIS_CA_FILE {ca_file}: {e}"));
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            },
        )
        .unwrap()
    } else {
        redis::Client::open(url).unwrap()
    }
}

/// The key prefix for a namespace `name`: nested under `COMMERCE_KEY_PREFIX` when that is
/// set (`shop_<name>`), because the app's Redis user may touch only keys starting with it.
pub fn key_prefix_for(name: &str) -> String {
    match std::env::var("COMMERCE_KEY_PREFIX") {
        Ok(prefix) if !prefix.is_empty() => format!("{prefix}_{name}"),
        _ => name.to_owned(),
    }
}

impl TestApp {
    /// Starts the app on port 0 with a fresh schema and key prefix.
    pub async fn spawn() -> Self {
        Self::spawn_with(|c| c).await
    }

    /// Starts the app with extra configuration (Spin variable names), on the host that
    /// `COMMERCE_TEST_HOST` names; a test in [`host::NATIVE_ONLY`] always runs natively.
    /// The rate limits are off unless `configure` sets them.
    pub async fn spawn_with(configure: impl FnOnce(EnvConfig) -> EnvConfig) -> Self {
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() % 1_000_000_000;
        let namespace = format!(
            "t_{}_{}_{}",
            std::process::id(),
            stamp,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let database_url = required_env("COMMERCE_DATABASE_URL");
        let redis_url = required_env("COMMERCE_REDIS_URL");

        let (admin, connection) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        admin
            .batch_execute(&format!("CREATE SCHEMA {namespace}"))
            .await
            .unwrap();

        let schema_url = schema_url(&database_url, &namespace);
        let key_prefix = key_prefix_for(&namespace);
        // The rate limits are off: tests drive thousands of writes from 127.0.0.1. The tests
        // of the limits (`limits.rs`) turn them on with small numbers.
        let config = configure(
            EnvConfig::new()
                .set("redis_url", &redis_url)
                .set("database_url", &schema_url)
                .set("key_prefix", &key_prefix)
                .set("admin_token", ADMIN_TOKEN)
                .set("jwt_secret", JWT_SECRET)
                // One JSON line per request would drown the tests' own output (the native
                // server runs in the test process); tests of the log set `info` again.
                .set("log_level", "warn")
                .set("rate_limit_anonymous_per_minute", "0")
                .set("rate_limit_customer_per_minute", "0"),
        );
        let settings = Settings::from_config(&config).unwrap();
        let app = build_app(settings).unwrap();
        migrate::migrate(&app.sql).await.unwrap();
        let app = Arc::new(app);

        let (base, spin) = match Self::host() {
            Host::Native => {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let base = format!("http://{}", listener.local_addr().unwrap());
                tokio::spawn(serve(listener, app.clone()));
                (base, None)
            }
            Host::Spin => {
                let (spin, base) = SpinProcess::start(&config, &namespace).await;
                eprintln!(
                    "spin up (pid {}) answered on {base} after {} ms",
                    spin.pid(),
                    spin.started_in.as_millis()
                );
                (base, Some(spin))
            }
        };

        let (pg, connection) = tokio_postgres::connect(&schema_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        // The shared Redis as the admin user; a test's own cluster or Sentinel group as
        // itself (they run without users). A test whose own server or proxy is some other
        // URL still looks at the shared one, as the admin.
        let configured =
            commerce_core::ports::Config::get(&config, "redis_url").unwrap_or_else(|| redis_url.clone());
        let own = if configured.starts_with("redis+") || configured.starts_with("rediss+") {
            configured
        } else {
            admin_redis_url()
        };
        // A test that points the app at a Redis that is not there keeps the shared one.
        let redis = match TestRedis::connect(&own).await {
            Ok(redis) => redis,
            Err(_) => TestRedis::connect(&admin_redis_url()).await.unwrap(),
        };
        Self {
            base,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(512)
                .build()
                .unwrap(),
            app,
            redis,
            pg,
            namespace,
            key_prefix,
            spin,
        }
    }

    /// The host this test's app runs on: `COMMERCE_TEST_HOST`'s, unless the running test
    /// is in [`host::NATIVE_ONLY`] (then native, with the reason printed).
    pub fn host() -> Host {
        let host = Host::current();
        if host == Host::Spin {
            let thread = std::thread::current();
            if let Some(reason) = thread.name().and_then(host::native_only) {
                eprintln!("native host for this test: {reason}");
                return Host::Native;
            }
        }
        host
    }

    /// A shop: the app wired to a fresh fake payment gateway (key and webhook secret
    /// below), with the demo catalog of `variants` variants and published rulesets.
    pub async fn shop(
        variants: i64,
        configure: impl FnOnce(EnvConfig) -> EnvConfig,
    ) -> (Self, gateway::FakeGateway) {
        let gateway = gateway::FakeGateway::start(GATEWAY_KEY, WEBHOOK_SECRET).await;
        let base = gateway.base.clone();
        let app = Self::spawn_with(|c| {
            configure(
                c.set("payment_gateway_url", &base)
                    .set("payment_gateway_key", GATEWAY_KEY)
                    .set("webhook_secret", WEBHOOK_SECRET),
            )
        })
        .await;
        app.seed(variants).await;
        for kind in ["pricing", "discounts"] {
            let reply = app
                .call("POST", &format!("/v1/admin/{kind}/publish"), None, true)
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
        }
        (app, gateway)
    }

    /// Sends a request; `body` is sent as JSON when given.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>, admin: bool) -> Reply {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        if admin {
            req = req.header("authorization", format!("Bearer {ADMIN_TOKEN}"));
        }
        Self::reply(req).await
    }

    /// Sends a prepared request and reads the reply.
    pub async fn reply(req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.expect("request failed");
        let status = res.status().as_u16();
        let bytes = res.bytes().await.unwrap();
        Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    /// Sends a request with extra headers; `body` is sent as JSON when given.
    pub async fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        Self::reply(req).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None, false).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(body), false).await
    }

    /// Writes the demo catalog with `variants` variants (100 on hand each) and loads it into
    /// Redis.
    pub async fn seed(&self, variants: i64) {
        commerce_core::catalog::seed(&self.app.sql, variants, 0, |_| {})
            .await
            .unwrap();
        self.inventory().reconcile(|_| {}).await.unwrap();
    }

    /// Sets a variant's on-hand through the admin route.
    pub async fn set_on_hand(&self, variant: &str, on_hand: i64) -> Reply {
        self.call(
            "PUT",
            &format!("/v1/admin/inventory/{variant}"),
            Some(serde_json::json!({ "onHand": on_hand })),
            true,
        )
        .await
    }

    /// The inventory store over this app's ports.
    pub fn inventory(
        &self,
    ) -> commerce_core::inventory::Inventory<'_, commerce_native::NativeRedis, commerce_native::NativePg>
    {
        commerce_core::inventory::Inventory::new(&self.app.redis, &self.app.sql, &self.app.keys)
    }

    /// A key of this test's namespace.
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.key_prefix)
    }

    /// Every Redis key of this test's namespace, sorted.
    pub async fn redis_keys(&self) -> Vec<String> {
        self.redis.scan(&format!("{}:*", self.key_prefix)).await
    }

    /// A snapshot of every Redis key and value of the namespace (for "nothing written").
    pub async fn redis_snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut redis = self.redis.clone();
        let mut out = Vec::new();
        for key in self.redis_keys().await {
            let dump: Vec<u8> = redis::cmd("DUMP")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            out.push((key, dump));
        }
        out
    }

    /// A snapshot of the keys of one store (`":cart:"`, `":inventory:"`, …) only.
    pub async fn redis_snapshot_of(&self, store: &str) -> Vec<(String, Vec<u8>)> {
        let mut all = self.redis_snapshot().await;
        all.retain(|(k, _)| k.contains(store));
        all
    }

    /// Deletes every Redis key of the namespace (a targeted FLUSHALL).
    pub async fn flush_redis(&self) {
        let mut redis = self.redis.clone();
        // One key per DEL: on a cluster the keys live in different slots.
        for key in self.redis_keys().await {
            let _: () = redis.del(key).await.unwrap();
        }
    }

    /// on_hand of a variant in PostgreSQL.
    pub async fn pg_on_hand(&self, variant: &str) -> i64 {
        self.pg
            .query_one(
                "SELECT on_hand FROM inventory_levels WHERE variant_id = $1",
                &[&variant],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// Checks one variant's holds in Redis the Jepsen way: the reserved total equals a
    /// recount of the hold quantities, every hold has a deadline, nothing is negative, and
    /// returns (stock, reserved).
    pub async fn check_holds(&self, variant: &str) -> (i64, i64) {
        let mut redis = self.redis.clone();
        let stock: Option<i64> = redis
            .get(self.key(&format!("inventory:variant:{{{variant}}}")))
            .await
            .unwrap();
        let reserved: Option<i64> = redis
            .get(self.key(&format!("inventory:reserved:{{{variant}}}")))
            .await
            .unwrap();
        let quantities: std::collections::HashMap<String, i64> = redis
            .hgetall(self.key(&format!("inventory:hold-qty:{{{variant}}}")))
            .await
            .unwrap();
        let mut holders: Vec<String> = redis
            .zrange(self.key(&format!("inventory:holds:{{{variant}}}")), 0, -1)
            .await
            .unwrap();
        let mut recount_holders: Vec<String> = quantities.keys().cloned().collect();
        holders.sort();
        recount_holders.sort();
        let recount: i64 = quantities.values().sum();
        let reserved = reserved.unwrap_or(0);
        assert_eq!(
            reserved, recount,
            "{variant}: reserved total disagrees with the holds"
        );
        assert_eq!(
            holders, recount_holders,
            "{variant}: holds set and quantities disagree"
        );
        assert!(
            quantities.values().all(|q| *q > 0),
            "{variant}: non-positive hold"
        );
        let stock = stock.unwrap_or(0);
        assert!(
            stock >= 0 && reserved >= 0,
            "{variant}: negative stock {stock} or reserved {reserved}"
        );
        (stock, reserved)
    }

    /// The PostgreSQL URL of this test's schema (what the app is configured with).
    pub fn database_url(&self) -> String {
        schema_url(&required_env("COMMERCE_DATABASE_URL"), &self.namespace)
    }

    /// Stops the Spin host, if any (its log goes with it: the test passed), then drops the
    /// test's schema and keys.
    pub async fn finish(mut self) {
        if let Some(spin) = self.spin.take() {
            let log = spin.log.clone();
            drop(spin);
            let _ = std::fs::remove_file(log);
        }
        // A Redis of the test's own may be gone by now (a fault test stopped it).
        let mut redis = self.redis.clone();
        let alive = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            redis::cmd("PING").query_async::<String>(&mut redis),
        )
        .await
        .is_ok_and(|pong| pong.is_ok());
        if alive {
            self.flush_redis().await;
        }
        self.pg
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.namespace))
            .await
            .unwrap();
    }
}
