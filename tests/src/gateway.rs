//! A fake payment gateway that speaks Stripe's PaymentIntent API over real HTTP on
//! 127.0.0.1, so the service's own gateway client and outbound HTTP adapter are what the
//! tests exercise: nothing in the product is stubbed.
//!
//! What it copies from Stripe, because checkout relies on it: Bearer authentication, form
//! parameters with Stripe's validation and error bodies, unknown parameters refused, and
//! idempotency keys (a repeat with the same parameters replays the first answer with
//! `Idempotent-Replayed: true`; the same key with other parameters is a 400
//! `idempotency_error`; a request refused by validation saves nothing). Webhook events are
//! Stripe events signed with the `Stripe-Signature` scheme. Money goes back through
//! `POST /v1/refunds` (only for a paid intent, never more than was paid) and unpaid
//! intents end with `POST /v1/payment_intents/{id}/cancel`, as at Stripe; the test marks
//! an intent paid with [`FakeGateway::succeed`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A PaymentIntent the fake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeIntent {
    /// `pi_<n>`.
    pub id: String,
    /// `pi_<n>_secret_<random>`.
    pub client_secret: String,
    /// Minor units, as sent.
    pub amount: i64,
    /// Lower-case, as Stripe keeps it.
    pub currency: String,
    /// `metadata[checkout_session]`, if sent.
    pub session: Option<String>,
    /// The `Idempotency-Key` it was created with, if any.
    pub idempotency_key: Option<String>,
}

/// The first answer given to an idempotency key, replayed to every repeat.
struct Saved {
    params: Vec<(String, String)>,
    status: StatusCode,
    body: String,
}

/// A refund the fake accepted (`POST /v1/refunds`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRefund {
    /// `re_<n>`.
    pub id: String,
    /// The intent whose payment it returns.
    pub payment_intent: String,
    /// Minor units returned.
    pub amount: i64,
}

#[derive(Default)]
struct Ledger {
    intents: Vec<FakeIntent>,
    by_key: HashMap<String, Saved>,
    fail_next: Option<u16>,
    create_calls: usize,
    events: u64,
    /// Intents that are no longer `requires_payment_method`: `succeeded` or `canceled`.
    status: HashMap<String, &'static str>,
    refunds: Vec<FakeRefund>,
    cancellations: Vec<String>,
}

struct Shared {
    api_key: String,
    ledger: Mutex<Ledger>,
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().expect("the fake gateway's lock is poisoned")
    }
}

/// A running fake gateway; the server stops when this is dropped.
pub struct FakeGateway {
    /// `http://127.0.0.1:<port>`: the `payment_gateway_url` to configure.
    pub base: String,
    /// The API key it accepts.
    pub api_key: String,
    /// The secret its webhooks are signed with.
    pub webhook_secret: String,
    shared: Arc<Shared>,
    client: reqwest::Client,
    server: JoinHandle<()>,
}

