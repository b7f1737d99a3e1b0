//! The Spin adapters of the ports, and [`serve`], the one entry point of every component.
//!
//! A component's `lib.rs` only calls [`serve`] with its [`Scope`]; everything else happens
//! here or in the shared handlers. One set of adapters is built per request: Spin gives a
//! component no state between requests, so the Redis and PostgreSQL connections are opened
//! lazily, on first use, and live as long as the request.
//!
//! Spin has no per-call timeout on outbound Redis or PostgreSQL, and a host call cannot
//! be interrupted from inside the component (DESIGN §2). What the component can bound, it
//! does: a call that outlasts its native timeout (`redis_timeout_ms`,
//! `database_timeout_ms`) is answered as natively, a 503, and no further call to that
//! dependency is made in the request; no call starts once the request has run for
//! `request_timeout_ms` (natively its deadline); a request body is read only up to its limit;
//! the payment gateway is called with `gateway_timeout_ms` as wasi:http's connect and
//! first-byte timeouts. A hung call itself lasts until the dependency answers or the
//! platform's handler timeout ends the request: the README says what a deployer sets.

use std::cell::{Cell, OnceCell, RefCell};
use std::time::{Duration, Instant};

use spin_sdk::http::{IncomingRequest, Response as SpinResponse};
use spin_sdk::pg4::{self, DbValue, ParameterValue, QueryError};
use spin_sdk::redis::{self, RedisParameter, RedisResult};
use spin_sdk::variables;

use crate::app::App;
use crate::error::{Error, PortError};
use crate::http::{Request, Response};
use crate::metrics::Measured;
use crate::metrics::exchange::Exchange;
use crate::ports::{
    Config, Http, OutboundRequest, OutboundResponse, Redis, RedisArg, RedisReply, Sql, SqlRow, SqlValue,
};
use crate::router::{self, Scope};
use crate::settings::Settings;

