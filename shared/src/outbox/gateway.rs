//! The gateway's side of the outbox, in Stripe's wire format: a refund
//! (`POST /v1/refunds`) and an intent cancellation (`POST /v1/payment_intents/{id}/cancel`),
//! and what each answer means for the row that asked for it.
//!
//! Each request carries an idempotency key derived from the intent alone
//! (`refund-<pi>`, `cancel-<pi>`), so sending a row twice (a drainer that died after
//! sending, a lease that ran out mid-call) moves money once: the gateway replays its first
//! answer. Answers are sorted into three outcomes, by what the row should do next:
//! - sent: the gateway did it now, or had already done it;
//! - refused: the gateway said no and asking again cannot change that (kept and listed
//!   for a person to look at);
//! - retry: the gateway could not be reached, timed out, was overloaded (5xx, 429), was
//!   still busy with the same key (409), or refused our key (401/403: a configuration
//!   fix, after which the same row goes through).

use crate::checkout::gateway::{gateway_error, percent_encode, stripe_post};
use crate::ports::{Http, OutboundResponse};

/// What the gateway's answer means for an outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the gateway accepted it now or had done it before. `gateway_id` is the refund's
    /// id (`re_…`) when the answer names one.
    Sent {
        /// The refund's id, for a refund the gateway created now.
        gateway_id: Option<String>,
    },
    /// The gateway said no for good; `reason` says why, in its words.
    Refused {
        /// Why, with the gateway's code.
        reason: String,
    },
    /// Not now; `error` says what went wrong. The row stays pending and is tried again.
    Retry {
        /// What went wrong.
        error: String,
    },
}

/// A payment that went through on an intent the outbox was asked to cancel (the customer
/// paid before the cancellation arrived): the amount to give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PaidInstead {
    pub(super) amount_minor: i64,
    /// Upper case, as everywhere in the service.
    pub(super) currency: String,
}

/// What the customer paid, from a cancellation refused because the intent succeeded.
fn paid_instead(response: &OutboundResponse) -> Option<PaidInstead> {
    let error = gateway_error(&response.body)?;
    if error.code.as_deref() != Some("payment_intent_unexpected_state") {
        return None;
    }
    let intent = error.payment_intent?;
    if intent.status.as_deref() != Some("succeeded") {
        return None;
    }
    Some(PaidInstead {
        amount_minor: intent.amount.filter(|a| *a > 0)?,
        currency: intent.currency?.to_ascii_uppercase(),
    })
}

/// A refund to ask for.
pub(super) struct RefundRequest<'a> {
    pub(super) intent: &'a str,
    pub(super) session: &'a str,
    pub(super) amount_minor: i64,
    pub(super) reason: &'a str,
}

/// Where the gateway is and the key to reach it with.
pub(super) struct Gateway<'a, H> {
    pub(super) http: &'a H,
    pub(super) base_url: &'a str,
    pub(super) api_key: &'a str,
}

impl<H: Http> Gateway<'_, H> {
    /// `POST /v1/refunds` for `amount_minor` of the intent's payment, tagged with the
    /// checkout session and our reason, under `Idempotency-Key: refund-<pi>`.
    pub(super) async fn refund(&self, refund: &RefundRequest<'_>) -> Outcome {
        let amount = refund.amount_minor.to_string();
        let params = [
            ("payment_intent", refund.intent),
            ("amount", amount.as_str()),
            ("metadata[checkout_session]", refund.session),
            ("metadata[reason]", refund.reason),
        ];
        let key = format!("refund-{}", refund.intent);
        match self.post("/v1/refunds", &key, &params).await {
            Ok(response) => refund_outcome(&response),
            Err(retry) => retry,
        }
    }

    /// `POST /v1/payment_intents/{id}/cancel` under `Idempotency-Key: cancel-<pi>`; with
    /// it, what the customer paid when the gateway refuses because the intent succeeded.
    pub(super) async fn cancel(&self, intent: &str) -> (Outcome, Option<PaidInstead>) {
        let path = format!("/v1/payment_intents/{}/cancel", percent_encode(intent));
        let key = format!("cancel-{intent}");
        match self.post(&path, &key, &[]).await {
            Ok(response) => (cancel_outcome(&response), paid_instead(&response)),
            Err(retry) => (retry, None),
        }
    }

    async fn post(
        &self,
        path: &str,
        key: &str,
        params: &[(&str, &str)],
    ) -> Result<OutboundResponse, Outcome> {
        if self.api_key.is_empty() {
            return Err(Outcome::Retry {
                error: "payment_gateway_key is not configured".into(),
            });
        }
        let request = stripe_post(self.base_url, path, self.api_key, key, params);
        self.http.send(request).await.map_err(|e| Outcome::Retry {
            error: format!("the payment gateway could not be reached: {e}"),
        })
    }
}

