//! The promises that must hold when Redis loses its data or PostgreSQL has less than
//! Redis believed (DESIGN §4, invariants 1, 2 and 8), over HTTP against real Redis and
//! PostgreSQL: a paid checkout survives a Redis loss, an order is never clamped into an
//! oversell, and ruleset versions never repeat.

use commerce_tests::{Paying, TestApp};
use redis::AsyncCommands;
use serde_json::json;

/// A session of `quantity` units of `variant`, waiting for its payment: (session, intent).
async fn paid_session(app: &TestApp, variant: &str, quantity: i64, key: &str) -> (String, String) {
    let Paying { session, intent, .. } = app.paying_session(&[(variant, quantity)], key).await;
    (session, intent)
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.pg.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_session_and_its_holds_share_one_deadline_and_the_holds_outlive_it() {
    let (app, _gateway) = TestApp::shop(1, |c| c.set("hold_grace_seconds", "120")).await;
    let (session, _) = paid_session(&app, "var-1", 2, "k-1").await;
    let view = app.get(&format!("/v1/checkout/{session}")).await;
    let mut redis = app.redis.clone();
    let hold_deadline: i64 = redis
        .zscore(app.variant_keys("var-1").holds, app.session_holder(&session))
        .await
        .unwrap();
    let session_deadline: i64 = redis.hget(app.session_key(&session), "deadline").await.unwrap();
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
    let (session, intent) = paid_session(&app, "var-1", 2, "k-2").await;

    app.flush_redis().await;

    // The units the paying customer holds are not sold again: the lazy load puts the
    // session's holds back from PostgreSQL.
    let view = app.get("/v1/inventory/var-1").await;
    assert_eq!(
        (view.body["stock"].as_i64(), view.body["reserved"].as_i64()),
        (Some(2), Some(2)),
        "{view:?}"
    );
    let other = app.cart_with(&[("var-1", 1)]).await;
    let refused = app.start_checkout(&other, "k-other").await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "INSUFFICIENT_INVENTORY"),
        "{refused:?}"
    );

    // The webhook completes the order from PostgreSQL's copy of the session.
    let (status, done) = app.intent_paid(&gateway, &intent).await;
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

