//! Inventory routes (DESIGN §5):
//!
//! - `GET    /v1/inventory/{variant}`            stock, live reserved, sellable
//! - `POST   /v1/inventory/availability`         up to 500 variants, one script call
//! - `POST   /v1/inventory/reservations`         trusted backends (admin or service token):
//!   all-or-nothing holds for a holder of their own namespace
//! - `DELETE /v1/inventory/reservations/{holder}` trusted backends: release those holds
//! - `PUT    /v1/admin/inventory/{variant}`      set on-hand and/or the per-order limit
//!   (`{"onHand"?, "maxPerOrder"?}`; PostgreSQL, then Redis)
//! - `POST   /v1/admin/inventory/reconcile`      rebuild Redis stock from PostgreSQL

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{Inventory, LevelChange, MAX_BATCH, MaxPerOrder};
use crate::app::App;
use crate::clock::rfc3339_millis;
use crate::error::{Error, ErrorCode, Result};
use crate::http::{Request, Response, array_field, field, object, str_field};
use crate::idempotency::{self, Claim};
use crate::ids::{ExternalHolderId, Holder, Quantity, VariantId};
use crate::ports::{Http, Redis, Sql};
use crate::settings::Settings;

/// Largest on-hand an admin may set; more is a typo, not a stock count.
const MAX_ON_HAND: i64 = 1_000_000_000;

/// Routes `/v1/inventory/…` and `/v1/admin/inventory/…`; `None` if the path is not
/// inventory's.
pub async fn route<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    segments: &[&str],
) -> Option<Result<Response>> {
    let method = req.method.as_str();
    let result = match segments {
        ["v1", "inventory", "availability"] => match method {
            "POST" => availability(app, req).await,
            _ => Err(Error::MethodNotAllowed(req.method.clone())),
        },
        ["v1", "inventory", "reservations"] => match method {
            "POST" => reserve(app, req).await,
            _ => Err(Error::MethodNotAllowed(req.method.clone())),
        },
        ["v1", "inventory", "reservations", cart] => match method {
            "DELETE" => release(app, req, cart).await,
            _ => Err(Error::MethodNotAllowed(req.method.clone())),
        },
        ["v1", "inventory", variant] => match method {
            "GET" => view(app, variant).await,
            _ => Err(Error::MethodNotAllowed(req.method.clone())),
        },
        ["v1", "admin", "inventory", "reconcile"] => match method {
            "POST" => reconcile(app, req).await,
            _ => Err(Error::MethodNotAllowed(req.method.clone())),
        },
        ["v1", "admin", "inventory", variant] => match method {
            "PUT" => set_level(app, req, variant).await,
            _ => Err(Error::MethodNotAllowed(req.method.clone())),
        },
        _ => return None,
    };
    Some(result)
}

fn store<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>) -> Inventory<'_, R, S> {
    Inventory::new(&app.redis, &app.sql, &app.keys)
}

async fn view<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, variant: &str) -> Result<Response> {
    let variant = VariantId::parse(variant)?;
    let mut views = store(app)
        .views(std::slice::from_ref(&variant))
        .await
        .map_err(|e| match e {
            Error::Unprocessable {
                code: ErrorCode::UnknownVariant,
                message,
                ..
            } => Error::not_found(ErrorCode::VariantNotFound, message),
            other => other,
        })?;
    Ok(Response::json(200, &views.remove(0)))
}

async fn availability<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, req: &Request) -> Result<Response> {
    let body = req.json(app.settings.max_body_bytes)?;
    let ids = array_field(object(&body)?, "variantIds", MAX_BATCH)?;
    let mut variants: Vec<VariantId> = Vec::with_capacity(ids.len());
    for id in ids {
        let id = id
            .as_str()
            .ok_or_else(|| Error::bad_request(ErrorCode::InvalidId, "variantIds must be strings"))?;
        let variant = VariantId::parse(id)?;
        if !variants.contains(&variant) {
            variants.push(variant);
        }
    }
    let items = store(app).views(&variants).await?;
    Ok(Response::json(200, &json!({ "items": items })))
}

/// A parsed reservation request.
struct ReservationRequest {
    cart: ExternalHolderId,
    lines: Vec<(VariantId, Quantity)>,
    ttl_seconds: u32,
}

