//! In-process metrics: request latency by route template and status class, dependency
//! call latency and errors, cache hits and misses, and business counters; rendered in
//! Prometheus text by `GET /metrics` (see [`crate::ops`]), beside what it reads at scrape
//! time (probes, Redis `INFO`, PostgreSQL's books).
//!
//! Recording is lock-free and allocation-free: every series is a fixed atomic in a static
//! table indexed by enums or route ids, so the hot reservation path pays a few relaxed
//! atomic additions and two clock reads per request. Natively the tables cover the process
//! since it started; a Spin component instance serves one request and keeps nothing, so
//! there they cover the request that scrapes them (the HELP text says so).

pub mod exchange;
pub mod measured;
pub mod redis_info;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub use measured::Measured;

use crate::routes;

/// Upper bounds of the latency buckets, in seconds (`le` labels); one more bucket holds
/// everything slower (`+Inf`).
pub const BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// [`BUCKETS`] in nanoseconds, for comparing without floating point.
const BUCKETS_NS: [u64; 15] = {
    let mut ns = [0; 15];
    let mut i = 0;
    while i < ns.len() {
        ns[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};

/// A latency histogram with fixed buckets: one atomic per bucket and one for the sum.
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of the observations in nanoseconds.
    sum_ns: AtomicU64,
}

impl Histogram {
    /// An empty histogram (usable in statics).
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_NS
            .iter()
            .position(|&bound| ns <= bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Writes the `_bucket`, `_sum` and `_count` lines of one series; `labels` is empty or
    /// `key="value",…` without braces.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            let le = BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_ns.load(Relaxed) as f64 / 1e9;
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {cumulative}");
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The status classes of the `status` label.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// HTTP statuses counted one by one in `commerce_requests_total` (those the service
/// answers); any other falls in its class's slot.
const STATUSES: [u16; 20] = [
    200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 412, 413, 414, 415, 422, 429, 431, 500, 502, 503,
];

/// The dependencies measured by [`Measured`].
pub use crate::error::Dependency;

const DEPENDENCIES: [(&str, &str); 3] = [
    ("redis", "commerce_redis_call_seconds"),
    ("postgres", "commerce_postgres_call_seconds"),
    ("gateway", "commerce_gateway_call_seconds"),
];

/// The caches whose hits and misses are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// The bundle cache: one lookup per bundle read or choice check; a miss loads the bundle
    /// from PostgreSQL.
    Bundle = 0,
    /// The catalog check: one lookup per variant checked; a hit is found in process or in
    /// Redis, a miss asks PostgreSQL.
    Catalog = 1,
    /// The lazy stock load: one lookup per stock script run; a miss loads the variants'
    /// stock from PostgreSQL first.
    Stock = 2,
    /// The ruleset entries a process holds: one lookup per quote; a miss reads the
    /// entries from Redis.
    Ruleset = 3,
}

const CACHES: [&str; 4] = ["bundle", "catalog", "stock", "ruleset"];

/// Business events counted in process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Holds granted (direct reservations and checkouts).
    ReservationGranted = 0,
    /// Holds refused for short stock.
    ReservationRefused = 1,
    /// A checkout session ended COMPLETED.
    CheckoutCompleted = 2,
    /// …CANCELLED.
    CheckoutCancelled = 3,
    /// …EXPIRED.
    CheckoutExpired = 4,
    /// …FAILED.
    CheckoutFailed = 5,
    /// An order written.
    OrderPlaced = 6,
    /// A paid order PostgreSQL refused because on-hand could not cover it.
    OversellRefused = 7,
    /// A refund owed (enqueued in the payment outbox).
    RefundEnqueued = 8,
    /// An intent cancellation owed (enqueued in the payment outbox).
    CancelEnqueued = 9,
}

/// The tables every series lives in.
struct Registry {
    requests: [[Histogram; STATUS_CLASSES.len()]; routes::COUNT],
    /// Per route, a slot per status of [`STATUSES`], then one per class for the rest.
    statuses: [[AtomicU64; STATUSES.len() + STATUS_CLASSES.len()]; routes::COUNT],
    calls: [Histogram; DEPENDENCIES.len()],
    errors: [[AtomicU64; ErrorKind::ALL.len()]; DEPENDENCIES.len()],
    cache: [[AtomicU64; 2]; CACHES.len()],
    events: [AtomicU64; 10],
}

static REGISTRY: Registry = Registry {
    requests: [const { [const { Histogram::new() }; STATUS_CLASSES.len()] }; routes::COUNT],
    statuses: [const { [const { AtomicU64::new(0) }; STATUSES.len() + STATUS_CLASSES.len()] }; routes::COUNT],
    calls: [const { Histogram::new() }; DEPENDENCIES.len()],
    errors: [const { [const { AtomicU64::new(0) }; ErrorKind::ALL.len()] }; DEPENDENCIES.len()],
    cache: [const { [const { AtomicU64::new(0) }; 2] }; CACHES.len()],
    events: [const { AtomicU64::new(0) }; 10],
};

/// How a dependency call failed, read from the [`crate::PortError`] (see [`ErrorKind::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The call did not finish within its timeout.
    Timeout = 0,
    /// The connection was refused or could not be made.
    Refused = 1,
    /// Otherwise unreachable: a broken connection, a server that cannot serve now.
    Unavailable = 2,
    /// The server answered with an error.
    Server = 3,
}

