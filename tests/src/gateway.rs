//! A fake payment gateway that speaks Stripe's PaymentIntent and Refund APIs over real HTTP
//! on 127.0.0.1, so the service's own gateway client and outbound HTTP adapter are what the
//! tests exercise: nothing in the product is stubbed.
//!
//! What it copies from Stripe, because checkout and the payment outbox rely on it: Bearer
//! authentication, form parameters with Stripe's validation and error bodies, unknown
//! parameters refused, and idempotency keys (a repeat to the same endpoint with the same
//! parameters replays the first answer with `Idempotent-Replayed: true`; the same key with
//! other parameters or another endpoint is a 400 `idempotency_error`; a request refused by
//! validation saves nothing, one that ran saves its answer, refusals included). Webhook
//! events are Stripe events signed with the `Stripe-Signature` scheme.
//!
//! Routes: `POST /v1/payment_intents` (create), `POST /v1/payment_intents/{id}/cancel`
//! (refused with `payment_intent_unexpected_state` once the intent succeeded or was
//! cancelled), `POST /v1/refunds` (of a succeeded intent, at most what is left of it:
//! `charge_already_refunded` once nothing is, `amount_too_large` beyond it). An intent
//! succeeds when a test says the customer paid ([`FakeGateway::succeed`], or the
//! `payment_intent.succeeded` event of [`FakeGateway::event`]).

use std::collections::{HashMap, HashSet};
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

/// A refund the fake made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRefund {
    /// `re_<n>`.
    pub id: String,
    /// The intent whose payment it gives back.
    pub payment_intent: String,
    /// Minor units given back.
    pub amount: i64,
}

/// The first answer given to an idempotency key, replayed to every repeat.
struct Saved {
    path: String,
    params: Vec<(String, String)>,
    status: StatusCode,
    body: String,
}

/// Answers programmed to come before the real ones: `(how many more, HTTP status)`.
#[derive(Default, Clone, Copy)]
struct Failures {
    left: usize,
    status: u16,
}

impl Failures {
    /// The status to fail this call with, if one is still programmed.
    fn take(&mut self) -> Option<u16> {
        (self.left > 0).then(|| {
            self.left -= 1;
            self.status
        })
    }
}

#[derive(Default)]
struct Ledger {
    intents: Vec<FakeIntent>,
    succeeded: HashSet<String>,
    cancelled: Vec<String>,
    refunds: Vec<FakeRefund>,
    by_key: HashMap<String, Saved>,
    fail_next: Option<u16>,
    fail_refunds: Failures,
    fail_cancels: Failures,
    create_calls: usize,
    refund_calls: usize,
    cancel_calls: usize,
    events: u64,
}

impl Ledger {
    fn intent(&self, id: &str) -> Option<&FakeIntent> {
        self.intents.iter().find(|i| i.id == id)
    }

