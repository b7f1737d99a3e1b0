//! Settings, read once per process (natively) or per request (in Spin) through the
//! [`Config`] port. Names are the Spin variable names of DESIGN §6; defaults follow the
//! seed's TTL table.

use crate::error::Error;
use crate::keys::KeyPrefix;
use crate::metrics::exchange::LogLevel;
use crate::ports::Config;
use crate::pricing::money::Currency;
use crate::ratelimit::{Rate, TrustedProxies};

/// Every setting the stores use.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis address, `redis://` or `rediss://`.
    pub redis_url: String,
    /// PostgreSQL address; `sslmode=require|verify-ca|verify-full` in it asks for TLS
    /// (native adapter).
    pub database_url: String,
    /// PEM file of the CA a `rediss://` server must be signed by (native adapter; empty:
    /// the system's roots; the Spin host verifies with its own).
    pub redis_ca_file: String,
    /// PEM file of the CA that `sslmode=verify-ca|verify-full` checks PostgreSQL's
    /// certificate against (native adapter; empty: the system's roots).
    pub database_ca_file: String,
    /// Bearer token of the admin routes; admin routes are refused while it is empty.
    pub admin_token: String,
    /// Namespace in front of every key (tenants, test runs).
    pub key_prefix: KeyPrefix,
    /// How long a reservation holds stock unless the request says otherwise.
    pub reservation_ttl_seconds: u32,
    /// Timeout of one Redis call (native adapter; the Spin host sets none).
    pub redis_timeout_ms: u64,
    /// Timeout of one PostgreSQL call, including waiting for a pooled connection.
    pub database_timeout_ms: u64,
    /// Most PostgreSQL connections the native server keeps; 0: twice the cores it may use,
    /// at least 4 ([`Settings::database_pool_size_for`]).
    pub database_pool_size: u32,
    /// Timeout of one call to the payment gateway (native adapter).
    pub gateway_timeout_ms: u64,
    /// Largest request body accepted; larger gets 413.
    pub max_body_bytes: usize,
    /// HS256 secret of customer JWTs; customer routes are refused while it is empty.
    pub jwt_secret: String,
    /// How long an untouched cart lives; every change slides it.
    pub cart_ttl_seconds: u32,
    /// Most lines one cart may hold.
    pub cart_max_lines: u32,
    /// Ruleset entries (variants, bundles, discounts) the native server keeps per version
    /// for the next quotes; 0 turns the cache off.
    pub ruleset_cache_entries: u32,
    /// Most units of one line.
    pub cart_max_line_quantity: u32,
    /// Currency of a new cart that names none.
    pub default_currency: Currency,
    /// How long a cached bundle definition lives.
    pub bundle_ttl_seconds: u32,
    /// How long a checkout session lives; a superseded ruleset version stays readable at
    /// least this long, for the checkouts that froze it.
    pub checkout_session_ttl_seconds: u32,
    /// How long a checkout holds its cart's lock.
    pub checkout_lock_ttl_seconds: u32,
    /// How long an idempotency key's outcome is kept.
    pub idempotency_ttl_seconds: u32,
    /// The payment gateway's base URL (Stripe's wire format), e.g. `https://api.stripe.com`.
    pub payment_gateway_url: String,
    /// The gateway's secret API key (Bearer).
    pub payment_gateway_key: String,
    /// The secret that signs the gateway's webhooks (`Stripe-Signature`); the webhook
    /// refuses every event while it is empty.
    pub webhook_secret: String,
    /// The token of trusted backends (Bearer) for the direct reservation routes, beside the
    /// admin token; empty: only the admin token is trusted.
    pub service_token: String,
    /// The longest one request may run (the native server answers 503 beyond it; on Spin,
    /// set the platform's handler timeout to it). Also how long an idempotency key stays
    /// in flight for a request that died without finishing.
    pub request_timeout_ms: u64,
    /// Native server: the longest a client may take to send a request's headers.
    pub http_header_timeout_ms: u64,
    /// Native server: the longest a client may take to send a request's body (408 beyond).
    pub http_body_timeout_ms: u64,
    /// Native server: how long a kept-alive connection may sit idle before it is closed.
    pub http_idle_timeout_ms: u64,
    /// Native server: most connections open at once; beyond it a new one is answered 503
    /// and closed.
    pub max_connections: usize,
    /// How far a customer token's issuer's clock may disagree with ours, in seconds,
    /// granted on `exp` and `nbf`.
    pub jwt_leeway_seconds: u32,
    /// Replicas that must have a reservation and a checkout session write before it is
    /// answered (Redis `WAIT`); 0: answer once the master has it (replication stays
    /// asynchronous, and a failover may lose the latest writes: README, "Scaling out").
    pub redis_wait_replicas: u32,
    /// How long such a write waits for its replicas; fewer in time is a 503 (the write
    /// stands on the master, and a retry with the same key repeats it harmlessly).
    pub redis_wait_timeout_ms: u64,
    /// How long a checkout session's holds outlive the session's deadline, so a payment
    /// accepted just before the deadline still finds its units held while the order is
    /// written (DESIGN §4, invariant 2).
    pub hold_grace_seconds: u32,
    /// How often `commerce serve` drains the payment outbox; 0 turns the task off (Spin
    /// has no background tasks: run `commerce drain` on a schedule there).
    pub outbox_drain_interval_ms: u64,
    /// Wait before retrying a refund or cancellation after its first failed attempt; it
    /// doubles with every further failure.
    pub outbox_retry_base_ms: u64,
    /// Longest wait between two attempts of one refund or cancellation.
    pub outbox_retry_max_ms: u64,
    /// Bearer token `GET /metrics` requires; empty: `/metrics` is open.
    pub metrics_token: String,
    /// How much is logged to stderr (`off|error|warn|info|debug`): at `info`, one JSON line
    /// per request; 5xx answers log at `error`.
    pub log_level: LogLevel,
    /// Anonymous writes (carts, checkouts) one client address may make per minute,
    /// sustained; 0 turns the limit off.
    pub rate_limit_anonymous_per_minute: u32,
    /// Anonymous writes one client address may make at once.
    pub rate_limit_anonymous_burst: u32,
    /// Writes one signed-in customer may make per minute, sustained; 0 turns the limit off.
    pub rate_limit_customer_per_minute: u32,
    /// Writes one signed-in customer may make at once.
    pub rate_limit_customer_burst: u32,
    /// Proxies whose `X-Forwarded-For` names the client (addresses and CIDRs,
    /// comma-separated); empty: the socket's peer is the client.
    pub trusted_proxies: TrustedProxies,
}

