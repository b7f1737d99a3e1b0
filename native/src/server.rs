//! `commerce serve`: every route of every component on one native HTTP server, answered
//! by the same router as the Spin components.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::{Body, to_bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use commerce_core::checkout::Checkouts;
use commerce_core::http::{Request, Response};
use commerce_core::metrics::Measured;
use commerce_core::metrics::exchange::{self, Exchange, LogLevel, REQUEST_ID};
use commerce_core::ports::Redis;
use commerce_core::{App, Error, Scope, Settings, outbox};
use tokio::net::TcpListener;

use crate::connection;
use crate::http_port::NativeHttp;
use crate::pg_port::NativePg;
use crate::redis_port::NativeRedis;

/// The app over the native adapters, each measured (see [`Measured`]).
pub type NativeApp = App<Measured<NativeRedis>, Measured<NativePg>, Measured<NativeHttp>>;

/// Builds the app from settings; connections are opened on first use, so the server
/// starts (and answers 503) while a dependency is down.
pub fn build_app(settings: Settings) -> anyhow::Result<NativeApp> {
    let redis = NativeRedis::new(
        &settings.redis_url,
        Duration::from_millis(settings.redis_timeout_ms),
        &settings.redis_ca_file,
    )
    .context("redis_url (COMMERCE_REDIS_URL)")?;
    let sql = NativePg::new(
        &settings.database_url,
        Duration::from_millis(settings.database_timeout_ms),
        settings.database_pool_size_for(std::thread::available_parallelism().map_or(1, |n| n.get())),
        &settings.database_ca_file,
    )
    .context("database_url (COMMERCE_DATABASE_URL)")?;
    let http = NativeHttp::new(Duration::from_millis(settings.gateway_timeout_ms))?;
    Ok(App::new(Measured(redis), Measured(sql), Measured(http), settings))
}

/// Most outbox rows one periodic drain takes up; the next tick goes on with the rest.
const DRAIN_BATCH: usize = 100;

/// Serves `app` on `listener` until the process ends (or this future is dropped), and
/// meanwhile drains the payment outbox every `outbox_drain_interval_ms` (unless 0) and
/// keeps the Redis connection in use ([`ping_every`]).
///
/// Hostile or broken clients cannot starve the others: at most `max_connections` are open
/// at once (a new one beyond is answered 503 and closed); a client gets
/// `http_header_timeout_ms` for a request's headers and `http_body_timeout_ms` for its
/// body (408); a kept-alive connection idle for `http_idle_timeout_ms` is closed; and a
/// request runs at most `request_timeout_ms` (503).
pub async fn serve(listener: TcpListener, app: Arc<NativeApp>) -> std::io::Result<()> {
    let every = Duration::from_millis(app.settings.outbox_drain_interval_ms);
    let _drainer = (!every.is_zero()).then(|| AbortOnDrop(tokio::spawn(drain_every(app.clone(), every))));
    let _pinger = AbortOnDrop(tokio::spawn(ping_every(app.clone(), PING_EVERY)));
    let limits = connection::Limits::of(&app.settings);
    let router = axum::Router::new().fallback(answer).with_state(app);
    connection::accept(listener, router, limits).await
}

/// Stops a background task when its owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often an idle server uses its Redis connection.
const PING_EVERY: Duration = Duration::from_secs(1);

/// A `PING` every `every`: the one multiplexed Redis connection is never idle, so a Redis
/// that closes idle clients (its `timeout`) leaves it open, and a connection dropped
/// meanwhile (a Redis restart, `CLIENT KILL`) is found broken and replaced by the ping
/// rather than by the next request, which would answer 503 for it. Failures are the
/// requests' to report.
async fn ping_every(app: Arc<NativeApp>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Past the metrics: a ping is no call of the app's.
        let _ = app.redis.0.execute("PING", Vec::new()).await;
    }
}

