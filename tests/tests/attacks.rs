//! Attacks as tests (issue 8, DESIGN §4 invariants 3, 4 and 6): what a hostile or merely
//! curious caller could do over HTTP to other people's holds, checkout sessions and
//! payments, and must not be able to.

use commerce_tests::gateway::FakeGateway;
use commerce_tests::{Caller, Paying, Reply, TestApp, unit};
use serde_json::{Value, json};

async fn shop() -> (TestApp, FakeGateway) {
    TestApp::shop(2, |c| c).await
}

/// Units of `variant` held now.
async fn reserved(app: &TestApp, variant: &str) -> i64 {
    let view = app.get(&format!("/v1/inventory/{variant}")).await;
    assert_eq!(view.status, 200, "{view:?}");
    view.body["reserved"].as_i64().expect("reserved")
}

/// The customer pays `intent` and the gateway says so: the webhook's answer.
async fn pay(app: &TestApp, gateway: &FakeGateway, intent: &str) -> (u16, Value) {
    gateway.succeed(intent);
    app.intent_paid(gateway, intent).await
}

#[tokio::test]
async fn nobody_releases_the_holds_of_a_session_waiting_for_its_payment() {
    let (app, gateway) = shop().await;
    let Paying { session, intent, .. } = app.paying_session(&[("var-1", 1)], "k-1").await;
    assert_eq!(reserved(&app, "var-1").await, 1);
    let path = format!("/v1/inventory/reservations/{session}");

    let anonymous = app.call("DELETE", &path, None, Caller::Anonymous).await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(
        reserved(&app, "var-1").await,
        1,
        "an anonymous caller freed the holds"
    );

    // The admin route names outside callers' holders: a checkout session's holds live in
    // another namespace, out of its reach.
    let admin = app.call("DELETE", &path, None, Caller::Admin).await;
    assert!(admin.status < 500, "{admin:?}");
    assert_eq!(
        reserved(&app, "var-1").await,
        1,
        "the reservations route freed a checkout session's holds: {admin:?}"
    );

    let (status, done) = pay(&app, &gateway, &intent).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    assert_eq!(app.pg_on_hand("var-1").await, 99);
    assert_eq!(reserved(&app, "var-1").await, 0);
    app.finish().await;
}

#[tokio::test]
async fn nobody_overwrites_the_holds_of_a_session_waiting_for_its_payment() {
    let (app, gateway) = shop().await;
    let Paying { session, intent, .. } = app.paying_session(&[("var-1", 1)], "k-1").await;
    assert_eq!(reserved(&app, "var-1").await, 1);
    let overwrite = json!({ "cartId": session, "items": [{ "variantId": "var-1", "quantity": 5 }] });

    let anonymous = app
        .call(
            "POST",
            "/v1/inventory/reservations",
            Some(overwrite.clone()),
            Caller::Anonymous,
        )
        .await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    assert_eq!(
        reserved(&app, "var-1").await,
        1,
        "an anonymous caller changed the holds"
    );

    // A trusted caller naming the session's id names a holder of its own namespace: the
    // session's hold of 1 stays what it is, whatever that caller now holds beside it.
    let admin = app
        .call(
            "POST",
            "/v1/inventory/reservations",
            Some(overwrite),
            Caller::Admin,
        )
        .await;
    assert!(admin.status < 500, "{admin:?}");
    let with_admin = reserved(&app, "var-1").await;
    let (status, done) = pay(&app, &gateway, &intent).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    assert_eq!(app.pg_on_hand("var-1").await, 99);
    assert_eq!(
        with_admin - reserved(&app, "var-1").await,
        1,
        "the session's hold was not its own 1 unit when it was sold (admin answered {admin:?})"
    );
    let released = app
        .call(
            "DELETE",
            &format!("/v1/inventory/reservations/{session}"),
            None,
            Caller::Admin,
        )
        .await;
    assert!(released.status < 500, "{released:?}");
    assert_eq!(reserved(&app, "var-1").await, 0);
    app.finish().await;
}

