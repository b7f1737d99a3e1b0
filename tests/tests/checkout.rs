//! Checkout's promises, end to end over HTTP against real Redis and PostgreSQL, with a
//! real local HTTP server standing in for the payment gateway.

use std::time::Duration;

use commerce_tests::{Caller, Reply, TestApp, WEBHOOK_SECRET, at_once, unit};
use redis::AsyncCommands;
use serde_json::{Value, json};

/// Sends the request `make` builds until it answers something other than 503 (at most 50
/// times, 100 ms apart), as a client should retry. A retry whose earlier attempt died
/// mid-request (a 503 after a dependency timed out) may find its Idempotency-Key still
/// in flight: that 409 says when to come back (`retryAfterSeconds`, at most the request
/// deadline), and the client waits that long once, then goes on retrying.
async fn until_not_503(make: impl Fn() -> reqwest::RequestBuilder) -> Reply {
    let mut waited_for_key = false;
    for _ in 0..50 {
        let reply = TestApp::reply(make()).await;
        if reply.status == 409 && reply.code() == "IDEMPOTENCY_KEY_IN_USE" && !waited_for_key {
            waited_for_key = true;
            let seconds = reply.body["error"]["details"]["retryAfterSeconds"]
                .as_u64()
                .unwrap_or(1);
            tokio::time::sleep(Duration::from_secs(seconds.min(30))).await;
            continue;
        }
        if reply.status != 503 {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    TestApp::reply(make()).await
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.pg.query_one(sql, &[]).await.unwrap().get(0)
}

/// What a Redis loss does to one session: its record, frozen metadata and stored intent
/// are gone (PostgreSQL keeps a paid session's copy).
async fn forget_session(app: &TestApp, session: &str) {
    let id = commerce_core::ids::SessionId::parse(session).unwrap();
    let mut redis = app.redis.clone();
    for key in [
        app.keys().checkout_session(&id),
        app.keys().checkout_metadata(&id),
        app.keys().payment_intent(&id),
    ] {
        let _: () = redis.del(key).await.unwrap();
    }
}

/// No holds and no locks left anywhere in the namespace.
async fn nothing_held(app: &TestApp) {
    let keys = app.redis_keys().await;
    let left: Vec<&String> = keys
        .iter()
        .filter(|k| {
            k.contains(":checkout:lock:")
                || k.contains(":inventory:holds:")
                || k.contains(":inventory:holder:")
        })
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[tokio::test]
async fn a_purchase_goes_from_cart_to_one_order() {
    let (app, gateway) = TestApp::shop(20, |c| c).await;
    let bundle =
        json!({"bundleId": "bundle-3", "choices": {"first": ["var-1"], "second": ["var-5"]}, "quantity": 1});
    let cart = app
        .cart_with_lines(&[unit("var-1", 2), unit("var-2", 1), bundle])
        .await;

    let before = app.get(&format!("/v1/carts/{cart}")).await.body["version"].clone();
    let started = app.start_checkout(&cart, "k-1").await;
    assert_eq!(started.status, 201, "{started:?}");
    let session = started.body["sessionId"].as_str().unwrap().to_owned();
    assert!(session.starts_with("cs_") && session.len() == 35);
    assert_eq!(started.body["state"], "LOCKED");
    let total = started.body["total"].as_i64().unwrap();
    assert_eq!(started.body["quote"]["total"], total);
    // var-1 is held for the line and for the bundle: 3 units.
    assert_eq!(app.get("/v1/inventory/var-1").await.body["reserved"], 3);
    let locked = app
        .post(&format!("/v1/carts/{cart}/items"), unit("var-3", 1))
        .await;
    assert_eq!((locked.status, locked.code()), (409, "CART_LOCKED"));

    let intent = app.payment_intent(&session, Caller::Anonymous).await;
    assert_eq!(
        (intent.status, intent.body["state"].as_str()),
        (200, Some("PAYMENT_PENDING")),
        "{intent:?}"
    );
    assert_eq!(intent.body["amount"], total);
    assert!(intent.body["clientSecret"].as_str().unwrap().contains("_secret_"));
    // DESIGN §5: the checkout's shape, with the intent and its secret added.
    let shown = app.get(&format!("/v1/checkout/{session}")).await;
    for field in [
        "sessionId",
        "state",
        "cartId",
        "total",
        "currency",
        "expiresAt",
        "history",
        "paymentIntentId",
    ] {
        assert_eq!(intent.body[field], shown.body[field], "{field}: {intent:?}");
    }
    assert_eq!(intent.body["total"], total);
    assert_eq!(intent.body["cartId"], cart.as_str());
    let again = app.payment_intent(&session, Caller::Anonymous).await;
    assert_eq!(again.body["paymentIntentId"], intent.body["paymentIntentId"]);
    assert_eq!(gateway.intents().len(), 1);
    assert_eq!(gateway.intents()[0].amount, total);

    let (status, body) = app
        .intent_paid(&gateway, intent.body["paymentIntentId"].as_str().unwrap())
        .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("COMPLETED")),
        "{body}"
    );

    let done = app.get(&format!("/v1/checkout/{session}")).await;
    let states: Vec<&str> = done.body["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "CREATED",
            "LOCKED",
            "PAYMENT_PENDING",
            "PAYMENT_CONFIRMED",
            "ORDER_CREATED",
            "COMPLETED"
        ]
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 1);
    assert_eq!(count(&app, "SELECT total_minor FROM orders").await, total);
    assert_eq!(count(&app, "SELECT count(*) FROM order_lines").await, 3);
    // The order's sums, as the README states them.
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM orders o WHERE o.subtotal_minor - o.discount_total_minor = o.total_minor
               AND o.subtotal_minor = (SELECT sum(line_total_minor) FROM order_lines l WHERE l.order_id = o.id)
               AND o.discount_total_minor >= (SELECT sum(discount_minor) FROM order_lines l WHERE l.order_id = o.id)"
        )
        .await,
        1
    );
    assert_eq!(app.pg_on_hand("var-1").await, 97);
    assert_eq!(app.pg_on_hand("var-5").await, 99);
    for v in ["var-1", "var-2", "var-5"] {
        assert_eq!(app.check_holds(v).await, (app.pg_on_hand(v).await, 0), "{v}");
    }
    // The cart is emptied, not deleted: the shopper's cart id goes on, and its version moved
    // on, so a change made against the version from before the order is refused.
    let emptied = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(
        (emptied.status, &emptied.body["lines"]),
        (200, &json!([])),
        "the cart was not emptied: {emptied:?}"
    );
    assert_eq!(emptied.body["version"], before.as_i64().unwrap() + 1);
    let stale = app
        .call_with(
            "POST",
            &format!("/v1/carts/{cart}/items"),
            Some(unit("var-3", 1)),
            &[("if-match", &format!("\"{before}\""))],
        )
        .await;
    assert_eq!(stale.status, 412, "{stale:?}");
    nothing_held(&app).await;
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), unit("var-3", 1))
            .await
            .status,
        200,
        "the emptied cart takes new lines"
    );
    // The same event days later, when Redis no longer keeps the session (its record lives
    // a day past its deadline; gateways redeliver for longer): answered with the order,
    // and the cart filled again is left alone.
    forget_session(&app, &session).await;
    let paid = intent.body["paymentIntentId"].as_str().unwrap();
    let (status, replayed) = app.intent_paid(&gateway, paid).await;
    assert_eq!(status, 200, "{replayed}");
    assert!(replayed["orderId"].is_string(), "{replayed}");
    let kept = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(kept.body["lines"].as_array().unwrap().len(), 1, "{kept:?}");
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 1);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_buyers_for_the_last_hundred_units_make_exactly_one_hundred_orders() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    assert_eq!(app.set_on_hand("var-1", 100).await.status, 200);
    let buyers: Vec<_> = (0..500)
        .map(|i| {
            let (http, base) = (app.http.clone(), app.base.clone());
            tokio::spawn(async move {
                let post = |path: String, body: Value| {
                    http.post(format!("{base}{path}"))
                        .header("content-type", "application/json")
                        .body(body.to_string())
                };
                // A 503 (a host overloaded by 500 buyers at once) is retried, as a client
                // would, with the same Idempotency-Key where a retry could add twice.
                let created = until_not_503(|| post("/v1/carts".into(), json!({}))).await;
                let cart = created.body["cartId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("no cart: {created:?}"))
                    .to_owned();
                let added = until_not_503(|| {
                    post(format!("/v1/carts/{cart}/items"), unit("var-1", 1))
                        .header("idempotency-key", format!("add-{i}"))
                })
                .await;
                assert_eq!(added.status, 200, "{added:?}");
                let started = until_not_503(|| {
                    post("/v1/checkout".into(), json!({ "cartId": cart }))
                        .header("idempotency-key", format!("buyer-{i}"))
                })
                .await;
                (cart, started)
            })
        })
        .collect();
    let mut sessions = Vec::new();
    let mut refused = 0;
    for buyer in buyers {
        let (cart, reply) = buyer.await.unwrap();
        match reply.status {
            201 => sessions.push(reply.body["sessionId"].as_str().unwrap().to_owned()),
            409 => {
                assert_eq!(reply.code(), "INSUFFICIENT_INVENTORY", "{reply:?}");
                refused += 1;
                // The refused buyer's cart is not left locked.
                let change = app
                    .post(&format!("/v1/carts/{cart}/items"), unit("var-1", 1))
                    .await;
                assert_eq!(change.status, 200, "{change:?}");
            }
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    assert_eq!((sessions.len(), refused), (100, 400));

    let gateway = std::sync::Arc::new(gateway);
    let payments: Vec<_> = sessions
        .iter()
        .map(|session| {
            let (http, base, gateway, session) = (
                app.http.clone(),
                app.base.clone(),
                gateway.clone(),
                session.clone(),
            );
            tokio::spawn(async move {
                let intent =
                    until_not_503(|| http.post(format!("{base}/v1/checkout/{session}/payment-intent"))).await;
                assert_eq!(intent.status, 200, "{intent:?}");
                let event = gateway.event(
                    "payment_intent.succeeded",
                    intent.body["paymentIntentId"].as_str().unwrap(),
                );
                // The gateway delivers again until it gets a 2xx.
                for _ in 0..50 {
                    let (status, body) = gateway.deliver(&base, &event).await;
                    if status != 503 {
                        return (status, body);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                gateway.deliver(&base, &event).await
            })
        })
        .collect();
    for payment in payments {
        let (status, body) = payment.await.unwrap();
        assert_eq!(
            (status, body["state"].as_str()),
            (200, Some("COMPLETED")),
            "{body}"
        );
    }
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 100);
    assert_eq!(
        count(&app, "SELECT count(DISTINCT checkout_session_id) FROM orders").await,
        100
    );
    assert_eq!(app.pg_on_hand("var-1").await, 0);
    assert_eq!(app.check_holds("var-1").await, (0, 0));
    nothing_held(&app).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_webhook_twenty_times_at_once_makes_one_order() {
    let (app, gateway) = TestApp::shop(3, |c| c).await;
    let paying = app.paying_session(&[("var-1", 2), ("var-2", 1)], "k-dup").await;
    let event = gateway.event("payment_intent.succeeded", &paying.intent);
    let gateway = std::sync::Arc::new(gateway);
    let deliveries = at_once(20, |_| {
        let (gateway, base, event) = (gateway.clone(), app.base.clone(), event.clone());
        async move { gateway.deliver(&base, &event).await }
    })
    .await;
    for (status, body) in deliveries {
        // A delivery that meets another mid-way either finishes the work or reports it done.
        assert!(status == 200 || status == 409, "{status} {body}");
    }
    // The gateway retries whatever was not acknowledged; one more delivery settles it.
    let (status, body) = gateway.deliver(&app.base, &event).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("COMPLETED")),
        "{body}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 1);
    assert_eq!(app.pg_on_hand("var-1").await, 98);
    assert_eq!(
        app.check_holds("var-1").await,
        (98, 0),
        "stock committed more than once"
    );
    assert_eq!(app.check_holds("var-2").await, (99, 0));
    nothing_held(&app).await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_makes_one_session() {
    let (app, _gateway) = TestApp::shop(2, |c| c).await;
    let cart = app.cart_with(&[("var-1", 1)]).await;
    let attempts = at_once(20, |_| {
        let (http, base, cart) = (app.http.clone(), app.base.clone(), cart.clone());
        async move {
            TestApp::reply(
                http.post(format!("{base}/v1/checkout"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", "same-key")
                    .body(json!({ "cartId": cart }).to_string()),
            )
            .await
        }
    })
    .await;
    let mut sessions = std::collections::BTreeSet::new();
    for reply in attempts {
        match reply.status {
            201 => {
                sessions.insert(reply.body["sessionId"].as_str().unwrap().to_owned());
            }
            409 => assert_eq!(reply.code(), "IDEMPOTENCY_KEY_IN_USE", "{reply:?}"),
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    let replay = app.start_checkout(&cart, "same-key").await;
    assert_eq!(replay.status, 201);
    sessions.insert(replay.body["sessionId"].as_str().unwrap().to_owned());
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let stored = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| k.contains(":checkout:session:"))
        .count();
    assert_eq!(stored, 1);

    let changed = app
        .call_with(
            "POST",
            "/v1/checkout",
            Some(json!({ "cartId": cart, "x": 1 })),
            &[("idempotency-key", "same-key")],
        )
        .await;
    assert_eq!((changed.status, changed.code()), (422, "IDEMPOTENCY_KEY_REUSED"));
    let other_key = app.start_checkout(&cart, "other-key").await;
    assert_eq!(
        (other_key.status, other_key.code()),
        (409, "CHECKOUT_IN_PROGRESS")
    );
    assert_eq!(
        other_key.body["error"]["details"]["sessionId"],
        replay.body["sessionId"]
    );

    // A key is its caller's: the same key with another cart is another body, 422, and
    // starts nothing (DESIGN §4.5); a new key checks that cart out. Two customers' keys
    // are each their own; the same key on two sessions' payment intents is each session's.
    let stranger = app.cart_with(&[("var-2", 1)]).await;
    let reused = app.start_checkout(&stranger, "same-key").await;
    assert_eq!(
        (reused.status, reused.code()),
        (422, "IDEMPOTENCY_KEY_REUSED"),
        "{reused:?}"
    );
    assert_eq!(
        app.redis_keys()
            .await
            .iter()
            .filter(|k| k.contains(":checkout:session:"))
            .count(),
        1
    );
    let theirs = app.start_checkout(&stranger, "their-key").await;
    assert_eq!(theirs.status, 201, "{theirs:?}");
    assert_ne!(theirs.body["sessionId"], replay.body["sessionId"]);
    assert_eq!(theirs.body["cartId"], stranger.as_str());
    for customer in ["yann", "zelda"] {
        let caller = Caller::Customer(customer);
        let path = format!("/v1/customers/{customer}/cart/items");
        assert_eq!(
            app.call("POST", &path, Some(unit("var-2", 1)), caller)
                .await
                .status,
            200
        );
        let started = app
            .start_checkout_as(json!({ "customerId": customer }), "shared-key", caller)
            .await;
        assert_eq!(
            (started.status, started.body["customerId"].as_str()),
            (201, Some(customer)),
            "{started:?}"
        );
    }
    // A customer's key names one request of theirs, whichever cart it checks out.
    let anonymous_cart = app.cart_with(&[("var-2", 1)]).await;
    let elsewhere = app
        .start_checkout_as(
            json!({ "cartId": anonymous_cart }),
            "shared-key",
            Caller::Customer("zelda"),
        )
        .await;
    assert_eq!(
        (elsewhere.status, elsewhere.code()),
        (422, "IDEMPOTENCY_KEY_REUSED"),
        "{elsewhere:?}"
    );
    for session in [&replay, &theirs] {
        let session = session.body["sessionId"].as_str().unwrap();
        let intent = app
            .call_with(
                "POST",
                &format!("/v1/checkout/{session}/payment-intent"),
                None,
                &[("idempotency-key", "pay-once")],
            )
            .await;
        assert_eq!(
            (intent.status, intent.body["sessionId"].as_str()),
            (200, Some(session)),
            "{intent:?}"
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn a_publish_during_checkout_does_not_change_what_is_charged() {
    let (app, gateway) = TestApp::shop(3, |c| c).await;
    let cart = app.cart_with(&[("var-2", 3)]).await;
    let started = app.start_checkout(&cart, "k-freeze").await;
    let session = started.body["sessionId"].as_str().unwrap().to_owned();
    let frozen = started.body["total"].as_i64().unwrap();
    app.pg
        .batch_execute("UPDATE variants SET base_price_minor = base_price_minor * 3")
        .await
        .unwrap();
    app.call("POST", "/v1/admin/pricing/publish", None, Caller::Admin)
        .await;
    let now = app
        .post("/v1/pricing/quote", json!({"lines": [unit("var-2", 3)]}))
        .await;
    assert_eq!(now.body["total"], frozen * 3, "the new prices are not live");

    let (status, _) = app.pay(&gateway, &session, Caller::Anonymous).await;
    assert_eq!(status, 200);
    assert_eq!(gateway.intents()[0].amount, frozen);
    assert_eq!(count(&app, "SELECT total_minor FROM orders").await, frozen);
    assert_eq!(count(&app, "SELECT pricing_version FROM orders").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn a_bundle_and_a_line_of_the_same_variant_are_checked_against_stock_together() {
    let (app, _gateway) = TestApp::shop(20, |c| c).await;
    app.set_on_hand("var-1", 2).await;
    let bundle =
        json!({"bundleId": "bundle-3", "choices": {"first": ["var-1"], "second": ["var-5"]}, "quantity": 1});
    let cart = app.cart_with_lines(&[unit("var-1", 2), bundle]).await;
    let refused = app.start_checkout(&cart, "k-bundle").await;
    assert_eq!((refused.status, refused.code()), (409, "INSUFFICIENT_INVENTORY"));
    assert_eq!(
        refused.body["error"]["details"]["shortages"],
        json!([{"variantId": "var-1", "requested": 3, "sellable": 2}])
    );
    assert_eq!(app.check_holds("var-1").await, (2, 0));
    nothing_held(&app).await;
    app.finish().await;
}

#[tokio::test]
async fn cancelling_releases_holds_and_lock_and_a_late_payment_is_flagged_for_refund() {
    let (app, gateway) = TestApp::shop(2, |c| c).await;
    let paying = app.paying_session(&[("var-1", 4)], "k-cancel").await;
    let (cart, session, paid) = (&paying.cart, &paying.session, paying.intent.as_str());
    // The customer pays just as the session is cancelled; the webhook comes after.
    assert!(gateway.succeed(paid));
    let cancelled = app.cancel(session, Caller::Anonymous).await;
    assert_eq!(
        (cancelled.status, cancelled.body["state"].as_str()),
        (200, Some("CANCELLED"))
    );
    assert_eq!(app.check_holds("var-1").await, (100, 0));
    nothing_held(&app).await;
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), unit("var-2", 1))
            .await
            .status,
        200
    );

    let (status, body) = app.intent_paid(&gateway, paid).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refundRequired"].is_string(), "{body}");
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 0);
    assert_eq!(
        count(&app, "SELECT count(*) FROM payment_outbox WHERE kind = 'refund'").await,
        1
    );
    let shown = app.get(&format!("/v1/checkout/{session}")).await;
    assert!(shown.body["refundRequired"].is_string());
    let again = app.cancel(session, Caller::Anonymous).await;
    assert_eq!(again.status, 200, "cancelling twice is harmless");
    app.finish().await;
}

#[tokio::test]
async fn an_expired_session_is_expired_by_the_first_call_that_meets_it() {
    let (app, gateway) = TestApp::shop(2, |c| c.set("checkout_lock_ttl_seconds", "1")).await;
    let cart = app.cart_with(&[("var-1", 5)]).await;
    let session = app.checkout(&cart, "k-exp").await;
    assert_eq!(app.get("/v1/inventory/var-1").await.body["reserved"], 5);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let expired = app.get(&format!("/v1/checkout/{session}")).await;
    assert_eq!(expired.body["state"], "EXPIRED");
    assert_eq!(app.get("/v1/inventory/var-1").await.body["sellable"], 100);
    nothing_held(&app).await;
    let late = app.payment_intent(&session, Caller::Anonymous).await;
    assert_eq!((late.status, late.code()), (409, "CHECKOUT_STATE"));
    let again = app.start_checkout(&cart, "k-exp-2").await;
    assert_eq!(again.status, 201, "the expired checkout still locks the cart");
    drop(gateway);
    app.finish().await;
}

/// A session past its deadline that nobody has read is met by the next call on its cart
/// (README "Expiry without a sweeper"): a new checkout of the cart, or a change to it,
/// expires the session (its holds and lock freed, its intent cancelled) and goes on; it is
/// neither refused because of the dead session nor holds the cart's units a second time.
#[tokio::test]
async fn the_next_call_on_a_cart_expires_its_session_past_the_deadline() {
    let (app, gateway) = TestApp::shop(2, |c| {
        c.set("checkout_lock_ttl_seconds", "1")
            .set("checkout_session_ttl_seconds", "1")
    })
    .await;
    let past_the_deadline = || tokio::time::sleep(Duration::from_millis(1300));

    // Without a payment intent: the cart's next checkout.
    let cart = app.cart_with(&[("var-1", 5)]).await;
    let first = app.checkout(&cart, "k-met-1").await;
    past_the_deadline().await;
    let second = app.checkout(&cart, "k-met-2").await;
    assert_eq!(app.stored_state(&first).await.as_deref(), Some("EXPIRED"));
    assert_eq!(
        app.get("/v1/inventory/var-1").await.body["reserved"],
        5,
        "the cart's units are held once, by the new session"
    );
    assert_eq!(app.cancel(&second, Caller::Anonymous).await.status, 200);

    // Waiting for its payment: the cart's next change.
    let paying = app.paying_session(&[("var-2", 3)], "k-met-3").await;
    past_the_deadline().await;
    let added = app
        .post(&format!("/v1/carts/{}/items", paying.cart), unit("var-1", 1))
        .await;
    assert_eq!(added.status, 200, "{added:?}");
    assert_eq!(
        app.stored_state(&paying.session).await.as_deref(),
        Some("EXPIRED")
    );
    assert_eq!(app.sellable("var-2").await, 100);
    // Its intent's cancellation is owed through the outbox: sent at once natively; on Spin
    // the cart component cannot reach the gateway, and a drain sends it once it is due
    // again (`outbox_retry_base_ms` after that first attempt).
    let owed = count(
        &app,
        &format!(
            "SELECT count(*) FROM payment_outbox WHERE kind = 'cancel_intent' AND payment_intent_id = '{}'",
            paying.intent
        ),
    )
    .await;
    assert_eq!(owed, 1);
    for _ in 0..10 {
        if !gateway.cancellations().is_empty() {
            break;
        }
        let drained = app.cli(&["drain"]);
        assert!(drained.status.success(), "{drained:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(gateway.cancellations(), vec![paying.intent.clone()]);

    // A customer's cart, waiting for its payment: the customer's next checkout.
    let zoe = Caller::Customer("zoe");
    let added = app
        .call(
            "POST",
            "/v1/customers/zoe/cart/items",
            Some(unit("var-2", 2)),
            zoe,
        )
        .await;
    assert_eq!(added.status, 200, "{added:?}");
    let started = app
        .start_checkout_as(json!({ "customerId": "zoe" }), "k-met-4", zoe)
        .await;
    assert_eq!(started.status, 201, "{started:?}");
    let waiting = started.body["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(app.payment_intent(&waiting, zoe).await.status, 200);
    past_the_deadline().await;
    let again = app
        .start_checkout_as(json!({ "customerId": "zoe" }), "k-met-5", zoe)
        .await;
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(app.stored_state(&waiting).await.as_deref(), Some("EXPIRED"));
    assert_eq!(
        app.get("/v1/inventory/var-2").await.body["reserved"],
        2,
        "held once, by the new session"
    );
    let last = again.body["sessionId"].as_str().unwrap();
    assert_eq!(app.cancel(last, zoe).await.status, 200);
    nothing_held(&app).await;
    app.finish().await;
}

/// The stored payment intent lives as long as its session's record, however long the
/// payment window (`checkout_session_ttl_seconds` goes up to 7 days): a session waiting
/// for its payment never finds its intent forgotten.
#[tokio::test]
async fn the_stored_intent_lives_as_long_as_its_session() {
    let (app, _gateway) = TestApp::shop(1, |c| c.set("checkout_session_ttl_seconds", "172800")).await;
    let paying = app.paying_session(&[("var-1", 1)], "k-long").await;
    let mut redis = app.redis.clone();
    let session: i64 = redis.pttl(app.session_key(&paying.session)).await.unwrap();
    let intent_key = app
        .keys()
        .payment_intent(&commerce_core::ids::SessionId::parse(&paying.session).unwrap());
    let intent: i64 = redis.pttl(intent_key).await.unwrap();
    assert!(session > 172_800_000, "{session}");
    assert!(
        intent >= session,
        "the intent {intent} ms, its session {session} ms"
    );
    app.finish().await;
}

/// A payment that arrives after its session's deadline expires the session in the webhook
/// and goes back as one refund: the intent it paid is not also "cancelled" at the gateway
/// (Stripe refuses to cancel a succeeded intent, and the outbox would list that refusal).
#[tokio::test]
async fn a_payment_after_the_deadline_is_refunded_once_and_its_intent_not_cancelled() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let paying = app.paying_session(&[("var-1", 2)], "k-late-pay").await;
    let mut redis = app.redis.clone();
    let _: () = redis
        .hset(app.session_key(&paying.session), "deadline", 1)
        .await
        .unwrap();

    let (status, answer) = app.intent_paid(&gateway, &paying.intent).await;
    assert_eq!(
        (status, answer["state"].as_str()),
        (200, Some("EXPIRED")),
        "{answer}"
    );
    assert!(answer["refundRequired"].is_string(), "{answer}");
    assert_eq!(app.sellable("var-1").await, 100, "its holds are freed");
    let owed: Vec<(String, String)> = app
        .pg
        .query(
            "SELECT kind, state FROM payment_outbox WHERE payment_intent_id = $1",
            &[&paying.intent],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(owed, vec![("refund".to_owned(), "sent".to_owned())]);
    assert_eq!(gateway.refunds().len(), 1);
    assert!(
        gateway.cancellations().is_empty(),
        "{:?}",
        gateway.cancellations()
    );
    let (again, _) = app.intent_paid(&gateway, &paying.intent).await;
    assert_eq!(again, 200);
    assert_eq!(gateway.refunds().len(), 1, "a redelivery refunds nothing more");
    // A read of it afterwards cancels nothing either.
    let shown = app.get(&format!("/v1/checkout/{}", paying.session)).await;
    assert_eq!(shown.body["state"], "EXPIRED", "{shown:?}");
    assert!(
        gateway.cancellations().is_empty(),
        "{:?}",
        gateway.cancellations()
    );
    app.finish().await;
}

/// A customer who paid while the app was away, past the session's deadline, and whose
/// webhook never gets through: the session expires, the gateway refuses to cancel the paid
/// intent, and that refusal itself owes the payment back. One refund, never neither.
#[tokio::test]
async fn a_payment_whose_webhook_never_comes_is_refunded_when_its_session_expires() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let paying = app.paying_session(&[("var-1", 1)], "k-no-webhook").await;
    assert!(
        gateway.succeed(&paying.intent),
        "the customer pays; no webhook is sent"
    );
    let mut redis = app.redis.clone();
    let _: () = redis
        .hset(app.session_key(&paying.session), "deadline", 1)
        .await
        .unwrap();

    let expired = app.get(&format!("/v1/checkout/{}", paying.session)).await;
    assert_eq!(expired.body["state"], "EXPIRED", "{expired:?}");
    let mut owed: Vec<(String, String)> = app
        .pg
        .query(
            "SELECT kind, state FROM payment_outbox WHERE payment_intent_id = $1",
            &[&paying.intent],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    owed.sort();
    assert_eq!(
        owed,
        vec![
            ("cancel_intent".to_owned(), "refused".to_owned()),
            ("refund".to_owned(), "sent".to_owned())
        ]
    );
    let refunds = gateway.refunds();
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount, paying.amount);
    // The webhook, should it come after all, refunds nothing more.
    let (status, _) = app.intent_paid(&gateway, &paying.intent).await;
    assert_eq!(status, 200);
    assert_eq!(gateway.refunds().len(), 1);
    app.finish().await;
}

/// A bundle line is checked when it is added and again when its cart is checked out: a
/// bundle changed meanwhile (a variant no longer eligible) refuses the checkout with 422
/// naming the line and the set, and nothing is held or locked.
#[tokio::test]
async fn a_bundle_line_that_no_longer_fits_its_bundle_is_refused_at_checkout() {
    let (app, _gateway) = TestApp::shop(20, |c| c).await;
    let line =
        json!({"bundleId": "bundle-3", "choices": {"first": ["var-1"], "second": ["var-5"]}, "quantity": 1});
    let cart = app.cart_with_lines(&[line]).await;
    app.pg
        .batch_execute(
            "DELETE FROM bundle_set_variants WHERE bundle_id = 'bundle-3' AND variant_id = 'var-1'",
        )
        .await
        .unwrap();
    let invalidated = app
        .call(
            "POST",
            "/v1/admin/bundles/bundle-3/invalidate",
            None,
            Caller::Admin,
        )
        .await;
    assert_eq!(invalidated.status, 200);

    let refused = app.start_checkout(&cart, "k-stale-bundle").await;
    assert_eq!(
        (refused.status, refused.code()),
        (422, "INVALID_BUNDLE_CHOICE"),
        "{refused:?}"
    );
    let details = &refused.body["error"]["details"];
    assert_eq!(details["setId"], "first", "{refused:?}");
    let cart_view = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(details["lineId"], cart_view.body["lines"][0]["lineId"]);
    assert_eq!(app.sellable("var-1").await, 100, "nothing held");
    nothing_held(&app).await;
    app.finish().await;
}

/// A session whose cart lock is gone (deleted by hand, a partial Redis loss) takes it back
/// at its payment intent; if another session has locked the cart meanwhile, the first is
/// cancelled there, so one cart never ends in two orders.
#[tokio::test]
async fn a_session_that_lost_its_cart_lock_takes_it_back_or_gives_way() {
    let (app, gateway) = TestApp::shop(2, |c| c).await;
    let mut redis = app.redis.clone();

    let cart = app.cart_with(&[("var-1", 1)]).await;
    let alone = app.checkout(&cart, "k-lost-lock-1").await;
    let _: () = redis.del(app.cart_lock_key(&cart)).await.unwrap();
    let (status, done) = app.pay(&gateway, &alone, Caller::Anonymous).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );

    let cart = app.cart_with(&[("var-2", 3)]).await;
    let first = app.checkout(&cart, "k-lost-lock-2").await;
    let _: () = redis.del(app.cart_lock_key(&cart)).await.unwrap();
    let second = app.checkout(&cart, "k-lost-lock-3").await;
    let refused = app.payment_intent(&first, Caller::Anonymous).await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "CHECKOUT_IN_PROGRESS"),
        "{refused:?}"
    );
    assert_eq!(refused.body["error"]["details"]["sessionId"], second.as_str());
    let gone = app.get(&format!("/v1/checkout/{first}")).await;
    assert_eq!(gone.body["state"], "CANCELLED", "{gone:?}");
    let lock: Option<String> = redis.get(app.cart_lock_key(&cart)).await.unwrap();
    assert_eq!(
        lock.as_deref(),
        Some(second.as_str()),
        "the other session keeps its lock"
    );
    let (status, done) = app.pay(&gateway, &second, Caller::Anonymous).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );

    assert_eq!(
        count(&app, "SELECT count(*) FROM orders").await,
        2,
        "one order per cart"
    );
    assert_eq!(app.pg_on_hand("var-2").await, 97);
    assert_eq!(
        app.sellable("var-2").await,
        97,
        "the cancelled session holds nothing"
    );

    // A session already waiting for its payment takes a lost lock back when its payment
    // intent is asked for again, until the holds' end.
    let paying = app.paying_session(&[("var-1", 1)], "k-lost-lock-4").await;
    let lock_key = app.cart_lock_key(&paying.cart);
    let _: () = redis.del(&lock_key).await.unwrap();
    let again = app.payment_intent(&paying.session, Caller::Anonymous).await;
    assert_eq!(again.status, 200, "{again:?}");
    let lock: Option<String> = redis.get(&lock_key).await.unwrap();
    assert_eq!(lock.as_deref(), Some(paying.session.as_str()));
    let ttl: i64 = redis.pttl(&lock_key).await.unwrap();
    assert!(ttl > 3_000_000, "until the holds' end, not a lock's ttl: {ttl}");
    // Not when the cart changed meanwhile: the session is cancelled there, and the cart
    // stays free for the shopper's new basket.
    let _: () = redis.del(&lock_key).await.unwrap();
    let added = app
        .post(&format!("/v1/carts/{}/items", paying.cart), unit("var-2", 1))
        .await;
    assert_eq!(added.status, 200, "{added:?}");
    let refused = app.payment_intent(&paying.session, Caller::Anonymous).await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "CHECKOUT_STATE"),
        "{refused:?}"
    );
    let gone = app.get(&format!("/v1/checkout/{}", paying.session)).await;
    assert_eq!(gone.body["state"], "CANCELLED", "{gone:?}");
    let lock: Option<String> = redis.get(&lock_key).await.unwrap();
    assert_eq!(lock, None, "the cart is free");

    // A session already waiting for its payment whose lock was lost and taken by another
    // checkout of the cart meanwhile: whichever is paid, the cart ends in one order, and
    // the other payment is refunded.
    let orders_before = count(&app, "SELECT count(*) FROM orders").await;
    let first = app.paying_session(&[("var-2", 1)], "k-lost-lock-5").await;
    let _: () = redis.del(app.cart_lock_key(&first.cart)).await.unwrap();
    let second = app.checkout(&first.cart, "k-lost-lock-6").await;
    let (status, refused) = app.intent_paid(&gateway, &first.intent).await;
    assert_eq!(status, 200, "{refused}");
    assert_eq!(refused["state"], "FAILED", "{refused}");
    assert!(refused["refundRequired"].is_string(), "{refused}");
    let (status, done) = app.pay(&gateway, &second, Caller::Anonymous).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM orders").await,
        orders_before + 1
    );
    assert_eq!(
        gateway
            .refunds()
            .iter()
            .filter(|r| r.payment_intent == first.intent)
            .count(),
        1,
        "the first payment is refunded"
    );

    // The same, the second checkout paid first: its order lets the lock go, so the first
    // session's payment finds the lock free; PostgreSQL still refuses it a second order of
    // the cart, and its payment is refunded.
    let orders_before = count(&app, "SELECT count(*) FROM orders").await;
    let first = app.paying_session(&[("var-2", 1)], "k-lost-lock-7").await;
    let _: () = redis.del(app.cart_lock_key(&first.cart)).await.unwrap();
    let second = app.checkout(&first.cart, "k-lost-lock-8").await;
    let (status, done) = app.pay(&gateway, &second, Caller::Anonymous).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    let (status, refused) = app.intent_paid(&gateway, &first.intent).await;
    assert_eq!(status, 200, "{refused}");
    assert_eq!(refused["state"], "FAILED", "{refused}");
    assert!(
        refused["refundRequired"]
            .as_str()
            .is_some_and(|r| r.contains(second.as_str())),
        "{refused}"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM orders").await,
        orders_before + 1,
        "one order for the cart"
    );
    assert_eq!(
        gateway
            .refunds()
            .iter()
            .filter(|r| r.payment_intent == first.intent)
            .count(),
        1,
        "the first payment is refunded"
    );
    let on_hand = app.pg_on_hand("var-2").await;
    assert_eq!(
        app.sellable("var-2").await,
        on_hand,
        "the failed session holds nothing"
    );
    let lock: Option<String> = redis.get(app.cart_lock_key(&first.cart)).await.unwrap();
    assert_eq!(lock, None, "the cart is free again");
    app.finish().await;
}

/// PostgreSQL keeps the newest cart version ordered per cart: a second checkout (let in by
/// a lost lock) that froze the cart while the first order was still being written (waiting
/// for a stock row) froze the same version, and is refused its order, however late the
/// first commits and whenever its payment intent is made.
#[tokio::test]
async fn an_order_written_while_a_second_checkout_of_the_cart_pays_leaves_it_no_order() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let mut redis = app.redis.clone();
    let first = app.paying_session(&[("var-1", 1)], "k-slow-order-1").await;
    // Another transaction holds var-1's stock row: the first order's statement waits for it.
    let (blocker, connection) = tokio_postgres::connect(&app.database_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    blocker
        .batch_execute("BEGIN; SELECT on_hand FROM inventory_levels WHERE variant_id = 'var-1' FOR UPDATE")
        .await
        .unwrap();
    let second = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _: () = redis.del(app.cart_lock_key(&first.cart)).await.unwrap();
        let second = app.checkout(&first.cart, "k-slow-order-2").await;
        blocker.batch_execute("COMMIT").await.unwrap();
        second
    };
    let ((status, done), second) = tokio::join!(app.intent_paid(&gateway, &first.intent), second);
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    // Its payment intent only now, after the first order is written.
    let intent = app.payment_intent(&second, Caller::Anonymous).await;
    assert_eq!(intent.status, 200, "{intent:?}");
    let second_intent = intent.body["paymentIntentId"].as_str().unwrap().to_owned();
    let (status, refused) = app.intent_paid(&gateway, &second_intent).await;
    assert_eq!(
        (status, refused["state"].as_str()),
        (200, Some("FAILED")),
        "{refused}"
    );
    assert!(refused["refundRequired"].is_string(), "{refused}");
    assert_eq!(
        count(&app, "SELECT count(*) FROM orders").await,
        1,
        "one order for the cart"
    );
    assert_eq!(app.pg_on_hand("var-1").await, 99);
    assert_eq!(
        app.sellable("var-1").await,
        99,
        "the refused session holds nothing"
    );
    // The first order emptied the cart, though the second session held its lock: the
    // shopper's next checkout of it is a new cart, and is ordered.
    let cart = app.get(&format!("/v1/carts/{}", first.cart)).await;
    assert_eq!(cart.body["lines"], json!([]), "{cart:?}");
    assert_eq!(
        app.post(&format!("/v1/carts/{}/items", first.cart), unit("var-1", 1))
            .await
            .status,
        200
    );
    let third = app.checkout(&first.cart, "k-slow-order-3").await;
    let (status, done) = app.pay(&gateway, &third, Caller::Anonymous).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    app.finish().await;
}

/// The same cart version ordered again with other lines (a restored older backup rewinds a
/// cart's version) is another cart: only the same frozen cart is refused.
#[tokio::test]
async fn a_cart_version_rewound_with_other_lines_is_ordered() {
    let (app, gateway) = TestApp::shop(2, |c| c).await;
    let mut redis = app.redis.clone();
    let cart = app.cart_with(&[("var-1", 1)]).await;
    let first = app.checkout(&cart, "k-rewound-1").await;
    let (status, done) = app.pay(&gateway, &first, Caller::Anonymous).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    // As a restore of a backup taken before the order would leave it: the version back.
    let _: () = redis.hset(app.cart_key(&cart), "version", 0).await.unwrap();
    let added = app
        .post(&format!("/v1/carts/{cart}/items"), unit("var-2", 1))
        .await;
    assert_eq!(added.body["version"], 1, "{added:?}");
    let second = app.checkout(&cart, "k-rewound-2").await;
    let (status, done) = app.pay(&gateway, &second, Caller::Anonymous).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 2);
    app.finish().await;
}

/// An order records its frozen cart through a digest of its lines, so a cart as large as a
/// cart may be, of variants whose ids are as long as ids may be, is ordered (the whole
/// lines in the unique index once outgrew a b-tree entry: the payment taken, no order).
#[tokio::test]
async fn a_cart_of_many_variants_with_long_ids_is_ordered() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let ids: Vec<String> = (0..90).map(|i| format!("{i:02}-{}", "v".repeat(61))).collect();
    for id in &ids {
        app.pg
            .execute(
                "INSERT INTO variants (id, product_id, sku, name, base_price_minor, currency)
                 SELECT $1, product_id, $1, name, base_price_minor, currency FROM variants
                 WHERE id = 'var-1'",
                &[id],
            )
            .await
            .unwrap();
        app.pg
            .execute(
                "INSERT INTO inventory_levels (variant_id, on_hand) VALUES ($1, 5)",
                &[id],
            )
            .await
            .unwrap();
    }
    app.inventory().reconcile(|_| {}).await.unwrap();
    app.publish_rulesets().await;
    let units: Vec<(&str, i64)> = ids.iter().map(|id| (id.as_str(), 1)).collect();
    let cart = app.cart_with(&units).await;
    let session = app.checkout(&cart, "k-long-ids").await;
    let (status, done) = app.pay(&gateway, &session, Caller::Anonymous).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM order_lines").await, 90);
    assert_eq!(app.sellable(&ids[89]).await, 4);
    app.finish().await;
}