impl ErrorKind {
    const ALL: [&str; 4] = ["timeout", "refused", "unavailable", "server_error"];

    /// The kind of a port failure. Adapters tell only reachable or not (and their message);
    /// the message says which outage it was, in the words of both the native clients and
    /// the Spin host.
    pub fn of(error: &crate::PortError) -> Self {
        match &error.failure {
            crate::error::Failure::Server(_) => ErrorKind::Server,
            crate::error::Failure::Unreachable(message) => {
                let message = message.to_ascii_lowercase();
                if ["timed out", "timeout", "did not answer within", "time limit"]
                    .iter()
                    .any(|m| message.contains(m))
                {
                    ErrorKind::Timeout
                } else if ["refused", "connect", "resolve", "no route"]
                    .iter()
                    .any(|m| message.contains(m))
                {
                    ErrorKind::Refused
                } else {
                    ErrorKind::Unavailable
                }
            }
        }
    }
}

/// Records one answered request: its route, its status and how long it took.
pub fn request(route: routes::RouteId, status: u16, elapsed: Duration) {
    let route = route.min(routes::OTHER);
    let class = usize::from(status / 100).clamp(1, 5) - 1;
    REGISTRY.requests[route][class].observe(elapsed);
    let slot = STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len() + class);
    REGISTRY.statuses[route][slot].fetch_add(1, Relaxed);
}

/// Records one dependency call, with its error kind if it failed.
pub fn call(dependency: Dependency, elapsed: Duration, error: Option<ErrorKind>) {
    REGISTRY.calls[dependency as usize].observe(elapsed);
    if let Some(kind) = error {
        REGISTRY.errors[dependency as usize][kind as usize].fetch_add(1, Relaxed);
    }
}

/// Records `n` cache lookups that hit (or missed).
pub fn cache(cache: Cache, hit: bool, n: u64) {
    REGISTRY.cache[cache as usize][usize::from(!hit)].fetch_add(n, Relaxed);
}

/// Records one business event.
pub fn event(event: Event) {
    REGISTRY.events[event as usize].fetch_add(1, Relaxed);
}

/// Requests recorded so far for a route (tests, and the one-instance note on Spin).
pub fn requests_of(route: routes::RouteId) -> u64 {
    REGISTRY.requests[route.min(routes::OTHER)]
        .iter()
        .map(Histogram::count)
        .sum()
}

