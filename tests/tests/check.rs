//! `commerce check`: every kind of drift between Redis and PostgreSQL is reported, and
//! `--repair` (`POST /v1/admin/check/repair`) puts Redis right, over HTTP against real
//! Redis and PostgreSQL, and through the CLI.

use commerce_core::ids::{Holder, Quantity, SessionId, VariantId};
use commerce_tests::{Caller, Reply, TestApp, unit};
use redis::AsyncCommands;
use serde_json::Value;

async fn check(app: &TestApp) -> Reply {
    let reply = app.call("GET", "/v1/admin/check", None, Caller::Admin).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
}

fn kinds(report: &Value) -> Vec<String> {
    let mut kinds: Vec<String> = report["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{} {}",
                d["kind"].as_str().unwrap(),
                d["subject"].as_str().unwrap()
            )
        })
        .collect();
    kinds.sort();
    kinds
}

#[tokio::test]
async fn every_kind_of_drift_is_reported_and_repaired() {
    let (app, _gateway) = TestApp::shop(5, |c| c).await;
    let clean = check(&app).await;
    assert_eq!(clean.body["ok"], true, "{clean:?}");
    assert_eq!(clean.body["variants"], 5);

    let mut redis = app.redis.clone();
    // Redis stock that disagrees with on-hand at the same row version.
    let _: () = redis.set(app.variant_keys("var-1").stock, 7).await.unwrap();
    // A reserved total that disagrees with the holds.
    let _: () = redis.incr(app.variant_keys("var-2").reserved, 3).await.unwrap();
    // A change PostgreSQL committed that Redis never mirrored.
    app.pg
        .execute(
            "UPDATE inventory_levels SET on_hand = 40, version = version + 1 WHERE variant_id = 'var-3'",
            &[],
        )
        .await
        .unwrap();
    // Holds of a checkout session that does not exist.
    let ghost = Holder::Checkout(SessionId::parse("cs_ghost").unwrap());
    let v4 = VariantId::parse("var-4").unwrap();
    app.inventory()
        .reserve(&ghost, &[(v4, Quantity::new(2).unwrap())], 60_000)
        .await
        .unwrap();
    // A live session whose cart lock was lost.
    let cart = app.cart_with(&[("var-5", 1)]).await;
    let session = app.checkout(&cart, "k1").await;
    let _: () = redis.del(app.cart_lock_key(&cart)).await.unwrap();
    // A discount version pointer lost alone.
    let _: () = redis.del(app.key("discount-ruleset-version")).await.unwrap();

    let drifted = check(&app).await;
    assert_eq!(drifted.body["ok"], false);
    assert_eq!(
        kinds(&drifted.body),
        vec![
            "orphan-hold checkout:cs_ghost".to_owned(),
            "reserved var-2".to_owned(),
            "ruleset discount-ruleset-version".to_owned(),
            format!("session-lock {session}"),
            "stock var-1".to_owned(),
            "unmirrored var-3".to_owned(),
        ],
        "{drifted:?}"
    );
    // Without the admin token: nothing.
    assert_eq!(
        app.call("GET", "/v1/admin/check", None, Caller::Anonymous)
            .await
            .status,
        401
    );

    let repaired = app
        .call("POST", "/v1/admin/check/repair", None, Caller::Admin)
        .await;
    assert_eq!(repaired.status, 200, "{repaired:?}");
    assert_eq!(repaired.body["ok"], true, "{repaired:?}");
    assert_eq!(repaired.body["repaired"].as_array().unwrap().len(), 6);
    assert!(
        repaired.body["repaired"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["repaired"].is_string()),
        "{repaired:?}"
    );
    assert_eq!(check(&app).await.body["ok"], true);
    assert_eq!(app.check_holds("var-1").await, (100, 0));
    assert_eq!(app.check_holds("var-2").await, (100, 0));
    assert_eq!(app.check_holds("var-3").await, (40, 0));
    assert_eq!(app.check_holds("var-4").await, (100, 0));
    assert_eq!(app.check_holds("var-5").await, (100, 1));
    let lock: Option<String> = redis.get(app.cart_lock_key(&cart)).await.unwrap();
    assert_eq!(lock.as_deref(), Some(session.as_str()));
    let pointer: Option<i64> = redis.get(app.key("discount-ruleset-version")).await.unwrap();
    assert!(pointer.is_some_and(|v| v > 1), "republished: {pointer:?}");
    app.finish().await;
}

