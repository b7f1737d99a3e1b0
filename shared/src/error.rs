//! The one error type of the service.
//!
//! Every variant is something a caller can act on and maps to exactly one HTTP status and
//! error code of DESIGN §5. Adapters turn their failures into [`Error::Unavailable`], so a
//! dependency outage is a 503 with a body, never a panic or a bare 500.

use serde_json::{Value, json};

/// Defines [`ErrorCode`] and its text from one list, so a code's name is written once.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)+) => {
        /// Every machine-readable error code of the API (DESIGN §5), in one place: the error
        /// body's `code`. A status is not part of a code (a few codes appear with two
        /// statuses where the route decides); [`Error::status`] says which.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)+
        }

        impl ErrorCode {
            /// The code as the error body carries it, e.g. `CART_EMPTY`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)+
                }
            }
        }

        /// Every code, for the test that they stay distinct.
        #[cfg(test)]
        const ALL_CODES: &[ErrorCode] = &[$(ErrorCode::$variant,)+];
    };
}

error_codes! {
    /// An amount of money outside what the service carries (422).
    AmountOutOfRange = "AMOUNT_OUT_OF_RANGE",
    /// No active bundle has this id (404).
    BundleNotFound = "BUNDLE_NOT_FOUND",
    /// A checkout of a cart with nothing in it (409).
    CartEmpty = "CART_EMPTY",
    /// More lines or units than a cart or a checkout may take (422).
    CartLimit = "CART_LIMIT",
    /// The cart is locked by a checkout in progress (409).
    CartLocked = "CART_LOCKED",
    /// The cart has been, or is being, merged into a customer's cart (409).
    CartMerged = "CART_MERGED",
    /// No such cart (404).
    CartNotFound = "CART_NOT_FOUND",
    /// Another session is checking the cart out (409).
    CheckoutInProgress = "CHECKOUT_IN_PROGRESS",
    /// No such checkout session (404).
    CheckoutNotFound = "CHECKOUT_NOT_FOUND",
    /// The session's state does not allow this (409).
    CheckoutState = "CHECKOUT_STATE",
    /// Prices, carts or bundles in different currencies (422).
    CurrencyMismatch = "CURRENCY_MISMATCH",
    /// Credentials that do not grant this (403).
    Forbidden = "FORBIDDEN",
    /// More header fields, or more bytes of them, than a request may carry (431).
    HeadersTooLarge = "HEADERS_TOO_LARGE",
    /// A request with this Idempotency-Key is still running (409).
    IdempotencyKeyInUse = "IDEMPOTENCY_KEY_IN_USE",
    /// The route needs an Idempotency-Key (400).
    IdempotencyKeyRequired = "IDEMPOTENCY_KEY_REQUIRED",
    /// The Idempotency-Key came with another request (422).
    IdempotencyKeyReused = "IDEMPOTENCY_KEY_REUSED",
    /// Not enough sellable stock (409).
    InsufficientInventory = "INSUFFICIENT_INVENTORY",
    /// A bug or an impossible reply (500).
    Internal = "INTERNAL",
    /// A backup file that cannot be read (400).
    InvalidBackup = "INVALID_BACKUP",
    /// A body of the wrong shape (400).
    InvalidBody = "INVALID_BODY",
    /// Bundle choices the bundle does not allow (422).
    InvalidBundleChoice = "INVALID_BUNDLE_CHOICE",
    /// A checkout request that names no cart, or two (400).
    InvalidCheckout = "INVALID_CHECKOUT",
    /// Bundle choices of the wrong shape (400).
    InvalidChoices = "INVALID_CHOICES",
    /// Not an ISO 4217 code (400).
    InvalidCurrency = "INVALID_CURRENCY",
    /// A webhook payload that is not a usable event (400).
    InvalidEvent = "INVALID_EVENT",
    /// A field of the wrong type or out of range (400).
    InvalidField = "INVALID_FIELD",
    /// A customer group that is not an id (400).
    InvalidGroup = "INVALID_GROUP",
    /// An id that does not match `^[A-Za-z0-9_-]{1,64}$` (400).
    InvalidId = "INVALID_ID",
    /// An Idempotency-Key of the wrong form (400).
    InvalidIdempotencyKey = "INVALID_IDEMPOTENCY_KEY",
    /// An `If-Match` that is not a version (400).
    InvalidIfMatch = "INVALID_IF_MATCH",
    /// A cart line that names neither a variant nor a bundle, or both (400).
    InvalidLine = "INVALID_LINE",
    /// A per-order limit out of range (400).
    InvalidMaxPerOrder = "INVALID_MAX_PER_ORDER",
    /// An on-hand count out of range (400).
    InvalidOnHand = "INVALID_ON_HAND",
    /// A price list or discount the engine cannot apply (422).
    InvalidPrice = "INVALID_PRICE",
    /// A quantity out of range (400).
    InvalidQuantity = "INVALID_QUANTITY",
    /// A query string the route does not take (400).
    InvalidQuery = "INVALID_QUERY",
    /// A quote request of the wrong shape (400).
    InvalidQuote = "INVALID_QUOTE",
    /// A publish whose PostgreSQL rows cannot be served; nothing was published (422).
    InvalidRuleset = "INVALID_RULESET",
    /// A webhook whose signature does not verify (400).
    InvalidSignature = "INVALID_SIGNATURE",
    /// A hold time out of range (400).
    InvalidTtl = "INVALID_TTL",
    /// The cart has no such line (404).
    LineNotFound = "LINE_NOT_FOUND",
    /// A body that could not be read (400).
    MalformedBody = "MALFORMED_BODY",
    /// A body that is not JSON (400).
    MalformedJson = "MALFORMED_JSON",
    /// More units of a variant than one order may take (422).
    MaxPerOrderExceeded = "MAX_PER_ORDER_EXCEEDED",
    /// The route exists but not with this method (405).
    MethodNotAllowed = "METHOD_NOT_ALLOWED",
    /// A required field is absent (400).
    MissingField = "MISSING_FIELD",
    /// A checkout whose total is zero: there is no payment to take (422).
    NothingToPay = "NOTHING_TO_PAY",
    /// The body is larger than `max_body_bytes` (413).
    PayloadTooLarge = "PAYLOAD_TOO_LARGE",
    /// The payment gateway refused the request (422).
    PaymentGatewayRejected = "PAYMENT_GATEWAY_REJECTED",
    /// More writes than the rate limit allows (429).
    RateLimited = "RATE_LIMITED",
    /// The request was not received in time (408).
    RequestTimeout = "REQUEST_TIMEOUT",
    /// No route has this path (404).
    RouteNotFound = "ROUTE_NOT_FOUND",
    /// No pricing ruleset has been published yet (409).
    RulesetNotPublished = "RULESET_NOT_PUBLISHED",
    /// Redis, PostgreSQL or the gateway is unavailable (503).
    ServiceUnavailable = "SERVICE_UNAVAILABLE",
    /// No or wrong credentials (401).
    Unauthorized = "UNAUTHORIZED",
    /// A quote line names a bundle without a price (422).
    UnknownBundle = "UNKNOWN_BUNDLE",
    /// A variant unknown to the catalog or without a price (422).
    UnknownVariant = "UNKNOWN_VARIANT",
    /// The body is not `application/json` (415).
    UnsupportedMediaType = "UNSUPPORTED_MEDIA_TYPE",
    /// A request target (path and query) longer than a request may carry (414).
    UriTooLong = "URI_TOO_LONG",
    /// No such variant (404).
    VariantNotFound = "VARIANT_NOT_FOUND",
    /// `If-Match` named another version than the current one (412).
    VersionMismatch = "VERSION_MISMATCH",
}

