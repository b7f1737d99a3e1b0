//! Rate limits on the writes anyone may make (issue 9: 20,000 anonymous carts were
//! created at 6,000/s, each living 30 days, each with idempotency records and checkouts).
//!
//! The router asks [`guard`] before anything else is done for a request, so a refused
//! request changes nothing. A limited write costs one extra Redis call (one GCRA script,
//! `gcra.lua`, on the Redis clock); reads, trusted callers (admin and service token), the
//! signed webhook, and the reservation routes (trusted callers only, the hot path) cost
//! nothing. Which writes are limited, and against whom:
//!
//! - anonymous writes, per client address ([`client_address`]: the socket's peer, or
//!   `X-Forwarded-For` behind a trusted proxy; an IPv6 client by its /64):
//!   `POST /v1/carts`, `POST /v1/carts/{c}/items`, `PATCH`/`DELETE /v1/carts/{c}/items/{l}`,
//!   `POST /v1/checkout`, `POST /v1/checkout/{s}/payment-intent`, `POST /v1/checkout/{s}/cancel`;
//! - the same writes with a valid customer token, and the customer cart's writes
//!   (`POST /v1/customers/{c}/cart/items`, `PATCH`/`DELETE …/items/{l}`, `POST …/cart/merge`),
//!   per customer (the token's `sub`), whatever the address; a customer route with a token
//!   that does not verify counts against the address.
//!
//! A refusal is 429 `RATE_LIMITED` with `Retry-After` (seconds, rounded up).

mod client;

use std::fmt;
use std::net::IpAddr;

pub use client::{Cidr, TrustedProxies, client_address};

use crate::app::App;
use crate::auth;
use crate::error::{Error, Result};
use crate::http::Request;
use crate::ids::CustomerId;
use crate::ports::{Http, Redis, RedisArg, RedisReply, Sql};
use crate::script::{Script, lua, tag, unexpected};
use crate::settings::Settings;

static GCRA: Script = Script::new(lua!("ratelimit/gcra.lua"));

/// A rate limit: `per_minute` requests on average, up to `burst` at once; off when
/// `per_minute` is 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests per minute, sustained.
    pub per_minute: u32,
    /// Requests a rested subject may make at once (at least 1).
    pub burst: u32,
}

impl Rate {
    /// The time between two requests at the sustained rate, in microseconds.
    fn interval_us(self) -> i64 {
        60_000_000 / i64::from(self.per_minute.max(1))
    }
}

/// Whose bucket a write is counted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// An anonymous client, by address; IPv6 by its /64, the block one subscriber
    /// usually holds whole (so rotating addresses inside it buys nothing).
    Client(IpAddr),
    /// A client whose runtime named no address (all such share one bucket).
    UnknownClient,
    /// A signed-in customer (the token's `sub`).
    Customer(CustomerId),
}

impl Subject {
    /// The subject of an anonymous client at `address`.
    pub fn client(address: Option<IpAddr>) -> Self {
        match address.map(|a| a.to_canonical()) {
            Some(IpAddr::V6(v6)) => Subject::Client(client::mask(IpAddr::V6(v6), 64)),
            Some(v4) => Subject::Client(v4),
            None => Subject::UnknownClient,
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Client(IpAddr::V6(v6)) => write!(f, "client:{v6}/64"),
            Subject::Client(v4) => write!(f, "client:{v4}"),
            Subject::UnknownClient => f.write_str("client:unknown"),
            Subject::Customer(id) => write!(f, "customer:{id}"),
        }
    }
}

/// Whether `method` on the path `segments` is one of the limited writes (module doc).
pub fn is_limited_write(method: &str, segments: &[&str]) -> bool {
    matches!(
        (method, segments),
        ("POST", ["v1", "carts"] | ["v1", "carts", _, "items"])
            | ("PATCH" | "DELETE", ["v1", "carts", _, "items", _])
            | ("POST", ["v1", "customers", _, "cart", "items" | "merge"])
            | ("PATCH" | "DELETE", ["v1", "customers", _, "cart", "items", _])
            | (
                "POST",
                ["v1", "checkout"] | ["v1", "checkout", _, "payment-intent" | "cancel"]
            )
    )
}

/// Whose bucket `req` counts against and at what rate; `None` when it is not limited: a
/// trusted caller's (admin or service token), or its kind of limit is off.
pub fn subject_of(settings: &Settings, req: &Request) -> Option<(Subject, Rate)> {
    let authorization = req.header("authorization");
    if authorization.is_some() && settings.authorize_trusted(authorization).is_ok() {
        return None;
    }
    let (subject, rate) = match auth::verify(authorization, &settings.jwt_secret, settings.token_time()) {
        Ok(customer) => (Subject::Customer(customer.id), settings.customer_rate()),
        Err(_) => (
            Subject::client(address_of(settings, req)),
            settings.anonymous_rate(),
        ),
    };
    (rate.per_minute > 0).then_some((subject, rate))
}