/// A cart whose version a restored backup rewound is compared by its lines: under other
/// lines (a bundle where loose lines of the same variants were ordered) it is another
/// cart and is ordered; under the very lines ordered at that version it is that order's
/// cart, refused and refunded once, and emptied as that order emptied it, so the next
/// checkout of it is of a new cart.
#[tokio::test]
async fn a_rewound_cart_is_told_from_the_one_ordered_by_its_lines() {
    let (app, gateway) = TestApp::shop(20, |c| c).await;
    let mut redis = app.redis.clone();
    let bundle =
        json!({"bundleId": "bundle-3", "choices": {"first": ["var-1"], "second": ["var-5"]}, "quantity": 1});
    let cart = app.cart_with_lines(&[unit("var-1", 1), unit("var-5", 1)]).await;
    let loose = app.checkout(&cart, "k-lines-1").await;
    let (_, done) = app.pay(&gateway, &loose, Caller::Anonymous).await;
    assert_eq!(done["state"], "COMPLETED", "{done}");
    let rewind = |version: i64| {
        let mut redis = redis.clone();
        let key = app.cart_key(&cart);
        async move {
            // As a restore of a backup taken before the order would leave it.
            let _: () = redis.hset(key, "version", version).await.unwrap();
        }
    };
    let items = format!("/v1/carts/{cart}/items");
    let add_bundle = || app.post(&items, bundle.clone());

    // The same units per variant at the same version, in one bundle line: another cart.
    rewind(1).await;
    let added = add_bundle().await;
    assert_eq!(added.body["version"], 2, "{added:?}");
    let bundled = app.checkout(&cart, "k-lines-2").await;
    let (_, done) = app.pay(&gateway, &bundled, Caller::Anonymous).await;
    assert_eq!(done["state"], "COMPLETED", "{done}");

    // The very lines of that order at its version: its cart, refused, and emptied.
    rewind(1).await;
    assert_eq!(add_bundle().await.body["version"], 2);
    let again = app.checkout(&cart, "k-lines-3").await;
    let (_, done) = app.pay(&gateway, &again, Caller::Anonymous).await;
    assert_eq!(done["state"], "FAILED", "{done}");
    assert!(
        done["refundRequired"]
            .as_str()
            .is_some_and(|r| r.contains(&bundled)),
        "{done}"
    );
    let left = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(left.body["lines"], json!([]), "{left:?}");
    let lock: Option<String> = redis.get(app.cart_lock_key(&cart)).await.unwrap();
    assert_eq!(lock, None);
    assert_eq!(
        count(&app, "SELECT count(*) FROM payment_outbox WHERE kind = 'refund'").await,
        1
    );
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), unit("var-1", 1))
            .await
            .status,
        200
    );
    let next = app.checkout(&cart, "k-lines-4").await;
    let (_, done) = app.pay(&gateway, &next, Caller::Anonymous).await;
    assert_eq!(done["state"], "COMPLETED", "{done}");
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 3);
    app.finish().await;
}

