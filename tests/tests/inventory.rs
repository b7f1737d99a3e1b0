//! The inventory store's promises, checked over HTTP against real Redis and PostgreSQL.

use std::time::Duration;

use commerce_tests::{ADMIN_TOKEN, Caller, Reply, TestApp, at_once};
use serde_json::{Value, json};

fn reservation(cart: &str, items: &[(&str, i64)]) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|(v, q)| json!({ "variantId": v, "quantity": q }))
        .collect();
    json!({ "cartId": cart, "items": items })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reservation_never_oversells_under_contention() {
    let app = TestApp::spawn().await;
    app.seed(1).await;
    assert_eq!(app.set_on_hand("var-1", 100).await.status, 200);

    let replies = at_once(300, |i| {
        let (http, base) = (app.http.clone(), app.base.clone());
        async move {
            let req = http
                .post(format!("{base}/v1/inventory/reservations"))
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
                .body(reservation(&format!("cart-{i}"), &[("var-1", 1)]).to_string());
            TestApp::reply(req).await
        }
    })
    .await;
    let mut granted = 0;
    let mut refused = 0;
    for reply in replies {
        match reply.status {
            201 => granted += 1,
            409 => {
                assert_eq!(reply.code(), "INSUFFICIENT_INVENTORY");
                refused += 1;
            }
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    assert_eq!((granted, refused), (100, 200));
    assert_eq!(app.sellable("var-1").await, 0);
    assert_eq!(app.check_holds("var-1").await, (100, 100));
    assert_eq!(app.pg_on_hand("var-1").await, 100);
    app.finish().await;
}

/// A reserved total that is gone while holds remain (deleted by hand, a partial restore) is
/// rebuilt from the holds by the next script that touches the variant: it never counts as
/// zero, so the held units are not sold a second time.
#[tokio::test]
async fn a_lost_reserved_total_is_rebuilt_from_the_holds_and_never_oversells() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    for variant in ["var-1", "var-2"] {
        assert_eq!(app.set_on_hand(variant, 100).await.status, 200);
        let held = app
            .reserve(reservation(&format!("first-{variant}"), &[(variant, 95)]))
            .await;
        assert_eq!(held.status, 201, "{held:?}");
    }
    let mut redis = app.redis.clone();
    for variant in ["var-1", "var-2"] {
        let _: () = redis::AsyncCommands::del(&mut redis, app.variant_keys(variant).reserved)
            .await
            .unwrap();
    }

    let refused = app.reserve(reservation("second", &[("var-1", 10)])).await;
    assert_eq!(
        (refused.status, refused.code()),
        (409, "INSUFFICIENT_INVENTORY"),
        "{refused:?}"
    );
    assert_eq!(refused.body["error"]["details"]["shortages"][0]["sellable"], 5);
    let view = app.get("/v1/inventory/var-2").await;
    assert_eq!(
        (view.body["reserved"].as_i64(), view.body["sellable"].as_i64()),
        (Some(95), Some(5)),
        "a read rebuilds it too: {view:?}"
    );
    assert_eq!(
        app.reserve(reservation("third", &[("var-1", 5)])).await.status,
        201
    );
    assert_eq!(app.check_holds("var-1").await, (100, 100));
    assert_eq!(app.check_holds("var-2").await, (100, 95));
    app.finish().await;
}

/// Holds whose deadlines were lost (the holds set deleted or evicted, their quantities
/// left) can never expire, and deadlines whose quantities were lost keep a reserved total
/// nobody holds: the next operation on the variant, or a sweep, drops them as expired,
/// without waiting for an operator's `check --repair`.
#[tokio::test]
async fn holds_that_lost_their_deadlines_or_quantities_stop_counting() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    let mut redis = app.redis.clone();
    for variant in ["var-1", "var-2"] {
        let held = app
            .reserve(reservation(&format!("undated-{variant}"), &[(variant, 5)]))
            .await;
        assert_eq!(held.status, 201, "{held:?}");
        let _: () = redis::AsyncCommands::del(&mut redis, app.variant_keys(variant).holds)
            .await
            .unwrap();
    }
    let taken = app.reserve(reservation("after", &[("var-1", 100)])).await;
    assert_eq!(taken.status, 201, "{taken:?}");
    assert_eq!(app.check_holds("var-1").await, (100, 100));

    assert_eq!(app.inventory().sweep(|_| {}).await.unwrap(), 2);
    let keys = app.variant_keys("var-2");
    let left: (bool, bool) = redis::pipe()
        .exists(&keys.hold_qty)
        .exists(&keys.reserved)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(left, (false, false), "the sweep dropped var-2's undated hold");
    let view = app.get("/v1/inventory/var-2").await;
    assert_eq!(view.body["sellable"], 100, "{view:?}");

    let held = app.reserve(reservation("no-quantities", &[("var-2", 7)])).await;
    assert_eq!(held.status, 201, "{held:?}");
    let _: () = redis::AsyncCommands::del(&mut redis, app.variant_keys("var-2").hold_qty)
        .await
        .unwrap();
    assert_eq!(
        app.inventory().sweep(|_| {}).await.unwrap(),
        2,
        "var-1 (held) and var-2"
    );
    let keys = app.variant_keys("var-2");
    let left: (bool, bool) = redis::pipe()
        .exists(&keys.holds)
        .exists(&keys.reserved)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        left,
        (false, false),
        "the sweep dropped the deadlines without quantities"
    );
    let view = app.get("/v1/inventory/var-2").await;
    assert_eq!(
        (view.body["reserved"].clone(), view.body["sellable"].clone()),
        (json!(0), json!(100)),
        "{view:?}"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_reservation_with_one_short_variant_changes_nothing() {
    let app = TestApp::spawn().await;
    app.seed(3).await;
    app.set_on_hand("var-3", 2).await;
    assert_eq!(
        app.reserve(reservation("other", &[("var-3", 1)])).await.status,
        201
    );
    let before = app.redis_snapshot().await;

    let reply = app
        .reserve(reservation("cart-a", &[("var-1", 5), ("var-2", 5), ("var-3", 2)]))
        .await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.code(), "INSUFFICIENT_INVENTORY");
    assert_eq!(
        reply.body["error"]["details"]["shortages"],
        json!([{ "variantId": "var-3", "requested": 2, "sellable": 1 }])
    );
    assert_eq!(
        app.redis_snapshot().await,
        before,
        "a refused reservation wrote to Redis"
    );
    for v in ["var-1", "var-2"] {
        assert_eq!(app.sellable(v).await, 100);
    }
    app.finish().await;
}