/// Answers one Spin HTTP request with the routes of `scope`.
///
/// Guarantees: never panics on input; `GET /health/live` is answered before anything is
/// read; a configuration error is a 500 (bad settings) or a 503 (the variables provider
/// failed) with the DESIGN §5 error body; a body over
/// `max_body_bytes` is a 413 (its rest read and dropped up to [`DRAIN_BYTES`]); otherwise the
/// response is exactly what [`router::handle`] answers. The path handed to the router
/// carries no query string (that is in `query`), header names are lower case, the method is upper case, and
/// the body is the bytes the client sent (the webhook's signature covers them).
pub async fn serve(req: IncomingRequest, scope: Scope) -> SpinResponse {
    let started = Instant::now();
    // Liveness touches nothing, not even a variable (each costs the host a provider
    // lookup): it answers even with a broken configuration.
    if req.method() == spin_sdk::http::Method::Get
        && req.path_with_query().as_deref() == Some(crate::ops::LIVENESS_PATH)
    {
        return into_spin(crate::ops::liveness());
    }
    let config = SpinConfig::new();
    let settings = Settings::from_config(&config);
    // A provider failure may have turned a variable into a default: answer for that
    // before a wrong default (another Redis, an empty admin token) is ever used.
    if let Some(error) = config.take_failure() {
        return into_spin(Response::error(&error));
    }
    let settings = match settings {
        Ok(settings) => settings,
        Err(message) => {
            return into_spin(Response::error(&Error::Internal(format!(
                "configuration: {message}"
            ))));
        }
    };
    let path_with_query = req.path_with_query().unwrap_or_default();
    let path = path_with_query.split('?').next().unwrap_or_default();
    let request_id = req
        .headers()
        .get(crate::metrics::exchange::REQUEST_ID)
        .first()
        .and_then(|v| String::from_utf8(v.clone()).ok());
    let exchange = Exchange::begin(
        &req.method().to_string().to_ascii_uppercase(),
        path,
        request_id.as_deref(),
    )
    .since(started);
    let log_level = settings.log_level;
    let request = match from_spin(req, settings.max_body_bytes) {
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
            Deadline::new("redis", "redis_timeout_ms", settings.redis_timeout_ms, ends),
        )),
        Measured(SpinPg::new(
            &settings.database_url,
            Deadline::new(
                "postgres",
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
/// read only as far as [`DRAIN_BYTES`]).
///
/// Every header is kept, repeated ones in order, as the native server keeps them; a
/// header value that is not UTF-8 is dropped (no route reads one, and a mangled
/// `Authorization` must fail, not match).
fn from_spin(req: IncomingRequest, limit: usize) -> Result<Request, Error> {
    let method = req.method().to_string().to_ascii_uppercase();
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
    let declared = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, value)| value.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        // Within reach, the body is read and dropped first: the host closes the
        // connection after a 413, and closing a socket with unread bytes resets it,
        // which can cut the 413 off before the client reads it (seen on the real host).
        if declared.is_some_and(|length| length <= limit + DRAIN_BYTES) {
            drain(req);
        }
        return Err(Error::PayloadTooLarge { limit });
    }
    let body = read_body(req, limit)?;
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

/// Reads the request body, stopping one byte past `limit` (413, after reading and
/// dropping at most [`DRAIN_BYTES`] more). The component has nothing else to do
/// meanwhile, so it blocks on the stream.
fn read_body(req: IncomingRequest, limit: usize) -> Result<Vec<u8>, Error> {
    let unreadable = |what: &str| Error::bad_request("MALFORMED_BODY", format!("the request body {what}"));
    let incoming = req.consume().map_err(|()| unreadable("was already consumed"))?;
    let mut body = Vec::new();
    {
        let stream = incoming.stream().map_err(|()| unreadable("cannot be read"))?;
        loop {
            let room = (limit + 1 - body.len()).min(64 * 1024) as u64;
            match stream.blocking_read(room) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(wasi::io::streams::StreamError::Closed) => break,
                Err(wasi::io::streams::StreamError::LastOperationFailed(error)) => {
                    return Err(unreadable(&format!("broke off: {}", error.to_debug_string())));
                }
            }
            if body.len() > limit {
                skip(&stream, DRAIN_BYTES);
                return Err(Error::PayloadTooLarge { limit });
            }
        }
    }
    Ok(body)
}

/// Reads and drops a body that is refused anyway (see [`DRAIN_BYTES`]).
fn drain(req: IncomingRequest) {
    let Ok(incoming) = req.consume() else { return };
    let Ok(stream) = incoming.stream() else { return };
    skip(&stream, DRAIN_BYTES + 1);
}

/// Reads and drops up to `most` bytes of `stream`, stopping at its end or at an error.
fn skip(stream: &wasi::io::streams::InputStream, most: usize) {
    let mut left = most as u64;
    while left > 0 {
        match stream.blocking_skip(left.min(64 * 1024)) {
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

/// The [`Http`] port over Spin's outbound HTTP (`wasi:http/outgoing-handler`), reaching
/// only what `allowed_outbound_hosts` names (the payment gateway).
///
/// Guarantees: any HTTP answer is `Ok`, whatever its status; a request the host refuses
/// or cannot deliver, or that does not connect or start answering within `timeout` (asked
/// of the host as wasi:http's connect, first-byte and between-bytes timeouts), is
/// [`PortError::Unreachable`] (→ 503).
pub struct SpinHttp {
    /// The gateway's `gateway_timeout_ms`.
    pub timeout: Duration,
}

impl Http for SpinHttp {
    async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, PortError> {
        // The component has nothing to interleave: it blocks on the host's pollables.
        send_blocking(request, self.timeout)
    }
}

/// Sends `request` over `wasi:http/outgoing-handler` with `timeout` as the host's connect,
/// first-byte and between-bytes timeouts (spin-sdk's `send` sets none), and reads the
/// whole answer.
fn send_blocking(request: OutboundRequest, timeout: Duration) -> Result<OutboundResponse, PortError> {
    use wasi::http::types::{
        Fields, Method as WasiMethod, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };
    use wasi::io::streams::StreamError;

    let refused = |what: &str| PortError::Unreachable(format!("outbound HTTP {what}"));
    let (scheme, rest) = request
        .url
        .split_once("://")
        .ok_or_else(|| refused("URL has no scheme"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |at| rest.split_at(at));
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    let method = match request.method.as_str() {
        "GET" => WasiMethod::Get,
        "POST" => WasiMethod::Post,
        "PUT" => WasiMethod::Put,
        "DELETE" => WasiMethod::Delete,
        other => WasiMethod::Other(other.to_owned()),
    };
    let headers: Vec<(String, Vec<u8>)> = request
        .headers
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    let fields = Fields::from_list(&headers).map_err(|e| refused(&format!("headers refused: {e:?}")))?;
    let outgoing = OutgoingRequest::new(fields);
    outgoing
        .set_method(&method)
        .and_then(|()| outgoing.set_scheme(Some(&scheme)))
        .and_then(|()| outgoing.set_authority(Some(authority)))
        .and_then(|()| outgoing.set_path_with_query(Some(path)))
        .map_err(|()| refused(&format!("request refused for {}", request.url)))?;
    let body = outgoing.body().map_err(|()| refused("body unavailable"))?;
    let options = RequestOptions::new();
    let nanos = Some(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
    // A host that does not support one of them refuses it; it then keeps its own default.
    let _ = options.set_connect_timeout(nanos);
    let _ = options.set_first_byte_timeout(nanos);
    let _ = options.set_between_bytes_timeout(nanos);
    let pending = wasi::http::outgoing_handler::handle(outgoing, Some(options))
        .map_err(|e| refused(&format!("not sent: {e:?}")))?;
    {
        let stream = body.write().map_err(|()| refused("body unwritable"))?;
        // wasi:io allows at most 4096 bytes per blocking write.
        for chunk in request.body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| refused(&format!("body not sent: {e:?}")))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| refused(&format!("body not finished: {e:?}")))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(refused(&format!("failed: {code:?}"))),
        Some(Err(())) | None => return Err(refused("gave no response")),
    };
    let status = response.status();
    let incoming = response
        .consume()
        .map_err(|()| refused("response body unavailable"))?;
    let mut bytes = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| refused("response body unreadable"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(refused(&format!("response broke off: {}", e.to_debug_string())));
                }
            }
        }
    }
    Ok(OutboundResponse { status, body: bytes })
}

/// The calls one request makes to one dependency, timed against that dependency's native
/// timeout and the request's own deadline. Spin cannot interrupt a host call, so a call
/// runs until the dependency answers; one that took longer than `timeout` is then
/// answered as the native adapter answers a timeout (a 503: its effect may or may not
/// have happened, which every operation already allows for), and no further call is
/// started in the request. Nor is one started past the request's deadline
/// (`request_timeout_ms`), where the native server stops a request.
pub struct Deadline {
    dependency: &'static str,
    setting: &'static str,
    timeout: Duration,
    request_ends: Instant,
    overrun: Cell<Option<Duration>>,
}

impl Deadline {
    /// A deadline for calls to `dependency`, each allowed `timeout_ms` (the value of
    /// `setting`), none started after `request_ends`.
    pub fn new(
        dependency: &'static str,
        setting: &'static str,
        timeout_ms: u64,
        request_ends: Instant,
    ) -> Self {
        Self {
            dependency,
            setting,
            timeout: Duration::from_millis(timeout_ms),
            request_ends,
            overrun: Cell::new(None),
        }
    }

    /// Runs one host call under the deadline.
    fn call<T>(&self, host_call: impl FnOnce() -> Result<T, PortError>) -> Result<T, PortError> {
        if Instant::now() >= self.request_ends {
            return Err(PortError::Unreachable(format!(
                "not called: the request has run past request_timeout_ms, {} not reached",
                self.dependency
            )));
        }
        if let Some(took) = self.overrun.get() {
            return Err(PortError::Unreachable(format!(
                "not called: an earlier {} call of this request took {} ms, more than {} ({} ms)",
                self.dependency,
                took.as_millis(),
                self.setting,
                self.timeout.as_millis()
            )));
        }
        let started = Instant::now();
        let result = host_call();
        let took = started.elapsed();
        if took > self.timeout {
            self.overrun.set(Some(took));
            return Err(PortError::Unreachable(format!(
                "{} answered after {} ms, more than {} ({} ms)",
                self.dependency,
                took.as_millis(),
                self.setting,
                self.timeout.as_millis()
            )));
        }
        result
    }
}

/// The [`Redis`] port over Spin's outbound Redis (`fermyon:spin/redis@2.0.0`).
///
/// Guarantees: the connection is opened on the first command and reused for the rest of
/// the request; a failed open is retried by the next command. Replies arrive flattened by
/// the host, exactly as [`RedisReply`] documents. A server error reply is
/// [`PortError::Server`] in Redis's own form, code first (`NOSCRIPT No matching script…`),
/// whatever the host's rendering; anything that means Redis could not be reached, or
/// cannot serve now (`LOADING`, `BUSY`, …), is [`PortError::Unreachable`] (→ 503).
pub struct SpinRedis {
    address: String,
    connection: OnceCell<redis::Connection>,
    deadline: Deadline,
}

impl SpinRedis {
    /// An adapter for the Redis at `address` (`redis://` or `rediss://`); nothing is opened
    /// until the first command. Every command (with the connection it opens) runs under
    /// `deadline`.
    pub fn new(address: &str, deadline: Deadline) -> Self {
        Self {
            address: address.to_owned(),
            connection: OnceCell::new(),
            deadline,
        }
    }

    fn connection(&self) -> Result<&redis::Connection, PortError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection);
        }
        let opened = redis::Connection::open(&self.address).map_err(|e| match redis_error(e) {
            // Whatever stops the open, the caller can only retry later.
            PortError::Server(message) => PortError::Unreachable(message),
            unreachable => unreachable,
        })?;
        Ok(self.connection.get_or_init(|| opened))
    }

    fn run(&self, command: &str, args: Vec<RedisArg>) -> Result<Vec<RedisReply>, PortError> {
        let args: Vec<RedisParameter> = args
            .into_iter()
            .map(|arg| match arg {
                RedisArg::Int(n) => RedisParameter::Int64(n),
                RedisArg::Bytes(bytes) => RedisParameter::Binary(bytes),
            })
            .collect();
        let results = self.connection()?.execute(command, &args).map_err(redis_error)?;
        Ok(results
            .into_iter()
            .map(|result| match result {
                RedisResult::Nil => RedisReply::Nil,
                RedisResult::Status(status) => RedisReply::Status(status),
                RedisResult::Int64(n) => RedisReply::Int(n),
                RedisResult::Binary(bytes) => RedisReply::Bytes(bytes),
            })
            .collect())
    }
}

