//! The host a [`crate::TestApp`] runs on: the native server in-process, or a real Spin host
//! (`spin up` on the built components) in a child process.
//!
//! `COMMERCE_TEST_HOST=spin` picks Spin, with the binary named by `SPIN_BIN` (default:
//! `spin` on `PATH`); the components must have been built (`scripts/build-wasm`). Each test
//! gets its own `spin up` on a free 127.0.0.1 port, started by `scripts/spin-up` (as
//! `scripts/run` starts it) with the test's database URL, key prefix and secrets, which
//! the script hands to Spin as `SPIN_VARIABLE_…`; the child is killed (its whole process
//! group: `spin up` runs the trigger as a child of its own) when the test's app is dropped.
//! With warm Wasmtime caches (Spin's default), a `spin up` answers within about 0.2 s.

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use commerce_core::ports::Config;

/// Which host answers the test's HTTP requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// `commerce serve`, in the test process.
    Native,
    /// `spin up` on the built components, in a child process.
    Spin,
}

impl Host {
    /// The host chosen by `COMMERCE_TEST_HOST` (`native`, the default, or `spin`).
    pub fn current() -> Self {
        static HOST: OnceLock<Host> = OnceLock::new();
        *HOST.get_or_init(|| match std::env::var("COMMERCE_TEST_HOST").as_deref() {
            Ok("spin") => Host::Spin,
            Ok("native") | Ok("") | Err(_) => Host::Native,
            Ok(other) => panic!("COMMERCE_TEST_HOST={other:?}: expected \"native\" or \"spin\""),
        })
    }
}

