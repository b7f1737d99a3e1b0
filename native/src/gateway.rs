//! A local payment gateway that speaks Stripe's PaymentIntent and Refund APIs over real
//! HTTP, for development (`commerce gateway`, started by `scripts/run`) and for the tests
//! (`commerce_tests::gateway` wraps it), so the service's own gateway client and outbound
//! HTTP adapter are what runs: nothing in the product is stubbed.
//!
//! What it copies from Stripe, because checkout and the payment outbox rely on it: Bearer
//! authentication, form parameters with Stripe's validation and error bodies, unknown
//! parameters refused, and idempotency keys (a repeat to the same endpoint with the same
//! parameters replays the first answer with `Idempotent-Replayed: true`; the same key with
//! other parameters or another endpoint is a 400 `idempotency_error`; a request refused by
//! validation saves nothing, one that ran saves its answer, refusals included). Webhook
//! events are Stripe events signed with the `Stripe-Signature` scheme.
//!
//! Routes: `POST /v1/payment_intents` (create), `GET /v1/payment_intents/{id}` (retrieve),
//! `POST /v1/payment_intents/{id}/confirm` (the customer pays, as `stripe payment_intents
//! confirm` does: `payment_method=pm_card_visa` or none succeeds, `pm_card_chargeDeclined`
//! is declined with a 402; either way the signed `payment_intent.succeeded` or
//! `payment_intent.payment_failed` event is sent to the webhook URL, when one is set,
//! before the answer, and redelivered in the background until a 2xx if that fails, as
//! Stripe does), `POST /v1/payment_intents/{id}/cancel`
//! (refused with `payment_intent_unexpected_state` once the intent succeeded or was
//! cancelled), `POST /v1/refunds` (of a succeeded intent, at most what is left of it:
//! `charge_already_refunded` once nothing is, `amount_too_large` beyond it). An intent
//! succeeds when it is confirmed over HTTP, or when a test says the customer paid
//! ([`Gateway::succeed`], or the `payment_intent.succeeded` event of [`Gateway::event`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A PaymentIntent the gateway holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
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

/// A refund the gateway made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
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
    intents: Vec<Intent>,
    /// Where each intent is in `intents`, by id: a load run looks one up per event.
    by_id: HashMap<String, usize>,
    succeeded: HashSet<String>,
    cancelled: Vec<String>,
    refunds: Vec<Refund>,
    by_key: HashMap<String, Saved>,
    fail_next: Option<u16>,
    /// How long the next `POST /v1/payment_intents` waits before it is handled.
    delay_next: Option<Duration>,
    /// How long the next `POST /v1/payment_intents/{id}/cancel` waits before it is handled.
    delay_next_cancel: Option<Duration>,
    fail_refunds: Failures,
    fail_cancels: Failures,
    create_calls: usize,
    refund_calls: usize,
    cancel_calls: usize,
    events: u64,
    /// Put in every id after its `pi_`/`re_`/`evt_`, so that ids of two runs differ.
    id_tag: String,
}

