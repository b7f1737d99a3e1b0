//! The cart store's promises, over HTTP against real Redis and PostgreSQL.

use std::time::Duration;

use commerce_core::ids::{BundleId, SetId};
use commerce_tests::{ADMIN_TOKEN, Caller, Reply, TestApp, at_once, customer_token, unit};
use serde_json::{Value, json};

fn quantities(cart: &Value) -> Vec<(String, i64)> {
    cart["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let what = l["variantId"]
                .as_str()
                .or(l["bundleId"].as_str())
                .unwrap()
                .to_owned();
            (what, l["quantity"].as_i64().unwrap())
        })
        .collect()
}

fn owned(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    pairs.iter().map(|(v, q)| (v.to_string(), *q)).collect()
}

fn bearer(customer: &str) -> String {
    format!("Bearer {}", customer_token(customer))
}

#[tokio::test]
async fn an_anonymous_cart_adds_sets_and_removes_lines() {
    let app = TestApp::spawn().await;
    app.seed(5).await;
    let cart = app.new_cart().await;
    assert_eq!(cart.len(), 32, "cart ids carry 128 random bits");
    assert!(cart.bytes().all(|b| b.is_ascii_hexdigit()));

    let items = format!("/v1/carts/{cart}/items");
    app.post(&items, unit("var-1", 2)).await;
    let reply = app.post(&items, unit("var-1", 3)).await;
    assert_eq!(
        quantities(&reply.body),
        owned(&[("var-1", 5)]),
        "adding a variant again adds to its line"
    );
    let reply = app.post(&items, unit("var-2", 1)).await;
    assert_eq!((reply.status, reply.body["version"].as_i64()), (200, Some(3)));
    assert_eq!(quantities(&reply.body), owned(&[("var-1", 5), ("var-2", 1)]));
    assert!(reply.body["expiresAt"].as_str().unwrap().ends_with('Z'));
    let line_1 = reply.body["lines"][0]["lineId"].as_str().unwrap().to_owned();
    let line_2 = reply.body["lines"][1]["lineId"].as_str().unwrap().to_owned();

    let set = app
        .call(
            "PATCH",
            &format!("{items}/{line_1}"),
            Some(json!({"quantity": 7})),
            Caller::Anonymous,
        )
        .await;
    assert_eq!(
        quantities(&set.body),
        owned(&[("var-1", 7), ("var-2", 1)]),
        "PATCH sets the quantity"
    );
    let zero = app
        .call(
            "PATCH",
            &format!("{items}/{line_1}"),
            Some(json!({"quantity": 0})),
            Caller::Anonymous,
        )
        .await;
    assert_eq!(
        quantities(&zero.body),
        owned(&[("var-2", 1)]),
        "quantity 0 removes the line"
    );
    let removed = app
        .call("DELETE", &format!("{items}/{line_2}"), None, Caller::Anonymous)
        .await;
    assert_eq!((removed.status, removed.body["version"].as_i64()), (200, Some(6)));
    assert_eq!(quantities(&removed.body), vec![]);
    let gone = app
        .call("DELETE", &format!("{items}/{line_2}"), None, Caller::Anonymous)
        .await;
    assert_eq!((gone.status, gone.code()), (404, "LINE_NOT_FOUND"));

    let got = app.get(&format!("/v1/carts/{cart}")).await;
    assert_eq!(
        (
            got.status,
            got.body["version"].as_i64(),
            got.body["currency"].as_str()
        ),
        (200, Some(6), Some("EUR"))
    );
    let missing = app.get("/v1/carts/0123456789abcdef0123456789abcdef").await;
    assert_eq!((missing.status, missing.code()), (404, "CART_NOT_FOUND"));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_to_one_cart_lose_no_update() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    let cart = app.new_cart().await;
    let statuses = at_once(60, |i| {
        let (http, base, cart) = (app.http.clone(), app.base.clone(), cart.clone());
        async move {
            let variant = if i % 2 == 0 { "var-1" } else { "var-2" };
            let req = http
                .post(format!("{base}/v1/carts/{cart}/items"))
                .header("content-type", "application/json")
                .body(unit(variant, 1).to_string());
            TestApp::reply(req).await.status
        }
    })
    .await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let got = app.get(&format!("/v1/carts/{cart}")).await;
    let mut sorted = quantities(&got.body);
    sorted.sort();
    assert_eq!(sorted, owned(&[("var-1", 30), ("var-2", 30)]));
    assert_eq!(got.body["version"], 60);
    app.finish().await;
}

