//! Webhook events (`checkout::gateway::parse_event`) of any bytes: never a panic, every
//! refusal a 400 `INVALID_EVENT`, and a payment event read has an amount and a currency.

#![no_main]

use commerce_core::checkout::gateway::{EventKind, parse_event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|payload: &[u8]| {
    match parse_event(payload) {
        Err(refused) => assert_eq!((refused.status(), refused.code()), (400, "INVALID_EVENT")),
        Ok(event) => {
            if matches!(event.kind, EventKind::PaymentSucceeded | EventKind::PaymentFailed) {
                assert_eq!(event.currency.len(), 3, "{event:?}");
                assert_eq!(event.currency, event.currency.to_ascii_uppercase(), "{event:?}");
            }
        }
    }
});
