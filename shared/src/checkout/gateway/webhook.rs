//! The inbound verifier: a webhook's `Stripe-Signature` checked as Stripe's libraries
//! check it, and the event read as far as checkout needs it.

use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::error::{Error, ErrorCode};
use crate::pricing::money::Currency;

/// How far a webhook's signed timestamp may be from our clock, either way, in seconds
/// (Stripe's libraries default to the same five minutes). Bounds the replay window of a
/// captured event.
pub const SIGNATURE_TOLERANCE_S: i64 = 300;

fn invalid_signature(message: &str) -> Error {
    Error::bad_request(ErrorCode::InvalidSignature, message)
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
    Error::bad_request(ErrorCode::InvalidEvent, message)
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
    // Stripe's amounts are never negative; one that is was not sent by the gateway, and
    // would otherwise reach the outbox's CHECK as a refund of less than nothing.
    let amount = object
        .amount
        .ok_or_else(|| invalid_event("the payment intent has no amount"))?;
    if amount < 0 {
        return Err(invalid_event("the payment intent's amount is negative"));
    }
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
    use serde_json::{Value, json};

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
        let mut negative_amount = intent_object();
        negative_amount["amount"] = json!(-5);
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
            event("payment_intent.succeeded", negative_amount.clone()),
            event("payment_intent.payment_failed", negative_amount),
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
}