/// After Redis loses everything, a session waiting for its payment is still there for its
/// buyer, put back from PostgreSQL on first use: it can be read and cancelled (which frees
/// its holds and cancels its intent), and one past its deadline expires on that read, with
/// no background job. An ordered session comes back as having its order, finished.
#[tokio::test]
async fn a_session_redis_lost_can_be_read_cancelled_and_expired_before_any_webhook() {
    let (app, gateway) = TestApp::shop(3, |c| c).await;
    let Paying {
        cart,
        session: waiting,
        ..
    } = app.paying_session(&[("var-1", 2)], "lost-1").await;
    let (ordered, paid_intent) = paid_session(&app, "var-2", 1, "lost-2").await;
    let (status, done) = app.intent_paid(&gateway, &paid_intent).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    let (late, _) = paid_session(&app, "var-3", 1, "lost-3").await;
    app.pg
        .execute(
            "UPDATE checkout_sessions SET deadline_ms = 1, holds_deadline_ms = 2 WHERE id = $1",
            &[&late],
        )
        .await
        .unwrap();

    app.flush_redis().await;

    let got = app.get(&format!("/v1/checkout/{waiting}")).await;
    assert_eq!(
        (got.status, got.body["state"].as_str()),
        (200, Some("PAYMENT_PENDING")),
        "{got:?}"
    );
    let view = app.get("/v1/inventory/var-1").await;
    assert_eq!(
        (view.body["stock"].as_i64(), view.body["reserved"].as_i64()),
        (Some(100), Some(2)),
        "its holds count again (the lazy load): {view:?}"
    );
    // And its cart's lock: no second live checkout of the cart (a customer's cart comes
    // back under the same key as soon as the customer adds to it again).
    let holder: Option<String> = app.redis.clone().get(app.cart_lock_key(&cart)).await.unwrap();
    assert_eq!(
        holder.as_deref(),
        Some(waiting.as_str()),
        "the lock came back with the session"
    );
    let cancelled = app.cancel(&waiting, commerce_tests::Caller::Anonymous).await;
    assert_eq!(
        (cancelled.status, cancelled.body["state"].as_str()),
        (200, Some("CANCELLED")),
        "{cancelled:?}"
    );
    assert_eq!(app.sellable("var-1").await, 100, "cancel frees the holds");
    let owed: i64 = app
        .pg
        .query_one(
            "SELECT count(*) FROM payment_outbox WHERE kind = 'cancel_intent' AND checkout_session_id = $1",
            &[&waiting],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        owed, 1,
        "the intent of a cancelled session is cancelled at the gateway"
    );

    let expired = app.get(&format!("/v1/checkout/{late}")).await;
    assert_eq!(
        (expired.status, expired.body["state"].as_str()),
        (200, Some("EXPIRED")),
        "{expired:?}"
    );
    let ended: Option<String> = app
        .pg
        .query_one(
            "SELECT ended_state FROM checkout_sessions WHERE id = $1",
            &[&late],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ended.as_deref(), Some("EXPIRED"));

    let sold = app.get(&format!("/v1/checkout/{ordered}")).await;
    assert_eq!(
        (sold.status, sold.body["state"].as_str()),
        (200, Some("COMPLETED")),
        "finished as the order's webhook would have: {sold:?}"
    );
    let order: String = app
        .pg
        .query_one(
            "SELECT id FROM orders WHERE checkout_session_id = $1",
            &[&ordered],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        sold.body["orderId"],
        order.as_str(),
        "it names its order: {sold:?}"
    );
    let refused = app.cancel(&ordered, commerce_tests::Caller::Anonymous).await;
    assert_eq!(
        refused.status, 409,
        "an ordered session cannot be cancelled: {refused:?}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM orders").await, 1);
    assert_eq!(
        count(&app, "SELECT count(*) FROM payment_outbox WHERE kind = 'refund'").await,
        0
    );
    app.finish().await;
}