#[tokio::test]
async fn the_cli_exits_non_zero_on_drift_and_zero_after_repair() {
    let (app, _gateway) = TestApp::shop(3, |c| c).await;
    let mut redis = app.redis.clone();
    let _: () = redis.set(app.variant_keys("var-1").stock, 3).await.unwrap();
    // Redis ahead of PostgreSQL's rows, as when PostgreSQL is restored from an older copy
    // while Redis kept running: no later read of PostgreSQL will catch up with it.
    let var2 = app.variant_keys("var-2");
    let _: () = redis.set(&var2.stock, 60).await.unwrap();
    let _: () = redis
        .hset_multiple(&var2.stock_version, &[("max", 5), ("base", 5)])
        .await
        .unwrap();
    // Its per-order limit as a later change left it (PostgreSQL has none).
    let _: () = redis
        .hset_multiple(&var2.max_per_order, &[("version", 5), ("limit", 7)])
        .await
        .unwrap();
    // A limit left ahead alone (its stock lost and loaded again since, at PostgreSQL's
    // version).
    let _: () = redis
        .hset_multiple(
            &app.variant_keys("var-3").max_per_order,
            &[("version", 5), ("limit", 7)],
        )
        .await
        .unwrap();
    let drift = app.cli(&["check"]);
    assert_eq!(drift.status.code(), Some(1), "{drift:?}");
    let report: Value = serde_json::from_slice(&drift.stdout).unwrap();
    assert_eq!(
        kinds(&report),
        vec![
            "max-per-order var-3".to_owned(),
            "stock var-1".to_owned(),
            "stock var-2".to_owned()
        ]
    );
    let repaired = app.cli(&["check", "--repair"]);
    assert_eq!(repaired.status.code(), Some(0), "{repaired:?}");
    let told = String::from_utf8_lossy(&repaired.stderr);
    assert!(
        told.contains("stock var-1") && told.contains("stock var-2"),
        "{told}"
    );
    assert_eq!(app.cli(&["check"]).status.code(), Some(0));
    assert_eq!(app.check_holds("var-2").await, (100, 0), "PostgreSQL's on-hand");
    for variant in ["var-2", "var-3"] {
        let shown = app.get(&format!("/v1/inventory/{variant}")).await;
        assert_eq!(
            shown.body["maxPerOrder"],
            Value::Null,
            "PostgreSQL's limit: {shown:?}"
        );
    }

    // A check that cannot run says so with its own code, not drift's.
    let unreachable = std::process::Command::new(commerce_tests::commerce_binary())
        .arg("check")
        .envs(commerce_tests::faults::commerce_env(&app.app.settings, &[]))
        .env(
            "COMMERCE_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/commerce?sslmode=disable",
        )
        .env("COMMERCE_DATABASE_TIMEOUT_MS", "500")
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(2), "{unreachable:?}");
    assert!(
        String::from_utf8_lossy(&unreachable.stderr).contains("could not check"),
        "{unreachable:?}"
    );
    app.finish().await;
}

