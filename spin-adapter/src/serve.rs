//! [`serve`]: one Spin HTTP request in, the router's answer out.

use std::time::{Duration, Instant};

use commerce_core::app::App;
use commerce_core::error::{Dependency, Error, ErrorCode};
use commerce_core::http::{Request, Response};
use commerce_core::metrics::Measured;
use commerce_core::metrics::exchange::{Exchange, LogLevel};
use commerce_core::ports::Config;
use commerce_core::router::{self, Scope};
use commerce_core::settings::Settings;
use spin_sdk::http::{IncomingRequest, Response as SpinResponse};
use wasi::clocks::monotonic_clock;

use crate::{Deadline, SpinConfig, SpinHttp, SpinPg, SpinRedis};

/// Answers one Spin HTTP request with the routes of `scope`.
///
/// Guarantees: never panics on input; `GET /health/live` is answered before anything is
/// read; a configuration error is a 500 (bad settings) or a 503 (the variables provider
/// failed) with the DESIGN §5 error body; a body over
/// `max_body_bytes` is a 413 (its rest read and dropped up to [`DRAIN_BYTES`]); otherwise the
/// response is exactly what [`router::handle`] answers. The path handed to the router
/// carries no query string (that is in `query`), header names are lower case, the method is
/// as the client sent it (method names are case-sensitive, RFC 9110 §9.1: `get` is no
/// `GET`, as natively), and the body is the bytes the client sent (the webhook's signature
/// covers them).
pub async fn serve(req: IncomingRequest, scope: Scope) -> SpinResponse {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(commerce_core::metrics::exchange::REQUEST_ID)
        .first()
        .and_then(|v| String::from_utf8(v.clone()).ok());
    // Liveness touches no dependency and no setting but the log level, which it reads with
    // a fallback: it answers, with its request id and log line, even with a broken
    // configuration.
    if req.method() == spin_sdk::http::Method::Get
        && req.path_with_query().as_deref() == Some(commerce_core::ops::LIVENESS_PATH)
    {
        let exchange =
            Exchange::begin("GET", commerce_core::ops::LIVENESS_PATH, request_id.as_deref()).since(started);
        let level = SpinConfig::new()
            .get("log_level")
            .and_then(|level| LogLevel::parse(&level))
            .unwrap_or_default();
        let mut response = commerce_core::ops::liveness();
        exchange.end(&mut response, level);
        return into_spin(response);
    }
    let path_with_query = req.path_with_query().unwrap_or_default();
    let path = path_with_query.split('?').next().unwrap_or_default();
    let exchange = Exchange::begin(&req.method().to_string(), path, request_id.as_deref()).since(started);
    let config = SpinConfig::new();
    let settings = Settings::from_config(&config);
    // A provider failure may have turned a variable into a default: answer for that
    // before a wrong default (another Redis, an empty admin token) is ever used. Such an
    // answer carries its request id and leaves its log line (at the default level: the
    // configured one may be what is wrong) like any other.
    let refused = match (config.take_failure(), settings) {
        (Some(error), _) => error,
        (None, Err(message)) => Error::Configuration(message),
        (None, Ok(settings)) => return answer(req, scope, settings, exchange, started).await,
    };
    let mut response = Response::error(&refused);
    exchange.end(&mut response, LogLevel::default());
    into_spin(response)
}

/// Answers a request whose settings were read.
async fn answer(
    req: IncomingRequest,
    scope: Scope,
    settings: Settings,
    exchange: Exchange,
    started: Instant,
) -> SpinResponse {
    let log_level = settings.log_level;
    let body_timeout = Duration::from_millis(settings.http_body_timeout_ms);
    let request = match from_spin(req, settings.max_body_bytes, body_timeout) {
        Ok(request) => request,
        Err(error) => {
            let mut response = Response::error(&error);
            exchange.end(&mut response, log_level);
            return into_spin(response);
        }
    };
    let ends = started + Duration::from_millis(settings.request_timeout_ms);
    let app = App::new(
        Measured(SpinRedis::new(
            &settings.redis_url,
            Deadline::new(
                Dependency::Redis,
                "redis_timeout_ms",
                settings.redis_timeout_ms,
                ends,
            ),
        )),
        Measured(SpinPg::new(
            &settings.database_url,
            Deadline::new(
                Dependency::Postgres,
                "database_timeout_ms",
                settings.database_timeout_ms,
                ends,
            ),
        )),
        Measured(SpinHttp {
            timeout: Duration::from_millis(settings.gateway_timeout_ms),
        }),
        settings,
    );
    let mut response = router::dispatch(&app, request, scope).await;
    exchange.end(&mut response, log_level);
    into_spin(response)
}

/// Converts Spin's request into the router's, keeping at most `limit + 1` body bytes (a
/// declared or actual length past the limit is a 413; what is left of it is dropped,
/// read only as far as [`DRAIN_BYTES`]). A body not all sent within `body_timeout` is a
/// 408, as natively (`http_body_timeout_ms`).
///
/// Every header is kept, repeated ones in order, as the native server keeps them; a
/// header value that is not UTF-8 is dropped (no route reads one, and a mangled
/// `Authorization` must fail, not match).
fn from_spin(req: IncomingRequest, limit: usize, body_timeout: Duration) -> Result<Request, Error> {
    let method = req.method().to_string();
    let path_with_query = req.path_with_query().unwrap_or_default();
    let (path, query) = match path_with_query.split_once('?') {
        Some((path, query)) => (path.to_owned(), query.to_owned()),
        None => (path_with_query.clone(), String::new()),
    };
    let headers: Vec<(String, String)> = req
        .headers()
        .entries()
        .into_iter()
        // Kept lossily rather than dropped, as natively: a malformed header is refused, not absent.
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                String::from_utf8_lossy(&value).into_owned(),
            )
        })
        .collect();
    // As u64: a length past 4 GiB is still a length on wasm32, whose usize is 32 bits.
    let declared = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse::<u64>().ok());
    let deadline = deadline_after(body_timeout);
    if declared.is_some_and(|length| length > limit as u64) {
        // Within reach, the body is read and dropped first (until the body's deadline at
        // the latest): the host closes the connection after a 413, and closing a socket
        // with unread bytes resets it, which can cut the 413 off before the client reads
        // it (seen on the real host).
        if declared.is_some_and(|length| length <= (limit + DRAIN_BYTES) as u64) {
            drain(req, deadline);
        }
        return Err(Error::PayloadTooLarge { limit });
    }
    let body = read_body(req, limit, deadline)?;
    let client_addr = client_addr(&headers);
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
        client_addr,
    })
}