#[tokio::test]
async fn an_expired_hold_stops_counting_without_a_sweeper() {
    let app = TestApp::spawn().await;
    app.seed(1).await;
    app.set_on_hand("var-1", 1).await;
    let mut held = reservation("early", &[("var-1", 1)]);
    held["ttlSeconds"] = json!(1);
    let reply = app.reserve(held).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    assert!(reply.body["expiresAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        app.reserve(reservation("late", &[("var-1", 1)])).await.status,
        409
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.sellable("var-1").await, 1, "the expired hold still counts");
    assert_eq!(
        app.reserve(reservation("late", &[("var-1", 1)])).await.status,
        201
    );
    assert_eq!(app.check_holds("var-1").await, (1, 1));
    app.finish().await;
}

/// A reservation with an `Idempotency-Key` is made once: the same key and body (the same
/// JSON, however spelled) answer the first answer again (its deadline, not a later one),
/// the same key with another body (other items, another holder) is a
/// 422 that changes nothing, and a request without a key is not affected.
#[tokio::test]
async fn a_reservation_with_an_idempotency_key_is_made_once() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let send = |body: Value, key: &'static str| {
        let admin = admin.clone();
        let app = &app;
        async move {
            app.call_with(
                "POST",
                "/v1/inventory/reservations",
                Some(body),
                &[("authorization", &admin), ("idempotency-key", key)],
            )
            .await
        }
    };
    let first = send(reservation("k", &[("var-1", 2)]), "hold-1").await;
    assert_eq!(first.status, 201, "{first:?}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = send(reservation("k", &[("var-1", 2)]), "hold-1").await;
    assert_eq!(
        (again.status, &again.body),
        (201, &first.body),
        "a retry was made again"
    );
    // The same JSON, its keys in another order and spaced otherwise, is the same body.
    let respelled = app
        .http
        .post(format!("{}/v1/inventory/reservations", app.base))
        .header("authorization", &admin)
        .header("idempotency-key", "hold-1")
        .header("content-type", "application/json")
        .body(r#"{ "items" : [ { "quantity" : 2, "variantId" : "var-1" } ], "cartId" : "k" }"#)
        .send()
        .await
        .unwrap();
    assert_eq!(respelled.status(), 201);
    let respelled: Value = respelled.json().await.unwrap();
    assert_eq!(respelled, first.body, "a respelled retry was made again");

    let other = send(reservation("k", &[("var-1", 7)]), "hold-1").await;
    assert_eq!(
        (other.status, other.code()),
        (422, "IDEMPOTENCY_KEY_REUSED"),
        "{other:?}"
    );
    assert_eq!(
        app.check_holds("var-1").await,
        (100, 2),
        "the other body was applied"
    );
    // Another holder is another body too: the key is the caller's, not the holder's.
    let other_holder = send(reservation("k2", &[("var-1", 2)]), "hold-1").await;
    assert_eq!(
        (other_holder.status, other_holder.code()),
        (422, "IDEMPOTENCY_KEY_REUSED"),
        "{other_holder:?}"
    );
    assert_eq!(
        app.check_holds("var-1").await,
        (100, 2),
        "the other holder was held"
    );

    let unkeyed = app.reserve(reservation("k", &[("var-1", 3)])).await;
    assert_eq!(unkeyed.status, 201, "{unkeyed:?}");
    assert_eq!(app.check_holds("var-1").await, (100, 3));
    app.finish().await;
}

#[tokio::test]
async fn re_reserving_sets_quantities_and_release_frees_only_that_cart() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    for quantity in [5, 5, 3] {
        let reply = app.reserve(reservation("a", &[("var-1", quantity)])).await;
        assert_eq!(reply.status, 201);
    }
    assert_eq!(
        app.check_holds("var-1").await,
        (100, 3),
        "a retry added instead of setting"
    );
    app.reserve(reservation("a", &[("var-2", 4)])).await;
    app.reserve(reservation("b", &[("var-1", 2), ("var-2", 1)])).await;
    assert_eq!(app.check_holds("var-1").await, (100, 5));
    assert_eq!(app.check_holds("var-2").await, (100, 5));

    let released = app
        .call("DELETE", "/v1/inventory/reservations/a", None, Caller::Admin)
        .await;
    assert_eq!(
        (released.status, released.body["released"].as_i64()),
        (200, Some(7))
    );
    assert_eq!(app.check_holds("var-1").await, (100, 2));
    assert_eq!(app.check_holds("var-2").await, (100, 1));
    // Releasing again is harmless.
    let again = app
        .call("DELETE", "/v1/inventory/reservations/a", None, Caller::Admin)
        .await;
    assert_eq!(again.body["released"], 0);
    assert_eq!(app.sellable("var-1").await, 98);
    app.finish().await;
}