/// Tests that run on the native host even when `COMMERCE_TEST_HOST=spin`, and why: what
/// they check is not the host's to do, or Spin cannot do it. This is the one list of
/// them; `scripts/test` skips them in its Spin run (they ran natively just before), and
/// [`crate::TestApp::spawn_with`] serves them natively if they run on Spin anyway.
pub const NATIVE_ONLY: &[(&str, &str)] = &[
    (
        "the_server_keeps_at_most_its_pool_of_postgresql_connections",
        "the PostgreSQL pool is the native server's; the Spin host keeps its own connections (README, database_pool_size)",
    ),
    (
        "quotes_reuse_the_entries_of_the_current_versions_and_never_of_a_replaced_one",
        "the ruleset cache outlives a request only in the native server; a Spin component's lives for one request (README, Publishing)",
    ),
    (
        "a_reservation_across_slots_is_all_or_nothing",
        "Redis Cluster and Sentinel: the Spin host reaches one standalone Redis only (README, Scaling out)",
    ),
    (
        "concurrent_reservations_across_slots_never_oversell",
        "Redis Cluster and Sentinel: the Spin host reaches one standalone Redis only (README, Scaling out)",
    ),
    (
        "moving_the_hot_slot_during_a_sale_keeps_the_books",
        "Redis Cluster and Sentinel: the Spin host reaches one standalone Redis only (README, Scaling out)",
    ),
    (
        "a_master_killed_during_a_sale_fails_over_and_keeps_the_books",
        "Redis Cluster and Sentinel: the Spin host reaches one standalone Redis only (README, Scaling out)",
    ),
    (
        "a_sentinel_failover_during_a_sale_is_followed_without_a_restart",
        "Redis Cluster and Sentinel: the Spin host reaches one standalone Redis only (README, Scaling out)",
    ),
    (
        "writes_wait_for_their_replicas_when_asked",
        "Redis Cluster and Sentinel: the Spin host reaches one standalone Redis only (README, Scaling out)",
    ),
    (
        "a_crash_after_any_call_of_placing_the_order_still_ends_in_one_order",
        "injects crashes into the native ports in-process; the host only sets up the shop",
    ),
    (
        "a_crash_after_any_call_of_starting_a_checkout_is_resumed_by_its_retry",
        "injects crashes into the native ports in-process; the host only sets up the shop",
    ),
    (
        "slow_and_idle_clients_are_closed_in_time_and_others_are_served",
        "the connection limits are commerce serve's own; on Spin the host accepts connections",
    ),
    (
        "connections_beyond_the_cap_are_refused_cleanly_and_freed_slots_serve_again",
        "the connection limits are commerce serve's own; on Spin the host accepts connections",
    ),
    (
        "no_connection_is_cut_at_thirty_seconds_when_the_idle_timeout_is_longer",
        "http_idle_timeout_ms is commerce serve's own; on Spin the host keeps or closes idle connections (README, Running on Spin)",
    ),
    (
        "the_server_lifts_its_open_file_limit_to_the_hard_limit",
        "the connection limits are commerce serve's own; on Spin the host accepts connections",
    ),
    (
        "a_kept_alive_connection_lives_for_the_idle_timeout_not_the_header_timeout",
        "the connection limits are commerce serve's own; on Spin the host accepts connections",
    ),
    (
        "commerce_serve_drains_the_outbox_on_its_own",
        "the periodic drain is a task of commerce serve; Spin has no background tasks (commerce drain runs from cron there)",
    ),
    (
        "commerce_serve_ends_overdue_sessions_on_its_own",
        "the periodic pass is a task of commerce serve; Spin has no background tasks (commerce sweep runs from cron there)",
    ),
    (
        "payments_racing_their_deadline_under_redis_latency_never_outlive_their_holds",
        "a new Redis connection per request through a proxy adding 120 ms to every answer outlasts this scenario's 500 ms Redis timeout on Spin (every cart add is a 503); the deadline race is a property of the shared code, proven on the native host",
    ),
    (
        "a_redelivery_to_a_confirmed_session_answers_503_within_one_database_timeout",
        "counts PostgreSQL timeouts within one request; on Spin the host sets no per-call PostgreSQL timeout, so a paused PostgreSQL holds the request until it resumes (README \"Running on Spin\") and there is no timeout to count",
    ),
    (
        "a_second_cancel_while_postgres_is_paused_answers_503_within_one_database_timeout",
        "pauses PostgreSQL and counts its timeouts within one request; on Spin the host sets no per-call PostgreSQL timeout, so the request waits until PostgreSQL resumes (README \"Running on Spin\"); the release a cut-short request left is met on Spin by checkout::a_session_ended_by_a_request_cut_short_before_its_release_is_released_by_the_next_read",
    ),
    (
        "a_payment_intent_that_would_cancel_its_session_while_postgres_is_paused_cancels_nothing",
        "pauses PostgreSQL and counts its timeouts within one request; on Spin the host sets no per-call PostgreSQL timeout, so the request waits until PostgreSQL resumes (README \"Running on Spin\"); the release a cut-short request left is met on Spin by checkout::a_session_ended_by_a_request_cut_short_before_its_release_is_released_by_the_next_read",
    ),
    (
        "a_paid_session_without_its_frozen_cart_is_shown_within_one_database_timeout",
        "pauses PostgreSQL and counts its timeouts within one request; on Spin the host sets no per-call PostgreSQL timeout, so the request waits until PostgreSQL resumes (README \"Running on Spin\"); the release a cut-short request left is met on Spin by checkout::a_session_ended_by_a_request_cut_short_before_its_release_is_released_by_the_next_read",
    ),
    (
        "a_session_a_read_expired_without_its_release_is_released_by_the_next_read",
        "pauses PostgreSQL and counts its timeouts within one request; on Spin the host sets no per-call PostgreSQL timeout, so the request waits until PostgreSQL resumes (README \"Running on Spin\"); the release a cut-short request left is met on Spin by checkout::a_session_ended_by_a_request_cut_short_before_its_release_is_released_by_the_next_read",
    ),
    (
        "metrics_are_prometheus_text",
        "counts requests per process; Spin keeps no state between requests (each one is a new instance)",
    ),
    (
        "requests_are_measured_by_route_template_and_status_class",
        "reads in-process request histograms across requests; a Spin instance serves one request and keeps nothing (the labels' templates are checked on Spin by every_route_template_is_a_route_the_host_answers)",
    ),
    (
        "every_route_template_is_labelled_in_metrics",
        "reads in-process request histograms across requests; a Spin instance serves one request and keeps nothing",
    ),
    (
        "cache_hits_and_misses_are_counted",
        "reads in-process cache counters across requests; a Spin instance serves one request and keeps nothing",
    ),
    (
        "reservations_granted_and_refused_are_counted",
        "reads in-process business counters across requests; a Spin instance serves one request and keeps nothing",
    ),
    (
        "a_checkout_counts_as_one_hold_request",
        "reads in-process business counters across requests; a Spin instance serves one request and keeps nothing",
    ),
    (
        "dependency_errors_are_counted_by_kind",
        "calls the router in-process on an app whose Redis and PostgreSQL refuse connections; no host is involved",
    ),
    (
        "every_request_body_is_accepted_or_refused_with_a_4xx_that_changes_nothing",
        "calls the router in-process with generated bodies (the parsers are the shared code's); no host is involved",
    ),
    (
        "a_signed_webhook_of_any_payload_is_answered_without_a_5xx",
        "calls the router in-process with generated payloads (the parsers are the shared code's); no host is involved",
    ),
    (
        "every_request_leaves_one_json_log_line",
        "reads the stderr of a commerce serve child process; on Spin the component writes the same line to its stderr, which Spin keeps in its log",
    ),
];

