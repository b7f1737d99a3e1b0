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

pub mod driver;
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

/// The service token (trusted backends, direct reservation routes) every test app is
/// configured with.
pub const SERVICE_TOKEN: &str = "test-service-token";

/// A valid customer token (one hour) for `customer`.
pub fn customer_token(customer: &str) -> String {
    let exp = commerce_core::auth::now_s() + 3600;
    commerce_core::auth::sign(&serde_json::json!({ "sub": customer, "exp": exp }), JWT_SECRET)
}

/// Who sends a request, and so which `Authorization` header it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// No `Authorization` header.
    Anonymous,
    /// The customer of this id, with a valid token of theirs ([`customer_token`]).
    Customer(&'a str),
    /// The admin token ([`ADMIN_TOKEN`]).
    Admin,
    /// The service token of trusted backends ([`SERVICE_TOKEN`]).
    Service,
}

impl Caller<'_> {
    /// The `Authorization` header's value, if the caller sends one.
    pub fn authorization(self) -> Option<String> {
        match self {
            Caller::Anonymous => None,
            Caller::Customer(customer) => Some(format!("Bearer {}", customer_token(customer))),
            Caller::Admin => Some(format!("Bearer {ADMIN_TOKEN}")),
            Caller::Service => Some(format!("Bearer {SERVICE_TOKEN}")),
        }
    }
}

/// A cart line of `quantity` units of `variant`, as `POST /v1/carts/{id}/items` takes it.
pub fn unit(variant: &str, quantity: i64) -> Value {
    serde_json::json!({ "variantId": variant, "quantity": quantity })
}

/// A checkout session waiting for its payment, as [`TestApp::paying_session`] leaves it.
#[derive(Debug, Clone)]
pub struct Paying {
    /// The cart that was checked out.
    pub cart: String,
    /// The checkout session (`cs_…`).
    pub session: String,
    /// The session's payment intent at the gateway (`pi_…`).
    pub intent: String,
    /// The intent's amount: the session's frozen total.
    pub amount: i64,
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
    /// The Redis that [`TestApp::redis`] talks to, for the clean-up on drop.
    redis_url: String,
    /// Whether [`TestApp::finish`] has dropped the schema and keys already.
    cleaned: bool,
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

/// Runs `n` tasks at once, each spawned on the runtime (so on a multi-threaded test
/// runtime they really overlap), and returns what each returned, in order. A task that
/// panics fails the test.
pub async fn at_once<T, F>(n: usize, task: impl Fn(usize) -> F) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|i| tokio::spawn(task(i))).collect();
    let mut out = Vec::with_capacity(n);
    for handle in handles {
        out.push(handle.await.expect("a concurrent task panicked"));
    }
    out
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