/// A cart whose version number a rolled-back Redis gave again to other lines is another
/// cart: a session that froze the version's earlier lines neither empties it when its
/// order is refused as a duplicate nor locks it when it is put back from PostgreSQL.
#[tokio::test]
async fn a_version_number_given_again_to_other_lines_is_left_to_the_shopper() {
    let (app, gateway) = TestApp::shop(3, |c| c).await;
    let mut redis = app.redis.clone();
    let cart = app.cart_with(&[("var-1", 1)]).await;
    let intent_of = |key: &'static str| {
        let (app, cart) = (&app, cart.clone());
        async move {
            let session = app.checkout(&cart, key).await;
            let intent = app.payment_intent(&session, Caller::Anonymous).await;
            assert_eq!(intent.status, 200, "{intent:?}");
            intent.body["paymentIntentId"].as_str().unwrap().to_owned()
        }
    };
    let first = intent_of("k-reused-1").await;
    let _: () = redis.del(app.cart_lock_key(&cart)).await.unwrap();
    let second = intent_of("k-reused-2").await;
    let _: () = redis.del(app.cart_lock_key(&cart)).await.unwrap();
    let (_, done) = app.intent_paid(&gateway, &first).await;
    assert_eq!(done["state"], "COMPLETED", "{done}");

    // Rolled back to before its first line, the cart is filled again: version 1 anew.
    let _: () = redis.hset(app.cart_key(&cart), "version", 0).await.unwrap();
    let added = app
        .post(&format!("/v1/carts/{cart}/items"), unit("var-2", 1))
        .await;
    assert_eq!(added.body["version"], 1, "{added:?}");

    let (_, refused) = app.intent_paid(&gateway, &second).await;
    assert_eq!(refused["state"], "FAILED", "{refused}");
    let basket = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(basket.body["version"], 1, "{basket:?}");
    assert_eq!(basket.body["lines"][0]["variantId"], "var-2", "{basket:?}");
    let lock: Option<String> = redis.get(app.cart_lock_key(&cart)).await.unwrap();
    assert_eq!(lock, None, "{basket:?}");
    let next = app.checkout(&cart, "k-reused-3").await;
    let (_, done) = app.pay(&gateway, &next, Caller::Anonymous).await;
    assert_eq!(done["state"], "COMPLETED", "{done}");
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 2);
    app.finish().await;
}

