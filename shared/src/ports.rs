//! The ports through which the stores reach the outside.
//!
//! Each port has two adapters: the Spin host interfaces inside a component
//! (`commerce-spin`, `spin-adapter/`) and redis-rs / tokio-postgres in `commerce-native`. The shapes follow what the
//! Spin host can carry (DESIGN §2): Redis replies arrive flattened, so the stores only
//! ever decode flat, fixed-position arrays, and one decoder serves both adapters.

use std::future::Future;

use crate::error::{Dependency, PortError};

/// An argument of a Redis command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisArg {
    /// An integer, sent as its decimal text.
    Int(i64),
    /// A string or key.
    Bytes(Vec<u8>),
}

impl From<&str> for RedisArg {
    fn from(s: &str) -> Self {
        RedisArg::Bytes(s.as_bytes().to_vec())
    }
}

impl From<&String> for RedisArg {
    fn from(s: &String) -> Self {
        RedisArg::Bytes(s.as_bytes().to_vec())
    }
}

impl From<String> for RedisArg {
    fn from(s: String) -> Self {
        RedisArg::Bytes(s.into_bytes())
    }
}

impl From<i64> for RedisArg {
    fn from(n: i64) -> Self {
        RedisArg::Int(n)
    }
}

/// One element of a flattened Redis reply, as Spin's host delivers it: nested arrays are
/// flattened depth-first, so a Lua `{{a,1},{b,2}}` arrives as `a,1,b,2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisReply {
    /// A nil bulk string (or Lua `false`).
    Nil,
    /// A status reply such as `OK`.
    Status(String),
    /// An integer reply.
    Int(i64),
    /// A bulk string.
    Bytes(Vec<u8>),
}

impl RedisReply {
    /// The reply as an integer, accepting integer replies and decimal bulk strings.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            RedisReply::Int(n) => Some(*n),
            RedisReply::Bytes(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            RedisReply::Status(s) => s.parse().ok(),
            RedisReply::Nil => None,
        }
    }

    /// The reply as text (status or UTF-8 bulk string).
    pub fn as_text(&self) -> Option<&str> {
        match self {
            RedisReply::Status(s) => Some(s),
            RedisReply::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}

/// Error codes by which Redis says it cannot serve now, though it may soon: loading its
/// data, blocked by a long script, a replica cut from its primary or read-only after a
/// failover, a cluster resharding or down, out of memory; and refused credentials, a
/// deployment mistake like a wrong address. Every [`Redis`] adapter answers them as
/// [`Unreachable`](crate::error::Failure::Unreachable) (503, retry later), like a lost connection, not as a bug of
/// ours (500).
pub const CANNOT_SERVE_NOW: [&str; 9] = [
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

/// Whether a Redis error reply (its code and message) means the server cannot serve this
/// client now: one of [`CANNOT_SERVE_NOW`], or a refusal before the client authenticated,
/// which Redis words as `ERR Protocol error: unauthenticated multibulk length` (or `bulk
/// length`) instead of `NOAUTH` for a command of more than ten arguments.
pub fn cannot_serve_now(code: &str, message: &str) -> bool {
    CANNOT_SERVE_NOW.contains(&code)
        || (code == "ERR" && message.starts_with("Protocol error: unauthenticated"))
}

/// Runs Redis commands. Every call is one round trip; compound operations are scripts.
///
/// What every adapter guarantees, stated here once for both (the Spin host's behaviour
/// sets the bar, DESIGN §2; `spin-adapter/src/redis.rs` and `native/src/redis_port.rs`
/// say only how they keep it):
/// - **flattened replies**: a reply arrives flattened depth-first as [`RedisReply`]
///   documents, whatever the client library would nest, so one decoder serves both;
/// - **errors as text**: a server error reply is [`Server`](crate::error::Failure::Server) whose text starts
///   with Redis's own error code (`ERR …`, `WRONGTYPE …`), whatever the client's
///   rendering of it;
/// - **NOSCRIPT**: `EVALSHA` of a script the server does not know is such a `Server`
///   error, `NOSCRIPT No matching script…` (or, from a Spin host that renders it so,
///   `An error was signalled by the server - NoScriptError: …`), which
///   [`crate::script::is_missing_script`] reads before [`crate::script::Script::run`]
///   sends the script with `EVAL`;
/// - **outages**: Redis unreachable, a broken connection, a call past its timeout, or a
///   server that cannot serve now ([`cannot_serve_now`]) is [`Unreachable`](crate::error::Failure::Unreachable)
///   (503), never a `Server` error (500);
/// - the call happens when the returned future is polled, not when it is made.
pub trait Redis {
    /// Runs one command and returns its reply flattened.
    fn execute(
        &self,
        command: &str,
        args: Vec<RedisArg>,
    ) -> impl Future<Output = Result<Vec<RedisReply>, PortError>>;

    /// Whether this is a Redis Cluster, where one script may only touch keys of one hash
    /// slot: the stores then take a batch of variants one call per variant (README,
    /// "Scaling out"). A standalone server (and the Spin host, which reaches no other)
    /// runs a batch as one script.
    fn is_cluster(&self) -> bool {
        false
    }

    /// Waits `ms` milliseconds before the request goes on, holding up no other request:
    /// natively a timer of the server's runtime; on Spin, where each request has its
    /// instance to itself, the instance sleeps. For a request that must let another one
    /// finish first (a ruleset republish held under its lock), and asks Redis again after.
    fn pause(&self, ms: u64) -> impl Future<Output = ()>;

    /// Sends one command whose answer nobody waits for: the clean-up of a call that timed
    /// out, which should reach Redis after that call whenever Redis comes back. The native
    /// adapter sends it from a task of its own over the same connection (one connection
    /// runs its commands in the order they were sent); an adapter whose work cannot outlive
    /// the request (Spin) sends nothing.
    fn send_detached(&self, command: &str, args: Vec<RedisArg>) {
        let _ = (command, args);
    }

    /// Waits until `replicas` replicas have every write made so far to the node(s) serving
    /// `keys`, or `timeout_ms` passed (Redis `WAIT`), and returns how many did (the fewest
    /// over the nodes). On one server that is one `WAIT` on the connection that wrote; a
    /// cluster adapter sends it to the master of each key's slot.
    fn wait_replicas(
        &self,
        keys: &[&str],
        replicas: i64,
        timeout_ms: i64,
    ) -> impl Future<Output = Result<i64, PortError>> {
        let _ = keys;
        async move {
            let reply = self
                .execute("WAIT", vec![RedisArg::Int(replicas), RedisArg::Int(timeout_ms)])
                .await?;
            reply
                .first()
                .and_then(RedisReply::as_int)
                .ok_or_else(|| PortError::server(Dependency::Redis, format!("WAIT answered {reply:?}")))
        }
    }
}

/// A value bound to, or read from, a SQL statement. The schema uses only these types
/// (`bigint`, `text`, `boolean`); timestamps cross the port as epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// `boolean`.
    Bool(bool),
    /// `bigint` (and `integer`, widened).
    Int(i64),
    /// `text`.
    Text(String),
    /// `text[]`, for `= ANY($1)` over a batch.
    TextArray(Vec<String>),
}

impl SqlValue {
    /// The value as an integer, if it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            SqlValue::Int(n) => Some(*n),
            _ => None,
        }
    }

    /// The value as a boolean, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            SqlValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The value as text, if it is text.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            SqlValue::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// One result row, columns in the order of the SELECT list.
