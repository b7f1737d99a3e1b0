//! `rate_load`: latency of one operation at a constant offered rate, through a running
//! `commerce serve` (or a Spin host).
//!
//! Two phases, each bounded by `--seconds` and `--requests`:
//!
//! 1. **The maximum**: `--connections` workers send the operation back to back (closed
//!    loop); its rate is completed requests over the phase's wall clock.
//! 2. **A constant rate**: `--fraction` (default ½) of that maximum, or `--rate`, offered
//!    on a fixed timetable: request `i` is due at `start + i / rate` and is sent then
//!    whether or not earlier ones have answered (a thread keeps the timetable and hands
//!    each request to the runtime), on at most `--connections` connections at once, as
//!    wrk2 does: a request due while all are busy waits for one. Its latency runs from the
//!    time it was *due*, not from when it went out, so a stall of the server counts
//!    against every request it delayed (no coordinated omission). Latencies go into an
//!    HDR histogram.
//!
//! Operations (`--op`):
//! - `live`: `GET /health/live`, the baseline (no variable, no I/O);
//! - `reserve`: `POST /v1/inventory/reservations`, 1 unit of `--variant` with the admin
//!   token, a new holder per request, or one of `--holders` holders reused (a holder's
//!   quantity is set, not added, so the number of live holds stays the same);
//! - `cart-add`: `POST /v1/carts/{cart}/items`, 1 unit, request `i` on cart `i % carts`
//!   (created first) and variant `var-((i / carts) % variants + 1)`;
//! - `quote`: `POST /v1/pricing/quote` of `--cart`, for `--group` when given (named with
//!   the admin token);
//! - `checkout`: `POST /v1/checkout` with its own Idempotency-Key, each on a new 1-line
//!   cart made before the phase starts (not timed);
//! - `availability`: `POST /v1/inventory/availability` of 500 variants spread evenly over
//!   `var-1 … var-<variants>`.
//!
//! `--max-only` runs the first phase only (the cost-growth table of `scripts/bench
//! --growth`); with `--redis-url`, the Redis `used_memory` (INFO memory) before and after
//! the measured phase is reported per request: the memory one hold, cart line or
//! checkout session takes.
//!
//! Prints nothing but one JSON line on stdout:
//! `{"op":…,"max_per_second":…,"offered_per_second":…,"achieved_per_second":…,
//! "requests":…,"errors":…,"p50_us":…,"p99_us":…,"p999_us":…,"max_us":…}` (`firstError`
//! when some failed; `memory_bytes_per_request` with `--redis-url`).
//!
//! ```text
//! rate_load --app http://127.0.0.1:3181 --op reserve --token bench --seconds 10
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// The server's allocator (native/src/main.rs): the driver shares the machine it measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: rate_load --app URL --op live|reserve|cart-add|quote|checkout|availability \
[--token T] [--variant V] [--holders N] [--carts N] [--variants N] [--cart ID] [--group G] \
[--connections C] [--seconds S] [--requests N] [--rate R | --fraction F] [--max-only] \
[--redis-url URL] [--run-id ID]";

/// Variants per availability request: the most one request may ask for.
const AVAILABILITY_BATCH: usize = 500;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Live,
    Reserve,
    CartAdd,
    Quote,
    Checkout,
    Availability,
}

struct Args {
    app: String,
    op: Op,
    token: String,
    variant: String,
    holders: usize,
    carts: usize,
    variants: usize,
    cart: String,
    group: String,
    connections: usize,
    seconds: f64,
    requests: usize,
    rate: Option<f64>,
    fraction: f64,
    max_only: bool,
    redis_url: Option<String>,
    run_id: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        app: String::new(),
        op: Op::Live,
        token: "bench".into(),
        variant: "var-1".into(),
        holders: 0,
        carts: 64,
        variants: 10,
        cart: String::new(),
        group: String::new(),
        connections: 64,
        seconds: 10.0,
        requests: 200_000,
        rate: None,
        fraction: 0.5,
        max_only: false,
        redis_url: None,
        run_id: format!("{}", commerce_core::auth::now_s()),
    };
    let mut op = None;
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        if flag == "--max-only" {
            args.max_only = true;
            continue;
        }
        let value = raw.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let count = |value: &str| commerce_tests::driver::count(&flag, value);
        let positive = |value: &str| {
            value
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| format!("{flag} takes a positive number, not {value:?}"))
        };
        match flag.as_str() {
            "--app" => args.app = value.trim_end_matches('/').to_owned(),
            "--op" => {
                op = Some(match value.as_str() {
                    "live" => Op::Live,
                    "reserve" => Op::Reserve,
                    "cart-add" => Op::CartAdd,
                    "quote" => Op::Quote,
                    "checkout" => Op::Checkout,
                    "availability" => Op::Availability,
                    _ => return Err(format!("unknown --op {value:?}")),
                })
            }
            "--token" => args.token = value,
            "--variant" => args.variant = value,
            "--holders" => args.holders = count(&value)?,
            "--carts" => args.carts = count(&value)?,
            "--variants" => args.variants = count(&value)?,
            "--cart" => args.cart = value,
            "--group" => args.group = value,
            "--connections" => args.connections = count(&value)?,
            "--seconds" => args.seconds = positive(&value)?,
            "--requests" => args.requests = count(&value)?,
            "--rate" => args.rate = Some(positive(&value)?),
            "--fraction" => args.fraction = positive(&value)?.min(1.0),
            "--redis-url" => args.redis_url = Some(value),
            "--run-id" => args.run_id = value,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    args.op = op.ok_or("--op is required")?;
    if args.app.is_empty() {
        return Err("--app is required".into());
    }
    if args.op == Op::Quote && args.cart.is_empty() {
        return Err("--op quote needs --cart".into());
    }
    if args.max_only && args.rate.is_some() {
        return Err("--max-only measures the maximum: it takes no --rate".into());
    }
    Ok(args)
}

