//! The payment gateway, in Stripe's wire format (DESIGN §5): creating a PaymentIntent over
//! the [`Http`] port, and verifying and reading the webhook events that report its fate.
//!
//! Everything here is what Stripe's own API and libraries do, so the service works against
//! Stripe test mode as it is and against the fake gateway of the test suite alike:
//! form-encoded requests with a Bearer key and an `Idempotency-Key`, JSON answers, and
//! webhooks signed `Stripe-Signature: t=…,v1=hex(HMAC-SHA256(secret, "{t}.{body}"))`.
//!
//! Failures are sorted by what the caller can do about them: a gateway that cannot be
//! reached, is overloaded or is busy with the same key is 503 (retry with the same
//! idempotency key and get the same intent); a request the gateway refuses is 422 with the
//! gateway's own reason; an answer that does not describe the intent we asked for is a
//! bug or a misconfigured URL, 500.
//!
//! Refunds and intent cancellations are the payment outbox's (`outbox/gateway.rs`); they
//! are sent with the same request builder and read with the same error shape as here.

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;

use crate::error::{Error, PortError};
use crate::ports::{Http, OutboundRequest};
use crate::pricing::money::Currency;

/// How far a webhook's signed timestamp may be from our clock, either way, in seconds
/// (Stripe's libraries default to the same five minutes). Bounds the replay window of a
/// captured event.
pub const SIGNATURE_TOLERANCE_S: i64 = 300;

const DEPENDENCY: &str = "payment gateway";

/// A PaymentIntent as the gateway created it.
///
/// `client_secret` is what the storefront hands to Stripe.js to confirm the payment; it is
/// shown to the customer who owns the checkout and to nobody else.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentIntent {
    /// The gateway's id, `pi_…`.
    pub id: String,
    /// The secret the browser confirms the payment with.
    pub client_secret: String,
    /// The amount in minor units; always the amount that was asked for.
    pub amount: i64,
    /// ISO 4217 code, upper-case as everywhere in the service (Stripe says `eur`).
    pub currency: String,
    /// The gateway's status, e.g. `requires_payment_method`.
    pub status: String,
}

#[derive(Deserialize)]
struct StripeIntent {
    id: String,
    object: Option<String>,
    client_secret: Option<String>,
    amount: i64,
    currency: String,
    status: String,
}

#[derive(Deserialize)]
struct StripeErrorBody {
    error: StripeError,
}

/// The `error` object of a Stripe error answer, as far as the service reads it.
#[derive(Deserialize)]
pub(crate) struct StripeError {
    /// `invalid_request_error`, `api_error`, `card_error`, `idempotency_error`, …
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    /// The machine-readable reason, e.g. `charge_already_refunded`.
    pub(crate) code: Option<String>,
    /// The human-readable reason.
    pub(crate) message: Option<String>,
    /// The intent the request was about, for errors on a PaymentIntent (Stripe includes
    /// it, e.g. with `payment_intent_unexpected_state`).
    pub(crate) payment_intent: Option<StripeErrorIntent>,
}

/// The part of the intent in an error answer that says where it stands.
#[derive(Deserialize)]
pub(crate) struct StripeErrorIntent {
    /// `succeeded`, `canceled`, `processing`, …
    pub(crate) status: Option<String>,
}