impl Ledger {
    /// The Stripe event `kind` for `intent_id` (see [`Gateway::event`]).
    fn event(&mut self, kind: &str, intent_id: &str) -> String {
        let intent = self
            .intent(intent_id)
            .unwrap_or_else(|| panic!("the gateway has no intent {intent_id}"))
            .clone();
        if kind == "payment_intent.succeeded" {
            assert!(
                self.status(intent_id) != "canceled",
                "the intent {intent_id} was cancelled: it cannot succeed"
            );
            self.succeeded.insert(intent_id.to_owned());
        }
        self.events += 1;
        let mut object = intent_json(&intent, self.status(intent_id));
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
            "id": format!("evt_{}{}", self.id_tag, self.events),
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

    fn intent(&self, id: &str) -> Option<&Intent> {
        self.by_id.get(id).map(|&at| &self.intents[at])
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
    webhook_secret: String,
    /// Where events are sent on confirmation (`None`: nowhere, the caller delivers them).
    webhook_url: Mutex<Option<String>>,
    client: reqwest::Client,
    ledger: Mutex<Ledger>,
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running gateway; the server stops when this is dropped.
pub struct Gateway {
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

impl Gateway {
    /// Starts the gateway on a free port of 127.0.0.1, accepting `api_key` and signing
    /// webhooks with `webhook_secret`; it sends no webhook until
    /// [`Gateway::set_webhook_url`] names where.
    pub async fn start(api_key: &str, webhook_secret: &str) -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the local gateway");
        Gateway::serve(listener, api_key, webhook_secret, None, "")
    }

    /// Serves the gateway on `listener`; confirmations send their signed events to
    /// `webhook_url` (the app's `/v1/checkout/payment-webhook`) when one is given. Ids are
    /// `pi_<id_tag><n>`, `re_<id_tag><n>`, `evt_<id_tag><n>`.
    pub fn serve(
        listener: TcpListener,
        api_key: &str,
        webhook_secret: &str,
        webhook_url: Option<String>,
        id_tag: &str,
    ) -> Gateway {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let shared = Arc::new(Shared {
            api_key: api_key.to_owned(),
            webhook_secret: webhook_secret.to_owned(),
            webhook_url: Mutex::new(webhook_url),
            client: client.clone(),
            ledger: Mutex::new(Ledger {
                id_tag: id_tag.to_owned(),
                ..Ledger::default()
            }),
        });
        let router = Router::new()
            .route("/v1/payment_intents", post(create_intent))
            .route("/v1/payment_intents/{id}", get(retrieve_intent))
            .route("/v1/payment_intents/{id}/confirm", post(confirm_intent))
            .route("/v1/payment_intents/{id}/cancel", post(cancel_intent))
            .route("/v1/refunds", post(create_refund))
            .with_state(shared.clone());
        let base = match listener.local_addr() {
            Ok(addr) => format!("http://{addr}"),
            Err(_) => String::new(),
        };
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("commerce gateway: stopped: {e}");
            }
        });
        Gateway {
            base,
            api_key: api_key.to_owned(),
            webhook_secret: webhook_secret.to_owned(),
            shared,
            client,
            server,
        }
    }

    /// Sends the events of later confirmations to `url` (`None`: to nobody).
    pub fn set_webhook_url(&self, url: Option<String>) {
        *self.shared.webhook_url.lock().unwrap_or_else(|e| e.into_inner()) = url;
    }

    /// Runs until the server stops (for `commerce gateway`).
    pub async fn wait(mut self) {
        let _ = (&mut self.server).await;
    }

    /// Makes the next `POST /v1/payment_intents` answer `status` with a Stripe error body,
    /// before authentication and idempotency are looked at (as an overloaded front end
    /// would), so nothing is saved for its idempotency key and a retry goes through.
    pub fn fail_next(&self, status: u16) {
        self.shared.ledger().fail_next = Some(status);
    }

    /// Makes the next `POST /v1/payment_intents` wait `delay` before it is handled, as a
    /// slow gateway would, so a test can act on the session meanwhile.
    pub fn delay_next(&self, delay: Duration) {
        self.shared.ledger().delay_next = Some(delay);
    }

    /// The same as [`Gateway::delay_next`] for `POST /v1/payment_intents/{id}/cancel`.
    pub fn delay_next_cancel(&self, delay: Duration) {
        self.shared.ledger().delay_next_cancel = Some(delay);
    }

    /// Makes the next `n` calls of `POST /v1/refunds` answer `status` with a Stripe error
    /// body, before authentication and idempotency are looked at, so nothing is saved for
    /// their idempotency keys and a retry goes through.
    pub fn fail_next_refunds(&self, n: usize, status: u16) {
        self.shared.ledger().fail_refunds = Failures { left: n, status };
    }

    /// The same as [`Gateway::fail_next_refunds`] for
    /// `POST /v1/payment_intents/{id}/cancel`.
    pub fn fail_next_cancels(&self, n: usize, status: u16) {
        self.shared.ledger().fail_cancels = Failures { left: n, status };
    }