#[tokio::test]
async fn holds_left_by_a_completed_session_are_orphans_and_released() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let session = app.purchase(&gateway, &[("var-1", 1)], "k-done").await;
    // A hold under the finished session's name (a stray write, a restored backup).
    let holder = Holder::Checkout(SessionId::parse(&session).unwrap());
    let v1 = VariantId::parse("var-1").unwrap();
    app.inventory()
        .reserve(&holder, &[(v1, Quantity::new(3).unwrap())], 60_000)
        .await
        .unwrap();
    let drifted = check(&app).await;
    assert_eq!(
        kinds(&drifted.body),
        vec![format!("orphan-hold checkout:{session}")]
    );
    let repaired = app
        .call("POST", "/v1/admin/check/repair", None, Caller::Admin)
        .await;
    assert_eq!(
        (repaired.status, repaired.body["ok"].as_bool()),
        (200, Some(true)),
        "{repaired:?}"
    );
    assert_eq!(app.check_holds("var-1").await, (99, 0));
    app.finish().await;
}

/// A live paid session that Redis lost altogether (a restart without persistence, a
/// flush) is drift until it is back: its lock and its holds are gone with it. The repair
/// puts it back from PostgreSQL, as the first call that met it would.
#[tokio::test]
async fn a_paid_session_redis_lost_is_reported_and_put_back() {
    let (app, _gateway) = TestApp::shop(1, |c| c).await;
    let paying = app.paying_session(&[("var-1", 2)], "k-lost").await;
    app.flush_redis().await;

    let drifted = check(&app).await;
    assert_eq!(drifted.body["ok"], false, "{drifted:?}");
    assert!(
        kinds(&drifted.body).contains(&format!("paid-session-missing {}", paying.session)),
        "{drifted:?}"
    );
    let repaired = app
        .call("POST", "/v1/admin/check/repair", None, Caller::Admin)
        .await;
    assert_eq!(repaired.status, 200, "{repaired:?}");
    // One pass agrees: the variant's stock is not loaded yet, and its lazy load brings the
    // session's holds back with it, so they are not missing.
    assert_eq!(repaired.body["ok"], true, "{repaired:?}");
    assert_eq!(check(&app).await.body["ok"], true);
    assert_eq!(
        app.stored_state(&paying.session).await.as_deref(),
        Some("PAYMENT_PENDING")
    );
    let mut redis = app.redis.clone();
    let lock: Option<String> = redis.get(app.cart_lock_key(&paying.cart)).await.unwrap();
    assert_eq!(lock.as_deref(), Some(paying.session.as_str()));
    assert_eq!(app.sellable("var-1").await, 98, "its holds count again");
    assert_eq!(check(&app).await.body["ok"], true);
    app.finish().await;
}

/// A session Redis shows paid but not ordered although PostgreSQL wrote its order longer
/// ago than a request may run (here Redis restored from a copy taken before the order, as
/// a webhook cut short after the order's statement also leaves it) still holds the units
/// its order took: `session-ordered` drift, which the repair finishes.
#[tokio::test]
async fn a_paid_session_left_unfinished_after_its_order_is_drift_and_finished() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let paying = app.paying_session(&[("var-1", 2)], "k-unfinished").await;
    let before_order = app.redis_snapshot().await;
    let (status, done) = app.intent_paid(&gateway, &paying.intent).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    let mut redis = app.redis.clone();
    for (key, dump) in &before_order {
        let _: () = redis::cmd("RESTORE")
            .arg(key)
            .arg(0)
            .arg(dump.as_slice())
            .arg("REPLACE")
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    app.set_stored_state(&paying.session, "PAYMENT_CONFIRMED").await;
    let subject = format!("session-ordered {}", paying.session);
    assert!(
        !kinds(&check(&app).await.body).contains(&subject),
        "an order just written may still be finishing"
    );
    app.pg
        .batch_execute("UPDATE orders SET created_at = now() - interval '1 minute'")
        .await
        .unwrap();
    let drifted = check(&app).await;
    assert!(kinds(&drifted.body).contains(&subject), "{drifted:?}");
    let repaired = app
        .call("POST", "/v1/admin/check/repair", None, Caller::Admin)
        .await;
    assert_eq!(repaired.body["ok"], true, "{repaired:?}");
    assert_eq!(
        app.stored_state(&paying.session).await.as_deref(),
        Some("COMPLETED")
    );
    assert_eq!(app.sellable("var-1").await, 98, "the order's units counted once");
    assert_eq!(check(&app).await.body["ok"], true);
    app.finish().await;
}