/// Creates a PaymentIntent for `amount_minor` of `currency`, tagged with the checkout
/// session, at `POST {base_url}/v1/payment_intents`.
///
/// The `idempotency_key` makes the call safe to repeat: the gateway answers a repeat with
/// the same intent. Errors: an empty `api_key` or a gateway that cannot be reached,
/// answers 5xx or 429 (rate limited) or 409 (the same key is still in flight) is 503
/// `Unavailable`; any other 4xx is 422 `PAYMENT_GATEWAY_REJECTED` with the gateway's
/// message and `details: {status, type, code}`; a 2xx that is not the intent asked for
/// (another amount or currency, not a payment intent at all) is 500 `Internal`.
pub async fn create_intent(
    http: &impl Http,
    base_url: &str,
    api_key: &str,
    session_id: &str,
    amount_minor: i64,
    currency: Currency,
    idempotency_key: &str,
) -> Result<PaymentIntent, Error> {
    if api_key.is_empty() {
        return Err(Error::Unavailable {
            dependency: DEPENDENCY,
            message: "payment_gateway_key is not configured".into(),
        });
    }
    let amount = amount_minor.to_string();
    let currency_lower = currency.as_str().to_ascii_lowercase();
    let request = stripe_post(
        base_url,
        "/v1/payment_intents",
        api_key,
        idempotency_key,
        &[
            ("amount", &amount),
            ("currency", &currency_lower),
            ("metadata[checkout_session]", session_id),
            ("automatic_payment_methods[enabled]", "true"),
        ],
    );
    let response = http.send(request).await.map_err(|e| match e {
        PortError::Unreachable(message) => Error::Unavailable {
            dependency: DEPENDENCY,
            message,
        },
        PortError::Server(message) => Error::Internal(format!("payment gateway request: {message}")),
    })?;
    match response.status {
        200..=299 => read_intent(&response.body, amount_minor, currency),
        // 409: Stripe is still executing a request with this idempotency key; retrying
        // with the same key yields its intent, so it is a wait, not a refusal.
        409 | 429 | 500..=599 => Err(Error::Unavailable {
            dependency: DEPENDENCY,
            message: format!(
                "the payment gateway answered HTTP {}{}",
                response.status,
                gateway_message(&response.body).map_or_else(String::new, |m| format!(": {m}"))
            ),
        }),
        400..=499 => Err(rejected(response.status, &response.body)),
        status => Err(Error::Internal(format!(
            "the payment gateway answered the unexpected HTTP status {status}"
        ))),
    }
}

/// Reads a 2xx answer, insisting that it is the intent that was asked for.
fn read_intent(body: &[u8], amount_minor: i64, currency: Currency) -> Result<PaymentIntent, Error> {
    let intent: StripeIntent = serde_json::from_slice(body).map_err(|e| {
        Error::Internal(format!(
            "the payment gateway's answer is not a payment intent: {e}"
        ))
    })?;
    if intent.object.as_deref().is_some_and(|o| o != "payment_intent") {
        return Err(Error::Internal(
            "the payment gateway's answer is not a payment intent".into(),
        ));
    }
    let answered_currency = intent.currency.to_ascii_uppercase();
    if intent.amount != amount_minor || answered_currency != currency.as_str() {
        return Err(Error::Internal(format!(
            "the payment gateway created {} for {} {answered_currency}, not {amount_minor} {currency}",
            intent.id, intent.amount
        )));
    }
    let client_secret = intent.client_secret.filter(|s| !s.is_empty()).ok_or_else(|| {
        Error::Internal(format!(
            "the payment gateway's intent {} has no client_secret",
            intent.id
        ))
    })?;
    Ok(PaymentIntent {
        id: intent.id,
        client_secret,
        amount: intent.amount,
        currency: answered_currency,
        status: intent.status,
    })
}

/// A form-encoded `POST {base_url}{path}` as Stripe takes it: Bearer key, the idempotency
/// key, the parameters in order.
pub(crate) fn stripe_post(
    base_url: &str,
    path: &str,
    api_key: &str,
    idempotency_key: &str,
    params: &[(&str, &str)],
) -> OutboundRequest {
    OutboundRequest {
        method: "POST".into(),
        url: format!("{}{path}", base_url.trim_end_matches('/')),
        headers: vec![
            ("Content-Type".into(), "application/x-www-form-urlencoded".into()),
            ("Authorization".into(), format!("Bearer {api_key}")),
            ("Idempotency-Key".into(), idempotency_key.into()),
        ],
        body: form_encode(params).into_bytes(),
    }
}

/// The `error` object of a Stripe error answer, if the body is one.
pub(crate) fn gateway_error(body: &[u8]) -> Option<StripeError> {
    serde_json::from_slice::<StripeErrorBody>(body)
        .ok()
        .map(|b| b.error)
}

fn gateway_message(body: &[u8]) -> Option<String> {
    gateway_error(body).and_then(|e| e.message)
}

fn rejected(status: u16, body: &[u8]) -> Error {
    let error = gateway_error(body);
    let (kind, code, message) = match error {
        Some(e) => (e.kind, e.code, e.message),
        None => (None, None, None),
    };
    Error::Unprocessable {
        code: "PAYMENT_GATEWAY_REJECTED",
        message: message
            .unwrap_or_else(|| format!("the payment gateway refused the request (HTTP {status})")),
        details: json!({ "status": status, "type": kind, "code": code }),
    }
}