impl Redis for SpinRedis {
    // The host call blocks the component until Redis answers; there is nothing to
    // interleave. It runs when the future is first polled, not when it is made, so that a
    // caller timing the await (the /health probe) times the call.
    async fn execute(&self, command: &str, args: Vec<RedisArg>) -> Result<Vec<RedisReply>, PortError> {
        self.deadline.call(|| self.run(command, args))
    }
}

/// Maps an outbound Redis error to the port's error.
///
/// `invalid-address` is what the host answers both for a malformed URL and for an address
/// missing from `allowed_outbound_hosts`; both are deployment mistakes the request cannot
/// fix, and a 503 naming Redis points at them without exposing a 500. Every other failure
/// arrives as `other(text)`: see [`server_error`] and [`is_connection_failure`].
fn redis_error(error: redis::Error) -> PortError {
    match error {
        redis::Error::InvalidAddress => {
            PortError::Unreachable("invalid Redis address, or not listed in allowed_outbound_hosts".into())
        }
        redis::Error::TooManyConnections => {
            PortError::Unreachable("too many outbound Redis connections".into())
        }
        redis::Error::TypeError => PortError::Server("Redis reply of an unexpected type".into()),
        redis::Error::Other(text) => match server_error(&text) {
            Some((code, message)) if SERVER_CANNOT_SERVE_NOW.contains(&code) => {
                PortError::Unreachable(format!("{code} {message}"))
            }
            Some((code, message)) => PortError::Server(format!("{code} {message}")),
            None if is_connection_failure(&text) => PortError::Unreachable(text),
            None => PortError::Server(text),
        },
    }
}

