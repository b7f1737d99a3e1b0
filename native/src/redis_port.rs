//! The Redis port over redis-rs, for the three topologies a shop runs, chosen by the URL:
//!
//! - `redis://` / `rediss://`: one standalone server, one multiplexed, reconnecting
//!   connection per process (`ConnectionManager`), so concurrent requests pipeline on it;
//! - `redis+cluster://[user:password@]host:port,host:port,…` (or `rediss+cluster://`): a
//!   Redis Cluster reached through any of the seed nodes; redis-rs's cluster client keeps
//!   the slot map, follows `MOVED` and `ASK`, and refreshes the map after a failover;
//! - `redis+sentinel://[user:password@]host:port,…/<master-name>`: the master that the
//!   sentinels name; when it stops answering (or answers `READONLY`, demoted) the next
//!   call asks the sentinels again, so the app follows a failover without a restart. The
//!   user and password are the data nodes'; the sentinels are reached without.
//!
//! Every call is bounded as a whole by the timeout (connect, reconnect and response).
//! `rediss://` (and `rediss+cluster://`) speak TLS and verify the server against the CA
//! of `redis_ca_file`, or the system's roots when that is empty.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use commerce_core::error::{Dependency, PortError};
use commerce_core::ports::{Redis, RedisArg, RedisReply, cannot_serve_now};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use tokio::sync::{Mutex, OnceCell, RwLock};

/// The native Redis adapter.
#[derive(Clone)]
pub struct NativeRedis {
    link: Link,
    timeout: Duration,
}

/// How the adapter reaches Redis.
#[derive(Clone)]
enum Link {
    Standalone(Arc<StandaloneLink>),
    Cluster(Arc<ClusterLink>),
    Sentinel(Arc<SentinelLink>),
}

impl NativeRedis {
    /// An adapter for `url` that connects on first use; an unreachable server makes each
    /// call fail within `timeout` rather than hang. The user and password come from the
    /// URL (`redis://user:password@host:port`); `ca_file` (PEM) is the CA a `rediss://`
    /// server must be signed by, empty for the system's roots (a `redis://` URL ignores it).
    pub fn new(url: &str, timeout: Duration, ca_file: &str) -> anyhow::Result<Self> {
        let certificates = || -> anyhow::Result<redis::TlsCertificates> {
            let root_cert =
                std::fs::read(ca_file).map_err(|e| anyhow::anyhow!("redis_ca_file {ca_file}: {e}"))?;
            // Refused at start rather than by every call's TLS handshake (each a 503).
            if !root_cert
                .windows(b"-----BEGIN CERTIFICATE-----".len())
                .any(|w| w == b"-----BEGIN CERTIFICATE-----")
            {
                anyhow::bail!("redis_ca_file {ca_file}: no PEM certificate in it");
            }
            Ok(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert),
            })
        };
        let tls_with_ca = !ca_file.is_empty() && url.starts_with("rediss");
        let link = match Topology::of(url)? {
            Topology::Standalone => {
                let client = if tls_with_ca {
                    redis::Client::build_with_tls(url, certificates()?)?
                } else {
                    redis::Client::open(url)?
                };
                Link::Standalone(Arc::new(StandaloneLink {
                    manager: std::sync::RwLock::new((manager(client.clone(), timeout)?, 0)),
                    client,
                    timeout,
                    answered_ms: AtomicU64::new(0),
                    started: Instant::now(),
                }))
            }
            Topology::Cluster { nodes } => {
                let mut builder = ClusterClient::builder(nodes)
                    .connection_timeout(timeout)
                    .response_timeout(timeout);
                if tls_with_ca {
                    builder = builder.certs(certificates()?);
                }
                let client = builder.build()?;
                Link::Cluster(Arc::new(ClusterLink {
                    client,
                    connection: OnceCell::new(),
                }))
            }
            Topology::Sentinel {
                sentinels,
                master,
                user,
                password,
            } => {
                let mut node = redis::RedisConnectionInfo::default();
                if let Some(user) = user {
                    node = node.set_username(user);
                }
                if let Some(password) = password {
                    node = node.set_password(password);
                }
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(node);
                let client =
                    SentinelClient::build(sentinels, master, Some(node), SentinelServerType::Master)?;
                Link::Sentinel(Arc::new(SentinelLink {
                    sentinels: Mutex::new(client),
                    master: RwLock::new(None),
                    timeout,
                }))
            }
        };
        Ok(Self { link, timeout })
    }
}

