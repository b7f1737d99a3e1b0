//! Redis round trips per operation (DESIGN §7), counted at the port: the real native
//! adapter wrapped in a counter, against real Redis and PostgreSQL (and the Redis Cluster
//! of `scripts/services start --cluster`, where there is one).

use std::sync::atomic::{AtomicUsize, Ordering};

use commerce_core::PortError;
use commerce_core::ids::{CartId, ExternalHolderId, Holder, Quantity, VariantId};
use commerce_core::inventory::Inventory;
use commerce_core::metrics::Measured;
use commerce_core::ports::{Redis, RedisArg, RedisReply};
use commerce_core::pricing::money::Currency;
use commerce_native::{NativeHttp, NativePg, NativeRedis};
use commerce_tests::TestApp;

/// The native Redis adapter, counting every call (one call is one round trip), and how
/// many of them a caller waits for one after another: calls made at once (a batch of
/// one-slot calls on a Redis Cluster) overlap, and cost the caller one round trip.
struct Counting<'a> {
    inner: &'a NativeRedis,
    calls: AtomicUsize,
    /// The longest chain of calls each made after the one before it had answered: every
    /// call is one deeper than the deepest call answered when it starts.
    answered_depth: AtomicUsize,
}

impl Redis for Counting<'_> {
    async fn execute(&self, command: &str, args: Vec<RedisArg>) -> Result<Vec<RedisReply>, PortError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let depth = self.answered_depth.load(Ordering::SeqCst) + 1;
        let reply = self.inner.execute(command, args).await;
        self.answered_depth.fetch_max(depth, Ordering::SeqCst);
        reply
    }

    fn is_cluster(&self) -> bool {
        self.inner.is_cluster()
    }

    async fn pause(&self, ms: u64) {
        self.inner.pause(ms).await;
    }
}

impl Counting<'_> {
    /// The calls since the last take.
    fn take(&self) -> usize {
        self.take_sequential().0
    }

    /// The calls since the last take, and how many of them were one after another.
    fn take_sequential(&self) -> (usize, usize) {
        let sequential = self.answered_depth.swap(0, Ordering::SeqCst);
        (self.calls.swap(0, Ordering::SeqCst), sequential)
    }
}

fn counter(inner: &NativeRedis) -> Counting<'_> {
    Counting {
        inner,
        calls: AtomicUsize::new(0),
        answered_depth: AtomicUsize::new(0),
    }
}

/// The test's app with a Redis port that counts its calls, and `settings`.
fn counting(
    app: &TestApp,
    settings: commerce_core::Settings,
) -> commerce_core::App<Counting<'_>, Measured<NativePg>, Measured<NativeHttp>> {
    commerce_core::App::new(
        counter(&app.app.redis),
        app.app.sql.clone(),
        app.app.http.clone(),
        settings,
    )
}

#[tokio::test]
async fn availability_of_500_variants_and_a_reservation_are_one_round_trip_each() {
    let app = TestApp::spawn().await;
    app.seed(500).await;
    let redis = counter(&app.app.redis);
    let inventory = Inventory::new(&redis, &app.app.sql, &app.app.keys);
    let variants: Vec<VariantId> = (1..=500)
        .map(|i| VariantId::parse(&format!("var-{i}")).unwrap())
        .collect();

    // Warm the script cache so EVALSHA hits, as in steady state.
    inventory.views(&variants[..1]).await.unwrap();
    redis.take();

    let views = inventory.views(&variants).await.unwrap();
    assert_eq!(views.len(), 500);
    assert_eq!(redis.take(), 1, "availability of 500 variants");

    let lines: Vec<(VariantId, Quantity)> = variants[..20]
        .iter()
        .map(|v| (v.clone(), Quantity::new(2).unwrap()))
        .collect();
    let cart = Holder::External(ExternalHolderId::parse("cart-rt").unwrap());
    inventory.reserve(&cart, &lines, 60_000).await.unwrap();
    assert_eq!(redis.take(), 1, "a 20-line reservation");

    // After a loss the first call also loads from PostgreSQL: a bounded few, not one per variant.
    app.flush_redis().await;
    inventory.views(&variants).await.unwrap();
    assert_eq!(redis.take(), 3, "view after loss: missing, load, view");
    app.finish().await;
}

