//! Operations routes: `GET /health` reports whether Redis and PostgreSQL answer, with
//! timings; 200 when both do, 503 otherwise.

use std::time::Instant;

use serde_json::{Value, json};

use crate::app::App;
use crate::error::{Error, PortError, Result};
use crate::http::{Request, Response};
use crate::ports::{Http, Redis, Sql};

/// Routes `/health`; `None` if the path is not ops'.
pub async fn route<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    segments: &[&str],
) -> Option<Result<Response>> {
    match segments {
        ["health"] if req.method == "GET" => Some(Ok(health(app).await)),
        ["health"] => Some(Err(Error::MethodNotAllowed(req.method.clone()))),
        _ => None,
    }
}

async fn health<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>) -> Response {
    let redis = probe(app.redis.execute("PING", Vec::new())).await;
    let postgres = probe(app.sql.query("SELECT 1::bigint", &[])).await;
    let ok = redis["ok"] == true && postgres["ok"] == true;
    Response::json(
        if ok { 200 } else { 503 },
        &json!({
            "status": if ok { "ok" } else { "degraded" },
            "redis": redis,
            "postgres": postgres,
        }),
    )
}

async fn probe<T>(call: impl Future<Output = Result<T, PortError>>) -> Value {
    let started = Instant::now();
    let outcome = call.await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let latency_ms = (latency_ms * 100.0).round() / 100.0;
    match outcome {
        Ok(_) => json!({ "ok": true, "latencyMs": latency_ms }),
        Err(e) => json!({ "ok": false, "latencyMs": latency_ms, "error": e.to_string() }),
    }
}
