//! `commerce serve` under slow, idle and too many connections: each is closed or refused
//! in its configured time, and other clients are still served fast.

use std::time::{Duration, Instant};

use commerce_core::ports::Sql;
use commerce_tests::TestApp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn connect(app: &TestApp) -> TcpStream {
    TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection (or `within` passes); returns what came
/// and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&seen).into_owned(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&seen).into_owned(), false),
        }
    }
}

async fn health_within(app: &TestApp) -> Duration {
    let started = Instant::now();
    let reply = app.get("/health").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed_in_time_and_others_are_served() {
    let app = TestApp::spawn_with(|c| {
        c.set("http_header_timeout_ms", "600")
            .set("http_idle_timeout_ms", "800")
            .set("http_body_timeout_ms", "600")
    })
    .await;
    // Slow headers: a request line and half a header, then nothing.
    let mut slow = Vec::new();
    for _ in 0..100 {
        let mut s = connect(&app).await;
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    // Idle: connected, never a byte.
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(connect(&app).await);
    }
    // Slow body: the headers promise 100 bytes, 10 come.
    let mut body = connect(&app).await;
    body.write_all(
        b"POST /v1/inventory/availability HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"variant",
    )
    .await
    .unwrap();

    assert!(health_within(&app).await < Duration::from_millis(500));

    for (i, s) in slow.iter_mut().enumerate() {
        let (_, closed) = read_until_closed(s, Duration::from_secs(3)).await;
        assert!(closed, "slow-header connection {i} still open");
    }
    for (i, s) in idle.iter_mut().enumerate() {
        let (_, closed) = read_until_closed(s, Duration::from_secs(3)).await;
        assert!(closed, "idle connection {i} still open");
    }
    let (answer, closed) = read_until_closed(&mut body, Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    assert!(closed || answer.contains("408"));

    // A kept-alive connection that goes on talking is not idle.
    let mut talking = connect(&app).await;
    for _ in 0..4 {
        talking
            .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 2048];
        let n = talking.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(health_within(&app).await < Duration::from_millis(500));
    app.finish().await;
}

/// A kept-alive connection waiting for its next request is idle, not slow: it lives for
/// the idle timeout even when the header timeout is shorter, which then counts only from
/// the first byte of a head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_lives_for_the_idle_timeout_not_the_header_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.set("http_header_timeout_ms", "400")
            .set("http_idle_timeout_ms", "1500")
    })
    .await;
    let mut kept = connect(&app).await;
    kept.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 2048];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(900)).await;
    // Still open after twice the header timeout: a new request on it is answered.
    kept.write_all(b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // A head that starts on it and stalls is cut at the header timeout.
    kept.write_all(b"GET /health/live HTTP/1.1\r\nx-slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (_, closed) = read_until_closed(&mut kept, Duration::from_secs(3)).await;
    assert!(closed, "a stalled head was not cut");
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    // And an idle one is closed at the idle timeout.
    let mut idle = connect(&app).await;
    let started = std::time::Instant::now();
    let (_, closed) = read_until_closed(&mut idle, Duration::from_secs(4)).await;
    assert!(closed);
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    app.finish().await;
}

/// No timeout of hyper's own cuts a connection short of the idle timeout: a kept-alive
/// connection, and a new one that has sent nothing yet, both still take a request after 31
/// s idle (hyper's header-read timeout, 30 s unless turned off, would have closed them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_is_cut_at_thirty_seconds_when_the_idle_timeout_is_longer() {
    let app = TestApp::spawn_with(|c| c.set("http_idle_timeout_ms", "40000")).await;
    let request = b"GET /health/live HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut buf = [0u8; 2048];
    let mut kept = connect(&app).await;
    kept.write_all(request).await.unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let mut fresh = connect(&app).await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    for (name, stream) in [("kept-alive", &mut kept), ("new", &mut fresh)] {
        stream.write_all(request).await.unwrap();
        let n = stream.read(&mut buf).await.unwrap();
        assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
            "the {name} connection was closed"
        );
    }
    app.finish().await;
}