#[tokio::test]
async fn redis_losing_its_data_is_restored_from_postgres() {
    let app = TestApp::spawn().await;
    app.seed(40).await;
    for (i, on_hand) in [(1, 0), (2, 7), (3, 999), (40, 1)] {
        assert_eq!(app.set_on_hand(&format!("var-{i}"), on_hand).await.status, 200);
    }

    // Lazy load: the first request after the loss reads PostgreSQL.
    app.flush_redis().await;
    let reply = app.get("/v1/inventory/var-3").await;
    assert_eq!((reply.status, reply.body["stock"].as_i64()), (200, Some(999)));
    let ids: Vec<String> = (1..=40).map(|i| format!("var-{i}")).collect();
    let availability = app
        .post("/v1/inventory/availability", json!({ "variantIds": ids }))
        .await;
    assert_eq!(availability.status, 200);
    for item in availability.body["items"].as_array().unwrap() {
        let variant = item["variantId"].as_str().unwrap();
        assert_eq!(
            item["stock"].as_i64().unwrap(),
            app.pg_on_hand(variant).await,
            "{variant}"
        );
    }

    // Reconcile: every stock key rewritten exactly.
    app.flush_redis().await;
    let reply = app
        .call("POST", "/v1/admin/inventory/reconcile", None, Caller::Admin)
        .await;
    assert_eq!((reply.status, reply.body["variants"].as_i64()), (200, Some(40)));
    for id in &ids {
        assert_eq!(app.check_holds(id).await.0, app.pg_on_hand(id).await, "{id}");
    }
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_changes_racing_loads_and_reconciles_are_mirrored_exactly_once() {
    let app = TestApp::spawn().await;
    app.seed(4).await;
    let variants = ["var-1", "var-2", "var-3", "var-4"];
    for round in 0..5 {
        app.flush_redis().await;
        let mut tasks = Vec::new();
        for (i, variant) in variants.iter().enumerate() {
            for k in 0..8 {
                let (http, base, v) = (app.http.clone(), app.base.clone(), variant.to_string());
                let on_hand = 10 * (round + 1) + k + i;
                tasks.push(tokio::spawn(async move {
                    let req = http
                        .put(format!("{base}/v1/admin/inventory/{v}"))
                        .header("authorization", format!("Bearer {}", commerce_tests::ADMIN_TOKEN))
                        .header("content-type", "application/json")
                        .body(json!({ "onHand": on_hand }).to_string());
                    TestApp::reply(req).await.status
                }));
                let (http, base, v) = (app.http.clone(), app.base.clone(), variant.to_string());
                tasks.push(tokio::spawn(async move {
                    TestApp::reply(http.get(format!("{base}/v1/inventory/{v}")))
                        .await
                        .status
                }));
            }
        }
        let inventory = app.inventory();
        let (statuses, reconciled) = tokio::join!(futures_join(tasks), inventory.reconcile(|_| {}));
        reconciled.unwrap();
        assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
        for v in variants {
            assert_eq!(
                app.check_holds(v).await.0,
                app.pg_on_hand(v).await,
                "round {round}, {v}"
            );
        }
    }
    app.finish().await;
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<u16>>) -> Vec<u16> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn sweep_purges_holds_nobody_touches() {
    let app = TestApp::spawn().await;
    app.seed(3).await;
    let mut held = reservation("idle", &[("var-1", 1), ("var-2", 2), ("var-3", 3)]);
    held["ttlSeconds"] = json!(1);
    assert_eq!(app.reserve(held).await.status, 201);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let visited = app.inventory().sweep(|_| {}).await.unwrap();
    assert_eq!(visited, 3);
    let keys = app.redis_keys().await;
    assert!(
        keys.iter()
            .all(|k| !k.contains(":inventory:holds:") && !k.contains(":inventory:reserved:")),
        "holds left after the sweep: {keys:?}"
    );
    app.finish().await;
}

#[tokio::test]
async fn scripts_run_after_the_server_forgets_them() {
    let app = TestApp::spawn().await;
    app.seed(1).await;
    let mut redis = app.redis.clone();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis)
        .await
        .unwrap();
    let reply = app.reserve(reservation("c", &[("var-1", 2)])).await;
    assert_eq!(reply.status, 201, "NOSCRIPT fallback failed: {reply:?}");
    assert_eq!(app.sellable("var-1").await, 98);
    app.finish().await;
}

