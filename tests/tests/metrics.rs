//! What an operator reads: `/metrics` (request latency by route template and status
//! class, dependency calls and errors, cache hits and misses, business counters, Redis
//! `INFO` gauges), the metrics token, `X-Request-Id`, the JSON request log, and the
//! Grafana dashboard's queries.
//!
//! The native server runs in the test process, so its in-process counters are shared by
//! the tests running beside these: checks on counters compare before and after and ask
//! for at least the change this test made.

use commerce_core::routes::ROUTES;
use commerce_tests::faults::ServeProcess;
use commerce_tests::{ADMIN_TOKEN, Caller, TestApp};
use serde_json::{Value, json};

/// `GET /metrics` as text (with the metrics token when given).
async fn scrape(app: &TestApp, token: Option<&str>) -> String {
    let mut req = app.http.get(format!("{}/metrics", app.base));
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

/// The value of the sample `series` (name with its labels, exactly as printed); 0 if the
/// series is absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A request for every route template, its placeholders filled in.
/// Every route as its label, `POST /v1/carts/{cart}/items`.
fn templates() -> Vec<String> {
    ROUTES
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

fn concrete(template: &str) -> (String, String) {
    let (method, path) = template.split_once(' ').unwrap();
    let path = path
        .replace("{variant}", "var-1")
        .replace("{holder}", "metrics-holder")
        .replace("{cart}", "c_00000000000000000000000000000000")
        .replace("{line}", "l_1")
        .replace("{customer}", "cust-1")
        .replace("{bundle}", "bundle-1")
        .replace("{session}", "cs_00000000000000000000000000000000");
    (method.to_owned(), path)
}

#[tokio::test]
async fn every_route_template_is_a_route_the_host_answers() {
    let (app, _gateway) = TestApp::shop(20, |c| c).await;
    for template in &templates() {
        let (method, path) = concrete(template);
        let body = (method != "GET" && method != "DELETE").then(|| json!({}));
        let reply = app.call(&method, &path, body, Caller::Admin).await;
        assert_ne!(reply.code(), "ROUTE_NOT_FOUND", "{template}: {reply:?}");
        assert_ne!(reply.status, 405, "{template}: {reply:?}");
    }
    app.finish().await;
}

#[tokio::test]
async fn requests_are_measured_by_route_template_and_status_class() {
    let (app, _gateway) = TestApp::shop(20, |c| c).await;
    let cart = app.new_cart().await;
    let items = format!("/v1/carts/{cart}/items");
    assert_eq!(
        app.post(&items, json!({"variantId": "var-1", "quantity": 1}))
            .await
            .status,
        200
    );
    assert_eq!(app.post(&items, json!({"variantId": "var-1"})).await.status, 400);
    assert_eq!(app.get("/v1/no-such-store/x").await.status, 404);
    let text = scrape(&app, None).await;
    let series = |route: &str, class: &str| {
        format!("commerce_http_request_duration_seconds_count{{route=\"{route}\",status=\"{class}\"}}")
    };
    assert!(
        sample(&text, &series("POST /v1/carts/{cart}/items", "2xx")) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, &series("POST /v1/carts/{cart}/items", "4xx")) >= 1.0,
        "{text}"
    );
    assert!(sample(&text, &series("POST /v1/carts", "2xx")) >= 1.0, "{text}");
    assert!(sample(&text, &series("other", "4xx")) >= 1.0, "{text}");
    assert!(
        text.contains(
            "commerce_http_request_duration_seconds_bucket{route=\"POST /v1/carts/{cart}/items\",status=\"2xx\",le=\"+Inf\"}"
        ),
        "{text}"
    );
    // No raw path or id reaches a label.
    assert!(!text.contains(&cart), "{text}");
    assert!(!text.contains("no-such-store"), "{text}");
    assert!(
        sample(
            &text,
            "commerce_requests_total{store=\"/v1/carts\",status=\"400\"}"
        ) >= 1.0,
        "{text}"
    );
    app.finish().await;
}

#[tokio::test]
async fn every_route_template_is_labelled_in_metrics() {
    let (app, _gateway) = TestApp::shop(20, |c| c).await;
    for template in &templates() {
        let (method, path) = concrete(template);
        let body = (method != "GET" && method != "DELETE").then(|| json!({}));
        app.call(&method, &path, body, Caller::Admin).await;
    }
    let text = scrape(&app, None).await;
    for template in &templates() {
        assert!(
            text.contains(&format!(
                "commerce_http_request_duration_seconds_count{{route=\"{template}\","
            )),
            "{template} is not labelled: {text}"
        );
    }
    app.finish().await;
}

#[tokio::test]
async fn dependency_calls_and_the_redis_server_are_in_metrics() {
    let app = TestApp::spawn().await;
    // Even on Spin, where the instance serves only this request, the scrape's own probes
    // are calls it measured.
    let text = scrape(&app, None).await;
    for dependency in ["redis", "postgres"] {
        let count = sample(&text, &format!("commerce_{dependency}_call_seconds_count"));
        assert!(count >= 1.0, "{dependency}: {text}");
        assert!(
            text.contains(&format!(
                "commerce_dependency_errors_total{{dependency=\"{dependency}\",kind=\"timeout\"}}"
            )),
            "{text}"
        );
    }
    assert!(sample(&text, "commerce_redis_used_memory_bytes") > 0.0, "{text}");
    assert!(sample(&text, "commerce_redis_connected_clients") >= 1.0, "{text}");
    assert!(
        sample(&text, "commerce_redis_mem_fragmentation_ratio") > 0.0,
        "{text}"
    );
    for gauge in [
        "commerce_redis_keys ",
        "commerce_redis_expired_keys_total ",
        "commerce_redis_evicted_keys_total ",
        "commerce_redis_instantaneous_ops_per_sec ",
    ] {
        assert!(text.contains(gauge), "{gauge}: {text}");
    }
    app.finish().await;
}

#[tokio::test]
async fn dependency_errors_are_counted_by_kind() {
    use commerce_core::Settings;
    use commerce_core::http::Request;
    use commerce_native::{EnvConfig, build_app};

    // Nothing listens on port 1: both connections are refused.
    let config = EnvConfig::new()
        .set("redis_url", "redis://127.0.0.1:1")
        .set("database_url", "postgres://postgres@127.0.0.1:1/commerce")
        .set("log_level", "off");
    let down = build_app(Settings::from_config(&config).unwrap()).unwrap();
    let before = commerce_core::handle(&down, get("/metrics"), commerce_core::Scope::All).await;
    let before = String::from_utf8(before.body).unwrap();
    let health = commerce_core::handle(&down, get("/health"), commerce_core::Scope::All).await;
    assert_eq!(health.status, 503);
    // As every 503 does, it says when to ask again.
    assert!(
        health
            .headers
            .iter()
            .any(|(name, value)| name == "retry-after" && value == "1"),
        "{:?}",
        health.headers
    );
    let after = commerce_core::handle(&down, get("/metrics"), commerce_core::Scope::All).await;
    let after = String::from_utf8(after.body).unwrap();
    for dependency in ["redis", "postgres"] {
        let series =
            format!("commerce_dependency_errors_total{{dependency=\"{dependency}\",kind=\"refused\"}}");
        assert!(
            sample(&after, &series) >= sample(&before, &series) + 1.0,
            "{series}: {after}"
        );
    }

    fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
            ..Request::default()
        }
    }
}

