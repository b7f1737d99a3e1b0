//! JSON request bodies (`http::Request::json`) of any bytes: never a panic, every refusal
//! a 400 `MALFORMED_JSON`, and a body read is what serde_json reads.

#![no_main]

use commerce_core::http::Request;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let request = Request {
        method: "POST".into(),
        path: "/v1/pricing/quote".into(),
        query: String::new(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: body.to_vec(),
        client_addr: None,
    };
    match request.json(1 << 20) {
        Err(refused) => assert_eq!((refused.status(), refused.code()), (400, "MALFORMED_JSON")),
        Ok(value) => {
            let plain: Value = serde_json::from_slice(body).expect("read, so valid JSON");
            assert_eq!(value, plain);
        }
    }
});