/// Redis restored from a copy taken before a payment: the session it remembers waiting
/// for that payment was ordered since. When it meets its deadline it is finished as
/// PostgreSQL's order says (COMPLETED, its order named, its cart emptied, its stock
/// mirrored), not expired: its succeeded intent is neither cancelled nor refunded.
#[tokio::test]
async fn a_session_redis_remembers_from_before_its_order_is_finished_not_expired() {
    let (app, gateway) = TestApp::shop(2, |c| {
        c.set("checkout_lock_ttl_seconds", "2")
            .set("checkout_session_ttl_seconds", "2")
    })
    .await;
    let mut redis = app.redis.clone();
    let cart = app.cart_with(&[("var-1", 3)]).await;
    let session = app.checkout(&cart, "k-older").await;
    let intent = app.payment_intent(&session, Caller::Anonymous).await;
    assert_eq!(intent.status, 200, "{intent:?}");
    let intent = intent.body["paymentIntentId"].as_str().unwrap().to_owned();
    let before = app.redis_snapshot().await;
    let (_, done) = app.intent_paid(&gateway, &intent).await;
    assert_eq!(done["state"], "COMPLETED", "{done}");
    let order = done["orderId"].as_str().unwrap().to_owned();

    app.flush_redis().await;
    for (key, dump) in &before {
        let _: () = redis::cmd("RESTORE")
            .arg(key)
            .arg(0)
            .arg(dump.as_slice())
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let stale = app.get(&format!("/v1/checkout/{session}")).await;
    assert_eq!(stale.body["state"], "PAYMENT_PENDING", "{stale:?}");

    let mut seen = stale;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = app.get(&format!("/v1/checkout/{session}")).await;
        if seen.body["state"] != "PAYMENT_PENDING" {
            break;
        }
    }
    assert_eq!(seen.body["state"], "COMPLETED", "{seen:?}");
    assert_eq!(seen.body["orderId"], order.as_str(), "{seen:?}");
    let cart_now = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(cart_now.body["lines"], json!([]), "{cart_now:?}");
    nothing_held(&app).await;
    assert_eq!(app.sellable("var-1").await, 97);
    assert_eq!(app.pg_on_hand("var-1").await, 97);
    assert_eq!(
        count(&app, "SELECT count(*) FROM payment_outbox").await,
        0,
        "nothing cancelled or refunded"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 1);

    // Redis's AOF lost the last second after the webhook was answered: the session is
    // left PAYMENT_CONFIRMED holding its cart's lock, and no webhook comes again. The
    // first call that meets it finishes it (here the shopper's next change to the cart).
    let cart = app.cart_with(&[("var-2", 1)]).await;
    let session = app.checkout(&cart, "k-older-2").await;
    let (_, done) = app.pay(&gateway, &session, Caller::Anonymous).await;
    assert_eq!(done["state"], "COMPLETED", "{done}");
    let key = app.session_key(&session);
    let _: () = redis.hset(&key, "state", "PAYMENT_CONFIRMED").await.unwrap();
    let _: () = redis.set(app.cart_lock_key(&cart), &session).await.unwrap();
    let added = app
        .post(&format!("/v1/carts/{cart}/items"), unit("var-2", 1))
        .await;
    assert_eq!(added.status, 200, "the cart is the shopper's again: {added:?}");
    let seen = app.get(&format!("/v1/checkout/{session}")).await;
    assert_eq!(seen.body["state"], "COMPLETED", "{seen:?}");
    assert!(seen.body["orderId"].is_string(), "{seen:?}");
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 2);
    assert_eq!(count(&app, "SELECT count(*) FROM payment_outbox").await, 0);

    // Remembered as still waiting for its payment, it cannot be cancelled (it was paid);
    // remembered as expired (the call that expired it failed before it could finish it),
    // the next call that meets it finishes it.
    // Nor can it take a payment, nor does a late failure event of its payment end it; and
    // remembered failed, a read finishes it too.
    let paid_with = app.get(&format!("/v1/checkout/{session}")).await.body["paymentIntentId"]
        .as_str()
        .unwrap()
        .to_owned();
    for (remembered, call) in [
        ("PAYMENT_PENDING", "cancel"),
        ("PAYMENT_PENDING", "payment intent"),
        ("PAYMENT_PENDING", "failure event"),
        ("EXPIRED", "read"),
        ("FAILED", "read"),
    ] {
        let _: () = redis.hset(&key, "state", remembered).await.unwrap();
        match call {
            "cancel" | "payment intent" => {
                let refused = match call {
                    "cancel" => app.cancel(&session, Caller::Anonymous).await,
                    _ => app.payment_intent(&session, Caller::Anonymous).await,
                };
                assert_eq!(
                    (refused.status, refused.code()),
                    (409, "CHECKOUT_STATE"),
                    "{call}: {refused:?}"
                );
            }
            "failure event" => {
                let event = gateway.event("payment_intent.payment_failed", &paid_with);
                let (status, answer) = gateway.deliver(&app.base, &event).await;
                assert_eq!(
                    (status, answer["state"].as_str()),
                    (200, Some("COMPLETED")),
                    "{answer}"
                );
            }
            _ => {}
        }
        let seen = app.get(&format!("/v1/checkout/{session}")).await;
        assert_eq!(seen.body["state"], "COMPLETED", "{remembered}: {seen:?}");
        assert!(seen.body["orderId"].is_string(), "{seen:?}");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 2);
    assert_eq!(count(&app, "SELECT count(*) FROM payment_outbox").await, 0);
    nothing_held(&app).await;
    app.finish().await;
}

