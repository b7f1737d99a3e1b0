//! What measuring a request costs, without Redis or HTTP: the route template lookup of the
//! hot reservation path, a whole request's [`Exchange`] (request id, clock reads, histogram
//! and status counters, the `X-Request-Id` header) with the log line filtered out (`warn`)
//! and written (`info`, stderr: run with `2>/dev/null` or a file), and one measured
//! dependency call's bookkeeping. The figures are per request or per call; BENCHMARKS.md
//! sets them against the reservation path's cost.

use std::hint::black_box;
use std::time::Duration;

use commerce_core::http::Response;
use commerce_core::metrics::exchange::{Exchange, LogLevel};
use commerce_core::metrics::{self, Dependency};
use commerce_core::routes;
use criterion::{Criterion, criterion_group, criterion_main};

/// The native server's allocator (native/src/main.rs): the bookkeeping allocates (a request
/// id, a log line), and what that costs is the allocator's the server runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn measuring(c: &mut Criterion) {
    let mut group = c.benchmark_group("metrics");
    group.bench_function("route_of_reservation", |b| {
        b.iter(|| routes::of(black_box("POST"), black_box("/v1/inventory/reservations")))
    });
    group.bench_function("route_of_cart_line", |b| {
        b.iter(|| routes::of(black_box("PATCH"), black_box("/v1/customers/c-1/cart/items/l_1")))
    });
    let response = Response::json(201, &serde_json::json!({ "cartId": "c-1" }));
    for (name, level) in [
        ("exchange_log_warn", LogLevel::Warn),
        ("exchange_log_info", LogLevel::Info),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let exchange = Exchange::begin("POST", "/v1/inventory/reservations", None);
                let mut response = response.clone();
                exchange.end(&mut response, level);
                response
            })
        });
    }
    group.bench_function("exchange_given_request_id", |b| {
        b.iter(|| {
            let exchange = Exchange::begin("POST", "/v1/inventory/reservations", Some("abc-123"));
            let mut response = response.clone();
            exchange.end(&mut response, LogLevel::Warn);
            response
        })
    });
    group.bench_function("dependency_call", |b| {
        b.iter(|| {
            let started = std::time::Instant::now();
            metrics::call(
                Dependency::Redis,
                black_box(started.elapsed() + Duration::from_micros(90)),
                None,
            );
        })
    });
    group.finish();
}

criterion_group!(benches, measuring);
criterion_main!(benches);
