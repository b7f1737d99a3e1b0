//! The Spin adapters of the ports, and [`serve`], the one entry point of every component.
//!
//! A component's `lib.rs` only calls [`serve`] with its [`Scope`]; everything else happens
//! here or in the shared handlers. One set of adapters is built per request: Spin gives a
//! component no state between requests, so the Redis and PostgreSQL connections are opened
//! lazily, on first use, and live as long as the request.
//!
//! Spin has no per-call timeout on outbound Redis or PostgreSQL: the host's own limits
//! apply (DESIGN §2). `redis_timeout_ms` and `database_timeout_ms` are therefore not read
//! here; the stores keep each script's work bounded instead.

use std::cell::{OnceCell, RefCell};
use std::future::Future;

use spin_sdk::http::{Method, Request as SpinRequest, Response as SpinResponse};
use spin_sdk::pg4::{self, DbValue, ParameterValue, QueryError};
use spin_sdk::redis::{self, RedisParameter, RedisResult};
use spin_sdk::variables;

use crate::app::App;
use crate::error::{Error, PortError};
use crate::http::{Request, Response};
use crate::ports::{
    Config, Http, OutboundRequest, OutboundResponse, Redis, RedisArg, RedisReply, Sql, SqlRow, SqlValue,
};
use crate::router::{self, Scope};
use crate::settings::Settings;

/// Answers one Spin HTTP request with the routes of `scope`.
///
/// Guarantees: never panics on input; a configuration error is a 500 (bad settings) or a
/// 503 (the variables provider failed) with the DESIGN §5 error body; otherwise the
/// response is exactly what [`router::handle`] answers. The path handed to the router
/// carries no query string (that is in `query`), header names are lower case, the method
/// is upper case.
pub async fn serve(req: SpinRequest, scope: Scope) -> SpinResponse {
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
    let app = App::new(
        SpinRedis::new(&settings.redis_url),
        SpinPg::new(&settings.database_url),
        SpinHttp,
        settings,
    );
    into_spin(router::handle(&app, from_spin(req), scope).await)
}