/// One request, ready to send.
struct Call {
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
    idempotency_key: Option<String>,
    token: bool,
}

/// Builds the operation's requests. `phase` and `i` name holders and idempotency keys,
/// so they never repeat from one phase to the next; `carts` are those [`prepare`] made.
struct Workload {
    args: Args,
}

impl Workload {
    fn call(&self, phase: &str, i: usize, carts: &[String]) -> Call {
        let app = &self.args.app;
        let key = |i: usize| format!("rl-{}-{phase}-{i}", self.args.run_id);
        match self.args.op {
            Op::Live => Call {
                method: reqwest::Method::GET,
                ..post_json(&format!("{app}/health/live"), None)
            },
            Op::Reserve => {
                let holder = if self.args.holders > 0 {
                    i % self.args.holders
                } else {
                    i
                };
                let body = json!({
                    "cartId": key(holder),
                    "items": [{ "variantId": self.args.variant, "quantity": 1 }],
                    "ttlSeconds": 600,
                });
                Call {
                    token: true,
                    ..post_json(&format!("{app}/v1/inventory/reservations"), Some(body))
                }
            }
            Op::CartAdd => {
                let variant = (i / carts.len()) % self.args.variants + 1;
                let line = json!({ "variantId": format!("var-{variant}"), "quantity": 1 });
                post_json(
                    &format!("{app}/v1/carts/{}/items", carts[i % carts.len()]),
                    Some(line),
                )
            }
            Op::Quote => {
                let mut body = json!({ "cartId": self.args.cart });
                if !self.args.group.is_empty() {
                    body["customerGroup"] = json!(self.args.group);
                }
                Call {
                    token: !self.args.group.is_empty(),
                    ..post_json(&format!("{app}/v1/pricing/quote"), Some(body))
                }
            }
            Op::Availability => {
                let step = (self.args.variants / AVAILABILITY_BATCH).max(1);
                let ids: Vec<String> = (0..AVAILABILITY_BATCH.min(self.args.variants))
                    .map(|k| format!("var-{}", k * step + 1))
                    .collect();
                post_json(
                    &format!("{app}/v1/inventory/availability"),
                    Some(json!({ "variantIds": ids })),
                )
            }
            Op::Checkout => Call {
                idempotency_key: Some(key(i)),
                ..post_json(&format!("{app}/v1/checkout"), Some(json!({ "cartId": carts[i] })))
            },
        }
    }
}

/// The carts the next `requests` requests need, made before they are timed: `cart-add`'s
/// `--carts` (made once, then `made` again), one 1-line cart per `checkout` request, none
/// for the others.
async fn prepare(
    workload: &Workload,
    client: &reqwest::Client,
    requests: usize,
    made: Arc<Vec<String>>,
) -> Result<Arc<Vec<String>>, String> {
    let carts = match workload.args.op {
        Op::CartAdd if made.is_empty() => workload.args.carts,
        Op::Checkout => requests,
        _ => return Ok(made),
    };
    let (client, app) = (client.clone(), Arc::<str>::from(workload.args.app.as_str()));
    let variants = workload.args.variants;
    let with_line = workload.args.op == Op::Checkout;
    let made = closed_loop(workload.args.connections, carts, None, move |i| {
        let (client, app) = (client.clone(), app.clone());
        async move {
            let cart = send(&client, "", post_json(&format!("{app}/v1/carts"), None)).await?;
            let cart = cart["cartId"]
                .as_str()
                .ok_or_else(|| format!("no cartId in {cart}"))?
                .to_owned();
            if with_line {
                let line = json!({ "variantId": format!("var-{}", i % variants + 1), "quantity": 1 });
                let url = format!("{app}/v1/carts/{cart}/items");
                send(&client, "", post_json(&url, Some(line))).await?;
            }
            Ok(cart)
        }
    })
    .await;
    match made.first_error {
        Some(error) => Err(format!("making carts: {error}")),
        None => Ok(Arc::new(made.values)),
    }
}

