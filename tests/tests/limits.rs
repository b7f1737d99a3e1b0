//! Abuse limits, over HTTP against real Redis and PostgreSQL: rate limits on the writes
//! anyone may make (per client address, per customer), answered 429 with `Retry-After`
//! before anything is written, and the per-order purchase limit of a variant
//! (`max_per_order`), enforced by the script that takes holds and restored with the stock.
//!
//! The harness turns the rate limits off; these tests turn them on with small numbers. On
//! Spin the peer is the host's `spin-client-addr` (127.0.0.1 here), so "a trusted proxy"
//! is 127.0.0.1 on both hosts.

use std::time::Duration;

use commerce_native::EnvConfig;
use commerce_tests::{ADMIN_TOKEN, Caller, Reply, TestApp, customer_token, unit};
use redis::AsyncCommands;
use serde_json::{Value, json};

/// A reply with its `Retry-After` header.
struct Answer {
    reply: Reply,
    retry_after: Option<String>,
}

impl Answer {
    /// The status, for assertions.
    fn status(&self) -> u16 {
        self.reply.status
    }
}

async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let res = app
        .request(method, path, body, headers)
        .send()
        .await
        .expect("request failed");
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = res.bytes().await.unwrap();
    Answer {
        reply: Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        },
        retry_after,
    }
}

/// `POST /v1/carts` with `headers`.
async fn new_cart(app: &TestApp, headers: &[(&str, &str)]) -> Answer {
    send(app, "POST", "/v1/carts", None, headers).await
}

/// A refusal of the rate limit: 429 `RATE_LIMITED` with a `Retry-After` of whole seconds,
/// at least 1. Returns the seconds.
fn refused(answer: &Answer) -> u64 {
    assert_eq!(answer.status(), 429, "{:?}", answer.reply);
    assert_eq!(answer.reply.code(), "RATE_LIMITED", "{:?}", answer.reply);
    let seconds: u64 = answer
        .retry_after
        .as_deref()
        .expect("a 429 carries Retry-After")
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(seconds >= 1, "Retry-After {seconds}");
    seconds
}

/// The anonymous carts in the namespace.
async fn carts(app: &TestApp) -> usize {
    app.redis_keys()
        .await
        .iter()
        .filter(|k| k.contains(":cart:session:"))
        .count()
}

/// Anonymous writes at `per_minute`, `burst` at once; customers' off. Rates are low
/// enough that no refill happens while a test runs, except where it waits for one.
fn anonymous(per_minute: u32, burst: u32) -> impl FnOnce(EnvConfig) -> EnvConfig {
    move |c| {
        c.set("rate_limit_anonymous_per_minute", per_minute.to_string())
            .set("rate_limit_anonymous_burst", burst.to_string())
    }
}

