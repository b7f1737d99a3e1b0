//! Pricing routes (DESIGN §5):
//!
//! - `POST /v1/pricing/quote`             a cart (`cartId`, or `customerId` with the
//!   customer's token) or `lines`, priced
//! - `POST /v1/admin/pricing/publish`     build and switch to the next pricing version
//! - `POST /v1/admin/discounts/publish`   the same for discounts
//!
//! The customer group comes from the customer's token (`group` claim). A group named in
//! the body counts only with the admin token, so nobody can ask for wholesale prices.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use serde_json::{Value, json};

use super::money::Currency;
use super::quote::{item_quote_line, price_cart, price_lines};
use super::store::Rulesets;
use crate::app::App;
use crate::auth;
use crate::bundle::Bundles;
use crate::cart::{CartRef, LineItem, parse_line};
use crate::error::{Error, ErrorCode, Result};
use crate::http::{Request, Response, array_field, object, str_field};
use crate::idempotency::{self, Claim};
use crate::ids::{CartId, CustomerId, Quantity};
use crate::keys::RulesetKind;
use crate::ports::{Http, Redis, Sql};
use crate::settings::constant_time_eq;

/// Most lines one quote of `lines` may hold.
const MAX_LINES: usize = 500;

/// Routes the pricing paths; `None` if the path is not the pricing store's.
pub async fn route<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    segments: &[&str],
) -> Option<Result<Response>> {
    let kind = match segments {
        ["v1", "pricing", "quote"] => None,
        ["v1", "admin", "pricing", "publish"] => Some(RulesetKind::Pricing),
        ["v1", "admin", "discounts", "publish"] => Some(RulesetKind::Discounts),
        _ => return None,
    };
    if req.method != "POST" {
        return Some(Err(Error::MethodNotAllowed(req.method.clone())));
    }
    Some(match kind {
        None => quote(app, req).await,
        Some(kind) => publish(app, req, kind).await,
    })
}

async fn publish<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    kind: RulesetKind,
) -> Result<Response> {
    app.settings.authorize_admin(req.header("authorization"))?;
    req.no_body(app.settings.max_body_bytes)?;
    // A publish builds a version: a retry with its Idempotency-Key answers that version
    // again instead of building another (DESIGN §4.5).
    let scope = format!("publish-{}", kind.name());
    idempotency::once(app, req, &scope, Claim::OPTIONAL, |_| async move {
        let rulesets = Rulesets::new(&app.redis, &app.sql, &app.keys);
        let publication = rulesets
            .publish(kind, app.settings.checkout_session_ttl_seconds)
            .await?;
        Ok(Response::json(200, &publication))
    })
    .await
}

/// Who asks for a quote.
enum Caller {
    Anonymous,
    Admin,
    Customer(auth::Customer),
}

fn caller<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, req: &Request) -> Result<Caller> {
    let Some(header) = req.header("authorization") else {
        return Ok(Caller::Anonymous);
    };
    let token = auth::bearer(header).unwrap_or_default();
    if !app.settings.admin_token.is_empty() && constant_time_eq(token, &app.settings.admin_token) {
        return Ok(Caller::Admin);
    }
    Ok(Caller::Customer(auth::verify(
        Some(header),
        &app.settings.jwt_secret,
        app.settings.token_time(),
    )?))
}

async fn quote<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, req: &Request) -> Result<Response> {
    let body = req.json(app.settings.max_body_bytes)?;
    let body = object(&body)?;
    let caller = caller(app, req)?;
    let group = match (body.get("customerGroup"), &caller) {
        (None | Some(Value::Null), Caller::Customer(customer)) => customer.group.clone(),
        (None | Some(Value::Null), _) => None,
        (Some(group), Caller::Admin) => Some(
            CustomerId::parse(group.as_str().unwrap_or_default())
                .map_err(|_| Error::bad_request(ErrorCode::InvalidGroup, "customerGroup must be an id"))?
                .to_string(),
        ),
        (Some(_), _) => {
            return Err(Error::Forbidden(
                "only the admin token may name a customerGroup".into(),
            ));
        }
    };
    let sources = ["cartId", "customerId", "lines"]
        .iter()
        .filter(|f| body.get(**f).is_some())
        .count();
    if sources != 1 {
        return Err(Error::bad_request(
            ErrorCode::InvalidQuote,
            "a quote names exactly one of cartId, customerId or lines",
        ));
    }
    let named_currency = named_currency(body)?;
    let priced = if body.get("cartId").is_some() {
        let cart = CartId::parse(str_field(body, "cartId")?)?;
        price_cart(app, &CartRef::Session(cart), group).await?
    } else if body.get("customerId").is_some() {
        let customer = CustomerId::parse(str_field(body, "customerId")?)?;
        match &caller {
            Caller::Admin => {}
            Caller::Customer(c) if c.id == customer => {}
            Caller::Customer(_) => {
                return Err(Error::Forbidden("the token belongs to another customer".into()));
            }
            Caller::Anonymous => {
                return Err(Error::Unauthorized("a customer's cart needs their token".into()));
            }
        }
        price_cart(app, &CartRef::Customer(customer), group).await?
    } else {
        let currency = named_currency.unwrap_or(app.settings.default_currency);
        // Lines of the same contents are one line, as in a cart (one line id): their
        // quantities add up, so the quote prices what a cart of them would, breaks included.
        let mut items: Vec<(LineItem, String, i64)> = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for line in array_field(body, "lines", MAX_LINES)? {
            let (item, quantity) = parse_line(line)?;
            let units = i64::from(quantity.get());
            match seen.entry(item.line_id().to_string()) {
                Entry::Occupied(at) => items[*at.get()].2 += units,
                Entry::Vacant(at) => {
                    items.push((item, at.key().clone(), units));
                    at.insert(items.len() - 1);
                }
            }
        }
        let mut lines = Vec::with_capacity(items.len());
        for (item, line_id, units) in items {
            if let LineItem::Bundle(bundle, choices) = &item {
                Bundles::of(app).check(bundle, choices).await?;
            }
            lines.push(item_quote_line(&item, line_id, Quantity::new(units)?));
        }
        price_lines(app, &lines, currency, group).await?
    };
    // A cart is priced in its own currency; naming another one with it is mixing two
    // (issue 4: a 422), not a conversion.
    if let Some(named) = named_currency.filter(|named| *named != priced.quote.currency) {
        return Err(Error::Unprocessable {
            code: ErrorCode::CurrencyMismatch,
            message: format!("the cart is in {}, not {named}", priced.quote.currency),
            details: json!({ "currencies": [priced.quote.currency, named] }),
        });
    }
    Ok(Response::json(200, &priced))
}

/// The quote's `currency`, if the body names one.
fn named_currency(body: &Value) -> Result<Option<Currency>> {
    match body.get("currency") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(c)) => Ok(Some(Currency::parse(c)?)),
        Some(other) => {
            let kind = match other {
                Value::Bool(_) => "a boolean",
                Value::Number(_) => "a number",
                Value::Array(_) => "an array",
                _ => "an object",
            };
            Err(Error::bad_request(
                ErrorCode::InvalidCurrency,
                format!("currency must be an ISO 4217 code in upper case, such as \"EUR\", not {kind}"),
            ))
        }
    }
}
