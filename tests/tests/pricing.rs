//! The pricing store's promises: prices per customer group, discounts, versioned
//! publishing that a quote sees wholly or not at all, over HTTP against real Redis and
//! PostgreSQL.

use commerce_core::keys::RulesetKind;
use commerce_tests::{ADMIN_TOKEN, Caller, JWT_SECRET, Reply, TestApp, unit};
use redis::AsyncCommands;
use serde_json::{Value, json};

/// A catalog whose prices are easy to check: var-1 costs 10.00, var-2 20.00, … (EUR).
async fn priced_app() -> TestApp {
    let app = TestApp::spawn().await;
    app.seed(20).await;
    app.pg
        .batch_execute(
            "UPDATE variants SET base_price_minor = substr(id, 5)::bigint * 1000;
             INSERT INTO price_lists (id, currency, customer_group, parent_id, priority) VALUES
                 ('all', 'EUR', NULL, NULL, 0),
                 ('trade', 'EUR', 'trade', 'all', 10),
                 ('trade-usd', 'USD', 'trade', NULL, 20);
             INSERT INTO price_list_entries VALUES
                 ('all', 'var-1', 1, 900),
                 ('all', 'var-3', 1, 2500),
                 ('trade', 'var-2', 1, 1500), ('trade', 'var-2', 10, 1200),
                 ('trade-usd', 'var-1', 1, 1);
             INSERT INTO discounts (id, kind, basis_points, amount_minor, currency, target, threshold_minor, priority, exclusive) VALUES
                 ('ten-off-var-1', 'percentage', 1000, NULL, NULL, 'variants', 0, 10, false),
                 ('five-eur-over-50', 'fixed', NULL, 500, 'EUR', 'order', 5000, 5, false);
             INSERT INTO discount_variants VALUES ('ten-off-var-1', 'var-1');",
        )
        .await
        .unwrap();
    publish(&app, "pricing").await;
    publish(&app, "discounts").await;
    app
}

async fn publish(app: &TestApp, kind: &str) -> Reply {
    let reply = app
        .call("POST", &format!("/v1/admin/{kind}/publish"), None, Caller::Admin)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
}

fn lines(items: &[(&str, i64)]) -> Value {
    let lines: Vec<Value> = items
        .iter()
        .map(|(v, q)| json!({"variantId": v, "quantity": q}))
        .collect();
    json!({ "lines": lines })
}

async fn quote(app: &TestApp, body: Value, auth: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
    app.call_with("POST", "/v1/pricing/quote", Some(body), &headers)
        .await
}

