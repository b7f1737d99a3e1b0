//! [`Measured`]: a port that times every call of the port it wraps and counts its failures
//! by kind, whatever the adapter underneath. Both runtimes build their [`crate::App`] over
//! measured ports, so the native and the Spin adapters report alike.

use std::ops::Deref;
use std::time::Instant;

use super::{Dependency, ErrorKind};
use crate::error::PortError;
use crate::ports::{
    Http, OutboundRequest, OutboundResponse, Redis, RedisArg, RedisReply, Sql, SqlRow, SqlValue,
};

/// A port whose calls are recorded in `commerce_redis_call_seconds`,
/// `commerce_postgres_call_seconds` or `commerce_gateway_call_seconds` (as the port it
/// implements), and failures in `commerce_dependency_errors_total`. Dereferences to the
/// wrapped adapter, for what only it offers (a pooled client for migrations).
#[derive(Debug, Clone)]
pub struct Measured<P>(pub P);

impl<P> Deref for Measured<P> {
    type Target = P;

    fn deref(&self) -> &P {
        &self.0
    }
}

async fn timed<T>(
    dependency: Dependency,
    call: impl Future<Output = Result<T, PortError>>,
) -> Result<T, PortError> {
    let mut pending = Pending {
        dependency,
        started: Instant::now(),
        done: false,
    };
    let result = call.await;
    pending.done = true;
    super::call(
        dependency,
        pending.started.elapsed(),
        result.as_ref().err().map(ErrorKind::of),
    );
    result
}

/// A call under way. Dropped before it finished, it was cut off by the request's deadline
/// (the server stopped waiting for it): recorded then, as a timeout of its dependency, so a
/// 503 at the deadline still shows which dependency it waited on.
struct Pending {
    dependency: Dependency,
    started: Instant,
    done: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            super::call(self.dependency, self.started.elapsed(), Some(ErrorKind::Timeout));
        }
    }
}

impl<R: Redis> Redis for Measured<R> {
    async fn execute(&self, command: &str, args: Vec<RedisArg>) -> Result<Vec<RedisReply>, PortError> {
        timed(Dependency::Redis, self.0.execute(command, args)).await
    }

    fn is_cluster(&self) -> bool {
        self.0.is_cluster()
    }

    fn send_detached(&self, command: &str, args: Vec<RedisArg>) {
        self.0.send_detached(command, args);
    }

    async fn pause(&self, ms: u64) {
        self.0.pause(ms).await;
    }

    async fn wait_replicas(&self, keys: &[&str], replicas: i64, timeout_ms: i64) -> Result<i64, PortError> {
        timed(
            Dependency::Redis,
            self.0.wait_replicas(keys, replicas, timeout_ms),
        )
        .await
    }
}

impl<S: Sql> Sql for Measured<S> {
    async fn query(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<SqlRow>, PortError> {
        timed(Dependency::Postgres, self.0.query(statement, params)).await
    }

    async fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<u64, PortError> {
        timed(Dependency::Postgres, self.0.execute(statement, params)).await
    }
}

impl<H: Http> Http for Measured<H> {
    async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, PortError> {
        timed(Dependency::Gateway, self.0.send(request)).await
    }
}