impl Settings {
    /// Default hold time: 15 minutes (seed `INVENTORY_RESERVATION`).
    pub const DEFAULT_RESERVATION_TTL: u32 = 15 * 60;
    /// Longest hold a request may ask for: one day.
    pub const MAX_RESERVATION_TTL: u32 = 24 * 60 * 60;
    /// Default body limit: 64 KiB, room for a 500-variant availability request.
    pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
    /// Default cart lifetime: 30 days (seed `CART`).
    pub const DEFAULT_CART_TTL: u32 = 30 * 24 * 60 * 60;
    /// Default bundle cache lifetime: 24 hours (seed `BUNDLE_DEFINITION`).
    pub const DEFAULT_BUNDLE_TTL: u32 = 24 * 60 * 60;

    /// The PostgreSQL pool of a server that may use `cores` cores: `database_pool_size`, or
    /// when that is 0, twice the cores and at least 4. Each statement holds a connection only
    /// while it runs, so a few connections keep PostgreSQL busy; more only add backends that
    /// contend for the same cores and rows (on 2 cores, a whole purchase took about three
    /// quarters of the PostgreSQL CPU with 4 connections that it took with 32: BENCHMARKS.md).
    pub fn database_pool_size_for(&self, cores: usize) -> usize {
        match self.database_pool_size {
            0 => cores.saturating_mul(2).max(4),
            size => size as usize,
        }
    }