/// Error codes by which Redis says it cannot serve now, though it may soon: loading its
/// data, blocked by a long script, a replica cut from its primary or read-only after a
/// failover, a cluster resharding or down, out of memory; and refused credentials, a
/// deployment mistake like a wrong address. All are outages to the caller (503, retry
/// later), like PostgreSQL's SQLSTATE class 08 below, not bugs of ours (500).
const SERVER_CANNOT_SERVE_NOW: [&str; 9] = [
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "READONLY",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "OOM",
    "NOAUTH",
    "WRONGPASS",
];

/// Redis's own error code and message of a server error reply, from the text the host
/// hands over; `None` if the text is not a server error reply (a connection failure).
///
/// The host (Spin 4.x, redis-rs 0.32) renders an error code its client knows by the
/// client's name for it, and any other code as itself (`tests/tests/spin_host.rs` reads
/// both off the real host):
/// - `An error was signalled by the server - NoScriptError: No matching script. Please
///   use EVAL.` for `NOSCRIPT …` (likewise `ResponseError` for `ERR`, `BusyLoadingError`
///   for `LOADING`, `MasterDown`, `ReadOnly`, `TryAgain`, `ClusterDown`, …);
/// - `WRONGTYPE: Operation against a key holding the wrong kind of value` for a code the
///   client does not know (`WRONGTYPE`, `BUSY`, `OOM`, `NOAUTH`, …).
///
/// Older hosts and the protocol itself say `NOSCRIPT No matching script…`; that form is
/// read too. The port hands every server error on in that protocol form, code first. A
/// text in neither rendering, or one that reports a failed connection, is `None`.
fn server_error(text: &str) -> Option<(&str, &str)> {
    const SIGNALLED: &str = "An error was signalled by the server - ";
    if let Some(rest) = text.strip_prefix(SIGNALLED) {
        let (kind, message) = rest.split_once(": ").unwrap_or((rest, ""));
        let code = match kind {
            "ResponseError" => "ERR",
            "ExecAbortError" => "EXECABORT",
            "BusyLoadingError" => "LOADING",
            "NoScriptError" => "NOSCRIPT",
            "Moved" => "MOVED",
            "Ask" => "ASK",
            "TryAgain" => "TRYAGAIN",
            "ClusterDown" => "CLUSTERDOWN",
            "CrossSlot" => "CROSSSLOT",
            "MasterDown" => "MASTERDOWN",
            "ReadOnly" => "READONLY",
            "NotBusy" => "NOTBUSY",
            "NoSub" => "NOSUB",
            // A kind this table does not know yet: the rendering still says it is a
            // server error, so keep the client's name as the code.
            other => other,
        };
        return Some((code, message));
    }
    let code_then = |separator: &str| {
        let (code, message) = text.split_once(separator)?;
        let is_code = code.len() >= 3 && code.bytes().all(|b| b.is_ascii_uppercase());
        is_code.then_some((code, message))
    };
    // `CODE: message` is the host's own form; a connection failure never takes it, while
    // its text may begin with a capitalised word (`TLS error - IoError: …`).
    if let Some(parsed) = code_then(": ") {
        return Some(parsed);
    }
    if is_connection_failure(text) {
        return None;
    }
    code_then(" ")
}

