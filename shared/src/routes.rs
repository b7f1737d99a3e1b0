//! The route table: every route the router answers, once, as method and path template
//! (`POST /v1/carts/{cart}/items`). Each store's `routes.rs` answers its own routes (its
//! module doc lists them); this table is what the rest of the crate knows of them:
//! - the label a request's metrics and log line carry ([`of`], [`label`], [`store`]), never
//!   the raw path (unbounded, and carts are reached by a secret id);
//! - the `Allow` header of a 405 ([`allowed_methods`]);
//! - the operations `openapi.json` must document (`tests/tests/openapi.rs` holds the table
//!   against both the running router and the document).
//!
//! The unit tests below hold it against the stores' module docs; `tests/tests/metrics.rs`
//! drives every entry through the router and checks it is answered, not 404 or 405.

use std::sync::OnceLock;

/// One route: the method and the path template, each `{param}` one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub method: &'static str,
    /// `/v1/carts/{cart}/items`.
    pub path: &'static str,
}

const fn route(method: &'static str, path: &'static str) -> Route {
    Route { method, path }
}

/// Every route, the most specific first: a literal segment (`/v1/inventory/availability`)
/// is listed before the placeholder that would also match it (`/v1/inventory/{variant}`),
/// as the stores' `match` arms are ordered.
pub const ROUTES: &[Route] = &[
    // Inventory (the hot reservation path first: the lookup stops at the first match).
    route("POST", "/v1/inventory/reservations"),
    route("DELETE", "/v1/inventory/reservations/{holder}"),
    route("POST", "/v1/inventory/availability"),
    route("GET", "/v1/inventory/{variant}"),
    route("POST", "/v1/admin/inventory/reconcile"),
    route("PUT", "/v1/admin/inventory/{variant}"),
    // Carts.
    route("POST", "/v1/carts"),
    route("GET", "/v1/carts/{cart}"),
    route("POST", "/v1/carts/{cart}/items"),
    route("PATCH", "/v1/carts/{cart}/items/{line}"),
    route("DELETE", "/v1/carts/{cart}/items/{line}"),
    route("GET", "/v1/customers/{customer}/cart"),
    route("POST", "/v1/customers/{customer}/cart/items"),
    route("PATCH", "/v1/customers/{customer}/cart/items/{line}"),
    route("DELETE", "/v1/customers/{customer}/cart/items/{line}"),
    route("POST", "/v1/customers/{customer}/cart/merge"),
    // Bundles and pricing.
    route("GET", "/v1/bundles/{bundle}"),
    route("POST", "/v1/admin/bundles/{bundle}/invalidate"),
    route("POST", "/v1/pricing/quote"),
    route("POST", "/v1/admin/pricing/publish"),
    route("POST", "/v1/admin/discounts/publish"),
    // Checkout and the payment outbox.
    route("POST", "/v1/checkout"),
    route("POST", "/v1/checkout/payment-webhook"),
    route("GET", "/v1/checkout/{session}"),
    route("POST", "/v1/checkout/{session}/payment-intent"),
    route("POST", "/v1/checkout/{session}/cancel"),
    route("GET", "/v1/admin/refunds"),
    // Operations.
    route("GET", "/health/live"),
    route("GET", "/health"),
    route("GET", "/metrics"),
    route("GET", "/openapi.json"),
    route("GET", "/v1/admin/check"),
    route("POST", "/v1/admin/check/repair"),
];

/// Number of labels: every route, then [`OTHER`].
pub const COUNT: usize = ROUTES.len() + 1;

/// The label of a request no route answers (404), or a known path with another method (405).
pub const OTHER: usize = ROUTES.len();

/// A route's index in [`ROUTES`], or [`OTHER`].
pub type RouteId = usize;

/// The label of route `id`: `"POST /v1/carts/{cart}/items"`, or `"other"`.
pub fn label(id: RouteId) -> &'static str {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| {
        ROUTES
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    });
    labels.get(id).map_or("other", String::as_str)
}

/// The store a route belongs to, for `commerce_requests_total`: the template's first two
/// segments (`/v1/carts`; `/v1/admin/inventory`, three with the admin segment), the first
/// outside `/v1` (`/health`), or `other`.
pub fn store(id: RouteId) -> &'static str {
    let Some(path) = ROUTES.get(id).map(|r| r.path) else {
        return "other";
    };
    let depth = if path.starts_with("/v1/admin/") {
        4
    } else if path.starts_with("/v1/") {
        3
    } else {
        2
    };
    let end = path
        .match_indices('/')
        .nth(depth - 1)
        .map_or(path.len(), |(i, _)| i);
    &path[..end]
}

/// The template's segments after the leading `/`, split once.
fn patterns() -> &'static [Vec<&'static str>] {
    static PATTERNS: OnceLock<Vec<Vec<&'static str>>> = OnceLock::new();
    PATTERNS.get_or_init(|| {
        ROUTES
            .iter()
            .map(|r| r.path.split('/').skip(1).collect())
            .collect()
    })
}

/// How many literal segments of `pattern` `path` matches, if it fits it at all.
fn fit(pattern: &[&str], path: &str) -> Option<usize> {
    let mut segments = path.split('/').skip(1);
    let mut literals = 0;
    for expected in pattern {
        match segments.next() {
            Some(_) if expected.starts_with('{') => {}
            Some(segment) if segment == *expected => literals += 1,
            _ => return None,
        }
    }
    segments.next().is_none().then_some(literals)
}

