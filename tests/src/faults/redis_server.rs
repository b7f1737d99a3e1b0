//! A `redis-server` of the test's own, on a free port of 127.0.0.1 with its data under
//! the system's temporary directory, that the test may kill, restart, flush or pause
//! without touching the Redis other tests share.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, scratch_dir, signal};
use crate::host::listens_on;

/// What a [`RedisProcess`] keeps across a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// The append-only file, fsynced every second (`appendonly yes`, `appendfsync
    /// everysec`), as `scripts/services` runs Redis: a `kill -9` loses at most about a
    /// second of acknowledged writes.
    Aof,
    /// Nothing (`appendonly no`, no snapshots): a restart comes back empty.
    Nothing,
}

/// A running `redis-server` (from `PATH`), killed when dropped.
pub struct RedisProcess {
    port: u16,
    dir: PathBuf,
    persistence: Persistence,
    child: Option<Child>,
}

impl RedisProcess {
    /// Starts a server with `persistence` and waits until it answers PING.
    pub async fn start(persistence: Persistence) -> RedisProcess {
        let mut redis = RedisProcess {
            port: free_port(),
            dir: scratch_dir("redis"),
            persistence,
            child: None,
        };
        redis.spawn().await;
        redis
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `kill -9`: the server dies at once, with whatever it had not yet written to disk.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory (killing it first if it
    /// still runs) and waits until it has loaded its data and answers PING.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// SIGSTOP: the server stops answering, its connections stay open.
    pub fn stop(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT: the server goes on where it stopped.
    pub fn cont(&self) {
        signal(self.pid(), "CONT");
    }

    /// FLUSHALL on this server.
    pub async fn flushall(&self) {
        let mut redis = self.connection().await;
        let _: () = redis::cmd("FLUSHALL")
            .query_async(&mut redis)
            .await
            .expect("FLUSHALL");
    }

    /// A new connection to the server.
    pub async fn connection(&self) -> crate::redis_link::TestRedis {
        tokio::time::timeout(
            Duration::from_secs(5),
            crate::redis_link::TestRedis::connect(&self.url()),
        )
        .await
        .expect("connecting to the test's redis-server timed out")
        .expect("connecting to the test's redis-server")
    }

    fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("the test's redis-server is not running")
    }

    async fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        command
            .arg("--port")
            .arg(self.port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(["--save", ""]);
        match self.persistence {
            Persistence::Aof => command.args(["--appendonly", "yes", "--appendfsync", "everysec"]),
            Persistence::Nothing => command.args(["--appendonly", "no"]),
        };
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting redis-server (is it on PATH?): {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "redis-server on port {} exited ({status}); see {}",
                    self.port,
                    self.dir.join("redis.log").display()
                );
            }
            // Its own answer, not that of a server that took the port first.
            if self.answers().await && listens_on(self.port, &[self.pid()]) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 15 s",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the server answers PING (not while it is still loading its data).
    async fn answers(&self) -> bool {
        let ping = async {
            let mut redis = redis::Client::open(self.url())
                .ok()?
                .get_multiplexed_async_connection()
                .await
                .ok()?;
            redis::cmd("PING").query_async::<String>(&mut redis).await.ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), ping).await,
            Ok(Some(pong)) if pong == "PONG"
        )
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