impl FakeGateway {
    /// Starts the fake on a free port of 127.0.0.1, accepting `api_key` and signing
    /// webhooks with `webhook_secret`.
    pub async fn start(api_key: &str, webhook_secret: &str) -> FakeGateway {
        let shared = Arc::new(Shared {
            api_key: api_key.to_owned(),
            ledger: Mutex::new(Ledger::default()),
        });
        let router = Router::new()
            .route("/v1/payment_intents", post(create_intent))
            .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
            .route("/v1/refunds", post(create_refund))
            .with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake gateway");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the fake gateway stopped");
        });
        FakeGateway {
            base,
            api_key: api_key.to_owned(),
            webhook_secret: webhook_secret.to_owned(),
            shared,
            client: reqwest::Client::new(),
            server,
        }
    }

    /// Makes the next `POST /v1/payment_intents` answer `status` with a Stripe error body,
    /// before authentication and idempotency are looked at (as an overloaded front end
    /// would), so nothing is saved for its idempotency key and a retry goes through.
    pub fn fail_next(&self, status: u16) {
        self.shared.ledger().fail_next = Some(status);
    }

    /// The intents created so far, oldest first.
    pub fn intents(&self) -> Vec<FakeIntent> {
        self.shared.ledger().intents.clone()
    }

    /// The customer pays: the intent `intent_id` is `succeeded` from now on, so it can be
    /// refunded and no longer cancelled. Panics if the fake never created that intent.
    pub fn succeed(&self, intent_id: &str) {
        let mut ledger = self.shared.ledger();
        assert!(
            ledger.intents.iter().any(|i| i.id == intent_id),
            "the fake gateway has no intent {intent_id}"
        );
        ledger.status.insert(intent_id.to_owned(), "succeeded");
    }

    /// The refunds accepted so far, oldest first (replays of an idempotency key count once).
    pub fn refunds(&self) -> Vec<FakeRefund> {
        self.shared.ledger().refunds.clone()
    }

    /// The intents cancelled so far, oldest first.
    pub fn cancellations(&self) -> Vec<String> {
        self.shared.ledger().cancellations.clone()
    }

    /// The `POST /v1/payment_intents` calls received, replays and refusals included.
    pub fn create_calls(&self) -> usize {
        self.shared.ledger().create_calls
    }

    /// The Stripe event `kind` (`payment_intent.succeeded`,
    /// `payment_intent.payment_failed`, …) for the intent `intent_id`, with a fresh
    /// `evt_<n>` id. Panics if the fake never created that intent.
    pub fn event(&self, kind: &str, intent_id: &str) -> String {
        let mut ledger = self.shared.ledger();
        let intent = ledger
            .intents
            .iter()
            .find(|i| i.id == intent_id)
            .unwrap_or_else(|| panic!("the fake gateway has no intent {intent_id}"))
            .clone();
        ledger.events += 1;
        let mut object = intent_json(&intent);
        match kind {
            "payment_intent.succeeded" => {
                object["status"] = json!("succeeded");
                object["amount_received"] = json!(intent.amount);
            }
            "payment_intent.payment_failed" => {
                object["last_payment_error"] = json!({
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "generic_decline",
                    "message": "Your card was declined."
                });
            }
            _ => {}
        }
        json!({
            "id": format!("evt_{}", ledger.events),
            "object": "event",
            "api_version": "2024-06-20",
            "created": commerce_core::auth::now_s(),
            "livemode": false,
            "pending_webhooks": 1,
            "request": { "id": null, "idempotency_key": intent.idempotency_key },
            "type": kind,
            "data": { "object": object }
        })
        .to_string()
    }

    /// The `Stripe-Signature` header value for `payload`, signed now.
    pub fn signature(&self, payload: &str) -> String {
        commerce_core::checkout::gateway::sign(
            payload.as_bytes(),
            &self.webhook_secret,
            commerce_core::auth::now_s(),
        )
    }

    /// Delivers `payload`, signed now, to `{app_base}/v1/checkout/payment-webhook` as Stripe
    /// does, and returns the status and the JSON body (`Value::Null` if not JSON).
    pub async fn deliver(&self, app_base: &str, payload: &str) -> (u16, Value) {
        let response = self
            .client
            .post(format!("{app_base}/v1/checkout/payment-webhook"))
            .header("content-type", "application/json")
            .header("stripe-signature", self.signature(payload))
            .body(payload.to_owned())
            .send()
            .await
            .expect("deliver the webhook");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("read the webhook answer");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

impl Drop for FakeGateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn intent_json(intent: &FakeIntent) -> Value {
    let mut metadata = serde_json::Map::new();
    if let Some(session) = &intent.session {
        metadata.insert("checkout_session".into(), json!(session));
    }
    json!({
        "id": intent.id,
        "object": "payment_intent",
        "amount": intent.amount,
        "currency": intent.currency,
        "status": "requires_payment_method",
        "client_secret": intent.client_secret,
        "automatic_payment_methods": { "enabled": true },
        "livemode": false,
        "metadata": metadata,
    })
}

fn stripe_error(status: StatusCode, error: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": error }).to_string(),
    )
        .into_response()
}

fn invalid_request(code: &str, param: &str, message: String) -> Response {
    stripe_error(
        StatusCode::BAD_REQUEST,
        json!({ "type": "invalid_request_error", "code": code, "param": param, "message": message }),
    )
}

/// The error body Stripe gives with `status` (for [`FakeGateway::fail_next`]).
fn programmed_failure(status: u16) -> Response {
    let status = StatusCode::from_u16(status).expect("fail_next takes an HTTP status");
    let (kind, message) = match status.as_u16() {
        402 => ("card_error", "Your card was declined."),
        429 => (
            "invalid_request_error",
            "Too many requests hit the API too quickly.",
        ),
        500..=599 => (
            "api_error",
            "An unknown error occurred while processing your request.",
        ),
        _ => ("invalid_request_error", "The request was refused."),
    };
    stripe_error(status, json!({ "type": kind, "message": message }))
}