    /// Reads the settings, applying defaults and rejecting malformed values.
    pub fn from_config(config: &impl Config) -> Result<Self, String> {
        let text = |name: &str, default: &str| {
            config
                .get(name)
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match config.get(name).filter(|v| !v.is_empty()) {
                None => Ok(default),
                Some(v) => v
                    .parse()
                    .map_err(|_| format!("{name} must be a whole number, got {v:?}")),
            }
        };
        let key_prefix = text("key_prefix", "");
        let key_prefix = KeyPrefix::parse(&key_prefix)
            .map_err(|_| format!("key_prefix must match [A-Za-z0-9_-]{{1,64}}, got {key_prefix:?}"))?;
        // A value of 0 would leave a server that answers nothing (every call timed out at
        // once, every body too large, every hold already expired): refused, with the range.
        let within = |name: &str, default: u64, max: u64| -> Result<u64, String> {
            let value = number(name, default)?;
            if (1..=max).contains(&value) {
                Ok(value)
            } else {
                Err(format!("{name} must be from 1 to {max}"))
            }
        };
        // The same for a setting where 0 means something (`zero`: off, automatic, none).
        let up_to = |name: &str, default: u32, max: u32, zero: &str| -> Result<u32, String> {
            let value = number(name, default.into())?;
            if value <= u64::from(max) {
                Ok(value as u32)
            } else {
                Err(format!("{name} must be from 0 ({zero}) to {max}"))
            }
        };
        let bounded = |name: &str, default: u32, max: u32| -> Result<u32, String> {
            within(name, default.into(), max.into()).map(|value| value as u32)
        };
        let reservation_ttl_seconds = bounded(
            "reservation_ttl_seconds",
            Self::DEFAULT_RESERVATION_TTL,
            Self::MAX_RESERVATION_TTL,
        )?;
        let outbox_retry_base_ms = number("outbox_retry_base_ms", 1_000)?;
        let outbox_retry_max_ms = number("outbox_retry_max_ms", 300_000)?;
        if outbox_retry_base_ms == 0 || outbox_retry_max_ms < outbox_retry_base_ms {
            return Err("outbox_retry_base_ms must be at least 1 and at most outbox_retry_max_ms".into());
        }
        let default_currency = text("default_currency", "EUR");
        let default_currency = Currency::parse(&default_currency)
            .map_err(|_| format!("default_currency must be an ISO 4217 code, got {default_currency:?}"))?;
        let log_level = text("log_level", "info");
        let log_level = LogLevel::parse(&log_level)
            .ok_or_else(|| format!("log_level must be off, error, warn, info or debug, got {log_level:?}"))?;
        let trusted_proxies = TrustedProxies::parse(&text("trusted_proxies", ""))
            .map_err(|e| format!("trusted_proxies: {e}"))?;
        let rate_limit_anonymous_per_minute =
            up_to("rate_limit_anonymous_per_minute", 120, 1_000_000, "off")?;
        let rate_limit_customer_per_minute = up_to("rate_limit_customer_per_minute", 60, 1_000_000, "off")?;
        // A burst not set is half a minute's writes (60 of 120, 30 of 60): a limit set alone
        // to 5 a minute lets 2 through at once, not a default burst meant for 120.
        let half_a_minute = |per_minute: u32| (per_minute / 2).max(1);
        let redis_timeout_ms = within("redis_timeout_ms", 2_000, 600_000)?;
        let database_timeout_ms = within("database_timeout_ms", 5_000, 600_000)?;
        let gateway_timeout_ms = within("gateway_timeout_ms", 10_000, 600_000)?;
        let payment_gateway_url = text("payment_gateway_url", "https://api.stripe.com");
        let gateway_host = ["https://", "http://"]
            .iter()
            .find_map(|scheme| payment_gateway_url.strip_prefix(scheme))
            .and_then(|rest| rest.split(['/', '?', '#']).next());
        if gateway_host.is_none_or(|host| host.is_empty() || host.contains(char::is_whitespace)) {
            return Err(format!(
                "payment_gateway_url must be an http:// or https:// URL with a host, got {payment_gateway_url:?}"
            ));
        }
        Ok(Self {
            jwt_secret: text("jwt_secret", ""),
            cart_ttl_seconds: bounded("cart_ttl_seconds", Self::DEFAULT_CART_TTL, 365 * 24 * 60 * 60)?,
            cart_max_lines: bounded("cart_max_lines", 100, 10_000)?,
            ruleset_cache_entries: up_to("ruleset_cache_entries", 200_000, 10_000_000, "off")?,
            cart_max_line_quantity: bounded("cart_max_line_quantity", 999, crate::ids::Quantity::MAX)?,
            default_currency,
            bundle_ttl_seconds: bounded("bundle_ttl_seconds", Self::DEFAULT_BUNDLE_TTL, 30 * 24 * 60 * 60)?,
            checkout_session_ttl_seconds: bounded("checkout_session_ttl_seconds", 3600, 7 * 24 * 60 * 60)?,
            checkout_lock_ttl_seconds: bounded("checkout_lock_ttl_seconds", 600, 7 * 24 * 60 * 60)?,
            idempotency_ttl_seconds: bounded("idempotency_ttl_seconds", 24 * 60 * 60, 30 * 24 * 60 * 60)?,
            payment_gateway_url: payment_gateway_url.trim_end_matches('/').to_owned(),
            payment_gateway_key: text("payment_gateway_key", ""),
            webhook_secret: text("webhook_secret", ""),
            service_token: text("service_token", ""),
            hold_grace_seconds: bounded("hold_grace_seconds", 600, 24 * 60 * 60)?,
            redis_wait_replicas: up_to("redis_wait_replicas", 0, 16, "none")?,
            redis_wait_timeout_ms: within("redis_wait_timeout_ms", 500, 60_000)?,
            jwt_leeway_seconds: up_to("jwt_leeway_seconds", 60, 3600, "none")?,
            http_header_timeout_ms: within("http_header_timeout_ms", 10_000, 600_000)?,
            http_body_timeout_ms: within("http_body_timeout_ms", 30_000, 600_000)?,
            http_idle_timeout_ms: within("http_idle_timeout_ms", 60_000, 3_600_000)?,
            max_connections: within("max_connections", 1024, 1_000_000)? as usize,
            redis_url: text("redis_url", "redis://127.0.0.1:6379"),
            database_url: text("database_url", "postgres://postgres@127.0.0.1:5432/commerce"),
            redis_ca_file: text("redis_ca_file", ""),
            database_ca_file: text("database_ca_file", ""),
            admin_token: text("admin_token", ""),
            key_prefix,
            reservation_ttl_seconds,
            redis_timeout_ms,
            database_timeout_ms,
            database_pool_size: up_to("database_pool_size", 0, 1_000, "automatic")?,
            gateway_timeout_ms,
            // By default the sum of the three: a request waits on one dependency at a time.
            request_timeout_ms: within(
                "request_timeout_ms",
                redis_timeout_ms + database_timeout_ms + gateway_timeout_ms,
                1_800_000,
            )?,
            max_body_bytes: within("max_body_bytes", Self::DEFAULT_MAX_BODY as u64, 64 << 20)? as usize,
            outbox_drain_interval_ms: number("outbox_drain_interval_ms", 5_000)?,
            outbox_retry_base_ms,
            outbox_retry_max_ms,
            metrics_token: text("metrics_token", ""),
            log_level,
            rate_limit_anonymous_per_minute,
            rate_limit_anonymous_burst: bounded(
                "rate_limit_anonymous_burst",
                half_a_minute(rate_limit_anonymous_per_minute),
                1_000_000,
            )?,
            rate_limit_customer_per_minute,
            rate_limit_customer_burst: bounded(
                "rate_limit_customer_burst",
                half_a_minute(rate_limit_customer_per_minute),
                1_000_000,
            )?,
            trusted_proxies,
        })
    }

