//! The gateway client of `commerce-core`, through the real native HTTP adapter, against the
//! fake Stripe of `commerce_tests::gateway`. No Redis or PostgreSQL needed.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use commerce_core::Error;
use commerce_core::auth::now_s;
use commerce_core::checkout::gateway::{
    EventKind, PaymentIntent, create_intent, parse_event, verify_signature,
};
use commerce_core::pricing::money::{Currency, Money};
use commerce_native::NativeHttp;
use commerce_tests::gateway::FakeGateway;
use serde_json::{Value, json};

const API_KEY: &str = "sk_test_fake";
const WEBHOOK_SECRET: &str = "whsec_fake";

fn http() -> NativeHttp {
    NativeHttp::new(Duration::from_secs(5)).unwrap()
}

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

async fn create(
    gateway: &FakeGateway,
    session: &str,
    amount: i64,
    key: &str,
) -> Result<PaymentIntent, Error> {
    create_intent(
        &http(),
        &gateway.base,
        API_KEY,
        session,
        Money::new(amount, eur()),
        key,
    )
    .await
}

#[tokio::test]
async fn an_intent_is_created_for_the_amount_currency_and_session() {
    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    let intent = create(&gateway, "sess-1", 1999, "checkout:sess-1:intent")
        .await
        .unwrap();
    assert_eq!(intent.amount, Money::new(1999, eur()));
    assert_eq!(intent.status, "requires_payment_method");
    assert!(intent.id.starts_with("pi_"), "{}", intent.id);
    assert!(
        intent
            .client_secret
            .starts_with(&format!("{}_secret_", intent.id)),
        "{}",
        intent.client_secret
    );
    let held = gateway.intents();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].id, intent.id);
    assert_eq!(held[0].client_secret, intent.client_secret);
    assert_eq!(held[0].amount, 1999);
    assert_eq!(held[0].currency, "eur");
    assert_eq!(held[0].session.as_deref(), Some("sess-1"));
    assert_eq!(held[0].idempotency_key.as_deref(), Some("checkout:sess-1:intent"));
}

#[tokio::test]
async fn reserved_characters_in_the_session_reach_the_gateway_intact() {
    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    let session = "a b&c=d+e%f/g?h#i[j]é";
    create(&gateway, session, 500, "k").await.unwrap();
    assert_eq!(gateway.intents()[0].session.as_deref(), Some(session));
}

#[tokio::test]
async fn the_same_idempotency_key_gives_back_the_same_intent() {
    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    let first = create(&gateway, "sess-1", 1999, "key-1").await.unwrap();
    let again = create(&gateway, "sess-1", 1999, "key-1").await.unwrap();
    assert_eq!(again, first);
    assert_eq!(gateway.intents().len(), 1);
    assert_eq!(gateway.create_calls(), 2);

    let other = create(&gateway, "sess-1", 1999, "key-2").await.unwrap();
    assert_ne!(other.id, first.id);
    assert_eq!(gateway.intents().len(), 2);
}

#[tokio::test]
async fn the_same_key_with_another_amount_is_rejected() {
    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    create(&gateway, "sess-1", 1999, "key-1").await.unwrap();
    let e = create(&gateway, "sess-1", 2999, "key-1").await.unwrap_err();
    assert_eq!((e.status(), e.code()), (422, "PAYMENT_GATEWAY_REJECTED"));
    assert!(e.to_string().contains("same parameters"), "{e}");
    assert_eq!(e.body()["error"]["details"]["type"], "idempotency_error");
    assert_eq!(e.body()["error"]["details"]["status"], 400);
    assert_eq!(gateway.intents().len(), 1);
}

#[tokio::test]
async fn a_wrong_api_key_is_rejected() {
    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    let e = create_intent(
        &http(),
        &gateway.base,
        "sk_test_other",
        "sess-1",
        Money::new(1999, eur()),
        "k",
    )
    .await
    .unwrap_err();
    assert_eq!((e.status(), e.code()), (422, "PAYMENT_GATEWAY_REJECTED"));
    assert_eq!(e.body()["error"]["details"]["status"], 401);
    assert!(e.to_string().contains("Invalid API Key"), "{e}");
    assert!(gateway.intents().is_empty());
}