async fn create_intent(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let failure = {
        let mut ledger = shared.ledger();
        ledger.create_calls += 1;
        ledger.fail_next.take()
    };
    if let Some(status) = failure {
        return programmed_failure(status);
    }

    if let Some(refused) = refused_key(&shared, &headers) {
        return refused;
    }

    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let mut amount = None;
    let mut currency = None;
    let mut session = None;
    for (name, value) in &params {
        match name.as_str() {
            "amount" => amount = Some(value.as_str()),
            "currency" => currency = Some(value.as_str()),
            "metadata[checkout_session]" => session = Some(value.clone()),
            "automatic_payment_methods[enabled]" if value == "true" || value == "false" => {}
            name if name.starts_with("metadata[") && name.ends_with(']') => {}
            name => {
                return invalid_request(
                    "parameter_unknown",
                    name,
                    format!("Received unknown parameter: {name}"),
                );
            }
        }
    }
    let Some(amount) = amount else {
        return invalid_request(
            "parameter_missing",
            "amount",
            "Missing required param: amount.".into(),
        );
    };
    let amount = match amount.parse::<i64>() {
        Ok(n) if n > 0 && amount.bytes().all(|b| b.is_ascii_digit()) => n,
        _ => {
            return invalid_request(
                "parameter_invalid_integer",
                "amount",
                "Invalid integer: amount must be a positive integer.".into(),
            );
        }
    };
    let Some(currency) = currency else {
        return invalid_request(
            "parameter_missing",
            "currency",
            "Missing required param: currency.".into(),
        );
    };
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_lowercase()) {
        return invalid_request(
            "parameter_invalid_string",
            "currency",
            format!("Invalid currency: {currency}."),
        );
    }
    let currency = currency.to_owned();

    let idempotency_key = idempotency_key(&headers);
    let params = with_endpoint("/v1/payment_intents", params);
    let mut ledger = shared.ledger();
    if let Some(replayed) = replay(&ledger, idempotency_key.as_deref(), &params) {
        return replayed;
    }
    let id = format!("pi_{}", ledger.intents.len() + 1);
    let intent = FakeIntent {
        client_secret: format!("{id}_secret_{}", random_token()),
        id,
        amount,
        currency,
        session,
        idempotency_key: idempotency_key.clone(),
    };
    let body = intent_json(&intent).to_string();
    ledger.intents.push(intent);
    save(&mut ledger, idempotency_key, params, StatusCode::OK, &body);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Stripe's answer to a missing or wrong API key; `None` when `headers` carry the key.
fn refused_key(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer == Some(shared.api_key.as_str()) {
        return None;
    }
    let message = match bearer {
        None => "You did not provide an API key.".to_owned(),
        Some(key) => format!(
            "Invalid API Key provided: {}****",
            key.chars().take(8).collect::<String>()
        ),
    };
    Some(stripe_error(
        StatusCode::UNAUTHORIZED,
        json!({ "type": "invalid_request_error", "message": message }),
    ))
}

fn idempotency_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The parameters an idempotency key is bound to: the endpoint and the sorted form
/// parameters, so a key reused on another endpoint or with other parameters is refused.
fn with_endpoint(endpoint: &str, mut params: Vec<(String, String)>) -> Vec<(String, String)> {
    params.sort();
    params.insert(0, (String::new(), endpoint.to_owned()));
    params
}

/// The first answer to `key`, replayed, or Stripe's `idempotency_error` when the key was
/// first used with other parameters; `None` for a new key.
fn replay(ledger: &Ledger, key: Option<&str>, params: &[(String, String)]) -> Option<Response> {
    let key = key?;
    let saved = ledger.by_key.get(key)?;
    if saved.params != params {
        return Some(stripe_error(
            StatusCode::BAD_REQUEST,
            json!({
                "type": "idempotency_error",
                "message": format!(
                    "Keys for idempotent requests can only be used with the same parameters \
                     they were first used with. Try using a key other than '{key}' if you \
                     meant to execute a different request."
                ),
            }),
        ));
    }
    Some(
        (
            saved.status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::HeaderName::from_static("idempotent-replayed"), "true"),
            ],
            saved.body.clone(),
        )
            .into_response(),
    )
}

fn save(
    ledger: &mut Ledger,
    key: Option<String>,
    params: Vec<(String, String)>,
    status: StatusCode,
    body: &str,
) {
    if let Some(key) = key {
        ledger.by_key.insert(
            key,
            Saved {
                params,
                status,
                body: body.to_owned(),
            },
        );
    }
}

fn no_such_intent(param: &str, id: &str) -> Response {
    stripe_error(
        StatusCode::NOT_FOUND,
        json!({
            "type": "invalid_request_error",
            "code": "resource_missing",
            "param": param,
            "message": format!("No such payment_intent: '{id}'"),
        }),
    )
}