/// The reason a test is in [`NATIVE_ONLY`], if it is; `test` is the test thread's name
/// (`module::name` or `name`).
pub fn native_only(test: &str) -> Option<&'static str> {
    let name = test.rsplit("::").next().unwrap_or(test);
    NATIVE_ONLY
        .iter()
        .find(|(listed, _)| *listed == name)
        .map(|(_, reason)| *reason)
}

/// The workspace root (where `spin.toml` is).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits inside the workspace")
        .to_path_buf()
}

/// The cargo target directory (`CARGO_TARGET_DIR`, default `target/`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// The Spin binary: `SPIN_BIN`, or `spin` on `PATH`.
pub fn spin_bin() -> PathBuf {
    std::env::var_os("SPIN_BIN")
        .filter(|bin| !bin.is_empty())
        .map_or_else(|| PathBuf::from("spin"), PathBuf::from)
}

/// The names of the application variables `spin.toml` declares (its `[variables]` table).
pub fn manifest_variables() -> &'static [String] {
    static NAMES: OnceLock<Vec<String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let path = workspace_root().join("spin.toml");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        variables_of(&text)
    })
}

/// The keys of the `[variables]` table of a manifest's text, in order.
fn variables_of(manifest: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut inside = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == "[variables]";
        } else if inside && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                names.push(name.trim().to_owned());
            }
        }
    }
    names
}

/// `host:port` of a URL (`scheme://[user[:password]@]host:port[/…]`), as an
/// `allowed_outbound_hosts` entry takes it.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split(['/', '?']).next().unwrap_or_default().to_owned()
}

/// A running `spin up`: killed with its process group when dropped.
pub struct SpinProcess {
    child: Child,
    /// Where its stdout and stderr go (kept for a failed test to read).
    pub log: PathBuf,
    /// How long it took from the spawn to the first answer.
    pub started_in: Duration,
}

impl SpinProcess {
    /// Starts `spin up` on the built components through `scripts/spin-up`, as
    /// `scripts/run` does: every variable of `spin.toml` that `config` sets is handed to
    /// the script as `COMMERCE_<NAME>` (nothing else from `SPIN_VARIABLE_…` in the
    /// environment gets through). Listens on a free 127.0.0.1 port; returns once it
    /// answers, with its base URL. `name` names its log, `target/spin-tests/<name>.log`.
    pub async fn start(config: &impl Config, name: &str) -> (Self, String) {
        let dir = target_dir().join("spin-tests");
        std::fs::create_dir_all(&dir).expect("target/spin-tests can be created");
        let log = dir.join(format!("{name}.log"));
        let started = Instant::now();
        for _ in 0..5 {
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            let out = std::fs::File::create(&log).expect("the spin log can be created");
            let mut command = Command::new("bash");
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("SPIN_VARIABLE_") {
                    command.env_remove(key);
                }
            }
            for variable in manifest_variables() {
                let key = format!("COMMERCE_{}", variable.to_ascii_uppercase());
                match config.get(variable) {
                    Some(value) => command.env(key, value),
                    None => command.env_remove(key),
                };
            }
            command
                .env("SPIN_BIN", spin_bin())
                .arg(workspace_root().join("scripts/spin-up"))
                .args(["--listen", &listen, "--state-dir", "", "--quiet"])
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("the spin log can be shared"))
                .stderr(out)
                // Its own process group, so that one kill ends `spin up` and its trigger.
                .process_group(0);
            // SAFETY: only async-signal-safe prctl(2) runs between fork and exec. If the
            // test process dies without dropping the app (killed, aborted), `spin up` gets
            // SIGTERM, on which it stops its trigger and exits: no host outlives its test.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
            let child = command.spawn().expect("bash runs scripts/spin-up");
            let mut process = Self {
                child,
                log: log.clone(),
                started_in: Duration::ZERO,
            };
            if process.wait_until_serving(port).await {
                process.started_in = started.elapsed();
                return (process, format!("http://{listen}"));
            }
            let output = std::fs::read_to_string(&log).unwrap_or_default();
            // Another process took the port between our probe and Spin's bind: retry.
            if !output.to_ascii_lowercase().contains("in use") {
                panic!("spin up did not start; its output ({}):\n{output}", log.display());
            }
        }
        panic!("spin up found no free port in 5 tries");
    }

    /// Waits until it answers on 127.0.0.1:`port`; false if it ended first.
    async fn wait_until_serving(&mut self, port: u16) -> bool {
        let deadline = Instant::now() + Duration::from_secs(120);
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // Spin answers a path no component serves with 404 once every component is
            // loaded and it listens. The listener must be this host's: a server that took
            // the port first answers too, while this one is about to fail to bind.
            if client
                .get(format!("http://127.0.0.1:{port}/"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok()
                && listens_on(port, &process_group(self.pid()))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("spin up did not answer within 120 s; see {}", self.log.display());
    }

    /// The process id of `spin up` (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SpinProcess {
    fn drop(&mut self) {
        let group = -(self.child.id() as i32);
        // SAFETY: kill(2) with a negative pid signals that process group only: the group
        // this child leads (process_group(0) above), which holds only what it started.
        unsafe {
            libc::kill(group, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1, and that this process has not handed
/// out before: two tests starting servers at once never pick the same one (a server killed
/// and started again on its port keeps it). A listener bound to port 0 elsewhere, or another
/// process, may still take it before the server binds: a server's start therefore checks
/// that the listener answering is its own ([`listens_on`]).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..1000 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port on 127.0.0.1");
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
    panic!("no port on 127.0.0.1 that this process has not handed out already")
}

/// Whether one of `pids` holds the socket listening on 127.0.0.1:`port` (read from
/// `/proc`): a server that found its port taken must not take the answers of whoever took
/// it for its own.
pub fn listens_on(port: u16, pids: &[u32]) -> bool {
    let Some(inode) = listening_inode(port) else {
        return false;
    };
    let socket = format!("socket:[{inode}]");
    pids.iter().any(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == socket.as_str()))
    })
}

/// The inode of the socket listening on 127.0.0.1:`port` (or on every address), from
/// `/proc/net/tcp`.
fn listening_inode(port: u16) -> Option<String> {
    const LISTEN: &str = "0A";
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let wanted = [format!("0100007F:{port:04X}"), format!("00000000:{port:04X}")];
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
        (wanted.iter().any(|w| w == local) && *state == LISTEN).then(|| (*inode).to_owned())
    })
}