#[tokio::test]
async fn a_refused_amount_is_rejected_with_the_gateways_reason() {
    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    let e = create(&gateway, "sess-1", 0, "k").await.unwrap_err();
    assert_eq!((e.status(), e.code()), (422, "PAYMENT_GATEWAY_REJECTED"));
    assert_eq!(
        e.body()["error"]["details"],
        json!({"status": 400, "type": "invalid_request_error", "code": "parameter_invalid_integer"})
    );
}

#[tokio::test]
async fn a_gateway_outage_is_unavailable_and_a_retry_with_the_same_key_succeeds() {
    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    for status in [503, 500, 429] {
        gateway.fail_next(status);
        let e = create(&gateway, "sess-1", 1999, "key-1").await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::Unavailable {
                    dependency: "payment gateway",
                    ..
                }
            ),
            "{status}: {e:?}"
        );
        assert_eq!(e.status(), 503);
    }
    assert!(gateway.intents().is_empty());
    let intent = create(&gateway, "sess-1", 1999, "key-1").await.unwrap();
    assert_eq!(gateway.intents()[0].id, intent.id);

    gateway.fail_next(402);
    let e = create(&gateway, "sess-2", 1999, "key-2").await.unwrap_err();
    assert_eq!((e.status(), e.code()), (422, "PAYMENT_GATEWAY_REJECTED"));
    assert_eq!(e.body()["error"]["details"]["type"], "card_error");
}

#[tokio::test]
async fn an_unreachable_or_unconfigured_gateway_is_unavailable() {
    let e = create_intent(
        &http(),
        "http://127.0.0.1:1",
        API_KEY,
        "sess-1",
        Money::new(1999, eur()),
        "k",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Unavailable {
                dependency: "payment gateway",
                ..
            }
        ),
        "{e:?}"
    );

    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    let e = create_intent(&http(), &gateway.base, "", "sess-1", Money::new(1999, eur()), "k")
        .await
        .unwrap_err();
    assert_eq!(e.status(), 503);
    assert!(
        e.to_string().contains("payment_gateway_key is not configured"),
        "{e}"
    );
    assert_eq!(gateway.create_calls(), 0);
}

/// A webhook endpoint that does what the checkout route must: verify, then read.
async fn receive(headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    let signature = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    let outcome =
        verify_signature(&body, signature, WEBHOOK_SECRET, now_s()).and_then(|()| parse_event(&body));
    match outcome {
        Ok(event) => (
            StatusCode::OK,
            json!({
                "received": event.id,
                "kind": match &event.kind {
                    EventKind::PaymentSucceeded => "succeeded",
                    EventKind::PaymentFailed => "failed",
                    EventKind::Other(_) => "other",
                },
                "intent": event.intent_id,
                "session": event.session_id,
                "amount": event.amount,
                "currency": event.currency,
            })
            .to_string(),
        ),
        Err(e) => (StatusCode::from_u16(e.status()).unwrap(), e.body().to_string()),
    }
}