    /// Checks an `Authorization: Bearer …` header against the admin token, in constant
    /// time. An unset token locks the admin routes.
    pub fn authorize_admin(&self, authorization: Option<&str>) -> Result<(), Error> {
        let presented = authorization
            .and_then(crate::auth::bearer)
            .ok_or_else(|| Error::Unauthorized("admin routes need a bearer token".into()))?;
        if self.admin_token.is_empty() || !constant_time_eq(presented, &self.admin_token) {
            return Err(Error::Forbidden("the token does not grant admin access".into()));
        }
        Ok(())
    }

    /// Checks the `Authorization: Bearer …` header of `GET /metrics` against
    /// `metrics_token` in constant time; an empty token leaves `/metrics` open. No token
    /// is 401, another one 403, as on the admin routes.
    pub fn authorize_metrics(&self, authorization: Option<&str>) -> Result<(), Error> {
        if self.metrics_token.is_empty() {
            return Ok(());
        }
        let Some(presented) = authorization.and_then(crate::auth::bearer) else {
            return Err(Error::Unauthorized(
                "/metrics needs the metrics token (Bearer)".into(),
            ));
        };
        if constant_time_eq(presented, &self.metrics_token) {
            Ok(())
        } else {
            Err(Error::Forbidden("the token does not grant /metrics".into()))
        }
    }