/// The processes of process group `group`.
pub fn process_group(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| group_of(*pid) == Some(group))
        .collect()
}

/// The process group of process `pid`, from `/proc/<pid>/stat` (`pid (comm) state ppid
/// pgrp …`, where comm may hold spaces and parentheses).
fn group_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(2)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_native_only_test_exists() {
        let dir = workspace_root().join("tests/tests");
        let sources: String = std::fs::read_dir(&dir)
            .unwrap()
            .map(|file| std::fs::read_to_string(file.unwrap().path()).unwrap())
            .collect();
        for (name, _) in NATIVE_ONLY {
            assert!(
                sources.contains(&format!("fn {name}(")),
                "{name} is listed as native-only but is no test in {}",
                dir.display()
            );
        }
    }

    #[test]
    fn a_listener_is_known_by_the_process_that_holds_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = std::process::id();
        assert!(listens_on(port, &[me]));
        // Another process (which inherits no socket: Rust opens them close-on-exec) does
        // not hold it, and a port nobody listens on is nobody's.
        let mut other = Command::new("sleep").arg("5").spawn().unwrap();
        assert!(!listens_on(port, &[other.id()]));
        let _ = other.kill();
        let _ = other.wait();
        drop(listener);
        assert!(!listens_on(port, &[me]));
        // `cargo test` runs this process in a group whose members /proc names.
        let group = group_of(me).unwrap();
        assert!(process_group(group).contains(&me));
    }

    #[test]
    fn free_ports_are_never_handed_out_twice() {
        let ports: BTreeSet<u16> = (0..200).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 200);
    }

    #[test]
    fn the_manifest_variables_are_its_variables_table() {
        let manifest = "[application]\nname = \"x\"\n[variables]\n# a\nredis_url = { default = \"r\" }\nkey_prefix = { default = \"\" }\n\n[[trigger.http]]\nroute = \"/\"\n";
        assert_eq!(variables_of(manifest), ["redis_url", "key_prefix"]);
    }

    #[test]
    fn host_port_drops_scheme_credentials_and_path() {
        assert_eq!(host_port("redis://127.0.0.1:6390"), "127.0.0.1:6390");
        assert_eq!(
            host_port("postgres://postgres:pw@127.0.0.1:5440/commerce?options=x"),
            "127.0.0.1:5440"
        );
        assert_eq!(
            host_port("rediss://:secret@cache.example.com:6380/0"),
            "cache.example.com:6380"
        );
    }

    #[test]
    fn native_only_tests_are_found_by_their_thread_name() {
        assert!(native_only("metrics_are_prometheus_text").is_some());
        assert!(native_only("inventory::metrics_are_prometheus_text").is_some());
        assert!(native_only("health_reports_both_dependencies").is_none());
    }
}