/// The answers that mean "not now", whatever the request was.
fn transient(response: &OutboundResponse) -> Option<Outcome> {
    matches!(response.status, 401 | 403 | 409 | 429 | 500..=599).then(|| Outcome::Retry {
        error: describe(response),
    })
}

/// `HTTP 400 charge_already_refunded: Charge ch_1 has already been refunded.`
fn describe(response: &OutboundResponse) -> String {
    let mut text = format!("HTTP {}", response.status);
    if let Some(error) = gateway_error(&response.body) {
        if let Some(code) = error.code {
            text.push(' ');
            text.push_str(&code);
        }
        if let Some(message) = error.message {
            text.push_str(": ");
            text.push_str(&message);
        }
    }
    text
}

fn refund_outcome(response: &OutboundResponse) -> Outcome {
    if let Some(retry) = transient(response) {
        return retry;
    }
    match response.status {
        200..=299 => {
            let refund: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
            let id = refund["id"].as_str().filter(|_| refund["object"] == "refund");
            match (id, refund["status"].as_str()) {
                (None, _) => Outcome::Retry {
                    error: format!(
                        "the payment gateway answered HTTP {} without a refund",
                        response.status
                    ),
                },
                (Some(id), Some(status @ ("failed" | "canceled"))) => Outcome::Refused {
                    reason: format!("the payment gateway created refund {id} with status {status}"),
                },
                (Some(id), _) => Outcome::Sent {
                    gateway_id: Some(id.to_owned()),
                },
            }
        }
        400..=499 => match gateway_error(&response.body).and_then(|e| e.code).as_deref() {
            // Whoever refunded it, the money is back: the debt is settled.
            Some("charge_already_refunded") => Outcome::Sent { gateway_id: None },
            _ => Outcome::Refused {
                reason: describe(response),
            },
        },
        _ => Outcome::Retry {
            error: describe(response),
        },
    }
}

