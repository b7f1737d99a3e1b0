//! `checkout_load`: full checkouts per second through a running `commerce serve`.
//!
//! Every buyer walks the whole purchase over HTTP: a new cart, one unit of one of
//! `var-1 … var-<variants>` (round robin), `POST /v1/checkout` with its own
//! `Idempotency-Key`, `POST /v1/checkout/{session}/payment-intent`, then the signed
//! `payment_intent.succeeded` event delivered to the webhook, which must answer
//! `COMPLETED`. `--buyers` buyers run with `--concurrency` at a time; the time is the wall
//! clock from the first buyer's start to the last one's end.
//!
//! The payment gateway is the crate's fake Stripe-style gateway, run in this process. The
//! app must be configured with its URL, known only once it listens, so the driver starts
//! the fake first, writes its base URL to `--gateway-url-file` (then started apps read it),
//! waits until the app answers `/health`, and only then runs the buyers.
//!
//! Prints nothing but one JSON line on stdout:
//! `{"checkouts":N,"seconds":…,"per_second":…,"failed":…,"cpuSeconds":…}` where
//! `per_second` counts the checkouts that completed and `cpuSeconds` is the driver's own CPU
//! time (user + system, its fake gateway included), plus `firstError` when some failed.
//!
//! ```text
//! checkout_load --app http://127.0.0.1:3098 --buyers 2000 --concurrency 32 \
//!     --gateway-key sk_test_bench --webhook-secret whsec_bench \
//!     --gateway-url-file /tmp/gateway-url
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use commerce_tests::driver::own_cpu_seconds;
use commerce_tests::gateway::FakeGateway;
use serde_json::{Value, json};

/// The server's allocator (native/src/main.rs): the driver shares the machine it measures.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: checkout_load --app URL --gateway-url-file FILE [--buyers N] \
[--concurrency C] [--gateway-key K] [--webhook-secret S] [--variants V] [--run-id ID] \
[--wait-seconds W]";

struct Args {
    app: String,
    gateway_url_file: String,
    buyers: usize,
    concurrency: usize,
    gateway_key: String,
    webhook_secret: String,
    variants: usize,
    run_id: String,
    wait: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        app: String::new(),
        gateway_url_file: String::new(),
        buyers: 1000,
        concurrency: 32,
        gateway_key: "sk_test_bench".into(),
        webhook_secret: "whsec_bench".into(),
        variants: 10,
        run_id: format!("{}", commerce_core::auth::now_s()),
        wait: Duration::from_secs(60),
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |value: &str| commerce_tests::driver::count(&flag, value);
        match flag.as_str() {
            "--app" => args.app = value.trim_end_matches('/').to_owned(),
            "--gateway-url-file" => args.gateway_url_file = value,
            "--buyers" => args.buyers = number(&value)?,
            "--concurrency" => args.concurrency = number(&value)?,
            "--gateway-key" => args.gateway_key = value,
            "--webhook-secret" => args.webhook_secret = value,
            "--variants" => args.variants = number(&value)?,
            "--run-id" => args.run_id = value,
            "--wait-seconds" => args.wait = Duration::from_secs(number(&value)? as u64),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.app.is_empty() || args.gateway_url_file.is_empty() {
        return Err("--app and --gateway-url-file are required".into());
    }
    Ok(args)
}

/// One buyer's whole purchase; `Err` says which step went wrong and how.
async fn buy(
    client: &reqwest::Client,
    gateway: &FakeGateway,
    app: &str,
    variant: &str,
    idempotency_key: &str,
) -> Result<(), String> {
    let cart = post(client, &format!("{app}/v1/carts"), None, None, 201).await?;
    let cart = text(&cart, "cartId")?;
    post(
        client,
        &format!("{app}/v1/carts/{cart}/items"),
        Some(json!({ "variantId": variant, "quantity": 1 })),
        None,
        200,
    )
    .await?;
    let started = post(
        client,
        &format!("{app}/v1/checkout"),
        Some(json!({ "cartId": cart })),
        Some(idempotency_key),
        201,
    )
    .await?;
    let session = text(&started, "sessionId")?;
    let intent = post(
        client,
        &format!("{app}/v1/checkout/{session}/payment-intent"),
        None,
        None,
        200,
    )
    .await?;
    let event = gateway.event("payment_intent.succeeded", text(&intent, "paymentIntentId")?);
    let (status, body) = gateway.deliver(app, &event).await;
    if status != 200 || body["state"] != "COMPLETED" {
        return Err(format!("webhook: {status} {body}"));
    }
    Ok(())
}

/// POSTs `body` (JSON) to `url` and returns the JSON answer if its status is `expected`.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Option<Value>,
    idempotency_key: Option<&str>,
    expected: u16,
) -> Result<Value, String> {
    let mut request = client.post(url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let response = request.send().await.map_err(|e| format!("POST {url}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| format!("POST {url}: reading the answer: {e}"))?;
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status != expected {
        return Err(format!("POST {url}: {status} {value}"));
    }
    Ok(value)
}

fn text<'v>(value: &'v Value, field: &str) -> Result<&'v str, String> {
    value[field]
        .as_str()
        .ok_or_else(|| format!("no {field} in {value}"))
}

/// Waits until `GET {app}/health` answers 200.
async fn wait_for(client: &reqwest::Client, app: &str, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        let healthy = client
            .get(format!("{app}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if healthy {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("{app}/health did not answer 200 within {wait:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(args: Args) -> Result<Value, String> {
    let gateway = Arc::new(FakeGateway::start(&args.gateway_key, &args.webhook_secret).await);
    // Written beside, then renamed, so a reader never sees half a URL.
    let partial = format!("{}.partial", args.gateway_url_file);
    std::fs::write(&partial, &gateway.base)
        .and_then(|()| std::fs::rename(&partial, &args.gateway_url_file))
        .map_err(|e| format!("writing {}: {e}", args.gateway_url_file))?;

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    wait_for(&client, &args.app, args.wait).await?;

    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
    let app: Arc<str> = args.app.into();
    let run_id: Arc<str> = args.run_id.into();
    let (buyers, variants) = (args.buyers, args.variants);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency.min(buyers))
        .map(|_| {
            let (client, gateway, app, run_id) =
                (client.clone(), gateway.clone(), app.clone(), run_id.clone());
            let (next, failed, first_error) = (next.clone(), failed.clone(), first_error.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= buyers {
                        break;
                    }
                    let variant = format!("var-{}", i % variants + 1);
                    let key = format!("load-{run_id}-{i}");
                    if let Err(error) = buy(&client, &gateway, &app, &variant, &key).await {
                        failed.fetch_add(1, Ordering::Relaxed);
                        let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        first.get_or_insert(error);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        if let Err(error) = worker.await {
            // A panic (the fake's delivery failing outright) costs the buyer it was on.
            failed.fetch_add(1, Ordering::Relaxed);
            let mut first = first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert(format!("buyer task: {error}"));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed).min(buyers);
    let completed = buyers - failed;
    let mut report = json!({
        "checkouts": buyers,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "per_second": (completed as f64 / seconds * 10.0).round() / 10.0,
        "failed": failed,
        "cpuSeconds": (own_cpu_seconds() * 1000.0).round() / 1000.0,
    });
    if let Some(error) = first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        report["firstError"] = json!(error);
    }
    Ok(report)
}

fn main() -> ExitCode {
    commerce_tests::driver::main("checkout_load", USAGE, parse_args, |args, runtime| {
        runtime.block_on(run(args))
    })
}
