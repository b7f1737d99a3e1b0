//! The `Sql` port over Spin's outbound PostgreSQL.

use commerce_core::error::{Dependency, PortError};
use commerce_core::ports::{Sql, SqlRow, SqlValue};
use spin_sdk::pg4::{self, DbValue, ParameterValue, QueryError};

use crate::Deadline;
use crate::connection::OnFirstUse;
use crate::redis::is_connection_failure;

/// The [`Sql`] port over Spin's outbound PostgreSQL (`spin:postgres/postgres@4.0.0`).
///
/// Guarantees: the connection is taken from the host's pool on the first statement and
/// reused for the rest of the request. Parameters and columns cross as [`SqlValue`]s; a
/// column of a type the port does not carry is a [`Failure::Server`](commerce_core::error::Failure::Server) naming the type,
/// never a silent conversion. A connection that cannot be had or breaks is
/// [`Failure::Unreachable`](commerce_core::error::Failure::Unreachable) (→ 503); a statement PostgreSQL rejects is
/// [`Failure::Server`](commerce_core::error::Failure::Server) with PostgreSQL's own text.
pub struct SpinPg {
    connection: OnFirstUse<pg4::Connection>,
    deadline: Deadline,
}

impl SpinPg {
    /// An adapter for the PostgreSQL at `address`; nothing is opened until the first
    /// statement. Every statement (with the connection it takes) runs under `deadline`.
    pub fn new(address: &str, deadline: Deadline) -> Self {
        Self {
            connection: OnFirstUse::new(address),
            deadline,
        }
    }

    fn connection(&self) -> Result<&pg4::Connection, PortError> {
        self.connection
            .get(|address| pg4::Connection::open(address).map_err(pg_error))
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
            return Err(PortError::server(
                Dependency::Postgres,
                format!(
                    "unsupported column type {}: the schema uses bigint, text and boolean only",
                    db_type_name(&other)
                ),
            ));
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
        pg4::PgError::ConnectionFailed(text) => PortError::unreachable(Dependency::Postgres, text),
        pg4::PgError::QueryFailed(QueryError::DbError(db)) => {
            let message = match db.detail {
                Some(detail) => format!("{} ({detail}; SQLSTATE {})", db.message, db.code),
                None => format!("{} (SQLSTATE {})", db.message, db.code),
            };
            let outage = db.code.starts_with("08")
                || matches!(db.code.as_str(), "57P01" | "57P02" | "57P03" | "53300");
            if outage {
                PortError::unreachable(Dependency::Postgres, message)
            } else {
                PortError::server(Dependency::Postgres, message)
            }
        }
        pg4::PgError::QueryFailed(QueryError::Text(text)) if is_pg_connection_failure(&text) => {
            PortError::unreachable(Dependency::Postgres, text)
        }
        pg4::PgError::QueryFailed(QueryError::Text(text))
        | pg4::PgError::BadParameter(text)
        | pg4::PgError::ValueConversionFailed(text)
        | pg4::PgError::Other(text) => PortError::server(Dependency::Postgres, text),
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

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_core::error::Failure;

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
            assert!(matches!(pg_error(error).failure, Failure::Unreachable(_)));
        }
        for error in [
            db_error("23505"),
            db_error("42P01"),
            pg4::PgError::BadParameter("bad".into()),
        ] {
            assert!(matches!(pg_error(error).failure, Failure::Server(_)));
        }
    }

    #[test]
    fn the_hosts_backtrace_stays_out_of_a_refused_connection() {
        // What the real host answered for a PostgreSQL that refuses connections, when run
        // with RUST_BACKTRACE=1 (shortened: 45 more frames).
        let text = "Error occurred while creating a new object: error connecting to server\n\nCaused by:\n    0: error connecting to server\n    1: Connection refused (os error 111)\n\nStack backtrace:\n   0: <unknown>\n  46: start_thread\n             at ./nptl/pthread_create.c:442:8";
        let Failure::Unreachable(message) = pg_error(pg4::PgError::ConnectionFailed(text.into())).failure
        else {
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
        assert!(matches!(refused.failure, Failure::Server(text) if text.contains("double precision")));
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