#[tokio::test]
async fn if_match_refuses_a_change_to_a_cart_that_moved_on() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    let cart = app.new_cart().await;
    let items = format!("/v1/carts/{cart}/items");
    let first = app
        .call_with("POST", &items, Some(unit("var-1", 1)), &[("if-match", "\"0\"")])
        .await;
    assert_eq!(first.status, 200, "{first:?}");
    let before = app.redis_snapshot_of(":cart:").await;
    let stale = app
        .call_with("POST", &items, Some(unit("var-2", 1)), &[("if-match", "\"0\"")])
        .await;
    assert_eq!((stale.status, stale.code()), (412, "VERSION_MISMATCH"));
    assert_eq!(
        app.redis_snapshot_of(":cart:").await,
        before,
        "a refused change wrote"
    );
    let fresh = app
        .call_with("POST", &items, Some(unit("var-2", 1)), &[("if-match", "W/\"1\"")])
        .await;
    assert_eq!((fresh.status, fresh.body["version"].as_i64()), (200, Some(2)));
    app.finish().await;
}

#[tokio::test]
async fn cart_limits_are_enforced_with_422() {
    let app = TestApp::spawn_with(|c| c.set("cart_max_lines", "2").set("cart_max_line_quantity", "10")).await;
    app.seed(3).await;
    let cart = app.new_cart().await;
    let items = format!("/v1/carts/{cart}/items");
    app.post(&items, unit("var-1", 10)).await;
    app.post(&items, unit("var-2", 1)).await;
    let before = app.redis_snapshot_of(":cart:").await;
    let third = app.post(&items, unit("var-3", 1)).await;
    assert_eq!((third.status, third.code()), (422, "CART_LIMIT"));
    let more = app.post(&items, unit("var-1", 1)).await;
    assert_eq!((more.status, more.code()), (422, "CART_LIMIT"));
    assert_eq!(app.redis_snapshot_of(":cart:").await, before);
    app.finish().await;
}

#[tokio::test]
async fn a_variant_unknown_to_the_catalog_is_refused() {
    let app = TestApp::spawn().await;
    app.seed(1).await;
    let cart = app.new_cart().await;
    let before = app.redis_snapshot().await;
    let reply = app
        .post(&format!("/v1/carts/{cart}/items"), unit("no-such-variant", 1))
        .await;
    assert_eq!((reply.status, reply.code()), (422, "UNKNOWN_VARIANT"));
    assert_eq!(app.redis_snapshot().await, before);
    app.finish().await;
}

#[tokio::test]
async fn customer_carts_need_the_customers_own_token() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    let path = "/v1/customers/alice/cart";
    let expired = commerce_core::auth::sign(&json!({"sub": "alice", "exp": 1}), commerce_tests::JWT_SECRET);
    let foreign = commerce_core::auth::sign(&json!({"sub": "alice"}), "not-our-secret");
    let critical = commerce_core::auth::sign_with_header(
        &json!({"alg": "HS256", "crit": ["exp"]}),
        &json!({"sub": "alice", "exp": commerce_core::auth::now_s() + 3600}),
        commerce_tests::JWT_SECRET,
    );
    for (auth, status) in [
        (None, 401),
        (Some(format!("Bearer {expired}")), 401),
        (Some(format!("Bearer {foreign}")), 401),
        (Some(format!("Bearer {critical}")), 401),
        (Some("Bearer garbage".to_owned()), 401),
        (Some(bearer("bob")), 403),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let reply = app.call_with("GET", path, None, &headers).await;
        assert_eq!(reply.status, status, "{auth:?}");
        let add = app
            .call_with("POST", &format!("{path}/items"), Some(unit("var-1", 1)), &headers)
            .await;
        assert_eq!(add.status, status, "{auth:?}");
    }
    assert!(
        app.redis_keys()
            .await
            .iter()
            .all(|k| !k.contains("cart:customer")),
        "a refused call wrote"
    );

    // A time with a fraction of a second is a time (RFC 7519 NumericDate).
    let fractional = commerce_core::auth::sign(
        &json!({"sub": "alice", "exp": commerce_core::auth::now_s() as f64 + 3600.5}),
        commerce_tests::JWT_SECRET,
    );
    let read = app
        .call_with(
            "GET",
            path,
            None,
            &[("authorization", &format!("Bearer {fractional}"))],
        )
        .await;
    assert_eq!(read.status, 200, "{read:?}");

    let alice = bearer("alice");
    let auth = [("authorization", alice.as_str())];
    let empty = app.call_with("GET", path, None, &auth).await;
    assert_eq!((empty.status, empty.body["version"].as_i64()), (200, Some(0)));
    let added = app
        .call_with("POST", &format!("{path}/items"), Some(unit("var-1", 2)), &auth)
        .await;
    assert_eq!(
        (added.status, added.body["customerId"].as_str()),
        (200, Some("alice"))
    );
    let line = added.body["lines"][0]["lineId"].as_str().unwrap().to_owned();
    let set = app
        .call_with(
            "PATCH",
            &format!("{path}/items/{line}"),
            Some(json!({"quantity": 4})),
            &auth,
        )
        .await;
    assert_eq!(quantities(&set.body), owned(&[("var-1", 4)]));
    let removed = app
        .call_with("DELETE", &format!("{path}/items/{line}"), None, &auth)
        .await;
    assert_eq!(quantities(&removed.body), vec![]);
    app.finish().await;
}