/// A payment gateway that hangs is a `timeout`, one that is down is `refused`, and a call
/// the request's deadline cut off (the server stopped waiting) is a `timeout` too: an
/// operator sees which dependency a 503 waited on.
#[tokio::test]
async fn gateway_failures_are_counted_as_refused_or_timeout() {
    use commerce_core::Settings;
    use commerce_core::ports::{Http, OutboundRequest};
    use commerce_native::{EnvConfig, build_app};

    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_at = hung.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hung.accept().await {
            held.push(socket);
        }
    });
    let closed_at = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let config = EnvConfig::new()
        .set("gateway_timeout_ms", "300")
        .set("log_level", "off");
    let app = build_app(Settings::from_config(&config).unwrap()).unwrap();
    let to = |addr: std::net::SocketAddr| OutboundRequest {
        method: "POST".into(),
        url: format!("http://{addr}/v1/payment_intents"),
        headers: Vec::new(),
        body: Vec::new(),
    };
    let count = |kind: &str| {
        let mut text = String::new();
        commerce_core::metrics::render(&mut text);
        let series = format!("commerce_dependency_errors_total{{dependency=\"gateway\",kind=\"{kind}\"}}");
        sample(&text, &series)
    };
    let (timeouts, refusals) = (count("timeout"), count("refused"));

    let hung_call = app.http.send(to(hung_at)).await.unwrap_err();
    assert!(hung_call.to_string().contains("timed out"), "{hung_call}");
    let refused_call = app.http.send(to(closed_at)).await.unwrap_err();
    assert!(
        refused_call.to_string().to_lowercase().contains("refused"),
        "{refused_call}"
    );
    let cut = tokio::time::timeout(std::time::Duration::from_millis(50), app.http.send(to(hung_at))).await;
    assert!(cut.is_err(), "the deadline cut the call off");

    assert!(
        count("timeout") >= timeouts + 2.0,
        "a hung gateway and a call cut off"
    );
    assert!(count("refused") >= refusals + 1.0, "a gateway that is down");
}