/// Percent-encoding for a URL path segment: RFC 3986 unreserved bytes as they are, every
/// other byte of the UTF-8 text (space included) as `%XX`.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    push_encoded(&mut out, text, "%20");
    out
}

fn push_encoded(out: &mut String, text: &str, space: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => out.push(char::from(b)),
            b' ' => out.push_str(space),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0x0f)]));
            }
        }
    }
}

/// `application/x-www-form-urlencoded` of the pairs in order: as [`percent_encode`], but a
/// space is `+`.
fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        push_encoded(&mut out, name, "+");
        out.push('=');
        push_encoded(&mut out, value, "+");
    }
    out
}

fn invalid_signature(message: &str) -> Error {
    Error::bad_request("INVALID_SIGNATURE", message)
}

fn mac_of(secret: &str, t: &str, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(payload);
    mac
}

/// Lower-case hex of 64 characters back to the 32 bytes of a SHA-256 MAC; anything else
/// (another length, upper case, non-hex) is `None`, i.e. a signature that cannot match.
fn decode_signature(hex: &str) -> Option<[u8; 32]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *slot = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// Verifies a webhook exactly as Stripe's libraries do.
///
/// `header` is the `Stripe-Signature` value, `t=<unix seconds>,v1=<hex>[,v1=<hex>…]` (other
/// schemes such as `v0` are ignored). The event is genuine if any `v1` equals
/// `hex(HMAC-SHA256(secret, "{t}.{payload}"))`, compared in constant time, and `t` is
/// within [`SIGNATURE_TOLERANCE_S`] of `now_s`. Anything else is 400 `INVALID_SIGNATURE`
/// saying which check failed (never what the signature should have been); an empty
/// `secret` refuses every event.
pub fn verify_signature(payload: &[u8], header: Option<&str>, secret: &str, now_s: i64) -> Result<(), Error> {
    let header = header.ok_or_else(|| invalid_signature("the Stripe-Signature header is missing"))?;
    if secret.is_empty() {
        return Err(invalid_signature(
            "webhook_secret is not configured; every event is refused",
        ));
    }
    let mut timestamp: Option<&str> = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let (scheme, value) = item
            .trim()
            .split_once('=')
            .ok_or_else(|| invalid_signature("the Stripe-Signature header is malformed"))?;
        match scheme {
            "t" if timestamp.is_none() => timestamp = Some(value),
            "t" => {
                return Err(invalid_signature(
                    "the Stripe-Signature header names more than one timestamp",
                ));
            }
            "v1" => signatures.push(value),
            _ => {}
        }
    }
    let t_text = timestamp
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| invalid_signature("the Stripe-Signature header has no valid timestamp (t=)"))?;
    let t: i64 = t_text
        .parse()
        .map_err(|_| invalid_signature("the Stripe-Signature header has no valid timestamp (t=)"))?;
    if signatures.is_empty() {
        return Err(invalid_signature(
            "the Stripe-Signature header has no v1 signature",
        ));
    }
    let mac = mac_of(secret, t_text, payload);
    // Every candidate is checked, each in constant time (verify_slice), so the time taken
    // says nothing about how close a forged signature came.
    let matched = signatures
        .iter()
        .filter_map(|s| decode_signature(s))
        .fold(false, |matched, candidate| {
            mac.clone().verify_slice(&candidate).is_ok() | matched
        });
    if !matched {
        return Err(invalid_signature(
            "no v1 signature matches the payload and timestamp",
        ));
    }
    if now_s.abs_diff(t) > SIGNATURE_TOLERANCE_S.unsigned_abs() {
        return Err(invalid_signature(&format!(
            "the signature's timestamp is more than {SIGNATURE_TOLERANCE_S} s away from now"
        )));
    }
    Ok(())
}

/// The `Stripe-Signature` header value that signs `payload` with `secret` at `t` (unix
/// seconds): `t={t},v1={hex}`, which [`verify_signature`] accepts within the tolerance.
/// For tests and the fake gateway; the service itself only verifies.
pub fn sign(payload: &[u8], secret: &str, t: i64) -> String {
    let t = t.to_string();
    let digest = mac_of(secret, &t, payload).finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

/// What a webhook event says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// `payment_intent.succeeded`: the money is taken; the order can be placed.
    PaymentSucceeded,
    /// `payment_intent.payment_failed`: the attempt failed; the customer may try again.
    PaymentFailed,
    /// Any other event type, named as the gateway named it; acknowledged and ignored.
    Other(String),
}