/// A failure event and the success event of the same intent arriving together (a card
/// declined, then a good one, on one intent; events come in any order): the session ends
/// in its order (having gone through PAYMENT_CONFIRMED) or, the failure handled first, in
/// one refund; never FAILED with its order, nor ordered and refunded.
#[tokio::test]
async fn a_failure_event_racing_the_success_of_its_intent_never_fails_the_paid_session() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    for round in 0..12 {
        let paying = app
            .paying_session(&[("var-1", 1)], &format!("k-race-{round}"))
            .await;
        let failed = gateway.event("payment_intent.payment_failed", &paying.intent);
        let succeeded = gateway.event("payment_intent.succeeded", &paying.intent);
        let (_, (status, _)) = tokio::join!(
            gateway.deliver(&app.base, &failed),
            gateway.deliver(&app.base, &succeeded)
        );
        assert_eq!(status, 200, "round {round}");
        let seen = app.get(&format!("/v1/checkout/{}", paying.session)).await;
        let states: Vec<&str> = seen.body["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h["state"].as_str())
            .collect();
        match seen.body["state"].as_str() {
            // The success first (or the failure refused once it was confirmed): its order.
            Some("COMPLETED") => {
                assert!(states.contains(&"PAYMENT_CONFIRMED"), "round {round}: {states:?}");
                assert!(seen.body["orderId"].is_string(), "round {round}: {seen:?}");
            }
            // The failure first, wholly: the payment that follows is refunded.
            Some("FAILED") => {
                assert!(
                    !states.contains(&"PAYMENT_CONFIRMED"),
                    "round {round}: {states:?}"
                );
                assert!(seen.body["orderId"].is_null(), "round {round}: {seen:?}");
                assert!(seen.body["refundRequired"].is_string(), "round {round}: {seen:?}");
            }
            _ => panic!("round {round}: {seen:?}"),
        }
    }
    // Each payment ended in one order or one refund, never both.
    let orders = count(&app, "SELECT count(*) FROM orders").await;
    let refunds = count(&app, "SELECT count(*) FROM payment_outbox WHERE kind = 'refund'").await;
    assert_eq!(orders + refunds, 12, "orders {orders}, refunds {refunds}");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM orders o JOIN payment_outbox p
             ON p.payment_intent_id = o.payment_intent_id AND p.kind = 'refund'"
        )
        .await,
        0
    );
    nothing_held(&app).await;
    app.finish().await;
}

/// A session that lost its cart's lock before its payment intent, while a second checkout
/// of the cart was made and ordered, cannot take the lock back for a cart that is no longer
/// the one it froze: its payment intent is refused and it is cancelled.
#[tokio::test]
async fn a_session_whose_cart_was_ordered_meanwhile_takes_no_payment() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let mut redis = app.redis.clone();
    let cart = app.cart_with(&[("var-1", 2)]).await;
    let first = app.checkout(&cart, "k-moved-1").await;
    let _: () = redis.del(app.cart_lock_key(&cart)).await.unwrap();
    let second = app.checkout(&cart, "k-moved-2").await;
    let (status, done) = app.pay(&gateway, &second, Caller::Anonymous).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );

    let refused = app.payment_intent(&first, Caller::Anonymous).await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "CHECKOUT_STATE"),
        "{refused:?}"
    );
    assert_eq!(
        app.get(&format!("/v1/checkout/{first}")).await.body["state"],
        "CANCELLED"
    );
    assert_eq!(app.sellable("var-1").await, 98, "the first session holds nothing");
    let lock: Option<String> = redis.get(app.cart_lock_key(&cart)).await.unwrap();
    assert_eq!(lock, None, "the cart is free");
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 1);
    app.finish().await;
}

/// A customer's cart lost with Redis and built again is another cart: a session paid for
/// before the loss still becomes its order, whether the customer is checking the new cart
/// out or has ordered it, and its order leaves the new cart alone.
#[tokio::test]
async fn a_customer_session_paid_before_a_redis_loss_is_ordered_after_the_new_cart_is() {
    let (app, gateway) = TestApp::shop(2, |c| c).await;
    let zoe = Caller::Customer("zoe");
    let fill = |variant: &'static str| {
        app.call(
            "POST",
            "/v1/customers/zoe/cart/items",
            Some(unit(variant, 1)),
            zoe,
        )
    };
    assert_eq!(fill("var-1").await.status, 200);
    let started = app
        .start_checkout_as(json!({ "customerId": "zoe" }), "k-loss-1", zoe)
        .await;
    let before = started.body["sessionId"].as_str().unwrap().to_owned();
    let intent = app.payment_intent(&before, zoe).await;
    assert_eq!(intent.status, 200, "{intent:?}");
    let before_intent = intent.body["paymentIntentId"].as_str().unwrap().to_owned();

    app.flush_redis().await;
    assert_eq!(fill("var-2").await.status, 200);
    let started = app
        .start_checkout_as(json!({ "customerId": "zoe" }), "k-loss-2", zoe)
        .await;
    assert_eq!(started.status, 201, "{started:?}");
    let after = started.body["sessionId"].as_str().unwrap().to_owned();
    let (status, done) = app.pay(&gateway, &after, zoe).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );

    let (status, done) = app.intent_paid(&gateway, &before_intent).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 2);

    // Again, the new cart being checked out (locked) when the old payment arrives.
    assert_eq!(fill("var-1").await.status, 200);
    let started = app
        .start_checkout_as(json!({ "customerId": "zoe" }), "k-loss-3", zoe)
        .await;
    let older = started.body["sessionId"].as_str().unwrap().to_owned();
    let intent = app.payment_intent(&older, zoe).await;
    let older_intent = intent.body["paymentIntentId"].as_str().unwrap().to_owned();
    app.flush_redis().await;
    assert_eq!(fill("var-2").await.status, 200);
    let started = app
        .start_checkout_as(json!({ "customerId": "zoe" }), "k-loss-4", zoe)
        .await;
    assert_eq!(started.status, 201, "{started:?}");
    let (status, done) = app.intent_paid(&gateway, &older_intent).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    let cart = app.call("GET", "/v1/customers/zoe/cart", None, zoe).await;
    assert_eq!(
        cart.body["lines"][0]["variantId"], "var-2",
        "the new cart is left as it is: {cart:?}"
    );
    let newer = started.body["sessionId"].as_str().unwrap().to_owned();
    let (status, done) = app.pay(&gateway, &newer, zoe).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 4);
    assert!(gateway.refunds().is_empty(), "{:?}", gateway.refunds());
    app.finish().await;
}

/// A variant deleted from the catalog while a checkout holding it is LOCKED: its payment
/// intent is refused with 422 `UNKNOWN_VARIANT` naming it (never a 500), and the session is
/// cancelled: its stock and cart freed, the intent made for it cancelled at the gateway.
#[tokio::test]
async fn a_variant_deleted_under_a_locked_checkout_cancels_it_at_its_payment_intent() {
    let (app, gateway) = TestApp::shop(2, |c| c).await;
    let before = app.sellable("var-1").await;
    let cart = app.cart_with(&[("var-1", 1), ("var-2", 2)]).await;
    let session = app.checkout(&cart, "k-deleted").await;
    assert_eq!(app.sellable("var-1").await, before - 1);
    app.delete_variant("var-2").await;
    let refused = app.payment_intent(&session, Caller::Anonymous).await;
    assert_eq!(
        (refused.status, refused.code()),
        (422, "UNKNOWN_VARIANT"),
        "{refused:?}"
    );
    assert_eq!(refused.body["error"]["details"]["variantIds"], json!(["var-2"]));
    assert_eq!(refused.body["error"]["details"]["state"], "CANCELLED");
    let again = app.payment_intent(&session, Caller::Anonymous).await;
    assert_eq!((again.status, again.code()), (409, "CHECKOUT_STATE"), "{again:?}");
    let shown = app.get(&format!("/v1/checkout/{session}")).await;
    assert_eq!(shown.body["state"], "CANCELLED", "{shown:?}");
    assert_eq!(app.sellable("var-1").await, before, "its holds freed");
    let mut redis = app.redis.clone();
    let lock: Option<String> = redis.get(app.cart_lock_key(&cart)).await.unwrap();
    assert_eq!(lock, None, "its cart unlocked");
    let intent = gateway.intents()[0].id.clone();
    assert_eq!(gateway.cancellations(), [intent], "the intent is cancelled");
    app.finish().await;
}