/// The address of the client that sent `req` ([`client_address`]), whole (an IPv6
/// client's bucket is its /64: [`Subject::client`]).
pub fn address_of(settings: &Settings, req: &Request) -> Option<IpAddr> {
    let forwarded = req
        .headers
        .iter()
        .filter(|(name, _)| name == "x-forwarded-for")
        .map(|(_, value)| value.as_str());
    client_address(req.client_addr, forwarded, &settings.trusted_proxies).map(|a| a.to_canonical())
}

/// Takes one request from `subject`'s bucket: `Ok` if allowed, else 429 with the wait.
pub async fn take<R: Redis>(redis: &R, key: &str, rate: Rate) -> Result<()> {
    let reply = GCRA
        .run(
            redis,
            &[key],
            vec![
                RedisArg::Int(rate.interval_us()),
                RedisArg::Int(i64::from(rate.burst.max(1))),
            ],
        )
        .await?;
    match (tag(&reply), reply.get(1).and_then(RedisReply::as_int)) {
        ("OK", _) => Ok(()),
        ("LIMITED", Some(wait_ms)) => Err(Error::RateLimited {
            retry_after_ms: u64::try_from(wait_ms).unwrap_or(0).max(1),
        }),
        _ => Err(unexpected(&reply)),
    }
}

/// The check the router runs before routing: nothing for requests that are not limited
/// writes (no I/O), one GCRA call for those that are.
pub async fn guard<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    req: &Request,
    segments: &[&str],
) -> Result<()> {
    if !is_limited_write(&req.method, segments) {
        return Ok(());
    }
    match subject_of(&app.settings, req) {
        Some((subject, rate)) => take(&app.redis, &app.keys.rate_limit(&subject), rate).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tests_support::Empty;

    #[test]
    fn only_the_listed_writes_are_limited() {
        let limited = [
            ("POST", "/v1/carts"),
            ("POST", "/v1/carts/c1/items"),
            ("PATCH", "/v1/carts/c1/items/l1"),
            ("DELETE", "/v1/carts/c1/items/l1"),
            ("POST", "/v1/customers/u1/cart/items"),
            ("PATCH", "/v1/customers/u1/cart/items/l1"),
            ("DELETE", "/v1/customers/u1/cart/items/l1"),
            ("POST", "/v1/customers/u1/cart/merge"),
            ("POST", "/v1/checkout"),
            ("POST", "/v1/checkout/cs_1/payment-intent"),
            ("POST", "/v1/checkout/cs_1/cancel"),
        ];
        let free = [
            ("GET", "/v1/carts/c1"),
            ("GET", "/v1/customers/u1/cart"),
            ("GET", "/v1/checkout/cs_1"),
            ("POST", "/v1/checkout/payment-webhook"),
            ("POST", "/v1/inventory/reservations"),
            ("DELETE", "/v1/inventory/reservations/h1"),
            ("POST", "/v1/inventory/availability"),
            ("POST", "/v1/pricing/quote"),
            ("PUT", "/v1/admin/inventory/var-1"),
            ("PUT", "/v1/carts"),
        ];
        let segments = |path: &'static str| path.split('/').skip(1).collect::<Vec<_>>();
        for (method, path) in limited {
            assert!(is_limited_write(method, &segments(path)), "{method} {path}");
        }
        for (method, path) in free {
            assert!(!is_limited_write(method, &segments(path)), "{method} {path}");
        }
    }

    #[test]
    fn trusted_callers_are_not_limited_customers_by_sub_others_by_address() {
        let mut settings = Settings::from_config(&Empty).unwrap();
        settings.admin_token = "admin".into();
        settings.service_token = "service".into();
        settings.jwt_secret = "jwt".into();
        let request = |authorization: Option<String>| Request {
            method: "POST".into(),
            path: "/v1/carts".into(),
            headers: authorization
                .map(|a| vec![("authorization".to_owned(), a)])
                .unwrap_or_default(),
            client_addr: Some("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            ..Request::default()
        };
        assert_eq!(subject_of(&settings, &request(Some("Bearer admin".into()))), None);
        assert_eq!(
            subject_of(&settings, &request(Some("Bearer service".into()))),
            None
        );
        let token = auth::sign(
            &serde_json::json!({"sub": "cust-1", "exp": auth::now_s() + 60}),
            "jwt",
        );
        let (customer, rate) = subject_of(&settings, &request(Some(format!("Bearer {token}")))).unwrap();
        assert_eq!(customer.to_string(), "customer:cust-1");
        assert_eq!(rate, settings.customer_rate());
        let (client, rate) = subject_of(&settings, &request(Some("Bearer forged".into()))).unwrap();
        assert_eq!(client.to_string(), "client:2001:db8:1:2::/64");
        assert_eq!(rate, settings.anonymous_rate());
        settings.rate_limit_anonymous_per_minute = 0;
        assert_eq!(subject_of(&settings, &request(None)), None);
        assert_eq!(Subject::client(None).to_string(), "client:unknown");
        assert_eq!(
            Subject::client(Some("::ffff:192.0.2.1".parse().unwrap())).to_string(),
            "client:192.0.2.1"
        );
    }
}