/// One standalone server: a multiplexed, reconnecting connection, replaced by a fresh one
/// when Redis refused to authenticate it (a password rotated, the user switched off for a
/// moment, a restart without the user list). redis-rs's manager reconnects after an I/O
/// error only, so it would answer that refusal for good, even once the password is good
/// again; each call meanwhile is a 503.
struct StandaloneLink {
    client: redis::Client,
    timeout: Duration,
    /// The connection, and how many times it was replaced.
    manager: std::sync::RwLock<(ConnectionManager, u64)>,
    /// When the connection last answered (ms since `started`).
    answered_ms: AtomicU64,
    started: Instant,
}

/// How long the connection may have gone without an answer before a call first checks
/// it with a `PING`. Redis may have dropped it meanwhile (`CLIENT KILL`, a restart, its
/// `timeout`), and the Redis client learns that only from a call that fails on it, which
/// would be a 503, and which could not be sent again (a write may have been applied): the
/// `PING` finds it closed instead, the connection is replaced, and the call goes once on
/// the new one. Under load the connection answers all the time, so no call checks.
const IDLE_CHECK_AFTER: Duration = Duration::from_millis(5);

/// The longest the check waits for its `PING` (at most a tenth of the call's timeout): a
/// dropped connection fails at once, so a `PING` not answered by then means a Redis that
/// is merely slow, and the call goes without waiting longer, keeping its own time.
const IDLE_CHECK_WAIT: Duration = Duration::from_millis(10);

impl StandaloneLink {
    fn answered(&self) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.answered_ms.store(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let answered = Duration::from_millis(self.answered_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(answered)
    }

    async fn send(&self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        let (mut connection, generation) = self.manager.read().unwrap_or_else(|e| e.into_inner()).clone();
        if self.idle_for() >= IDLE_CHECK_AFTER {
            // A dropped connection fails this PING, and the manager connects afresh; any
            // other failure is met again by the call itself.
            let ping = redis::cmd("PING");
            let wait = IDLE_CHECK_WAIT.min(self.timeout / 10);
            let _ = tokio::time::timeout(wait, ping.query_async::<redis::Value>(&mut connection)).await;
        }
        let outcome = cmd.query_async(&mut connection).await;
        // An error reply (NOSCRIPT, …) is an answer too.
        if outcome.as_ref().is_ok() || outcome.as_ref().is_err_and(|e| !is_outage(e)) {
            self.answered();
        }
        if let Err(e) = &outcome
            && e.kind() == redis::ErrorKind::AuthenticationFailed
        {
            let mut current = self.manager.write().unwrap_or_else(|e| e.into_inner());
            // Once per refusal, however many calls met it.
            if current.1 == generation {
                *current = (manager(self.client.clone(), self.timeout)?, generation + 1);
            }
        }
        outcome
    }
}

/// A standalone connection manager with the adapter's timeouts.
fn manager(client: redis::Client, timeout: Duration) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200));
    ConnectionManager::new_lazy_with_config(client, config)
}

/// What a Redis URL names.
#[derive(Debug, PartialEq, Eq)]
enum Topology {
    Standalone,
    Cluster {
        nodes: Vec<String>,
    },
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        user: Option<String>,
        password: Option<String>,
    },
}

impl Topology {
    fn of(url: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let node_scheme = match scheme {
            "redis+cluster" | "redis+sentinel" => "redis",
            "rediss+cluster" | "rediss+sentinel" => "rediss",
            _ => return Ok(Topology::Standalone),
        };
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, rest),
        };
        let (hosts, path) = hosts.split_once('/').unwrap_or((hosts, ""));
        let hosts: Vec<&str> = hosts.split(',').filter(|h| !h.is_empty()).collect();
        anyhow::ensure!(!hosts.is_empty(), "{scheme}:// needs at least one host:port");
        if scheme.ends_with("+cluster") {
            let auth = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
            let nodes = hosts
                .iter()
                .map(|h| format!("{node_scheme}://{auth}{h}"))
                .collect();
            return Ok(Topology::Cluster { nodes });
        }
        let master = path.trim_matches('/');
        anyhow::ensure!(
            !master.is_empty(),
            "{scheme}:// needs the master's name as its path"
        );
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (Some(user).filter(|u| !u.is_empty()), Some(password)),
                None => (Some(info), None),
            },
            None => (None, None),
        };
        Ok(Topology::Sentinel {
            sentinels: hosts.iter().map(|h| format!("{node_scheme}://{h}")).collect(),
            master: master.to_owned(),
            user: user.map(str::to_owned),
            password: password.map(str::to_owned),
        })
    }
}

/// The seed nodes' `redis://` URLs of a `redis+cluster://` URL (`None` for any other URL),
/// for tools that must visit every node (the tests' key scans).
pub fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    match Topology::of(url) {
        Ok(Topology::Cluster { nodes }) => Some(nodes),
        _ => None,
    }
}

