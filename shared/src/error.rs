//! The one error type of the service.
//!
//! Every variant is something a caller can act on and maps to exactly one HTTP status and
//! error code of DESIGN §5. Adapters turn their failures into [`Error::Unavailable`], so a
//! dependency outage is a 503 with a body, never a panic or a bare 500.

use serde_json::{Value, json};

/// What went wrong, in terms the HTTP caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: bad id, bad quantity, bad JSON (400).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// No or wrong credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials that do not grant this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The thing named in the path does not exist (404).
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    /// The route exists but not with this method (405).
    #[error("method {0} not allowed here")]
    MethodNotAllowed(String),
    /// The request conflicts with the current state: short stock, a held lock (409).
    #[error("{message}")]
    Conflict {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// A request with this Idempotency-Key is still running (409); retry after
    /// `retry_after_s` seconds, when its lease ends at the latest.
    #[error("a request with this Idempotency-Key is still being processed")]
    KeyInUse { retry_after_s: u64 },
    /// The client did not send its request within the time allowed (408).
    #[error("the request was not received in time")]
    RequestTimeout,
    /// `If-Match` named another version than the current one (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// The body is larger than the stated limit (413).
    #[error("request body exceeds {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body is not JSON (415).
    #[error("content type must be application/json")]
    UnsupportedMediaType,
    /// Well-formed but breaks a business rule, e.g. an unknown variant (422).
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        details: Value,
    },
    /// This client (or customer) has made more writes than its rate limit allows (429);
    /// the next is allowed in `retry_after_ms` milliseconds.
    #[error("too many requests: the next is allowed in {retry_after_ms} ms")]
    RateLimited { retry_after_ms: u64 },
    /// Redis or PostgreSQL could not be reached or did not answer in time (503).
    #[error("{dependency} unavailable: {message}")]
    Unavailable {
        dependency: &'static str,
        message: String,
    },
    /// A bug or an impossible reply; logged, answered 500.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Results of the service.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Error::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 404 with the given code.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Error::NotFound {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest { .. } => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound { .. } => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::Conflict { .. } | Error::KeyInUse { .. } => 409,
            Error::RequestTimeout => 408,
            Error::PreconditionFailed(_) => 412,
            Error::PayloadTooLarge { .. } => 413,
            Error::UnsupportedMediaType => 415,
            Error::Unprocessable { .. } => 422,
            Error::RateLimited { .. } => 429,
            Error::Internal(_) => 500,
            Error::Unavailable { .. } => 503,
        }
    }

    /// The machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadRequest { code, .. }
            | Error::NotFound { code, .. }
            | Error::Conflict { code, .. }
            | Error::Unprocessable { code, .. } => code,
            Error::Unauthorized(_) => "UNAUTHORIZED",
            Error::Forbidden(_) => "FORBIDDEN",
            Error::MethodNotAllowed(_) => "METHOD_NOT_ALLOWED",
            Error::KeyInUse { .. } => "IDEMPOTENCY_KEY_IN_USE",
            Error::RequestTimeout => "REQUEST_TIMEOUT",
            Error::PreconditionFailed(_) => "VERSION_MISMATCH",
            Error::PayloadTooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Error::UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE",
            Error::RateLimited { .. } => "RATE_LIMITED",
            Error::Unavailable { .. } => "SERVICE_UNAVAILABLE",
            Error::Internal(_) => "INTERNAL",
        }
    }

    /// Seconds a client should wait before retrying (`Retry-After`), where waiting helps:
    /// a key in flight until its lease ends, a rate limit until the next request is
    /// allowed (rounded up, at least 1), a dependency outage briefly.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Error::KeyInUse { retry_after_s } => Some(*retry_after_s),
            Error::RateLimited { retry_after_ms } => Some(retry_after_ms.div_ceil(1000).max(1)),
            Error::Unavailable { .. } => Some(1),
            _ => None,
        }
    }

    /// The JSON error body: `{"error":{"code","message","details"?}}`.
    pub fn body(&self) -> Value {
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        match self {
            Error::Conflict { details, .. } | Error::Unprocessable { details, .. } if !details.is_null() => {
                error["details"] = details.clone();
            }
            Error::Unavailable { dependency, .. } => {
                error["details"] = json!({ "dependency": dependency });
            }
            Error::KeyInUse { retry_after_s } => {
                error["details"] = json!({ "retryAfterSeconds": retry_after_s });
            }
            Error::RateLimited { retry_after_ms } => {
                error["details"] = json!({ "retryAfterMs": retry_after_ms });
            }
            _ => {}
        }
        json!({ "error": error })
    }
}

/// A failure reported by a port adapter.
///
/// Adapters only say whether the dependency could not be reached (or timed out) or whether
/// it answered with an error; the stores decide what that means for the caller.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PortError {
    /// Connecting failed, the connection broke, or the call timed out.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error (Redis error reply, SQL error).
    #[error("{0}")]
    Server(String),
}

impl PortError {
    /// Turns a Redis port failure into the service error.
    pub fn redis(self) -> Error {
        match self {
            PortError::Unreachable(message) => Error::Unavailable {
                dependency: "redis",
                message,
            },
            PortError::Server(message) => Error::Internal(format!("redis: {message}")),
        }
    }

    /// Turns a PostgreSQL port failure into the service error.
    pub fn sql(self) -> Error {
        match self {
            PortError::Unreachable(message) => Error::Unavailable {
                dependency: "postgres",
                message,
            },
            PortError::Server(message) => Error::Internal(format!("postgres: {message}")),
        }
    }
}
