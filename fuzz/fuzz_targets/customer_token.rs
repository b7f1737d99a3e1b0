//! Customer tokens (`auth::verify`) in any `Authorization` header: never a panic, every
//! refusal a 401, and only a token this secret signed, for a customer id, before its
//! expiry, is accepted.

#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use commerce_core::auth::{self, TokenTime};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "jwt_fuzz";
const NOW: i64 = 1_800_000_000;

fuzz_target!(|header: &str| {
    match auth::verify(Some(header), SECRET, TokenTime::exact(NOW)) {
        Err(refused) => assert_eq!(refused.status(), 401),
        Ok(customer) => {
            let claims: serde_json::Value = header
                .split('.')
                .nth(1)
                .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
                .and_then(|json| serde_json::from_slice(&json).ok())
                .expect("accepted claims are JSON");
            assert_eq!(claims["sub"].as_str(), Some(customer.id.as_str()));
            assert!(claims["exp"].as_i64().is_some_and(|exp| exp > NOW));
        }
    }
});