async fn merge(app: &TestApp, customer: &str, cart: &str) -> Reply {
    let token = bearer(customer);
    app.call_with(
        "POST",
        &format!("/v1/customers/{customer}/cart/merge"),
        Some(json!({ "cartId": cart })),
        &[("authorization", token.as_str())],
    )
    .await
}

#[tokio::test]
async fn merging_on_sign_in_adds_per_line_and_removes_the_anonymous_cart() {
    let app = TestApp::spawn().await;
    app.seed(20).await;
    let cart = app.new_cart().await;
    let bundle =
        json!({"bundleId": "bundle-3", "choices": {"first": ["var-1"], "second": ["var-5"]}, "quantity": 1});
    app.post(&format!("/v1/carts/{cart}/items"), unit("var-1", 2))
        .await;
    app.post(&format!("/v1/carts/{cart}/items"), bundle).await;
    let token = bearer("carol");
    let auth = [("authorization", token.as_str())];
    for line in [unit("var-1", 1), unit("var-3", 1)] {
        app.call_with("POST", "/v1/customers/carol/cart/items", Some(line), &auth)
            .await;
    }

    let merged = merge(&app, "carol", &cart).await;
    assert_eq!(merged.status, 200, "{merged:?}");
    let expected = owned(&[("var-1", 3), ("var-3", 1), ("bundle-3", 1)]);
    assert_eq!(quantities(&merged.body), expected);
    assert_eq!(
        app.get(&format!("/v1/carts/{cart}")).await.status,
        404,
        "the anonymous cart stays"
    );
    let changed = app
        .post(&format!("/v1/carts/{cart}/items"), unit("var-2", 1))
        .await;
    assert_eq!(changed.status, 409, "a merged cart still takes changes");

    let replay = merge(&app, "carol", &cart).await;
    assert_eq!(
        (replay.status, quantities(&replay.body)),
        (200, expected),
        "a replayed merge added again"
    );
    let stolen = merge(&app, "mallory", &cart).await;
    assert_eq!(stolen.status, 409);
    app.finish().await;
}

/// A merge whose request ended between its claim and the customer's cart (a 503, a
/// crash) freezes the anonymous cart only for its lease, the longest a request may run:
/// within it the cart answers as being merged; past it the cart is its visitor's again
/// (changes, checkout, another customer's merge), not frozen for the cart's 30 days.
#[tokio::test]
async fn a_merge_cut_off_after_its_claim_frees_the_cart_after_its_lease() {
    let app = TestApp::spawn_with(|c| c.set("request_timeout_ms", "1000")).await;
    app.seed(4).await;
    let cart = app.new_cart().await;
    app.post(&format!("/v1/carts/{cart}/items"), unit("var-1", 1))
        .await;
    // What the claim leaves when nothing follows it (set as the claim script sets it).
    let mut redis = app.redis.clone();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let cut_off = |until_ms: i64| {
        redis::cmd("HSET")
            .arg(app.cart_key(&cart))
            .arg("merging")
            .arg("walter")
            .arg("merging_until")
            .arg(until_ms)
            .clone()
    };
    let _: () = cut_off(now_ms + 60_000).query_async(&mut redis).await.unwrap();
    let frozen = app
        .post(&format!("/v1/carts/{cart}/items"), unit("var-2", 1))
        .await;
    assert_eq!(
        (frozen.status, frozen.code()),
        (409, "CART_MERGED"),
        "within the lease"
    );

    let _: () = cut_off(now_ms - 1).query_async(&mut redis).await.unwrap();
    let added = app
        .post(&format!("/v1/carts/{cart}/items"), unit("var-2", 1))
        .await;
    assert_eq!(added.status, 200, "{added:?}");
    let _: () = cut_off(now_ms - 1).query_async(&mut redis).await.unwrap();
    let merged = merge(&app, "yara", &cart).await;
    assert_eq!(merged.status, 200, "another customer's merge: {merged:?}");
    assert_eq!(quantities(&merged.body), owned(&[("var-1", 1), ("var-2", 1)]));
    app.finish().await;
}