/// Whether an error text that is not a server error reply reports a failed or broken
/// connection. Spin's host turns every failure of its Redis client into `other(text)`;
/// the text is all there is, and reading it is the only way to answer 503 (retry later)
/// for an outage instead of 500 (our bug).
fn is_connection_failure(text: &str) -> bool {
    const PHRASES: [&str; 10] = [
        "connect",
        "tls",
        "timed out",
        "timeout",
        "broken pipe",
        "reset by peer",
        "os error",
        "failed to lookup address",
        "unexpected end of file",
        "driver unexpectedly terminated",
    ];
    let text = text.to_ascii_lowercase();
    PHRASES.iter().any(|phrase| text.contains(phrase))
}

/// The [`Sql`] port over Spin's outbound PostgreSQL (`spin:postgres/postgres@4.0.0`).
///
/// Guarantees: the connection is taken from the host's pool on the first statement and
/// reused for the rest of the request. Parameters and columns cross as [`SqlValue`]s; a
/// column of a type the port does not carry is a [`PortError::Server`] naming the type,
/// never a silent conversion. A connection that cannot be had or breaks is
/// [`PortError::Unreachable`] (→ 503); a statement PostgreSQL rejects is
/// [`PortError::Server`] with PostgreSQL's own text.
pub struct SpinPg {
    address: String,
    connection: OnceCell<pg4::Connection>,
    deadline: Deadline,
}

impl SpinPg {
    /// An adapter for the PostgreSQL at `address`; nothing is opened until the first
    /// statement. Every statement (with the connection it takes) runs under `deadline`.
    pub fn new(address: &str, deadline: Deadline) -> Self {
        Self {
            address: address.to_owned(),
            connection: OnceCell::new(),
            deadline,
        }
    }

    fn connection(&self) -> Result<&pg4::Connection, PortError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection);
        }
        let opened = pg4::Connection::open(&self.address).map_err(|e| match pg_error(e) {
            PortError::Server(message) => PortError::Unreachable(message),
            unreachable => unreachable,
        })?;
        Ok(self.connection.get_or_init(|| opened))
    }

    fn run_query(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<SqlRow>, PortError> {
        let params = parameters(params);
        let row_set = self.connection()?.query(statement, &params).map_err(pg_error)?;
        row_set
            .rows
            .into_iter()
            .map(|row| row.into_iter().map(column).collect())
            .collect()
    }

    fn run_execute(&self, statement: &str, params: &[SqlValue]) -> Result<u64, PortError> {
        let params = parameters(params);
        self.connection()?.execute(statement, &params).map_err(pg_error)
    }
}