fn post_json(url: &str, body: Option<Value>) -> Call {
    Call {
        method: reqwest::Method::POST,
        url: url.to_owned(),
        body,
        idempotency_key: None,
        token: false,
    }
}

/// Sends `call` and returns its JSON answer if the status is 2xx.
async fn send(client: &reqwest::Client, token: &str, call: Call) -> Result<Value, String> {
    let mut request = client.request(call.method.clone(), &call.url);
    if let Some(body) = &call.body {
        request = request.json(body);
    }
    if let Some(key) = &call.idempotency_key {
        request = request.header("idempotency-key", key);
    }
    if call.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{} {}: {e}", call.method, call.url))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("{} {}: reading the answer: {e}", call.method, call.url))?;
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("{} {}: {status} {value}", call.method, call.url));
    }
    Ok(value)
}

/// What a closed-loop run gives: the values of the requests that succeeded (in no
/// particular order), the first error, and the wall clock.
struct ClosedLoop<T> {
    values: Vec<T>,
    failed: usize,
    first_error: Option<String>,
    seconds: f64,
}

/// Runs `task(0..)` with `workers` at a time, back to back, until `requests` have been
/// started or `deadline` has passed.
async fn closed_loop<T, F, Fut>(
    workers: usize,
    requests: usize,
    deadline: Option<Duration>,
    task: F,
) -> ClosedLoop<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, String>> + Send,
{
    let task = Arc::new(task);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..workers.min(requests))
        .map(|_| {
            let (task, next) = (task.clone(), next.clone());
            tokio::spawn(async move {
                let mut done = ClosedLoop {
                    values: Vec::new(),
                    failed: 0,
                    first_error: None,
                    seconds: 0.0,
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests || deadline.is_some_and(|d| started.elapsed() >= d) {
                        return done;
                    }
                    match task(i).await {
                        Ok(value) => done.values.push(value),
                        Err(error) => {
                            done.failed += 1;
                            done.first_error.get_or_insert(error);
                        }
                    }
                }
            })
        })
        .collect();
    let mut all = ClosedLoop {
        values: Vec::new(),
        failed: 0,
        first_error: None,
        seconds: 0.0,
    };
    for handle in handles {
        match handle.await {
            Ok(done) => {
                all.values.extend(done.values);
                all.failed += done.failed;
                if all.first_error.is_none() {
                    all.first_error = done.first_error;
                }
            }
            Err(error) => {
                all.failed += 1;
                all.first_error.get_or_insert(format!("worker: {error}"));
            }
        }
    }
    all.seconds = started.elapsed().as_secs_f64();
    all
}

/// The outcome of the constant-rate phase.
struct Timetabled {
    histogram: Histogram<u64>,
    completed: usize,
    failed: usize,
    first_error: Option<String>,
    seconds: f64,
}

/// Sends `calls.len()` requests at `rate` per second on a fixed timetable, at most
/// `connections` at once, and records each one's latency from the moment it was due.
fn timetabled(
    runtime: &tokio::runtime::Handle,
    client: &reqwest::Client,
    token: &Arc<str>,
    connections: usize,
    calls: Vec<Call>,
    rate: f64,
) -> Timetabled {
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds"),
    ));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let last_answer = Arc::new(Mutex::new(Instant::now()));
    let connections = Arc::new(tokio::sync::Semaphore::new(connections));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(calls.len());
    for (i, call) in calls.into_iter().enumerate() {
        let due = start + interval.mul_f64(i as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let (client, token, connections) = (client.clone(), token.clone(), connections.clone());
        let (histogram, failed, first_error, last_answer) = (
            histogram.clone(),
            failed.clone(),
            first_error.clone(),
            last_answer.clone(),
        );
        tasks.push(runtime.spawn(async move {
            let outcome = match connections.acquire().await {
                Ok(_connection) => send(&client, &token, call).await,
                Err(error) => Err(format!("connection semaphore: {error}")),
            };
            let answered = Instant::now();
            let micros = u64::try_from((answered - due).as_micros()).unwrap_or(u64::MAX);
            lock(&histogram).saturating_record(micros.max(1));
            let mut last = lock(&last_answer);
            *last = (*last).max(answered);
            drop(last);
            if let Err(error) = outcome {
                failed.fetch_add(1, Ordering::Relaxed);
                lock(&first_error).get_or_insert(error);
            }
        }));
    }
    let total = tasks.len();
    runtime.block_on(async {
        for task in tasks {
            if let Err(error) = task.await {
                failed.fetch_add(1, Ordering::Relaxed);
                lock(&first_error).get_or_insert(format!("request task: {error}"));
            }
        }
    });
    let failed = failed.load(Ordering::Relaxed).min(total);
    let seconds = (*lock(&last_answer) - start).as_secs_f64();
    let histogram = lock(&histogram).clone();
    let first_error = lock(&first_error).take();
    Timetabled {
        histogram,
        completed: total - failed,
        failed,
        first_error,
        seconds,
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Redis's `used_memory` (INFO memory), in bytes.
async fn used_memory(url: &str) -> Result<i64, String> {
    let client = redis::Client::open(url).map_err(|e| format!("Redis URL: {e}"))?;
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("Redis: {e}"))?;
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut connection)
        .await
        .map_err(|e| format!("INFO memory: {e}"))?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|value| value.trim().parse().ok())
        .ok_or_else(|| "no used_memory in INFO memory".into())
}