#[tokio::test]
async fn adding_to_a_cart_is_one_round_trip_once_the_variant_is_known() {
    use commerce_core::cart::{CartRef, Carts, LineItem};
    use commerce_core::catalog::require_variants;

    let app = TestApp::spawn().await;
    app.seed(2).await;
    let redis = counter(&app.app.redis);
    let carts = Carts::new(&redis, &app.app.keys, &app.app.settings);
    let cart = carts.create(Currency::parse("EUR").unwrap()).await.unwrap();
    let cart = CartRef::Session(CartId::parse(cart.cart_id.as_deref().unwrap()).unwrap());
    let variant = VariantId::parse("var-1").unwrap();
    require_variants(
        &redis,
        &app.app.sql,
        &app.app.keys,
        std::slice::from_ref(&variant),
    )
    .await
    .unwrap();
    let item = LineItem::Variant(variant.clone());
    carts
        .add(&cart, &item, Quantity::new(1).unwrap(), None)
        .await
        .unwrap();
    redis.take();

    // The common case: a known variant, one script call.
    require_variants(
        &redis,
        &app.app.sql,
        &app.app.keys,
        std::slice::from_ref(&variant),
    )
    .await
    .unwrap();
    let view = carts
        .add(&cart, &item, Quantity::new(2).unwrap(), None)
        .await
        .unwrap();
    assert_eq!(redis.take(), 1, "add to cart");
    assert_eq!(view.lines[0].quantity, 3);
    app.finish().await;
}

/// The app's catalog of 40 variants with both rulesets published, and an anonymous cart of
/// 20 lines (`var-1` to `var-20`, `i` units of `var-i`) to quote.
async fn twenty_line_cart(app: &TestApp) -> commerce_core::cart::CartRef {
    use commerce_core::cart::{CartRef, Carts, LineItem};
    use commerce_core::keys::RulesetKind;
    use commerce_core::pricing::store::Rulesets;

    app.seed(40).await;
    let rulesets = Rulesets::new(&app.app.redis, &app.app.sql, &app.app.keys);
    for kind in [RulesetKind::Pricing, RulesetKind::Discounts] {
        rulesets.publish(kind, 60).await.unwrap();
    }
    let carts = Carts::new(&app.app.redis, &app.app.keys, &app.app.settings);
    let cart = carts.create(Currency::parse("EUR").unwrap()).await.unwrap();
    let cart = CartRef::Session(CartId::parse(cart.cart_id.as_deref().unwrap()).unwrap());
    for i in 1..=20 {
        let item = LineItem::Variant(VariantId::parse(&format!("var-{i}")).unwrap());
        carts
            .add(&cart, &item, Quantity::new(i).unwrap(), None)
            .await
            .unwrap();
    }
    cart
}

#[tokio::test]
async fn quoting_a_twenty_line_cart_is_two_round_trips_and_one_once_its_entries_are_held() {
    use commerce_core::pricing::quote::price_cart;

    let app = TestApp::spawn().await;
    let cart = twenty_line_cart(&app).await;

    let counting = counting(&app, app.app.settings.clone());
    // EVALSHA of both scripts, so that a script missing from the server's cache (another
    // test may flush it) does not add an EVAL to the counts.
    price_cart(&app.app, &cart, None).await.unwrap();
    let cold = price_cart(&counting, &cart, None).await.unwrap();
    assert_eq!(cold.quote.lines.len(), 20);
    assert_eq!(
        counting.redis.take(),
        2,
        "a 20-line quote whose entries the process does not hold: the cart, then the ruleset read"
    );
    let held = price_cart(&counting, &cart, None).await.unwrap();
    assert_eq!(held, cold);
    assert_eq!(
        counting.redis.take(),
        1,
        "once the entries are held: the cart with the current versions and the clock"
    );
    app.finish().await;
}