/// A merge the customer's cart refuses (another currency, a checkout under way) adds
/// nothing and leaves the anonymous cart the visitor's: not frozen as merged.
#[tokio::test]
async fn a_refused_merge_leaves_the_anonymous_cart_usable() {
    let app = TestApp::spawn().await;
    app.seed(4).await;
    let token = bearer("kate");
    let auth = [("authorization", token.as_str())];
    app.call_with(
        "POST",
        "/v1/customers/kate/cart/items",
        Some(unit("var-1", 1)),
        &auth,
    )
    .await;
    let created = app
        .call(
            "POST",
            "/v1/carts",
            Some(json!({"currency": "USD"})),
            Caller::Anonymous,
        )
        .await;
    let cart = created.body["cartId"].as_str().unwrap().to_owned();
    app.post(&format!("/v1/carts/{cart}/items"), unit("var-3", 1))
        .await;

    let refused = merge(&app, "kate", &cart).await;
    assert_eq!(
        (refused.status, refused.code()),
        (422, "CURRENCY_MISMATCH"),
        "{refused:?}"
    );
    let added = app
        .post(&format!("/v1/carts/{cart}/items"), unit("var-3", 1))
        .await;
    assert_eq!(added.status, 200, "the cart takes changes again: {added:?}");
    let elsewhere = merge(&app, "liam", &cart).await;
    assert_eq!(
        elsewhere.status, 200,
        "another customer may merge it: {elsewhere:?}"
    );
    assert_eq!(quantities(&elsewhere.body), owned(&[("var-3", 2)]));
    app.finish().await;
}

/// A merge is a change of the customer's cart: an `If-Match` naming another version of it
/// is 412 and merges nothing (the anonymous cart stays its visitor's); the version it has
/// (0 for a customer's cart never written) lets the merge through.
#[tokio::test]
async fn a_merge_with_a_stale_if_match_is_412_and_merges_nothing() {
    let app = TestApp::spawn().await;
    app.seed(4).await;
    let token = bearer("nina");
    let merge_expecting = |cart: String, version: i64| {
        let token = token.clone();
        let app = &app;
        async move {
            let if_match = format!("\"{version}\"");
            app.call_with(
                "POST",
                "/v1/customers/nina/cart/merge",
                Some(json!({ "cartId": cart })),
                &[("authorization", token.as_str()), ("if-match", if_match.as_str())],
            )
            .await
        }
    };
    let first = app.cart_with(&[("var-1", 1)]).await;
    let stale = merge_expecting(first.clone(), 3).await;
    assert_eq!(
        (stale.status, stale.code()),
        (412, "VERSION_MISMATCH"),
        "{stale:?}"
    );
    let customer = app
        .call_with(
            "GET",
            "/v1/customers/nina/cart",
            None,
            &[("authorization", token.as_str())],
        )
        .await;
    assert_eq!(
        (customer.body["version"].as_i64(), quantities(&customer.body)),
        (Some(0), vec![])
    );
    let added = app
        .post(&format!("/v1/carts/{first}/items"), unit("var-2", 1))
        .await;
    assert_eq!(added.status, 200, "the anonymous cart stays usable: {added:?}");
    let merged = merge_expecting(first, 0).await;
    assert_eq!(merged.status, 200, "{merged:?}");
    assert_eq!(quantities(&merged.body), owned(&[("var-1", 1), ("var-2", 1)]));
    let version = merged.body["version"].as_i64().unwrap();
    let second = app.cart_with(&[("var-3", 1)]).await;
    let behind = merge_expecting(second.clone(), 0).await;
    assert_eq!(behind.status, 412, "{behind:?}");
    let then = merge_expecting(second, version).await;
    assert_eq!(then.status, 200, "{then:?}");
    assert_eq!(then.body["version"].as_i64(), Some(version + 1));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_merges_add_each_line_once() {
    let app = TestApp::spawn().await;
    app.seed(3).await;
    let cart = app.new_cart().await;
    for (v, q) in [("var-1", 2), ("var-2", 5)] {
        app.post(&format!("/v1/carts/{cart}/items"), unit(v, q)).await;
    }
    let token = bearer("dave");
    app.call_with(
        "POST",
        "/v1/customers/dave/cart/items",
        Some(unit("var-1", 1)),
        &[("authorization", &token)],
    )
    .await;
    let merges = at_once(20, |_| {
        let (http, base, cart, token) = (app.http.clone(), app.base.clone(), cart.clone(), token.clone());
        async move {
            let req = http
                .post(format!("{base}/v1/customers/dave/cart/merge"))
                .header("authorization", token)
                .header("content-type", "application/json")
                .body(json!({ "cartId": cart }).to_string());
            TestApp::reply(req).await
        }
    })
    .await;
    for reply in merges {
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let got = app
        .call_with(
            "GET",
            "/v1/customers/dave/cart",
            None,
            &[("authorization", &token)],
        )
        .await;
    assert_eq!(quantities(&got.body), owned(&[("var-1", 3), ("var-2", 5)]));
    app.finish().await;
}

#[tokio::test]
async fn every_change_slides_the_carts_time_to_live() {
    let app = TestApp::spawn_with(|c| c.set("cart_ttl_seconds", "2")).await;
    app.seed(1).await;
    let cart = app.new_cart().await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), unit("var-1", 1))
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        app.get(&format!("/v1/carts/{cart}")).await.status,
        200,
        "the change did not slide the TTL"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        app.get(&format!("/v1/carts/{cart}")).await.status,
        404,
        "reading slid the TTL"
    );
    app.finish().await;
}