/// The sentinels' `redis://` URLs and the master's name of a `redis+sentinel://` URL
/// (`None` for any other URL), for tools that ask the sentinels themselves (the tests).
pub fn sentinel_nodes(url: &str) -> Option<(Vec<String>, String)> {
    match Topology::of(url) {
        Ok(Topology::Sentinel {
            sentinels, master, ..
        }) => Some((sentinels, master)),
        _ => None,
    }
}

/// A cluster connection, opened on first use (opening reads the slot map).
struct ClusterLink {
    client: ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl ClusterLink {
    async fn connection(&self) -> redis::RedisResult<ClusterConnection> {
        let connection = self
            .connection
            .get_or_try_init(|| self.client.get_async_connection())
            .await?;
        Ok(connection.clone())
    }

    /// `SCAN` over the whole cluster: the masters one after the other, in address order,
    /// under one cursor `<master>.<that master's cursor>` (`0` begins and ends, as on one
    /// server). A slot that moves during the scan may be missed or seen twice, which
    /// SCAN's own guarantees already allow for keys that change meanwhile.
    async fn scan(&self, args: &[RedisArg]) -> redis::RedisResult<redis::Value> {
        use redis::Value as V;
        use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
        let mut connection = self.connection().await?;
        let cursor = match args.first() {
            Some(RedisArg::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(RedisArg::Int(n)) => n.to_string(),
            None => String::new(),
        };
        let (master, at) = cursor.split_once('.').unwrap_or(("0", "0"));
        let master: usize = master.parse().unwrap_or(0);
        let nodes = connection
            .route_command(
                redis::cmd("CLUSTER").arg("NODES").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            )
            .await?;
        let masters = masters_of(&text_of(nodes));
        let Some((host, port)) = masters.get(master) else {
            return Ok(V::Array(vec![V::BulkString(b"0".to_vec()), V::Array(Vec::new())]));
        };
        let mut scan = redis::cmd("SCAN");
        scan.arg(at);
        for arg in &args[1.min(args.len())..] {
            match arg {
                RedisArg::Int(n) => scan.arg(*n),
                RedisArg::Bytes(b) => scan.arg(b.as_slice()),
            };
        }
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port: *port,
        });
        let reply = connection.route_command(scan, routing).await?;
        let V::Array(mut parts) = reply else {
            return Ok(reply);
        };
        let keys = parts.pop().unwrap_or(V::Array(Vec::new()));
        let next = parts.pop().map(text_of).unwrap_or_default();
        let cursor = match (next.as_str(), master + 1 < masters.len()) {
            ("0", true) => format!("{}.0", master + 1),
            ("0", false) => "0".to_owned(),
            (next, _) => format!("{master}.{next}"),
        };
        Ok(V::Array(vec![V::BulkString(cursor.into_bytes()), keys]))
    }
}

/// A reply as text (a bulk or simple string; anything else is empty).
fn text_of(value: redis::Value) -> String {
    match value {
        redis::Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
        redis::Value::SimpleString(s) | redis::Value::VerbatimString { text: s, .. } => s,
        _ => String::new(),
    }
}

/// The masters that serve slots, from `CLUSTER NODES`, in address order.
fn masters_of(nodes: &str) -> Vec<(String, u16)> {
    let mut masters: Vec<(String, u16)> = nodes
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") || fields.len() < 9 {
                return None;
            }
            let address = fields.get(1)?.split('@').next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some((host.to_owned(), port.parse().ok()?))
        })
        .collect();
    masters.sort();
    masters
}

/// The master the sentinels named last, and how to ask them again.
struct SentinelLink {
    sentinels: Mutex<SentinelClient>,
    master: RwLock<Option<(ConnectionManager, Instant)>>,
    timeout: Duration,
}

/// How long a master found through the sentinels is used before a failed call may ask
/// them again: a burst of failing calls asks once, not once each.
const SENTINEL_REASK_AFTER: Duration = Duration::from_millis(250);

impl SentinelLink {
    /// The current master's connection, asking the sentinels if there is none yet.
    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        if let Some((connection, _)) = self.master.read().await.as_ref() {
            return Ok(connection.clone());
        }
        self.reask(None).await
    }

    /// Asks the sentinels for the master again (after `failed_at`'s connection failed),
    /// unless another call just did.
    async fn reask(&self, failed_at: Option<Instant>) -> redis::RedisResult<ConnectionManager> {
        let mut master = self.master.write().await;
        if let Some((connection, found)) = master.as_ref()
            && failed_at.is_none_or(|failed| *found > failed || found.elapsed() < SENTINEL_REASK_AFTER)
        {
            return Ok(connection.clone());
        }
        let client = self.sentinels.lock().await.async_get_client().await?;
        let connection = manager(client, self.timeout)?;
        *master = Some((connection.clone(), Instant::now()));
        Ok(connection)
    }
}