/// The route that answers `method` on `path` (query excluded, a trailing `/` ignored as the
/// router ignores it). A `HEAD` is answered by the `GET` route of its path.
pub fn of(method: &str, path: &str) -> RouteId {
    let method = if method == "HEAD" { "GET" } else { method };
    let path = path.trim_end_matches('/');
    patterns()
        .iter()
        .zip(ROUTES)
        .position(|(pattern, route)| route.method == method && fit(pattern, path).is_some())
        .unwrap_or(OTHER)
}

/// The methods the route of `path` answers (for `Allow` on a 405): those of the templates
/// the path fits with the most literal segments, so that `GET /v1/inventory/availability`
/// names only `POST`, not the `GET` of `/v1/inventory/{variant}`.
pub fn allowed_methods(path: &str) -> Vec<&'static str> {
    let path = path.trim_end_matches('/');
    let fits: Vec<(usize, &'static str)> = patterns()
        .iter()
        .zip(ROUTES)
        .filter_map(|(pattern, route)| Some((fit(pattern, path)?, route.method)))
        .collect();
    let best = fits.iter().map(|(literals, _)| *literals).max();
    let mut methods: Vec<&'static str> = fits
        .into_iter()
        .filter(|(literals, _)| Some(*literals) == best)
        .map(|(_, method)| method)
        .collect();
    if methods.contains(&"GET") {
        methods.push("HEAD");
    }
    methods.sort_unstable();
    methods.dedup();
    methods
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_their_template_and_strays_to_other() {
        let cases = [
            ("POST", "/v1/carts/c_123/items", "POST /v1/carts/{cart}/items"),
            ("POST", "/v1/carts/c_123/items/", "POST /v1/carts/{cart}/items"),
            (
                "POST",
                "/v1/inventory/availability",
                "POST /v1/inventory/availability",
            ),
            ("GET", "/v1/inventory/var-1", "GET /v1/inventory/{variant}"),
            ("GET", "/v1/inventory/reservations", "GET /v1/inventory/{variant}"),
            (
                "PUT",
                "/v1/admin/inventory/reconcile",
                "PUT /v1/admin/inventory/{variant}",
            ),
            (
                "POST",
                "/v1/checkout/payment-webhook",
                "POST /v1/checkout/payment-webhook",
            ),
            ("GET", "/v1/checkout/cs_1", "GET /v1/checkout/{session}"),
            ("GET", "/metrics", "GET /metrics"),
            ("GET", "/v1/nothing", "other"),
            ("DELETE", "/v1/carts", "other"),
            ("GET", "/v1/carts/a/b/c/d", "other"),
            ("GET", "", "other"),
        ];
        for (method, path, template) in cases {
            assert_eq!(label(of(method, path)), template, "{method} {path}");
        }
    }

    #[test]
    fn stores_are_the_templates_first_segments() {
        let store_of = |m, p| store(of(m, p));
        assert_eq!(store_of("POST", "/v1/carts/c/items"), "/v1/carts");
        assert_eq!(store_of("PUT", "/v1/admin/inventory/v"), "/v1/admin/inventory");
        assert_eq!(store_of("POST", "/v1/checkout"), "/v1/checkout");
        assert_eq!(store_of("GET", "/health/live"), "/health");
        assert_eq!(store_of("GET", "/metrics"), "/metrics");
        assert_eq!(store_of("GET", "/v1/whatever"), "other");
    }

    /// The routes each store documents in its module doc (`- \`GET /v1/…\``), with the
    /// doc's shorthands expanded: `PATCH`/`DELETE` on one path, a `[?query]` suffix.
    fn documented() -> Vec<(String, String)> {
        let docs = [
            include_str!("inventory/routes.rs"),
            include_str!("cart/routes.rs"),
            include_str!("bundle/routes.rs"),
            include_str!("pricing/routes.rs"),
            include_str!("checkout/routes.rs"),
            include_str!("outbox/routes.rs"),
            include_str!("ops.rs"),
        ];
        let mut routes = Vec::new();
        for line in docs.iter().flat_map(|d| d.lines()) {
            let Some(entry) = line.strip_prefix("//! - `") else {
                continue;
            };
            let entry = entry.replace("`/`", "/");
            let Some((methods, rest)) = entry.split_once(' ') else {
                continue;
            };
            let path = rest
                .trim_start()
                .split(['`', '[', ' '])
                .next()
                .unwrap_or_default();
            for method in methods.trim_end_matches('`').split('/') {
                routes.push((method.to_owned(), path.to_owned()));
            }
        }
        routes
    }

    #[test]
    fn every_documented_route_has_its_template_and_no_other() {
        let mut documented = documented();
        documented.sort();
        let mut listed: Vec<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        listed.sort();
        assert_eq!(documented, listed);
    }

    #[test]
    fn a_405_names_the_methods_of_the_most_specific_route() {
        assert_eq!(allowed_methods("/v1/inventory/availability"), ["POST"]);
        assert_eq!(allowed_methods("/v1/inventory/var-1"), ["GET", "HEAD"]);
        assert_eq!(
            of("HEAD", "/v1/inventory/var-1"),
            of("GET", "/v1/inventory/var-1")
        );
        assert_eq!(of("HEAD", "/v1/carts"), OTHER);
        assert_eq!(allowed_methods("/v1/admin/inventory/reconcile"), ["POST"]);
        assert_eq!(allowed_methods("/v1/carts/c1/items/l1"), ["DELETE", "PATCH"]);
        assert_eq!(allowed_methods("/health/"), ["GET", "HEAD"]);
        assert!(allowed_methods("/nowhere").is_empty());
    }

    #[test]
    fn every_route_is_listed_once() {
        let mut seen = std::collections::BTreeSet::new();
        for route in ROUTES {
            assert!(seen.insert(route), "{route:?} twice");
        }
    }
}
