//! The OpenAPI 3.1 document of the API (`openapi.json` at the repository's root, served at
//! `GET /openapi.json`). `tests/tests/openapi.rs` holds it against the route table
//! ([`crate::routes`]) and the running router.

/// The document as committed, without the whitespace between its tokens (`build.rs`):
/// the same JSON in 53% of the bytes, in every component.
pub const DOCUMENT: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_json() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
    }

    #[test]
    fn the_document_is_the_committed_file_without_its_indentation() {
        let committed = include_str!("../../openapi.json");
        let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).expect("JSON");
        assert_eq!(parse(DOCUMENT), parse(committed));
        assert!(
            DOCUMENT.len() < committed.len() * 6 / 10,
            "{} bytes",
            DOCUMENT.len()
        );
        // Whitespace inside strings stays: the descriptions read as written.
        assert!(DOCUMENT.contains("The HTTP API of spin-commerce (docs/ARCHITECTURE.md §5)"));
    }
}