    /// The intents created so far, oldest first.
    pub fn intents(&self) -> Vec<Intent> {
        self.shared.ledger().intents.clone()
    }

    /// The customer paid `intent_id`: it is now `succeeded`, so it can be refunded and no
    /// longer cancelled. Returns `false` (and changes nothing) if the intent was cancelled
    /// first, as a payment on a cancelled intent cannot happen. Panics if the gateway never
    /// created that intent.
    pub fn succeed(&self, intent_id: &str) -> bool {
        let mut ledger = self.shared.ledger();
        assert!(
            ledger.intent(intent_id).is_some(),
            "the gateway has no intent {intent_id}"
        );
        if ledger.status(intent_id) == "canceled" {
            return false;
        }
        ledger.succeeded.insert(intent_id.to_owned());
        true
    }

    /// The refunds made so far (replays not counted twice), oldest first.
    pub fn refunds(&self) -> Vec<Refund> {
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
    /// [`Gateway::succeed`] does. Panics if the gateway never created that intent, or
    /// for a success of an intent that was cancelled (to model a payment that beat the
    /// cancellation, call `succeed` before cancelling and deliver the event after).
    pub fn event(&self, kind: &str, intent_id: &str) -> String {
        let mut ledger = self.shared.ledger();
        ledger.event(kind, intent_id)
    }

    /// The `Stripe-Signature` header value for `payload`, signed now.
    pub fn signature(&self, payload: &str) -> String {
        signature(&self.webhook_secret, payload)
    }

    /// Delivers `payload`, signed now, to `{app_base}/v1/checkout/payment-webhook` as Stripe
    /// does, and returns the status and the JSON body (`Value::Null` if not JSON).
    pub async fn deliver(&self, app_base: &str, payload: &str) -> (u16, Value) {
        let url = format!("{app_base}/v1/checkout/payment-webhook");
        send_event(&self.client, &url, &self.webhook_secret, payload)
            .await
            .expect("deliver the webhook")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The `Stripe-Signature` header value for `payload` signed with `secret`, now.
fn signature(secret: &str, payload: &str) -> String {
    commerce_core::checkout::gateway::sign(payload.as_bytes(), secret, commerce_core::auth::now_s())
}

/// Posts the event `payload`, signed now, to `url`: the status and JSON body of the answer.
async fn send_event(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    payload: &str,
) -> Result<(u16, Value), reqwest::Error> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("stripe-signature", signature(secret, payload))
        .body(payload.to_owned())
        .send()
        .await?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await?;
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

/// Sends `payload` to the webhook URL, if one is set: once now, then (if that failed) in
/// the background with growing pauses until a 2xx or ten attempts, as Stripe redelivers.
async fn notify(shared: &Arc<Shared>, payload: String) {
    let url = shared
        .webhook_url
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Some(url) = url else { return };
    let first = send_event(&shared.client, &url, &shared.webhook_secret, &payload).await;
    if matches!(first, Ok((200..=299, _))) {
        return;
    }
    eprintln!("commerce gateway: webhook to {url} failed ({first:?}); redelivering");
    let shared = shared.clone();
    tokio::spawn(async move {
        for attempt in 1..10u32 {
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt * attempt))).await;
            let sent = send_event(&shared.client, &url, &shared.webhook_secret, &payload).await;
            if matches!(sent, Ok((200..=299, _))) {
                return;
            }
            eprintln!("commerce gateway: webhook to {url} failed again ({sent:?})");
        }
    });
}