/// The customer's cart as the customer sees it.
async fn customer_cart(app: &TestApp, customer: &str) -> Value {
    let bearer = format!("Bearer {}", customer_token(customer));
    let reply = app
        .call_with(
            "GET",
            &format!("/v1/customers/{customer}/cart"),
            None,
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

/// A per-minute rate set alone brings a burst of its own size, half a minute's writes,
/// not the default burst of the default rate: 6 a minute lets 3 through at once.
#[tokio::test]
async fn a_rate_set_alone_allows_a_burst_of_half_a_minutes_writes() {
    let app = TestApp::spawn_with(|c| c.set("rate_limit_anonymous_per_minute", "6")).await;
    for _ in 0..3 {
        assert_eq!(new_cart(&app, &[]).await.status(), 201);
    }
    refused(&new_cart(&app, &[]).await);
    assert_eq!(carts(&app).await, 3);
    app.finish().await;
}

#[tokio::test]
async fn anonymous_writes_beyond_the_burst_are_429_change_nothing_and_recover_after_retry_after() {
    // One every 5 s, 3 at once.
    let app = TestApp::spawn_with(anonymous(12, 3)).await;
    for _ in 0..3 {
        assert_eq!(new_cart(&app, &[]).await.status(), 201);
    }
    assert_eq!(carts(&app).await, 3);
    let before = app.redis_snapshot().await;
    let mut wait = 0;
    for i in 0..5 {
        let key = format!("refused-{i}");
        wait = refused(&new_cart(&app, &[("idempotency-key", &key)]).await);
    }
    // Nothing was written: no cart, no idempotency record, not even the bucket moved.
    assert_eq!(app.redis_snapshot().await, before);
    assert_eq!(carts(&app).await, 3);
    // Counted as what they are, 429 (an alert on them must fire), not as some 4xx.
    if TestApp::host() == commerce_tests::host::Host::Native {
        let mut text = String::new();
        commerce_core::metrics::render(&mut text);
        let refusals = text
            .lines()
            .find_map(|l| l.strip_prefix("commerce_requests_total{store=\"/v1/carts\",status=\"429\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(refusals >= 5, "{refusals} 429s counted");
    }

    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
    // The refused request's Idempotency-Key was never claimed: it now creates a cart.
    let again = new_cart(&app, &[("idempotency-key", "refused-0")]).await;
    assert_eq!(again.status(), 201, "{:?}", again.reply);
    assert_eq!(carts(&app).await, 4);
    // One interval later only one more: the sustained rate, not a new burst.
    refused(&new_cart(&app, &[]).await);
    app.finish().await;
}

#[tokio::test]
async fn a_concurrent_burst_gets_exactly_the_burst_through() {
    let app = TestApp::spawn_with(anonymous(1, 5)).await;
    let tries: Vec<_> = (0..30)
        .map(|_| {
            let (http, url) = (app.http.clone(), format!("{}/v1/carts", app.base));
            tokio::spawn(async move { http.post(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tries {
        statuses.push(task.await.unwrap());
    }
    statuses.sort();
    let created = statuses.iter().filter(|s| **s == 201).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((created, refused), (5, 25), "{statuses:?}");
    assert_eq!(carts(&app).await, 5);
    app.finish().await;
}

#[tokio::test]
async fn reads_and_trusted_callers_are_not_limited() {
    let app = TestApp::spawn_with(anonymous(1, 1)).await;
    app.seed(2).await;
    let cart = new_cart(&app, &[]).await.reply.body["cartId"]
        .as_str()
        .unwrap()
        .to_owned();
    refused(&new_cart(&app, &[]).await);
    for _ in 0..5 {
        assert_eq!(app.get(&format!("/v1/carts/{cart}")).await.status, 200);
        assert_eq!(app.get("/v1/inventory/var-1").await.status, 200);
    }
    let admin = format!("Bearer {ADMIN_TOKEN}");
    for _ in 0..3 {
        assert_eq!(new_cart(&app, &[("authorization", &admin)]).await.status(), 201);
        let reserved = send(
            &app,
            "POST",
            "/v1/inventory/reservations",
            Some(json!({"cartId": "backend-1", "items": [{"variantId": "var-1", "quantity": 1}]})),
            &[("authorization", &admin)],
        )
        .await;
        assert_eq!(reserved.status(), 201, "{:?}", reserved.reply);
    }
    // A token that is neither trusted nor a customer's counts against the address.
    refused(&new_cart(&app, &[("authorization", "Bearer forged")]).await);
    app.finish().await;
}

#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_limited_apart() {
    let app =
        TestApp::spawn_with(|c| anonymous(1, 2)(c).set("trusted_proxies", "10.0.0.0/8, 127.0.0.1")).await;
    let one = [("x-forwarded-for", "198.51.100.1")];
    assert_eq!(new_cart(&app, &one).await.status(), 201);
    assert_eq!(new_cart(&app, &one).await.status(), 201);
    refused(&new_cart(&app, &one).await);
    // What the client wrote left of the proxy's entry is not believed...
    refused(&new_cart(&app, &[("x-forwarded-for", "203.0.113.77, 198.51.100.1")]).await);
    // ...and neither is a trusted proxy's own entry taken for the client.
    refused(&new_cart(&app, &[("x-forwarded-for", "198.51.100.1, 10.1.2.3")]).await);
    // Another client behind the same proxy has its own bucket.
    assert_eq!(
        new_cart(&app, &[("x-forwarded-for", "198.51.100.2")])
            .await
            .status(),
        201
    );
    // IPv6 clients count by their /64.
    let v6 = |address: &'static str| [("x-forwarded-for", address)];
    assert_eq!(new_cart(&app, &v6("2001:db8:1:2::1")).await.status(), 201);
    assert_eq!(new_cart(&app, &v6("2001:db8:1:2::ffff")).await.status(), 201);
    refused(&new_cart(&app, &v6("2001:db8:1:2:abcd::9")).await);
    assert_eq!(new_cart(&app, &v6("2001:db8:1:3::1")).await.status(), 201);
    // An unreadable header: the proxy itself is the client.
    assert_eq!(
        new_cart(&app, &[("x-forwarded-for", "garbage")]).await.status(),
        201
    );
    assert_eq!(new_cart(&app, &[]).await.status(), 201);
    refused(&new_cart(&app, &[("x-forwarded-for", "garbage")]).await);
    app.finish().await;
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
    let app = TestApp::spawn_with(|c| anonymous(1, 2)(c).set("trusted_proxies", "10.0.0.0/8")).await;
    assert_eq!(new_cart(&app, &[]).await.status(), 201);
    assert_eq!(
        new_cart(&app, &[("x-forwarded-for", "198.51.100.1")])
            .await
            .status(),
        201
    );
    // Whatever the client claims, it is 127.0.0.1, whose burst is spent: the forwarding
    // header, and on Spin a forged spin-client-addr (the host appends the real one after
    // it), change nothing.
    for forged in ["198.51.100.2", "203.0.113.9", "10.0.0.1"] {
        refused(&new_cart(&app, &[("x-forwarded-for", forged)]).await);
        refused(&new_cart(&app, &[("spin-client-addr", &format!("{forged}:4000"))]).await);
    }
    app.finish().await;
}

#[tokio::test]
async fn customers_are_limited_per_customer_whatever_their_address() {
    let app = TestApp::spawn_with(|c| {
        c.set("rate_limit_customer_per_minute", "1")
            .set("rate_limit_customer_burst", "2")
            .set("rate_limit_anonymous_per_minute", "1")
            .set("rate_limit_anonymous_burst", "50")
            .set("trusted_proxies", "127.0.0.1")
    })
    .await;
    app.seed(2).await;
    let add = |customer: &'static str, address: &'static str| {
        let app = &app;
        async move {
            let bearer = format!("Bearer {}", customer_token(customer));
            send(
                app,
                "POST",
                &format!("/v1/customers/{customer}/cart/items"),
                Some(json!({"variantId": "var-1", "quantity": 1})),
                &[("authorization", &bearer), ("x-forwarded-for", address)],
            )
            .await
        }
    };
    assert_eq!(add("alice", "198.51.100.1").await.status(), 200);
    assert_eq!(add("alice", "198.51.100.1").await.status(), 200);
    let cart_before = customer_cart(&app, "alice").await;
    // From another address alice is still alice.
    refused(&add("alice", "198.51.100.9").await);
    assert_eq!(
        customer_cart(&app, "alice").await,
        cart_before,
        "a refused add changed the cart"
    );
    // Bob, and anonymous shoppers at alice's address, have their own buckets.
    assert_eq!(add("bob", "198.51.100.1").await.status(), 200);
    assert_eq!(
        new_cart(&app, &[("x-forwarded-for", "198.51.100.1")])
            .await
            .status(),
        201
    );
    // Alice's token counts as alice on the anonymous routes too.
    let alice = format!("Bearer {}", customer_token("alice"));
    refused(&new_cart(&app, &[("authorization", &alice)]).await);
    app.finish().await;
}

#[tokio::test]
async fn a_refused_checkout_locks_nothing_and_claims_no_key() {
    let (app, _gateway) = TestApp::shop(5, anonymous(12, 3)).await;
    let cart = new_cart(&app, &[]).await.reply.body["cartId"]
        .as_str()
        .unwrap()
        .to_owned();
    for variant in ["var-1", "var-2"] {
        let added = app
            .post(
                &format!("/v1/carts/{cart}/items"),
                json!({"variantId": variant, "quantity": 1}),
            )
            .await;
        assert_eq!(added.status, 200, "{added:?}");
    }
    let before = app.redis_snapshot().await;
    let start = || {
        send(
            &app,
            "POST",
            "/v1/checkout",
            Some(json!({ "cartId": cart })),
            &[("idempotency-key", "start-1")],
        )
    };
    let wait = refused(&start().await);
    assert_eq!(app.redis_snapshot().await, before);
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
    let started = start().await;
    assert_eq!(started.status(), 201, "{:?}", started.reply);
    assert_eq!(app.get("/v1/inventory/var-1").await.body["reserved"], 1);
    app.finish().await;
}

// ---- max_per_order ------------------------------------------------------------------

async fn set_level(app: &TestApp, variant: &str, body: Value) -> Reply {
    app.call(
        "PUT",
        &format!("/v1/admin/inventory/{variant}"),
        Some(body),
        Caller::Admin,
    )
    .await
}

async fn reserve(app: &TestApp, holder: &str, items: Value) -> Reply {
    app.call(
        "POST",
        "/v1/inventory/reservations",
        Some(json!({ "cartId": holder, "items": items })),
        Caller::Admin,
    )
    .await
}

fn over_limit(reply: &Reply, variant: &str, requested: i64, max: i64) {
    assert_eq!(reply.status, 422, "{reply:?}");
    assert_eq!(reply.code(), "MAX_PER_ORDER_EXCEEDED", "{reply:?}");
    let details = &reply.body["error"]["details"];
    assert_eq!(details["variantId"], variant, "{reply:?}");
    assert_eq!(details["requested"], requested, "{reply:?}");
    assert_eq!(details["maxPerOrder"], max, "{reply:?}");
}

/// `(on_hand, version, max_per_order)` of a variant in PostgreSQL.
async fn pg_level(app: &TestApp, variant: &str) -> (i64, i64, Option<i64>) {
    let row = app
        .pg
        .query_one(
            "SELECT on_hand, version, max_per_order FROM inventory_levels WHERE variant_id = $1",
            &[&variant],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn max_per_order_is_enforced_on_reservations_and_a_refusal_holds_nothing() {
    let app = TestApp::spawn().await;
    app.seed(3).await;
    let set = set_level(&app, "var-1", json!({"maxPerOrder": 2})).await;
    assert_eq!(set.status, 200, "{set:?}");
    assert_eq!(
        set.body,
        json!({"variantId": "var-1", "stock": 100, "reserved": 0, "sellable": 100, "maxPerOrder": 2})
    );
    assert_eq!(app.get("/v1/inventory/var-1").await.body["maxPerOrder"], 2);
    assert_eq!(
        app.get("/v1/inventory/var-2").await.body["maxPerOrder"],
        Value::Null
    );
    assert_eq!(pg_level(&app, "var-1").await.2, Some(2));

    let before = app.redis_snapshot_of(":inventory:").await;
    let over = reserve(
        &app,
        "h1",
        json!([{"variantId": "var-2", "quantity": 5}, {"variantId": "var-1", "quantity": 3}]),
    )
    .await;
    over_limit(&over, "var-1", 3, 2);
    // Lines of one variant are summed before the limit is applied.
    let split = reserve(
        &app,
        "h1",
        json!([{"variantId": "var-1", "quantity": 2}, {"variantId": "var-1", "quantity": 1}]),
    )
    .await;
    over_limit(&split, "var-1", 3, 2);
    assert_eq!(
        app.redis_snapshot_of(":inventory:").await,
        before,
        "a refusal held something"
    );

    let within = reserve(&app, "h1", json!([{"variantId": "var-1", "quantity": 2}])).await;
    assert_eq!(within.status, 201, "{within:?}");
    // The limit is per holder: another holder may hold as many.
    let other = reserve(&app, "h2", json!([{"variantId": "var-1", "quantity": 2}])).await;
    assert_eq!(other.status, 201, "{other:?}");
    assert_eq!(app.check_holds("var-1").await, (100, 4));

    // null clears it; on-hand is untouched by a limit change and vice versa.
    let cleared = set_level(&app, "var-1", json!({"maxPerOrder": null})).await;
    assert_eq!(cleared.body["maxPerOrder"], Value::Null, "{cleared:?}");
    assert_eq!(cleared.body["stock"], 100);
    let more = reserve(&app, "h1", json!([{"variantId": "var-1", "quantity": 10}])).await;
    assert_eq!(more.status, 201, "{more:?}");
    // A holder keeps what it held before the limit was lowered, but may not take more.
    let lowered = set_level(&app, "var-1", json!({"maxPerOrder": 4})).await;
    assert_eq!(lowered.status, 200, "{lowered:?}");
    let kept = reserve(&app, "h1", json!([{"variantId": "var-1", "quantity": 10}])).await;
    assert_eq!(kept.status, 201, "{kept:?}");
    let fewer = reserve(&app, "h1", json!([{"variantId": "var-1", "quantity": 6}])).await;
    assert_eq!(fewer.status, 201, "{fewer:?}");
    over_limit(
        &reserve(&app, "h1", json!([{"variantId": "var-1", "quantity": 7}])).await,
        "var-1",
        7,
        4,
    );
    assert_eq!(app.check_holds("var-1").await, (100, 8));
    let both = set_level(&app, "var-1", json!({"onHand": 50, "maxPerOrder": 20})).await;
    assert_eq!(
        (both.body["stock"].clone(), both.body["maxPerOrder"].clone()),
        (json!(50), json!(20))
    );
    let stock_only = set_level(&app, "var-1", json!({"onHand": 60})).await;
    assert_eq!(stock_only.body["maxPerOrder"], 20, "{stock_only:?}");
    assert_eq!(pg_level(&app, "var-1").await.0, 60);

    // Seeding again puts the demo catalog back as it was: 100 on hand and no limit.
    app.seed(3).await;
    let seeded = app.get("/v1/inventory/var-1").await;
    assert_eq!(
        (seeded.body["stock"].clone(), seeded.body["maxPerOrder"].clone()),
        (json!(100), Value::Null),
        "{seeded:?}"
    );
    assert_eq!(pg_level(&app, "var-1").await.2, None);
    app.finish().await;
}

#[tokio::test]
async fn max_per_order_is_enforced_on_checkout_start() {
    let (app, _gateway) = TestApp::shop(20, |c| c).await;
    assert_eq!(
        set_level(&app, "var-1", json!({"maxPerOrder": 2})).await.status,
        200
    );
    // Two units on a line and one in a bundle: three of var-1 in one order.
    let bundle =
        json!({"bundleId": "bundle-3", "choices": {"first": ["var-1"], "second": ["var-5"]}, "quantity": 1});
    let cart = app.cart_with_lines(&[unit("var-1", 2), bundle]).await;
    let start = |key: &'static str| app.start_checkout(&cart, key);
    let refused = start("k-1").await;
    over_limit(&refused, "var-1", 3, 2);
    // Nothing held, the cart not locked: it can be changed and checked out.
    assert_eq!(app.get("/v1/inventory/var-1").await.body["reserved"], 0);
    assert_eq!(app.get("/v1/inventory/var-5").await.body["reserved"], 0);
    let line = app.get(&format!("/v1/carts/{cart}")).await.body["lines"][0]["lineId"]
        .as_str()
        .unwrap()
        .to_owned();
    let fixed = app
        .call(
            "PATCH",
            &format!("/v1/carts/{cart}/items/{line}"),
            Some(json!({"quantity": 1})),
            Caller::Anonymous,
        )
        .await;
    assert_eq!(fixed.status, 200, "{fixed:?}");
    let started = start("k-2").await;
    assert_eq!(started.status, 201, "{started:?}");
    assert_eq!(app.get("/v1/inventory/var-1").await.body["reserved"], 2);
    // A limit lowered after the start does not stop that checkout's payment: its intent
    // extends the holds it already has.
    assert_eq!(
        set_level(&app, "var-1", json!({"maxPerOrder": 1})).await.status,
        200
    );
    let session = started.body["sessionId"].as_str().unwrap();
    let intent = app.payment_intent(session, Caller::Anonymous).await;
    assert_eq!(intent.status, 200, "{intent:?}");
    assert_eq!(app.get("/v1/inventory/var-1").await.body["reserved"], 2);
    app.finish().await;
}

#[tokio::test]
async fn max_per_order_survives_a_redis_flush_and_is_checked_and_reconciled() {
    let app = TestApp::spawn().await;
    app.seed(3).await;
    assert_eq!(
        set_level(&app, "var-2", json!({"maxPerOrder": 1})).await.status,
        200
    );
    assert_eq!(
        set_level(&app, "var-2", json!({"maxPerOrder": 3})).await.status,
        200
    );
    let check = app.call("GET", "/v1/admin/check", None, Caller::Admin).await;
    assert_eq!(check.body["ok"], true, "{check:?}");

    // Redis loses everything: the lazy load brings the limit back with the stock.
    app.flush_redis().await;
    over_limit(
        &reserve(&app, "h1", json!([{"variantId": "var-2", "quantity": 4}])).await,
        "var-2",
        4,
        3,
    );
    assert_eq!(app.get("/v1/inventory/var-2").await.body["maxPerOrder"], 3);

    // Redis loses only the limit: the check reports it, reconcile restores it.
    let mut redis = app.redis.clone();
    let _: () = redis.del(app.variant_keys("var-2").max_per_order).await.unwrap();
    let drift = app.call("GET", "/v1/admin/check", None, Caller::Admin).await;
    assert_eq!(drift.body["ok"], false, "{drift:?}");
    assert_eq!(drift.body["drift"][0]["kind"], "max-per-order", "{drift:?}");
    assert_eq!(drift.body["drift"][0]["subject"], "var-2", "{drift:?}");
    let reconciled = app
        .call("POST", "/v1/admin/inventory/reconcile", None, Caller::Admin)
        .await;
    assert_eq!(reconciled.status, 200, "{reconciled:?}");
    over_limit(
        &reserve(&app, "h1", json!([{"variantId": "var-2", "quantity": 4}])).await,
        "var-2",
        4,
        3,
    );
    let check = app.call("GET", "/v1/admin/check", None, Caller::Admin).await;
    assert_eq!(check.body["ok"], true, "{check:?}");

    // Lost alone again, nobody repairing: the next reservation loads it back first.
    let _: () = redis.del(app.variant_keys("var-2").max_per_order).await.unwrap();
    over_limit(
        &reserve(&app, "h2", json!([{"variantId": "var-2", "quantity": 4}])).await,
        "var-2",
        4,
        3,
    );
    let _: () = redis.del(app.variant_keys("var-2").max_per_order).await.unwrap();
    assert_eq!(app.get("/v1/inventory/var-2").await.body["maxPerOrder"], 3);
    assert_eq!(app.check_holds("var-2").await, (100, 0));

    // Even where Redis's stock is of a newer row version than PostgreSQL's (which a reload
    // would refuse as stale), the limit comes back on its own and the stock stays.
    let keys = app.variant_keys("var-2");
    let _: () = redis
        .hset_multiple(&keys.stock_version, &[("base", 99), ("max", 99)])
        .await
        .unwrap();
    let _: () = redis.del(&keys.max_per_order).await.unwrap();
    let view = app.get("/v1/inventory/var-2").await;
    assert_eq!(
        (view.status, view.body["maxPerOrder"].clone()),
        (200, json!(3)),
        "{view:?}"
    );
    app.finish().await;
}

#[tokio::test]
async fn an_invalid_max_per_order_is_a_400_that_changes_nothing() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    assert_eq!(
        set_level(&app, "var-1", json!({"maxPerOrder": 5})).await.status,
        200
    );
    let pg_before = pg_level(&app, "var-1").await;
    let redis_before = app.redis_snapshot().await;
    for body in [
        json!({"maxPerOrder": 0}),
        json!({"maxPerOrder": -1}),
        json!({"maxPerOrder": 1.5}),
        json!({"maxPerOrder": "2"}),
        json!({"maxPerOrder": true}),
        json!({"maxPerOrder": 100_001}),
        json!({"maxPerOrder": [2]}),
        json!({"onHand": 7, "maxPerOrder": 0}),
        json!({"onHand": -7, "maxPerOrder": 2}),
        json!({}),
        json!([]),
    ] {
        let reply = set_level(&app, "var-1", body.clone()).await;
        assert_eq!(reply.status, 400, "{body}: {reply:?}");
    }
    let unknown = set_level(&app, "var-999", json!({"maxPerOrder": 2})).await;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let anonymous = app
        .call(
            "PUT",
            "/v1/admin/inventory/var-1",
            Some(json!({"maxPerOrder": 1})),
            Caller::Anonymous,
        )
        .await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(pg_level(&app, "var-1").await, pg_before);
    assert_eq!(app.redis_snapshot().await, redis_before);
    app.finish().await;
}