impl Sql for SpinPg {
    // Like Redis, the host call blocks until PostgreSQL answers, once polled.
    async fn query(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<SqlRow>, PortError> {
        self.deadline.call(|| self.run_query(statement, params))
    }

    async fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<u64, PortError> {
        self.deadline.call(|| self.run_execute(statement, params))
    }
}

fn parameters(params: &[SqlValue]) -> Vec<ParameterValue> {
    params
        .iter()
        .map(|param| match param {
            SqlValue::Null => ParameterValue::DbNull,
            SqlValue::Bool(b) => ParameterValue::Boolean(*b),
            SqlValue::Int(n) => ParameterValue::Int64(*n),
            SqlValue::Text(s) => ParameterValue::Str(s.clone()),
            SqlValue::TextArray(items) => ParameterValue::ArrayStr(items.iter().cloned().map(Some).collect()),
        })
        .collect()
}

fn column(value: DbValue) -> Result<SqlValue, PortError> {
    Ok(match value {
        DbValue::DbNull => SqlValue::Null,
        DbValue::Boolean(b) => SqlValue::Bool(b),
        DbValue::Int16(n) => SqlValue::Int(n.into()),
        DbValue::Int32(n) => SqlValue::Int(n.into()),
        DbValue::Int64(n) => SqlValue::Int(n),
        DbValue::Str(s) => SqlValue::Text(s),
        other => {
            return Err(PortError::Server(format!(
                "unsupported column type {}: the schema uses bigint, text and boolean only",
                db_type_name(&other)
            )));
        }
    })
}

/// The PostgreSQL-ish name of a column value's type, for error messages.
fn db_type_name(value: &DbValue) -> &'static str {
    match value {
        DbValue::Boolean(_) => "boolean",
        DbValue::Int8(_) => "\"char\"",
        DbValue::Int16(_) => "smallint",
        DbValue::Int32(_) => "integer",
        DbValue::Int64(_) => "bigint",
        DbValue::Floating32(_) => "real",
        DbValue::Floating64(_) => "double precision",
        DbValue::Str(_) => "text",
        DbValue::Binary(_) => "bytea",
        DbValue::Date(_) => "date",
        DbValue::Time(_) => "time",
        DbValue::Datetime(_) => "timestamp",
        DbValue::Timestamp(_) => "timestamp (epoch)",
        DbValue::Uuid(_) => "uuid",
        DbValue::Jsonb(_) => "jsonb",
        DbValue::Decimal(_) => "numeric",
        DbValue::RangeInt32(_) => "int4range",
        DbValue::RangeInt64(_) => "int8range",
        DbValue::RangeDecimal(_) => "numrange",
        DbValue::ArrayInt32(_) => "integer[]",
        DbValue::ArrayInt64(_) => "bigint[]",
        DbValue::ArrayDecimal(_) => "numeric[]",
        DbValue::ArrayStr(_) => "text[]",
        DbValue::Interval(_) => "interval",
        DbValue::DbNull => "null",
        DbValue::Unsupported(_) => "unknown to the Spin host",
    }
}

/// Maps an outbound PostgreSQL error to the port's error.
///
/// `connection-failed` covers a refused connection, a full host pool and an address
/// missing from `allowed_outbound_hosts`. A pooled connection that breaks mid-statement
/// comes back as `query-failed` with the client's text, and PostgreSQL itself reports
/// "cannot serve now" with SQLSTATE class 08 (connection), 57P01–57P03 (shutting down,
/// starting up) or 53300 (too many connections): all of these are outages, not bugs.
///
/// The host may append a backtrace of its own to a text (when it runs with
/// `RUST_BACKTRACE` set); it is cut off, because it says nothing about our request and
/// would end up in a client's error body.
fn pg_error(error: pg4::PgError) -> PortError {
    match without_backtrace(error) {
        pg4::PgError::ConnectionFailed(text) => PortError::Unreachable(text),
        pg4::PgError::QueryFailed(QueryError::DbError(db)) => {
            let message = match db.detail {
                Some(detail) => format!("{} ({detail}; SQLSTATE {})", db.message, db.code),
                None => format!("{} (SQLSTATE {})", db.message, db.code),
            };
            let outage = db.code.starts_with("08")
                || matches!(db.code.as_str(), "57P01" | "57P02" | "57P03" | "53300");
            if outage {
                PortError::Unreachable(message)
            } else {
                PortError::Server(message)
            }
        }
        pg4::PgError::QueryFailed(QueryError::Text(text)) if is_pg_connection_failure(&text) => {
            PortError::Unreachable(text)
        }
        pg4::PgError::QueryFailed(QueryError::Text(text))
        | pg4::PgError::BadParameter(text)
        | pg4::PgError::ValueConversionFailed(text)
        | pg4::PgError::Other(text) => PortError::Server(text),
    }
}