fn intent_json(intent: &Intent, status: &str) -> Value {
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

fn json_answer(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
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

/// The error body Stripe gives with `status` (for [`Gateway::fail_next`]).
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
    // Stripe takes the key as a Bearer token, or as Basic auth's user (`curl -u sk_…:`).
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ").map(str::to_owned).or_else(|| {
                let basic = v.strip_prefix("Basic ")?;
                let decoded = base64::engine::general_purpose::STANDARD.decode(basic).ok()?;
                let text = String::from_utf8(decoded).ok()?;
                Some(
                    text.split_once(':')
                        .map_or(text.clone(), |(user, _)| user.to_owned()),
                )
            })
        });
    let bearer = bearer.as_deref();
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
    let (failure, delay) = {
        let mut ledger = shared.ledger();
        ledger.create_calls += 1;
        (ledger.fail_next.take(), ledger.delay_next.take())
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
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
    let id = format!("pi_{}{}", ledger.id_tag, ledger.intents.len() + 1);
    let intent = Intent {
        client_secret: format!("{id}_secret_{}", random_token()),
        id,
        amount,
        currency: currency.to_owned(),
        session,
        idempotency_key: key.clone(),
    };
    let body = intent_json(&intent, "requires_payment_method");
    let at = ledger.intents.len();
    ledger.by_id.insert(intent.id.clone(), at);
    ledger.intents.push(intent);
    ledger.answer(key, path, params, StatusCode::OK, body)
}

async fn retrieve_intent(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = unauthenticated(&shared, &headers) {
        return refused;
    }
    let ledger = shared.ledger();
    match ledger.intent(&id) {
        Some(intent) => json_answer(StatusCode::OK, &intent_json(intent, ledger.status(&id))),
        None => stripe_error(StatusCode::NOT_FOUND, no_such_intent(&id, "intent")),
    }
}

/// `POST /v1/payment_intents/{id}/confirm`: the customer pays (or is declined), and the
/// event says so to the app.
async fn confirm_intent(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = unauthenticated(&shared, &headers) {
        return refused;
    }
    let params = sorted_params(&body);
    let mut declined = false;
    for (name, value) in &params {
        match name.as_str() {
            "payment_method" => match value.as_str() {
                "pm_card_visa" | "pm_card_mastercard" => {}
                "pm_card_chargeDeclined" | "pm_card_visa_chargeDeclined" => declined = true,
                other => {
                    return invalid_request(
                        "resource_missing",
                        "payment_method",
                        format!("No such PaymentMethod: '{other}'"),
                    );
                }
            },
            "return_url" => {}
            name => return unknown_parameter(name),
        }
    }
    let (status, answer, event) = {
        let mut ledger = shared.ledger();
        let Some(intent) = ledger.intent(&id).cloned() else {
            return stripe_error(StatusCode::NOT_FOUND, no_such_intent(&id, "intent"));
        };
        let state = ledger.status(&id);
        if state != "requires_payment_method" {
            return stripe_error(
                StatusCode::BAD_REQUEST,
                json!({
                    "type": "invalid_request_error",
                    "code": "payment_intent_unexpected_state",
                    "message": format!(
                        "You cannot confirm this PaymentIntent because it has a status of {state}."
                    ),
                    "payment_intent": intent_json(&intent, state),
                }),
            );
        }
        if declined {
            let event = ledger.event("payment_intent.payment_failed", &id);
            let error = json!({
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "generic_decline",
                "message": "Your card was declined.",
                "payment_intent": intent_json(&intent, "requires_payment_method"),
            });
            (StatusCode::PAYMENT_REQUIRED, json!({ "error": error }), event)
        } else {
            let event = ledger.event("payment_intent.succeeded", &id);
            let mut body = intent_json(&intent, "succeeded");
            body["amount_received"] = json!(intent.amount);
            (StatusCode::OK, body, event)
        }
    };
    notify(&shared, event).await;
    json_answer(status, &answer)
}

async fn cancel_intent(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (failure, delay) = {
        let mut ledger = shared.ledger();
        ledger.cancel_calls += 1;
        (ledger.fail_cancels.take(), ledger.delay_next_cancel.take())
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
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
    let refund = Refund {
        id: format!("re_{}{}", ledger.id_tag, ledger.refunds.len() + 1),
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
pub fn random_token() -> String {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).expect("randomness for a client secret");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