/// A session Redis shows confirmed that PostgreSQL ended FAILED with its refund owed (the
/// request that refunded it stopped before it moved Redis) is `session-ended` drift; the
/// repair, as a read would, moves it to FAILED and frees its holds.
#[tokio::test]
async fn a_confirmed_session_postgres_ended_failed_is_drift_and_failed() {
    let (app, gateway) = TestApp::shop(1, |c| c).await;
    let paying = app.paying_session(&[("var-1", 2)], "k-ended-behind").await;
    assert!(gateway.succeed(&paying.intent));
    app.set_stored_state(&paying.session, "PAYMENT_CONFIRMED").await;
    app.pg
        .execute(
            "UPDATE checkout_sessions SET ended_state = 'FAILED', ended_at = now() WHERE id = $1",
            &[&paying.session],
        )
        .await
        .unwrap();
    app.pg
        .execute(
            "INSERT INTO payment_outbox (kind, payment_intent_id, checkout_session_id, amount_minor, currency, reason)
             VALUES ('refund', $1, $2, $3, 'EUR', 'its holds ended')",
            &[&paying.intent, &paying.session, &paying.amount],
        )
        .await
        .unwrap();
    let subject = format!("session-ended {}", paying.session);
    assert!(kinds(&check(&app).await.body).contains(&subject));
    let repaired = app
        .call("POST", "/v1/admin/check/repair", None, Caller::Admin)
        .await;
    assert_eq!(repaired.body["ok"], true, "{repaired:?}");
    assert_eq!(app.stored_state(&paying.session).await.as_deref(), Some("FAILED"));
    assert_eq!(app.sellable("var-1").await, 100, "its holds freed");
    let shown = app.get(&format!("/v1/checkout/{}", paying.session)).await;
    assert_eq!(shown.body["refundRequired"], "its holds ended", "{shown:?}");
    assert_eq!(check(&app).await.body["ok"], true);
    app.finish().await;
}

/// A hold whose deadline was lost (its entry in the holds set deleted by hand, beside
/// other holds' entries: a whole set lost is dropped by the next operation) would never
/// expire; the check reports the reserved total it keeps up, and the repair drops it.
#[tokio::test]
async fn a_hold_without_a_deadline_is_dropped_by_the_repair() {
    let (app, _gateway) = TestApp::shop(1, |c| c).await;
    for (holder, units) in [("ext-1", 5), ("ext-2", 3)] {
        let reserved = app
            .reserve(
                serde_json::json!({"cartId": holder, "items": [{"variantId": "var-1", "quantity": units}]}),
            )
            .await;
        assert_eq!(reserved.status, 201, "{reserved:?}");
    }
    let mut redis = app.redis.clone();
    let _: () = redis
        .zrem(app.variant_keys("var-1").holds, "external:ext-1")
        .await
        .unwrap();
    assert_eq!(app.sellable("var-1").await, 92);

    let drifted = check(&app).await;
    assert_eq!(kinds(&drifted.body), ["reserved var-1"], "{drifted:?}");
    let repaired = app
        .call("POST", "/v1/admin/check/repair", None, Caller::Admin)
        .await;
    assert_eq!(repaired.body["ok"], true, "{repaired:?}");
    let said = repaired.body["repaired"][0]["repaired"].as_str().unwrap();
    assert!(said.contains("without a deadline dropped"), "{said}");
    assert_eq!(app.sellable("var-1").await, 97);
    assert_eq!(check(&app).await.body["ok"], true);
    app.finish().await;
}