fn parse_reservation(body: &Value, settings: &Settings) -> Result<ReservationRequest> {
    let body = object(body)?;
    let cart = ExternalHolderId::parse(str_field(body, "cartId")?)?;
    // Lines naming one variant twice are summed: the holder asks for that many in all.
    let mut wanted: BTreeMap<VariantId, i64> = BTreeMap::new();
    let mut order: Vec<VariantId> = Vec::new();
    for item in array_field(body, "items", MAX_BATCH)? {
        let item = object(item)?;
        let variant = VariantId::parse(str_field(item, "variantId")?)?;
        let quantity = Quantity::from_json(field(item, "quantity")?)?;
        let total = wanted.entry(variant.clone()).or_insert_with(|| {
            order.push(variant);
            0
        });
        *total += i64::from(quantity.get());
    }
    let lines = order
        .into_iter()
        .map(|v| {
            let quantity = Quantity::new(wanted[&v])?;
            Ok((v, quantity))
        })
        .collect::<Result<_>>()?;
    let ttl_seconds = match body.get("ttlSeconds") {
        None | Some(Value::Null) => settings.reservation_ttl_seconds,
        Some(v) => v
            .as_u64()
            .filter(|s| (1..=u64::from(Settings::MAX_RESERVATION_TTL)).contains(s))
            .map(|s| s as u32)
            .ok_or_else(|| {
                Error::bad_request(
                    ErrorCode::InvalidTtl,
                    format!(
                        "ttlSeconds must be an integer from 1 to {}",
                        Settings::MAX_RESERVATION_TTL
                    ),
                )
            })?,
    };
    Ok(ReservationRequest {
        cart,
        lines,
        ttl_seconds,
    })
}

async fn reserve<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, req: &Request) -> Result<Response> {
    app.settings.authorize_trusted(req.header("authorization"))?;
    let body = req.json(app.settings.max_body_bytes)?;
    let request = parse_reservation(&body, &app.settings)?;
    // Re-reserving sets a holder's quantities, so a plain retry is safe; a caller's
    // `Idempotency-Key` also replays the first answer (its deadline, not a later one) and
    // refuses the same key with another body (422), as on every creating POST. The key is
    // its caller's (the admin's or the service's), whichever holder the body names: the
    // same key for another holder is another body.
    let scope = format!("reservations:{}", idempotency::caller(app, req));
    idempotency::once(app, req, &scope, Claim::OPTIONAL, |_| async move {
        let reservation = store(app)
            .reserve(
                &Holder::External(request.cart.clone()),
                &request.lines,
                i64::from(request.ttl_seconds) * 1000,
            )
            .await;
        super::count_request(&reservation);
        let reservation = reservation?;
        let stock_keys: Vec<String> = request
            .lines
            .iter()
            .map(|(v, _)| app.keys.variant(v).stock)
            .collect();
        app.replicated(&stock_keys.iter().map(String::as_str).collect::<Vec<_>>())
            .await?;
        let items: Vec<Value> = request
            .lines
            .iter()
            .map(|(v, q)| json!({ "variantId": v.as_str(), "quantity": q.get() }))
            .collect();
        Ok(Response::json(
            201,
            &json!({
                "cartId": request.cart.as_str(),
                "expiresAt": rfc3339_millis(reservation.deadline_ms),
                "items": items,
            }),
        ))
    })
    .await
}

async fn release<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    cart: &str,
) -> Result<Response> {
    app.settings.authorize_trusted(req.header("authorization"))?;
    req.no_body(app.settings.max_body_bytes)?;
    let cart = ExternalHolderId::parse(cart)?;
    let released = store(app).release(&Holder::External(cart.clone()), &[]).await?;
    Ok(Response::json(
        200,
        &json!({ "cartId": cart.as_str(), "released": released }),
    ))
}

async fn set_level<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    variant: &str,
) -> Result<Response> {
    app.settings.authorize_admin(req.header("authorization"))?;
    let variant = VariantId::parse(variant)?;
    let body = req.json(app.settings.max_body_bytes)?;
    let change = parse_level_change(&body)?;
    let view = store(app).set_level(&variant, change).await?;
    Ok(Response::json(200, &view))
}