#[tokio::test]
async fn a_quote_applies_lists_breaks_discounts_and_totals() {
    let app = priced_app().await;
    let reply = quote(&app, lines(&[("var-1", 2), ("var-2", 1), ("var-3", 1)]), None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let q = &reply.body;
    // var-1: list 'all' 9.00 × 2 = 18.00, 10 % off → 1.80; var-2: base 20.00; var-3: 'all' 25.00.
    assert_eq!(q["lines"][0]["unitPrice"], 900);
    assert_eq!(q["lines"][0]["priceListId"], "all");
    assert_eq!(
        q["lines"][0]["discounts"],
        json!([{"discountId": "ten-off-var-1", "amount": 180}])
    );
    assert_eq!(
        (
            q["lines"][1]["unitPrice"].as_i64(),
            q["lines"][1]["priceListId"].as_str()
        ),
        (Some(2000), Some("base"))
    );
    assert_eq!(q["subtotal"], 1800 + 2000 + 2500);
    assert_eq!(
        q["orderDiscounts"],
        json!([{"discountId": "five-eur-over-50", "amount": 500}])
    );
    assert_eq!(q["discountTotal"], 680);
    assert_eq!(q["total"], 6300 - 680);
    assert_eq!(q["currency"], "EUR");
    assert_eq!(q["versions"], json!({"pricing": 1, "discounts": 1}));

    // The trade group (from the token): its own list, its quantity break, then the parent.
    let token = commerce_core::auth::sign(
        &json!({"sub": "t1", "group": "trade", "exp": commerce_core::auth::now_s() + 3600}),
        JWT_SECRET,
    );
    let trade = quote(
        &app,
        lines(&[("var-2", 10), ("var-1", 1)]),
        Some(&format!("Bearer {token}")),
    )
    .await;
    assert_eq!(trade.body["lines"][0]["unitPrice"], 1200, "{:?}", trade.body);
    assert_eq!(trade.body["lines"][0]["priceListId"], "trade");
    assert_eq!(
        trade.body["lines"][1]["priceListId"], "all",
        "the parent list was not walked"
    );

    // Two lines of one variant are one line, as in a cart: 5 + 5 reach the break at 10.
    let split = quote(
        &app,
        lines(&[("var-2", 5), ("var-1", 1), ("var-2", 5)]),
        Some(&format!("Bearer {token}")),
    )
    .await;
    let merged = split.body["lines"].as_array().unwrap();
    assert_eq!(merged.len(), 2, "{:?}", split.body);
    assert_eq!(
        (
            &merged[0]["lineId"],
            &merged[0]["quantity"],
            &merged[0]["unitPrice"]
        ),
        (&trade.body["lines"][0]["lineId"], &json!(10), &json!(1200))
    );
    assert_eq!(split.body["total"], trade.body["total"]);
    let too_many = quote(
        &app,
        lines(&[("var-2", 100_000), ("var-2", 1)]),
        Some(&format!("Bearer {token}")),
    )
    .await;
    assert_eq!((too_many.status, too_many.code()), (400, "INVALID_QUANTITY"));
    app.finish().await;
}

#[tokio::test]
async fn only_the_admin_may_name_a_customer_group() {
    let app = priced_app().await;
    let mut body = lines(&[("var-2", 1)]);
    body["customerGroup"] = json!("trade");
    let anonymous = quote(&app, body.clone(), None).await;
    assert_eq!(anonymous.status, 403);
    let token = commerce_core::auth::sign(
        &json!({"sub": "c1", "exp": commerce_core::auth::now_s() + 3600}),
        JWT_SECRET,
    );
    assert_eq!(
        quote(&app, body.clone(), Some(&format!("Bearer {token}")))
            .await
            .status,
        403
    );
    let admin = quote(&app, body, Some(&format!("Bearer {ADMIN_TOKEN}"))).await;
    assert_eq!(
        (admin.status, admin.body["lines"][0]["unitPrice"].as_i64()),
        (200, Some(1500))
    );
    assert_eq!(
        quote(&app, lines(&[("var-2", 1)]), Some("Bearer forged"))
            .await
            .status,
        401
    );
    app.finish().await;
}

#[tokio::test]
async fn a_cart_is_quoted_in_its_currency_and_mixing_currencies_is_refused() {
    let app = priced_app().await;
    let bundle = json!({"bundleId": "bundle-1", "choices": {"tops": ["var-1", "var-2"], "caps": ["var-9"]}, "quantity": 1});
    let cart = app.cart_with_lines(&[unit("var-3", 2), bundle]).await;
    let reply = quote(&app, json!({ "cartId": cart }), None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body["lines"][1]["unitPrice"], 4999,
        "the fixed bundle price"
    );
    assert_eq!(reply.body["subtotal"], 5000 + 4999);
    // Each line names what it prices, as the cart's line does.
    for (line, field, id) in [(0, "variantId", "var-3"), (1, "bundleId", "bundle-1")] {
        assert_eq!(reply.body["lines"][line][field], id, "{:?}", reply.body);
    }
    assert!(reply.body["lines"][0].get("bundleId").is_none());
    assert!(reply.body["lines"][1].get("variantId").is_none());
    // The cart's own currency may be named; another one with it is mixing two.
    let named = quote(&app, json!({ "cartId": cart, "currency": "EUR" }), None).await;
    assert_eq!(named.body, reply.body);
    let other = quote(&app, json!({ "cartId": cart, "currency": "USD" }), None).await;
    assert_eq!(
        (other.status, other.code()),
        (422, "CURRENCY_MISMATCH"),
        "{other:?}"
    );
    let not_a_code = quote(&app, json!({ "cartId": cart, "currency": 978 }), None).await;
    assert_eq!((not_a_code.status, not_a_code.code()), (400, "INVALID_CURRENCY"));

    let usd = app.post("/v1/carts", json!({"currency": "USD"})).await.body["cartId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.post(
        &format!("/v1/carts/{usd}/items"),
        json!({"variantId": "var-3", "quantity": 1}),
    )
    .await;
    let mixed = quote(&app, json!({ "cartId": usd }), None).await;
    assert_eq!((mixed.status, mixed.code()), (422, "CURRENCY_MISMATCH"));
    app.finish().await;
}

#[tokio::test]
async fn quoting_before_any_publish_is_a_conflict() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    let reply = quote(&app, lines(&[("var-1", 1)]), None).await;
    assert_eq!((reply.status, reply.code()), (409, "RULESET_NOT_PUBLISHED"));
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_publish_racing_fifty_quotes_gives_each_one_whole_version() {
    let app = priced_app().await;
    // Version 2 doubles every base price and raises the list prices.
    app.pg
        .batch_execute(
            "UPDATE variants SET base_price_minor = base_price_minor * 2;
             UPDATE price_list_entries SET unit_price_minor = unit_price_minor * 2;",
        )
        .await
        .unwrap();
    let body = lines(&[("var-1", 1), ("var-2", 1), ("var-3", 1), ("var-4", 1)]);
    let quotes: Vec<_> = (0..50)
        .map(|_| {
            let (http, base, body) = (app.http.clone(), app.base.clone(), body.clone());
            tokio::spawn(async move {
                let req = http
                    .post(format!("{base}/v1/pricing/quote"))
                    .header("content-type", "application/json")
                    .body(body.to_string());
                TestApp::reply(req).await
            })
        })
        .collect();
    let published = publish(&app, "pricing").await;
    assert_eq!(published.body["version"], 2);
    let mut seen = std::collections::BTreeSet::new();
    for q in quotes {
        let reply = q.await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        let version = reply.body["versions"]["pricing"].as_i64().unwrap();
        let factor = if version == 1 { 1 } else { 2 };
        let units: Vec<i64> = reply.body["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["unitPrice"].as_i64().unwrap())
            .collect();
        assert_eq!(
            units,
            vec![900 * factor, 2000 * factor, 2500 * factor, 4000 * factor],
            "a mix in version {version}"
        );
        seen.insert(version);
    }
    assert!(!seen.is_empty());
    let after = quote(&app, body, None).await;
    assert_eq!(after.body["versions"]["pricing"], 2);
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_publishes_at_once_build_two_clean_versions_and_only_move_forward() {
    let app = priced_app().await;
    let (a, b) = tokio::join!(publish(&app, "pricing"), publish(&app, "pricing"));
    let mut versions = [
        a.body["version"].as_i64().unwrap(),
        b.body["version"].as_i64().unwrap(),
    ];
    versions.sort();
    assert_eq!(versions, [2, 3]);
    let current = quote(&app, lines(&[("var-1", 1)]), None).await;
    assert_eq!(current.body["versions"]["pricing"], 3);
    assert_eq!(current.body["lines"][0]["unitPrice"], 900);

    // The replaced versions expire; the current one does not.
    let mut redis = app.redis.clone();
    for (version, expect_ttl) in [(1, true), (2, true), (3, false)] {
        // `pricing:ruleset-bundle-v2:{N}:prices`.
        let key = app.keys().ruleset_keys(RulesetKind::Pricing, version)[1].clone();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(ttl > 0, expect_ttl, "{key}: {ttl}");
        if expect_ttl {
            assert!(
                ttl <= (3600 + 600) * 1000,
                "{key} lives longer than a checkout needs"
            );
        }
    }
    app.finish().await;
}

#[tokio::test]
async fn a_publish_is_announced_on_its_channel() {
    let app = priced_app().await;
    // SUBSCRIBE is no command of the app's user: listen as the admin.
    let client = commerce_tests::redis_client(&commerce_tests::admin_redis_url());
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(app.keys().ruleset_channel(RulesetKind::Discounts))
        .await
        .unwrap();
    publish(&app, "discounts").await;
    let message = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        use futures_util::StreamExt;
        pubsub.on_message().next().await
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(message.get_payload::<i64>().unwrap(), 2);
    app.finish().await;
}

/// A publish retried with its Idempotency-Key answers the version it built, and builds no
/// other; without a key (or with another) each publish builds the next version.
#[tokio::test]
async fn a_publish_retried_with_its_idempotency_key_builds_one_version() {
    let app = priced_app().await;
    let send = |key: &'static str| {
        let admin = format!("Bearer {ADMIN_TOKEN}");
        let app = &app;
        async move {
            app.call_with(
                "POST",
                "/v1/admin/pricing/publish",
                None,
                &[("authorization", admin.as_str()), ("idempotency-key", key)],
            )
            .await
        }
    };
    let first = send("publish-1").await;
    assert_eq!(
        (first.status, &first.body["version"]),
        (200, &json!(2)),
        "{first:?}"
    );
    let again = send("publish-1").await;
    assert_eq!((again.status, &again.body), (200, &first.body), "{again:?}");
    let other = send("publish-2").await;
    assert_eq!(other.body["version"], 3, "{other:?}");
    assert_eq!(publish(&app, "pricing").await.body["version"], 4);
    app.finish().await;
}

/// A discount pointer or one hash of a version lost alone (deleted by hand, a partial
/// restore) is republished from PostgreSQL by the next quote, never read as "no discounts"
/// or "no price": what is charged stays what PostgreSQL says.
#[tokio::test]
async fn a_ruleset_key_lost_alone_is_republished_not_read_as_missing_entries() {
    let app = priced_app().await;
    let mut redis = app.redis.clone();
    let discounted = |reply: &Reply| reply.body["lines"][0]["discounts"][0]["amount"].clone();
    let before = quote(&app, lines(&[("var-1", 2)]), None).await;
    assert_eq!(discounted(&before), 180, "{before:?}");

    let _: () = redis.del(app.key("discount-ruleset-version")).await.unwrap();
    let after = quote(&app, lines(&[("var-1", 2)]), None).await;
    assert_eq!((after.status, discounted(&after)), (200, json!(180)), "{after:?}");
    assert_eq!(after.body["versions"]["discounts"], 2, "republished: {after:?}");

    for kind in [RulesetKind::Discounts, RulesetKind::Pricing] {
        let version: i64 = redis.get(app.keys().ruleset_version(kind)).await.unwrap();
        let by_field = app.keys().ruleset_keys(kind, version).swap_remove(1);
        let _: () = redis.del(&by_field).await.unwrap();
        let again = quote(&app, lines(&[("var-1", 2)]), None).await;
        assert_eq!(again.status, 200, "{again:?}");
        assert_eq!(again.body["lines"][0]["unitPrice"], 900, "{by_field}: {again:?}");
        assert_eq!(discounted(&again), 180, "{by_field}: {again:?}");
    }
    app.finish().await;
}

/// A percentage discount given a currency is for carts in that currency only, as a fixed
/// amount is; and a discount dated `infinity` / `-infinity` (PostgreSQL takes both) publishes
/// as an open or a never-reached bound instead of failing the publish.
#[tokio::test]
async fn a_discount_s_currency_and_infinite_dates_are_honoured() {
    let app = priced_app().await;
    app.pg
        .batch_execute(
            "INSERT INTO discounts (id, kind, basis_points, currency, target, priority, starts_at, ends_at) VALUES
                 ('usd-only', 'percentage', 5000, 'USD', 'variants', 50, NULL, NULL),
                 ('eur-only', 'percentage', 1000, 'EUR', 'variants', 40, '-infinity', 'infinity'),
                 ('never', 'percentage', 9000, NULL, 'variants', 60, 'infinity', NULL),
                 ('over', 'percentage', 9000, NULL, 'variants', 70, NULL, '-infinity');
             INSERT INTO discount_variants VALUES ('usd-only', 'var-2'), ('eur-only', 'var-2'),
                 ('never', 'var-2'), ('over', 'var-2');",
        )
        .await
        .unwrap();
    publish(&app, "discounts").await;
    let reply = quote(&app, lines(&[("var-2", 1)]), None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body["lines"][0]["discounts"],
        json!([{"discountId": "eur-only", "amount": 200}]),
        "{reply:?}"
    );
    app.finish().await;
}

/// The members of `discount:eligibility:{D}`, sorted.
async fn eligible(app: &TestApp, discount: &str) -> Vec<String> {
    let mut redis = app.redis.clone();
    let mut members: Vec<String> = redis::AsyncCommands::smembers(
        &mut redis,
        app.key(&format!("discount:eligibility:{{{discount}}}")),
    )
    .await
    .unwrap();
    members.sort();
    members
}

#[tokio::test]
async fn each_discount_s_eligibility_set_follows_the_version_published() {
    let app = priced_app().await;
    assert_eq!(eligible(&app, "ten-off-var-1").await, ["var-1"]);
    // An order discount targets no variant.
    assert!(eligible(&app, "five-eur-over-50").await.is_empty());

    app.pg
        .batch_execute(
            "INSERT INTO discounts (id, kind, basis_points, target) VALUES ('two-pct', 'percentage', 200, 'variants');
             INSERT INTO discount_variants VALUES ('two-pct', 'var-2'), ('two-pct', 'var-3'), ('ten-off-var-1', 'var-4');",
        )
        .await
        .unwrap();
    // Written in PostgreSQL, not yet published: the sets are the served version's.
    assert!(eligible(&app, "two-pct").await.is_empty());
    publish(&app, "discounts").await;
    assert_eq!(eligible(&app, "ten-off-var-1").await, ["var-1", "var-4"]);
    assert_eq!(eligible(&app, "two-pct").await, ["var-2", "var-3"]);

    app.pg
        .batch_execute("UPDATE discounts SET active = false WHERE id = 'ten-off-var-1';")
        .await
        .unwrap();
    publish(&app, "discounts").await;
    assert!(eligible(&app, "ten-off-var-1").await.is_empty());
    assert_eq!(eligible(&app, "two-pct").await, ["var-2", "var-3"]);
    let reply = quote(&app, lines(&[("var-1", 1), ("var-2", 1)]), None).await;
    assert_eq!(reply.body["lines"][0]["discounts"], json!([]), "{reply:?}");
    assert_eq!(
        reply.body["lines"][1]["discounts"][0]["discountId"], "two-pct",
        "{reply:?}"
    );

    // The one id a discount may not take: its version's list of order discounts.
    app.pg
        .batch_execute(
            "INSERT INTO discounts (id, kind, basis_points, target) VALUES ('_order', 'percentage', 100, 'order');",
        )
        .await
        .unwrap();
    let reply = app
        .call("POST", "/v1/admin/discounts/publish", None, Caller::Admin)
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (422, "INVALID_RULESET"),
        "{reply:?}"
    );
    assert_eq!(
        reply.body["error"]["details"]["invalid"][0]["id"], "_order",
        "{reply:?}"
    );
    assert_eq!(eligible(&app, "two-pct").await, ["var-2", "var-3"]);
    app.finish().await;
}

#[tokio::test]
async fn bad_quotes_and_unauthorised_publishes_are_refused() {
    let app = priced_app().await;
    for (body, status) in [
        (json!({}), 400),
        (json!({"cartId": "c1", "lines": []}), 400),
        (json!({"lines": []}), 400),
        (json!({"lines": [{"variantId": "var-1", "quantity": 0}]}), 400),
        (json!({"lines": [{"variantId": "a:b", "quantity": 1}]}), 400),
        (
            json!({"lines": [{"variantId": "var-1", "quantity": 1}], "currency": "euro"}),
            400,
        ),
        (json!({"cartId": "a b"}), 400),
        (json!({"cartId": "0123456789abcdef0123456789abcdef"}), 404),
        (json!({"customerId": "x"}), 401),
        (json!({"lines": [{"variantId": "var-999", "quantity": 1}]}), 422),
        (
            json!({"lines": [{"bundleId": "bundle-1", "choices": {"tops": ["var-1"]}, "quantity": 1}]}),
            422,
        ),
    ] {
        let reply = quote(&app, body.clone(), None).await;
        assert_eq!(reply.status, status, "{body}: {:?}", reply.body);
        assert!(!reply.code().is_empty());
    }
    // A currency that is not a string is named by its kind, not as "".
    let numeric = quote(
        &app,
        json!({"lines": [{"variantId": "var-1", "quantity": 1}], "currency": 5}),
        None,
    )
    .await;
    assert_eq!((numeric.status, numeric.code()), (400, "INVALID_CURRENCY"));
    assert!(
        numeric.body["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("not a number"),
        "{numeric:?}"
    );
    let before = app.redis_snapshot_of("ruleset").await;
    for auth in [None, Some("Bearer nope")] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let reply = app
            .call_with("POST", "/v1/admin/pricing/publish", None, &headers)
            .await;
        assert!(matches!(reply.status, 401 | 403), "{reply:?}");
    }
    assert_eq!(
        app.call("GET", "/v1/pricing/quote", None, Caller::Anonymous)
            .await
            .status,
        405
    );
    assert_eq!(app.redis_snapshot_of("ruleset").await, before);
    app.finish().await;
}

/// A publish reads every row as a quote will: rows PostgreSQL accepts but no quote could
/// serve (a priority beyond 32 bits, a currency ISO 4217 does not assign) refuse the whole
/// publish with a 422 naming them, and the version served before stays current.
#[tokio::test]
async fn a_publish_of_rows_no_quote_could_read_is_refused_and_changes_nothing() {
    let app = priced_app().await;
    app.pg
        .batch_execute(
            "INSERT INTO price_lists (id, currency, customer_group, parent_id, priority) VALUES
                 ('huge', 'EUR', 'platinum', NULL, 2147483648), ('abc', 'ABC', NULL, NULL, 0);
             UPDATE discounts SET priority = 3000000000 WHERE id = 'ten-off-var-1';",
        )
        .await
        .unwrap();
    let mut refused = Vec::new();
    for kind in ["pricing", "discounts"] {
        let reply = app
            .call("POST", &format!("/v1/admin/{kind}/publish"), None, Caller::Admin)
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (422, "INVALID_RULESET"),
            "{reply:?}"
        );
        assert_eq!(reply.body["error"]["details"]["currentVersion"], 1, "{reply:?}");
        refused.push(reply.body["error"]["details"].clone());
    }
    let named = |details: &Value| -> Vec<(String, String)> {
        let rows = details["invalid"].as_array().unwrap();
        rows.iter()
            .map(|r| {
                (
                    r["table"].as_str().unwrap().into(),
                    r["id"].as_str().unwrap().into(),
                )
            })
            .collect()
    };
    assert_eq!(
        named(&refused[0]),
        [
            ("price_lists".into(), "abc".into()),
            ("price_lists".into(), "huge".into())
        ]
    );
    assert_eq!(named(&refused[1]), [("discounts".into(), "ten-off-var-1".into())]);

    let served = quote(&app, lines(&[("var-1", 2)]), None).await;
    assert_eq!(served.status, 200, "quotes go on from version 1: {served:?}");
    assert_eq!(served.body["versions"], json!({"pricing": 1, "discounts": 1}));
    assert_eq!(served.body["lines"][0]["discounts"][0]["amount"], 180);
    let mut redis = app.redis.clone();
    let pointer: i64 =
        redis::AsyncCommands::get(&mut redis, app.keys().ruleset_version(RulesetKind::Pricing))
            .await
            .unwrap();
    assert_eq!(pointer, 1);

    app.pg
        .batch_execute(
            "DELETE FROM price_lists WHERE id IN ('huge', 'abc');
             UPDATE discounts SET priority = 10 WHERE id = 'ten-off-var-1';",
        )
        .await
        .unwrap();
    assert_eq!(publish(&app, "pricing").await.body["switched"], true);
    assert_eq!(publish(&app, "discounts").await.body["switched"], true);
    let served = quote(&app, lines(&[("var-1", 2)]), None).await;
    assert_eq!(served.status, 200, "{served:?}");
    app.finish().await;
}

