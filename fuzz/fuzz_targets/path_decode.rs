//! Escaped paths (`router::decode_unreserved`) of any text: never a panic, never longer
//! than sent, unchanged without a `%`, and an escape decoded only to an unreserved
//! character (so no `/`, `%` or other delimiter appears that was not sent).

#![no_main]

use commerce_core::router::decode_unreserved;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    let decoded = decode_unreserved(path);
    assert!(decoded.len() <= path.len());
    if !path.contains('%') {
        assert_eq!(decoded, path);
    }
    for delimiter in ['/', '%', '?', '#', ' '] {
        assert!(decoded.matches(delimiter).count() <= path.matches(delimiter).count());
    }
});
