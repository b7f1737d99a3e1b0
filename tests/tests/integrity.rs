//! The promises that must hold when Redis loses its data or PostgreSQL has less than
//! Redis believed (DESIGN §4, invariants 1, 2 and 8), over HTTP against real Redis and
//! PostgreSQL: a paid checkout survives a Redis loss, an order is never clamped into an
//! oversell, and ruleset versions never repeat.

use commerce_tests::gateway::FakeGateway;
use commerce_tests::{Reply, TestApp};
use redis::AsyncCommands;
use serde_json::{Value, json};

async fn cart_with(app: &TestApp, variant: &str, quantity: i64) -> String {
    let cart = app.call("POST", "/v1/carts", None, false).await.body["cartId"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = app
        .post(
            &format!("/v1/carts/{cart}/items"),
            json!({ "variantId": variant, "quantity": quantity }),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    cart
}

async fn start(app: &TestApp, cart: &str) -> Reply {
    app.call_with(
        "POST",
        "/v1/checkout",
        Some(json!({ "cartId": cart })),
        &[("idempotency-key", &format!("start-{cart}"))],
    )
    .await
}

/// Starts a checkout of `quantity` units and creates its payment intent; returns the
/// session id and the intent id.
async fn paid_session(app: &TestApp, variant: &str, quantity: i64) -> (String, String) {
    let cart = cart_with(app, variant, quantity).await;
    let started = start(app, &cart).await;
    assert_eq!(started.status, 201, "{started:?}");
    let session = started.body["sessionId"].as_str().unwrap().to_owned();
    let intent = app
        .call(
            "POST",
            &format!("/v1/checkout/{session}/payment-intent"),
            None,
            false,
        )
        .await;
    assert_eq!(intent.status, 200, "{intent:?}");
    (
        session,
        intent.body["paymentIntentId"].as_str().unwrap().to_owned(),
    )
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.pg.query_one(sql, &[]).await.unwrap().get(0)
}

async fn pay(app: &TestApp, gateway: &FakeGateway, intent: &str) -> (u16, Value) {
    let event = gateway.event("payment_intent.succeeded", intent);
    gateway.deliver(&app.base, &event).await
}

#[tokio::test]
async fn a_session_and_its_holds_share_one_deadline_and_the_holds_outlive_it() {
    let (app, _gateway) = TestApp::shop(1, |c| c.set("hold_grace_seconds", "120")).await;
    let (session, _) = paid_session(&app, "var-1", 2).await;
    let view = app.get(&format!("/v1/checkout/{session}")).await;
    let mut redis = app.redis.clone();
    let hold_deadline: i64 = redis
        .zscore(app.key("inventory:holds:{var-1}"), format!("checkout:{session}"))
        .await
        .unwrap();
    let session_deadline: i64 = redis
        .hget(app.key(&format!("checkout:session:{{{session}}}")), "deadline")
        .await
        .unwrap();
    assert_eq!(hold_deadline - session_deadline, 120_000, "{view:?}");
    let kept: i64 = app
        .pg
        .query_one(
            "SELECT holds_deadline_ms - deadline_ms FROM checkout_sessions WHERE id = $1",
            &[&session],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 120_000);
    app.finish().await;
}

#[tokio::test]
async fn a_paid_checkout_survives_redis_losing_everything() {
    let (app, gateway) = TestApp::shop(2, |c| c).await;
    assert_eq!(app.set_on_hand("var-1", 2).await.status, 200);
    let (session, intent) = paid_session(&app, "var-1", 2).await;

    app.flush_redis().await;

    // The units the paying customer holds are not sold again: the lazy load puts the
    // session's holds back from PostgreSQL.
    let view = app.get("/v1/inventory/var-1").await;
    assert_eq!(
        (view.body["stock"].as_i64(), view.body["reserved"].as_i64()),
        (Some(2), Some(2)),
        "{view:?}"
    );
    let other = cart_with(&app, "var-1", 1).await;
    let refused = start(&app, &other).await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "INSUFFICIENT_INVENTORY"),
        "{refused:?}"
    );

    // The webhook completes the order from PostgreSQL's copy of the session.
    let (status, done) = pay(&app, &gateway, &intent).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM orders").await,
        1,
        "one order for the paid session"
    );
    assert_eq!(app.pg_on_hand("var-1").await, 0);
    assert_eq!(app.check_holds("var-1").await, (0, 0));
    let got = app.get(&format!("/v1/checkout/{session}")).await;
    assert_eq!(got.body["state"], "COMPLETED", "{got:?}");
    assert!(got.body.get("refundRequired").is_none(), "{got:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_webhook_for_an_order_already_written_answers_with_it_whatever_redis_remembers() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let (session, intent) = paid_session(&app, "var-1", 1).await;
    let (status, done) = pay(&app, &gateway, &intent).await;
    assert_eq!((status, done["state"].as_str()), (200, Some("COMPLETED")));
    let order = done["orderId"].clone();

    app.flush_redis().await;
    for _ in 0..3 {
        let (status, again) = pay(&app, &gateway, &intent).await;
        assert_eq!(status, 200, "{again}");
        assert_eq!(again["orderId"], order, "{again}");
        assert!(again.get("refundRequired").is_none(), "{again}");
    }
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 1);
    let refunds = app
        .pg
        .query_one(
            "SELECT count(*) FROM payment_outbox WHERE kind = 'refund' AND checkout_session_id = $1",
            &[&session],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(refunds, 0, "an order and a refund for one payment");
    assert_eq!(app.pg_on_hand("var-1").await, 99);
    app.finish().await;
}