/// The `DUMP` of `key`.
async fn dump(redis: &mut TestRedis, key: &str) -> Vec<u8> {
    redis::cmd("DUMP").arg(key).query_async(redis).await.unwrap()
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
                .set("service_token", SERVICE_TOKEN)
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
        let (redis, redis_url) = match TestRedis::connect(&own).await {
            Ok(redis) => (redis, own),
            Err(_) => (
                TestRedis::connect(&admin_redis_url()).await.unwrap(),
                admin_redis_url(),
            ),
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
            redis_url,
            cleaned: false,
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
        app.publish_rulesets().await;
        (app, gateway)
    }

    /// Publishes the pricing and discount rulesets through the admin routes.
    pub async fn publish_rulesets(&self) {
        for kind in ["pricing", "discounts"] {
            let reply = self
                .call("POST", &format!("/v1/admin/{kind}/publish"), None, Caller::Admin)
                .await;
            assert_eq!(reply.status, 200, "{reply:?}");
        }
    }

    /// Sends a request as `caller`; `body` is sent as JSON when given.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>, caller: Caller<'_>) -> Reply {
        match caller.authorization() {
            Some(token) => {
                self.call_with(method, path, body, &[("authorization", &token)])
                    .await
            }
            None => self.call_with(method, path, body, &[]).await,
        }
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
        Self::reply(self.request(method, path, body, headers)).await
    }

    /// A request with extra headers, not yet sent; `body` is sent as JSON when given.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> reqwest::RequestBuilder {
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
        req
    }

    /// `GET path`, anonymously.
    pub async fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None, Caller::Anonymous).await
    }

    /// `POST path` with a JSON body, anonymously.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.call("POST", path, Some(body), Caller::Anonymous).await
    }

    /// A new anonymous cart (`POST /v1/carts`, answered 201): its id.
    pub async fn new_cart(&self) -> String {
        let created = self.call("POST", "/v1/carts", None, Caller::Anonymous).await;
        assert_eq!(created.status, 201, "{created:?}");
        created.body["cartId"].as_str().expect("a cart id").to_owned()
    }

    /// A new anonymous cart holding `units` (variant, quantity), each add answered 200.
    pub async fn cart_with(&self, units: &[(&str, i64)]) -> String {
        let lines: Vec<Value> = units
            .iter()
            .map(|(variant, quantity)| unit(variant, *quantity))
            .collect();
        self.cart_with_lines(&lines).await
    }

    /// A new anonymous cart holding `lines` (add bodies: units or bundles), each add
    /// answered 200.
    pub async fn cart_with_lines(&self, lines: &[Value]) -> String {
        let cart = self.new_cart().await;
        for line in lines {
            let added = self.post(&format!("/v1/carts/{cart}/items"), line.clone()).await;
            assert_eq!(added.status, 200, "{line}: {added:?}");
        }
        cart
    }

    /// `POST /v1/checkout` of the anonymous cart `cart` with the Idempotency-Key `key`.
    pub async fn start_checkout(&self, cart: &str, key: &str) -> Reply {
        self.start_checkout_as(serde_json::json!({ "cartId": cart }), key, Caller::Anonymous)
            .await
    }

    /// `POST /v1/checkout` of `body` (`cartId` or `customerId`) with the Idempotency-Key
    /// `key`, as `caller`.
    pub async fn start_checkout_as(&self, body: Value, key: &str, caller: Caller<'_>) -> Reply {
        let authorization = caller.authorization();
        let mut headers = vec![("idempotency-key", key)];
        headers.extend(authorization.as_deref().map(|token| ("authorization", token)));
        self.call_with("POST", "/v1/checkout", Some(body), &headers).await
    }

    /// Checks out the anonymous cart `cart` with the Idempotency-Key `key` (answered 201):
    /// the session id.
    pub async fn checkout(&self, cart: &str, key: &str) -> String {
        let started = self.start_checkout(cart, key).await;
        assert_eq!(started.status, 201, "{started:?}");
        started.body["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned()
    }

    /// `POST /v1/checkout/{session}/payment-intent` as `caller`.
    pub async fn payment_intent(&self, session: &str, caller: Caller<'_>) -> Reply {
        self.call(
            "POST",
            &format!("/v1/checkout/{session}/payment-intent"),
            None,
            caller,
        )
        .await
    }

    /// `POST /v1/checkout/{session}/cancel` as `caller`.
    pub async fn cancel(&self, session: &str, caller: Caller<'_>) -> Reply {
        self.call("POST", &format!("/v1/checkout/{session}/cancel"), None, caller)
            .await
    }

    /// A new anonymous cart holding `units`, checked out with `key`, with its payment
    /// intent made (answered 200, `PAYMENT_PENDING`).
    pub async fn paying_session(&self, units: &[(&str, i64)], key: &str) -> Paying {
        let cart = self.cart_with(units).await;
        let session = self.checkout(&cart, key).await;
        let intent = self.payment_intent(&session, Caller::Anonymous).await;
        assert_eq!(intent.status, 200, "{intent:?}");
        assert_eq!(intent.body["state"], "PAYMENT_PENDING", "{intent:?}");
        Paying {
            cart,
            session,
            intent: intent.body["paymentIntentId"]
                .as_str()
                .expect("an intent")
                .to_owned(),
            amount: intent.body["amount"].as_i64().expect("an amount"),
        }
    }

    /// The gateway tells the app that `intent` was paid (a signed
    /// `payment_intent.succeeded` webhook): the webhook's answer.
    pub async fn intent_paid(&self, gateway: &gateway::FakeGateway, intent: &str) -> (u16, Value) {
        let event = gateway.event("payment_intent.succeeded", intent);
        gateway.deliver(&self.base, &event).await
    }

    /// Pays the session `session` as `caller`: its payment intent (answered 200), then the
    /// gateway's signed webhook. The webhook's answer.
    pub async fn pay(
        &self,
        gateway: &gateway::FakeGateway,
        session: &str,
        caller: Caller<'_>,
    ) -> (u16, Value) {
        let intent = self.payment_intent(session, caller).await;
        assert_eq!(intent.status, 200, "{intent:?}");
        self.intent_paid(
            gateway,
            intent.body["paymentIntentId"].as_str().expect("an intent"),
        )
        .await
    }

    /// A whole purchase by an anonymous shopper: a cart of `units`, checked out with `key`
    /// and paid, which must reach `COMPLETED`. The session id.
    pub async fn purchase(&self, gateway: &gateway::FakeGateway, units: &[(&str, i64)], key: &str) -> String {
        let cart = self.cart_with(units).await;
        let session = self.checkout(&cart, key).await;
        let (status, body) = self.pay(gateway, &session, Caller::Anonymous).await;
        assert_eq!(
            (status, body["state"].as_str()),
            (200, Some("COMPLETED")),
            "{body}"
        );
        session
    }

    /// Writes the demo catalog with `variants` variants (100 on hand each) and loads it into
    /// Redis.
    pub async fn seed(&self, variants: i64) {
        commerce_core::catalog::seed(&self.app.sql, variants, 0, |_| {})
            .await
            .unwrap();
        self.inventory().reconcile(|_| {}).await.unwrap();
    }

    /// Deletes a variant from the catalog in PostgreSQL, with the rows that name it (bundle
    /// sets, price list entries, discount targets, its level), as an admin may.
    pub async fn delete_variant(&self, variant: &str) {
        let mut statements = String::new();
        for table in [
            "bundle_set_variants",
            "price_list_entries",
            "discount_variants",
            "inventory_levels",
        ] {
            statements.push_str(&format!("DELETE FROM {table} WHERE variant_id = '{variant}';"));
        }
        statements.push_str(&format!("DELETE FROM variants WHERE id = '{variant}';"));
        self.pg.batch_execute(&statements).await.unwrap();
    }

    /// Sets a variant's on-hand through the admin route.
    pub async fn set_on_hand(&self, variant: &str, on_hand: i64) -> Reply {
        self.call(
            "PUT",
            &format!("/v1/admin/inventory/{variant}"),
            Some(serde_json::json!({ "onHand": on_hand })),
            Caller::Admin,
        )
        .await
    }

    /// A reservation (`{"cartId", "items"}`) by a trusted caller, the admin.
    pub async fn reserve(&self, body: Value) -> Reply {
        self.call("POST", "/v1/inventory/reservations", Some(body), Caller::Admin)
            .await
    }

    /// What a variant has left to sell, as `GET /v1/inventory/{variant}` answers.
    pub async fn sellable(&self, variant: &str) -> i64 {
        let reply = self.get(&format!("/v1/inventory/{variant}")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.body["sellable"].as_i64().unwrap()
    }

    /// Runs the `commerce` binary with `args` on this app's settings (its Redis, database
    /// and key namespace) and waits for it.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(commerce_binary())
            .args(args)
            .envs(faults::commerce_env(&self.app.settings, &[]))
            .output()
            .unwrap()
    }

    /// The inventory store over this app's ports.
    pub fn inventory(
        &self,
    ) -> commerce_core::inventory::Inventory<'_, commerce_native::NativeRedis, commerce_native::NativePg>
    {
        commerce_core::inventory::Inventory::new(&self.app.redis, &self.app.sql, &self.app.keys)
    }

    /// The key layout of this test's namespace: the app's own ([`commerce_core::keys::Keys`]).
    pub fn keys(&self) -> &commerce_core::keys::Keys {
        &self.app.keys
    }

    /// The keys of one variant's stock, holds and purchase limit.
    pub fn variant_keys(&self, variant: &str) -> commerce_core::keys::VariantKeys {
        self.keys()
            .variant(&commerce_core::ids::VariantId::parse(variant).expect("a variant id"))
    }

    /// The key of the checkout session `session` (a hash).
    pub fn session_key(&self, session: &str) -> String {
        self.keys().checkout_session(&session_id(session))
    }

    /// The key of the checkout session `session`'s frozen cart (its metadata).
    pub fn metadata_key(&self, session: &str) -> String {
        self.keys().checkout_metadata(&session_id(session))
    }

    /// The state Redis holds for the checkout session `session`, read without meeting it
    /// (an API read would expire it if due); `None` if Redis has no such session.
    pub async fn stored_state(&self, session: &str) -> Option<String> {
        self.stored_field(session, "state").await
    }

    /// The field `field` of the checkout session `session`'s Redis record, read without
    /// meeting the session; `None` if there is no such field.
    pub async fn stored_field(&self, session: &str, field: &str) -> Option<String> {
        let mut redis = self.redis.clone();
        redis::AsyncCommands::hget(&mut redis, self.session_key(session), field)
            .await
            .unwrap()
    }

    /// Writes `state` into the session's Redis record by hand, nothing else of the move done
    /// (as a request cut short right after its compare-and-set leaves it).
    pub async fn set_stored_state(&self, session: &str, state: &str) {
        let mut redis = self.redis.clone();
        let _: () = redis::AsyncCommands::hset(&mut redis, self.session_key(session), "state", state)
            .await
            .unwrap();
    }

    /// The key of the anonymous cart `cart` (a hash).
    pub fn cart_key(&self, cart: &str) -> String {
        self.keys().cart_session(&cart_id(cart))
    }

    /// The key that locks the anonymous cart `cart` to its checkout session.
    pub fn cart_lock_key(&self, cart: &str) -> String {
        self.keys().checkout_lock_session(&cart_id(cart))
    }

    /// The name under which the checkout session `session` holds stock.
    pub fn session_holder(&self, session: &str) -> String {
        commerce_core::ids::Holder::Checkout(session_id(session)).to_string()
    }

    /// A key of this test's namespace that the app's [`Keys`](commerce_core::keys::Keys)
    /// does not build (a key of another build or encoding).
    pub fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.key_prefix)
    }

    /// Every Redis key of this test's namespace, sorted.
    pub async fn redis_keys(&self) -> Vec<String> {
        self.redis.scan(&format!("{}:*", self.key_prefix)).await
    }

    /// A snapshot of every Redis key and value of the namespace (for "nothing written"),
    /// each value as its `DUMP` (what `commerce backup` saves).
    pub async fn redis_snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut redis = self.redis.clone();
        let mut out = Vec::new();
        for key in self.redis_keys().await {
            let dump = dump(&mut redis, &key).await;
            out.push((key, dump));
        }
        out
    }

    /// The keys of one store (`":cart:"`, `":inventory:"`, …) and their contents, for
    /// "nothing written" where a refused request may still read the store: a hash or a set
    /// is taken by its content, sorted, since its `DUMP` follows the order of its hash
    /// table, which a mere read can change (a read advances an incremental rehash); any
    /// other type by its `DUMP`.
    pub async fn redis_snapshot_of(&self, store: &str) -> Vec<(String, Vec<u8>)> {
        let mut redis = self.redis.clone();
        let mut out = Vec::new();
        for key in self.redis_keys().await {
            if !key.contains(store) {
                continue;
            }
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(&mut redis)
                .await
                .unwrap();
            let content = match kind.as_str() {
                "hash" | "set" => {
                    let command = if kind == "hash" { "HGETALL" } else { "SMEMBERS" };
                    let items: Vec<Vec<u8>> = redis::cmd(command)
                        .arg(&key)
                        .query_async(&mut redis)
                        .await
                        .unwrap();
                    let mut entries: Vec<Vec<u8>> = if kind == "hash" {
                        items.chunks(2).map(|pair| pair.join(&b'\0')).collect()
                    } else {
                        items
                    };
                    entries.sort();
                    let mut content = kind.into_bytes();
                    for entry in entries {
                        content.push(b'\n');
                        content.extend(entry);
                    }
                    content
                }
                _ => dump(&mut redis, &key).await,
            };
            out.push((key, content));
        }
        out
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
        let keys = self.variant_keys(variant);
        let stock: Option<i64> = redis.get(&keys.stock).await.unwrap();
        let reserved: Option<i64> = redis.get(&keys.reserved).await.unwrap();
        let quantities: std::collections::HashMap<String, i64> = redis.hgetall(&keys.hold_qty).await.unwrap();
        let mut holders: Vec<String> = redis.zrange(&keys.holds, 0, -1).await.unwrap();
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
    /// test's schema and keys over the test's own connections. Dropping the app without
    /// it (a test that panicked, or returned early) cleans up too, on connections of its
    /// own ([`Drop`]); this is the cheaper way at the end of a test that passed.
    pub async fn finish(mut self) {
        self.stop_spin();
        if redis_alive(&self.redis).await {
            self.flush_redis().await;
        }
        self.pg
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.namespace))
            .await
            .unwrap();
        self.cleaned = true;
    }

    /// Stops the Spin host, if any; its log is removed unless the test is panicking.
    fn stop_spin(&mut self) {
        if let Some(spin) = self.spin.take() {
            let log = spin.log.clone();
            drop(spin);
            if std::thread::panicking() {
                eprintln!("the Spin host's log is kept: {}", log.display());
            } else {
                let _ = std::fs::remove_file(log);
            }
        }
    }
}