impl Redis for NativeRedis {
    async fn pause(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    async fn execute(&self, command: &str, args: Vec<RedisArg>) -> Result<Vec<RedisReply>, PortError> {
        let mut cmd = redis::cmd(command);
        for arg in &args {
            match arg {
                RedisArg::Int(n) => cmd.arg(*n),
                RedisArg::Bytes(b) => cmd.arg(b.as_slice()),
            };
        }
        // The clients' own timeouts cover connect and response, one after the other; this
        // outer bound holds the whole call, reconnect back-off and redirects included.
        let call = async {
            match &self.link {
                Link::Cluster(cluster) if command.eq_ignore_ascii_case("SCAN") => cluster.scan(&args).await,
                _ => self.send(&cmd).await,
            }
        };
        let reply = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| {
                PortError::unreachable(
                    Dependency::Redis,
                    format!("redis did not answer within {:?}", self.timeout),
                )
            })?
            .map_err(port_error)?;
        let mut flat = Vec::new();
        flatten(reply, &mut flat)?;
        Ok(flat)
    }

    fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }

    fn send_detached(&self, command: &str, args: Vec<RedisArg>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (redis, command) = (self.clone(), command.to_owned());
        runtime.spawn(async move {
            let _ = redis.execute(&command, args).await;
        });
    }

    /// On a cluster, one `WAIT` per slot named, each on the master of that slot (over the
    /// very connection the writes went through), all at once; elsewhere one `WAIT`.
    async fn wait_replicas(&self, keys: &[&str], replicas: i64, timeout_ms: i64) -> Result<i64, PortError> {
        use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
        let mut wait = redis::cmd("WAIT");
        wait.arg(replicas).arg(timeout_ms);
        let bound = self.timeout + Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
        let call = async {
            let Link::Cluster(cluster) = &self.link else {
                return self.send(&wait).await;
            };
            let mut slots: Vec<u16> = keys.iter().map(|k| slot_of(k)).collect();
            slots.sort_unstable();
            slots.dedup();
            let connection = cluster.connection().await?;
            // All at once, so a write that is short of replicas waits `timeout_ms` once,
            // not once per slot.
            let waits = slots.into_iter().map(|slot| {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(Route::new(
                    slot,
                    SlotAddr::Master,
                )));
                let (mut connection, wait) = (connection.clone(), wait.clone());
                async move { connection.route_command(wait, routing).await }
            });
            let mut fewest = redis::Value::Int(replicas);
            for acked in futures_util::future::join_all(waits).await {
                let acked = acked?;
                if let (redis::Value::Int(a), redis::Value::Int(f)) = (&acked, &fewest)
                    && a < f
                {
                    fewest = acked;
                }
            }
            Ok(fewest)
        };
        match tokio::time::timeout(bound, call).await {
            Err(_) => Err(PortError::unreachable(
                Dependency::Redis,
                format!("redis did not answer WAIT within {bound:?}"),
            )),
            Ok(Err(e)) => Err(port_error(e)),
            Ok(Ok(redis::Value::Int(n))) => Ok(n),
            Ok(Ok(other)) => Err(PortError::server(
                Dependency::Redis,
                format!("WAIT answered {other:?}"),
            )),
        }
    }
}