/// `commerce serve` lifts its soft limit of open files to the hard one, so the connection
/// cap (1024 by default) is reached before the file limit (often 1024 too): past the file
/// limit new clients would wait unanswered instead of getting the cap's 503.
#[tokio::test]
async fn the_server_lifts_its_open_file_limit_to_the_hard_limit() {
    let app = TestApp::spawn().await;
    // The server inherits this soft limit; the hard one stays.
    let (soft, hard) = open_files(std::process::id());
    // Low enough to be below the hard limit, high enough for the tests beside this one.
    let lowered = (hard / 2).min(8192);
    set_soft_open_files(lowered);
    let serve = commerce_tests::faults::ServeProcess::start(&app, &[]).await;
    set_soft_open_files(soft);
    let (server_soft, server_hard) = open_files(serve.pid().expect("the server runs"));
    assert_eq!((server_soft, server_hard), (hard, hard));
    drop(serve);
    app.finish().await;

    fn open_files(pid: u32) -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
        let fields: Vec<u64> = line
            .split_whitespace()
            .filter_map(|f| {
                if f == "unlimited" {
                    Some(u64::MAX)
                } else {
                    f.parse().ok()
                }
            })
            .collect();
        (fields[0], fields[1])
    }

    fn set_soft_open_files(soft: u64) {
        // SAFETY: getrlimit and setrlimit read and write only the struct they are given.
        unsafe {
            let mut limit: libc::rlimit = std::mem::zeroed();
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
            limit.rlim_cur = soft;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_refused_cleanly_and_freed_slots_serve_again() {
    let app =
        TestApp::spawn_with(|c| c.set("max_connections", "20").set("http_idle_timeout_ms", "1000")).await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect(&app).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = connect(&app).await;
    let (answer, closed) = read_until_closed(&mut extra, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    assert!(answer.contains("SERVICE_UNAVAILABLE"), "{answer}");
    assert!(closed);

    // The idle ones are closed after their timeout and the server serves again.
    for s in &mut held {
        let (_, closed) = read_until_closed(s, Duration::from_secs(3)).await;
        assert!(closed);
    }
    assert!(health_within(&app).await < Duration::from_millis(500));
    app.finish().await;
}

/// The server keeps at most `database_pool_size` PostgreSQL connections, however many
/// statements are asked for at once: 40 statements of 50 ms each, at once, open exactly
/// that many backends (counted by PostgreSQL, by the pool's own application name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_keeps_at_most_its_pool_of_postgresql_connections() {
    let app = TestApp::spawn().await;
    for size in [2usize, 8] {
        let name = format!("{}_pool{size}", app.namespace);
        let config = commerce_native::EnvConfig::new()
            .set(
                "database_url",
                format!("{}&application_name={name}", app.database_url()),
            )
            .set("database_pool_size", size.to_string());
        let settings = commerce_core::Settings::from_config(&config).unwrap();
        let pooled = std::sync::Arc::new(commerce_native::build_app(settings).unwrap());
        let answers = commerce_tests::at_once(40, |_| {
            let pooled = pooled.clone();
            async move { pooled.sql.query("SELECT pg_sleep(0.05)::text", &[]).await.is_ok() }
        })
        .await;
        assert!(
            answers.iter().all(|ok| *ok),
            "every statement is answered, waiting its turn"
        );
        let row = app
            .pg
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                &[&name],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, i64>(0),
            size as i64,
            "PostgreSQL backends of a pool of {size}"
        );
        drop(pooled);
    }
    app.finish().await;
}

/// A body that breaks off (a chunk size that is not hex) is a 400, neither a 413 nor the
/// host's account of what broke; a body that stops coming is a 408 once
/// `http_body_timeout_ms` has passed. On both hosts: each reads the body itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_body_is_a_400_and_a_stalled_one_a_408() {
    let app = TestApp::spawn_with(|c| c.set("http_body_timeout_ms", "700")).await;
    let mut broken = connect(&app).await;
    broken
        .write_all(
            b"POST /v1/inventory/availability HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              transfer-encoding: chunked\r\nconnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut broken, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("MALFORMED_BODY"), "{answer}");
    assert!(!answer.contains("acktrace") && answer.len() < 1024, "{answer}");

    let mut stalled = connect(&app).await;
    stalled
        .write_all(
            b"POST /v1/inventory/availability HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"variant",
        )
        .await
        .unwrap();
    let sent = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("REQUEST_TIMEOUT")
        && sent.elapsed() < Duration::from_secs(10)
    {
        match tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let answer = String::from_utf8_lossy(&seen);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {:?}: {answer}",
        sent.elapsed()
    );
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    assert!(
        sent.elapsed() >= Duration::from_millis(600),
        "answered before the body timeout: {:?}",
        sent.elapsed()
    );

    // A body declared past the limit is a 413, even when its client stalls while the host
    // drops what it sends, and whatever its length (past 4 GiB too).
    for length in ["70000", "99999999999"] {
        let mut over = connect(&app).await;
        let head = format!(
            "POST /v1/inventory/availability HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             content-length: {length}\r\n\r\n{{\"variant"
        );
        over.write_all(head.as_bytes()).await.unwrap();
        let sent = Instant::now();
        let mut buf = [0u8; 4096];
        let answer = match tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await {
            Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            other => panic!("length {length}: no answer after {:?}: {other:?}", sent.elapsed()),
        };
        assert!(answer.starts_with("HTTP/1.1 413"), "length {length}: {answer}");
    }
    app.finish().await;
}