/// A bad row left in PostgreSQL when Redis loses what it served: a lost pointer is put
/// back on the version served before (its entries still there), so one bad row never turns
/// quotes into errors; only a loss of those entries too stops quotes, with a 503 that
/// names no row and is not kept under a checkout's Idempotency-Key, so the same retry
/// goes through once the row is mended.
#[tokio::test]
async fn a_bad_row_never_turns_quotes_into_errors_after_a_redis_loss() {
    let app = priced_app().await;
    app.pg
        .batch_execute(
            "INSERT INTO price_lists (id, currency, customer_group, parent_id, priority) VALUES
                 ('huge', 'EUR', 'platinum', NULL, 2147483648);
             UPDATE discounts SET priority = 3000000000 WHERE id = 'ten-off-var-1';",
        )
        .await
        .unwrap();
    // Each refused publish uses up a version number.
    for kind in ["pricing", "discounts", "pricing", "discounts"] {
        let reply = app
            .call("POST", &format!("/v1/admin/{kind}/publish"), None, Caller::Admin)
            .await;
        assert_eq!(reply.code(), "INVALID_RULESET", "{reply:?}");
    }
    let mut redis = app.redis.clone();
    for kind in [RulesetKind::Pricing, RulesetKind::Discounts] {
        let _: () = redis.del(app.keys().ruleset_version(kind)).await.unwrap();
    }
    let served = quote(&app, lines(&[("var-1", 2)]), None).await;
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(served.body["versions"], json!({"pricing": 1, "discounts": 1}));
    assert_eq!(
        served.body["lines"][0]["discounts"][0]["amount"], 180,
        "{served:?}"
    );
    for kind in [RulesetKind::Pricing, RulesetKind::Discounts] {
        let pointer: i64 = redis.get(app.keys().ruleset_version(kind)).await.unwrap();
        assert_eq!(pointer, 1, "{kind:?}");
    }

    // The version's entries lost too: nothing PostgreSQL's rows can rebuild.
    for key in app.keys().ruleset_keys(RulesetKind::Pricing, 1) {
        let _: () = redis.del(key).await.unwrap();
    }
    let _: () = redis
        .del(app.keys().ruleset_version(RulesetKind::Pricing))
        .await
        .unwrap();
    let refused = app
        .request("POST", "/v1/pricing/quote", Some(lines(&[("var-1", 2)])), &[])
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"), "{refused:?}");
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("SERVICE_UNAVAILABLE") && !body.contains("huge"),
        "{body}"
    );
    let cart = app.cart_with(&[("var-1", 1)]).await;
    let checkout = app.start_checkout(&cart, "after-a-loss").await;
    assert_eq!(checkout.status, 503, "{checkout:?}");
    // Within a second of the failed republish (its Retry-After), a request answers its 503
    // at once rather than doing the same work again.
    assert!(
        checkout.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("just failed"),
        "{checkout:?}"
    );
    let lock: Option<String> = redis.get(app.cart_lock_key(&cart)).await.unwrap();
    assert_eq!(lock, None, "nothing held, so the cart is left free");

    app.pg
        .batch_execute("DELETE FROM price_lists WHERE id = 'huge';")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let checkout = app.start_checkout(&cart, "after-a-loss").await;
    assert_eq!(checkout.status, 201, "the same key, retried: {checkout:?}");
    assert_eq!(checkout.body["total"], 810, "{checkout:?}");
    let served = quote(&app, lines(&[("var-1", 2)]), None).await;
    assert_eq!(served.status, 200, "{served:?}");
    assert!(
        served.body["versions"]["pricing"].as_i64().unwrap() > 3,
        "{served:?}"
    );
    assert_eq!(served.body["versions"]["discounts"], 1, "{served:?}");
    app.finish().await;
}

