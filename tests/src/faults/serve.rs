//! The native server, `commerce serve`, as a child process of the test, so that a test can
//! kill it with SIGKILL in the middle of a request and start it again on the same port.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use commerce_core::Settings;

use super::{free_port, scratch_dir};
use crate::TestApp;
use crate::host::listens_on;

/// The `COMMERCE_*` environment that configures `commerce` like `settings` (the settings
/// of a [`TestApp`]: its Redis, its PostgreSQL schema, its key prefix, secrets, gateway,
/// timeouts, time-to-lives and rate limits), with `extra` (Spin variable names) on top.
pub fn commerce_env(settings: &Settings, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let s = settings;
    let mut env: Vec<(String, String)> = [
        ("redis_url", s.redis_url.clone()),
        ("redis_ca_file", s.redis_ca_file.clone()),
        ("database_url", s.database_url.clone()),
        ("key_prefix", s.key_prefix.to_string()),
        ("admin_token", s.admin_token.clone()),
        ("jwt_secret", s.jwt_secret.clone()),
        ("payment_gateway_url", s.payment_gateway_url.clone()),
        ("payment_gateway_key", s.payment_gateway_key.clone()),
        ("webhook_secret", s.webhook_secret.clone()),
        ("redis_timeout_ms", s.redis_timeout_ms.to_string()),
        ("database_timeout_ms", s.database_timeout_ms.to_string()),
        ("gateway_timeout_ms", s.gateway_timeout_ms.to_string()),
        ("reservation_ttl_seconds", s.reservation_ttl_seconds.to_string()),
        (
            "checkout_lock_ttl_seconds",
            s.checkout_lock_ttl_seconds.to_string(),
        ),
        (
            "checkout_session_ttl_seconds",
            s.checkout_session_ttl_seconds.to_string(),
        ),
        ("idempotency_ttl_seconds", s.idempotency_ttl_seconds.to_string()),
        ("hold_grace_seconds", s.hold_grace_seconds.to_string()),
        ("request_timeout_ms", s.request_timeout_ms.to_string()),
        ("metrics_token", s.metrics_token.clone()),
        ("log_level", s.log_level.name().to_owned()),
        (
            "rate_limit_anonymous_per_minute",
            s.rate_limit_anonymous_per_minute.to_string(),
        ),
        (
            "rate_limit_anonymous_burst",
            s.rate_limit_anonymous_burst.to_string(),
        ),
        (
            "rate_limit_customer_per_minute",
            s.rate_limit_customer_per_minute.to_string(),
        ),
        (
            "rate_limit_customer_burst",
            s.rate_limit_customer_burst.to_string(),
        ),
        ("trusted_proxies", s.trusted_proxies.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    for (name, value) in extra {
        env.retain(|(n, _)| n != name);
        env.push(((*name).to_owned(), (*value).to_owned()));
    }
    env.into_iter()
        .map(|(name, value)| (format!("COMMERCE_{}", name.to_ascii_uppercase()), value))
        .collect()
}

/// The `commerce` binary of this build: `target/<profile>/commerce`, beside the directory
/// of the test executable (`target/<profile>/deps/`).
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("commerce"))
        .expect("the test executable lives in target/<profile>/deps");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p commerce-native` first (scripts/test does)",
        binary.display()
    );
    binary
}

/// Runs `commerce <args>` configured like `app` (and `extra`) to completion, killing it
/// if it takes longer than `within`; its exit status and standard error.
pub async fn run_commerce(
    app: &TestApp,
    extra: &[(&str, &str)],
    args: &[&str],
    within: Duration,
) -> std::io::Result<(std::process::ExitStatus, String)> {
    let mut child = Command::new(binary())
        .args(args)
        .envs(commerce_env(&app.app.settings, extra))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("commerce {} took longer than {within:?}", args.join(" ")),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr)?;
    }
    Ok((status, stderr))
}

/// `commerce serve --listen 127.0.0.1:<port>` as a child process; killed when dropped.
pub struct ServeProcess {
    /// `http://127.0.0.1:<port>`; the same across restarts.
    pub base: String,
    port: u16,
    env: Vec<(String, String)>,
    dir: PathBuf,
    child: Option<Child>,
}

impl ServeProcess {
    /// Starts the server configured like `app` (and `extra`, Spin variable names), and
    /// waits until it accepts connections.
    pub async fn start(app: &TestApp, extra: &[(&str, &str)]) -> ServeProcess {
        let port = free_port();
        let mut serve = ServeProcess {
            base: format!("http://127.0.0.1:{port}"),
            port,
            env: commerce_env(&app.app.settings, extra),
            dir: scratch_dir("serve"),
            child: None,
        };
        serve.spawn().await;
        serve
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: the server dies at once, whatever it was doing.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (killing it first if it still runs).
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    fn log(&self) -> PathBuf {
        self.dir.join("serve.log")
    }

    /// What the server wrote to its stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("the server's log file");
        let child = Command::new(binary())
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the server's log file"))
            .stderr(log)
            .spawn()
            .expect("starting commerce serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "commerce serve exited ({status}): {}",
                    std::fs::read_to_string(self.log()).unwrap_or_default()
                );
            }
            // Its own listener, not one that took the port first.
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
                && self.pid().is_some_and(|pid| listens_on(self.port, &[pid]))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "commerce serve did not listen on port {} within 20 s; see {}",
                self.port,
                self.log().display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        self.kill9();
        // A failing test keeps the server's log for reading.
        if std::thread::panicking() {
            eprintln!("commerce serve's log: {}", self.log().display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
