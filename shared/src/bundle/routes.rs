//! Bundle routes (DESIGN §5):
//!
//! - `GET  /v1/bundles/{bundle}`                   definition, sets, eligible variants
//! - `POST /v1/admin/bundles/{bundle}/invalidate`  drop the bundle's cache

use serde_json::json;

use super::Bundles;
use crate::app::App;
use crate::error::{Error, Result};
use crate::http::{Request, Response};
use crate::ids::BundleId;
use crate::ports::{Http, Redis, Sql};

/// Routes the bundle paths; `None` if the path is not the bundle cache's.
pub async fn route<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    segments: &[&str],
) -> Option<Result<Response>> {
    let method = req.method.as_str();
    let result = match segments {
        ["v1", "bundles", bundle] => match method {
            "GET" => get(app, bundle).await,
            _ => Err(Error::MethodNotAllowed(req.method.clone())),
        },
        ["v1", "admin", "bundles", bundle, "invalidate"] => match method {
            "POST" => invalidate(app, req, bundle).await,
            _ => Err(Error::MethodNotAllowed(req.method.clone())),
        },
        _ => return None,
    };
    Some(result)
}

async fn get<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, bundle: &str) -> Result<Response> {
    let bundle = BundleId::parse(bundle)?;
    Ok(Response::json(200, &Bundles::of(app).get(&bundle).await?))
}

async fn invalidate<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    bundle: &str,
) -> Result<Response> {
    app.settings.authorize_admin(req.header("authorization"))?;
    req.no_body(app.settings.max_body_bytes)?;
    let bundle = BundleId::parse(bundle)?;
    Bundles::of(app).invalidate(&bundle).await?;
    Ok(Response::json(
        200,
        &json!({ "bundleId": bundle.as_str(), "invalidated": true }),
    ))
}
