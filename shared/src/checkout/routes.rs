//! Checkout routes (DESIGN §5):
//!
//! - `POST /v1/checkout`                         `{cartId}` (or `{customerId}` with the
//!   customer's token) and `Idempotency-Key`: lock, freeze, hold → 201 session
//! - `GET  /v1/checkout/{session}`               state, frozen totals and quote, history
//! - `POST /v1/checkout/{session}/payment-intent` the gateway's intent for the frozen total
//! - `POST /v1/checkout/payment-webhook`          the gateway's signed events
//! - `POST /v1/checkout/{session}/cancel`         release holds and lock

use super::{Checkouts, customer_of, gateway};
use crate::app::App;
use crate::auth;
use crate::cart::CartRef;
use crate::error::{Error, ErrorCode, Result};
use crate::http::{Request, Response, object, str_field};
use crate::idempotency::{self, Claim};
use crate::ids::{CartId, CustomerId, SessionId};
use crate::ports::{Http, Redis, Sql};

/// Routes the checkout paths; `None` if the path is not checkout's.
pub async fn route<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    segments: &[&str],
) -> Option<Result<Response>> {
    let post = req.method == "POST";
    let result = match segments {
        ["v1", "checkout"] if post => match parse_start(app, req) {
            // Only a request that passed validation claims its idempotency key (as Stripe
            // does), so a corrected retry with the same key is not answered with the 400.
            Ok((cart, group)) => {
                // A key is its caller's, as a Stripe key is its account's: the same key with
                // another cart is another body (422), not another checkout. Anonymous
                // callers cannot be told apart, so theirs share one scope (and a replay
                // answers only whoever names the same cart, its capability); each
                // customer's token, and the admin's, has its own.
                let scope = format!("checkout:{}", idempotency::caller(app, req));
                idempotency::once(app, req, &scope, Claim::REQUIRED, |token| async move {
                    let view = Checkouts::new(app).start(&cart, &token, group).await?;
                    Ok(Response::json(201, &view))
                })
                .await
            }
            Err(e) => Err(e),
        },
        ["v1", "checkout", "payment-webhook"] if post => webhook(app, req).await,
        // The webhook's path is not a session's: any other method on it is a 405.
        ["v1", "checkout", "payment-webhook"] => Err(Error::MethodNotAllowed(req.method.clone())),
        ["v1", "checkout", session] if req.method == "GET" => get(app, req, session).await,
        ["v1", "checkout", session, "payment-intent"] if post => match bodiless_session(app, req, session) {
            Ok(id) => {
                // The session authorizes its caller inside the handler: a kept answer (a
                // customer's intent, its client secret) is replayed only to the caller it
                // was given to.
                let scope = format!("payment-intent:{id}:{}", idempotency::caller(app, req));
                idempotency::once(
                    app,
                    req,
                    &scope,
                    Claim::OPTIONAL_KEEPING_EVERY_ANSWER,
                    |_| async move {
                        let intent = Checkouts::new(app)
                            .payment_intent(&id, req.header("authorization"))
                            .await?;
                        Ok(Response::json(200, &intent))
                    },
                )
                .await
            }
            Err(e) => Err(e),
        },
        ["v1", "checkout", session, "cancel"] if post => match bodiless_session(app, req, session) {
            Ok(id) => Checkouts::new(app)
                .cancel(&id, req.header("authorization"))
                .await
                .map(|v| Response::json(200, &v)),
            Err(e) => Err(e),
        },
        ["v1", "checkout"] | ["v1", "checkout", _] | ["v1", "checkout", _, "payment-intent" | "cancel"] => {
            Err(Error::MethodNotAllowed(req.method.clone()))
        }
        _ => return None,
    };
    Some(result)
}

/// The session a POST that reads no body names (its payment intent, its cancel), once the
/// request's body is none or JSON ([`Request::no_body`]).
fn bodiless_session<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    session: &str,
) -> Result<SessionId> {
    let id = SessionId::parse(session)?;
    req.no_body(app.settings.max_body_bytes)?;
    Ok(id)
}

/// The cart a checkout request names and the customer group its prices are for.
fn parse_start<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
) -> Result<(CartRef, Option<String>)> {
    let body = req.json(app.settings.max_body_bytes)?;
    let body = object(&body)?;
    let admin = app.settings.authorize_admin(req.header("authorization")).is_ok();
    let (cart, group) = match (body.get("cartId"), body.get("customerId")) {
        (Some(_), None) => {
            let cart = CartId::parse(str_field(body, "cartId")?)?;
            // A signed-in customer checking out an anonymous cart still gets their prices;
            // the admin token (a shop's back office) checks it out as its visitor would.
            let group = match req.header("authorization") {
                Some(_) if admin => None,
                Some(_) => customer_of(app, req.header("authorization"))?.group,
                None => None,
            };
            (CartRef::Session(cart), group)
        }
        (None, Some(_)) => {
            let customer = CustomerId::parse(str_field(body, "customerId")?)?;
            // The admin token acts for any customer, at the prices of no group (it carries
            // none); the session remains the customer's.
            let group = if admin {
                None
            } else {
                auth::verify_customer(
                    req.header("authorization"),
                    &app.settings.jwt_secret,
                    app.settings.token_time(),
                    &customer,
                )?
                .group
            };
            (CartRef::Customer(customer), group)
        }
        _ => {
            return Err(Error::bad_request(
                ErrorCode::InvalidCheckout,
                "a checkout names exactly one of cartId or customerId",
            ));
        }
    };
    Ok((cart, group))
}

async fn get<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    session: &str,
) -> Result<Response> {
    let id = SessionId::parse(session)?;
    let view = Checkouts::new(app).get(&id, req.header("authorization")).await?;
    Ok(Response::json(200, &view))
}

async fn webhook<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, req: &Request) -> Result<Response> {
    if req.body.len() > app.settings.max_body_bytes {
        return Err(Error::PayloadTooLarge {
            limit: app.settings.max_body_bytes,
        });
    }
    gateway::verify_signature(
        &req.body,
        req.header("stripe-signature"),
        &app.settings.webhook_secret,
        auth::now_s(),
    )?;
    let event = gateway::parse_event(&req.body)?;
    let outcome = Checkouts::new(app).handle_event(&event).await?;
    Ok(Response::json(200, &outcome))
}
