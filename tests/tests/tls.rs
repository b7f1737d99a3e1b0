//! TLS to Redis (`rediss://`, `redis_ca_file`) and PostgreSQL (`sslmode`,
//! `database_ca_file`) through the native adapters, against the TLS services that
//! `scripts/services start --tls` runs: a server signed by the given CA is accepted, one
//! the CA did not sign is refused, and `sslmode=require` encrypts without checking.
//!
//! Skipped, saying so, without those services (`COMMERCE_REDIS_TLS_URL` or a `rediss://`
//! `COMMERCE_REDIS_URL`, `COMMERCE_DATABASE_TLS_URL`, and their CA files).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use commerce_core::error::{Failure, PortError};
use commerce_core::ports::{Redis, RedisReply, Sql, SqlValue};
use commerce_native::{NativePg, NativeRedis};

const TIMEOUT: Duration = Duration::from_secs(5);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The app's `rediss://` URL and the CA that signed the server.
fn redis_tls() -> Option<(String, String)> {
    let url = env("COMMERCE_REDIS_TLS_URL")
        .or_else(|| env("COMMERCE_REDIS_URL").filter(|url| url.starts_with("rediss://")));
    match (url, env("COMMERCE_REDIS_CA_FILE")) {
        (Some(url), Some(ca)) => Some((url, ca)),
        _ => {
            eprintln!(
                "skipped: no TLS Redis (COMMERCE_REDIS_TLS_URL and COMMERCE_REDIS_CA_FILE; scripts/services start --tls)"
            );
            None
        }
    }
}

/// The `sslmode=verify-full` database URL and the CA that signed the server.
fn pg_tls() -> Option<(String, String)> {
    match (env("COMMERCE_DATABASE_TLS_URL"), env("COMMERCE_DATABASE_CA_FILE")) {
        (Some(url), Some(ca)) => Some((url, ca)),
        _ => {
            eprintln!(
                "skipped: no TLS PostgreSQL (COMMERCE_DATABASE_TLS_URL and COMMERCE_DATABASE_CA_FILE; scripts/services start --tls)"
            );
            None
        }
    }
}

/// A CA certificate of its own (made with openssl, as scripts/services makes the real
/// one) that signed none of the servers.
fn other_ca() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "commerce-other-ca-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-days", "1",
        ])
        .args(["-subj", "/CN=not the CA of these servers", "-keyout"])
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs (scripts/deps installs it)");
    assert!(status.success(), "openssl could not make a CA");
    dir.join("ca.pem").to_string_lossy().into_owned()
}

async fn ping(url: &str, ca_file: &str) -> Result<Vec<RedisReply>, PortError> {
    NativeRedis::new(url, TIMEOUT, ca_file)
        .unwrap()
        .execute("PING", Vec::new())
        .await
}

#[tokio::test]
async fn rediss_verifies_the_server_against_the_ca_file() {
    let Some((url, ca)) = redis_tls() else {
        return;
    };
    assert_eq!(
        ping(&url, &ca).await.unwrap(),
        [RedisReply::Status("PONG".into())]
    );
    // A CA that did not sign the server: no connection, an outage to the app (503).
    match ping(&url, &other_ca()).await {
        Err(PortError {
            failure: Failure::Unreachable(_),
            ..
        }) => {}
        other => panic!("a server the CA did not sign was accepted: {other:?}"),
    }
    // TLS to a plain client is no Redis it can talk to either.
    let plain = url.replacen("rediss://", "redis://", 1);
    assert!(ping(&plain, "").await.is_err(), "{plain} answered without TLS");
    // A CA file with no certificate in it is refused when the adapter is made, not by
    // every call.
    let empty = std::env::temp_dir().join(format!("no-ca-{}.pem", std::process::id()));
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let refused = NativeRedis::new(&url, TIMEOUT, empty.to_str().unwrap());
    std::fs::remove_file(&empty).unwrap();
    let refused = refused.err().expect("a CA file without a certificate was taken");
    assert!(refused.to_string().contains("no PEM certificate"), "{refused}");
}

/// Whether this connection to PostgreSQL is encrypted, as the server sees it.
async fn ssl_in_use(url: &str, ca_file: &str) -> Result<bool, PortError> {
    let pg = NativePg::new(url, TIMEOUT, 1, ca_file).unwrap();
    let rows = pg
        .query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .await?;
    Ok(rows[0][0] == SqlValue::Bool(true))
}

#[tokio::test]
async fn postgres_sslmode_verify_full_checks_the_server_and_require_only_encrypts() {
    let Some((url, ca)) = pg_tls() else {
        return;
    };
    assert!(
        ssl_in_use(&url, &ca).await.unwrap(),
        "verify-full did not encrypt"
    );
    let verify_ca = url.replace("sslmode=verify-full", "sslmode=verify-ca");
    assert!(
        ssl_in_use(&verify_ca, &ca).await.unwrap(),
        "verify-ca did not encrypt"
    );

    let other = other_ca();
    for refused in [&url, &verify_ca] {
        match ssl_in_use(refused, &other).await {
            Err(PortError {
                failure: Failure::Unreachable(_),
                ..
            }) => {}
            other => panic!("{refused} accepted a server the CA did not sign: {other:?}"),
        }
    }

    // require: encrypted, whoever signed the certificate.
    let require = url.replace("sslmode=verify-full", "sslmode=require");
    assert!(
        ssl_in_use(&require, &other).await.unwrap(),
        "require did not encrypt"
    );
    // No sslmode: plain, as before; the server still takes plain connections.
    let plain = url.replace("?sslmode=verify-full", "");
    assert!(
        !ssl_in_use(&plain, "").await.unwrap(),
        "a URL without sslmode used TLS"
    );
}