/// Converts Spin's request into the router's.
///
/// The SDK keeps headers in a map, so a repeated header arrives once; a header value that
/// is not UTF-8 is dropped (no route reads one, and a mangled `Authorization` must fail,
/// not match).
fn from_spin(req: SpinRequest) -> Request {
    let method = req.method().to_string().to_ascii_uppercase();
    let path = req.path().to_owned();
    let query = req.query().to_owned();
    let headers = req
        .headers()
        .filter_map(|(name, value)| Some((name.to_ascii_lowercase(), value.as_str()?.to_owned())))
        .collect();
    Request {
        method,
        path,
        query,
        headers,
        body: req.into_body(),
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
/// or cannot deliver is [`PortError::Unreachable`] (→ 503).
pub struct SpinHttp;

impl Http for SpinHttp {
    async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, PortError> {
        let method = match request.method.as_str() {
            "GET" => Method::Get,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            other => Method::Other(other.to_owned()),
        };
        let mut builder = SpinRequest::builder();
        builder.method(method).uri(request.url);
        for (name, value) in request.headers {
            builder.header(name, value);
        }
        let outgoing = builder.body(request.body).build();
        let response: SpinResponse = spin_sdk::http::send(outgoing)
            .await
            .map_err(|e| PortError::Unreachable(e.to_string()))?;
        Ok(OutboundResponse {
            status: *response.status(),
            body: response.into_body(),
        })
    }
}

/// The [`Redis`] port over Spin's outbound Redis (`fermyon:spin/redis@2.0.0`).
///
/// Guarantees: the connection is opened on the first command and reused for the rest of
/// the request; a failed open is retried by the next command. Replies arrive flattened by
/// the host, exactly as [`RedisReply`] documents. A server error reply is
/// [`PortError::Server`] with the server's text, so `NOSCRIPT` stays recognisable; anything
/// that means Redis could not be reached is [`PortError::Unreachable`] (→ 503).
pub struct SpinRedis {
    address: String,
    connection: OnceCell<redis::Connection>,
}

impl SpinRedis {
    /// An adapter for the Redis at `address` (`redis://` or `rediss://`); nothing is opened
    /// until the first command.
    pub fn new(address: &str) -> Self {
        Self {
            address: address.to_owned(),
            connection: OnceCell::new(),
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
    fn execute(
        &self,
        command: &str,
        args: Vec<RedisArg>,
    ) -> impl Future<Output = Result<Vec<RedisReply>, PortError>> {
        // The host call blocks the component until Redis answers; there is nothing to
        // interleave, so the future is ready when it is first polled.
        std::future::ready(self.run(command, args))
    }
}

/// Maps an outbound Redis error to the port's error.
///
/// `invalid-address` is what the host answers both for a malformed URL and for an address
/// missing from `allowed_outbound_hosts`; both are deployment mistakes the request cannot
/// fix, and a 503 naming Redis points at them without exposing a 500.
fn redis_error(error: redis::Error) -> PortError {
    match error {
        redis::Error::InvalidAddress => {
            PortError::Unreachable("invalid Redis address, or not listed in allowed_outbound_hosts".into())
        }
        redis::Error::TooManyConnections => {
            PortError::Unreachable("too many outbound Redis connections".into())
        }
        redis::Error::TypeError => PortError::Server("Redis reply of an unexpected type".into()),
        redis::Error::Other(text) if is_connection_failure(&text) => PortError::Unreachable(text),
        redis::Error::Other(text) => PortError::Server(text),
    }
}

/// Whether an error text reports a failed or broken connection rather than an answer.
///
/// Spin's host turns every failure of its Redis client into `other(text)`, connection
/// refused and server error replies alike; the text is all there is. Reading it is the
/// only way to answer 503 (retry later) for an outage instead of 500 (our bug). Server
/// error replies start with an upper-case code (`NOSCRIPT …`, `ERR …`, `WRONGTYPE …`) and
/// none of ours mentions connections, so the phrases below cannot capture them.
fn is_connection_failure(text: &str) -> bool {
    const PHRASES: [&str; 9] = [
        "connect",
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
    !text.contains("noscript") && PHRASES.iter().any(|phrase| text.contains(phrase))
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
}

impl SpinPg {
    /// An adapter for the PostgreSQL at `address`; nothing is opened until the first
    /// statement.
    pub fn new(address: &str) -> Self {
        Self {
            address: address.to_owned(),
            connection: OnceCell::new(),
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
    fn query(
        &self,
        statement: &str,
        params: &[SqlValue],
    ) -> impl Future<Output = Result<Vec<SqlRow>, PortError>> {
        // Like Redis, the host call blocks until PostgreSQL answers.
        std::future::ready(self.run_query(statement, params))
    }

    fn execute(&self, statement: &str, params: &[SqlValue]) -> impl Future<Output = Result<u64, PortError>> {
        std::future::ready(self.run_execute(statement, params))
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
fn pg_error(error: pg4::PgError) -> PortError {
    match error {
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

    #[test]
    fn connection_failures_are_told_apart_from_server_errors() {
        for text in [
            "Connection refused (os error 111)",
            "failed to lookup address information: Name or service not known",
            "Multiplexed connection driver unexpectedly terminated- IoError",
            "broken pipe",
            "Connection reset by peer (os error 104)",
            "connection timed out",
        ] {
            assert!(is_connection_failure(text), "{text}");
        }
        for text in [
            "NOSCRIPT: No matching script. Please use EVAL.",
            "NOSCRIPT No matching script (connection)",
            "ERR Error running script (call to f_1234): @user_script:3: bad argument",
            "WRONGTYPE: Operation against a key holding the wrong kind of value",
        ] {
            assert!(!is_connection_failure(text), "{text}");
        }
    }

    #[test]
    fn noscript_stays_a_server_error_so_the_caller_falls_back_to_eval() {
        let error = redis_error(redis::Error::Other(
            "NOSCRIPT: No matching script. Please use EVAL.".into(),
        ));
        assert!(matches!(error, PortError::Server(text) if text.contains("NOSCRIPT")));
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