#[tokio::test]
async fn cache_hits_and_misses_are_counted() {
    let (app, _gateway) = TestApp::shop(20, |c| c).await;
    let counts = |text: &str, cache: &str| {
        (
            sample(text, &format!("commerce_cache_hits_total{{cache=\"{cache}\"}}")),
            sample(text, &format!("commerce_cache_misses_total{{cache=\"{cache}\"}}")),
        )
    };
    // A bundle read twice: loaded from PostgreSQL once, then from the cache.
    let before = scrape(&app, None).await;
    assert_eq!(app.get("/v1/bundles/bundle-1").await.status, 200);
    assert_eq!(app.get("/v1/bundles/bundle-1").await.status, 200);
    let after = scrape(&app, None).await;
    let ((hits, misses), (hits2, misses2)) = (counts(&before, "bundle"), counts(&after, "bundle"));
    assert!(misses2 >= misses + 1.0 && hits2 >= hits + 1.0, "{after}");

    // A variant whose stock Redis lost: loaded from PostgreSQL, then read from Redis.
    let mut redis = app.redis.clone();
    let _: () = redis::cmd("DEL")
        .arg(app.variant_keys("var-2").stock)
        .query_async(&mut redis)
        .await
        .unwrap();
    let before = scrape(&app, None).await;
    assert_eq!(app.get("/v1/inventory/var-2").await.status, 200);
    assert_eq!(app.get("/v1/inventory/var-2").await.status, 200);
    let after = scrape(&app, None).await;
    let ((hits, misses), (hits2, misses2)) = (counts(&before, "stock"), counts(&after, "stock"));
    assert!(misses2 >= misses + 1.0 && hits2 >= hits + 1.0, "{after}");

    // A cart add checks the catalog: the variant is known in PostgreSQL, then cached.
    let before = scrape(&app, None).await;
    let cart = app.new_cart().await;
    let add = json!({"variantId": "var-3", "quantity": 1});
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), add.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        app.post(&format!("/v1/carts/{cart}/items"), add).await.status,
        200
    );
    let after = scrape(&app, None).await;
    let ((hits, misses), (hits2, misses2)) = (counts(&before, "catalog"), counts(&after, "catalog"));
    assert!(misses2 >= misses + 1.0 && hits2 >= hits + 1.0, "{after}");

    // A variant quoted twice: its ruleset entries read from Redis, then held in process.
    let before = scrape(&app, None).await;
    let lines = json!({"lines": [{"variantId": "var-7", "quantity": 2}]});
    for _ in 0..2 {
        let quote = app.post("/v1/pricing/quote", lines.clone()).await;
        assert_eq!(quote.status, 200, "{quote:?}");
    }
    let after = scrape(&app, None).await;
    let ((hits, misses), (hits2, misses2)) = (counts(&before, "ruleset"), counts(&after, "ruleset"));
    assert!(misses2 >= misses + 1.0 && hits2 >= hits + 1.0, "{after}");
    app.finish().await;
}