/// A webhook event, as far as checkout needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookEvent {
    /// The event's id, `evt_…`: the same event may be delivered more than once.
    pub id: String,
    /// What happened.
    pub kind: EventKind,
    /// The PaymentIntent it happened to, `pi_…` (for [`EventKind::Other`], the id of
    /// whatever object the event carries).
    pub intent_id: String,
    /// The checkout session of the intent (`metadata.checkout_session`), if it has one.
    pub session_id: Option<String>,
    /// The intent's amount in minor units (0 for an [`EventKind::Other`] without one).
    pub amount: i64,
    /// The intent's ISO 4217 code, upper-case (empty for an [`EventKind::Other`] without
    /// one).
    pub currency: String,
}

#[derive(Deserialize)]
struct RawEvent {
    id: String,
    object: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    data: RawData,
}

#[derive(Deserialize)]
struct RawData {
    object: RawObject,
}

#[derive(Deserialize)]
struct RawObject {
    id: String,
    object: Option<String>,
    amount: Option<i64>,
    currency: Option<String>,
    #[serde(default)]
    metadata: RawMetadata,
}

#[derive(Deserialize, Default)]
struct RawMetadata {
    checkout_session: Option<String>,
}

fn invalid_event(message: impl Into<String>) -> Error {
    Error::bad_request("INVALID_EVENT", message)
}