    /// The rate limit of anonymous writes, per client address.
    pub fn anonymous_rate(&self) -> Rate {
        Rate {
            per_minute: self.rate_limit_anonymous_per_minute,
            burst: self.rate_limit_anonymous_burst,
        }
    }

    /// The rate limit of a signed-in customer's writes, per customer.
    pub fn customer_rate(&self) -> Rate {
        Rate {
            per_minute: self.rate_limit_customer_per_minute,
            burst: self.rate_limit_customer_burst,
        }
    }

    /// Now, for checking customer tokens, with the configured leeway.
    pub fn token_time(&self) -> crate::auth::TokenTime {
        crate::auth::TokenTime {
            now_s: crate::auth::now_s(),
            leeway_s: i64::from(self.jwt_leeway_seconds),
        }
    }

    /// Checks a bearer token of a trusted backend: the admin token or the service token
    /// (both compared in constant time). Anonymous callers are 401, other tokens 403.
    pub fn authorize_trusted(&self, authorization: Option<&str>) -> Result<(), Error> {
        let presented = authorization.and_then(crate::auth::bearer).ok_or_else(|| {
            Error::Unauthorized("this route is for trusted backends: it needs a bearer token".into())
        })?;
        let admin = !self.admin_token.is_empty() && constant_time_eq(presented, &self.admin_token);
        let service = !self.service_token.is_empty() && constant_time_eq(presented, &self.service_token);
        if admin | service {
            Ok(())
        } else {
            Err(Error::Forbidden(
                "the token does not grant access to direct reservations".into(),
            ))
        }
    }
}