#[tokio::test]
async fn reservations_need_a_trusted_caller_and_hold_nothing_without_one() {
    let (app, _gateway) = shop().await;
    let everything = json!({
        "cartId": "grabber",
        "items": [{ "variantId": "var-1", "quantity": 100 }],
        "ttlSeconds": 86_400
    });
    let anonymous = app
        .call(
            "POST",
            "/v1/inventory/reservations",
            Some(everything.clone()),
            Caller::Anonymous,
        )
        .await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let as_customer = app
        .call(
            "POST",
            "/v1/inventory/reservations",
            Some(everything.clone()),
            Caller::Customer("mallory"),
        )
        .await;
    assert!(
        matches!(as_customer.status, 401 | 403),
        "a customer's token is not a trusted caller's: {as_customer:?}"
    );
    let view = app.get("/v1/inventory/var-1").await;
    assert_eq!(
        (view.body["reserved"].as_i64(), view.body["sellable"].as_i64()),
        (Some(0), Some(100)),
        "{view:?}"
    );
    let release = app
        .call(
            "DELETE",
            "/v1/inventory/reservations/grabber",
            None,
            Caller::Anonymous,
        )
        .await;
    assert_eq!(release.status, 401, "{release:?}");

    // The trusted callers may: the admin and a backend with the service token.
    for trusted in [Caller::Admin, Caller::Service] {
        let held = app
            .call(
                "POST",
                "/v1/inventory/reservations",
                Some(everything.clone()),
                trusted,
            )
            .await;
        assert_eq!(held.status, 201, "{trusted:?}: {held:?}");
        assert_eq!(reserved(&app, "var-1").await, 100);
        let released = app
            .call("DELETE", "/v1/inventory/reservations/grabber", None, trusted)
            .await;
        assert_eq!(released.status, 200, "{trusted:?}: {released:?}");
        assert_eq!(reserved(&app, "var-1").await, 0);
    }
    // The service token is not the admin's.
    let as_service = app
        .call(
            "PUT",
            "/v1/admin/inventory/var-1",
            Some(json!({ "onHand": 0 })),
            Caller::Service,
        )
        .await;
    assert_eq!(as_service.status, 403, "{as_service:?}");
    app.finish().await;
}

/// Whether an answer shows a payment intent's client secret.
fn shows_a_secret(reply: &Reply) -> bool {
    reply.body.to_string().contains("_secret_")
}

#[tokio::test]
async fn a_customers_checkout_session_answers_only_that_customers_token() {
    let (app, _gateway) = shop().await;
    let (zoe, yan) = (Caller::Customer("zoe"), Caller::Customer("yan"));
    let added = app
        .call(
            "POST",
            "/v1/customers/zoe/cart/items",
            Some(unit("var-1", 1)),
            zoe,
        )
        .await;
    assert_eq!(added.status, 200, "{added:?}");
    let started = app
        .start_checkout_as(json!({ "customerId": "zoe" }), "z-1", zoe)
        .await;
    assert_eq!(started.status, 201, "{started:?}");
    let session = started.body["sessionId"].as_str().expect("a session").to_owned();
    let intent_path = format!("/v1/checkout/{session}/payment-intent");
    let intent = app.payment_intent(&session, zoe).await;
    assert_eq!(intent.status, 200, "{intent:?}");
    assert!(shows_a_secret(&intent), "{intent:?}");

    let routes = [
        ("GET", format!("/v1/checkout/{session}")),
        ("POST", intent_path.clone()),
        ("POST", format!("/v1/checkout/{session}/cancel")),
    ];
    for (method, path) in &routes {
        let anonymous = app.call(method, path, None, Caller::Anonymous).await;
        assert_eq!(
            anonymous.status, 401,
            "{method} {path} without a token: {anonymous:?}"
        );
        assert!(!shows_a_secret(&anonymous), "{anonymous:?}");
        let other = app.call(method, path, None, yan).await;
        assert!(
            matches!(other.status, 403 | 404),
            "{method} {path} with another customer's token: {other:?}"
        );
        assert!(!shows_a_secret(&other), "{other:?}");
    }

    let mine = app
        .call("GET", &format!("/v1/checkout/{session}"), None, zoe)
        .await;
    assert_eq!(
        (mine.status, mine.body["state"].as_str()),
        (200, Some("PAYMENT_PENDING")),
        "{mine:?}"
    );
    assert_eq!(reserved(&app, "var-1").await, 1);
    let again = app.payment_intent(&session, zoe).await;
    assert_eq!(
        again.body["clientSecret"], intent.body["clientSecret"],
        "{again:?}"
    );
    app.finish().await;
}

#[tokio::test]
async fn a_guessed_anonymous_session_id_finds_nothing() {
    let (app, _gateway) = shop().await;
    let cart = app.cart_with(&[("var-1", 1)]).await;
    let session = app.checkout(&cart, "k-1").await;
    let hex = session.strip_prefix("cs_").expect("cs_ and the id");
    assert!(
        hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "an anonymous session's id is 128 random bits: {session}"
    );
    // The real id with its last digit changed, and one made up.
    let last = if hex.ends_with('0') { '1' } else { '0' };
    let near = format!("cs_{}{last}", &hex[..31]);
    for guess in [near, format!("cs_{}", "0123456789abcdef".repeat(2))] {
        for (method, path) in [
            ("GET", format!("/v1/checkout/{guess}")),
            ("POST", format!("/v1/checkout/{guess}/payment-intent")),
            ("POST", format!("/v1/checkout/{guess}/cancel")),
        ] {
            let reply = app.call_with(method, &path, None, &[]).await;
            assert_eq!(reply.status, 404, "{method} {path}: {reply:?}");
        }
    }
    let real = app.get(&format!("/v1/checkout/{session}")).await;
    assert_eq!(
        (real.status, real.body["state"].as_str()),
        (200, Some("LOCKED")),
        "{real:?}"
    );
    assert_eq!(reserved(&app, "var-1").await, 1);
    app.finish().await;
}