/// More order discounts than a Redis script can unpack at once (about 8000): every quote
/// reads them all (an order discount may apply to any cart) and still answers.
#[tokio::test]
async fn thousands_of_order_discounts_are_read_whole() {
    let app = priced_app().await;
    app.pg
        .batch_execute(
            "INSERT INTO discounts (id, kind, basis_points, target, threshold_minor, priority)
                 SELECT 'far-' || i, 'percentage', 100, 'order', 900000000000, 0
                 FROM generate_series(1, 8500) i;",
        )
        .await
        .unwrap();
    publish(&app, "discounts").await;
    let served = quote(&app, lines(&[("var-1", 2)]), None).await;
    assert_eq!(served.status, 200, "{served:?}");
    assert_eq!(served.body["total"], 1800 - 180, "{served:?}");
    app.finish().await;
}

#[tokio::test]
async fn a_ruleset_left_in_an_older_encoding_is_republished_not_misread() {
    let app = priced_app().await;
    // What a build of the JSON encoding left behind: its version pointers (the same names)
    // and entries, which price var-1 at 1 cent. This build reads none of it: the pointers
    // name versions whose entries are not there in its encoding.
    let mut redis = app.redis.clone();
    assert_eq!(
        app.key("pricing-ruleset-version"),
        app.keys().ruleset_version(RulesetKind::Pricing)
    );
    let _: () = redis::pipe()
        .set(app.key("pricing-ruleset-version"), 9)
        .set(app.key("discount-ruleset-version"), 9)
        .hset(
            app.key("pricing:ruleset-bundle:{9}:prices"),
            "var-1",
            r#"{"base":1,"currency":"EUR","entries":[]}"#,
        )
        .hset(app.key("pricing:ruleset-bundle:{9}:lists"), "all", "{}")
        .query_async(&mut redis)
        .await
        .unwrap();

    let reply = quote(&app, lines(&[("var-1", 2)]), None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body["lines"][0]["unitPrice"], 900);
    assert_eq!(reply.body["lines"][0]["discounts"][0]["amount"], 180);
    // Republished from PostgreSQL under the next numbers, past the pointers found.
    assert_eq!(reply.body["versions"], json!({"pricing": 10, "discounts": 10}));
    let pointer: i64 = redis::AsyncCommands::get(&mut redis, app.key("pricing-ruleset-version"))
        .await
        .unwrap();
    assert_eq!(pointer, 10);
    app.finish().await;
}