/// What went wrong, in terms the HTTP caller can act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: bad id, bad quantity, bad JSON (400).
    #[error("{message}")]
    BadRequest { code: ErrorCode, message: String },
    /// No or wrong credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Credentials that do not grant this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The thing named in the path does not exist (404).
    #[error("{message}")]
    NotFound { code: ErrorCode, message: String },
    /// The route exists but not with this method (405).
    #[error("method {0} not allowed here")]
    MethodNotAllowed(String),
    /// The request conflicts with the current state: short stock, a held lock (409).
    #[error("{message}")]
    Conflict {
        code: ErrorCode,
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
    /// The path and query together are longer than the stated limit (414).
    #[error("the request target (path and query) exceeds {limit} bytes")]
    UriTooLong { limit: usize },
    /// More header fields, or more bytes of them, than the limits allow (431).
    #[error("{0}")]
    HeadersTooLarge(String),
    /// Well-formed but breaks a business rule, e.g. an unknown variant (422).
    #[error("{message}")]
    Unprocessable {
        code: ErrorCode,
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
    /// The service's own settings are wrong (a Spin component's variables): a 500 that
    /// names the setting, since a deployer may have nothing but the answer to go by.
    #[error("configuration: {0}")]
    Configuration(String),
}

/// The message of every 500: its cause goes to the log line of its request.
pub const INTERNAL_MESSAGE: &str =
    "internal error: the server's log has its cause under this request's X-Request-Id";

/// Results of the service.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A 400 with the given code.
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::BadRequest {
            code,
            message: message.into(),
        }
    }

    /// A 404 with the given code.
    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
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
            Error::UriTooLong { .. } => 414,
            Error::UnsupportedMediaType => 415,
            Error::Unprocessable { .. } => 422,
            Error::RateLimited { .. } => 429,
            Error::HeadersTooLarge(_) => 431,
            Error::Internal(_) | Error::Configuration(_) => 500,
            Error::Unavailable { .. } => 503,
        }
    }

    /// The machine-readable code of the error body.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    /// The error's [`ErrorCode`].
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Error::BadRequest { code, .. }
            | Error::NotFound { code, .. }
            | Error::Conflict { code, .. }
            | Error::Unprocessable { code, .. } => *code,
            Error::Unauthorized(_) => ErrorCode::Unauthorized,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            Error::KeyInUse { .. } => ErrorCode::IdempotencyKeyInUse,
            Error::RequestTimeout => ErrorCode::RequestTimeout,
            Error::PreconditionFailed(_) => ErrorCode::VersionMismatch,
            Error::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Error::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            Error::UriTooLong { .. } => ErrorCode::UriTooLong,
            Error::HeadersTooLarge(_) => ErrorCode::HeadersTooLarge,
            Error::RateLimited { .. } => ErrorCode::RateLimited,
            Error::Unavailable { .. } => ErrorCode::ServiceUnavailable,
            Error::Internal(_) | Error::Configuration(_) => ErrorCode::Internal,
        }
    }

    /// What went wrong inside a 500, for the log.
    pub fn fault(&self) -> Option<&str> {
        match self {
            Error::Internal(cause) | Error::Configuration(cause) => Some(cause),
            _ => None,
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

    /// The JSON error body: `{"error":{"code","message","details"?}}`. A 500's message
    /// says only that something went wrong: what went wrong (a dependency's own error
    /// text, a reply we could not read) is for the log ([`Error::fault`]), not the caller.
    pub fn body(&self) -> Value {
        let message = match self {
            Error::Internal(_) => INTERNAL_MESSAGE.to_owned(),
            _ => self.to_string(),
        };
        let mut error = json!({ "code": self.code(), "message": message });
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

/// The outside service a port reaches: each adapter names its own on every
/// [`PortError`], so a store's `?` turns a failure into the right [`Error`] without saying
/// which port it called. The discriminants index the metrics' tables
/// ([`crate::metrics`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// Redis (`commerce_redis_call_seconds`).
    Redis = 0,
    /// PostgreSQL (`commerce_postgres_call_seconds`).
    Postgres = 1,
    /// The payment gateway, over outbound HTTP (`commerce_gateway_call_seconds`).
    Gateway = 2,
}

impl Dependency {
    /// The name an error body gives it (`details.dependency` of a 503).
    pub const fn name(self) -> &'static str {
        match self {
            Dependency::Redis => "redis",
            Dependency::Postgres => "postgres",
            Dependency::Gateway => "payment gateway",
        }
    }
}

/// How a port call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Connecting failed, the connection broke, or the call timed out.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The server answered with an error (Redis error reply, SQL error).
    #[error("{0}")]
    Server(String),
}