/// Creates another intent at the gateway naming `session` in its metadata, as a stale or
/// duplicate intent would.
async fn another_intent_for(gateway: &FakeGateway, session: &str) -> String {
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("amount", "100")
        .append_pair("currency", "eur")
        .append_pair("metadata[checkout_session]", session)
        .finish();
    let created: Value = reqwest::Client::new()
        .post(format!("{}/v1/payment_intents", gateway.base))
        .header("authorization", format!("Bearer {}", gateway.api_key))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("the fake gateway")
        .json()
        .await
        .expect("an intent");
    created["id"].as_str().expect("an intent id").to_owned()
}

#[tokio::test]
async fn a_failed_payment_of_another_intent_leaves_the_session_and_its_holds_alone() {
    let (app, gateway) = shop().await;
    let Paying { session, intent, .. } = app.paying_session(&[("var-1", 1)], "k-1").await;
    let other = another_intent_for(&gateway, &session).await;
    assert_ne!(other, intent);
    let failed = gateway.event("payment_intent.payment_failed", &other);
    let (status, body) = gateway.deliver(&app.base, &failed).await;
    assert!((200..300).contains(&status), "{status} {body}");

    let now = app.get(&format!("/v1/checkout/{session}")).await;
    assert_eq!(
        now.body["state"], "PAYMENT_PENDING",
        "another intent's failure ended the session: {now:?}"
    );
    assert_eq!(
        reserved(&app, "var-1").await,
        1,
        "another intent's failure freed the holds"
    );
    let (status, done) = pay(&app, &gateway, &intent).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    assert_eq!(app.pg_on_hand("var-1").await, 99);
    app.finish().await;
}

#[tokio::test]
async fn a_webhook_replayed_after_redis_lost_the_session_answers_with_its_order() {
    let (app, gateway) = shop().await;
    let Paying { intent, .. } = app.paying_session(&[("var-1", 1)], "k-1").await;
    let (status, done) = pay(&app, &gateway, &intent).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("COMPLETED")),
        "{done}"
    );
    let order = done["orderId"].as_str().expect("an order").to_owned();

    app.flush_redis().await;
    let event = gateway.event("payment_intent.succeeded", &intent);
    for delivery in 1..=2 {
        let (status, replayed) = gateway.deliver(&app.base, &event).await;
        assert_eq!(
            (status, replayed["orderId"].as_str()),
            (200, Some(order.as_str())),
            "redelivery {delivery} after Redis lost the session: {replayed}"
        );
    }
    let orders: i64 = app
        .pg
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("orders")
        .get(0);
    assert_eq!(orders, 1);
    assert_eq!(gateway.refunds(), vec![], "a paid order was refunded");
    let owed = app.call("GET", "/v1/admin/refunds", None, Caller::Admin).await;
    assert_eq!(owed.status, 200, "{owed:?}");
    let for_intent: Vec<&Value> = owed.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["paymentIntentId"] == intent.as_str())
        .collect();
    assert!(
        for_intent.is_empty(),
        "a refund is owed for a paid order: {for_intent:?}"
    );
    app.finish().await;
}

/// A signed payment whose metadata names no id this app makes is not a payment of its
/// sessions: it is acknowledged (200, ignored) like one without a session, so the gateway
/// does not deliver it again for days, and nothing is written for it.
#[tokio::test]
async fn a_payment_naming_a_malformed_session_is_acknowledged_and_changes_nothing() {
    let (app, gateway) = shop().await;
    let before = app.redis_snapshot().await;
    for session in ["not a session!", "cs_{x}", &"c".repeat(300)] {
        let intent = another_intent_for(&gateway, session).await;
        let paid = gateway.event("payment_intent.succeeded", &intent);
        let (status, body) = gateway.deliver(&app.base, &paid).await;
        assert_eq!(status, 200, "{session}: {body}");
        assert!(body["ignored"].is_string(), "{session}: {body}");
    }
    assert_eq!(app.redis_snapshot().await, before);
    let outbox: i64 = app
        .pg
        .query_one("SELECT count(*) FROM payment_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outbox, 0, "a refund or cancellation was queued");
    app.finish().await;
}