/// The quote of `items` (variant, quantity) by an app of its own over the same namespace,
/// whose ruleset cache starts empty, as the JSON the quote route answers (or the error).
async fn quote_afresh(app: &TestApp, items: &[(&str, i64)]) -> Result<Value, String> {
    use commerce_core::App;
    use commerce_core::cart::LineItem;
    use commerce_core::ids::{Quantity, VariantId};
    use commerce_core::pricing::engine::QuoteLine;
    use commerce_core::pricing::money::Currency;
    use commerce_core::pricing::quote::{item_quote_line, price_lines};

    let fresh = App::new(
        app.app.redis.clone(),
        app.app.sql.clone(),
        app.app.http.clone(),
        app.app.settings.clone(),
    );
    let lines: Vec<QuoteLine> = items
        .iter()
        .map(|(variant, quantity)| {
            let item = LineItem::Variant(VariantId::parse(variant).unwrap());
            item_quote_line(
                &item,
                item.line_id().to_string(),
                Quantity::new(*quantity).unwrap(),
            )
        })
        .collect();
    price_lines(&fresh, &lines, Currency::parse("EUR").unwrap(), None)
        .await
        .map(|priced| serde_json::to_value(priced).unwrap())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn quotes_reuse_the_entries_of_the_current_versions_and_never_of_a_replaced_one() {
    let app = priced_app().await;
    // Two quotes bring var-1, var-2 and var-3's entries into the server's cache; a third
    // asks for var-1 and var-3 together, which no read brought at once.
    for items in [[("var-1", 1), ("var-2", 1)], [("var-2", 12), ("var-3", 2)]] {
        assert_eq!(quote(&app, lines(&items), None).await.status, 200);
    }
    let asked = [("var-1", 3), ("var-3", 2)];
    let cached = quote(&app, lines(&[("var-1", 3), ("var-3", 2)]), None).await;
    assert_eq!(cached.status, 200, "{cached:?}");
    let afresh = quote_afresh(&app, &asked).await.unwrap();
    assert_eq!(cached.body, afresh, "the cache assembles what a fresh read gives");
    assert_eq!(cached.body["lines"][0]["unitPrice"], 900);

    // The server (on one Redis server) no longer reads var-1's price from Redis while the
    // version is current: taken out of Redis behind its back, it is still quoted, whereas
    // a fresh read of the version now finds none. (Published versions are never written
    // to.)
    let version = cached.body["versions"]["pricing"].as_i64().unwrap();
    let prices = &app.keys().ruleset_keys(RulesetKind::Pricing, version)[1];
    let mut redis = app.redis.clone();
    let removed: i64 = redis::cmd("HDEL")
        .arg(prices)
        .arg("var-1")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let again = quote(&app, lines(&[("var-1", 3), ("var-3", 2)]), None).await;
    if commerce_core::ports::Redis::is_cluster(&app.app.redis) {
        // On a Redis Cluster quotes read their entries every time (README, Publishing).
        assert_ne!(again.body, cached.body);
    } else {
        assert_eq!(again.body, cached.body);
    }
    assert_ne!(quote_afresh(&app, &asked).await, Ok(afresh));

    // A new version is read afresh: var-1's new list price shows at once.
    app.pg
        .batch_execute("UPDATE price_list_entries SET unit_price_minor = 777 WHERE variant_id = 'var-1'")
        .await
        .unwrap();
    assert_eq!(publish(&app, "pricing").await.body["version"], version + 1);
    let republished = quote(&app, lines(&[("var-1", 3), ("var-3", 2)]), None).await;
    assert_eq!(republished.status, 200, "{republished:?}");
    assert_eq!(republished.body["versions"]["pricing"], version + 1);
    assert_eq!(republished.body["lines"][0]["unitPrice"], 777);
    assert_eq!(
        Ok(republished.body),
        quote_afresh(&app, &asked).await,
        "the new version's entries, as a fresh read gives them"
    );

    // A cart's quote reads the current versions with the cart (one round trip once its
    // entries are held): a publish shows at the next quote too.
    let cart = app.new_cart().await;
    for (variant, quantity) in asked {
        let add = json!({"variantId": variant, "quantity": quantity});
        let added = app.post(&format!("/v1/carts/{cart}/items"), add).await;
        assert_eq!(added.status, 200, "{added:?}");
    }
    let unit_prices = |reply: &Reply| -> Vec<i64> {
        let lines = reply.body["lines"].as_array().unwrap();
        lines.iter().map(|l| l["unitPrice"].as_i64().unwrap()).collect()
    };
    for _ in 0..2 {
        let by_cart = quote(&app, json!({"cartId": cart}), None).await;
        assert_eq!(by_cart.status, 200, "{by_cart:?}");
        assert_eq!(unit_prices(&by_cart), vec![777, 2500]);
    }
    app.pg
        .batch_execute("UPDATE price_list_entries SET unit_price_minor = 555 WHERE variant_id = 'var-1'")
        .await
        .unwrap();
    publish(&app, "pricing").await;
    let by_cart = quote(&app, json!({"cartId": cart}), None).await;
    assert_eq!(by_cart.body["versions"]["pricing"], version + 2);
    assert_eq!(unit_prices(&by_cart), vec![555, 2500]);
    app.finish().await;
}