/// A failure reported by a port adapter: which dependency failed, and how.
///
/// Adapters only say whether the dependency could not be reached (or timed out) or whether
/// it answered with an error; the stores decide what that means for the caller, and where
/// they have nothing to decide `?` converts it ([`From<PortError> for Error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{failure}")]
pub struct PortError {
    /// The dependency that failed.
    pub dependency: Dependency,
    /// How it failed.
    pub failure: Failure,
}

impl PortError {
    /// `dependency` could not be reached, or did not answer in time.
    pub fn unreachable(dependency: Dependency, message: impl Into<String>) -> Self {
        Self {
            dependency,
            failure: Failure::Unreachable(message.into()),
        }
    }

    /// `dependency` answered with an error.
    pub fn server(dependency: Dependency, message: impl Into<String>) -> Self {
        Self {
            dependency,
            failure: Failure::Server(message.into()),
        }
    }

    /// The server's error text, if it answered with an error.
    pub fn server_message(&self) -> Option<&str> {
        match &self.failure {
            Failure::Server(message) => Some(message),
            Failure::Unreachable(_) => None,
        }
    }

    /// Whether PostgreSQL refused the statement with this SQLSTATE (`23514`: a CHECK;
    /// `23503`: a foreign key), in the native adapter's rendering (`23514 …`) or the Spin
    /// host's (`… (SQLSTATE 23514)`).
    pub fn is_sqlstate(&self, code: &str) -> bool {
        self.server_message()
            .is_some_and(|message| message.starts_with(code) || message.contains(&format!("SQLSTATE {code}")))
    }
}