/// The error with any `Stack backtrace:` section of its text removed.
fn without_backtrace(error: pg4::PgError) -> pg4::PgError {
    let cut = |mut text: String| {
        if let Some(at) = text.find("\n\nStack backtrace:") {
            text.truncate(at);
        }
        text
    };
    match error {
        pg4::PgError::ConnectionFailed(text) => pg4::PgError::ConnectionFailed(cut(text)),
        pg4::PgError::QueryFailed(QueryError::Text(text)) => {
            pg4::PgError::QueryFailed(QueryError::Text(cut(text)))
        }
        pg4::PgError::BadParameter(text) => pg4::PgError::BadParameter(cut(text)),
        pg4::PgError::ValueConversionFailed(text) => pg4::PgError::ValueConversionFailed(cut(text)),
        pg4::PgError::Other(text) => pg4::PgError::Other(cut(text)),
        db @ pg4::PgError::QueryFailed(QueryError::DbError(_)) => db,
    }
}

/// Whether a client-side PostgreSQL error text (the host formats tokio-postgres errors
/// with `{:?}`, e.g. `Error { kind: Closed, cause: None }`) reports a lost connection.
fn is_pg_connection_failure(text: &str) -> bool {
    text.contains("kind: Closed") || text.contains("kind: Io") || is_connection_failure(text)
}

/// The [`Config`] port over Spin variables (`fermyon:spin/variables@2.0.0`).
///
/// Guarantees: a variable the component does not define reads as unset, so the
/// setting's default applies. Any other failure (the variables provider, e.g. Vault, is
/// down) also reads as unset but is remembered, and [`SpinConfig::take_failure`] reports it
/// so that a default is never used in place of a value that exists but could not be read.
#[derive(Default)]
pub struct SpinConfig {
    failure: RefCell<Option<Error>>,
}

impl SpinConfig {
    /// A reader of this component's Spin variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the first failure to read a variable, other than the variable being
    /// undefined: a provider failure is a 503, anything else (a name Spin refuses) a 500.
    pub fn take_failure(&self) -> Option<Error> {
        self.failure.borrow_mut().take()
    }
}