/// A checkout that fails on its own (here a bundle's cache damaged by hand: a reply the
/// server cannot use, a 500) leaves its cart unlocked: only a dependency failure keeps the
/// lock, for the retry that resumes the session.
#[tokio::test]
async fn a_checkout_that_fails_on_its_own_leaves_its_cart_unlocked() {
    let (app, _gateway) = TestApp::shop(20, |c| c).await;
    let cart = app
        .cart_with_lines(&[json!({
            "bundleId": "bundle-1",
            "choices": {"tops": ["var-1", "var-2"], "caps": ["var-9"]},
            "quantity": 1
        })])
        .await;
    let mut redis = app.redis.clone();
    let sets = app.key("bundle:{bundle-1}:sets");
    let _: () = redis.del(&sets).await.unwrap();
    let _: () = redis.set(&sets, "damaged").await.unwrap();
    let failed = app.start_checkout(&cart, "k-own-failure").await;
    assert_eq!(failed.status, 500, "{failed:?}");
    let lock: Option<String> = redis.get(app.cart_lock_key(&cart)).await.unwrap();
    assert_eq!(lock, None, "the cart is left unlocked");
    let _: () = redis.del(&sets).await.unwrap();
    let started = app.start_checkout(&cart, "k-own-failure").await;
    assert_eq!(started.status, 201, "{started:?}");
    app.finish().await;
}

/// A LOCKED session whose frozen cart was lost (its metadata key, alone) can take no
/// payment: whatever meets it (its payment intent, a new checkout of its cart, a read)
/// cancels it, freeing its stock and its cart, and asks the gateway for nothing.
#[tokio::test]
async fn a_session_that_lost_its_frozen_cart_is_cancelled_at_its_payment_intent() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let mut redis = app.redis.clone();
    let cart = app.cart_with(&[("var-1", 2)]).await;
    let session = app.checkout(&cart, "k-no-metadata-1").await;
    let id = commerce_core::ids::SessionId::parse(&session).unwrap();
    let _: () = redis.del(app.keys().checkout_metadata(&id)).await.unwrap();

    let refused = app.payment_intent(&session, Caller::Anonymous).await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "CHECKOUT_STATE"),
        "{refused:?}"
    );
    assert_eq!(
        app.get(&format!("/v1/checkout/{session}")).await.body["state"],
        "CANCELLED"
    );
    assert_eq!(app.sellable("var-1").await, 100);
    assert!(gateway.intents().is_empty(), "no intent was asked for");
    let again = app.checkout(&cart, "k-no-metadata-2").await;
    assert_ne!(again, session, "the cart is checked out again");

    // Met by the buyer who starts again instead of paying: the new checkout ends it and
    // takes the cart (it held the lock until its deadline, 409 naming it).
    let again = commerce_core::ids::SessionId::parse(&again).unwrap();
    let _: () = redis.del(app.keys().checkout_metadata(&again)).await.unwrap();
    let third = app.start_checkout(&cart, "k-no-metadata-3").await;
    assert_eq!(third.status, 201, "{third:?}");
    assert_eq!(
        app.stored_state(again.as_str()).await.as_deref(),
        Some("CANCELLED")
    );
    assert_eq!(app.sellable("var-1").await, 98, "held once, by the third session");

    // Met by a read: shown cancelled, its units and cart free.
    let third = third.body["sessionId"].as_str().unwrap().to_owned();
    let id = commerce_core::ids::SessionId::parse(&third).unwrap();
    let _: () = redis.del(app.keys().checkout_metadata(&id)).await.unwrap();
    let read = app.get(&format!("/v1/checkout/{third}")).await;
    assert_eq!(
        (read.status, read.body["state"].as_str()),
        (200, Some("CANCELLED")),
        "{read:?}"
    );
    assert_eq!(app.sellable("var-1").await, 100);

    // A frozen cart kept in a form that cannot be read is as lost.
    let fourth = app.start_checkout(&cart, "k-no-metadata-4").await;
    assert_eq!(fourth.status, 201, "{fourth:?}");
    let fourth = fourth.body["sessionId"].as_str().unwrap().to_owned();
    let id = commerce_core::ids::SessionId::parse(&fourth).unwrap();
    let _: () = redis
        .set(app.keys().checkout_metadata(&id), "not json")
        .await
        .unwrap();
    let fifth = app.start_checkout(&cart, "k-no-metadata-5").await;
    assert_eq!(fifth.status, 201, "{fifth:?}");
    assert_eq!(app.stored_state(&fourth).await.as_deref(), Some("CANCELLED"));

    // A read that cannot tell (Redis answers its read of the frozen cart with an error)
    // leaves a session as it is: an error says nothing of what the session froze.
    let fifth = fifth.body["sessionId"].as_str().unwrap().to_owned();
    let id = commerce_core::ids::SessionId::parse(&fifth).unwrap();
    let metadata = app.keys().checkout_metadata(&id);
    let kept: String = redis.get(&metadata).await.unwrap();
    let _: () = redis.del(&metadata).await.unwrap();
    let _: () = redis.hset(&metadata, "wrong", "type").await.unwrap();
    let read = app.get(&format!("/v1/checkout/{fifth}")).await;
    assert_eq!(
        (read.status, read.body["state"].as_str()),
        (200, Some("LOCKED")),
        "{read:?}"
    );
    assert_eq!(app.stored_state(&fifth).await.as_deref(), Some("LOCKED"));
    assert_eq!(app.sellable("var-1").await, 98, "its units still held");
    let _: () = redis.del(&metadata).await.unwrap();
    let _: () = redis.set(&metadata, kept).await.unwrap();
    assert_eq!(app.payment_intent(&fifth, Caller::Anonymous).await.status, 200);
    assert_eq!(gateway.intents().len(), 1, "only the intact session's intent");
    app.finish().await;
}

/// A cancel that lands while the payment intent is being created (a slow gateway) wins:
/// the intent request, which then holds stock, PostgreSQL's copy and the lock again, gives
/// them all back and cancels its intent; nothing brings the session back to be paid.
#[tokio::test]
async fn a_cancel_during_the_payment_intent_leaves_nothing_held_or_payable() {
    let (app, gateway) = TestApp::shop(2, |c| c).await;
    let cart = app.cart_with(&[("var-1", 2)]).await;
    let session = app.checkout(&cart, "k-cancel-race").await;
    gateway.delay_next(Duration::from_millis(800));
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        app.cancel(&session, Caller::Anonymous).await
    };
    let (refused, cancelled) = tokio::join!(app.payment_intent(&session, Caller::Anonymous), cancel);
    assert_eq!(cancelled.body["state"], "CANCELLED", "{cancelled:?}");
    assert_eq!(
        (refused.status, refused.code()),
        (409, "CHECKOUT_STATE"),
        "{refused:?}"
    );

    nothing_held(&app).await;
    assert_eq!(app.sellable("var-1").await, 100);
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), unit("var-2", 1))
            .await
            .status,
        200,
        "the cart is unlocked"
    );
    let intent = gateway.intents()[0].id.clone();
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) FROM checkout_sessions WHERE id = '{session}' AND ended_state = 'CANCELLED'"
            )
        )
        .await,
        1,
        "PostgreSQL's copy ended"
    );
    assert_eq!(gateway.cancellations(), [intent], "the intent is cancelled");
    // A Redis loss does not bring it back as payable.
    forget_session(&app, &session).await;
    let shown = app.get(&format!("/v1/checkout/{session}")).await;
    assert_ne!(shown.body["state"], "PAYMENT_PENDING", "{shown:?}");
    let again = app.payment_intent(&session, Caller::Anonymous).await;
    assert!(matches!(again.status, 404 | 409), "{again:?}");
    assert_eq!(gateway.intents().len(), 1, "no new intent");
    app.finish().await;
}

/// A second payment-intent call still at a slow gateway while the first one's payment
/// completes the order holds nothing again and leaves the cart unlocked.
#[tokio::test]
async fn a_payment_intent_call_outrun_by_the_order_gives_back_what_it_took() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let cart = app.cart_with(&[("var-1", 2)]).await;
    let session = app.checkout(&cart, "k-double-tap").await;
    gateway.delay_next(Duration::from_millis(1500));
    let slow = app.payment_intent(&session, Caller::Anonymous);
    let first = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, done) = app.pay(&gateway, &session, Caller::Anonymous).await;
        assert_eq!(
            (status, done["state"].as_str()),
            (200, Some("COMPLETED")),
            "{done}"
        );
    };
    let (late, ()) = tokio::join!(slow, first);
    assert_eq!((late.status, late.code()), (409, "CHECKOUT_STATE"), "{late:?}");
    nothing_held(&app).await;
    assert_eq!(app.check_holds("var-1").await, (98, 0));
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), unit("var-1", 1))
            .await
            .status,
        200,
        "the cart is not locked"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 1);

    // The same, the shopper checking the cart out again before the slow call returns: the
    // call meets the new session's lock, and still gives back what it took.
    let session = app.checkout(&cart, "k-double-tap-2").await;
    gateway.delay_next(Duration::from_millis(1500));
    let slow = app.payment_intent(&session, Caller::Anonymous);
    let again = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, done) = app.pay(&gateway, &session, Caller::Anonymous).await;
        assert_eq!(done["state"], "COMPLETED", "{status} {done}");
        let added = app
            .post(&format!("/v1/carts/{cart}/items"), unit("var-1", 2))
            .await;
        assert_eq!(added.status, 200, "{added:?}");
        app.checkout(&cart, "k-double-tap-3").await
    };
    let (late, next) = tokio::join!(slow, again);
    assert_eq!((late.status, late.code()), (409, "CHECKOUT_STATE"), "{late:?}");
    assert_eq!(late.body["error"]["details"]["state"], "COMPLETED", "{late:?}");
    let done = app.get(&format!("/v1/checkout/{session}")).await;
    assert_eq!(done.body["state"], "COMPLETED", "{done:?}");
    assert_eq!(
        app.check_holds("var-1").await,
        (97, 2),
        "only the new session ({next}) holds"
    );
    app.finish().await;
}

/// A client that goes away while its cancel is still at the gateway does not stop the
/// cancel half way: the session's holds and its cart's lock are freed all the same.
#[tokio::test]
async fn a_cancel_whose_client_goes_away_still_frees_everything() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let paying = app.paying_session(&[("var-1", 2)], "k-gone").await;
    gateway.delay_next_cancel(Duration::from_millis(1200));
    let gone = app
        .http
        .post(format!("{}/v1/checkout/{}/cancel", app.base, paying.session))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up: {gone:?}");
    let mut freed = false;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if app.sellable("var-1").await == 100 {
            freed = true;
            break;
        }
    }
    assert!(freed, "the holds were never freed");
    nothing_held(&app).await;
    let shown = app.get(&format!("/v1/checkout/{}", paying.session)).await;
    assert_eq!(shown.body["state"], "CANCELLED", "{shown:?}");
    app.finish().await;
}

/// A session's payment intent extends the holds its checkout took: it is not refused for
/// stock that Redis counts twice for a moment (another order's stock from PostgreSQL
/// before that order's own hold is committed), nor for a count lowered meanwhile.
#[tokio::test]
async fn extending_a_hold_is_not_taking_more() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    assert_eq!(app.set_on_hand("var-1", 3).await.status, 200);
    let mut sessions = Vec::new();
    for n in 0..3 {
        let cart = app.cart_with(&[("var-1", 1)]).await;
        sessions.push(app.checkout(&cart, &format!("k-extend-{n}")).await);
    }
    assert_eq!(app.sellable("var-1").await, 0);
    // What the stock commit of a later order does when it reaches Redis before an earlier
    // order's: the stock drops to what PostgreSQL left while that order's hold still counts.
    let mut redis = app.redis.clone();
    let _: () = redis.set(app.key("inventory:variant:{var-1}"), 1).await.unwrap();
    let extended = app.payment_intent(&sessions[2], Caller::Anonymous).await;
    assert_eq!(extended.status, 200, "{extended:?}");
    assert_eq!(extended.body["state"], "PAYMENT_PENDING");
    // Nobody else gets more than there is.
    let more = app
        .reserve(json!({"cartId": "someone-else", "items": [unit("var-1", 1)]}))
        .await;
    assert_eq!(
        (more.status, more.code()),
        (409, "INSUFFICIENT_INVENTORY"),
        "{more:?}"
    );
    let (status, done) = app.pay(&gateway, &sessions[2], Caller::Anonymous).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    assert_eq!(app.pg_on_hand("var-1").await, 2);
    app.finish().await;
}