#[tokio::test]
async fn delivered_events_verify_and_tampered_ones_do_not() {
    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    let intent = create(&gateway, "sess-1", 1999, "key-1").await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_base = format!("http://{}", listener.local_addr().unwrap());
    let receiver = Router::new().route("/v1/checkout/payment-webhook", post(receive));
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let succeeded = gateway.event("payment_intent.succeeded", &intent.id);
    let (status, body) = gateway.deliver(&app_base, &succeeded).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "succeeded");
    assert_eq!(body["intent"], Value::from(intent.id.as_str()));
    assert_eq!(body["session"], "sess-1");
    assert_eq!(
        (body["amount"].as_i64(), body["currency"].as_str()),
        (Some(1999), Some("EUR"))
    );

    let failed = gateway.event("payment_intent.payment_failed", &intent.id);
    let (status, body) = gateway.deliver(&app_base, &failed).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "failed");
    let first_id = serde_json::from_str::<Value>(&succeeded).unwrap()["id"].clone();
    assert_ne!(body["received"], first_id, "every event has a fresh id");

    let signature = gateway.signature(&succeeded);
    verify_signature(succeeded.as_bytes(), Some(&signature), WEBHOOK_SECRET, now_s()).unwrap();
    let tampered = succeeded.replace("1999", "1");
    assert_ne!(tampered, succeeded);
    let e = verify_signature(tampered.as_bytes(), Some(&signature), WEBHOOK_SECRET, now_s()).unwrap_err();
    assert_eq!((e.status(), e.code()), (400, "INVALID_SIGNATURE"));
    let e = verify_signature(succeeded.as_bytes(), Some(&signature), "whsec_other", now_s()).unwrap_err();
    assert_eq!((e.status(), e.code()), (400, "INVALID_SIGNATURE"));
}

/// A form POST to the fake, as the service's client sends it; the status and JSON body.
async fn stripe_post(gateway: &FakeGateway, path: &str, key: &str, form: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", gateway.base))
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("idempotency-key", key)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn the_fake_refunds_a_paid_intent_once_per_key_and_never_beyond_the_payment() {
    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    let intent = create(&gateway, "sess-r", 1000, "key-r").await.unwrap().id;
    let refund = |key: &'static str, amount: i64| {
        let form = format!("payment_intent={intent}&amount={amount}&metadata%5Bcheckout_session%5D=sess-r");
        let gateway = &gateway;
        async move { stripe_post(gateway, "/v1/refunds", key, &form).await }
    };
    let (status, body) = refund("r-0", 400).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("payment_intent_unexpected_state"))
    );
    assert!(gateway.succeed(&intent));

    let (status, first) = refund("r-1", 400).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["object"].as_str(), first["amount"].as_i64()),
        (Some("refund"), Some(400))
    );
    assert_eq!(first["metadata"]["checkout_session"], "sess-r");
    assert_eq!(
        refund("r-1", 400).await,
        (200, first.clone()),
        "a replay, not a second refund"
    );
    let (status, body) = refund("r-1", 300).await;
    assert_eq!(
        (status, body["error"]["type"].as_str()),
        (400, Some("idempotency_error"))
    );
    let (status, body) = refund("r-2", 700).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("amount_too_large"))
    );
    assert_eq!(refund("r-3", 600).await.0, 200);
    let (status, body) = refund("r-4", 1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("charge_already_refunded"))
    );
    assert_eq!(
        gateway.refunds().iter().map(|r| r.amount).collect::<Vec<_>>(),
        [400, 600]
    );
    assert_eq!(gateway.refund_calls(), 7);

    gateway.fail_next_refunds(2, 503);
    assert_eq!(refund("r-5", 1).await.0, 503);
    assert_eq!(refund("r-5", 1).await.0, 503);
    let (status, body) = refund("r-5", 1).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("charge_already_refunded")),
        "a programmed failure saves nothing for its key"
    );
}

