//! The outbound client: creating a PaymentIntent over the [`Http`] port, and the
//! form-encoded request and error reading that the payment outbox shares.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::{Dependency, Error, ErrorCode};
use crate::ports::{Http, OutboundRequest};
use crate::pricing::money::{self, Money};

const DEPENDENCY: &str = Dependency::Gateway.name();

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
    /// The amount (`amount` in minor units, `currency` upper-case as everywhere in the
    /// service where Stripe says `eur`); always the amount that was asked for.
    #[serde(flatten, serialize_with = "money::as_amount")]
    pub amount: Money,
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

/// The part of the intent in an error answer that says where it stands, and what was paid.
#[derive(Deserialize)]
pub(crate) struct StripeErrorIntent {
    /// `succeeded`, `canceled`, `processing`, …
    pub(crate) status: Option<String>,
    /// The intent's amount, minor units.
    pub(crate) amount: Option<i64>,
    /// The intent's currency, as Stripe writes it (`eur`).
    pub(crate) currency: Option<String>,
}

/// Creates a PaymentIntent for `amount`, tagged with the checkout
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
    amount: Money,
    idempotency_key: &str,
) -> Result<PaymentIntent, Error> {
    if api_key.is_empty() {
        return Err(Error::Unavailable {
            dependency: DEPENDENCY,
            message: "payment_gateway_key is not configured".into(),
        });
    }
    let minor = amount.minor.to_string();
    let currency_lower = amount.currency.as_str().to_ascii_lowercase();
    let request = stripe_post(
        base_url,
        "/v1/payment_intents",
        api_key,
        idempotency_key,
        &[
            ("amount", &minor),
            ("currency", &currency_lower),
            ("metadata[checkout_session]", session_id),
            ("automatic_payment_methods[enabled]", "true"),
        ],
    );
    let response = http.send(request).await?;
    match response.status {
        200..=299 => read_intent(&response.body, amount),
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
fn read_intent(body: &[u8], amount: Money) -> Result<PaymentIntent, Error> {
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
    if intent.amount != amount.minor || answered_currency != amount.currency.as_str() {
        return Err(Error::Internal(format!(
            "the payment gateway created {} for {} {answered_currency}, not {amount}",
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
        amount,
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
        code: ErrorCode::PaymentGatewayRejected,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PortError;
    use crate::ports::OutboundResponse;
    use crate::pricing::money::Currency;
    use serde_json::Value;
    use std::cell::RefCell;

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
            Money::new(1999, eur()),
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
                amount: Money::new(1999, eur()),
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
            answer: Err(PortError::unreachable(Dependency::Gateway, "connection refused")),
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