/// `{"onHand": n, "maxPerOrder": n | null}`, at least one of them.
fn parse_level_change(body: &Value) -> Result<LevelChange> {
    let body = object(body)?;
    let on_hand = match body.get("onHand") {
        None => None,
        Some(value) => Some(
            value
                .as_i64()
                .filter(|n| (0..=MAX_ON_HAND).contains(n))
                .ok_or_else(|| {
                    Error::bad_request(
                        ErrorCode::InvalidOnHand,
                        format!("onHand must be an integer from 0 to {MAX_ON_HAND}"),
                    )
                })?,
        ),
    };
    let max_per_order = body.get("maxPerOrder").map(MaxPerOrder::from_json).transpose()?;
    if on_hand.is_none() && max_per_order.is_none() {
        return Err(Error::bad_request(
            ErrorCode::MissingField,
            "field \"onHand\" or \"maxPerOrder\" is required",
        ));
    }
    Ok(LevelChange {
        on_hand,
        max_per_order,
    })
}

async fn reconcile<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, req: &Request) -> Result<Response> {
    app.settings.authorize_admin(req.header("authorization"))?;
    req.no_body(app.settings.max_body_bytes)?;
    let report = store(app).reconcile(|_| {}).await?;
    Ok(Response::json(200, &report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::from_config(&crate::settings::tests_support::Empty).unwrap()
    }

    #[test]
    fn duplicate_lines_are_summed_in_first_seen_order() {
        let body = json!({"cartId": "c1", "items": [
            {"variantId": "b", "quantity": 1},
            {"variantId": "a", "quantity": 2},
            {"variantId": "b", "quantity": 3},
        ]});
        let r = parse_reservation(&body, &settings()).unwrap();
        let lines: Vec<(&str, u32)> = r.lines.iter().map(|(v, q)| (v.as_str(), q.get())).collect();
        assert_eq!(lines, [("b", 4), ("a", 2)]);
        assert_eq!(r.ttl_seconds, 900);
    }

    #[test]
    fn level_changes_name_on_hand_or_the_limit_or_both() {
        let parse = |body: Value| parse_level_change(&body);
        assert_eq!(
            parse(json!({"onHand": 5})).unwrap(),
            LevelChange {
                on_hand: Some(5),
                max_per_order: None
            }
        );
        let both = parse(json!({"onHand": 0, "maxPerOrder": 2})).unwrap();
        assert_eq!(both.on_hand, Some(0));
        assert_eq!(both.max_per_order.flatten().map(MaxPerOrder::get), Some(2));
        assert_eq!(
            parse(json!({"maxPerOrder": null})).unwrap().max_per_order,
            Some(None)
        );
        for bad in [
            json!({}),
            json!([]),
            json!({"onHand": -1}),
            json!({"onHand": "5"}),
            json!({"maxPerOrder": 0}),
            json!({"maxPerOrder": -2}),
            json!({"maxPerOrder": 1.5}),
            json!({"maxPerOrder": "2"}),
            json!({"maxPerOrder": 100_001}),
            json!({"onHand": 5, "maxPerOrder": true}),
        ] {
            let err = parse(bad.clone())
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert_eq!(err.status(), 400, "{bad}");
        }
    }

    #[test]
    fn malformed_reservations_are_bad_requests() {
        let bad = [
            json!([]),
            json!({"items": [{"variantId": "a", "quantity": 1}]}),
            json!({"cartId": "c:1", "items": [{"variantId": "a", "quantity": 1}]}),
            json!({"cartId": "c", "items": []}),
            json!({"cartId": "c", "items": [{"variantId": "a"}]}),
            json!({"cartId": "c", "items": [{"variantId": "a", "quantity": 0}]}),
            json!({"cartId": "c", "items": [{"variantId": "a", "quantity": 60000}, {"variantId": "a", "quantity": 60000}]}),
            json!({"cartId": "c", "items": [{"variantId": "a", "quantity": 1}], "ttlSeconds": 0}),
            json!({"cartId": "c", "items": [{"variantId": "a", "quantity": 1}], "ttlSeconds": 1.5}),
        ];
        for body in bad {
            let err = parse_reservation(&body, &settings())
                .err()
                .unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!(err.status(), 400, "{body}");
        }
    }
}