fn cancel_outcome(response: &OutboundResponse) -> Outcome {
    if let Some(retry) = transient(response) {
        return retry;
    }
    match response.status {
        200..=299 => Outcome::Sent { gateway_id: None },
        400..=499 => {
            let error = gateway_error(&response.body);
            let unexpected_state = error
                .as_ref()
                .is_some_and(|e| e.code.as_deref() == Some("payment_intent_unexpected_state"));
            let status = error.and_then(|e| e.payment_intent).and_then(|i| i.status);
            match (unexpected_state, status.as_deref()) {
                (true, Some("canceled")) => Outcome::Sent { gateway_id: None },
                // The customer paid before the cancellation arrived. Not done, and not to be
                // hidden: the payment is owed back (`paid_instead`: the drainer writes its
                // refund, the same row the payment's own webhook would write).
                (true, Some("succeeded")) => Outcome::Refused {
                    reason: format!(
                        "the payment succeeded before the intent could be cancelled; it is \
                         refunded instead, unless it was ordered ({})",
                        describe(response)
                    ),
                },
                // Neither paid nor failed yet: it can be cancelled once it settles.
                (true, Some("processing")) => Outcome::Retry {
                    error: describe(response),
                },
                _ => Outcome::Refused {
                    reason: describe(response),
                },
            }
        }
        _ => Outcome::Retry {
            error: describe(response),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn answer(status: u16, body: Value) -> OutboundResponse {
        OutboundResponse {
            status,
            body: body.to_string().into_bytes(),
        }
    }

    fn stripe_error(code: &str, intent_status: Option<&str>) -> Value {
        let mut error = json!({"type": "invalid_request_error", "code": code, "message": "no"});
        if let Some(status) = intent_status {
            error["payment_intent"] = json!({"id": "pi_1", "object": "payment_intent", "status": status});
        }
        json!({ "error": error })
    }

    fn is_retry(outcome: &Outcome) -> bool {
        matches!(outcome, Outcome::Retry { .. })
    }

    fn is_refused(outcome: &Outcome) -> bool {
        matches!(outcome, Outcome::Refused { .. })
    }

    #[test]
    fn a_created_refund_is_sent_with_its_id() {
        let refund = json!({"id": "re_1", "object": "refund", "amount": 1999, "status": "succeeded"});
        assert_eq!(
            refund_outcome(&answer(200, refund)),
            Outcome::Sent {
                gateway_id: Some("re_1".into())
            }
        );
        let pending = json!({"id": "re_2", "object": "refund", "status": "pending"});
        assert_eq!(
            refund_outcome(&answer(200, pending)),
            Outcome::Sent {
                gateway_id: Some("re_2".into())
            }
        );
        let failed = json!({"id": "re_3", "object": "refund", "status": "failed"});
        assert!(is_refused(&refund_outcome(&answer(200, failed))));
        assert!(is_retry(&refund_outcome(&answer(200, json!({"ok": true})))));
    }

    #[test]
    fn an_already_refunded_payment_is_settled_and_other_refusals_are_kept() {
        assert_eq!(
            refund_outcome(&answer(400, stripe_error("charge_already_refunded", None))),
            Outcome::Sent { gateway_id: None }
        );
        for code in ["amount_too_large", "charge_disputed", "resource_missing"] {
            let outcome = refund_outcome(&answer(400, stripe_error(code, None)));
            match outcome {
                Outcome::Refused { reason } => assert!(reason.contains(code), "{reason}"),
                other => panic!("{code}: {other:?}"),
            }
        }
        assert!(is_refused(&refund_outcome(&answer(404, json!("not json")))));
    }

    #[test]
    fn outages_busy_keys_and_bad_api_keys_are_retried() {
        for status in [401, 403, 409, 429, 500, 502, 503, 504] {
            let body = json!({"error": {"type": "api_error", "message": "later"}});
            assert!(
                is_retry(&refund_outcome(&answer(status, body.clone()))),
                "{status}"
            );
            assert!(is_retry(&cancel_outcome(&answer(status, body))), "{status}");
        }
        assert!(is_retry(&refund_outcome(&answer(302, json!({})))));
    }

    #[test]
    fn a_cancelled_intent_is_settled_but_a_paid_one_is_refused_not_hidden() {
        let intent = json!({"id": "pi_1", "object": "payment_intent", "status": "canceled"});
        assert_eq!(
            cancel_outcome(&answer(200, intent)),
            Outcome::Sent { gateway_id: None }
        );
        assert_eq!(
            cancel_outcome(&answer(
                400,
                stripe_error("payment_intent_unexpected_state", Some("canceled"))
            )),
            Outcome::Sent { gateway_id: None }
        );
        match cancel_outcome(&answer(
            400,
            stripe_error("payment_intent_unexpected_state", Some("succeeded")),
        )) {
            Outcome::Refused { reason } => {
                assert!(reason.contains("succeeded"), "{reason}");
                assert!(reason.contains("payment_intent_unexpected_state"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(is_retry(&cancel_outcome(&answer(
            400,
            stripe_error("payment_intent_unexpected_state", Some("processing"))
        ))));
        assert!(is_refused(&cancel_outcome(&answer(
            400,
            stripe_error("payment_intent_unexpected_state", None)
        ))));
        assert!(is_refused(&cancel_outcome(&answer(
            404,
            stripe_error("resource_missing", None)
        ))));
    }
}