#[tokio::test]
async fn on_a_redis_cluster_quoting_a_cart_is_two_round_trips_one_after_the_other() {
    use commerce_core::pricing::quote::price_cart;
    use commerce_core::pricing::store::Rulesets;

    let Some(url) = commerce_tests::topology::cluster_url() else {
        eprintln!("SKIPPED: no Redis Cluster (start one with scripts/services start --cluster)");
        return;
    };
    let app = TestApp::spawn_with(|c| c.set("redis_url", &url)).await;
    let cart = twenty_line_cart(&app).await;
    let rulesets = Rulesets::new(&app.app.redis, &app.app.sql, &app.app.keys);

    let counting = counting(&app, app.app.settings.clone());
    assert!(counting.redis.is_cluster());
    // EVALSHA of both scripts on the nodes they run on, as in steady state.
    price_cart(&app.app, &cart, None).await.unwrap();
    counting.redis.take();
    for attempt in ["first", "second"] {
        let priced = price_cart(&counting, &cart, None).await.unwrap();
        assert_eq!(priced.quote.lines.len(), 20);
        assert_eq!(priced.versions, rulesets.pointers().await.unwrap());
        // The cart's lines and both version pointers (three slots) at once, then each
        // version's entries (two slots) at once; no entries are held on a cluster.
        assert_eq!(
            counting.redis.take_sequential(),
            (5, 2),
            "{attempt} quote of a 20-line cart: (calls, round trips one after another)"
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn starting_a_checkout_is_at_most_six_round_trips() {
    use commerce_core::cart::{CartRef, Carts, LineItem};
    use commerce_core::checkout::Checkouts;
    use commerce_core::http::Request;
    use commerce_core::idempotency::{self, Claim};
    use commerce_core::keys::RulesetKind;
    use commerce_core::pricing::store::Rulesets;

    let app = TestApp::spawn().await;
    app.seed(20).await;
    let rulesets = Rulesets::new(&app.app.redis, &app.app.sql, &app.app.keys);
    for kind in [RulesetKind::Pricing, RulesetKind::Discounts] {
        rulesets.publish(kind, 60).await.unwrap();
    }
    let carts = Carts::new(&app.app.redis, &app.app.keys, &app.app.settings);
    let counting = counting(&app, app.app.settings.clone());
    // The first checkout warms the script cache so EVALSHA hits, as in steady state
    // (another test may have flushed the shared server's cache); the second is counted.
    for attempt in ["warm", "counted"] {
        let view = carts.create(Currency::parse("EUR").unwrap()).await.unwrap();
        let cart_id = view.cart_id.unwrap();
        let cart = CartRef::Session(CartId::parse(&cart_id).unwrap());
        for i in 1..=10 {
            let item = LineItem::Variant(VariantId::parse(&format!("var-{i}")).unwrap());
            carts
                .add(&cart, &item, Quantity::new(1).unwrap(), None)
                .await
                .unwrap();
        }
        let req = Request {
            method: "POST".into(),
            path: "/v1/checkout".into(),
            headers: vec![("idempotency-key".into(), format!("rt-{attempt}"))],
            body: format!(r#"{{"cartId":"{cart_id}"}}"#).into_bytes(),
            ..Request::default()
        };
        counting.redis.take();
        let (app_ref, cart_ref) = (&counting, &cart);
        let response = idempotency::once(&counting, &req, "checkout", Claim::REQUIRED, |token| async move {
            let view = Checkouts::new(app_ref).start(cart_ref, &token, None).await?;
            Ok(commerce_core::http::Response::json(201, &view))
        })
        .await
        .unwrap();
        assert_eq!(response.status, 201);
    }
    // Idempotency claim, lock + cart read, ruleset read, hold, session, idempotency answer.
    assert_eq!(counting.redis.take(), 6, "checkout start");
    app.finish().await;
}

#[tokio::test]
async fn a_rate_limited_write_costs_one_round_trip_and_other_requests_none() {
    use commerce_core::http::Request;
    use commerce_core::{Scope, handle};

    let app = TestApp::spawn().await;
    app.seed(2).await;
    let limited_to = |per_minute: u32| {
        let mut settings = app.app.settings.clone();
        settings.rate_limit_anonymous_per_minute = per_minute;
        settings.rate_limit_anonymous_burst = 1000;
        counting(&app, settings)
    };
    let (limited, unlimited) = (limited_to(60), limited_to(0));
    let request = |method: &str, path: &str, body: &str, admin: bool| {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        if admin {
            headers.push((
                "authorization".into(),
                format!("Bearer {}", commerce_tests::ADMIN_TOKEN),
            ));
        }
        Request {
            method: method.into(),
            path: path.into(),
            headers,
            body: body.as_bytes().to_vec(),
            client_addr: Some("192.0.2.7".parse().unwrap()),
            ..Request::default()
        }
    };
    let cart = handle(&unlimited, request("POST", "/v1/carts", "", false), Scope::All).await;
    let cart = cart.json_body().unwrap()["cartId"].as_str().unwrap().to_owned();
    let add = format!("/v1/carts/{cart}/items");
    let line = r#"{"variantId":"var-1","quantity":1}"#;
    let reservation = r#"{"cartId":"rt","items":[{"variantId":"var-1","quantity":1}]}"#;
    let view = format!("/v1/carts/{cart}");
    // Warm the script cache so EVALSHA hits, as in steady state (every script measured
    // below: another test may have flushed the shared server's cache).
    for app in [&limited, &unlimited] {
        for (method, path, body, admin) in [
            ("POST", add.as_str(), line, false),
            ("POST", "/v1/inventory/reservations", reservation, true),
            ("GET", view.as_str(), "", false),
        ] {
            let answer = handle(app, request(method, path, body, admin), Scope::All).await;
            assert!(answer.status < 300, "{answer:?}");
        }
        app.redis.take();
    }
    for (method, path, body, admin, extra) in [
        ("POST", add.as_str(), line, false, 1),
        ("POST", "/v1/inventory/reservations", reservation, true, 0),
        ("GET", view.as_str(), "", false, 0),
        ("POST", "/v1/carts", "", true, 0),
    ] {
        let mut calls = [0; 2];
        for (i, app) in [&limited, &unlimited].into_iter().enumerate() {
            let answer = handle(app, request(method, path, body, admin), Scope::All).await;
            assert!(answer.status < 300, "{method} {path}: {answer:?}");
            calls[i] = app.redis.take();
        }
        assert_eq!(calls[0], calls[1] + extra, "{method} {path}: limited {calls:?}");
    }
    app.finish().await;
}

#[tokio::test]
async fn taking_the_payment_is_four_round_trips_and_its_webhook_three() {
    use commerce_core::http::Request;
    use commerce_core::{Scope, handle};

    let (app, gateway) = TestApp::shop(2, |c| c).await;
    let mut settings = app.app.settings.clone();
    settings.rate_limit_anonymous_per_minute = 0;
    settings.rate_limit_customer_per_minute = 0;
    let counting = counting(&app, settings);
    let post = |path: String, headers: Vec<(String, String)>, body: Vec<u8>| Request {
        method: "POST".into(),
        path,
        headers,
        body,
        ..Request::default()
    };
    // The first purchase warms the script cache so EVALSHA hits, as in steady state;
    // the second is counted.
    let mut counted = (0, 0);
    for attempt in ["warm", "counted"] {
        let cart = app.cart_with(&[("var-1", 1)]).await;
        let session = app.checkout(&cart, &format!("rt-pay-{attempt}")).await;
        counting.redis.take();
        let path = format!("/v1/checkout/{session}/payment-intent");
        let intent = handle(&counting, post(path, vec![], vec![]), Scope::All).await;
        assert_eq!(intent.status, 200, "{intent:?}");
        let paying = counting.redis.take();
        let intent = intent.json_body().unwrap()["paymentIntentId"]
            .as_str()
            .unwrap()
            .to_owned();
        let payload = gateway.event("payment_intent.succeeded", &intent);
        let headers = vec![
            ("content-type".into(), "application/json".into()),
            ("stripe-signature".into(), gateway.signature(&payload)),
        ];
        let path = "/v1/checkout/payment-webhook".to_owned();
        let paid = handle(&counting, post(path, headers, payload.into_bytes()), Scope::All).await;
        assert_eq!(paid.status, 200, "{paid:?}");
        assert_eq!(paid.json_body().unwrap()["state"], "COMPLETED", "{paid:?}");
        counted = (paying, counting.redis.take());
    }
    // Session with its stored intent and metadata, the new intent, the holds extended,
    // then one script for the lock extended and PAYMENT_PENDING (two calls on a Redis
    // Cluster).
    assert_eq!(counted.0, 4, "payment intent");
    // PAYMENT_CONFIRMED (guarded by the intent, amount and currency) with its metadata,
    // the cart's lock still the session's, then (the order written) one script for the
    // rest: ORDER_CREATED, the holds committed, the cart emptied, COMPLETED (a chain of
    // scripts on one server; on a Redis Cluster those are four calls).
    assert_eq!(counted.1, 3, "paid webhook");
    app.finish().await;
}

/// Three scripts for [`CHAIN`]: each says what it was given, and the first and last write.
static SAYS_AND_WRITES: commerce_core::script::Script = commerce_core::script::Script::new(&[
    "",
    "redis.call('SET', KEYS[1], ARGV[1]) return {'OK', false, #KEYS, #ARGV, ARGV[1]}",
]);
static SAYS: commerce_core::script::Script =
    commerce_core::script::Script::new(&["", "return {ARGV[1], #KEYS, #ARGV, KEYS[1]}"]);
static WRITES: commerce_core::script::Script =
    commerce_core::script::Script::new(&["", "redis.call('SET', KEYS[1], 'ran') return {'DONE'}"]);
static CHAIN: commerce_core::script::Chain =
    commerce_core::script::Chain::new(&[&SAYS_AND_WRITES, &SAYS, &WRITES]);

#[tokio::test]
async fn a_chain_of_scripts_is_one_round_trip_and_stops_after_a_step_off_its_path() {
    use commerce_core::ids::SessionId;
    use commerce_core::script::Step;

    let app = TestApp::spawn().await;
    let redis = counter(&app.app.redis.0);
    let id = SessionId::parse("cs_0123456789abcdef0123456789abcdef").unwrap();
    let keys = &app.app.keys;
    let (first, second, third) = (
        keys.checkout_session(&id),
        keys.checkout_metadata(&id),
        keys.payment_intent(&id),
    );
    let steps = |tag: &str| {
        vec![
            Step {
                keys: vec![first.as_str()],
                args: vec!["one".into()],
                goes_on: &["OK"],
            },
            Step {
                keys: vec![second.as_str()],
                args: vec![tag.into(), RedisArg::Int(2)],
                goes_on: &["GO", "ALSO"],
            },
            Step {
                keys: vec![third.as_str()],
                args: vec![],
                goes_on: &[],
            },
        ]
    };
    let text = |v: &str| RedisReply::Bytes(v.as_bytes().to_vec());
    let native = &app.app.redis.0;
    let get = |key: &str| {
        let key = key.to_owned();
        async move {
            let reply = native.execute("GET", vec![key.as_str().into()]).await.unwrap();
            reply.first().and_then(RedisReply::as_text).map(str::to_owned)
        }
    };
    // The first run loads the chain (EVALSHA, then EVAL); the next are one call each.
    CHAIN.run(&redis, steps("GO")).await.unwrap();
    redis.take();
    native.execute("DEL", vec![third.as_str().into()]).await.unwrap();

    let stopped = CHAIN.run(&redis, steps("STOP")).await.unwrap();
    assert_eq!(redis.take(), 1, "a chain is one round trip");
    // Each step reads only its own keys and arguments; Lua's false comes back as nil.
    assert_eq!(
        stopped,
        [
            vec![
                text("OK"),
                RedisReply::Nil,
                RedisReply::Int(1),
                RedisReply::Int(1),
                text("one")
            ],
            vec![
                text("STOP"),
                RedisReply::Int(1),
                RedisReply::Int(2),
                text(&second)
            ],
        ]
    );
    assert_eq!(get(&first).await.as_deref(), Some("one"), "a step's writes stay");
    assert_eq!(get(&third).await, None, "no step runs after one off the path");

    let whole = CHAIN.run(&redis, steps("ALSO")).await.unwrap();
    assert_eq!(redis.take(), 1);
    assert_eq!(whole.len(), 3, "{whole:?}");
    assert_eq!(whole[2], [text("DONE")]);
    assert_eq!(get(&third).await.as_deref(), Some("ran"));
    app.finish().await;
}
