//! The README's walk, request by request, on whichever host runs the suite: the inventory
//! API, carts and bundles, prices and publishing, and a checkout from cart to order with
//! the local fake gateway. In the Spin run it goes through `spin up` started by
//! `scripts/spin-up`, exactly as `scripts/run` serves the app, so the walk a reader
//! follows there answers as the README says on both hosts.

use commerce_tests::{ADMIN_TOKEN, Caller, Reply, TestApp, customer_token};
use serde_json::{Value, json};

const ADMIN: (&str, &str) = ("authorization", "Bearer test-admin-token");

async fn post_as_admin(app: &TestApp, path: &str, body: Value) -> Reply {
    app.call("POST", path, Some(body), Caller::Admin).await
}

#[tokio::test]
async fn the_readme_walk_answers_as_the_readme_says() {
    assert_eq!(ADMIN.1, format!("Bearer {ADMIN_TOKEN}"));
    let (app, gateway) = TestApp::shop(20, |c| c).await;

    // The inventory API.
    let stock = app.get("/v1/inventory/var-1").await;
    assert_eq!(
        stock.body,
        json!({"variantId": "var-1", "stock": 100, "reserved": 0, "sellable": 100, "maxPerOrder": null})
    );
    let many = app
        .post(
            "/v1/inventory/availability",
            json!({"variantIds": ["var-1", "var-2"]}),
        )
        .await;
    assert_eq!(many.body["items"].as_array().map(Vec::len), Some(2), "{many:?}");
    let anonymous = app
        .post(
            "/v1/inventory/reservations",
            json!({"cartId": "cart-42", "items": [{"variantId": "var-1", "quantity": 1}]}),
        )
        .await;
    assert_eq!((anonymous.status, anonymous.code()), (401, "UNAUTHORIZED"));
    let held = post_as_admin(
        &app,
        "/v1/inventory/reservations",
        json!({"cartId": "cart-42", "items": [{"variantId": "var-1", "quantity": 2},
               {"variantId": "var-2", "quantity": 1}], "ttlSeconds": 600}),
    )
    .await;
    assert_eq!(held.status, 201, "{held:?}");
    assert_eq!(held.body["cartId"], "cart-42");
    let again = post_as_admin(
        &app,
        "/v1/inventory/reservations",
        json!({"cartId": "cart-42", "items": [{"variantId": "var-1", "quantity": 1}]}),
    )
    .await;
    assert_eq!(again.status, 201, "{again:?}");
    assert_eq!(app.get("/v1/inventory/var-1").await.body["sellable"], 99);
    let short = post_as_admin(
        &app,
        "/v1/inventory/reservations",
        json!({"cartId": "cart-7", "items": [{"variantId": "var-1", "quantity": 1000}]}),
    )
    .await;
    assert_eq!((short.status, short.code()), (409, "INSUFFICIENT_INVENTORY"));
    assert_eq!(
        short.body["error"]["details"]["shortages"],
        json!([{"variantId": "var-1", "requested": 1000, "sellable": 99}])
    );
    let released = app
        .call(
            "DELETE",
            "/v1/inventory/reservations/cart-42",
            None,
            Caller::Admin,
        )
        .await;
    assert_eq!(released.body, json!({"cartId": "cart-42", "released": 2}));
    assert_eq!(app.set_on_hand("var-1", 250).await.body["stock"], 250);
    let flash = app
        .call(
            "PUT",
            "/v1/admin/inventory/var-7",
            Some(json!({"maxPerOrder": 2})),
            Caller::Admin,
        )
        .await;
    assert_eq!(
        flash.body,
        json!({"variantId": "var-7", "stock": 100, "reserved": 0, "sellable": 100, "maxPerOrder": 2})
    );
    let over = post_as_admin(
        &app,
        "/v1/inventory/reservations",
        json!({"cartId": "cart-43", "items": [{"variantId": "var-7", "quantity": 3}]}),
    )
    .await;
    assert_eq!((over.status, over.code()), (422, "MAX_PER_ORDER_EXCEEDED"));
    let details = &over.body["error"]["details"];
    assert_eq!(
        (
            &details["variantId"],
            &details["requested"],
            &details["maxPerOrder"]
        ),
        (&json!("var-7"), &json!(3), &json!(2))
    );
    let reconciled = app
        .call("POST", "/v1/admin/inventory/reconcile", None, Caller::Admin)
        .await;
    assert_eq!(reconciled.body["variants"], 20, "{reconciled:?}");
    let health = app.get("/health").await;
    assert_eq!((health.status, &health.body["status"]), (200, &json!("ok")));
    assert!(
        health.body["redis"]["latencyMs"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "{health:?}"
    );
    let metrics = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("commerce_dependency_up{dependency=\"redis\"} 1")
    );

    // Carts and bundles.
    let cart = app.new_cart().await;
    let items = format!("/v1/carts/{cart}/items");
    let added = app
        .post(&items, json!({"variantId": "var-1", "quantity": 2}))
        .await;
    assert_eq!(added.body["version"], 1, "{added:?}");
    let bundle = app.get("/v1/bundles/bundle-1").await;
    assert_eq!(bundle.status, 200, "{bundle:?}");
    let choices = choices_of(&bundle.body);
    let with_bundle = app
        .post(
            &items,
            json!({"bundleId": "bundle-1", "choices": choices, "quantity": 1}),
        )
        .await;
    assert_eq!(
        with_bundle.body["lines"].as_array().map(Vec::len),
        Some(2),
        "{with_bundle:?}"
    );
    // One variant too few (or too many) for the first set.
    let set = &bundle.body["sets"][0];
    let choose = set["choose"].as_u64().unwrap() as usize;
    let wrong = if choose >= 2 { choose - 1 } else { choose + 1 };
    let mut broken = choices_of(&bundle.body);
    broken[set["setId"].as_str().unwrap()] =
        Value::Array(set["variantIds"].as_array().unwrap()[..wrong].to_vec());
    let refused = app
        .post(
            &items,
            json!({"bundleId": "bundle-1", "choices": broken, "quantity": 1}),
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (422, "INVALID_BUNDLE_CHOICE"),
        "{refused:?}"
    );
    let line = added.body["lines"][0]["lineId"].as_str().unwrap().to_owned();
    let patched = app
        .call_with(
            "PATCH",
            &format!("{items}/{line}"),
            Some(json!({"quantity": 5})),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(patched.status, 200, "{patched:?}");
    let stale = app
        .call_with(
            "PATCH",
            &format!("{items}/{line}"),
            Some(json!({"quantity": 6})),
            &[("if-match", "\"2\"")],
        )
        .await;
    assert_eq!(stale.status, 412, "{stale:?}");
    let token = format!("Bearer {}", customer_token("alice"));
    let customer = app
        .call_with(
            "GET",
            "/v1/customers/alice/cart",
            None,
            &[("authorization", &token)],
        )
        .await;
    assert_eq!(customer.status, 200, "{customer:?}");
    let merged = app
        .call_with(
            "POST",
            "/v1/customers/alice/cart/merge",
            Some(json!({"cartId": cart})),
            &[("authorization", &token)],
        )
        .await;
    assert_eq!(
        merged.body["lines"].as_array().map(Vec::len),
        Some(2),
        "{merged:?}"
    );
    assert_eq!(app.get(&format!("/v1/carts/{cart}")).await.status, 404);
    let invalidated = app
        .call(
            "POST",
            "/v1/admin/bundles/bundle-1/invalidate",
            None,
            Caller::Admin,
        )
        .await;
    assert_eq!(invalidated.status, 200, "{invalidated:?}");

    // Prices, discounts and publishing.
    let published = app
        .call("POST", "/v1/admin/pricing/publish", None, Caller::Admin)
        .await;
    assert_eq!(
        (published.status, &published.body["switched"]),
        (200, &json!(true))
    );
    let discounts = app
        .call("POST", "/v1/admin/discounts/publish", None, Caller::Admin)
        .await;
    assert_eq!(discounts.status, 200, "{discounts:?}");
    let quote = app
        .post(
            "/v1/pricing/quote",
            json!({"lines": [{"variantId": "var-1", "quantity": 2}]}),
        )
        .await;
    assert_eq!(quote.status, 200, "{quote:?}");
    let (subtotal, off, total) = (
        quote.body["subtotal"].as_i64().unwrap(),
        quote.body["discountTotal"].as_i64().unwrap(),
        quote.body["total"].as_i64().unwrap(),
    );
    assert_eq!(subtotal - off, total);
    let group = app
        .call_with(
            "POST",
            "/v1/pricing/quote",
            Some(json!({"customerGroup": "vip", "lines": [{"variantId": "var-2", "quantity": 1}]})),
            &[],
        )
        .await;
    assert_eq!(group.status, 403, "{group:?}");
    let as_admin = app
        .call_with(
            "POST",
            "/v1/pricing/quote",
            Some(json!({"customerGroup": "vip", "lines": [{"variantId": "var-2", "quantity": 1}]})),
            &[ADMIN],
        )
        .await;
    assert_eq!(as_admin.status, 200, "{as_admin:?}");

    // Checkout, from cart to order, with the local gateway.
    let cart = app.cart_with(&[("var-3", 2)]).await;
    let start = |key: &'static str| app.start_checkout(&cart, key);
    let started = start("order-42-try-1").await;
    assert_eq!(
        (started.status, &started.body["state"]),
        (201, &json!("LOCKED")),
        "{started:?}"
    );
    let session = started.body["sessionId"].as_str().unwrap().to_owned();
    let second = start("order-42-try-2").await;
    assert_eq!(
        (second.status, second.code()),
        (409, "CHECKOUT_IN_PROGRESS"),
        "{second:?}"
    );
    let intent = app.payment_intent(&session, Caller::Anonymous).await;
    assert_eq!(intent.body["state"], "PAYMENT_PENDING", "{intent:?}");
    let (status, _) = app
        .intent_paid(&gateway, intent.body["paymentIntentId"].as_str().unwrap())
        .await;
    assert_eq!(status, 200);
    let done = app.get(&format!("/v1/checkout/{session}")).await;
    assert_eq!(done.body["state"], "COMPLETED", "{done:?}");
    assert!(
        done.body["orderId"]
            .as_str()
            .is_some_and(|id| id.starts_with("ord_"))
    );
    assert_eq!(app.pg_on_hand("var-3").await, 98);
    app.finish().await;
}

/// A valid choice for every set of a bundle view: its first `choose` variants.
fn choices_of(bundle: &Value) -> Value {
    let mut choices = serde_json::Map::new();
    for set in bundle["sets"].as_array().expect("a bundle has sets") {
        let choose = set["choose"].as_u64().unwrap() as usize;
        let picked: Vec<Value> = set["variantIds"].as_array().unwrap()[..choose].to_vec();
        choices.insert(set["setId"].as_str().unwrap().to_owned(), Value::Array(picked));
    }
    Value::Object(choices)
}
