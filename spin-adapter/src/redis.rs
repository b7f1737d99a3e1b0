//! The `Redis` port over Spin's outbound Redis, and how the host's error texts are read.

use commerce_core::error::{Dependency, PortError};
use commerce_core::ports::{Redis, RedisArg, RedisReply, cannot_serve_now};
use spin_sdk::redis::{self, RedisParameter, RedisResult};

use crate::Deadline;
use crate::connection::OnFirstUse;

/// The [`Redis`] port over Spin's outbound Redis (`fermyon:spin/redis@2.0.0`), with the
/// guarantees the port states: the host flattens replies itself; its renderings of
/// server errors are read back to Redis's own form by [`server_error`]; an outage, or an
/// error that says the server [cannot serve now](cannot_serve_now), is
/// [`Failure::Unreachable`](commerce_core::error::Failure::Unreachable).
///
/// The connection is opened on the first command and reused for the rest of the request;
/// a failed open is retried by the next command.
pub struct SpinRedis {
    connection: OnFirstUse<redis::Connection>,
    deadline: Deadline,
}

impl SpinRedis {
    /// An adapter for the Redis at `address` (`redis://` or `rediss://`); nothing is opened
    /// until the first command. Every command (with the connection it opens) runs under
    /// `deadline`.
    pub fn new(address: &str, deadline: Deadline) -> Self {
        Self {
            connection: OnFirstUse::new(address),
            deadline,
        }
    }

    fn connection(&self) -> Result<&redis::Connection, PortError> {
        self.connection
            .get(|address| redis::Connection::open(address).map_err(redis_error))
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

    // The instance serves this request alone: sleeping it holds up nothing else.
    async fn pause(&self, ms: u64) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
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
        redis::Error::InvalidAddress => PortError::unreachable(
            Dependency::Redis,
            "invalid Redis address, or not listed in allowed_outbound_hosts",
        ),
        redis::Error::TooManyConnections => {
            PortError::unreachable(Dependency::Redis, "too many outbound Redis connections")
        }
        redis::Error::TypeError => PortError::server(Dependency::Redis, "Redis reply of an unexpected type"),
        redis::Error::Other(text) => match server_error(&text) {
            Some((code, message)) if cannot_serve_now(code, message) => {
                PortError::unreachable(Dependency::Redis, format!("{code} {message}"))
            }
            Some((code, message)) => PortError::server(Dependency::Redis, format!("{code} {message}")),
            None if is_connection_failure(&text) => PortError::unreachable(Dependency::Redis, text),
            None => PortError::server(Dependency::Redis, text),
        },
    }
}

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
pub(crate) fn is_connection_failure(text: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_core::error::Failure;

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
        let Some(text) = error.server_message() else {
            panic!("a missing script is a server error, not an outage");
        };
        assert_eq!(text, "NOSCRIPT No matching script. Please use EVAL.");
        assert!(commerce_core::script::is_missing_script(text));
    }

    #[test]
    fn a_busy_script_is_an_outage_and_not_a_missing_script() {
        let error = redis_error(redis::Error::Other(HOST_RENDERINGS[7].0.into()));
        assert!(matches!(&error.failure, Failure::Unreachable(text) if text.starts_with("BUSY ")));
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
                redis_error(redis::Error::Other(text.into())).failure,
                Failure::Unreachable(_)
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
                        matches!(&error.failure, Failure::Server(t) if t.starts_with(code)),
                        "{text}"
                    )
                }
                _ => assert!(
                    matches!(&error.failure, Failure::Unreachable(t) if t.starts_with(code)),
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
            assert!(matches!(redis_error(error).failure, Failure::Unreachable(_)));
        }
    }
}
