//! The OpenAPI 3.1 document of the API (`openapi.json` at the repository's root, served at
//! `GET /openapi.json`), and the table of every route the router answers, which
//! `tests/tests/openapi.rs` holds against both the router and the document.

/// The document, as committed.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

/// Every route of [`crate::router::handle`], as (method, path template). A route added to
/// a store's `routes.rs` goes here and into `openapi.json`; the test fails otherwise.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/inventory/{variant}"),
    ("POST", "/v1/inventory/availability"),
    ("POST", "/v1/inventory/reservations"),
    ("DELETE", "/v1/inventory/reservations/{cart}"),
    ("PUT", "/v1/admin/inventory/{variant}"),
    ("POST", "/v1/admin/inventory/reconcile"),
    ("POST", "/v1/carts"),
    ("GET", "/v1/carts/{cart}"),
    ("POST", "/v1/carts/{cart}/items"),
    ("PATCH", "/v1/carts/{cart}/items/{line}"),
    ("DELETE", "/v1/carts/{cart}/items/{line}"),
    ("GET", "/v1/customers/{customer}/cart"),
    ("POST", "/v1/customers/{customer}/cart/items"),
    ("PATCH", "/v1/customers/{customer}/cart/items/{line}"),
    ("DELETE", "/v1/customers/{customer}/cart/items/{line}"),
    ("POST", "/v1/customers/{customer}/cart/merge"),
    ("GET", "/v1/bundles/{bundle}"),
    ("POST", "/v1/admin/bundles/{bundle}/invalidate"),
    ("POST", "/v1/pricing/quote"),
    ("POST", "/v1/admin/pricing/publish"),
    ("POST", "/v1/admin/discounts/publish"),
    ("POST", "/v1/checkout"),
    ("GET", "/v1/checkout/{session}"),
    ("POST", "/v1/checkout/{session}/payment-intent"),
    ("POST", "/v1/checkout/{session}/cancel"),
    ("POST", "/v1/checkout/payment-webhook"),
    ("GET", "/v1/admin/refunds"),
    ("GET", "/health/live"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/v1/admin/check"),
    ("POST", "/v1/admin/check/repair"),
    ("GET", "/openapi.json"),
];

/// The methods the route of `path` answers (for `Allow` on a 405): those of the listed
/// templates the path fits with the most literal segments, so that `GET
/// /v1/inventory/availability` names only `POST`, not the `GET` of
/// `/v1/inventory/{variant}`.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let literals = |template: &str| -> Option<usize> {
        let parts: Vec<&str> = template.split('/').collect();
        if parts.len() != segments.len() {
            return None;
        }
        let mut literal = 0;
        for (part, segment) in parts.iter().zip(&segments) {
            if part.starts_with('{') {
                continue;
            }
            if part != segment {
                return None;
            }
            literal += 1;
        }
        Some(literal)
    };
    let best = ROUTES.iter().filter_map(|(_, t)| literals(t)).max();
    let mut methods: Vec<&'static str> = ROUTES
        .iter()
        .filter(|(_, t)| best.is_some() && literals(t) == best)
        .map(|(m, _)| *m)
        .collect();
    methods.sort_unstable();
    methods.dedup();
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_405_names_the_methods_of_the_most_specific_route() {
        assert_eq!(allowed_methods("/v1/inventory/availability"), ["POST"]);
        assert_eq!(allowed_methods("/v1/inventory/var-1"), ["GET"]);
        assert_eq!(allowed_methods("/v1/admin/inventory/reconcile"), ["POST"]);
        assert_eq!(allowed_methods("/v1/carts/c1/items/l1"), ["DELETE", "PATCH"]);
        assert_eq!(allowed_methods("/health/"), ["GET"]);
        assert!(allowed_methods("/nowhere").is_empty());
    }

    #[test]
    fn the_document_is_openapi_3_1_json() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
    }

    #[test]
    fn every_route_is_listed_once() {
        let mut seen = std::collections::BTreeSet::new();
        for route in ROUTES {
            assert!(seen.insert(route), "{route:?} twice");
        }
    }
}