/// The cluster hash slot of a key: CRC16 (XMODEM) of its hash tag (the text between the
/// first `{` and the next `}`, if not empty) or of the whole key, modulo 16384.
fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes.iter().position(|b| *b == b'{').and_then(|open| {
        let close = bytes[open + 1..].iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &bytes[open + 1..open + 1 + close])
    });
    let mut crc: u16 = 0;
    for byte in tagged.unwrap_or(bytes) {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

impl NativeRedis {
    async fn send(&self, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
        match &self.link {
            Link::Standalone(standalone) => standalone.send(cmd).await,
            Link::Cluster(cluster) => cmd.query_async(&mut cluster.connection().await?).await,
            Link::Sentinel(sentinel) => {
                let asked_at = Instant::now();
                let outcome = cmd.query_async(&mut sentinel.connection().await?).await;
                if let Err(e) = &outcome
                    && (is_outage(e)
                        || e.code() == Some("READONLY")
                        || e.kind() == redis::ErrorKind::AuthenticationFailed)
                {
                    // The master is gone, was demoted or refused to authenticate us: the
                    // next call connects afresh where the sentinels say the master is now.
                    // This one still fails (503), since a write may or may not have
                    // reached the old master.
                    let _ = sentinel.reask(Some(asked_at)).await;
                }
                outcome
            }
        }
    }
}

/// Flattens a reply depth-first, as the [`Redis`] port promises (the Spin host does it
/// itself).
fn flatten(value: redis::Value, out: &mut Vec<RedisReply>) -> Result<(), PortError> {
    use redis::Value as V;
    match value {
        V::Nil => out.push(RedisReply::Nil),
        V::Int(n) => out.push(RedisReply::Int(n)),
        V::BulkString(b) => out.push(RedisReply::Bytes(b)),
        V::SimpleString(s) => out.push(RedisReply::Status(s)),
        V::Okay => out.push(RedisReply::Status("OK".into())),
        V::Boolean(b) => out.push(RedisReply::Int(i64::from(b))),
        V::Array(items) | V::Set(items) => {
            for item in items {
                flatten(item, out)?;
            }
        }
        V::ServerError(e) => {
            return Err(PortError::server(
                Dependency::Redis,
                format!("{} {}", e.code(), e.details().unwrap_or_default()),
            ));
        }
        other => {
            return Err(PortError::server(
                Dependency::Redis,
                format!("unsupported reply type: {other:?}"),
            ));
        }
    }
    Ok(())
}

/// A redis-rs error as the [`Redis`] port states it: connection trouble, a refused
/// authentication and errors that say the server [cannot serve now](cannot_serve_now) are
/// `Unreachable`, any other server error keeps its code at the front of the text.
fn port_error(e: redis::RedisError) -> PortError {
    let refused = e.kind() == redis::ErrorKind::AuthenticationFailed
        || e.code()
            .is_some_and(|code| cannot_serve_now(code, e.detail().unwrap_or_default()));
    if refused || is_outage(&e) {
        PortError::unreachable(Dependency::Redis, e.to_string())
    } else {
        PortError::server(Dependency::Redis, format!("{} {e}", e.code().unwrap_or_default()))
    }
}

/// `url` as it may be printed: without the `user:password@` in front of its host(s).
pub fn printable_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// Whether the connection failed, as opposed to the server answering with an error.
fn is_outage(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

#[cfg(test)]
mod tests {
    use super::{Topology, printable_url, slot_of};

    #[test]
    fn a_printed_url_shows_no_credentials() {
        for (url, printed) in [
            (
                "redis://default:s3cret@127.0.0.1:6390/1",
                "redis://127.0.0.1:6390/1",
            ),
            ("rediss://app:p@ss@h:1", "rediss://h:1"),
            ("redis+cluster://app:pw@h1:1,h2:2", "redis+cluster://h1:1,h2:2"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://h:1/0?note=a@b", "redis://h:1/0?note=a@b"),
        ] {
            assert_eq!(printable_url(url), printed, "{url}");
        }
    }

    #[test]
    fn slots_follow_hash_tags() {
        // Values from the Redis Cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot_of("123456789"), 12739);
        assert_eq!(slot_of("foo"), 12182);
        assert_eq!(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
        assert_eq!(slot_of("x:inventory:variant:{var-1}"), slot_of("var-1"));
        assert_eq!(
            slot_of("foo{}{bar}"),
            8363,
            "an empty tag: the whole key is hashed"
        );
    }

    #[test]
    fn a_url_names_its_topology() {
        assert_eq!(
            Topology::of("redis://127.0.0.1:6379").unwrap(),
            Topology::Standalone
        );
        assert_eq!(Topology::of("rediss://a:b@h:1").unwrap(), Topology::Standalone);
        assert_eq!(
            Topology::of("redis+cluster://app:pw@127.0.0.1:7101,127.0.0.1:7102").unwrap(),
            Topology::Cluster {
                nodes: vec![
                    "redis://app:pw@127.0.0.1:7101".into(),
                    "redis://app:pw@127.0.0.1:7102".into()
                ]
            }
        );
        assert_eq!(
            Topology::of("redis+sentinel://app:pw@127.0.0.1:26395,127.0.0.1:26396/commerce").unwrap(),
            Topology::Sentinel {
                sentinels: vec!["redis://127.0.0.1:26395".into(), "redis://127.0.0.1:26396".into()],
                master: "commerce".into(),
                user: Some("app".into()),
                password: Some("pw".into()),
            }
        );
        assert!(
            Topology::of("redis+sentinel://127.0.0.1:26395").is_err(),
            "no master name"
        );
        assert!(Topology::of("redis+cluster://").is_err(), "no node");
    }
}