/// The tests that count hold requests run one at a time: the counters are the process's.
static COUNTING_HOLDS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn reservations_granted_and_refused_are_counted() {
    let _one = COUNTING_HOLDS.lock().await;
    let app = TestApp::spawn().await;
    app.seed(2).await;
    let before = scrape(&app, None).await;
    let reserve = |quantity: i64| json!({ "cartId": "metrics-holder", "items": [{ "variantId": "var-1", "quantity": quantity }] });
    let granted = app
        .call(
            "POST",
            "/v1/inventory/reservations",
            Some(reserve(1)),
            Caller::Admin,
        )
        .await;
    assert_eq!(granted.status, 201, "{granted:?}");
    let refused = app
        .call(
            "POST",
            "/v1/inventory/reservations",
            Some(reserve(1000)),
            Caller::Admin,
        )
        .await;
    assert_eq!(refused.status, 409, "{refused:?}");
    let after = scrape(&app, None).await;
    for outcome in ["granted", "refused"] {
        let series = format!("commerce_reservations_total{{outcome=\"{outcome}\"}}");
        assert!(
            sample(&after, &series) >= sample(&before, &series) + 1.0,
            "{after}"
        );
    }
    app.finish().await;
}

/// A checkout is one hold request, granted at its start: taking the payment extends the
/// same holds to the session's lifetime and counts nothing more.
#[tokio::test]
async fn a_checkout_counts_as_one_hold_request() {
    let _one = COUNTING_HOLDS.lock().await;
    let (app, _gateway) = TestApp::shop(2, |c| c).await;
    let granted = "commerce_reservations_total{outcome=\"granted\"}";
    let before = sample(&scrape(&app, None).await, granted);
    app.paying_session(&[("var-1", 1)], "counted-once").await;
    let after = sample(&scrape(&app, None).await, granted);
    assert_eq!(after - before, 1.0, "a checkout start and its payment intent");
    app.finish().await;
}