#[tokio::test]
async fn a_session_ends_with_its_order_and_stock_loads_put_back_only_the_live_ones() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    assert_eq!(app.set_on_hand("var-1", 5).await.status, 200);
    let (sold, intent) = paid_session(&app, "var-1", 1, "k-sold").await;
    let (waiting, _) = paid_session(&app, "var-1", 2, "k-waiting").await;
    let (status, done) = app.intent_paid(&gateway, &intent).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );

    // PostgreSQL ends the session with its order (ended_state stays empty: it ended with an
    // order); the one still waiting for its payment stays live.
    let ended = |id: String| {
        let app = &app;
        async move {
            let row = app
                .pg
                .query_one(
                    "SELECT ended_at IS NOT NULL, ended_state FROM checkout_sessions WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (row.get::<_, bool>(0), row.get::<_, Option<String>>(1))
        }
    };
    assert_eq!(ended(sold.clone()).await, (true, None));
    assert_eq!(ended(waiting.clone()).await, (false, None));

    // A lazy load, then a reconcile, after Redis lost everything: the sold unit is gone
    // from on-hand, and only the waiting session's holds come back.
    for reload in ["lazy load", "reconcile"] {
        app.flush_redis().await;
        if reload == "reconcile" {
            let out = app.cli(&["reconcile"]);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let view = app.get("/v1/inventory/var-1").await;
        assert_eq!(
            (view.body["stock"].as_i64(), view.body["reserved"].as_i64()),
            (Some(4), Some(2)),
            "after a {reload}: {view:?}"
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn a_webhook_for_an_order_already_written_answers_with_it_whatever_redis_remembers() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let (session, intent) = paid_session(&app, "var-1", 1, "k-3").await;
    let (status, done) = app.intent_paid(&gateway, &intent).await;
    assert_eq!((status, done["state"].as_str()), (200, Some("COMPLETED")));
    let order = done["orderId"].clone();

    app.flush_redis().await;
    for _ in 0..3 {
        let (status, again) = app.intent_paid(&gateway, &intent).await;
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
    let (session, intent) = paid_session(&app, "var-1", 3, "k-4").await;
    // Stock counted again while the customer pays: one unit fewer than they hold.
    assert_eq!(app.set_on_hand("var-1", 2).await.status, 200);

    let (status, done) = app.intent_paid(&gateway, &intent).await;
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
    let (status, again) = app.intent_paid(&gateway, &intent).await;
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

/// Quotes and checkouts that meet the lost rulesets together are all served: one of them
/// republishes under the lock, and the others wait for it (as a lazy stock load serves
/// every caller) instead of answering 503 while nothing is down. The rulesets are
/// republished once: one new version of each kind.
#[tokio::test]
async fn requests_meeting_lost_rulesets_together_all_wait_for_the_one_republish() {
    let (app, _gateway) = TestApp::shop(3, |c| c).await;
    let quote = || {
        app.post(
            "/v1/pricing/quote",
            json!({ "lines": [{ "variantId": "var-1", "quantity": 1 }] }),
        )
    };
    let before = quote().await;
    assert_eq!(before.status, 200, "{before:?}");
    let mut carts = Vec::new();
    for _ in 0..4 {
        carts.push(app.cart_with(&[("var-2", 1)]).await);
    }

    // Every ruleset key goes (pointers, versions, eligibility), as with a Redis that came
    // back without them; carts and stock stay.
    let mut redis = app.redis.clone();
    for key in app.redis_keys().await {
        if key.contains("ruleset") {
            let _: () = redis.del(key).await.unwrap();
        }
    }
    let quotes = futures_util::future::join_all((0..6).map(|_| quote()));
    let starts = futures_util::future::join_all(carts.iter().map(|cart| app.start_checkout(cart, cart)));
    let (quotes, starts) = futures_util::future::join(quotes, starts).await;
    for reply in &quotes {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.body["total"], before.body["total"]);
        assert_eq!(
            reply.body["versions"], quotes[0].body["versions"],
            "more than one republish"
        );
    }
    for reply in &starts {
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    let versions = |kind: &str| before.body["versions"][kind].as_i64().unwrap();
    assert_eq!(
        quotes[0].body["versions"],
        json!({ "pricing": versions("pricing") + 1, "discounts": versions("discounts") + 1 }),
        "republished once"
    );
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

/// A reconcile that read a session as live in PostgreSQL, then wrote its holds into Redis
/// after a cancel had ended the session and released them, gives them back: the session
/// is read again in PostgreSQL after the load (it is marked ended there before its holds
/// are released), so an ended session keeps nothing. Staged with a proxy that holds the
/// reconcile's Redis traffic back while the cancel runs.
#[tokio::test]
async fn a_reconcile_overlapping_a_cancel_leaves_the_cancelled_session_nothing() {
    let (app, _gateway) = TestApp::shop(1, |c| c).await;
    let Paying { session, .. } = app.paying_session(&[("var-1", 3)], "k-overlap").await;
    let proxy = commerce_tests::proxy::PausableProxy::start(&commerce_tests::host::host_port(
        &app.app.settings.redis_url,
    ))
    .await;
    proxy.pause();
    let through_proxy = proxy.url_for(&app.app.settings.redis_url);
    let mut reconcile = std::process::Command::new(commerce_tests::commerce_binary())
        .arg("reconcile")
        .envs(commerce_tests::faults::commerce_env(
            &app.app.settings,
            &[("redis_url", &through_proxy)],
        ))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The reconcile reads PostgreSQL (the session live), then waits on Redis.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let cancelled = app.cancel(&session, commerce_tests::Caller::Anonymous).await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    proxy.resume();
    let done = tokio::task::spawn_blocking(move || reconcile.wait().unwrap())
        .await
        .unwrap();
    assert!(done.success());
    let mut redis = app.redis.clone();
    let held: Option<i64> = redis
        .hget(app.variant_keys("var-1").hold_qty, app.session_holder(&session))
        .await
        .unwrap();
    assert_eq!(held, None, "the cancelled session holds nothing");
    assert_eq!(app.sellable("var-1").await, 100);
    app.finish().await;
}