#[tokio::test]
async fn the_fake_cancels_an_unpaid_intent_and_refuses_a_paid_one() {
    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    let unpaid = create(&gateway, "sess-c1", 1000, "key-c1").await.unwrap().id;
    let paid = create(&gateway, "sess-c2", 1000, "key-c2").await.unwrap().id;
    gateway.event("payment_intent.succeeded", &paid);
    let cancel = |intent: String, key: &'static str| {
        let gateway = &gateway;
        async move { stripe_post(gateway, &format!("/v1/payment_intents/{intent}/cancel"), key, "").await }
    };
    gateway.fail_next_cancels(1, 500);
    assert_eq!(cancel(unpaid.clone(), "c-1").await.0, 500);
    let (status, body) = cancel(unpaid.clone(), "c-1").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("canceled")));
    assert_eq!(cancel(unpaid.clone(), "c-1").await, (200, body), "a replay");
    let (status, again) = cancel(unpaid.clone(), "c-2").await;
    assert_eq!(status, 400);
    assert_eq!(again["error"]["code"], "payment_intent_unexpected_state");
    assert_eq!(again["error"]["payment_intent"]["status"], "canceled");
    assert!(!gateway.succeed(&unpaid), "a cancelled intent cannot be paid");

    let (status, refused) = cancel(paid.clone(), "c-3").await;
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["payment_intent"]["status"], "succeeded");
    let (status, missing) = cancel("pi_404".into(), "c-4").await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (404, Some("resource_missing"))
    );
    assert_eq!(gateway.cancellations(), [unpaid]);
    assert_eq!(gateway.cancel_calls(), 6);
}

/// `POST /v1/payment_intents/{id}/confirm` on the gateway (Basic auth, as `curl -u key:`
/// and Stripe's CLI send it): the status and JSON body.
async fn confirm(gateway: &FakeGateway, intent: &str, key: &str, payment_method: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/payment_intents/{intent}/confirm", gateway.base))
        .basic_auth(key, None::<&str>)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("payment_method={payment_method}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn confirming_an_intent_pays_it_and_sends_the_signed_event_to_the_webhook() {
    let gateway = FakeGateway::start(API_KEY, WEBHOOK_SECRET).await;
    let paid = create(&gateway, "sess-paid", 1999, "key-c1").await.unwrap();
    let declined = create(&gateway, "sess-declined", 500, "key-c2").await.unwrap();

    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let log = received.clone();
    let receiver = Router::new().route(
        "/v1/checkout/payment-webhook",
        post(move |headers: HeaderMap, body: Bytes| {
            let log = log.clone();
            async move {
                let (status, answer) = receive(headers, body).await;
                log.lock().unwrap().push(serde_json::from_str(&answer).unwrap());
                (status, answer)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    gateway.set_webhook_url(Some(format!("{app_base}/v1/checkout/payment-webhook")));

    let (status, body) = confirm(&gateway, "pi_1", "sk_wrong", "pm_card_visa").await;
    assert_eq!(
        (status, &body["error"]["type"]),
        (401, &json!("invalid_request_error"))
    );
    assert!(received.lock().unwrap().is_empty());

    let (status, body) = confirm(&gateway, &paid.id, API_KEY, "pm_card_visa").await;
    assert_eq!((status, &body["status"]), (200, &json!("succeeded")), "{body}");
    assert_eq!(body["amount_received"], 1999);
    // Delivered, and verified by the receiver, before the confirmation answered.
    let events = received.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (&events[0]["kind"], &events[0]["intent"], &events[0]["session"]),
        (&json!("succeeded"), &json!(paid.id), &json!("sess-paid"))
    );

    // Paid once: a second confirmation is refused and sends nothing; a refund now works.
    let (status, body) = confirm(&gateway, &paid.id, API_KEY, "pm_card_visa").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("payment_intent_unexpected_state"))
    );
    assert_eq!(received.lock().unwrap().len(), 1);
    let (status, _) = stripe_post(
        &gateway,
        "/v1/refunds",
        "r-1",
        &format!("payment_intent={}", paid.id),
    )
    .await;
    assert_eq!(status, 200);

    // A declined card: 402, and the failure event.
    let (status, body) = confirm(&gateway, &declined.id, API_KEY, "pm_card_chargeDeclined").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (402, &json!("card_declined")),
        "{body}"
    );
    let events = received.lock().unwrap().clone();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (&events[1]["kind"], &events[1]["intent"]),
        (&json!("failed"), &json!(declined.id))
    );

    let (status, body) = confirm(&gateway, "pi_404", API_KEY, "pm_card_visa").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("resource_missing"))
    );
}
