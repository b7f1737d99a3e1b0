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
//!
//! Two files, one a direction: `intent.rs` is the outbound client (creating a
//! PaymentIntent; the request builder and error reading the outbox shares), `webhook.rs`
//! the inbound verifier (the `Stripe-Signature` check and the event reader).

mod intent;
mod webhook;

pub use intent::{PaymentIntent, create_intent};
pub(crate) use intent::{gateway_error, percent_encode, stripe_post};
pub use webhook::{EventKind, SIGNATURE_TOLERANCE_S, WebhookEvent, parse_event, sign, verify_signature};
