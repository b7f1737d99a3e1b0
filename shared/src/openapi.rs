//! The OpenAPI 3.1 document of the API (`openapi.json` at the repository's root, served at
//! `GET /openapi.json`). `tests/tests/openapi.rs` holds it against the route table
//! ([`crate::routes`]) and the running router.

/// The document, as committed.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_json() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
    }
}