/// Where the in-process counters come from, for the HELP text.
const SCOPE: &str = "this process natively; on Spin, the one request the instance serves";

/// Writes every in-process family in Prometheus text.
pub fn render(out: &mut String) {
    let r = &REGISTRY;
    let _ = writeln!(
        out,
        "# HELP commerce_http_request_duration_seconds Request latency by route template and status class ({SCOPE}).\n\
         # TYPE commerce_http_request_duration_seconds histogram"
    );
    for (route, classes) in r.requests.iter().enumerate() {
        for (class, histogram) in classes.iter().enumerate() {
            if histogram.count() > 0 {
                let labels = format!(
                    "route=\"{}\",status=\"{}\"",
                    routes::label(route),
                    STATUS_CLASSES[class]
                );
                histogram.render(out, "commerce_http_request_duration_seconds", &labels);
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP commerce_requests_total Requests answered, by store (route template's first segments) and status ({SCOPE}).\n\
         # TYPE commerce_requests_total counter"
    );
    let mut by_store: Vec<(&str, String, u64)> = Vec::new();
    for (route, slots) in r.statuses.iter().enumerate() {
        for (slot, n) in slots.iter().enumerate() {
            let n = n.load(Relaxed);
            if n == 0 {
                continue;
            }
            let status = STATUSES.get(slot).map_or_else(
                || STATUS_CLASSES[slot - STATUSES.len()].to_owned(),
                ToString::to_string,
            );
            let store = routes::store(route);
            match by_store
                .iter_mut()
                .find(|(s, st, _)| *s == store && *st == status)
            {
                Some(entry) => entry.2 += n,
                None => by_store.push((store, status, n)),
            }
        }
    }
    by_store.sort();
    for (store, status, n) in by_store {
        let _ = writeln!(
            out,
            "commerce_requests_total{{store=\"{store}\",status=\"{status}\"}} {n}"
        );
    }
    for (i, (dependency, name)) in DEPENDENCIES.iter().enumerate() {
        let _ = writeln!(
            out,
            "# HELP {name} Latency of each {dependency} call, failed ones included ({SCOPE}).\n# TYPE {name} histogram"
        );
        r.calls[i].render(out, name, "");
    }
    let _ = writeln!(
        out,
        "# HELP commerce_dependency_errors_total Failed dependency calls by kind: timeout, refused (could not connect), unavailable (broken connection, server cannot serve now), server_error (the server answered an error) ({SCOPE}).\n\
         # TYPE commerce_dependency_errors_total counter"
    );
    for (i, (dependency, _)) in DEPENDENCIES.iter().enumerate() {
        for (k, kind) in ErrorKind::ALL.iter().enumerate() {
            let n = r.errors[i][k].load(Relaxed);
            let _ = writeln!(
                out,
                "commerce_dependency_errors_total{{dependency=\"{dependency}\",kind=\"{kind}\"}} {n}"
            );
        }
    }
    for (name, help, slot) in [
        (
            "commerce_cache_hits_total",
            "Cache lookups answered from the cache",
            0,
        ),
        (
            "commerce_cache_misses_total",
            "Cache lookups that went further (to Redis or PostgreSQL)",
            1,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}: cache=bundle per bundle read or choice check, catalog per variant checked, stock per stock script run, ruleset per quote ({SCOPE}).\n# TYPE {name} counter"
        );
        for (c, cache) in CACHES.iter().enumerate() {
            let n = r.cache[c][slot].load(Relaxed);
            let _ = writeln!(out, "{name}{{cache=\"{cache}\"}} {n}");
        }
    }
    let events = |e: Event| r.events[e as usize].load(Relaxed);
    let _ = writeln!(
        out,
        "# HELP commerce_reservations_total Hold requests (direct reservations and checkout starts) by outcome: granted, or refused for short stock ({SCOPE}).\n\
         # TYPE commerce_reservations_total counter\n\
         commerce_reservations_total{{outcome=\"granted\"}} {}\n\
         commerce_reservations_total{{outcome=\"refused\"}} {}",
        events(Event::ReservationGranted),
        events(Event::ReservationRefused)
    );
    let _ = writeln!(
        out,
        "# HELP commerce_checkouts_ended_total Checkout sessions that reached a final state, seen by {SCOPE}.\n\
         # TYPE commerce_checkouts_ended_total counter"
    );
    for (state, event) in [
        ("COMPLETED", Event::CheckoutCompleted),
        ("CANCELLED", Event::CheckoutCancelled),
        ("EXPIRED", Event::CheckoutExpired),
        ("FAILED", Event::CheckoutFailed),
    ] {
        let _ = writeln!(
            out,
            "commerce_checkouts_ended_total{{state=\"{state}\"}} {}",
            events(event)
        );
    }
    for (name, help, event) in [
        (
            "commerce_orders_placed_total",
            "Orders written by this process (commerce_orders_total counts them all, from PostgreSQL)",
            Event::OrderPlaced,
        ),
        (
            "commerce_oversell_refusals_total",
            "Paid orders refused because on-hand could not cover them, by this process (commerce_orders_refused_total counts them all, from PostgreSQL)",
            Event::OversellRefused,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}; {SCOPE}.\n# TYPE {name} counter\n{name} {}",
            events(event)
        );
    }
    let _ = writeln!(
        out,
        "# HELP commerce_outbox_enqueued_total Refunds and intent cancellations owed to the payment gateway, enqueued in the outbox ({SCOPE}).\n\
         # TYPE commerce_outbox_enqueued_total counter\n\
         commerce_outbox_enqueued_total{{kind=\"refund\"}} {}\n\
         commerce_outbox_enqueued_total{{kind=\"cancel\"}} {}",
        events(Event::RefundEnqueued),
        events(Event::CancelEnqueued)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"30\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{a=\"b\"} 60.0033\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 3\n"), "{out}");
        let mut bare = String::new();
        h.render(&mut bare, "y", "");
        assert!(bare.contains("y_bucket{le=\"+Inf\"} 3\n"), "{bare}");
        assert!(bare.contains("\ny_count 3\n"), "{bare}");
    }

    #[test]
    fn every_status_an_error_answers_is_counted_as_itself() {
        use crate::error::{Error, ErrorCode};
        let errors = [
            Error::bad_request(ErrorCode::MalformedJson, "x"),
            Error::Unauthorized("x".into()),
            Error::Forbidden("x".into()),
            Error::MethodNotAllowed("x".into()),
            Error::RequestTimeout,
            Error::PayloadTooLarge { limit: 1 },
            Error::UriTooLong { limit: 1 },
            Error::UnsupportedMediaType,
            Error::HeadersTooLarge("x".into()),
            Error::Internal("x".into()),
        ];
        for error in errors {
            assert!(STATUSES.contains(&error.status()), "{}", error.status());
        }
        for status in [404, 409, 412, 422, 429, 503] {
            assert!(STATUSES.contains(&status), "{status}");
        }
    }

    #[test]
    fn port_errors_are_classified_by_kind() {
        use crate::PortError;
        let server = |message: &str| PortError::server(Dependency::Redis, message);
        let unreachable = |message: &str| PortError::unreachable(Dependency::Postgres, message);
        let cases = [
            (server("NOSCRIPT No matching script"), ErrorKind::Server),
            (unreachable("redis did not answer within 2s"), ErrorKind::Timeout),
            (
                unreachable("canceling statement due to statement timeout"),
                ErrorKind::Timeout,
            ),
            (
                unreachable("Connection refused (os error 111)"),
                ErrorKind::Refused,
            ),
            (unreachable("error connecting to server"), ErrorKind::Refused),
            (unreachable("LOADING Redis is loading"), ErrorKind::Unavailable),
        ];
        for (error, kind) in cases {
            assert_eq!(ErrorKind::of(&error), kind, "{error}");
        }
    }
}