/// Compares two secrets without leaking where they first differ, nor (by returning early)
/// whether their lengths differ: every byte of the longer one is looked at.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Map(HashMap<&'static str, &'static str>);
    impl Config for Map {
        fn get(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    #[test]
    fn defaults_follow_the_seed() {
        let s = Settings::from_config(&Map(HashMap::new())).unwrap();
        assert_eq!(s.reservation_ttl_seconds, 900);
        assert!(s.admin_token.is_empty());
        // The limits are on unless a deployment turns them off.
        assert_eq!(
            (s.anonymous_rate().per_minute, s.anonymous_rate().burst),
            (120, 60)
        );
        assert_eq!((s.customer_rate().per_minute, s.customer_rate().burst), (60, 30));
        // A per-minute rate set alone brings its own burst, half a minute's; a burst set
        // stands as set.
        let alone = Settings::from_config(&Map(HashMap::from([
            ("rate_limit_anonymous_per_minute", "5"),
            ("rate_limit_customer_per_minute", "1"),
        ])))
        .unwrap();
        assert_eq!(
            (alone.anonymous_rate().burst, alone.customer_rate().burst),
            (2, 1)
        );
        let both = Settings::from_config(&Map(HashMap::from([
            ("rate_limit_anonymous_per_minute", "5"),
            ("rate_limit_anonymous_burst", "50"),
        ])))
        .unwrap();
        assert_eq!(both.anonymous_rate().burst, 50);
        assert_eq!(s.trusted_proxies, TrustedProxies::default());
        assert_eq!(
            (
                s.outbox_drain_interval_ms,
                s.outbox_retry_base_ms,
                s.outbox_retry_max_ms
            ),
            (5_000, 1_000, 300_000)
        );
        assert_eq!(s.ruleset_cache_entries, 200_000);
        let off = Settings::from_config(&Map(HashMap::from([("ruleset_cache_entries", "0")]))).unwrap();
        assert_eq!(off.ruleset_cache_entries, 0, "0 turns the ruleset cache off");
    }

    #[test]
    fn the_database_pool_is_twice_the_cores_unless_set() {
        let auto = Settings::from_config(&Map(HashMap::new())).unwrap();
        assert_eq!(auto.database_pool_size, 0);
        assert_eq!(auto.database_pool_size_for(1), 4, "at least 4");
        assert_eq!(auto.database_pool_size_for(2), 4);
        assert_eq!(auto.database_pool_size_for(16), 32);
        let set = Settings::from_config(&Map(HashMap::from([("database_pool_size", "3")]))).unwrap();
        assert_eq!(
            set.database_pool_size_for(16),
            3,
            "a set size stands whatever the cores"
        );
        for bad in ["1001", "-1", "many"] {
            let error =
                Settings::from_config(&Map(HashMap::from([("database_pool_size", bad)]))).unwrap_err();
            assert!(error.contains("database_pool_size"), "{bad}: {error}");
        }
    }

    #[test]
    fn malformed_settings_are_refused() {
        for (k, v) in [
            ("key_prefix", "a:b"),
            ("reservation_ttl_seconds", "0"),
            ("redis_timeout_ms", "soon"),
            ("outbox_retry_base_ms", "0"),
            ("outbox_retry_max_ms", "10"),
            ("outbox_drain_interval_ms", "-1"),
            ("log_level", "loud"),
            ("rate_limit_anonymous_per_minute", "-5"),
            ("rate_limit_customer_per_minute", "1000001"),
            ("rate_limit_anonymous_burst", "0"),
            ("trusted_proxies", "10.0.0.0/8,proxy.local"),
            ("ruleset_cache_entries", "10000001"),
            ("ruleset_cache_entries", "-1"),
            ("redis_timeout_ms", "0"),
            ("database_timeout_ms", "0"),
            ("gateway_timeout_ms", "600001"),
            ("max_body_bytes", "0"),
            ("payment_gateway_url", "notaurl"),
            ("payment_gateway_url", "ftp://gateway"),
            ("payment_gateway_url", "https://"),
            ("payment_gateway_url", "http:///v1"),
            ("http_header_timeout_ms", "0"),
            ("http_header_timeout_ms", "9999999"),
            ("http_body_timeout_ms", "0"),
            ("http_idle_timeout_ms", "0"),
            ("http_idle_timeout_ms", "3600001"),
            ("max_connections", "0"),
            ("request_timeout_ms", "0"),
            ("redis_wait_timeout_ms", "0"),
            ("redis_wait_replicas", "17"),
            ("jwt_leeway_seconds", "3601"),
        ] {
            let refused = Settings::from_config(&Map(HashMap::from([(k, v)])));
            assert!(
                refused.as_ref().is_err_and(|e| e.contains(k)),
                "{k}={v}: {refused:?}"
            );
        }
    }

    #[test]
    fn admin_needs_the_exact_token() {
        let mut s = Settings::from_config(&Map(HashMap::new())).unwrap();
        assert_eq!(s.authorize_admin(Some("Bearer x")).unwrap_err().status(), 403);
        s.admin_token = "secret".into();
        assert_eq!(s.authorize_admin(None).unwrap_err().status(), 401);
        assert_eq!(
            s.authorize_admin(Some("Bearer secreT")).unwrap_err().status(),
            403
        );
        assert!(s.authorize_admin(Some("Bearer secret")).is_ok());
    }

    #[test]
    fn metrics_are_open_until_a_token_is_set() {
        let mut s = Settings::from_config(&Map(HashMap::new())).unwrap();
        assert_eq!(s.log_level, LogLevel::Info);
        assert!(s.authorize_metrics(None).is_ok());
        s.metrics_token = "m".into();
        // No bearer token is 401; another one (a trailing space included) 403.
        for (header, status) in [
            (None, 401),
            (Some("m"), 401),
            (Some("Bearer x"), 403),
            (Some("Bearer m "), 403),
        ] {
            assert_eq!(
                s.authorize_metrics(header).unwrap_err().status(),
                status,
                "{header:?}"
            );
        }
        assert!(s.authorize_metrics(Some("Bearer m")).is_ok());
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use crate::ports::Config;

    /// A configuration with nothing set: every default applies.
    pub struct Empty;

    impl Config for Empty {
        fn get(&self, _: &str) -> Option<String> {
            None
        }
    }
}