/// A paid session whose frozen metadata Redis keeps damaged is ordered from PostgreSQL's
/// copy: its payment still ends in exactly one order.
#[tokio::test]
async fn a_damaged_frozen_quote_in_redis_is_read_from_postgresql() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let paying = app.paying_session(&[("var-1", 2)], "k-damaged").await;
    let id = commerce_core::ids::SessionId::parse(&paying.session).unwrap();
    let mut redis = app.redis.clone();
    let _: () = redis
        .set(app.keys().checkout_metadata(&id), "{\"broken\":")
        .await
        .unwrap();
    let (status, done) = app.intent_paid(&gateway, &paying.intent).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 1);
    assert_eq!(app.pg_on_hand("var-1").await, 98);
    app.finish().await;
}

/// A cart whose discounts bring its total to zero has no payment to take, so no session
/// could ever end in an order: its checkout is refused before anything is held or locked.
#[tokio::test]
async fn a_cart_that_costs_nothing_is_refused_at_checkout_and_holds_nothing() {
    let (app, _gateway) = TestApp::shop(1, |c| c).await;
    app.pg
        .batch_execute(
            "UPDATE discounts SET active = false;
             INSERT INTO discounts (id, kind, basis_points, amount_minor, currency, target, threshold_minor, priority, exclusive)
                 VALUES ('free', 'percentage', 10000, NULL, NULL, 'variants', 0, 1, false);
             INSERT INTO discount_variants VALUES ('free', 'var-1');",
        )
        .await
        .unwrap();
    app.publish_rulesets().await;
    let cart = app.cart_with(&[("var-1", 2)]).await;
    let refused = app.start_checkout(&cart, "k-free").await;
    assert_eq!(
        (refused.status, refused.code()),
        (422, "NOTHING_TO_PAY"),
        "{refused:?}"
    );
    assert_eq!(refused.body["error"]["details"]["total"], 0);
    assert_eq!(app.sellable("var-1").await, 100, "nothing held");
    nothing_held(&app).await;
    app.finish().await;
}

/// The admin token (a shop's back office) may start a checkout as openapi says: of an
/// anonymous cart as its visitor would, and of a customer's cart on the customer's behalf;
/// the session stays the customer's.
#[tokio::test]
async fn the_admin_token_starts_a_checkout_for_a_cart_or_a_customer() {
    let (app, _gateway) = TestApp::shop(3, |c| c).await;
    let cart = app.cart_with(&[("var-1", 1)]).await;
    let started = app
        .start_checkout_as(json!({ "cartId": cart }), "adm-1", Caller::Admin)
        .await;
    assert_eq!(started.status, 201, "{started:?}");
    let zoe = Caller::Customer("zoe");
    app.call(
        "POST",
        "/v1/customers/zoe/cart/items",
        Some(unit("var-2", 1)),
        zoe,
    )
    .await;
    let started = app
        .start_checkout_as(json!({ "customerId": "zoe" }), "adm-2", Caller::Admin)
        .await;
    assert_eq!(started.status, 201, "{started:?}");
    let session = started.body["sessionId"].as_str().unwrap();
    let own = app
        .call("GET", &format!("/v1/checkout/{session}"), None, zoe)
        .await;
    assert_eq!(own.status, 200, "the session is zoe's: {own:?}");
    let stranger = app
        .call(
            "GET",
            &format!("/v1/checkout/{session}"),
            None,
            Caller::Customer("yan"),
        )
        .await;
    assert_eq!(stranger.status, 403);
    app.finish().await;
}

#[tokio::test]
async fn a_customer_checks_out_their_own_cart_with_their_token() {
    let (app, gateway) = TestApp::shop(3, |c| c).await;
    let (zoe, yan) = (Caller::Customer("zoe"), Caller::Customer("yan"));
    app.call(
        "POST",
        "/v1/customers/zoe/cart/items",
        Some(unit("var-3", 1)),
        zoe,
    )
    .await;
    let body = json!({ "customerId": "zoe" });
    let anonymous = app.start_checkout_as(body.clone(), "z1", Caller::Anonymous).await;
    assert_eq!(anonymous.status, 401);
    let foreign = app.start_checkout_as(body.clone(), "z2", yan).await;
    assert_eq!(foreign.status, 403);
    let started = app.start_checkout_as(body, "z3", zoe).await;
    assert_eq!(
        (started.status, started.body["customerId"].as_str()),
        (201, Some("zoe")),
        "{started:?}"
    );
    let session = started.body["sessionId"].as_str().unwrap();
    // A customer's session answers only that customer's token, on every route.
    for (method, route) in [("GET", ""), ("POST", "/payment-intent"), ("POST", "/cancel")] {
        let path = format!("/v1/checkout/{session}{route}");
        let nobody = app.call(method, &path, None, Caller::Anonymous).await;
        assert_eq!(nobody.status, 401, "{method} {path}: {nobody:?}");
        let stranger = app.call(method, &path, None, yan).await;
        assert_eq!(stranger.status, 403, "{method} {path}: {stranger:?}");
        assert!(stranger.body.get("clientSecret").is_none());
    }
    let own = app
        .call("GET", &format!("/v1/checkout/{session}"), None, zoe)
        .await;
    assert_eq!((own.status, own.body["state"].as_str()), (200, Some("LOCKED")));
    let (status, done) = app.pay(&gateway, session, zoe).await;
    assert_eq!((status, done["state"].as_str()), (200, Some("COMPLETED")));
    assert_eq!(
        count(&app, "SELECT count(*) FROM orders WHERE customer_id = 'zoe'").await,
        1
    );
    app.finish().await;
}

#[tokio::test]
async fn bad_input_and_wrong_states_are_refused_and_change_nothing() {
    let (app, gateway) = TestApp::shop(2, |c| c).await;
    let cart = app.cart_with(&[("var-1", 1)]).await;
    let checkout_keys = || async {
        let mut keys = app.redis_snapshot_of(":checkout:").await;
        keys.retain(|(k, _)| !k.contains(":idempotency:"));
        keys
    };
    let before = checkout_keys().await;
    for (body, key, status) in [
        (json!({ "cartId": cart }), None, 400),
        (json!({ "cartId": "a:b" }), Some("b1"), 400),
        (json!({}), Some("b2"), 400),
        (json!({ "cartId": cart, "customerId": "x" }), Some("b3"), 400),
        // A cart that is not there: 404, as on every cart route.
        (
            json!({ "cartId": "0123456789abcdef0123456789abcdef" }),
            Some("b4"),
            404,
        ),
    ] {
        let headers: Vec<(&str, &str)> = key.iter().map(|k| ("idempotency-key", *k)).collect();
        let reply = app
            .call_with("POST", "/v1/checkout", Some(body.clone()), &headers)
            .await;
        assert_eq!(reply.status, status, "{body}: {:?}", reply.body);
    }
    let long_key = "k".repeat(256);
    let reply = app
        .call_with(
            "POST",
            "/v1/checkout",
            Some(json!({ "cartId": cart })),
            &[("idempotency-key", long_key.as_str())],
        )
        .await;
    assert_eq!(reply.status, 400);
    assert_eq!(checkout_keys().await, before, "bad input wrote");
    let claimed = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| k.contains(":idempotency:"))
        .count();
    assert_eq!(
        claimed, 1,
        "only the valid request (the empty cart's 409) claims its key"
    );
    assert_eq!(
        app.get("/v1/checkout/cs_0123456789abcdef0123456789abcdef")
            .await
            .status,
        404
    );
    assert_eq!(app.get("/v1/checkout/a*b").await.status, 400);
    assert_eq!(
        app.call("POST", "/v1/checkout/a%20b/cancel", None, Caller::Anonymous)
            .await
            .status,
        400
    );
    assert_eq!(
        app.call("DELETE", "/v1/checkout/x", None, Caller::Anonymous)
            .await
            .status,
        405
    );

    // Webhooks: unsigned, badly signed, stale, malformed.
    let session = app.checkout(&cart, "b5").await;
    let intent = app.payment_intent(&session, Caller::Anonymous).await;
    let event = gateway.event(
        "payment_intent.succeeded",
        intent.body["paymentIntentId"].as_str().unwrap(),
    );
    let stale = commerce_core::checkout::gateway::sign(
        event.as_bytes(),
        WEBHOOK_SECRET,
        commerce_core::auth::now_s() - 3600,
    );
    for signature in [None, Some("t=1,v1=00"), Some(stale.as_str())] {
        let headers: Vec<(&str, &str)> = signature.iter().map(|s| ("stripe-signature", *s)).collect();
        let mut req = app
            .http
            .post(format!("{}/v1/checkout/payment-webhook", app.base))
            .body(event.clone());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let reply = TestApp::reply(req.header("content-type", "application/json")).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "INVALID_SIGNATURE"),
            "{signature:?}"
        );
    }
    let (status, _) = gateway.deliver(&app.base, "{\"not\":\"an event\"}").await;
    assert_eq!(status, 400);
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 0);

    // Wrong states after the order.
    let (status, _) = gateway.deliver(&app.base, &event).await;
    assert_eq!(status, 200);
    let cancel = app.cancel(&session, Caller::Anonymous).await;
    assert_eq!((cancel.status, cancel.code()), (409, "CHECKOUT_STATE"));
    let pay_again = app.payment_intent(&session, Caller::Anonymous).await;
    assert_eq!(pay_again.status, 409);
    app.finish().await;
}

#[tokio::test]
async fn a_gateway_outage_is_a_503_and_a_retry_succeeds() {
    let (app, gateway) = TestApp::shop(2, |c| c).await;
    let cart = app.cart_with(&[("var-1", 1)]).await;
    let session = app.checkout(&cart, "g1").await;
    gateway.fail_next(503);
    let down = app.payment_intent(&session, Caller::Anonymous).await;
    assert_eq!(down.status, 503, "{down:?}");
    assert_eq!(
        app.get(&format!("/v1/checkout/{session}")).await.body["state"],
        "LOCKED"
    );
    let up = app.payment_intent(&session, Caller::Anonymous).await;
    assert_eq!(
        (up.status, up.body["state"].as_str()),
        (200, Some("PAYMENT_PENDING"))
    );
    assert_eq!(gateway.intents().len(), 1);
    app.finish().await;
}

#[tokio::test]
async fn a_payment_that_does_not_match_the_pending_session_is_refunded_and_confirms_nothing() {
    let (app, gateway) = TestApp::shop(2, |c| c).await;
    let paying = app.paying_session(&[("var-1", 2)], "k-mismatch").await;
    let event = gateway.event("payment_intent.succeeded", &paying.intent);
    let mut event: Value = serde_json::from_str(&event).unwrap();
    for field in ["amount", "amount_received"] {
        event["data"]["object"][field] = json!(paying.amount - 1);
    }
    // A negative amount, signed, is no payment the gateway could have sent: 400, no
    // outbox row (it was a 500 from the outbox's CHECK), nothing moved.
    let mut negative = event.clone();
    for field in ["amount", "amount_received"] {
        negative["data"]["object"][field] = json!(-5);
    }
    let (status, body) = gateway.deliver(&app.base, &negative.to_string()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("INVALID_EVENT")),
        "{body}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM payment_outbox").await, 0);
    let (status, body) = gateway.deliver(&app.base, &event.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["refundRequired"].is_string(), "{body}");
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 0);
    let shown = app.get(&format!("/v1/checkout/{}", paying.session)).await;
    assert_eq!(shown.body["state"], "PAYMENT_PENDING", "{shown:?}");
    assert_eq!(app.check_holds("var-1").await, (100, 2), "the holds stand");
}