#[tokio::test]
async fn bundle_lines_must_follow_the_bundles_sets() {
    let app = TestApp::spawn().await;
    app.seed(20).await;
    let bundle = app.get("/v1/bundles/bundle-1").await;
    assert_eq!(bundle.status, 200, "{bundle:?}");
    assert_eq!(
        bundle.body["pricing"],
        json!({"kind": "fixed", "price": 4999, "currency": "EUR"})
    );
    assert_eq!(bundle.body["sets"][0]["setId"], "tops");
    assert_eq!(bundle.body["sets"][0]["choose"], 2);
    assert_eq!(
        bundle.body["sets"][1]["variantIds"],
        json!(["var-10", "var-11", "var-12", "var-9"])
    );
    assert_eq!(app.get("/v1/bundles/bundle-404").await.status, 404);

    let cart = app.new_cart().await;
    let items = format!("/v1/carts/{cart}/items");
    let line = |choices: Value| json!({"bundleId": "bundle-1", "choices": choices, "quantity": 1});
    let before = app.redis_snapshot_of(":cart:").await;
    for (choices, set) in [
        (json!({"tops": ["var-1"], "caps": ["var-9"]}), "tops"),
        (json!({"tops": ["var-1", "var-2"], "caps": ["var-1"]}), "caps"),
        (json!({"tops": ["var-1", "var-2"]}), "caps"),
        (
            json!({"tops": ["var-1", "var-2"], "caps": ["var-9"], "hats": ["var-3"]}),
            "hats",
        ),
        (json!({"tops": ["var-1", "var-1"], "caps": ["var-9"]}), "tops"),
    ] {
        let reply = app.post(&items, line(choices.clone())).await;
        assert_eq!(
            (reply.status, reply.code()),
            (422, "INVALID_BUNDLE_CHOICE"),
            "{choices}"
        );
        assert_eq!(reply.body["error"]["details"]["setId"], set, "{choices}");
    }
    let unknown = app
        .post(
            &items,
            json!({"bundleId": "bundle-404", "choices": {"a": ["var-1"]}, "quantity": 1}),
        )
        .await;
    assert_eq!((unknown.status, unknown.code()), (422, "UNKNOWN_BUNDLE"));
    assert_eq!(
        app.redis_snapshot_of(":cart:").await,
        before,
        "a refused line wrote"
    );

    let good = app
        .post(
            &items,
            line(json!({"caps": ["var-9"], "tops": ["var-2", "var-1"]})),
        )
        .await;
    assert_eq!(good.status, 200, "{good:?}");
    let again = app
        .post(
            &items,
            line(json!({"tops": ["var-1", "var-2"], "caps": ["var-9"]})),
        )
        .await;
    assert_eq!(
        quantities(&again.body),
        owned(&[("bundle-1", 2)]),
        "the same choices are the same line"
    );
    assert_eq!(
        again.body["lines"][0]["choices"],
        json!({"caps": ["var-9"], "tops": ["var-1", "var-2"]})
    );
    app.finish().await;
}

