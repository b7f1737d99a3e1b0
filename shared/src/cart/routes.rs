//! Cart routes (DESIGN §5). Anonymous carts are reached by their unguessable id; a
//! customer's cart needs an HS256 JWT whose `sub` is that customer.
//!
//! - `POST   /v1/carts`                                  new anonymous cart
//! - `GET    /v1/carts/{cart}`                           the cart
//! - `POST   /v1/carts/{cart}/items`                     add a variant or a bundle
//! - `PATCH  /v1/carts/{cart}/items/{line}`              set a line's quantity (0 removes)
//! - `DELETE /v1/carts/{cart}/items/{line}`              remove a line
//! - `GET    /v1/customers/{customer}/cart`              the customer's cart
//! - `POST   /v1/customers/{customer}/cart/items`        …and the same changes on it
//! - `PATCH`/`DELETE /v1/customers/{customer}/cart/items/{line}`
//! - `POST   /v1/customers/{customer}/cart/merge`        `{cartId}`: merge on sign-in
//!
//! Changes accept `If-Match: <version>` (412 when the cart moved on) and answer with the
//! whole cart and its version in `ETag`.

use std::future::Future;

use serde_json::Value;

use super::{CartRef, CartView, Carts, Expected, LineItem, parse_line};
use crate::app::App;
use crate::auth;
use crate::bundle::Bundles;
use crate::catalog::require_variants;
use crate::checkout::{Checkouts, LockHolder};
use crate::error::{Error, ErrorCode, Result};
use crate::http::{Request, Response, field, object, str_field};
use crate::idempotency::{self, Claim};
use crate::ids::{CartId, CustomerId, LineId, Quantity};
use crate::ports::{Http, Redis, Sql};
use crate::pricing::money::Currency;
use crate::ratelimit;

/// Routes the cart paths; `None` if the path is not the cart store's.
pub async fn route<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    segments: &[&str],
) -> Option<Result<Response>> {
    dispatch(app, req, segments).await.transpose()
}

async fn dispatch<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    segments: &[&str],
) -> Result<Option<Response>> {
    let method = req.method.as_str();
    let not_allowed = || Error::MethodNotAllowed(req.method.clone());
    let response = match segments {
        ["v1", "carts"] => match method {
            "POST" => {
                let currency = new_cart_currency(app, req)?;
                let create = |_| async move { Ok(reply(201, &store(app).create(currency).await?)) };
                // The answer is a new cart's id, its only capability: a key replays it to the
                // address that sent it (the whole address, an IPv6 one too), never to
                // another address that sends the same key.
                let scope = match ratelimit::address_of(&app.settings, req) {
                    Some(address) => format!("carts:client:{address}"),
                    None => "carts:client:unknown".to_owned(),
                };
                idempotency::once(app, req, &scope, Claim::OPTIONAL, create).await?
            }
            _ => return Err(not_allowed()),
        },
        ["v1", "carts", cart] => match method {
            "GET" => get(app, &session(cart)?).await?,
            _ => return Err(not_allowed()),
        },
        ["v1", "carts", cart, "items"] => match method {
            "POST" => add(app, req, &session(cart)?).await?,
            _ => return Err(not_allowed()),
        },
        ["v1", "carts", cart, "items", line] => change(app, req, &session(cart)?, line).await?,
        ["v1", "customers", customer, "cart", rest @ ..] => {
            // The method first: a wrong one is 405 whoever asks, before any token is read.
            let allowed = match rest {
                [] => method == "GET",
                ["items"] | ["merge"] => method == "POST",
                ["items", _] => matches!(method, "PATCH" | "DELETE"),
                _ => return Ok(None),
            };
            if !allowed {
                return Err(not_allowed());
            }
            let (cart, id) = customer_cart(app, req, customer)?;
            match (rest, method) {
                ([], "GET") => get(app, &cart).await?,
                (["items"], "POST") => add(app, req, &cart).await?,
                (["items", line], _) => change(app, req, &cart, line).await?,
                (["merge"], "POST") => merge(app, req, &id).await?,
                _ => return Err(not_allowed()),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(response))
}

fn session(cart: &str) -> Result<CartRef> {
    Ok(CartRef::Session(CartId::parse(cart)?))
}

/// The customer's cart, once the bearer is proven to be that customer.
fn customer_cart<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    customer: &str,
) -> Result<(CartRef, CustomerId)> {
    let customer = CustomerId::parse(customer)?;
    auth::verify_customer(
        req.header("authorization"),
        &app.settings.jwt_secret,
        app.settings.token_time(),
        &customer,
    )?;
    Ok((CartRef::Customer(customer.clone()), customer))
}

fn store<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>) -> Carts<'_, R> {
    Carts::of(app)
}

fn reply(status: u16, cart: &CartView) -> Response {
    let mut response = Response::json(status, cart);
    response
        .headers
        .push(("etag".into(), format!("\"{}\"", cart.version)));
    response
}