pub type SqlRow = Vec<SqlValue>;

/// Runs parameterized SQL. Statements are written once in `commerce-core` and run by both
/// adapters; each is a single statement (CTEs for multi-row changes), because the Spin
/// host recycles pooled connections without ROLLBACK.
pub trait Sql {
    /// Runs a statement that returns rows.
    fn query(
        &self,
        statement: &str,
        params: &[SqlValue],
    ) -> impl Future<Output = Result<Vec<SqlRow>, PortError>>;

    /// Runs a statement and returns the number of rows it changed.
    fn execute(&self, statement: &str, params: &[SqlValue]) -> impl Future<Output = Result<u64, PortError>>;
}

/// Reads configuration: Spin variables in a component, `COMMERCE_*` environment variables
/// (or CLI flags) natively. Names are the Spin variable names of DESIGN §6.
pub trait Config {
    /// The value of a setting, if set.
    fn get(&self, name: &str) -> Option<String>;
}

/// An outbound HTTP request (to the payment gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRequest {
    /// Upper-case method.
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Headers to send.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// The answer to an [`OutboundRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Sends HTTP requests to outside parties (the payment gateway). A connection failure or
/// timeout is [`Unreachable`](crate::error::Failure::Unreachable); any HTTP answer, whatever its status, is `Ok`.
pub trait Http {
    /// Sends one request and reads the whole answer.
    fn send(&self, request: OutboundRequest) -> impl Future<Output = Result<OutboundResponse, PortError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_refusing_the_client_cannot_serve_now() {
        for (code, message) in [
            ("NOAUTH", "Authentication required."),
            ("LOADING", "Redis is loading the dataset in memory"),
            ("ERR", "Protocol error: unauthenticated multibulk length"),
            ("ERR", "Protocol error: unauthenticated bulk length"),
        ] {
            assert!(cannot_serve_now(code, message), "{code} {message}");
        }
        for (code, message) in [
            ("ERR", "Error running script (call to f_1): boom"),
            (
                "WRONGTYPE",
                "Operation against a key holding the wrong kind of value",
            ),
            ("ERR", "unknown command"),
        ] {
            assert!(!cannot_serve_now(code, message), "{code} {message}");
        }
    }
}
