//! `Stripe-Signature` verification (`checkout/gateway.rs`) of any payload under any header:
//! never a panic, every refusal a 400 `INVALID_SIGNATURE`, and nothing the secret did not
//! sign verifies.

#![no_main]

use commerce_core::checkout::gateway::{sign, verify_signature};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "whsec_fuzz";
const NOW: i64 = 1_800_000_000;

fuzz_target!(|input: (&[u8], &str)| {
    let (payload, header) = input;
    match verify_signature(payload, Some(header), SECRET, NOW) {
        Err(refused) => assert_eq!((refused.status(), refused.code()), (400, "INVALID_SIGNATURE")),
        // A header that verifies carries the payload's own signature at its timestamp.
        Ok(()) => {
            let t = header
                .split(',')
                .find_map(|item| item.trim().strip_prefix("t="))
                .expect("a verified header has a timestamp");
            let signed = sign(payload, SECRET, t.parse().expect("a verified timestamp"));
            let v1 = signed.split_once(",v1=").expect("t=…,v1=…").1;
            assert!(
                header.contains(v1),
                "{header:?} verified without the signature {v1}"
            );
        }
    }
});