/// A choice set's eligibility lost from Redis alone (evicted, or a partial loss) while
/// the rest of the bundle stays cached is reloaded from PostgreSQL, not read as "nothing
/// is eligible"; a set that has no eligible variant at all still refuses every choice.
#[tokio::test]
async fn a_bundle_set_lost_alone_is_reloaded_not_read_as_empty() {
    let app = TestApp::spawn().await;
    app.seed(20).await;
    let cart = app.new_cart().await;
    let items = format!("/v1/carts/{cart}/items");
    let line = json!({"bundleId": "bundle-1", "choices": {"tops": ["var-1", "var-2"], "caps": ["var-9"]}, "quantity": 1});
    assert_eq!(app.post(&items, line.clone()).await.status, 200);
    let tops = app
        .keys()
        .bundle(&BundleId::parse("bundle-1").unwrap())
        .eligibility(&SetId::parse("tops").unwrap());
    let mut redis = app.redis.clone();
    let dropped: i64 = redis::cmd("DEL")
        .arg(&tops)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(dropped, 1);
    let again = app.post(&items, line.clone()).await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["lines"][0]["quantity"], 2);
    let back: i64 = redis::cmd("SCARD")
        .arg(&tops)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(back >= 2, "the set was not reloaded: {back}");
    // A set PostgreSQL gives no variant: reloaded once, then the choice is refused.
    app.pg
        .batch_execute("DELETE FROM bundle_set_variants WHERE bundle_id = 'bundle-1' AND set_id = 'tops'")
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&tops)
        .query_async(&mut redis)
        .await
        .unwrap();
    let refused = app.post(&items, line).await;
    assert_eq!(
        (
            refused.status,
            refused.code(),
            refused.body["error"]["details"]["setId"].as_str()
        ),
        (422, "INVALID_BUNDLE_CHOICE", Some("tops")),
        "{refused:?}"
    );
    app.finish().await;
}