#[tokio::test]
async fn metrics_need_the_metrics_token_when_one_is_set() {
    let app = TestApp::spawn_with(|c| c.set("metrics_token", "scrape-me")).await;
    let url = format!("{}/metrics", app.base);
    // None is 401; another token (the admin's too) is 403, as the admin routes answer.
    for (token, status, code) in [
        (None, 401, "UNAUTHORIZED"),
        (Some("wrong"), 403, "FORBIDDEN"),
        (Some(ADMIN_TOKEN), 403, "FORBIDDEN"),
    ] {
        let mut req = app.http.get(&url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), status, "{token:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], code);
    }
    assert!(
        scrape(&app, Some("scrape-me"))
            .await
            .contains("commerce_dependency_up")
    );
    app.finish().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_made_up() {
    let app = TestApp::spawn().await;
    let id_of = |res: &reqwest::Response| {
        res.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    for path in ["/health", "/v1/no-such-route", "/v1/inventory/a:b"] {
        let url = format!("{}{path}", app.base);
        let sent = app
            .http
            .get(&url)
            .header("x-request-id", "abc-123.X_y")
            .send()
            .await
            .unwrap();
        assert_eq!(id_of(&sent).as_deref(), Some("abc-123.X_y"), "{path}");
        for insane in ["has space", "quote\"d", &"x".repeat(129)] {
            let replaced = app
                .http
                .get(&url)
                .header("x-request-id", insane)
                .send()
                .await
                .unwrap();
            let id = id_of(&replaced).unwrap();
            assert!(id.starts_with("req_") && id != insane, "{path} {insane:?}: {id}");
        }
        let made = app.http.get(&url).send().await.unwrap();
        let again = app.http.get(&url).send().await.unwrap();
        let (made, again) = (id_of(&made).unwrap(), id_of(&again).unwrap());
        assert!(made.starts_with("req_") && made != again, "{made} {again}");
    }
    app.finish().await;
}

#[tokio::test]
async fn every_request_leaves_one_json_log_line() {
    let app = TestApp::spawn().await;
    let serve = ServeProcess::start(&app, &[("log_level", "info")]).await;
    let cart = app
        .http
        .post(format!("{}/v1/carts", serve.base))
        .header("x-request-id", "log-test-1")
        .send()
        .await
        .unwrap();
    assert_eq!(cart.status(), 201);
    let missing = app
        .http
        .get(format!("{}/v1/nowhere", serve.base))
        .header("x-request-id", "log-test-2")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let line_of = |id: &str| -> Value {
        let log = serve.log_text();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(id)).collect();
        assert_eq!(lines.len(), 1, "{id}: {log}");
        serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {}", lines[0]))
    };
    let line = line_of("\"log-test-1\"");
    assert_eq!(line["level"], "info");
    assert_eq!(line["route"], "/v1/carts");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["status"], 201);
    assert_eq!(line["requestId"], "log-test-1");
    assert!(line["durationMs"].as_f64().is_some_and(|ms| ms > 0.0), "{line}");
    assert!(line["ts"].as_str().is_some_and(|ts| ts.ends_with('Z')), "{line}");
    let line = line_of("\"log-test-2\"");
    assert_eq!(
        (line["route"].as_str(), line["method"].as_str()),
        (Some("other"), Some("GET"))
    );
    assert_eq!(line["status"], 404);

    // A 500 tells the caller only that something went wrong and under which request id;
    // what went wrong (here a cart hash whose currency was overwritten by hand) is in the
    // log line of that request.
    let cart = cart.json::<Value>().await.unwrap()["cartId"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut redis = app.redis.clone();
    let _: () = redis::AsyncCommands::hset(&mut redis, app.cart_key(&cart), "currency", "e")
        .await
        .unwrap();
    let broken = app
        .http
        .get(format!("{}/v1/carts/{cart}", serve.base))
        .header("x-request-id", "log-test-500")
        .send()
        .await
        .unwrap();
    assert_eq!(broken.status(), 500);
    assert_eq!(broken.headers()["x-request-id"], "log-test-500");
    let body: Value = broken.json().await.unwrap();
    assert_eq!(
        (body["error"]["code"].as_str(), body["error"]["message"].as_str()),
        (Some("INTERNAL"), Some(commerce_core::error::INTERNAL_MESSAGE)),
        "{body}"
    );
    let line = line_of("\"log-test-500\"");
    assert_eq!(
        (line["level"].as_str(), line["status"].as_u64()),
        (Some("error"), Some(500))
    );
    assert_eq!(line["error"], "a cart without a valid currency", "{line}");
    drop(serve);

    // At `warn`, requests that succeed or fail on the client's side leave no line.
    let quiet = ServeProcess::start(&app, &[("log_level", "warn")]).await;
    let res = app
        .http
        .get(format!("{}/health", quiet.base))
        .header("x-request-id", "log-test-3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(!quiet.log_text().contains("log-test-3"), "{}", quiet.log_text());
    drop(quiet);
    app.finish().await;
}

#[tokio::test]
async fn the_grafana_dashboard_queries_only_metrics_that_exist() {
    let dashboard: Value = serde_json::from_str(include_str!("../../docs/grafana/commerce-dashboard.json"))
        .expect("the dashboard is JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = target["expr"].as_str() {
                exprs.push(expr.to_owned());
            }
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
    }
    let app = TestApp::spawn().await;
    let text = scrape(&app, None).await;
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut queried = 0;
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("commerce_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| families.contains(f))
                .unwrap_or(&name);
            assert!(
                families.contains(&family),
                "{name} (in {expr}) is not in /metrics:\n{text}"
            );
            queried += 1;
        }
    }
    assert!(queried >= 15, "{exprs:?}");
    app.finish().await;
}
