//! The PostgreSQL port over tokio-postgres with a deadpool connection pool. Every call is
//! bounded: waiting for a pooled connection, connecting, and the statement itself
//! (`statement_timeout` on every connection, plus an outer timeout). TLS as the URL's
//! `sslmode` asks (see [`crate::pg_tls`]).

use std::error::Error as _;
use std::str::FromStr;
use std::time::Duration;

use commerce_core::error::{Dependency, PortError};
use commerce_core::ports::{Sql, SqlRow, SqlValue};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::Row;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::pg_tls::split_sslmode;

/// The native PostgreSQL adapter.
#[derive(Clone)]
pub struct NativePg {
    pool: Pool,
    timeout: Duration,
}

impl NativePg {
    /// A pool of up to `max_connections` for `url`, connecting on demand; `ca_file` (PEM,
    /// empty: the system's roots) is what `sslmode=verify-ca|verify-full` checks against.
    pub fn new(url: &str, timeout: Duration, max_connections: usize, ca_file: &str) -> anyhow::Result<Self> {
        let (url, tls) = split_sslmode(url)?;
        let mut config = tokio_postgres::Config::from_str(&url)?;
        config.ssl_mode(tls.ssl_mode());
        config.connect_timeout(timeout);
        let options = format!(
            "{} -c statement_timeout={}",
            config.get_options().unwrap_or_default(),
            timeout.as_millis()
        );
        config.options(options.trim());
        let manager = Manager::from_config(
            config,
            tls.connector(ca_file)?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .timeouts(Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            })
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(Self { pool, timeout })
    }

    /// A pooled client, for admin jobs that need a transaction (migrations).
    pub async fn client(&self) -> Result<deadpool_postgres::Object, PortError> {
        self.pool
            .get()
            .await
            .map_err(|e| PortError::unreachable(Dependency::Postgres, e.to_string()))
    }

    /// Bounds a whole call (pool wait, connect, statement) by the configured timeout: the
    /// parts have their own, which could add up.
    async fn bounded<T>(&self, work: impl Future<Output = Result<T, PortError>>) -> Result<T, PortError> {
        tokio::time::timeout(self.timeout, work).await.map_err(|_| {
            PortError::unreachable(
                Dependency::Postgres,
                format!("postgres did not answer within {:?}", self.timeout),
            )
        })?
    }
}

impl Sql for NativePg {
    async fn query(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<SqlRow>, PortError> {
        self.bounded(async {
            let client = self.client().await?;
            let prepared = client.prepare_cached(statement).await.map_err(pg_error)?;
            let bound: Vec<Param> = params.iter().map(Param).collect();
            let rows = client.query(&prepared, &refs(&bound)).await.map_err(pg_error)?;
            rows.iter().map(read_row).collect()
        })
        .await
    }

    async fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<u64, PortError> {
        self.bounded(async {
            let client = self.client().await?;
            let prepared = client.prepare_cached(statement).await.map_err(pg_error)?;
            let bound: Vec<Param> = params.iter().map(Param).collect();
            client.execute(&prepared, &refs(&bound)).await.map_err(pg_error)
        })
        .await
    }
}

fn refs<'a>(bound: &'a [Param<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    bound.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// A closed connection or failed connect is `Unreachable` (503); anything the server
/// answered (constraint violation, syntax) is `Server`, with its SQLSTATE in the text.
fn pg_error(e: tokio_postgres::Error) -> PortError {
    if let Some(db) = e.as_db_error() {
        // 57014: statement_timeout fired; the server is there but did not answer in time.
        if db.code().code() == "57014" {
            return PortError::unreachable(Dependency::Postgres, db.message().to_owned());
        }
        return PortError::server(
            Dependency::Postgres,
            format!("{} {}", db.code().code(), db.message()),
        );
    }
    if e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()) {
        PortError::unreachable(Dependency::Postgres, e.to_string())
    } else {
        PortError::server(Dependency::Postgres, e.to_string())
    }
}

/// Binds a [`SqlValue`] to whatever integer or text type the statement declares.
#[derive(Debug)]
struct Param<'a>(&'a SqlValue);

impl ToSql for Param<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self.0 {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Bool(b) => b.to_sql(ty, out),
            SqlValue::Int(n) if *ty == Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
            SqlValue::Int(n) if *ty == Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
            SqlValue::Int(n) => n.to_sql(ty, out),
            SqlValue::Text(s) => s.as_str().to_sql(ty, out),
            SqlValue::TextArray(items) => items.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn read_row(row: &Row) -> Result<SqlRow, PortError> {
    (0..row.len())
        .map(|i| {
            let ty = row.columns()[i].type_();
            let value = match *ty {
                Type::INT8 => row.try_get::<_, Option<i64>>(i).map(|v| v.map(SqlValue::Int)),
                Type::INT4 => row
                    .try_get::<_, Option<i32>>(i)
                    .map(|v| v.map(|n| SqlValue::Int(n.into()))),
                Type::INT2 => row
                    .try_get::<_, Option<i16>>(i)
                    .map(|v| v.map(|n| SqlValue::Int(n.into()))),
                Type::BOOL => row.try_get::<_, Option<bool>>(i).map(|v| v.map(SqlValue::Bool)),
                Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                    row.try_get::<_, Option<String>>(i).map(|v| v.map(SqlValue::Text))
                }
                Type::TEXT_ARRAY => row
                    .try_get::<_, Option<Vec<String>>>(i)
                    .map(|v| v.map(SqlValue::TextArray)),
                _ => {
                    return Err(PortError::server(
                        Dependency::Postgres,
                        format!("unsupported column type {ty}"),
                    ));
                }
            };
            value
                .map(|v| v.unwrap_or(SqlValue::Null))
                .map_err(|e| PortError::server(Dependency::Postgres, e.to_string()))
        })
        .collect()
}