#[tokio::test]
async fn an_invalidated_bundle_is_reloaded_from_postgres() {
    let app = TestApp::spawn().await;
    app.seed(20).await;
    let cart = app.new_cart().await;
    let items = format!("/v1/carts/{cart}/items");
    let line = json!({"bundleId": "bundle-1", "choices": {"tops": ["var-1", "var-2"], "caps": ["var-13"]}, "quantity": 1});
    assert_eq!(app.post(&items, line.clone()).await.status, 422);
    app.pg
        .batch_execute("INSERT INTO bundle_set_variants VALUES ('bundle-1', 'caps', 'var-13')")
        .await
        .unwrap();
    assert_eq!(
        app.post(&items, line.clone()).await.status,
        422,
        "the cache was not used"
    );
    let refused = app
        .call(
            "POST",
            "/v1/admin/bundles/bundle-1/invalidate",
            None,
            Caller::Anonymous,
        )
        .await;
    assert_eq!(refused.status, 401);
    let reply = app
        .call_with(
            "POST",
            "/v1/admin/bundles/bundle-1/invalidate",
            None,
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(app.post(&items, line).await.status, 200);
    // An active bundle without sets is no bundle a shopper can choose: skipped, not fatal.
    app.pg
        .batch_execute(
            "INSERT INTO bundles (id, name, pricing_kind, fixed_price_minor, currency)
             VALUES ('aaa-no-sets', 'No sets', 'fixed', 1000, 'EUR')",
        )
        .await
        .unwrap();
    let (warmed, skipped) =
        commerce_core::bundle::Bundles::new(&app.app.redis, &app.app.sql, &app.app.keys, 60)
            .warm(|_| {})
            .await
            .unwrap();
    assert_eq!(warmed, 3);
    let skipped: Vec<&str> = skipped.iter().map(|b| b.as_str()).collect();
    assert_eq!(skipped, ["aaa-no-sets"]);
    // Warming reloads from PostgreSQL: a change made there since is what is cached after.
    app.pg
        .batch_execute("UPDATE bundles SET name = 'Renamed' WHERE id = 'bundle-1'")
        .await
        .unwrap();
    commerce_core::bundle::Bundles::new(&app.app.redis, &app.app.sql, &app.app.keys, 60)
        .warm(|_| {})
        .await
        .unwrap();
    let shown = app.get("/v1/bundles/bundle-1").await;
    assert_eq!(shown.body["name"], "Renamed", "{shown:?}");
    app.finish().await;
}

/// Lists longer than a Redis script can unpack at once (about 8000 values): a bundle set
/// of 9000 eligible variants is cached whole, and a cart naming 9000 distinct variants is
/// quoted and checked out. On a Redis Cluster that checkout holds its 9000 variants one
/// call each, which a debug build on a slow 2-core machine took past the default 17 s
/// request deadline (CI of d9e4cb3): the deadline is not what this test is about, so it
/// is a minute here.
#[tokio::test]
async fn lists_longer_than_a_script_unpacks_at_once_are_read_and_written_whole() {
    let app = TestApp::spawn_with(|c| c.set("request_timeout_ms", "60000")).await;
    app.seed(2).await;
    app.pg
        .batch_execute(
            "INSERT INTO products (id, name) VALUES ('many', 'Many');
             INSERT INTO variants (id, product_id, sku, name, base_price_minor, currency)
                 SELECT 'm-' || i, 'many', 'M-' || i, 'm', 100, 'EUR' FROM generate_series(0, 8999) i;
             INSERT INTO inventory_levels (variant_id, on_hand)
                 SELECT 'm-' || i, 5 FROM generate_series(0, 8999) i;
             INSERT INTO bundles (id, name, pricing_kind, percent_off_bp) VALUES ('wide', 'Wide', 'percent_off', 1000);
             INSERT INTO bundle_sets (bundle_id, set_id, choose) VALUES ('wide', 'any', 100);
             INSERT INTO bundle_set_variants SELECT 'wide', 'any', 'm-' || i FROM generate_series(0, 8999) i;",
        )
        .await
        .unwrap();
    app.publish_rulesets().await;
    let shown = app.get("/v1/bundles/wide").await;
    assert_eq!(shown.status, 200, "{:?}", shown.body["error"]);
    let mut redis = app.redis.clone();
    let eligible_key = app.key("bundle:{wide}:eligibility:any");
    let eligible: i64 = redis::AsyncCommands::scard(&mut redis, &eligible_key)
        .await
        .unwrap();
    let ttl: i64 = redis::AsyncCommands::pttl(&mut redis, &eligible_key)
        .await
        .unwrap();
    assert_eq!(eligible, 9000);
    assert!(ttl > 0, "{ttl}");

    let cart = app.new_cart().await;
    for line in 0..90 {
        let choices: Vec<String> = (line * 100..line * 100 + 100).map(|i| format!("m-{i}")).collect();
        let added = app
            .post(
                &format!("/v1/carts/{cart}/items"),
                json!({"bundleId": "wide", "choices": {"any": choices}, "quantity": 1}),
            )
            .await;
        assert_eq!(added.status, 200, "line {line}: {:?}", added.body["error"]);
    }
    let quoted = app.post("/v1/pricing/quote", json!({ "cartId": cart })).await;
    assert_eq!(quoted.status, 200, "{:?}", quoted.body["error"]);
    assert_eq!(quoted.body["total"], 810_000);
    let started = app.start_checkout(&cart, "wide").await;
    assert_eq!(started.status, 201, "{:?}", started.body["error"]);
    assert_eq!(started.body["total"], 810_000);
    assert_eq!(app.sellable("m-8999").await, 4);
    app.finish().await;
}

#[tokio::test]
async fn a_retried_add_with_an_idempotency_key_adds_once() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    let cart = app.new_cart().await;
    let items = format!("/v1/carts/{cart}/items");
    for _ in 0..3 {
        let reply = app
            .call_with(
                "POST",
                &items,
                Some(unit("var-1", 2)),
                &[("idempotency-key", "add-1")],
            )
            .await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(quantities(&reply.body), owned(&[("var-1", 2)]));
    }
    let other = app
        .call_with(
            "POST",
            &items,
            Some(unit("var-2", 1)),
            &[("idempotency-key", "add-1")],
        )
        .await;
    assert_eq!((other.status, other.code()), (422, "IDEMPOTENCY_KEY_REUSED"));
    let next = app
        .call_with(
            "POST",
            &items,
            Some(unit("var-1", 2)),
            &[("idempotency-key", "add-2")],
        )
        .await;
    assert_eq!(quantities(&next.body), owned(&[("var-1", 4)]));
    app.finish().await;
}

/// An add refused for what it names (a variant the catalog does not have, bundle choices
/// the bundle does not allow) changed nothing, like a malformed one: its key is not
/// claimed, so the corrected add may use it, and a refusal that followed the state (a
/// locked cart) is still answered again.
#[tokio::test]
async fn an_add_refused_for_what_it_names_leaves_its_key_to_the_corrected_add() {
    let app = TestApp::spawn().await;
    app.seed(20).await;
    let cart = app.new_cart().await;
    let items = format!("/v1/carts/{cart}/items");
    let add = |body: Value, key: &'static str| {
        let items = items.clone();
        let app = &app;
        async move {
            app.call_with("POST", &items, Some(body), &[("idempotency-key", key)])
                .await
        }
    };
    let typo = add(unit("var-01", 1), "add-1").await;
    assert_eq!((typo.status, typo.code()), (422, "UNKNOWN_VARIANT"), "{typo:?}");
    let bad_choice = add(
        json!({ "bundleId": "bundle-1", "choices": { "tops": ["var-1"] }, "quantity": 1 }),
        "add-2",
    )
    .await;
    assert_eq!(
        (bad_choice.status, bad_choice.code()),
        (422, "INVALID_BUNDLE_CHOICE"),
        "{bad_choice:?}"
    );
    assert!(
        !app.redis_keys().await.iter().any(|k| k.contains(":idempotency:")),
        "a refused add claimed its key"
    );
    let corrected = add(unit("var-1", 1), "add-1").await;
    assert_eq!(corrected.status, 200, "{corrected:?}");
    assert_eq!(quantities(&corrected.body), owned(&[("var-1", 1)]));
    let again = add(unit("var-1", 1), "add-1").await;
    assert_eq!(
        again.body, corrected.body,
        "the corrected add is kept and replayed"
    );
    assert_eq!(
        quantities(&app.get(&format!("/v1/carts/{cart}")).await.body),
        owned(&[("var-1", 1)])
    );
    app.finish().await;
}

