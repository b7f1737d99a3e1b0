//! Route templates: the label a request's metrics and log line carry, `POST
//! /v1/carts/{cart}/items`, never the raw path (unbounded, and carts are reached by a
//! secret id) nor a prefix.
//!
//! [`ROUTES`] lists every route the router answers, as its stores' `routes.rs` documents
//! them; a request that matches none (404, or 405 on a known path) is [`OTHER`]. The unit
//! test below checks the list against those module docs, and `tests/tests/metrics.rs`
//! drives every entry through the router and checks it is answered, not 404 or 405.

use std::sync::OnceLock;

/// Method and path template of every route, the most specific first: a literal segment
/// (`/v1/inventory/availability`) is listed before the placeholder that would also match it
/// (`/v1/inventory/{variant}`), as the stores' `match` arms are ordered.
pub const ROUTES: &[&str] = &[
    // Inventory (the hot reservation path first: the lookup stops at the first match).
    "POST /v1/inventory/reservations",
    "DELETE /v1/inventory/reservations/{holder}",
    "POST /v1/inventory/availability",
    "GET /v1/inventory/{variant}",
    "POST /v1/admin/inventory/reconcile",
    "PUT /v1/admin/inventory/{variant}",
    // Carts.
    "POST /v1/carts",
    "GET /v1/carts/{cart}",
    "POST /v1/carts/{cart}/items",
    "PATCH /v1/carts/{cart}/items/{line}",
    "DELETE /v1/carts/{cart}/items/{line}",
    "GET /v1/customers/{customer}/cart",
    "POST /v1/customers/{customer}/cart/items",
    "PATCH /v1/customers/{customer}/cart/items/{line}",
    "DELETE /v1/customers/{customer}/cart/items/{line}",
    "POST /v1/customers/{customer}/cart/merge",
    // Bundles and pricing.
    "GET /v1/bundles/{bundle}",
    "POST /v1/admin/bundles/{bundle}/invalidate",
    "POST /v1/pricing/quote",
    "POST /v1/admin/pricing/publish",
    "POST /v1/admin/discounts/publish",
    // Checkout and the payment outbox.
    "POST /v1/checkout",
    "POST /v1/checkout/payment-webhook",
    "GET /v1/checkout/{session}",
    "POST /v1/checkout/{session}/payment-intent",
    "POST /v1/checkout/{session}/cancel",
    "GET /v1/admin/refunds",
    // Operations.
    "GET /health/live",
    "GET /health",
    "GET /metrics",
    "GET /openapi.json",
    "GET /v1/admin/check",
    "POST /v1/admin/check/repair",
];

/// Number of labels: every route, then [`OTHER`].
pub const COUNT: usize = ROUTES.len() + 1;

/// The label of a request no route answers (404), or a known path with another method (405).
pub const OTHER: usize = ROUTES.len();

/// A route's index in [`ROUTES`], or [`OTHER`].
pub type RouteId = usize;

/// The label of route `id`: `"POST /v1/carts/{cart}/items"`, or `"other"`.
pub fn label(id: RouteId) -> &'static str {
    ROUTES.get(id).copied().unwrap_or("other")
}

/// The store a route belongs to, for `commerce_requests_total`: the template's first two
/// segments (`/v1/carts`; `/v1/admin/inventory`, three with the admin segment), the first
/// outside `/v1` (`/health`), or `other`.
pub fn store(id: RouteId) -> &'static str {
    let Some((_, path)) = ROUTES.get(id).and_then(|r| r.split_once(' ')) else {
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

/// The route that answers `method` on `path` (query excluded, a trailing `/` ignored as the
/// router ignores it).
pub fn of(method: &str, path: &str) -> RouteId {
    static PATTERNS: OnceLock<Vec<(&'static str, Vec<&'static str>)>> = OnceLock::new();
    let patterns = PATTERNS.get_or_init(|| {
        ROUTES
            .iter()
            .map(|route| {
                let (method, path) = route.split_once(' ').unwrap_or((route, ""));
                (method, path.split('/').skip(1).collect())
            })
            .collect()
    });
    let path = path.trim_end_matches('/');
    'routes: for (id, (route_method, pattern)) in patterns.iter().enumerate() {
        if *route_method != method {
            continue;
        }
        let mut segments = path.split('/').skip(1);
        for expected in pattern {
            match segments.next() {
                Some(segment) if expected.starts_with('{') || segment == *expected => {}
                _ => continue 'routes,
            }
        }
        if segments.next().is_none() {
            return id;
        }
    }
    OTHER
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
            include_str!("../inventory/routes.rs"),
            include_str!("../cart/routes.rs"),
            include_str!("../bundle/routes.rs"),
            include_str!("../pricing/routes.rs"),
            include_str!("../checkout/routes.rs"),
            include_str!("../outbox/routes.rs"),
            include_str!("../ops.rs"),
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
            .filter_map(|r| r.split_once(' '))
            .map(|(m, p)| (m.to_owned(), p.to_owned()))
            .collect();
        listed.sort();
        assert_eq!(documented, listed);
    }
}
