//! The fault suite's own tools do what the scenarios rely on: the proxy pauses, slows and
//! drops connections; a Redis of the test's own keeps or loses its data across a `kill -9`
//! as configured and stops answering while stopped; the server comes back on its port.

use std::time::{Duration, Instant};

use commerce_tests::TestApp;
use commerce_tests::faults::{Persistence, Proxy, RedisProcess, ServeProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// Sends PING on `stream` and waits up to `within` for the start of an answer.
async fn ping(stream: &mut TcpStream, within: Duration) -> Option<String> {
    stream.write_all(PING).await.expect("write PING");
    answer(stream, within).await
}

async fn answer(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut buffer = [0u8; 64];
    match tokio::time::timeout(within, stream.read(&mut buffer)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buffer[..n]).into_owned()),
        Ok(Err(_)) | Err(_) => None,
    }
}

#[tokio::test]
async fn the_proxy_holds_every_byte_while_paused_and_delivers_them_on_resume() {
    let redis = RedisProcess::start(Persistence::Nothing).await;
    let proxy = Proxy::start(redis.addr()).await;
    let mut open = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(
        ping(&mut open, Duration::from_secs(2)).await.as_deref(),
        Some("+PONG\r\n")
    );

    proxy.pause();
    assert_eq!(ping(&mut open, Duration::from_millis(300)).await, None);
    // A connection made while paused is accepted, and held.
    let mut late = TcpStream::connect(proxy.addr).await.unwrap();
    assert_eq!(ping(&mut late, Duration::from_millis(300)).await, None);

    proxy.resume();
    let wait = Duration::from_secs(2);
    assert_eq!(answer(&mut open, wait).await.as_deref(), Some("+PONG\r\n"));
    assert_eq!(answer(&mut late, wait).await.as_deref(), Some("+PONG\r\n"));
}

#[tokio::test]
async fn the_proxy_delays_each_answer_by_its_latency_and_drops_connections_on_demand() {
    let redis = RedisProcess::start(Persistence::Nothing).await;
    let proxy = Proxy::start(redis.addr()).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    proxy.set_latency(Duration::from_millis(150));
    let sent = Instant::now();
    assert_eq!(
        ping(&mut stream, Duration::from_secs(2)).await.as_deref(),
        Some("+PONG\r\n")
    );
    assert!(
        sent.elapsed() >= Duration::from_millis(150),
        "{:?}",
        sent.elapsed()
    );

    proxy.close_all();
    let mut buffer = [0u8; 8];
    let closed = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer))
        .await
        .expect("the connection was not dropped");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}

#[tokio::test]
async fn redis_comes_back_from_a_kill_with_its_aof_or_empty_without_persistence() {
    for (persistence, kept) in [(Persistence::Aof, Some("v")), (Persistence::Nothing, None)] {
        let mut redis = RedisProcess::start(persistence).await;
        let mut connection = redis.connection().await;
        let _: () = redis::cmd("SET")
            .arg("k")
            .arg("v")
            .query_async(&mut connection)
            .await
            .unwrap();
        // appendfsync everysec: what is older than a second is on disk.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        redis.kill9();
        redis.restart().await;
        let mut connection = redis.connection().await;
        let value: Option<String> = redis::cmd("GET")
            .arg("k")
            .query_async(&mut connection)
            .await
            .unwrap();
        assert_eq!(value.as_deref(), kept, "{persistence:?}");
    }
}

#[tokio::test]
async fn a_stopped_redis_answers_nothing_until_continued() {
    let redis = RedisProcess::start(Persistence::Nothing).await;
    let mut stream = TcpStream::connect(redis.addr()).await.unwrap();
    redis.stop();
    assert_eq!(ping(&mut stream, Duration::from_millis(300)).await, None);
    redis.cont();
    assert_eq!(
        answer(&mut stream, Duration::from_secs(2)).await.as_deref(),
        Some("+PONG\r\n")
    );
}

#[tokio::test]
async fn the_server_killed_comes_back_on_its_port() {
    let (app, _gateway) = TestApp::shop(1, |c| c).await;
    let mut serve = ServeProcess::start(&app, &[]).await;
    let health = format!("{}/health", serve.base);
    let http = reqwest::Client::new();
    assert_eq!(http.get(&health).send().await.unwrap().status(), 200);
    serve.kill9();
    assert!(
        http.get(&health).send().await.is_err(),
        "still answering after kill -9"
    );
    serve.restart().await;
    assert_eq!(http.get(&health).send().await.unwrap().status(), 200);
    app.finish().await;
}