/// `POST /v1/payment_intents/{id}/cancel`: only an intent not yet paid (nor cancelled)
/// may be cancelled, as at Stripe.
async fn cancel_intent(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = refused_key(&shared, &headers) {
        return refused;
    }
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    for (name, value) in &params {
        let known = name == "cancellation_reason"
            && ["duplicate", "fraudulent", "requested_by_customer", "abandoned"].contains(&value.as_str());
        if !known {
            return invalid_request(
                "parameter_unknown",
                name,
                format!("Received unknown parameter: {name}"),
            );
        }
    }
    let key = idempotency_key(&headers);
    let params = with_endpoint(&format!("/v1/payment_intents/{id}/cancel"), params);
    let mut ledger = shared.ledger();
    if let Some(replayed) = replay(&ledger, key.as_deref(), &params) {
        return replayed;
    }
    let Some(intent) = ledger.intents.iter().find(|i| i.id == id).cloned() else {
        return no_such_intent("intent", &id);
    };
    if let Some(status) = ledger.status.get(&id) {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({
                "type": "invalid_request_error",
                "code": "payment_intent_unexpected_state",
                "message": format!(
                    "You cannot cancel this PaymentIntent because it has a status of {status}."
                ),
            }),
        );
    }
    ledger.status.insert(id.clone(), "canceled");
    ledger.cancellations.push(id);
    let mut object = intent_json(&intent);
    object["status"] = json!("canceled");
    let body = object.to_string();
    save(&mut ledger, key, params, StatusCode::OK, &body);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `POST /v1/refunds`: returns all or part of a succeeded intent's payment, never more
/// than was paid, as at Stripe.
async fn create_refund(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = refused_key(&shared, &headers) {
        return refused;
    }
    let params: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let mut intent_id = None;
    let mut amount = None;
    for (name, value) in &params {
        match name.as_str() {
            "payment_intent" => intent_id = Some(value.clone()),
            "amount" => match value.parse::<i64>() {
                Ok(n) if n > 0 && value.bytes().all(|b| b.is_ascii_digit()) => amount = Some(n),
                _ => {
                    return invalid_request(
                        "parameter_invalid_integer",
                        "amount",
                        "Invalid integer: amount must be a positive integer.".into(),
                    );
                }
            },
            "reason" if ["duplicate", "fraudulent", "requested_by_customer"].contains(&value.as_str()) => {}
            name if name.starts_with("metadata[") && name.ends_with(']') => {}
            name => {
                return invalid_request(
                    "parameter_unknown",
                    name,
                    format!("Received unknown parameter: {name}"),
                );
            }
        }
    }
    let Some(intent_id) = intent_id else {
        return invalid_request(
            "parameter_missing",
            "payment_intent",
            "One of the following params should be provided for this request: payment_intent or charge."
                .into(),
        );
    };
    let key = idempotency_key(&headers);
    let params = with_endpoint("/v1/refunds", params);
    let mut ledger = shared.ledger();
    if let Some(replayed) = replay(&ledger, key.as_deref(), &params) {
        return replayed;
    }
    let Some(intent) = ledger.intents.iter().find(|i| i.id == intent_id).cloned() else {
        return no_such_intent("payment_intent", &intent_id);
    };
    if ledger.status.get(&intent_id) != Some(&"succeeded") {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({
                "type": "invalid_request_error",
                "code": "payment_intent_unexpected_state",
                "param": "payment_intent",
                "message": format!("This PaymentIntent ({intent_id}) does not have a successful charge to refund."),
            }),
        );
    }
    let refunded: i64 = ledger
        .refunds
        .iter()
        .filter(|r| r.payment_intent == intent_id)
        .map(|r| r.amount)
        .sum();
    let left = intent.amount - refunded;
    if left == 0 {
        return stripe_error(
            StatusCode::BAD_REQUEST,
            json!({
                "type": "invalid_request_error",
                "code": "charge_already_refunded",
                "message": format!("The payment of {intent_id} has already been refunded."),
            }),
        );
    }
    let amount = amount.unwrap_or(left);
    if amount > left {
        return invalid_request(
            "amount_too_large",
            "amount",
            format!("Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"),
        );
    }
    let refund = FakeRefund {
        id: format!("re_{}", ledger.refunds.len() + 1),
        payment_intent: intent_id,
        amount,
    };
    let body = json!({
        "id": refund.id,
        "object": "refund",
        "amount": refund.amount,
        "currency": intent.currency,
        "payment_intent": refund.payment_intent,
        "status": "succeeded",
    })
    .to_string();
    ledger.refunds.push(refund);
    save(&mut ledger, key, params, StatusCode::OK, &body);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// 96 random bits as 24 hex characters.
fn random_token() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("randomness for a client secret");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