/// Waits until `GET {app}/health/live` answers 200.
async fn wait_for(client: &reqwest::Client, app: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live = client
            .get(format!("{app}/health/live"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if live {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{app}/health/live did not answer 200 within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn rounded(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn run(args: Args, runtime: &tokio::runtime::Runtime) -> Result<Value, String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    runtime.block_on(wait_for(&client, &args.app))?;
    let op = match args.op {
        Op::Live => "live",
        Op::Reserve => "reserve",
        Op::CartAdd => "cart-add",
        Op::Quote => "quote",
        Op::Checkout => "checkout",
        Op::Availability => "availability",
    };
    let mut report = json!({ "op": op });
    let workload = Arc::new(Workload { args });
    let args = &workload.args;
    let token: Arc<str> = args.token.as_str().into();
    let mut carts = Arc::new(Vec::new());

    let rate = match args.rate {
        Some(rate) => rate,
        None => {
            carts = runtime.block_on(prepare(&workload, &client, args.requests, carts))?;
            let memory_before = match &args.redis_url {
                Some(url) => Some(runtime.block_on(used_memory(url))?),
                None => None,
            };
            let (shared, client, token, carts) =
                (workload.clone(), client.clone(), token.clone(), carts.clone());
            let phase = Some(Duration::from_secs_f64(args.seconds));
            let max = runtime.block_on(closed_loop(args.connections, args.requests, phase, move |i| {
                let call = shared.call("max", i, &carts);
                let (client, token) = (client.clone(), token.clone());
                async move { send(&client, &token, call).await.map(|_| ()) }
            }));
            if let (Some(url), Some(before)) = (&args.redis_url, memory_before) {
                let after = runtime.block_on(used_memory(url))?;
                let per = (after - before) as f64 / max.values.len().max(1) as f64;
                report["memory_bytes_per_request"] = json!(per.round() as i64);
            }
            if max.values.is_empty() {
                let error = max.first_error.unwrap_or_else(|| "no request was sent".into());
                return Err(format!("no request succeeded: {error}"));
            }
            let max_rate = max.values.len() as f64 / max.seconds;
            report["max_per_second"] = json!(rounded(max_rate));
            report["max_requests"] = json!(max.values.len());
            report["max_errors"] = json!(max.failed);
            if let Some(error) = max.first_error {
                report["firstError"] = json!(error);
            }
            if args.max_only {
                return Ok(report);
            }
            max_rate * args.fraction
        }
    };

    let count = ((rate * args.seconds).ceil() as usize).clamp(1, args.requests);
    carts = runtime.block_on(prepare(&workload, &client, count, carts))?;
    let calls: Vec<Call> = (0..count).map(|i| workload.call("rate", i, &carts)).collect();
    let outcome = timetabled(runtime.handle(), &client, &token, args.connections, calls, rate);
    let h = &outcome.histogram;
    report["offered_per_second"] = json!(rounded(rate));
    report["achieved_per_second"] = json!(rounded(outcome.completed as f64 / outcome.seconds));
    report["requests"] = json!(outcome.completed + outcome.failed);
    report["errors"] = json!(outcome.failed);
    report["p50_us"] = json!(h.value_at_quantile(0.5));
    report["p99_us"] = json!(h.value_at_quantile(0.99));
    report["p999_us"] = json!(h.value_at_quantile(0.999));
    report["max_us"] = json!(h.max());
    if let Some(error) = outcome.first_error {
        report["firstError"] = json!(error);
    }
    Ok(report)
}

fn main() -> ExitCode {
    commerce_tests::driver::main("rate_load", USAGE, parse_args, run)
}