/// A cart id the test got from the app, as the app's id type.
fn cart_id(raw: &str) -> commerce_core::ids::CartId {
    commerce_core::ids::CartId::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
}

/// A checkout session id the test got from the app, as the app's id type.
fn session_id(raw: &str) -> commerce_core::ids::SessionId {
    commerce_core::ids::SessionId::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
}

/// Whether the Redis answers a PING within 2 s: a Redis of the test's own may be gone by
/// the end of the test (a fault test stopped it).
async fn redis_alive(redis: &TestRedis) -> bool {
    let mut redis = redis.clone();
    tokio::time::timeout(
        std::time::Duration::from_secs(2),
        redis::cmd("PING").query_async::<String>(&mut redis),
    )
    .await
    .is_ok_and(|pong| pong.is_ok())
}

/// Deletes the keys under `key_prefix` on the Redis at `redis_url` (if it answers) and the
/// PostgreSQL schema `namespace` (if it is still there), over new connections.
async fn drop_namespace(redis_url: &str, namespace: &str, key_prefix: &str) {
    let connected =
        tokio::time::timeout(std::time::Duration::from_secs(2), TestRedis::connect(redis_url)).await;
    if let Ok(Ok(redis)) = connected {
        if redis_alive(&redis).await {
            let mut connection = redis.clone();
            for key in redis.scan(&format!("{key_prefix}:*")).await {
                let _: Result<(), _> = connection.del(key).await;
            }
        }
    }
    let database_url = required_env("COMMERCE_DATABASE_URL");
    if let Ok((pg, connection)) = tokio_postgres::connect(&database_url, tokio_postgres::NoTls).await {
        tokio::spawn(connection);
        if let Err(e) = pg
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {namespace} CASCADE"))
            .await
        {
            eprintln!("schema {namespace} was not dropped: {e}");
        }
    }
}

/// A test that did not reach [`TestApp::finish`] (it panicked, or returned early) leaves
/// nothing behind either: its Spin host stops and its keys and schema are dropped.
impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop_spin();
        if self.cleaned {
            return;
        }
        let (redis_url, namespace, key_prefix) = (
            self.redis_url.clone(),
            self.namespace.clone(),
            self.key_prefix.clone(),
        );
        // The test's runtime may be the one this drop blocks (a current-thread test) or
        // already shutting down: the clean-up runs on a runtime and connections of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the clean-up");
            runtime.block_on(drop_namespace(&redis_url, &namespace, &key_prefix));
        });
        if cleanup.join().is_err() {
            eprintln!("the clean-up of {} panicked", self.namespace);
        }
    }
}
