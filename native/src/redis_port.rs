//! The Redis port over redis-rs: one multiplexed, reconnecting connection per process
//! (`ConnectionManager`), so concurrent requests pipeline on it, with a connection and a
//! response timeout on every call. `rediss://` speaks TLS and verifies the server against
//! the CA of `redis_ca_file`, or the system's roots when that is empty.

use std::time::Duration;

use commerce_core::PortError;
use commerce_core::ports::{Redis, RedisArg, RedisReply};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The native Redis adapter.
#[derive(Clone)]
pub struct NativeRedis {
    connection: ConnectionManager,
    timeout: Duration,
}

impl NativeRedis {
    /// An adapter for `url` that connects on first use; an unreachable server makes each
    /// call fail within `timeout` rather than hang. The user and password come from the
    /// URL (`redis://user:password@host:port`); `ca_file` (PEM) is the CA a `rediss://`
    /// server must be signed by, empty for the system's roots (a `redis://` URL ignores it).
    pub fn new(url: &str, timeout: Duration, ca_file: &str) -> anyhow::Result<Self> {
        let client = if ca_file.is_empty() || !url.starts_with("rediss://") {
            redis::Client::open(url)?
        } else {
            let root_cert =
                std::fs::read(ca_file).map_err(|e| anyhow::anyhow!("redis_ca_file {ca_file}: {e}"))?;
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self { connection, timeout })
    }
}

impl Redis for NativeRedis {
    async fn execute(&self, command: &str, args: Vec<RedisArg>) -> Result<Vec<RedisReply>, PortError> {
        let mut cmd = redis::cmd(command);
        for arg in args {
            match arg {
                RedisArg::Int(n) => cmd.arg(n),
                RedisArg::Bytes(b) => cmd.arg(b),
            };
        }
        let mut connection = self.connection.clone();
        // The manager's own timeouts cover connect and response, one after the other; this
        // outer bound holds the whole call, reconnect back-off included, to the timeout.
        let reply = tokio::time::timeout(self.timeout, cmd.query_async::<redis::Value>(&mut connection))
            .await
            .map_err(|_| PortError::Unreachable(format!("redis did not answer within {:?}", self.timeout)))?
            .map_err(port_error)?;
        let mut flat = Vec::new();
        flatten(reply, &mut flat)?;
        Ok(flat)
    }
}

/// Flattens a reply depth-first, the way the Spin host delivers script replies, so that
/// the stores decode one shape in both runtimes.
fn flatten(value: redis::Value, out: &mut Vec<RedisReply>) -> Result<(), PortError> {
    use redis::Value as V;
    match value {
        V::Nil => out.push(RedisReply::Nil),
        V::Int(n) => out.push(RedisReply::Int(n)),
        V::BulkString(b) => out.push(RedisReply::Bytes(b)),
        V::SimpleString(s) => out.push(RedisReply::Status(s)),
        V::Okay => out.push(RedisReply::Status("OK".into())),
        V::Boolean(b) => out.push(RedisReply::Int(i64::from(b))),
        V::Array(items) | V::Set(items) => {
            for item in items {
                flatten(item, out)?;
            }
        }
        V::ServerError(e) => {
            return Err(PortError::Server(format!(
                "{} {}",
                e.code(),
                e.details().unwrap_or_default()
            )));
        }
        other => return Err(PortError::Server(format!("unsupported reply type: {other:?}"))),
    }
    Ok(())
}

/// Connection trouble is `Unreachable` (503); a server error keeps its code in the text
/// (e.g. `NOSCRIPT …`) because the stores recognise errors by text, as in Spin.
fn port_error(e: redis::RedisError) -> PortError {
    // Codes of a server that is there but cannot serve now (loading its data, busy in a
    // script, a replica cut off, out of memory, not authenticated): an outage, as the Spin
    // adapter reads them too, not a bug.
    let cannot_serve_now = matches!(
        e.code(),
        Some("LOADING" | "BUSY" | "MASTERDOWN" | "READONLY" | "TRYAGAIN" | "CLUSTERDOWN" | "OOM" | "NOAUTH")
    );
    if cannot_serve_now
        || e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
    {
        PortError::Unreachable(e.to_string())
    } else {
        PortError::Server(format!("{} {e}", e.code().unwrap_or_default()))
    }
}
