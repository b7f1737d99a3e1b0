//! The floor driver of `scripts/bench --before REV --purchases` (`src/bin/call_floor.rs`),
//! run for a second against the test services: it makes both kinds of call, measures what
//! it says it measures, and leaves no table behind.

use commerce_core::Settings;
use commerce_native::EnvConfig;
use commerce_tests::TestApp;
use commerce_tests::driver::report_of;
use serde_json::Value;

/// Runs the driver with `args`; its exit code, its JSON report (Null if none) and stderr.
async fn call_floor(args: Vec<String>) -> (Option<i32>, Value, String) {
    let (status, report, stderr) = report_of(env!("CARGO_BIN_EXE_call_floor"), args).await;
    (status.code(), report, stderr)
}

fn number(report: &Value, field: &str) -> f64 {
    report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_floor_driver_times_both_kinds_of_call_and_drops_its_table() {
    let app = TestApp::spawn().await;
    let redis_url = std::env::var("COMMERCE_REDIS_URL").expect("COMMERCE_REDIS_URL");
    let args = [
        "--redis",
        &redis_url,
        "--database",
        &app.database_url(),
        "--seconds",
        "1",
        "--concurrency",
        "8",
        "--pool",
        "2",
    ];
    let (code, report, stderr) = call_floor(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(number(&report, "redisCalls") > 0.0, "{report}");
    assert!(number(&report, "pgRows") > 0.0, "{report}");
    // The pool's own connections, each a backend whose CPU is read: no more, no fewer.
    assert_eq!(number(&report, "pgBackends"), 2.0, "{report}");
    for field in ["redisClientUs", "redisServerUs", "pgClientUs", "pgBackendUs"] {
        assert!(number(&report, field) > 0.0, "{field}: {report}");
    }
    let left = app
        .pg
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'call_floor_rows'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(left, 0, "the driver's table is dropped");

    // Without --pool, the pool is the server's own, sized by the same settings and cores (and
    // more callers than connections, so that every one of them opens).
    let settings = Settings::from_config(&EnvConfig::new()).unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = settings.database_pool_size_for(cores);
    let callers = (2 * pool).to_string();
    let args = [&args[..6], &["--concurrency", &callers]].concat();
    let (code, report, stderr) = call_floor(args.iter().map(|s| s.to_string()).collect()).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(number(&report, "pgBackends"), pool as f64, "{report}");

    let (code, report, stderr) = call_floor(vec!["--seconds".into(), "0".into()]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(report, Value::Null);
    assert!(
        stderr.contains("positive integer") && stderr.contains("usage"),
        "{stderr}"
    );
    app.finish().await;
}