/// A live session whose lost lock the repair meets is met as its own payment intent
/// would meet it: a cart changed since it froze it cancels it (holds freed, cart free for
/// the shopper's next checkout), and a customer's cart built again after a Redis loss is
/// another cart, whose lock is no drift of the old session's and is left alone.
#[tokio::test]
async fn the_repair_locks_a_cart_only_as_the_session_froze_it() {
    let (app, _gateway) = TestApp::shop(3, |c| c).await;
    let mut redis = app.redis.clone();

    let changed = app.paying_session(&[("var-1", 1)], "k-relock-1").await;
    let _: () = redis.del(app.cart_lock_key(&changed.cart)).await.unwrap();
    let added = app
        .post(&format!("/v1/carts/{}/items", changed.cart), unit("var-2", 1))
        .await;
    assert_eq!(added.status, 200, "{added:?}");
    let drifted = check(&app).await;
    assert_eq!(
        kinds(&drifted.body),
        [format!("session-lock {}", changed.session)],
        "{drifted:?}"
    );
    let repaired = app
        .call("POST", "/v1/admin/check/repair", None, Caller::Admin)
        .await;
    let said = repaired.body["repaired"][0]["repaired"].as_str().unwrap();
    assert!(said.contains("session cancelled"), "{repaired:?}");
    let gone = app.get(&format!("/v1/checkout/{}", changed.session)).await;
    assert_eq!(gone.body["state"], "CANCELLED", "{gone:?}");
    let lock: Option<String> = redis.get(app.cart_lock_key(&changed.cart)).await.unwrap();
    assert_eq!(lock, None, "the shopper's cart is free");
    assert_eq!(app.sellable("var-1").await, 100);
    assert_eq!(check(&app).await.body["ok"], true);

    // A customer's session paid for before Redis lost everything, and the customer's new
    // cart since.
    let ann = Caller::Customer("ann");
    let add = |variant: &'static str| {
        app.call(
            "POST",
            "/v1/customers/ann/cart/items",
            Some(unit(variant, 1)),
            ann,
        )
    };
    assert_eq!(add("var-3").await.status, 200);
    let started = app
        .start_checkout_as(serde_json::json!({ "customerId": "ann" }), "k-relock-2", ann)
        .await;
    let before = started.body["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(app.payment_intent(&before, ann).await.status, 200);
    app.flush_redis().await;
    assert_eq!(add("var-2").await.status, 200);
    let met = app
        .call("GET", &format!("/v1/checkout/{before}"), None, ann)
        .await;
    assert_eq!(met.body["state"], "PAYMENT_PENDING", "{met:?}");
    let repaired = app
        .call("POST", "/v1/admin/check/repair", None, Caller::Admin)
        .await;
    assert_eq!(repaired.body["ok"], true, "{repaired:?}");
    assert!(
        repaired.body["repaired"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["subject"] != before.as_str()),
        "{repaired:?}"
    );
    let lock: Option<String> = redis.get(app.key("checkout:lock:{ann}:customer")).await.unwrap();
    assert_eq!(lock, None, "the new cart is not the old session's to lock");
    assert_eq!(
        add("var-1").await.status,
        200,
        "the customer's new cart takes lines"
    );
    app.finish().await;
}