#[tokio::test]
async fn a_new_carts_idempotency_key_replays_it_only_to_the_client_that_sent_it() {
    // Behind a trusted proxy, so that two clients can be told apart on 127.0.0.1.
    let app = TestApp::spawn_with(|c| c.set("trusted_proxies", "127.0.0.1")).await;
    let shop = &app;
    let create = |client: &'static str| async move {
        shop.call_with(
            "POST",
            "/v1/carts",
            None,
            &[("idempotency-key", "my-cart"), ("x-forwarded-for", client)],
        )
        .await
    };
    let first = create("198.51.100.1").await;
    let again = create("198.51.100.1").await;
    let stranger = create("203.0.113.9").await;
    for reply in [&first, &again, &stranger] {
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    assert_eq!(
        again.body["cartId"], first.body["cartId"],
        "a retry gets its cart"
    );
    assert_ne!(
        stranger.body["cartId"], first.body["cartId"],
        "another client's same key was answered with the first client's cart"
    );
    // Two hosts of one IPv6 /64 share a rate limit, not a cart.
    let (one, other) = (
        create("2001:db8:1:2::aaaa").await,
        create("2001:db8:1:2::bbbb").await,
    );
    assert_eq!((one.status, other.status), (201, 201));
    assert_ne!(one.body["cartId"], other.body["cartId"]);
    app.finish().await;
}

#[tokio::test]
async fn a_merge_caps_quantities_and_drops_the_lines_beyond_the_line_limit() {
    let app = TestApp::spawn_with(|c| c.set("cart_max_lines", "2").set("cart_max_line_quantity", "5")).await;
    app.seed(3).await;
    let cart = app.new_cart().await;
    let mut anonymous = Vec::new();
    for (variant, quantity) in [("var-1", 3), ("var-3", 1)] {
        let added = app
            .post(&format!("/v1/carts/{cart}/items"), unit(variant, quantity))
            .await;
        assert_eq!(added.status, 200, "{added:?}");
        anonymous = added.body["lines"].as_array().unwrap().clone();
    }
    let line_of = |variant: &str| {
        anonymous
            .iter()
            .find(|l| l["variantId"] == variant)
            .map(|l| l["lineId"].clone())
            .unwrap()
    };
    let token = bearer("dora");
    let auth = [("authorization", token.as_str())];
    for (variant, quantity) in [("var-1", 4), ("var-2", 1)] {
        let own = app
            .call_with(
                "POST",
                "/v1/customers/dora/cart/items",
                Some(unit(variant, quantity)),
                &auth,
            )
            .await;
        assert_eq!(own.status, 200, "{own:?}");
    }

    let merged = merge(&app, "dora", &cart).await;
    assert_eq!(merged.status, 200, "{merged:?}");
    // var-1 up to the quantity limit (4 + 1 of the 3); var-3 would be a third line.
    assert_eq!(quantities(&merged.body), owned(&[("var-1", 5), ("var-2", 1)]));
    assert_eq!(
        merged.body["droppedLineIds"],
        json!([line_of("var-3")]),
        "{merged:?}"
    );
    // Two of var-1's three units did not fit: the answer says so, never silently.
    assert_eq!(
        merged.body["cappedLineIds"],
        json!([line_of("var-1")]),
        "{merged:?}"
    );
    // A retry (its first answer lost) answers the same, and adds nothing.
    let again = merge(&app, "dora", &cart).await;
    assert_eq!(again.status, 200, "{again:?}");
    for field in ["lines", "droppedLineIds", "cappedLineIds", "version"] {
        assert_eq!(again.body[field], merged.body[field], "{field}: {again:?}");
    }
    app.finish().await;
}