#[tokio::test]
async fn postgres_refuses_an_order_that_on_hand_cannot_cover_and_the_payment_is_refunded() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    assert_eq!(app.set_on_hand("var-1", 3).await.status, 200);
    let (session, intent) = paid_session(&app, "var-1", 3).await;
    // Stock counted again while the customer pays: one unit fewer than they hold.
    assert_eq!(app.set_on_hand("var-1", 2).await.status, 200);

    let (status, done) = pay(&app, &gateway, &intent).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["state"], "FAILED", "{done}");
    assert!(done["refundRequired"].is_string(), "{done}");
    assert_eq!(
        done["shortages"],
        json!([{ "variantId": "var-1", "requested": 3, "onHand": 2 }])
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 0);
    assert_eq!(app.pg_on_hand("var-1").await, 2, "on-hand was clamped or taken");
    assert_eq!(count(&app, "SELECT count(*) FROM orders_refused").await, 1);
    let refund: String = app
        .pg
        .query_one(
            "SELECT payment_intent_id FROM payment_outbox WHERE kind = 'refund' AND checkout_session_id = $1",
            &[&session],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(refund, intent);
    // Its holds are gone and its PostgreSQL copy ended: nothing puts them back.
    assert_eq!(app.check_holds("var-1").await, (2, 0));
    app.flush_redis().await;
    let view = app.get("/v1/inventory/var-1").await;
    assert_eq!(view.body["reserved"], 0, "{view:?}");
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("commerce_orders_refused_total 1"), "{metrics}");
    // A redelivery changes nothing.
    let (status, again) = pay(&app, &gateway, &intent).await;
    assert_eq!(
        (status, again["state"].as_str()),
        (200, Some("FAILED")),
        "{again}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 0);
    app.finish().await;
}

#[tokio::test]
async fn rulesets_lost_with_redis_are_republished_under_a_new_version() {
    let (app, _gateway) = TestApp::shop(3, |c| c).await;
    let quote = || {
        app.post(
            "/v1/pricing/quote",
            json!({ "lines": [{ "variantId": "var-1", "quantity": 1 }] }),
        )
    };
    let before = quote().await;
    assert_eq!(before.status, 200, "{before:?}");
    let old = before.body["versions"]["pricing"].as_i64().unwrap();

    app.flush_redis().await;
    let after = quote().await;
    assert_eq!(after.status, 200, "{after:?}");
    let new = after.body["versions"]["pricing"].as_i64().unwrap();
    assert!(new > old, "version {new} reused or went back (was {old})");
    assert_eq!(after.body["total"], before.body["total"]);
    let kept: i64 = app
        .pg
        .query_one("SELECT version FROM ruleset_versions WHERE kind = 'pricing'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, new);
    app.finish().await;
}

#[tokio::test]
async fn quotes_before_any_publish_are_refused_not_republished() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    let reply = app
        .post(
            "/v1/pricing/quote",
            json!({ "lines": [{ "variantId": "var-1", "quantity": 1 }] }),
        )
        .await;
    assert_eq!((reply.status, reply.code()), (409, "RULESET_NOT_PUBLISHED"));
    app.finish().await;
}