/// The other way round: a checkout's hold whose quantity was lost beside others' keeps
/// its deadline. Its session's release drops it (it held nothing, so it was once left
/// there, an orphan that `check --repair` "released 0" of until it expired), and so does
/// the repair of one left by an ended session.
#[tokio::test]
async fn a_deadline_left_without_its_quantity_goes_with_its_session() {
    let (app, _gateway) = TestApp::shop(1, |c| c).await;
    let other = app
        .reserve(serde_json::json!({"cartId": "ext-q1", "items": [{"variantId": "var-1", "quantity": 1}]}))
        .await;
    assert_eq!(other.status, 201, "{other:?}");
    let mut redis = app.redis.clone();
    let holds = app.variant_keys("var-1").holds;
    let deadline_of = |holder: String| {
        let (mut redis, holds) = (app.redis.clone(), holds.clone());
        async move {
            let at: Option<f64> = redis.zscore(holds, holder).await.unwrap();
            at
        }
    };

    // Cancelled: the release drops it.
    let cart = app.cart_with(&[("var-1", 2)]).await;
    let session = app.checkout(&cart, "k-deadline-only").await;
    let holder = app.session_holder(&session);
    let _: () = redis
        .hdel(app.variant_keys("var-1").hold_qty, &holder)
        .await
        .unwrap();
    assert_eq!(app.cancel(&session, Caller::Anonymous).await.status, 200);
    assert_eq!(deadline_of(holder).await, None, "its deadline went with it");

    // Left by a session that ended without its release (as a restored backup leaves one):
    // reported, and the repair drops it.
    let cart = app.cart_with(&[("var-1", 1)]).await;
    let session = app.checkout(&cart, "k-deadline-only-2").await;
    let holder = app.session_holder(&session);
    let at = deadline_of(holder.clone()).await.unwrap();
    assert_eq!(app.cancel(&session, Caller::Anonymous).await.status, 200);
    let _: () = redis.zadd(&holds, &holder, at).await.unwrap();
    let drifted = check(&app).await;
    assert!(
        kinds(&drifted.body).contains(&format!("orphan-hold {holder}")),
        "{drifted:?}"
    );
    let repaired = app
        .call("POST", "/v1/admin/check/repair", None, Caller::Admin)
        .await;
    assert_eq!(repaired.body["ok"], true, "{repaired:?}");
    assert_eq!(deadline_of(holder).await, None, "the repair dropped it");
    assert_eq!(app.sellable("var-1").await, 99, "the outside hold stays");
    assert_eq!(check(&app).await.body["ok"], true);
    app.finish().await;
}

/// An outside holder whose index of held variants was lost could not be released (its
/// DELETE frees what the index names): the check reports it, the repair puts the variants
/// back in the index, and the release then frees them.
#[tokio::test]
async fn a_lost_holder_index_is_reported_and_put_back() {
    let (app, _gateway) = TestApp::shop(2, |c| c).await;
    let reserved = app
        .reserve(
            serde_json::json!({"cartId": "ext-h1", "ttlSeconds": 900, "items": [
            {"variantId": "var-1", "quantity": 4}, {"variantId": "var-2", "quantity": 1}]}),
        )
        .await;
    assert_eq!(reserved.status, 201, "{reserved:?}");
    let holder = Holder::External(commerce_core::ids::ExternalHolderId::parse("ext-h1").unwrap());
    let index = app.keys().holder_holds(&holder);
    let mut redis = app.redis.clone();
    let _: () = redis.del(&index).await.unwrap();

    let drifted = check(&app).await;
    assert_eq!(
        kinds(&drifted.body),
        ["holder-index external:ext-h1"],
        "{drifted:?}"
    );
    let repaired = app
        .call("POST", "/v1/admin/check/repair", None, Caller::Admin)
        .await;
    assert_eq!(repaired.body["ok"], true, "{repaired:?}");
    let ttl: i64 = redis.pttl(&index).await.unwrap();
    assert!((800_000..=900_000).contains(&ttl), "as long as the holds: {ttl}");
    let released = app
        .call("DELETE", "/v1/inventory/reservations/ext-h1", None, Caller::Admin)
        .await;
    assert_eq!(released.body["released"], 5, "{released:?}");
    assert_eq!(app.sellable("var-1").await, 100);
    app.finish().await;
}