impl Config for SpinConfig {
    fn get(&self, name: &str) -> Option<String> {
        let failure = match variables::get(name) {
            Ok(value) => return Some(value),
            Err(variables::Error::Undefined(_)) => return None,
            Err(variables::Error::Provider(message)) => Error::Unavailable {
                dependency: "variables",
                message: format!("reading variable {name:?}: {message}"),
            },
            Err(variables::Error::InvalidName(message) | variables::Error::Other(message)) => {
                Error::Internal(format!("reading variable {name:?}: {message}"))
            }
        };
        self.failure.borrow_mut().get_or_insert(failure);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server error replies as the real Spin host in `../shared/tools/` (Spin 4.1.0-pre0,
    /// redis-rs 0.32) hands them to a component, read off it by `tests/tests/spin_host.rs`
    /// (a fake Redis answering each code), with the code the port passes on.
    const HOST_RENDERINGS: [(&str, &str); 11] = [
        (
            "An error was signalled by the server - NoScriptError: No matching script. Please use EVAL.",
            "NOSCRIPT",
        ),
        (
            "An error was signalled by the server - ResponseError: Error running script (call to f_abc): @user_script:1: boom",
            "ERR",
        ),
        (
            "An error was signalled by the server - BusyLoadingError: Redis is loading the dataset in memory",
            "LOADING",
        ),
        (
            "An error was signalled by the server - MasterDown: Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "MASTERDOWN",
        ),
        (
            "An error was signalled by the server - ReadOnly: You can't write against a read only replica.",
            "READONLY",
        ),
        (
            "An error was signalled by the server - TryAgain: Multiple keys request during rehashing of slot",
            "TRYAGAIN",
        ),
        (
            "An error was signalled by the server - ClusterDown: The cluster is down",
            "CLUSTERDOWN",
        ),
        (
            "BUSY: Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSCRIPT.",
            "BUSY",
        ),
        (
            "WRONGTYPE: Operation against a key holding the wrong kind of value",
            "WRONGTYPE",
        ),
        ("OOM: command not allowed when used memory > 'maxmemory'.", "OOM"),
        ("NOAUTH: Authentication required.", "NOAUTH"),
    ];

    #[test]
    fn the_host_renderings_are_read_back_to_redis_codes() {
        for (text, code) in HOST_RENDERINGS {
            assert_eq!(server_error(text).map(|(code, _)| code), Some(code), "{text}");
        }
        assert_eq!(
            server_error("NOSCRIPT No matching script. Please use EVAL."),
            Some(("NOSCRIPT", "No matching script. Please use EVAL."))
        );
    }

    #[test]
    fn a_missing_script_reaches_the_script_runner_as_noscript() {
        let error = redis_error(redis::Error::Other(HOST_RENDERINGS[0].0.into()));
        let PortError::Server(text) = error else {
            panic!("a missing script is a server error, not an outage");
        };
        assert_eq!(text, "NOSCRIPT No matching script. Please use EVAL.");
        assert!(crate::script::is_missing_script(&text));
    }

    #[test]
    fn a_busy_script_is_an_outage_and_not_a_missing_script() {
        let error = redis_error(redis::Error::Other(HOST_RENDERINGS[7].0.into()));
        assert!(matches!(&error, PortError::Unreachable(text) if text.starts_with("BUSY ")));
    }

    #[test]
    fn connection_failures_are_told_apart_from_server_errors() {
        for text in [
            "Connection refused (os error 111)",
            "failed to lookup address information: Name or service not known",
            "Multiplexed connection driver unexpectedly terminated- IoError",
            "broken pipe",
            "Connection reset by peer (os error 104)",
            "connection timed out",
            "TLS error - IoError: invalid peer certificate",
        ] {
            assert_eq!(server_error(text), None, "{text}");
            assert!(matches!(
                redis_error(redis::Error::Other(text.into())),
                PortError::Unreachable(_)
            ));
        }
    }

    #[test]
    fn server_errors_that_are_ours_stay_server_errors() {
        for (text, code) in HOST_RENDERINGS {
            let error = redis_error(redis::Error::Other(text.into()));
            match code {
                "NOSCRIPT" | "ERR" | "WRONGTYPE" => {
                    assert!(
                        matches!(&error, PortError::Server(t) if t.starts_with(code)),
                        "{text}"
                    )
                }
                _ => assert!(
                    matches!(&error, PortError::Unreachable(t) if t.starts_with(code)),
                    "{text}"
                ),
            }
        }
    }

    #[test]
    fn redis_outages_are_unreachable() {
        for error in [
            redis::Error::InvalidAddress,
            redis::Error::TooManyConnections,
            redis::Error::Other("Connection refused (os error 111)".into()),
        ] {
            assert!(matches!(redis_error(error), PortError::Unreachable(_)));
        }
    }

    #[test]
    fn postgres_outages_are_unreachable_and_rejections_are_server_errors() {
        let db_error = |code: &str| {
            pg4::PgError::QueryFailed(QueryError::DbError(pg4::DbError {
                as_text: format!("db error: {code}"),
                severity: "ERROR".into(),
                code: code.into(),
                message: "something".into(),
                detail: None,
                extras: Vec::new(),
            }))
        };
        for error in [
            pg4::PgError::ConnectionFailed("pool timed out".into()),
            pg4::PgError::QueryFailed(QueryError::Text("Error { kind: Closed, cause: None }".into())),
            db_error("57P01"),
            db_error("08006"),
            db_error("53300"),
        ] {
            assert!(matches!(pg_error(error), PortError::Unreachable(_)));
        }
        for error in [
            db_error("23505"),
            db_error("42P01"),
            pg4::PgError::BadParameter("bad".into()),
        ] {
            assert!(matches!(pg_error(error), PortError::Server(_)));
        }
    }

    #[test]
    fn the_hosts_backtrace_stays_out_of_a_refused_connection() {
        // What the real host answered for a PostgreSQL that refuses connections, when run
        // with RUST_BACKTRACE=1 (shortened: 45 more frames).
        let text = "Error occurred while creating a new object: error connecting to server\n\nCaused by:\n    0: error connecting to server\n    1: Connection refused (os error 111)\n\nStack backtrace:\n   0: <unknown>\n  46: start_thread\n             at ./nptl/pthread_create.c:442:8";
        let PortError::Unreachable(message) = pg_error(pg4::PgError::ConnectionFailed(text.into())) else {
            panic!("a refused connection is an outage");
        };
        assert!(
            message.ends_with("Connection refused (os error 111)"),
            "{message}"
        );
    }

    #[test]
    fn only_the_schema_types_cross_the_port() {
        assert_eq!(column(DbValue::Int32(7)).unwrap(), SqlValue::Int(7));
        assert_eq!(column(DbValue::Int16(-2)).unwrap(), SqlValue::Int(-2));
        assert_eq!(column(DbValue::DbNull).unwrap(), SqlValue::Null);
        let refused = column(DbValue::Floating64(1.5)).unwrap_err();
        assert!(matches!(refused, PortError::Server(text) if text.contains("double precision")));
    }

    #[test]
    fn text_arrays_bind_as_arrays_of_non_null_strings() {
        let bound = parameters(&[SqlValue::TextArray(vec!["a".into(), "b".into()])]);
        assert!(matches!(
            bound.as_slice(),
            [ParameterValue::ArrayStr(items)] if items == &[Some("a".to_owned()), Some("b".to_owned())]
        ));
    }
}