/// Every `every`: ends the sessions waiting for a payment that passed their deadline with
/// no call meeting them (their intents cancelled: [`Checkouts::expire_overdue`]), then
/// sends what the outbox owes, logging each row taken up to stderr (a JSON line at info).
/// A failed pass (PostgreSQL down) is logged at error and the next tick tries again.
async fn drain_every(app: Arc<NativeApp>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let level = app.settings.log_level;
        match Checkouts::new(&app).expire_overdue(DRAIN_BATCH as i64).await {
            Ok(0) => {}
            Ok(ended) => exchange::log(
                level,
                LogLevel::Info,
                &format!("checkout: {ended} overdue session(s) ended"),
            ),
            Err(error) => exchange::log(level, LogLevel::Error, &format!("overdue sessions: {error}")),
        }
        match outbox::drain(&app, DRAIN_BATCH).await {
            Ok(report) => {
                for attempt in &report.attempts {
                    exchange::log(level, LogLevel::Info, &format!("outbox: {attempt}"));
                }
            }
            Err(error) => exchange::log(level, LogLevel::Error, &format!("outbox drain failed: {error}")),
        }
    }
}

/// Answers one request. The [`Exchange`] (metrics, log line, `X-Request-Id`) spans all of
/// it: reading the body (a 413 or 408 counts) and the deadline (a 503 counts).
async fn answer(State(app): State<Arc<NativeApp>>, req: axum::extract::Request) -> axum::response::Response {
    let exchange = Exchange::begin(
        req.method().as_str(),
        req.uri().path(),
        req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()),
    );
    let deadline = Duration::from_millis(app.settings.request_timeout_ms);
    let body_timeout = Duration::from_millis(app.settings.http_body_timeout_ms);
    let read = tokio::time::timeout(body_timeout, read_request(req, app.settings.max_body_bytes));
    let mut response = match read.await.unwrap_or(Err(Error::RequestTimeout)) {
        // Past its deadline the request stops where it is (every step is resumable, as
        // after a crash) and answers 503, so its idempotency lease never outlives it.
        // Its own task: a client that goes away does not stop it half way (a cancel that
        // moved its session and has yet to free the holds and the lock), only the
        // deadline does. Boxed: the router's future is many kilobytes, and every move of
        // the futures that hold it inline would copy all of it.
        Ok(request) => {
            let app = app.clone();
            let run = tokio::spawn(async move {
                tokio::time::timeout(
                    deadline,
                    Box::pin(commerce_core::router::dispatch(&app, request, Scope::All)),
                )
                .await
            });
            match run.await {
                Ok(Ok(response)) => response,
                Ok(Err(_)) => Response::error(&Error::Unavailable {
                    dependency: "deadline",
                    message: format!("the request did not finish within {deadline:?}"),
                }),
                Err(panicked) => Response::error(&Error::Internal(format!("the request failed: {panicked}"))),
            }
        }
        Err(error) => Response::error(&error),
    };
    exchange.end(&mut response, app.settings.log_level);
    let mut out = axum::response::Response::new(Body::from(response.body));
    *out.status_mut() = StatusCode::from_u16(response.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in response.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            out.headers_mut().insert(name, value);
        }
    }
    out
}

/// Why a body could not be read: past `limit` (413), or broken off (400: a malformed
/// chunk, a connection reset), which is not the caller's size.
fn body_error(error: axum::Error, limit: usize) -> Error {
    if error.into_inner().is::<http_body_util::LengthLimitError>() {
        Error::PayloadTooLarge { limit }
    } else {
        Error::bad_request(
            commerce_core::error::ErrorCode::MalformedBody,
            "the request body broke off",
        )
    }
}

/// Converts the request, reading at most `limit + 1` body bytes: a larger body is refused
/// with 413 without being read to the end.
async fn read_request(req: axum::extract::Request, limit: usize) -> Result<Request, Error> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(Error::PayloadTooLarge { limit });
    }
    let body = to_bytes(body, limit + 1)
        .await
        .map_err(|e| body_error(e, limit))?;
    let headers = parts
        .headers
        .iter()
        // A value that is not text is kept (lossily) rather than dropped, so that a header
        // the route checks is refused as malformed, never taken as absent.
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(Request {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers,
        body: body.to_vec(),
        client_addr: parts
            .extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip().to_canonical()),
    })
}