#[tokio::test]
async fn admin_routes_need_the_admin_token() {
    let app = TestApp::spawn().await;
    app.seed(1).await;
    let body = json!({ "onHand": 5 }).to_string();
    for (token, status) in [(None, 401), (Some("Bearer wrong"), 403), (Some("Basic x"), 401)] {
        let mut req = app
            .http
            .put(format!("{}/v1/admin/inventory/var-1", app.base))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(token) = token {
            req = req.header("authorization", token);
        }
        let reply = TestApp::reply(req).await;
        assert_eq!(reply.status, status, "{token:?}");
        let reply = app
            .call("POST", "/v1/admin/inventory/reconcile", None, Caller::Anonymous)
            .await;
        assert_eq!(reply.status, 401);
    }
    assert_eq!(app.pg_on_hand("var-1").await, 100);
    app.finish().await;
}

#[tokio::test]
async fn an_unreachable_dependency_is_a_503_not_a_hang() {
    let app = TestApp::spawn_with(|c| {
        c.set("redis_url", "redis://127.0.0.1:1")
            .set("redis_timeout_ms", "300")
    })
    .await;
    let started = std::time::Instant::now();
    let health = app.get("/health").await;
    assert_eq!(health.status, 503);
    assert_eq!(
        (
            health.body["redis"]["ok"].as_bool(),
            health.body["postgres"]["ok"].as_bool()
        ),
        (Some(false), Some(true))
    );
    let reply: Reply = app.get("/v1/inventory/var-1").await;
    assert_eq!((reply.status, reply.code()), (503, "SERVICE_UNAVAILABLE"));
    assert!(started.elapsed() < Duration::from_secs(10));
    app.pg
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", app.namespace))
        .await
        .unwrap();
}

