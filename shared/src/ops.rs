//! Operations routes:
//!
//! - `GET  /health/live`         the process (natively) or component (in Spin) answers,
//!   touching no dependency and no setting
//! - `GET  /health`              whether Redis and PostgreSQL answer, with timings; 200
//!   when both do, 503 otherwise
//! - `GET  /metrics`             Prometheus text (Bearer `metrics_token` when set): the same
//!   probe, the current ruleset versions, Redis `INFO` gauges and PostgreSQL's order books,
//!   read now; and the in-process [`crate::metrics`] of this process (natively) or instance
//!   (in Spin, which keeps no state between requests: the one request it serves)
//! - `GET  /v1/admin/check`        compare Redis with PostgreSQL (admin token)
//! - `POST /v1/admin/check/repair` repair what can be repaired, then check again
//! - `GET  /openapi.json`        the OpenAPI document of every route ([`crate::openapi`])

use std::fmt::Write as _;
use std::time::Instant;

use serde_json::{Value, json};

use crate::app::App;
use crate::error::{Error, PortError, Result};
use crate::http::{Request, Response};
use crate::keys::RulesetKind;
use crate::ports::{Http, Redis, RedisReply, Sql};

/// The business counters `/metrics` reads from PostgreSQL.
const BOOKS: &str = "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM orders_refused)";

async fn metrics<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, req: &Request) -> Result<Response> {
    app.settings.authorize_metrics(req.header("authorization"))?;
    // What follows asks only a dependency that answered its probe: a scrape with a
    // dependency down or hung costs one timeout, not one per read.
    let (redis, postgres) = probes(app).await;
    let (redis_up, postgres_up) = (redis["ok"] == true, postgres["ok"] == true);
    let mut out = String::new();
    out.push_str("# HELP commerce_dependency_up Whether the dependency answered the probe.\n");
    out.push_str("# TYPE commerce_dependency_up gauge\n");
    for (name, probe) in [("redis", &redis), ("postgres", &postgres)] {
        let up = u8::from(probe["ok"] == true);
        let _ = writeln!(out, "commerce_dependency_up{{dependency=\"{name}\"}} {up}");
    }
    out.push_str("# HELP commerce_dependency_latency_ms Probe round trip in milliseconds.\n");
    out.push_str("# TYPE commerce_dependency_latency_ms gauge\n");
    for (name, probe) in [("redis", &redis), ("postgres", &postgres)] {
        let latency = probe["latencyMs"].as_f64().unwrap_or(0.0);
        let _ = writeln!(
            out,
            "commerce_dependency_latency_ms{{dependency=\"{name}\"}} {latency}"
        );
    }
    if redis_up {
        out.push_str("# HELP commerce_ruleset_version The ruleset version quotes read now.\n");
        out.push_str("# TYPE commerce_ruleset_version gauge\n");
        for kind in [RulesetKind::Pricing, RulesetKind::Discounts] {
            let reply = app
                .redis
                .execute("GET", vec![app.keys.ruleset_version(kind).into()])
                .await;
            let version = reply
                .ok()
                .and_then(|r| r.first().and_then(RedisReply::as_int))
                .unwrap_or(0);
            let _ = writeln!(
                out,
                "commerce_ruleset_version{{kind=\"{}\"}} {version}",
                kind.name()
            );
        }
    }
    // Business counters from the record of truth, so every process and instance agrees.
    if postgres_up
        && let Ok(rows) = app.sql.query(BOOKS, &[]).await
        && let Some(row) = rows.first()
    {
        let books = [
            (
                "commerce_orders_total",
                "Orders written, counted in PostgreSQL: the same in every process (commerce_orders_placed_total is this process's share).",
            ),
            (
                "commerce_orders_refused_total",
                "Paid orders PostgreSQL refused because on-hand could not cover them (refunded), counted in PostgreSQL (commerce_oversell_refusals_total is this process's share).",
            ),
        ];
        for (i, (name, help)) in books.into_iter().enumerate() {
            let n = row.get(i).and_then(|v| v.as_int()).unwrap_or(0);
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {n}");
        }
    }
    if redis_up
        && let Ok(reply) = app.redis.execute("INFO", Vec::new()).await
        && let Some(info) = reply.first().and_then(RedisReply::as_text)
    {
        crate::metrics::redis_info::render(info, &mut out);
    }
    crate::metrics::render(&mut out);
    Ok(Response::with_type(
        200,
        "text/plain; version=0.0.4",
        out.into_bytes(),
    ))
}

/// Routes the operations paths; `None` if the path is not ops'.
pub async fn route<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    segments: &[&str],
) -> Option<Result<Response>> {
    match segments {
        ["health", "live"] if req.method == "GET" => Some(Ok(liveness())),
        ["health"] if req.method == "GET" => Some(Ok(health(app).await)),
        ["metrics"] if req.method == "GET" => Some(metrics(app, req).await),
        ["openapi.json"] if req.method == "GET" => Some(Ok(Response::with_type(
            200,
            "application/json",
            crate::openapi::DOCUMENT.as_bytes().to_vec(),
        ))),
        ["v1", "admin", "check"] if req.method == "GET" => Some(check(app, req, false).await),
        ["v1", "admin", "check", "repair"] if req.method == "POST" => Some(check(app, req, true).await),
        ["v1", "admin", "check"] | ["v1", "admin", "check", "repair"] => {
            Some(Err(Error::MethodNotAllowed(req.method.clone())))
        }
        ["health"] | ["health", "live"] | ["metrics"] | ["openapi.json"] => {
            Some(Err(Error::MethodNotAllowed(req.method.clone())))
        }
        _ => None,
    }
}

/// `GET /v1/admin/check` (report only) and `POST /v1/admin/check/repair` (repair, then
/// the report of a fresh check, with what was repaired).
async fn check<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    repair: bool,
) -> Result<Response> {
    app.settings.authorize_admin(req.header("authorization"))?;
    req.no_body(app.settings.max_body_bytes)?;
    let first = crate::check::run(app, repair).await?;
    if !repair {
        return Ok(Response::json(200, &first));
    }
    let after = crate::check::run(app, false).await?;
    Ok(Response::json(
        200,
        &json!({ "repaired": first.drift, "report": after, "ok": after.ok }),
    ))
}

/// The path of the liveness probe.
pub const LIVENESS_PATH: &str = "/health/live";

/// The answer to `GET /health/live`: 200 `{"status":"alive"}`, whatever the
/// configuration and the dependencies. A Spin component gives it before reading a single
/// variable, which also makes it the host's own ceiling in `scripts/bench --spin`.
pub fn liveness() -> Response {
    Response::json(200, &json!({ "status": "alive" }))
}

async fn health<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>) -> Response {
    let (redis, postgres) = probes(app).await;
    let ok = redis["ok"] == true && postgres["ok"] == true;
    let mut response = Response::json(
        if ok { 200 } else { 503 },
        &json!({
            "status": if ok { "ok" } else { "degraded" },
            "redis": redis,
            "postgres": postgres,
        }),
    );
    // A 503 says when to ask again, as every other 503 does.
    if !ok {
        response.headers.push(("retry-after".into(), "1".into()));
    }
    response
}

/// Redis's and PostgreSQL's probes, at once: with both down or hung, they cost one timeout,
/// not two.
async fn probes<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>) -> (Value, Value) {
    futures_util::future::join(
        probe(app.redis.execute("PING", Vec::new())),
        probe(app.sql.query("SELECT 1::bigint", &[])),
    )
    .await
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