/// The direct peer's address, from the host's `spin-client-addr` header (a socket
/// address, `127.0.0.1:50312` or `[::1]:50312`).
///
/// The LAST value is the host's. Read in Spin's source (spinframework/spin at 94a8fc8a,
/// the commit of the Spin in `../shared/tools/`, `crates/trigger-http/src/headers.rs`
/// `prepare_request_headers` and `wasi.rs` `prepare_request`): the host keeps every header
/// the client sent and then appends its own `spin-client-addr` (from the accepted socket)
/// with `HeaderMap::extend`, which appends rather than replaces. So a client that sends
/// `spin-client-addr` itself does not overwrite the host's value; its forgery comes
/// first, and taking the last value ignores it. `tests/tests/limits.rs` sends one; on the
/// real host it escapes the rate limit if the first value is taken instead (tried).
fn client_addr(headers: &[(String, String)]) -> Option<std::net::IpAddr> {
    let (_, value) = headers
        .iter()
        .rev()
        .find(|(name, _)| name == "spin-client-addr")?;
    let value = value.trim();
    value
        .parse::<std::net::SocketAddr>()
        .map(|peer| peer.ip())
        .or_else(|_| value.parse::<std::net::IpAddr>())
        .ok()
        .map(|ip| ip.to_canonical())
}

/// How far past `max_body_bytes` a refused body is still read (and dropped) so that the
/// 413 reaches the client; a larger one is refused unread, and its client may see the
/// connection reset instead.
const DRAIN_BYTES: usize = 1024 * 1024;

/// The monotonic clock's instant `timeout` from now.
fn deadline_after(timeout: Duration) -> u64 {
    monotonic_clock::now().saturating_add(timeout.as_nanos().min(u64::MAX as u128) as u64)
}

/// Reads the request body, stopping one byte past `limit` (413, after reading and
/// dropping at most [`DRAIN_BYTES`] more) or at `deadline` (408: a client that stops
/// sending mid-body holds nothing for longer). The component has nothing else to do
/// meanwhile, so it waits on the stream and a timer together.
fn read_body(req: IncomingRequest, limit: usize, deadline: u64) -> Result<Vec<u8>, Error> {
    use wasi::io::streams::StreamError;
    let unreadable =
        |what: &str| Error::bad_request(ErrorCode::MalformedBody, format!("the request body {what}"));
    let incoming = req.consume().map_err(|()| unreadable("was already consumed"))?;
    let mut body = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| unreadable("cannot be read"))?;
        let ready = stream.subscribe();
        let timer = monotonic_clock::subscribe_instant(deadline);
        loop {
            let room = (limit + 1 - body.len()).min(64 * 1024) as u64;
            match stream.read(room) {
                Ok(chunk) if chunk.is_empty() => {
                    if monotonic_clock::now() >= deadline {
                        return Err(Error::RequestTimeout);
                    }
                    wasi::io::poll::poll(&[&ready, &timer]);
                }
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                // Not the host's account of why (a malformed chunk, a reset): its debug
                // text can carry a backtrace, which is no business of the caller's.
                Err(StreamError::LastOperationFailed(_)) => return Err(unreadable("broke off")),
            }
            if body.len() > limit {
                skip(&stream, DRAIN_BYTES, deadline);
                return Err(Error::PayloadTooLarge { limit });
            }
        }
    }
    Ok(body)
}

/// Reads and drops a body that is refused anyway (see [`DRAIN_BYTES`]), until `deadline`
/// at the latest.
fn drain(req: IncomingRequest, deadline: u64) {
    let Ok(incoming) = req.consume() else { return };
    let Ok(stream) = incoming.stream() else { return };
    skip(&stream, DRAIN_BYTES + 1, deadline);
}

/// Reads and drops up to `most` bytes of `stream`, stopping at its end, at an error, or at
/// `deadline`: a client that stalls while its refused body is dropped holds the request
/// no longer than a body read may last (`http_body_timeout_ms`), and is then answered.
fn skip(stream: &wasi::io::streams::InputStream, most: usize, deadline: u64) {
    let ready = stream.subscribe();
    let timer = monotonic_clock::subscribe_instant(deadline);
    let mut left = most as u64;
    while left > 0 {
        match stream.skip(left.min(64 * 1024)) {
            Ok(0) => {
                if monotonic_clock::now() >= deadline {
                    return;
                }
                wasi::io::poll::poll(&[&ready, &timer]);
            }
            Ok(skipped) => left = left.saturating_sub(skipped),
            Err(_) => return,
        }
    }
}

/// Converts the router's response into Spin's.
fn into_spin(response: Response) -> SpinResponse {
    let mut builder = SpinResponse::builder();
    builder.status(response.status);
    for (name, value) in response.headers {
        builder.header(name, value);
    }
    builder.body(response.body).build()
}
