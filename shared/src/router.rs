//! The one router: both the Spin components and `commerce serve` answer through
//! [`handle`], so the routes are the same in both runtimes.

use crate::app::App;
use crate::error::{Error, ErrorCode};
use crate::http::{Request, Response};
use crate::metrics::exchange::{Exchange, REQUEST_ID};
use crate::ports::{Http, Redis, Sql};
use crate::{bundle, cart, checkout, inventory, ops, outbox, pricing, ratelimit};

/// Which component's routes a deployment answers. A Spin component answers only its own
/// (its `spin.toml` routes send it nothing else); `commerce serve` answers all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every route (the native server).
    All,
    /// Inventory routes.
    Inventory,
    /// Cart routes.
    Cart,
    /// Pricing, bundle and discount routes.
    Pricing,
    /// Checkout routes, and the payment outbox's (`/v1/admin/refunds`).
    Checkout,
    /// `/health`.
    Ops,
}

/// Answers one request. Never panics on input; errors become the DESIGN §5 error body.
/// The request is measured and logged ([`Exchange`]) and its answer carries its
/// `X-Request-Id`.
/// A write over its rate limit is refused before anything else is done (`ratelimit`).
pub async fn handle<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, req: Request, scope: Scope) -> Response {
    let exchange = Exchange::begin(&req.method, &req.path, req.header(REQUEST_ID));
    let mut response = dispatch(app, req, scope).await;
    exchange.end(&mut response, app.settings.log_level);
    response
}

/// Answers one request without measuring or logging it: for a host that wraps the
/// [`Exchange`] around more than the routing (the native server's deadline and body read).
///
/// `HEAD` is answered as `GET` (RFC 9110 §9.3.2): the same status and headers, and the
/// body, which both hosts (hyper) leave off the wire for a `HEAD`.
pub async fn dispatch<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    mut req: Request,
    scope: Scope,
) -> Response {
    // Measured as sent, before any decoding; and before any work, a rate limit's
    // included: a head no route takes costs nothing.
    let too_large = req.head_within_limits().err();
    if req.method == "HEAD" {
        req.method = "GET".into();
    }
    if req.path.contains('%') {
        req.path = decode_unreserved(&req.path);
    }
    let path = req.path.trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let in_scope = |s: Scope| scope == Scope::All || scope == s;

    let mut answer = too_large.map(Err);
    if answer.is_none()
        && let Err(refused) = ratelimit::guard(app, &req, &segments).await
    {
        answer = Some(Err(refused));
    }
    if answer.is_none()
        && let Err(refused) = one_of_each(&req)
    {
        answer = Some(Err(refused));
    }
    if answer.is_none() && in_scope(Scope::Inventory) {
        answer = inventory::routes::route(app, &req, &segments).await;
    }
    if answer.is_none() && in_scope(Scope::Cart) {
        answer = cart::routes::route(app, &req, &segments).await;
    }
    if answer.is_none() && in_scope(Scope::Pricing) {
        answer = bundle::routes::route(app, &req, &segments).await;
    }
    if answer.is_none() && in_scope(Scope::Pricing) {
        answer = pricing::routes::route(app, &req, &segments).await;
    }
    if answer.is_none() && in_scope(Scope::Checkout) {
        answer = checkout::routes::route(app, &req, &segments).await;
    }
    if answer.is_none() && in_scope(Scope::Checkout) {
        answer = outbox::routes::route(app, &req, &segments).await;
    }
    if answer.is_none() && in_scope(Scope::Ops) {
        answer = ops::route(app, &req, &segments).await;
    }
    match answer {
        Some(Ok(response)) => response,
        Some(Err(error @ Error::MethodNotAllowed(_))) => {
            let mut response = Response::error(&error);
            let allow = crate::routes::allowed_methods(&req.path).join(", ");
            response.headers.push(("allow".into(), allow));
            response
        }
        Some(Err(error)) => Response::error(&error),
        None => Response::error(&Error::not_found(
            ErrorCode::RouteNotFound,
            format!("no route for {} {}", req.method, req.path),
        )),
    }
}

/// A path with its percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) decoded,
/// which RFC 3986 §6.2.2.2 makes the same URI (`/v1/inventory/var%2D1` is
/// `/v1/inventory/var-1`). Any other escape stays as it is, and so fails the id check.
pub fn decode_unreserved(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escaped = rest
            .get(at + 1..at + 3)
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|b| b.is_ascii_alphanumeric() || b"-._~".contains(b));
        match escaped {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 3..];
            }
            None => {
                out.push('%');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Refuses a request that gives a header meant once more than once: which one a proxy in
/// front reads and which one this server reads could differ (two tokens, two keys).
fn one_of_each(req: &Request) -> Result<(), Error> {
    let twice = |name: &str| {
        req.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .nth(1)
            .is_some()
    };
    if twice("authorization") {
        return Err(Error::Unauthorized("more than one Authorization header".into()));
    }
    if twice("idempotency-key") {
        return Err(Error::bad_request(
            ErrorCode::InvalidIdempotencyKey,
            "more than one Idempotency-Key header",
        ));
    }
    if twice("if-match") {
        return Err(Error::bad_request(
            ErrorCode::InvalidIfMatch,
            "more than one If-Match header",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_unreserved_characters_are_decoded_and_nothing_else() {
        for (path, decoded) in [
            ("/v1/inventory/var%2D1", "/v1/inventory/var-1"),
            ("/v1/inventory/var%2d1", "/v1/inventory/var-1"),
            ("/v1/inventory/%76ar%5F1%7E%2E", "/v1/inventory/var_1~."),
            // One pass: an escaped `%` stays escaped, so `%252D` is not `-`.
            ("/v1/inventory/var%252D1", "/v1/inventory/var%252D1"),
            // Reserved and other characters stay escaped (and fail the id check).
            ("/a%2Fb%3Ac%7Bd%7De%2Af%20g", "/a%2Fb%3Ac%7Bd%7De%2Af%20g"),
            ("/a%+Ab%+1", "/a%+Ab%+1"),
            ("/a%zz%", "/a%zz%"),
            ("/a%2", "/a%2"),
            ("/caf%C3%A9%é1", "/caf%C3%A9%é1"),
        ] {
            assert_eq!(decode_unreserved(path), decoded, "{path}");
        }
    }
}
