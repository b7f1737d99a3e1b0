//! The constant-rate load driver of `scripts/bench --latency` and `--growth`
//! (`src/bin/rate_load.rs`), run small against a test app: what it reports is what the
//! app saw.

use commerce_tests::driver::report_of;
use commerce_tests::{ADMIN_TOKEN, TestApp};
use serde_json::Value;

/// Runs the driver; whether it succeeded, its JSON report (Null if none) and its stderr.
async fn rate_load(args: Vec<String>) -> (bool, Value, String) {
    let (status, report, stderr) = report_of(env!("CARGO_BIN_EXE_rate_load"), args).await;
    (status.success(), report, stderr)
}

fn args(app: &TestApp, rest: &[&str]) -> Vec<String> {
    let mut args = vec!["--app".to_owned(), app.base.clone()];
    args.extend(rest.iter().map(|s| s.to_string()));
    args
}

fn number(report: &Value, field: &str) -> f64 {
    report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_reservation_at_half_the_maximum_rate_is_a_hold_and_is_timed() {
    let app = TestApp::spawn().await;
    app.seed(1).await;
    assert_eq!(app.set_on_hand("var-1", 1_000_000).await.status, 200);

    let (ok, report, stderr) = rate_load(args(
        &app,
        &[
            "--op",
            "reserve",
            "--token",
            ADMIN_TOKEN,
            "--variant",
            "var-1",
            "--connections",
            "4",
            "--seconds",
            "1",
            "--requests",
            "400",
        ],
    ))
    .await;
    assert!(ok, "rate_load failed: {stderr}");
    assert_eq!(report["op"], "reserve");
    assert_eq!(
        (report["errors"].as_u64(), report["max_errors"].as_u64()),
        (Some(0), Some(0)),
        "{report}"
    );
    // Half the measured maximum is offered, for at most a second's worth of requests.
    let (max, offered) = (
        number(&report, "max_per_second"),
        number(&report, "offered_per_second"),
    );
    assert!((offered - max / 2.0).abs() <= 0.1, "{report}");
    // A second's worth is the rate's ceiling; the report rounds the rate to 0.1, so the
    // ceiling of the rate as offered lies between those of the rounded rate ± 0.05.
    let requests = number(&report, "requests");
    let due = |rate: f64| rate.ceil().min(400.0);
    assert!(
        (due(offered - 0.05)..=due(offered + 0.05)).contains(&requests),
        "{report}"
    );
    let percentiles = ["p50_us", "p99_us", "p999_us", "max_us"].map(|p| number(&report, p));
    assert!(percentiles[0] >= 1.0 && percentiles.is_sorted(), "{report}");
    // Every request was a new holder's unit, in both phases (the check also holds the
    // holds set, the quantities and the reserved total to each other).
    let (stock, reserved) = app.check_holds("var-1").await;
    let sent = number(&report, "max_requests") + requests;
    assert_eq!((stock, reserved as f64), (1_000_000, sent), "{report}");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_given_rate_is_offered_on_its_timetable() {
    let app = TestApp::spawn().await;
    let (ok, report, stderr) = rate_load(args(
        &app,
        &[
            "--op",
            "live",
            "--rate",
            "200",
            "--seconds",
            "1",
            "--connections",
            "4",
        ],
    ))
    .await;
    assert!(ok, "rate_load failed: {stderr}");
    assert_eq!(report["requests"].as_u64(), Some(200), "{report}");
    assert!(
        report.get("max_per_second").is_none(),
        "no maximum was measured: {report}"
    );
    // 200 requests due over 995 ms: the last answer comes about a second after the first
    // was due, however fast each one is.
    let achieved = number(&report, "achieved_per_second");
    assert!((150.0..=205.0).contains(&achieved), "{report}");
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_requests_fail_the_run_instead_of_timing_it() {
    let app = TestApp::spawn().await;
    let (ok, report, stderr) = rate_load(args(
        &app,
        &[
            "--op",
            "quote",
            "--cart",
            "no-such-cart",
            "--seconds",
            "1",
            "--connections",
            "2",
        ],
    ))
    .await;
    assert!(!ok, "a run of only failed quotes succeeded: {report}");
    assert!(
        stderr.contains("no request succeeded") && stderr.contains("404"),
        "{stderr}"
    );
    app.finish().await;
}