    /// Stripe's status of the intent: cancelled, paid, or waiting for a payment.
    fn status(&self, id: &str) -> &'static str {
        if self.cancelled.iter().any(|c| c == id) {
            "canceled"
        } else if self.succeeded.contains(id) {
            "succeeded"
        } else {
            "requires_payment_method"
        }
    }

    fn refunded(&self, id: &str) -> i64 {
        self.refunds
            .iter()
            .filter(|r| r.payment_intent == id)
            .map(|r| r.amount)
            .sum()
    }

    /// The saved answer to `key`, if the key was used: a replay for the same endpoint and
    /// parameters, an `idempotency_error` otherwise.
    fn replay(&self, key: Option<&str>, path: &str, params: &[(String, String)]) -> Option<Response> {
        let key = key?;
        let saved = self.by_key.get(key)?;
        if saved.path != path || saved.params != params {
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

    /// Keeps the answer to `key` for its repeats, and gives it.
    fn answer(
        &mut self,
        key: Option<String>,
        path: &str,
        params: Vec<(String, String)>,
        status: StatusCode,
        body: Value,
    ) -> Response {
        let body = body.to_string();
        if let Some(key) = key {
            self.by_key.insert(
                key,
                Saved {
                    path: path.to_owned(),
                    params,
                    status,
                    body: body.clone(),
                },
            );
        }
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
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

    /// Makes the next `n` calls of `POST /v1/refunds` answer `status` with a Stripe error
    /// body, before authentication and idempotency are looked at, so nothing is saved for
    /// their idempotency keys and a retry goes through.
    pub fn fail_next_refunds(&self, n: usize, status: u16) {
        self.shared.ledger().fail_refunds = Failures { left: n, status };
    }

    /// The same as [`FakeGateway::fail_next_refunds`] for
    /// `POST /v1/payment_intents/{id}/cancel`.
    pub fn fail_next_cancels(&self, n: usize, status: u16) {
        self.shared.ledger().fail_cancels = Failures { left: n, status };
    }

    /// The intents created so far, oldest first.
    pub fn intents(&self) -> Vec<FakeIntent> {
        self.shared.ledger().intents.clone()
    }

    /// The customer paid `intent_id`: it is now `succeeded`, so it can be refunded and no
    /// longer cancelled. Returns `false` (and changes nothing) if the intent was cancelled
    /// first, as a payment on a cancelled intent cannot happen. Panics if the fake never
    /// created that intent.
    pub fn succeed(&self, intent_id: &str) -> bool {
        let mut ledger = self.shared.ledger();
        assert!(
            ledger.intent(intent_id).is_some(),
            "the fake gateway has no intent {intent_id}"
        );
        if ledger.status(intent_id) == "canceled" {
            return false;
        }
        ledger.succeeded.insert(intent_id.to_owned());
        true
    }

    /// The refunds made so far (replays not counted twice), oldest first.
    pub fn refunds(&self) -> Vec<FakeRefund> {
        self.shared.ledger().refunds.clone()
    }

    /// The intents actually cancelled, in the order they were (replays and refusals not
    /// counted).
    pub fn cancellations(&self) -> Vec<String> {
        self.shared.ledger().cancelled.clone()
    }

    /// The `POST /v1/refunds` calls received, replays, refusals and failures included.
    pub fn refund_calls(&self) -> usize {
        self.shared.ledger().refund_calls
    }

    /// The `POST /v1/payment_intents/{id}/cancel` calls received, replays, refusals and
    /// failures included.
    pub fn cancel_calls(&self) -> usize {
        self.shared.ledger().cancel_calls
    }

    /// The `POST /v1/payment_intents` calls received, replays and refusals included.
    pub fn create_calls(&self) -> usize {
        self.shared.ledger().create_calls
    }

    /// The Stripe event `kind` (`payment_intent.succeeded`,
    /// `payment_intent.payment_failed`, …) for the intent `intent_id`, with a fresh
    /// `evt_<n>` id. `payment_intent.succeeded` marks the intent paid, as
    /// [`FakeGateway::succeed`] does. Panics if the fake never created that intent, or
    /// for a success of an intent that was cancelled (to model a payment that beat the
    /// cancellation, call `succeed` before cancelling and deliver the event after).
    pub fn event(&self, kind: &str, intent_id: &str) -> String {
        let mut ledger = self.shared.ledger();
        let intent = ledger
            .intent(intent_id)
            .unwrap_or_else(|| panic!("the fake gateway has no intent {intent_id}"))
            .clone();
        if kind == "payment_intent.succeeded" {
            assert!(
                ledger.status(intent_id) != "canceled",
                "the intent {intent_id} was cancelled: it cannot succeed"
            );
            ledger.succeeded.insert(intent_id.to_owned());
        }
        ledger.events += 1;
        let mut object = intent_json(&intent, ledger.status(intent_id));
        match kind {
            "payment_intent.succeeded" => {
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

fn intent_json(intent: &FakeIntent, status: &str) -> Value {
    let mut metadata = serde_json::Map::new();
    if let Some(session) = &intent.session {
        metadata.insert("checkout_session".into(), json!(session));
    }
    json!({
        "id": intent.id,
        "object": "payment_intent",
        "amount": intent.amount,
        "currency": intent.currency,
        "status": status,
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

/// The 401 Stripe gives a request without the right Bearer key; `None` if the key is right.
fn unauthenticated(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
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

/// The parameters of a form body, sorted (what an idempotency key is compared on).
fn sorted_params(body: &[u8]) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    params.sort();
    params
}

fn unknown_parameter(name: &str) -> Response {
    invalid_request(
        "parameter_unknown",
        name,
        format!("Received unknown parameter: {name}"),
    )
}

/// A positive integer amount as Stripe validates it.
fn parse_amount(text: &str) -> Option<i64> {
    text.parse::<i64>()
        .ok()
        .filter(|n| *n > 0 && text.bytes().all(|b| b.is_ascii_digit()))
}

fn invalid_amount() -> Response {
    invalid_request(
        "parameter_invalid_integer",
        "amount",
        "Invalid integer: amount must be a positive integer.".into(),
    )
}

fn no_such_intent(id: &str, param: &str) -> Value {
    json!({
        "type": "invalid_request_error",
        "code": "resource_missing",
        "param": param,
        "message": format!("No such payment_intent: '{id}'"),
    })
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
    if let Some(refused) = unauthenticated(&shared, &headers) {
        return refused;
    }

    let params = sorted_params(&body);
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
            name => return unknown_parameter(name),
        }
    }
    let Some(amount) = amount else {
        return invalid_request(
            "parameter_missing",
            "amount",
            "Missing required param: amount.".into(),
        );
    };
    let Some(amount) = parse_amount(amount) else {
        return invalid_amount();
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

    let key = idempotency_key(&headers);
    let path = "/v1/payment_intents";
    let mut ledger = shared.ledger();
    if let Some(replay) = ledger.replay(key.as_deref(), path, &params) {
        return replay;
    }
    let id = format!("pi_{}", ledger.intents.len() + 1);
    let intent = FakeIntent {
        client_secret: format!("{id}_secret_{}", random_token()),
        id,
        amount,
        currency: currency.to_owned(),
        session,
        idempotency_key: key.clone(),
    };
    let body = intent_json(&intent, "requires_payment_method");
    ledger.intents.push(intent);
    ledger.answer(key, path, params, StatusCode::OK, body)
}

async fn cancel_intent(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let failure = {
        let mut ledger = shared.ledger();
        ledger.cancel_calls += 1;
        ledger.fail_cancels.take()
    };
    if let Some(status) = failure {
        return programmed_failure(status);
    }
    if let Some(refused) = unauthenticated(&shared, &headers) {
        return refused;
    }
    let params = sorted_params(&body);
    let mut reason = None;
    for (name, value) in &params {
        match name.as_str() {
            "cancellation_reason"
                if ["duplicate", "fraudulent", "requested_by_customer", "abandoned"]
                    .contains(&value.as_str()) =>
            {
                reason = Some(value.clone());
            }
            name => return unknown_parameter(name),
        }
    }

    let key = idempotency_key(&headers);
    let path = format!("/v1/payment_intents/{id}/cancel");
    let mut ledger = shared.ledger();
    if let Some(replay) = ledger.replay(key.as_deref(), &path, &params) {
        return replay;
    }
    let Some(intent) = ledger.intent(&id).cloned() else {
        let error = json!({ "error": no_such_intent(&id, "intent") });
        return ledger.answer(key, &path, params, StatusCode::NOT_FOUND, error);
    };
    let status = ledger.status(&id);
    if matches!(status, "succeeded" | "canceled") {
        let error = json!({ "error": {
            "type": "invalid_request_error",
            "code": "payment_intent_unexpected_state",
            "message": format!(
                "You cannot cancel this PaymentIntent because it has a status of {status}. Only a \
                 PaymentIntent with one of the following statuses may be canceled: \
                 requires_payment_method, requires_capture, requires_confirmation, \
                 requires_action, processing."
            ),
            "payment_intent": intent_json(&intent, status),
        }});
        return ledger.answer(key, &path, params, StatusCode::BAD_REQUEST, error);
    }
    ledger.cancelled.push(id.clone());
    let mut body = intent_json(&intent, "canceled");
    body["cancellation_reason"] = json!(reason);
    body["canceled_at"] = json!(commerce_core::auth::now_s());
    ledger.answer(key, &path, params, StatusCode::OK, body)
}

async fn create_refund(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let failure = {
        let mut ledger = shared.ledger();
        ledger.refund_calls += 1;
        ledger.fail_refunds.take()
    };
    if let Some(status) = failure {
        return programmed_failure(status);
    }
    if let Some(refused) = unauthenticated(&shared, &headers) {
        return refused;
    }
    let params = sorted_params(&body);
    let mut intent_id = None;
    let mut amount = None;
    let mut metadata = serde_json::Map::new();
    for (name, value) in &params {
        match name.as_str() {
            "payment_intent" => intent_id = Some(value.clone()),
            "amount" => match parse_amount(value) {
                Some(n) => amount = Some(n),
                None => return invalid_amount(),
            },
            "reason" if ["duplicate", "fraudulent", "requested_by_customer"].contains(&value.as_str()) => {}
            name if name.starts_with("metadata[") && name.ends_with(']') => {
                metadata.insert(name["metadata[".len()..name.len() - 1].to_owned(), json!(value));
            }
            name => return unknown_parameter(name),
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
    let path = "/v1/refunds";
    let mut ledger = shared.ledger();
    if let Some(replay) = ledger.replay(key.as_deref(), path, &params) {
        return replay;
    }
    let Some(intent) = ledger.intent(&intent_id).cloned() else {
        let error = json!({ "error": no_such_intent(&intent_id, "payment_intent") });
        return ledger.answer(key, path, params, StatusCode::NOT_FOUND, error);
    };
    let status = ledger.status(&intent_id);
    let left = intent.amount - ledger.refunded(&intent_id);
    let charge = format!("ch_{}", intent.id.trim_start_matches("pi_"));
    let refusal = if status != "succeeded" {
        Some((
            "payment_intent_unexpected_state",
            format!("This PaymentIntent ({intent_id}) does not have a successful charge to refund."),
        ))
    } else if left == 0 {
        Some((
            "charge_already_refunded",
            format!("Charge {charge} has already been refunded."),
        ))
    } else if amount.is_some_and(|a| a > left) {
        Some((
            "amount_too_large",
            format!(
                "Refund amount ({}) is greater than unrefunded amount on charge ({left})",
                amount.unwrap_or_default()
            ),
        ))
    } else {
        None
    };
    if let Some((code, message)) = refusal {
        let error = json!({ "error": {
            "type": "invalid_request_error",
            "code": code,
            "message": message,
            "charge": charge,
            "payment_intent": intent_json(&intent, status),
        }});
        return ledger.answer(key, path, params, StatusCode::BAD_REQUEST, error);
    }
    let refund = FakeRefund {
        id: format!("re_{}", ledger.refunds.len() + 1),
        payment_intent: intent_id,
        amount: amount.unwrap_or(left),
    };
    let body = json!({
        "id": refund.id,
        "object": "refund",
        "amount": refund.amount,
        "currency": intent.currency,
        "charge": charge,
        "payment_intent": refund.payment_intent,
        "status": "succeeded",
        "reason": null,
        "metadata": metadata,
        "created": commerce_core::auth::now_s(),
    });
    ledger.refunds.push(refund);
    ledger.answer(key, path, params, StatusCode::OK, body)
}

/// 96 random bits as 24 hex characters.
fn random_token() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("randomness for a client secret");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