/// Reads a Stripe event (`{"id","object":"event","type","data":{"object":{…}}}`).
///
/// Payment events must carry a payment intent with an amount and a three-letter currency;
/// other event types only need an id, a type and an object with an id, so that they can be
/// acknowledged rather than redelivered for days. Anything else is 400 `INVALID_EVENT`.
/// Verify the signature first: this only reads.
pub fn parse_event(payload: &[u8]) -> Result<WebhookEvent, Error> {
    let raw: RawEvent =
        serde_json::from_slice(payload).map_err(|e| invalid_event(format!("the event is malformed: {e}")))?;
    if raw.object.as_deref().is_some_and(|o| o != "event") {
        return Err(invalid_event("the payload is not an event"));
    }
    let kind = match raw.kind.as_str() {
        "payment_intent.succeeded" => EventKind::PaymentSucceeded,
        "payment_intent.payment_failed" => EventKind::PaymentFailed,
        _ => EventKind::Other(raw.kind.clone()),
    };
    let object = raw.data.object;
    let currency = object.currency.map(|c| c.to_ascii_uppercase());
    if let EventKind::Other(_) = kind {
        return Ok(WebhookEvent {
            id: raw.id,
            kind,
            intent_id: object.id,
            session_id: object.metadata.checkout_session,
            amount: object.amount.unwrap_or(0),
            currency: currency.unwrap_or_default(),
        });
    }
    if object.object.as_deref().is_some_and(|o| o != "payment_intent") {
        return Err(invalid_event(format!(
            "a {} event must carry a payment intent",
            raw.kind
        )));
    }
    let amount = object
        .amount
        .ok_or_else(|| invalid_event("the payment intent has no amount"))?;
    let currency = currency
        .filter(|c| Currency::parse(c).is_ok())
        .ok_or_else(|| invalid_event("the payment intent has no valid currency"))?;
    Ok(WebhookEvent {
        id: raw.id,
        kind,
        intent_id: object.id,
        session_id: object.metadata.checkout_session,
        amount,
        currency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::OutboundResponse;
    use serde_json::Value;
    use std::cell::RefCell;

    const SECRET: &str = "whsec_test";
    const NOW: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;

    fn status_of(result: Result<(), Error>) -> (u16, &'static str) {
        let e = result.unwrap_err();
        (e.status(), e.code())
    }

    #[test]
    fn a_signed_payload_is_accepted_within_the_tolerance() {
        let header = sign(BODY, SECRET, NOW);
        assert!(header.starts_with(&format!("t={NOW},v1=")));
        verify_signature(BODY, Some(&header), SECRET, NOW).unwrap();
        verify_signature(BODY, Some(&header), SECRET, NOW + SIGNATURE_TOLERANCE_S).unwrap();
        verify_signature(BODY, Some(&header), SECRET, NOW - SIGNATURE_TOLERANCE_S).unwrap();
    }

    #[test]
    fn the_signature_is_the_hmac_stripe_defines() {
        // Computed independently: printf '1700000000.{}' | openssl dgst -sha256 -hmac whsec_test
        assert_eq!(
            sign(b"{}", SECRET, NOW),
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }

    #[test]
    fn wrong_secret_tampered_body_and_stale_timestamps_are_refused() {
        let header = sign(BODY, SECRET, NOW);
        let invalid = (400, "INVALID_SIGNATURE");
        assert_eq!(
            status_of(verify_signature(BODY, Some(&header), "other", NOW)),
            invalid
        );
        assert_eq!(
            status_of(verify_signature(
                br#"{"id":"evt_2","object":"event"}"#,
                Some(&header),
                SECRET,
                NOW
            )),
            invalid
        );
        for now in [NOW + SIGNATURE_TOLERANCE_S + 1, NOW - SIGNATURE_TOLERANCE_S - 1] {
            let e = verify_signature(BODY, Some(&header), SECRET, now).unwrap_err();
            assert_eq!((e.status(), e.code()), invalid);
            assert!(e.to_string().contains("timestamp"), "{e}");
        }
        // A replayed signature with a fresh timestamp does not verify either.
        let v1 = header.split_once(",v1=").unwrap().1;
        let moved = format!("t={},v1={v1}", NOW + 1);
        assert_eq!(
            status_of(verify_signature(BODY, Some(&moved), SECRET, NOW)),
            invalid
        );
        assert_eq!(status_of(verify_signature(BODY, Some(&header), "", NOW)), invalid);
    }

    #[test]
    fn malformed_headers_say_what_is_wrong_without_the_expected_signature() {
        let good = sign(BODY, SECRET, NOW);
        let v1 = good.split_once(",v1=").unwrap().1.to_owned();
        let cases = [
            (None, "missing"),
            (Some("garbage".to_owned()), "malformed"),
            (Some(String::new()), "malformed"),
            (Some(format!("v1={v1}")), "timestamp"),
            (Some(format!("t=abc,v1={v1}")), "timestamp"),
            (Some(format!("t=-5,v1={v1}")), "timestamp"),
            (
                Some(format!("t={NOW},t={NOW},v1={v1}")),
                "more than one timestamp",
            ),
            (Some(format!("t={NOW}")), "no v1"),
            (Some(format!("t={NOW},v0={v1}")), "no v1"),
            (Some(format!("t={NOW},v1=zz")), "no v1 signature matches"),
            (
                Some(format!("t={NOW},v1={}", v1.to_uppercase())),
                "no v1 signature matches",
            ),
        ];
        for (header, says) in cases {
            let e = verify_signature(BODY, header.as_deref(), SECRET, NOW).unwrap_err();
            assert_eq!((e.status(), e.code()), (400, "INVALID_SIGNATURE"), "{header:?}");
            let message = e.to_string();
            assert!(message.contains(says), "{header:?}: {message}");
            assert!(!message.contains(&v1), "{header:?} echoes the signature");
        }
    }

    #[test]
    fn any_matching_v1_among_several_is_enough() {
        let good = sign(BODY, SECRET, NOW);
        let v1 = good.split_once(",v1=").unwrap().1;
        let stale_secret = sign(BODY, "whsec_rolled", NOW);
        let other = stale_secret.split_once(",v1=").unwrap().1;
        for header in [
            format!("t={NOW},v1={other},v1={v1}"),
            format!("t={NOW},v1={v1},v1={other}"),
            format!("v0={other}, t={NOW}, v1=nothex, v1={v1}"),
        ] {
            verify_signature(BODY, Some(&header), SECRET, NOW).unwrap();
        }
        let none = format!("t={NOW},v1={other},v1={other}");
        assert!(verify_signature(BODY, Some(&none), SECRET, NOW).is_err());
    }

    #[test]
    fn form_encoding_escapes_reserved_characters() {
        assert_eq!(
            form_encode(&[
                ("metadata[checkout_session]", "a b&c=d+e%f/g?h#i"),
                ("x", "é~._-")
            ]),
            "metadata%5Bcheckout_session%5D=a+b%26c%3Dd%2Be%25f%2Fg%3Fh%23i&x=%C3%A9~._-"
        );
        assert_eq!(
            form_encode(&[("amount", "1999"), ("currency", "eur")]),
            "amount=1999&currency=eur"
        );
        assert_eq!(form_encode(&[]), "");
        assert_eq!(percent_encode("pi_1 /?é"), "pi_1%20%2F%3F%C3%A9");
    }

    fn event(kind: &str, object: Value) -> Vec<u8> {
        json!({"id": "evt_9", "object": "event", "type": kind, "data": {"object": object}})
            .to_string()
            .into_bytes()
    }

    fn intent_object() -> Value {
        json!({
            "id": "pi_1", "object": "payment_intent", "amount": 1999, "currency": "eur",
            "status": "succeeded", "metadata": {"checkout_session": "sess-1"}
        })
    }

    #[test]
    fn payment_events_are_read_with_their_session_and_upper_case_currency() {
        let succeeded = parse_event(&event("payment_intent.succeeded", intent_object())).unwrap();
        assert_eq!(
            succeeded,
            WebhookEvent {
                id: "evt_9".into(),
                kind: EventKind::PaymentSucceeded,
                intent_id: "pi_1".into(),
                session_id: Some("sess-1".into()),
                amount: 1999,
                currency: "EUR".into(),
            }
        );
        let failed = parse_event(&event("payment_intent.payment_failed", intent_object())).unwrap();
        assert_eq!(failed.kind, EventKind::PaymentFailed);
        let mut no_metadata = intent_object();
        no_metadata.as_object_mut().unwrap().remove("metadata");
        let e = parse_event(&event("payment_intent.succeeded", no_metadata)).unwrap();
        assert_eq!(e.session_id, None);
    }

    #[test]
    fn other_events_are_read_so_they_can_be_acknowledged() {
        let other = parse_event(&event(
            "customer.created",
            json!({"id": "cus_1", "object": "customer"}),
        ))
        .unwrap();
        assert_eq!(other.kind, EventKind::Other("customer.created".into()));
        assert_eq!(
            (other.intent_id.as_str(), other.amount, other.currency.as_str()),
            ("cus_1", 0, "")
        );
        let created = parse_event(&event("payment_intent.created", intent_object())).unwrap();
        assert_eq!(created.kind, EventKind::Other("payment_intent.created".into()));
        assert_eq!(created.currency, "EUR");
    }

    #[test]
    fn malformed_events_are_refused() {
        let mut no_amount = intent_object();
        no_amount.as_object_mut().unwrap().remove("amount");
        let mut bad_currency = intent_object();
        bad_currency["currency"] = json!("euro");
        let mut charge = intent_object();
        charge["object"] = json!("charge");
        let not_event = json!({"id": "evt_1", "object": "payment_intent", "type": "payment_intent.succeeded",
            "data": {"object": intent_object()}});
        for payload in [
            b"not json".to_vec(),
            b"{}".to_vec(),
            br#"{"id":"evt_1","type":"payment_intent.succeeded"}"#.to_vec(),
            br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{}}}"#.to_vec(),
            event("payment_intent.succeeded", no_amount),
            event("payment_intent.succeeded", bad_currency),
            event("payment_intent.payment_failed", charge),
            not_event.to_string().into_bytes(),
        ] {
            let e = parse_event(&payload).unwrap_err();
            assert_eq!(
                (e.status(), e.code()),
                (400, "INVALID_EVENT"),
                "{}",
                String::from_utf8_lossy(&payload)
            );
        }
    }

    /// An [`Http`] port that records the request and answers as told.
    struct Scripted {
        answer: Result<OutboundResponse, PortError>,
        sent: RefCell<Vec<OutboundRequest>>,
    }

    impl Scripted {
        fn answering(status: u16, body: Value) -> Self {
            Self {
                answer: Ok(OutboundResponse {
                    status,
                    body: body.to_string().into_bytes(),
                }),
                sent: RefCell::new(Vec::new()),
            }
        }
    }

    impl Http for Scripted {
        async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, PortError> {
            self.sent.borrow_mut().push(request);
            self.answer.clone()
        }
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn create(http: &Scripted, key: &str) -> Result<PaymentIntent, Error> {
        block_on(create_intent(
            http,
            "https://gateway.test/",
            key,
            "sess 1",
            1999,
            eur(),
            "idem-1",
        ))
    }

    /// Polls a future that never waits (the scripted port answers at once).
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        use std::task::{Context, Poll, Waker};
        let mut future = std::pin::pin!(future);
        match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("the scripted port never waits"),
        }
    }

    #[test]
    fn create_intent_sends_stripes_request_and_reads_its_answer() {
        let http = Scripted::answering(
            200,
            json!({"id": "pi_1", "object": "payment_intent", "client_secret": "pi_1_secret_x",
                "amount": 1999, "currency": "eur", "status": "requires_payment_method"}),
        );
        let intent = create(&http, "sk_test").unwrap();
        assert_eq!(
            intent,
            PaymentIntent {
                id: "pi_1".into(),
                client_secret: "pi_1_secret_x".into(),
                amount: 1999,
                currency: "EUR".into(),
                status: "requires_payment_method".into(),
            }
        );
        let sent = http.sent.borrow();
        let request = &sent[0];
        assert_eq!(request.method, "POST");
        assert_eq!(request.url, "https://gateway.test/v1/payment_intents");
        let header = |name: &str| {
            request
                .headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(header("Authorization"), Some("Bearer sk_test"));
        assert_eq!(header("Idempotency-Key"), Some("idem-1"));
        assert_eq!(header("Content-Type"), Some("application/x-www-form-urlencoded"));
        assert_eq!(
            String::from_utf8_lossy(&request.body),
            "amount=1999&currency=eur&metadata%5Bcheckout_session%5D=sess+1\
             &automatic_payment_methods%5Benabled%5D=true"
        );
        assert_eq!(
            serde_json::to_value(&intent).unwrap(),
            json!({"id": "pi_1", "clientSecret": "pi_1_secret_x", "amount": 1999,
                "currency": "EUR", "status": "requires_payment_method"})
        );
    }

    #[test]
    fn create_intent_sorts_gateway_failures_by_what_the_caller_can_do() {
        let card_error = json!({"error": {"type": "invalid_request_error", "code": "amount_too_small",
            "message": "Amount must be at least €0.50 eur"}});
        let e = create(&Scripted::answering(400, card_error), "sk_test").unwrap_err();
        assert_eq!((e.status(), e.code()), (422, "PAYMENT_GATEWAY_REJECTED"));
        assert_eq!(e.to_string(), "Amount must be at least €0.50 eur");
        assert_eq!(
            e.body()["error"]["details"],
            json!({"status": 400, "type": "invalid_request_error", "code": "amount_too_small"})
        );
        let e = create(&Scripted::answering(401, json!("nope")), "sk_test").unwrap_err();
        assert_eq!((e.status(), e.code()), (422, "PAYMENT_GATEWAY_REJECTED"));
        assert_eq!(e.body()["error"]["details"]["status"], 401);

        for status in [409, 429, 500, 502, 503] {
            let e = create(&Scripted::answering(status, json!({})), "sk_test").unwrap_err();
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
        }
        let unreachable = Scripted {
            answer: Err(PortError::Unreachable("connection refused".into())),
            sent: RefCell::new(Vec::new()),
        };
        assert_eq!(create(&unreachable, "sk_test").unwrap_err().status(), 503);

        let e = create(&Scripted::answering(200, json!({})), "").unwrap_err();
        assert_eq!(e.status(), 503);
        assert!(e.to_string().contains("payment_gateway_key is not configured"));
    }

    #[test]
    fn an_answer_that_is_not_the_intent_asked_for_is_internal() {
        let intent = |amount: i64, currency: &str| {
            json!({"id": "pi_1", "object": "payment_intent", "client_secret": "s",
                "amount": amount, "currency": currency, "status": "requires_payment_method"})
        };
        let mut no_secret = intent(1999, "eur");
        no_secret.as_object_mut().unwrap().remove("client_secret");
        let mut other_object = intent(1999, "eur");
        other_object["object"] = json!("charge");
        for body in [
            intent(2000, "eur"),
            intent(1999, "usd"),
            no_secret,
            other_object,
            json!({"ok": true}),
            json!([]),
        ] {
            let e = create(&Scripted::answering(200, body.clone()), "sk_test").unwrap_err();
            assert_eq!(e.status(), 500, "{body}");
        }
    }
}
