//! Outbox routes (DESIGN §5), answered by the checkout component:
//!
//! - `GET /v1/admin/refunds[?state=pending|sent|refused][&limit=N]` (admin token):
//!   refunds and intent cancellations owed or sent, newest first, with their outbox state
//!   → `{"items":[{"kind","paymentIntentId","checkoutSessionId","amount","currency",
//!   "reason","state","attempts","lastError","createdAt","sentAt","nextAttemptAt",
//!   "gatewayId"}]}`; `limit` is 1–1000, 100 by default.

use serde_json::json;

use super::{OutboxState, list};
use crate::app::App;
use crate::error::{Error, ErrorCode, Result};
use crate::http::{Request, Response};
use crate::ports::Sql;

/// Rows listed when the request names no limit.
const DEFAULT_LIMIT: u32 = 100;
/// Most rows one request may list.
const MAX_LIMIT: u32 = 1000;

/// Routes the outbox paths; `None` if the path is not the outbox's.
pub async fn route<R, S: Sql, H>(
    app: &App<R, S, H>,
    req: &Request,
    segments: &[&str],
) -> Option<Result<Response>> {
    match segments {
        ["v1", "admin", "refunds"] if req.method == "GET" => Some(refunds(app, req).await),
        ["v1", "admin", "refunds"] => Some(Err(Error::MethodNotAllowed(req.method.clone()))),
        _ => None,
    }
}

async fn refunds<R, S: Sql, H>(app: &App<R, S, H>, req: &Request) -> Result<Response> {
    app.settings.authorize_admin(req.header("authorization"))?;
    let state = req
        .query_param("state")
        .map(|s| OutboxState::parse(&s))
        .transpose()?;
    let limit = match req.query_param("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                Error::bad_request(
                    ErrorCode::InvalidQuery,
                    format!("limit must be a whole number from 1 to {MAX_LIMIT}, got {text:?}"),
                )
            })?,
    };
    let items = list(&app.sql, state, limit).await?;
    Ok(Response::json(200, &json!({ "items": items })))
}
