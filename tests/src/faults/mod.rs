//! Fault injection for the fault suite (`tests/tests/faults.rs`, DESIGN §4 under faults):
//!
//! - [`RedisProcess`]: a `redis-server` of the test's own, to kill, restart, flush or pause;
//! - [`Proxy`]: a TCP proxy in front of Redis or PostgreSQL, to pause or slow it;
//! - [`ServeProcess`]: the native `commerce serve` as a child process, to kill and restart;
//! - [`Buyers`]: concurrent buyers who walk a whole purchase and retry every failed step
//!   with the same `Idempotency-Key`, as real clients and the gateway's webhooks do;
//! - [`Books`]: the check every run must pass once the fault has healed, the way Jepsen's
//!   bank test checks a ledger.
//!
//! Everything listens on 127.0.0.1, and every loop is bounded in count and time.

mod books;
mod buyers;
mod proxy;
mod redis_server;
mod serve;

pub use books::Books;
pub use buyers::{BuyerPlan, BuyerRecord, Buyers, Gate, Outcome, Progress, Run, Seen};
pub use proxy::Proxy;
pub use redis_server::{Persistence, RedisProcess};
pub use serve::{ServeProcess, commerce_env, run_commerce};

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A port of 127.0.0.1 that is free now, chosen below the kernel's ephemeral range
/// (32768+), so that the outgoing connections of other tests do not take it while a
/// killed process is being restarted on it.
pub(crate) fn free_port() -> u16 {
    let seed = u64::from(std::process::id()) * 7919
        + SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos().into())
            .unwrap_or(0);
    for attempt in 0..2000u64 {
        let port = 20_000 + ((seed + NEXT.fetch_add(1, Ordering::Relaxed) * 131 + attempt) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000 on 127.0.0.1");
}

/// A fresh directory under the system's temporary directory, unique to this call.
pub(crate) fn scratch_dir(what: &str) -> PathBuf {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "commerce-{what}-{}-{stamp}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    dir
}

/// `url` with its `host:port` replaced by `addr` (user, path and query kept), to send a
/// client through a [`Proxy`].
pub fn url_via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url
        .split_once("://")
        .unwrap_or_else(|| panic!("{url} is not a URL"));
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let user = authority
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{addr}{tail}")
}

/// The `host:port` of `url`, resolved to an address of 127.0.0.1 (the services the tests
/// use are all local).
pub fn addr_of(url: &str) -> SocketAddr {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_port = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    let host_port = host_port.replace("localhost", "127.0.0.1");
    host_port
        .parse()
        .unwrap_or_else(|_| panic!("{url}: expected a host:port of 127.0.0.1"))
}

/// Sends SIGSTOP, SIGCONT or SIGKILL (`signal` without the `SIG`) to a process this test
/// started, by its id.
pub(crate) fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_sent_through_the_proxy_with_its_user_path_and_query() {
        let addr: SocketAddr = "127.0.0.1:20001".parse().unwrap();
        assert_eq!(
            url_via("postgres://postgres@127.0.0.1:5440/commerce?options=-c%20x", addr),
            "postgres://postgres@127.0.0.1:20001/commerce?options=-c%20x"
        );
        assert_eq!(url_via("redis://127.0.0.1:6390", addr), "redis://127.0.0.1:20001");
        assert_eq!(
            addr_of("postgres://postgres@localhost:5440/commerce?x=1"),
            "127.0.0.1:5440".parse().unwrap()
        );
    }
}