/// Reads `If-Match`: a version number of at most 18 digits, quoted or not (`"3"`,
/// `W/"3"`, `3`); anything else is a 400.
fn expected(req: &Request) -> Result<Expected> {
    let Some(raw) = req.header("if-match") else {
        return Ok(None);
    };
    let raw = raw.trim();
    let raw = raw.strip_prefix("W/").unwrap_or(raw);
    let digits = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    if digits.is_empty() || digits.len() > 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::bad_request(
            ErrorCode::InvalidIfMatch,
            "If-Match must be a cart version, e.g. \"3\"",
        ));
    }
    digits.parse::<i64>().map(Some).map_err(|_| {
        Error::bad_request(
            ErrorCode::InvalidIfMatch,
            "If-Match must be a cart version, e.g. \"3\"",
        )
    })
}

/// The currency a new cart asks for (the default when the body names none).
fn new_cart_currency<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, req: &Request) -> Result<Currency> {
    let currency = if req.body.is_empty() {
        app.settings.default_currency
    } else {
        let body = req.json(app.settings.max_body_bytes)?;
        match object(&body)?.get("currency") {
            None | Some(Value::Null) => app.settings.default_currency,
            Some(c) => parse_currency(c)?,
        }
    };
    Ok(currency)
}

fn parse_currency(value: &Value) -> Result<Currency> {
    value
        .as_str()
        .and_then(|c| Currency::parse(c).ok())
        .ok_or_else(|| {
            Error::bad_request(
                ErrorCode::InvalidCurrency,
                "currency must be an ISO 4217 code such as \"EUR\"",
            )
        })
}

async fn get<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, cart: &CartRef) -> Result<Response> {
    Ok(reply(200, &store(app).get(cart).await?))
}

async fn add<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    cart: &CartRef,
) -> Result<Response> {
    let expected = expected(req)?;
    let body = req.json(app.settings.max_body_bytes)?;
    let (item, quantity) = parse_line(&body)?;
    // Adding is not idempotent by nature (it adds): a client that may retry sends an
    // Idempotency-Key, scoped to the cart, and a retry is answered without adding again.
    let scope = match cart {
        CartRef::Session(id) => format!("cart-items:{id}"),
        CartRef::Customer(id) => format!("customer-items:{id}"),
    };
    idempotency::once(app, req, &scope, Claim::OPTIONAL, |_| async move {
        match &item {
            LineItem::Variant(variant) => {
                require_variants(&app.redis, &app.sql, &app.keys, std::slice::from_ref(variant)).await?;
            }
            LineItem::Bundle(bundle, choices) => Bundles::of(app).check(bundle, choices).await?,
        }
        let carts = store(app);
        let view = past_ended_checkout(app, || carts.add(cart, &item, quantity, expected)).await?;
        Ok(reply(200, &view))
    })
    .await
}

async fn change<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    cart: &CartRef,
    line: &str,
) -> Result<Response> {
    let line = LineId::parse(line)?;
    let quantity = match req.method.as_str() {
        "DELETE" => {
            req.no_body(app.settings.max_body_bytes)?;
            0
        }
        "PATCH" => {
            let body = req.json(app.settings.max_body_bytes)?;
            let quantity = field(object(&body)?, "quantity")?;
            // 0 is allowed here: it removes the line.
            match quantity.as_i64() {
                Some(0) => 0,
                _ => Quantity::from_json(quantity)
                    .map_err(|_| {
                        Error::bad_request(
                            ErrorCode::InvalidQuantity,
                            format!(
                                "quantity must be an integer from 0 (removes the line) to {}",
                                Quantity::MAX
                            ),
                        )
                    })?
                    .get(),
            }
        }
        _ => return Err(Error::MethodNotAllowed(req.method.clone())),
    };
    let expected = expected(req)?;
    let carts = store(app);
    let view = past_ended_checkout(app, || carts.set_quantity(cart, &line, quantity, expected)).await?;
    Ok(reply(200, &view))
}

async fn merge<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    customer: &CustomerId,
) -> Result<Response> {
    let expected = expected(req)?;
    let body = req.json(app.settings.max_body_bytes)?;
    let from = CartId::parse(str_field(object(&body)?, "cartId")?)?;
    let carts = store(app);
    let view = past_ended_checkout(app, || carts.merge(&from, customer, expected)).await?;
    Ok(reply(200, &view))
}

/// Runs a change of a cart; refused because a checkout session holds the cart (409
/// `CART_LOCKED`) that is over (one past its deadline before payment expires now, as at
/// any call that meets it, freeing its holds and the lock), the change runs once more.
async fn past_ended_checkout<R: Redis, S: Sql, H: Http, F, Fut>(
    app: &App<R, S, H>,
    change: F,
) -> Result<CartView>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<CartView>>,
{
    let changed = change().await;
    if let Err(Error::Conflict {
        code: ErrorCode::CartLocked,
        details,
        ..
    }) = &changed
    {
        let holder = details["sessionId"].as_str().unwrap_or("");
        if Checkouts::new(app).meet_lock_holder(holder).await? == LockHolder::Ended {
            return change().await;
        }
    }
    changed
}