/// An unreachable dependency is a 503 naming it (retry later); an error it answered is a
/// bug of ours or an impossible reply, a 500.
impl From<PortError> for Error {
    fn from(error: PortError) -> Self {
        let dependency = error.dependency;
        match error.failure {
            Failure::Unreachable(message) => Error::Unavailable {
                dependency: dependency.name(),
                message,
            },
            Failure::Server(message) => Error::Internal(match dependency {
                Dependency::Gateway => format!("payment gateway request: {message}"),
                Dependency::Redis | Dependency::Postgres => format!("{}: {message}", dependency.name()),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_is_distinct_and_upper_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ALL_CODES {
            let text = code.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(
                text.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{text}"
            );
        }
        assert_eq!(Error::RequestTimeout.code(), "REQUEST_TIMEOUT");
        assert_eq!(Error::bad_request(ErrorCode::InvalidId, "x").code(), "INVALID_ID");
    }

    #[test]
    fn a_port_error_converts_by_its_dependency() {
        let down = Error::from(PortError::unreachable(Dependency::Redis, "refused"));
        assert_eq!((down.status(), down.retry_after()), (503, Some(1)));
        assert_eq!(down.body()["error"]["details"]["dependency"], "redis");
        assert_eq!(down.to_string(), "redis unavailable: refused");
        let gateway = Error::from(PortError::unreachable(Dependency::Gateway, "timed out"));
        assert_eq!(
            gateway.body()["error"]["details"]["dependency"],
            "payment gateway"
        );
        for (dependency, text) in [
            (Dependency::Redis, "internal error: redis: ERR x"),
            (Dependency::Postgres, "internal error: postgres: ERR x"),
            (
                Dependency::Gateway,
                "internal error: payment gateway request: ERR x",
            ),
        ] {
            let error = Error::from(PortError::server(dependency, "ERR x"));
            assert_eq!((error.status(), error.to_string().as_str()), (500, text));
            assert_eq!(error.fault(), text.strip_prefix("internal error: "));
            assert_eq!(error.body()["error"]["message"], INTERNAL_MESSAGE);
        }
        assert_eq!(PortError::server(Dependency::Redis, "ERR x").to_string(), "ERR x");
        assert_eq!(
            PortError::unreachable(Dependency::Redis, "gone").to_string(),
            "unreachable: gone"
        );
    }
}