/// A cart's lock that names a session nobody knows (a start that crashed before creating
/// it, or a Redis that lost the session and kept the lock) does not keep the cart locked
/// for the lock's whole time to live: once it is older than any request may run, the next
/// checkout takes it over. A younger one, which a start still under way may hold, and the
/// lock of a live session, are respected.
#[tokio::test]
async fn a_lock_left_by_a_session_that_is_gone_is_taken_over_once_no_request_can_hold_it() {
    let (app, _gateway) = TestApp::shop(2, |c| {
        c.set("request_timeout_ms", "1000")
            .set("checkout_lock_ttl_seconds", "600")
            .set("hold_grace_seconds", "60")
    })
    .await;
    let mut redis = app.redis.clone();
    let ghost = format!("cs_{}", "ab".repeat(16));
    // A lock lasts as long as its session's holds: the lock's time to live and the grace.
    let life_ms = 660_000;
    let lock_to = |cart: &str, age_ms: i64| {
        redis::cmd("SET")
            .arg(app.cart_lock_key(cart))
            .arg(&ghost)
            .arg("PX")
            .arg(life_ms - age_ms)
            .clone()
    };

    let young = app.cart_with(&[("var-1", 1)]).await;
    let _: () = lock_to(&young, 200).query_async(&mut redis).await.unwrap();
    let refused = app.start_checkout(&young, "young").await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "CHECKOUT_IN_PROGRESS"),
        "a lock a start may still hold: {refused:?}"
    );

    let old = app.cart_with(&[("var-1", 1)]).await;
    let _: () = lock_to(&old, 5_000).query_async(&mut redis).await.unwrap();
    let started = app.start_checkout(&old, "old").await;
    assert_eq!(started.status, 201, "{started:?}");
    let session = started.body["sessionId"].as_str().unwrap().to_owned();
    let holder: Option<String> = redis::cmd("GET")
        .arg(app.cart_lock_key(&old))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(holder.as_deref(), Some(session.as_str()));

    // A live session's lock, however old, stays its own.
    let _: () = redis::cmd("PEXPIRE")
        .arg(app.cart_lock_key(&old))
        .arg(life_ms - 5_000)
        .query_async(&mut redis)
        .await
        .unwrap();
    let again = app.start_checkout(&old, "old-again").await;
    assert_eq!(
        (again.status, again.code()),
        (409, "CHECKOUT_IN_PROGRESS"),
        "{again:?}"
    );
    app.finish().await;
}

/// The order empties its cart, a change like any other: the cart's time to live slides
/// (`cart_ttl_seconds`) as at every add, so an emptied cart is kept as long as a new one.
#[tokio::test]
async fn the_order_that_empties_a_cart_slides_its_time_to_live() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let mut redis = app.redis.clone();
    let cart = app.cart_with(&[("var-1", 1)]).await;
    // As if the cart was last changed long ago: a minute left.
    let _: () = redis.pexpire(app.cart_key(&cart), 60_000).await.unwrap();
    let session = app.checkout(&cart, "k-slide").await;
    let (status, done) = app.pay(&gateway, &session, Caller::Anonymous).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    let emptied = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(emptied.body["lines"], json!([]), "{emptied:?}");
    let left: i64 = redis.pttl(app.cart_key(&cart)).await.unwrap();
    let full = i64::from(app.app.settings.cart_ttl_seconds) * 1000;
    assert!(left > full - 60_000, "{left} ms left of {full}");
    app.finish().await;
}

/// A kept payment-intent answer (a customer's intent, with its client secret) is replayed
/// only to the caller it was given to: the same key without the customer's token is 401,
/// with another customer's 403; and a stranger's refused call with a key the customer
/// uses next is not kept to refuse the customer.
#[tokio::test]
async fn a_payment_intents_idempotency_key_replays_only_to_its_caller() {
    let (app, _gateway) = TestApp::shop(1, |c| c).await;
    let alice = Caller::Customer("alice");
    let added = app
        .call(
            "POST",
            "/v1/customers/alice/cart/items",
            Some(unit("var-1", 1)),
            alice,
        )
        .await;
    assert_eq!(added.status, 200, "{added:?}");
    let started = app
        .start_checkout_as(json!({ "customerId": "alice" }), "k-own-1", alice)
        .await;
    let session = started.body["sessionId"].as_str().unwrap().to_owned();
    let path = format!("/v1/checkout/{session}/payment-intent");
    let with = |key: &'static str, caller: Option<String>| {
        let (app, path) = (&app, path.clone());
        async move {
            let mut headers = vec![("idempotency-key", key.to_owned())];
            if let Some(token) = caller {
                headers.push(("authorization", format!("Bearer {token}")));
            }
            let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            app.call_with("POST", &path, None, &headers).await
        }
    };
    let token = |customer: &str| Some(commerce_tests::customer_token(customer));

    // A stranger first, with the key alice is about to use: refused, and not kept.
    assert_eq!(with("pi-1", None).await.status, 401);
    let own = with("pi-1", token("alice")).await;
    assert_eq!(own.status, 200, "{own:?}");
    assert!(own.body["clientSecret"].is_string(), "{own:?}");
    // Then the stranger and another customer again, with alice's key: no replay.
    let nobody = with("pi-1", None).await;
    assert_eq!(
        (nobody.status, nobody.code()),
        (401, "UNAUTHORIZED"),
        "{nobody:?}"
    );
    let bob = with("pi-1", token("bob")).await;
    assert_eq!((bob.status, bob.code()), (403, "FORBIDDEN"), "{bob:?}");
    let again = with("pi-1", token("alice")).await;
    assert_eq!(again.body, own.body, "alice's retry is answered as before");

    // The admin's kept answer is the admin's: the service token, which a session does not
    // answer, gets no replay of it.
    let admin = with("pi-2", Some(commerce_tests::ADMIN_TOKEN.to_owned())).await;
    assert_eq!(admin.status, 200, "{admin:?}");
    let service = Some(commerce_tests::SERVICE_TOKEN.to_owned());
    assert_eq!(with("pi-2", service.clone()).await.status, 401);
    // Nothing of a refused call stays under its key: the same caller's next call with the
    // key and another body runs anew (401 again), not 422 for a reused key.
    let service_header = format!("Bearer {}", commerce_tests::SERVICE_TOKEN);
    for body in [json!({ "a": 1 }), json!({ "b": 2 })] {
        let refused = app
            .call_with(
                "POST",
                &path,
                Some(body),
                &[("idempotency-key", "pi-3"), ("authorization", &service_header)],
            )
            .await;
        assert_eq!(
            (refused.status, refused.code()),
            (401, "UNAUTHORIZED"),
            "{refused:?}"
        );
    }
    app.finish().await;
}

/// A session ended by a request cut short before it freed what the session held (the move
/// landed, the release did not: a crash, a dependency gone mid-way) is marked `releasing`
/// by the move itself; the next read that meets it frees its holds and lock and cancels
/// its intent, and clears the mark. Here the move is written by hand, as such a request
/// leaves it.
#[tokio::test]
async fn a_session_ended_by_a_request_cut_short_before_its_release_is_released_by_the_next_read() {
    let (app, gateway) = TestApp::shop(2, |c| c).await;
    let before = app.sellable("var-1").await;
    let paying = app.paying_session(&[("var-1", 1)], "k-cut-short").await;
    assert_eq!(app.sellable("var-1").await, before - 1);
    let mut redis = app.redis.clone();
    let key = app.session_key(&paying.session);
    let _: () = redis
        .hset_multiple(&key, &[("state", "CANCELLED"), ("releasing", "1")])
        .await
        .unwrap();
    let shown = app.get(&format!("/v1/checkout/{}", paying.session)).await;
    assert_eq!(
        (shown.status, shown.body["state"].as_str()),
        (200, Some("CANCELLED")),
        "{shown:?}"
    );
    assert_eq!(app.sellable("var-1").await, before, "its holds freed");
    let lock: Option<String> = redis.get(app.cart_lock_key(&paying.cart)).await.unwrap();
    assert_eq!(lock, None, "its cart unlocked");
    assert_eq!(
        gateway.cancellations(),
        std::slice::from_ref(&paying.intent),
        "its intent cancelled"
    );
    let mark: Option<String> = redis.hget(&key, "releasing").await.unwrap();
    assert_eq!(mark, None, "the mark cleared once released");

    // A cancel that ends a session leaves no mark behind.
    let other = app.paying_session(&[("var-1", 1)], "k-cancelled").await;
    let cancelled = app.cancel(&other.session, Caller::Anonymous).await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    let mark: Option<String> = redis
        .hget(app.session_key(&other.session), "releasing")
        .await
        .unwrap();
    assert_eq!(mark, None, "a release that ran to its end clears the mark");
    app.finish().await;
}

/// A checkout whose first attempt died with its session begun (the key's lease then ends)
/// is continued by its retry under the same token. What the cart names changed meanwhile
/// (a bundle no longer takes one of its choices, which a new attempt re-checks and is
/// refused for): the retry answers the session the first attempt began, as that attempt would have, with
/// the cart it froze, its holds and its lock of the cart standing (a refusal would free the
/// cart under it and leave it LOCKED, holding its units until its deadline). The key keeps
/// that answer, and never starts a second session beside the first one.
#[tokio::test]
async fn a_resumed_checkout_answers_the_session_its_first_attempt_began() {
    let (app, _gateway) = TestApp::shop(20, |c| c).await;
    let cart = app
        .cart_with_lines(&[json!({
            "bundleId": "bundle-1",
            "choices": { "tops": ["var-1", "var-2"], "caps": ["var-9"] },
            "quantity": 1
        })])
        .await;
    let first = app.start_checkout(&cart, "k-resumed").await;
    assert_eq!(first.status, 201, "{first:?}");
    // As the record is left by a first attempt that died once its session was begun: not
    // answered, and its lease over.
    let record = app
        .redis_keys()
        .await
        .into_iter()
        .find(|k| k.contains(":idempotency:checkout:"))
        .expect("the key's record");
    let mut redis = app.redis.clone();
    let _: () = redis
        .hset_multiple(
            &record,
            &[("state", "pending"), ("lease", "0"), ("attempt", "gone")],
        )
        .await
        .unwrap();
    app.pg
        .batch_execute(
            "DELETE FROM bundle_set_variants WHERE bundle_id = 'bundle-1' AND variant_id = 'var-1'",
        )
        .await
        .unwrap();
    let invalidated = app
        .call(
            "POST",
            "/v1/admin/bundles/bundle-1/invalidate",
            None,
            Caller::Admin,
        )
        .await;
    assert_eq!(invalidated.status, 200, "{invalidated:?}");

    let resumed = app.start_checkout(&cart, "k-resumed").await;
    assert_eq!(resumed.status, 201, "{resumed:?}");
    let session = first.body["sessionId"].as_str().unwrap();
    assert_eq!(resumed.body["sessionId"], session, "{resumed:?}");
    assert_eq!(resumed.body["state"], "LOCKED", "{resumed:?}");
    assert_eq!(resumed.body["total"], first.body["total"], "{resumed:?}");
    assert_eq!(
        resumed.body["quote"], first.body["quote"],
        "the frozen quote stands"
    );
    let lock: Option<String> = redis.get(app.cart_lock_key(&cart)).await.unwrap();
    assert_eq!(
        lock.as_deref(),
        Some(session),
        "the cart's lock was let go under its session"
    );
    let holds = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| k.contains(":inventory:holder:") && k.contains(session))
        .count();
    assert_eq!(holds, 1, "the session's holds were let go");
    let state: Option<String> = redis.hget(&record, "state").await.unwrap();
    assert_eq!(
        state.as_deref(),
        Some("done"),
        "the resumed attempt's answer was not kept"
    );
    let again = app.start_checkout(&cart, "k-resumed").await;
    assert_eq!(again.body, resumed.body, "{again:?}");
    let sessions = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| k.contains(":checkout:session:"))
        .count();
    assert_eq!(sessions, 1, "a second session under one key");
    app.finish().await;
}