/// A variant deleted from PostgreSQL whose stock Redis still keeps would still be sold:
/// `check` reports it, and `--repair` and `reconcile` empty it.
#[tokio::test]
async fn stock_of_a_variant_deleted_from_the_catalog_is_drift_and_emptied() {
    let (app, _gateway) = TestApp::shop(3, |c| c).await;
    let stock_key = app.variant_keys("var-3").stock;
    let mut redis = app.redis.clone();
    let stock: i64 = redis.get(&stock_key).await.unwrap();
    assert!(stock > 0);
    app.delete_variant("var-3").await;
    let drifted = check(&app).await;
    assert_eq!(kinds(&drifted.body), ["stock var-3"], "{drifted:?}");
    let repaired = app
        .call("POST", "/v1/admin/check/repair", None, Caller::Admin)
        .await;
    assert_eq!(repaired.body["ok"], true, "{repaired:?}");
    let stock: i64 = redis.get(&stock_key).await.unwrap();
    assert_eq!(stock, 0);
    let refused = app
        .reserve(serde_json::json!({"cartId": "ext-gone", "items": [{"variantId": "var-3", "quantity": 1}]}))
        .await;
    assert_eq!(refused.status, 409, "{refused:?}");
    assert!(kinds(&check(&app).await.body).is_empty());

    let _: () = redis.set(&stock_key, 7).await.unwrap();
    let reconciled = app
        .call("POST", "/v1/admin/inventory/reconcile", None, Caller::Admin)
        .await;
    assert_eq!(
        (
            reconciled.body["variants"].clone(),
            reconciled.body["deleted"].clone()
        ),
        (Value::from(2), Value::from(1)),
        "{reconciled:?}"
    );
    let stock: i64 = redis.get(&stock_key).await.unwrap();
    assert_eq!(stock, 0);
    let again = app
        .call("POST", "/v1/admin/inventory/reconcile", None, Caller::Admin)
        .await;
    assert_eq!(again.body["deleted"], 0, "already empty: {again:?}");
    app.finish().await;
}

/// A variant with more live holds than a script can unpack at once (about 8000) is checked
/// whole: its held total agrees, and a unit missing from it is drift.
#[tokio::test]
async fn a_variant_with_thousands_of_holds_is_checked_whole() {
    let (app, _gateway) = TestApp::shop(1, |c| c).await;
    assert_eq!(app.set_on_hand("var-1", 10_000).await.status, 200);
    let keys = app.variant_keys("var-1");
    let mut redis = app.redis.clone();
    let (seconds, _): (i64, i64) = redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    let deadline = seconds * 1000 + 600_000;
    let mut pipe = redis::pipe();
    for i in 0..8500 {
        let id = commerce_core::ids::ExternalHolderId::parse(&format!("many-{i}")).unwrap();
        let holder = Holder::External(id);
        let index = app.keys().holder_holds(&holder);
        pipe.zadd(&keys.holds, holder.to_string(), deadline)
            .hset(&keys.hold_qty, holder.to_string(), 1)
            .sadd(&index, "var-1")
            .pexpire(&index, 700_000);
    }
    pipe.incr(&keys.reserved, 8500);
    let _: () = pipe.query_async(&mut redis).await.unwrap();
    let checked = check(&app).await;
    assert!(kinds(&checked.body).is_empty(), "{:?}", checked.body["drift"]);
    assert_eq!(app.sellable("var-1").await, 1500);

    let _: () = redis.incr(&keys.reserved, 1).await.unwrap();
    let drifted = check(&app).await;
    assert_eq!(kinds(&drifted.body), ["reserved var-1"], "{drifted:?}");
    app.finish().await;
}

/// A session cancelled after its holder index was lost still frees what it held: the
/// variants it froze at its start name them.
#[tokio::test]
async fn a_cancel_frees_the_holds_even_without_the_holder_index() {
    let (app, _gateway) = TestApp::shop(1, |c| c).await;
    let cart = app.cart_with(&[("var-1", 3)]).await;
    let session = app.checkout(&cart, "k-no-index").await;
    let holder = Holder::Checkout(SessionId::parse(&session).unwrap());
    let mut redis = app.redis.clone();
    let _: () = redis.del(app.keys().holder_holds(&holder)).await.unwrap();
    let cancelled = app.cancel(&session, Caller::Anonymous).await;
    assert_eq!(cancelled.body["state"], "CANCELLED", "{cancelled:?}");
    assert_eq!(app.sellable("var-1").await, 100);
    app.finish().await;
}