#[tokio::test]
async fn health_reports_both_dependencies() {
    let app = TestApp::spawn().await;
    let health = app.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.body["status"], "ok");
    assert!(health.body["redis"]["latencyMs"].is_number());
    assert_eq!(health.body["postgres"]["ok"], true);
    app.finish().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let app = TestApp::spawn().await;
    app.get("/v1/inventory/a:b").await;
    let res = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert!(
        text.contains("commerce_dependency_up{dependency=\"redis\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("commerce_ruleset_version{kind=\"pricing\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("commerce_requests_total{store=\"/v1/inventory\",status=\"400\"}"),
        "{text}"
    );
    app.finish().await;
}

#[tokio::test]
async fn postgres_being_down_is_a_503_not_a_hang() {
    use commerce_core::Settings;
    use commerce_core::http::Request;
    use commerce_native::{EnvConfig, build_app};

    let config = EnvConfig::new()
        .set("redis_url", std::env::var("COMMERCE_REDIS_URL").unwrap())
        .set("database_url", "postgres://postgres@127.0.0.1:1/commerce")
        .set("database_timeout_ms", "500")
        .set("key_prefix", commerce_tests::key_prefix_for("pg_down_test"));
    let app = build_app(Settings::from_config(&config).unwrap()).unwrap();
    let started = std::time::Instant::now();
    // No stock key for this variant: the lazy load must reach PostgreSQL.
    let get = Request {
        method: "GET".into(),
        path: "/v1/inventory/var-unloaded".into(),
        ..Request::default()
    };
    let response = commerce_core::handle(&app, get, commerce_core::Scope::All).await;
    assert_eq!(response.status, 503);
    let body = response.json_body().unwrap();
    assert_eq!(body["error"]["code"], "SERVICE_UNAVAILABLE");
    assert_eq!(body["error"]["details"]["dependency"], "postgres");
    let health = Request {
        method: "GET".into(),
        path: "/health".into(),
        ..Request::default()
    };
    assert_eq!(
        commerce_core::handle(&app, health, commerce_core::Scope::All)
            .await
            .status,
        503
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Every stock change carries the on-hand PostgreSQL committed with it, and Redis keeps
/// that of the newest row version it has seen: a change counts once whatever the order and
/// the repeats, and one that never reached Redis (Redis failed after PostgreSQL committed)
/// is contained in the next.
#[tokio::test]
async fn stock_changes_mirror_into_redis_once_each_whatever_their_order() {
    use std::collections::BTreeMap;

    use commerce_core::ids::{ExternalHolderId, Holder, VariantId};
    use commerce_core::inventory::StockChange;

    let app = TestApp::spawn().await;
    app.seed(1).await;
    assert_eq!(app.sellable("var-1").await, 100, "the stock is in Redis");
    let keys = app.variant_keys("var-1");
    let mut redis = app.redis.clone();
    let base: i64 = redis::cmd("HGET")
        .arg(&keys.stock_version)
        .arg("max")
        .query_async(&mut redis)
        .await
        .unwrap();
    let inventory = app.inventory();
    let holder = Holder::External(ExternalHolderId::parse("nobody").unwrap());
    // On-hand after versions base + 1 … base + 6: 1, 2, 3, 4, 5 and 6 units sold.
    let after = [99, 97, 94, 90, 85, 79];
    let change = |step: usize| StockChange {
        variant: VariantId::parse("var-1").unwrap(),
        on_hand: after[step - 1],
        version: base + step as i64,
    };
    let meta_key = keys.stock_version.clone();
    let mirrored = |mut redis: commerce_tests::redis_link::TestRedis| {
        let meta_key = meta_key.clone();
        async move {
            let meta: BTreeMap<String, i64> = redis::cmd("HGETALL")
                .arg(&meta_key)
                .query_async(&mut redis)
                .await
                .unwrap();
            meta["max"]
        }
    };
    // Version 3 arrives first, then 2, 1 and 3 again (older or the same: nothing changes).
    for step in [3, 2, 2, 1, 3, 1] {
        inventory.commit(&holder, &[change(step)]).await.unwrap();
        assert_eq!(app.sellable("var-1").await, 94, "after version {step}");
    }
    assert_eq!(mirrored(redis.clone()).await, base + 3);
    inventory.commit(&holder, &[change(4)]).await.unwrap();
    assert_eq!(app.sellable("var-1").await, 90);
    // Version 5 never reaches Redis; version 6 carries it.
    inventory.commit(&holder, &[change(6)]).await.unwrap();
    inventory.commit(&holder, &[change(5)]).await.unwrap();
    assert_eq!(app.sellable("var-1").await, 79, "100 - 1 - 2 - 3 - 4 - 5 - 6");
    assert_eq!(mirrored(redis.clone()).await, base + 6);
    app.finish().await;
}
