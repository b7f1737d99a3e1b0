//! The local Redis Cluster and Sentinel group that `scripts/services start --cluster` and
//! `--sentinel` start (`scripts/redis-topology`), for the scaling tests: where they are,
//! which node serves a slot, moving a slot between masters while clients run (what
//! `redis-cli --cluster reshard` does, one slot at a time), and stopping a node by its PID
//! and starting it again exactly as it ran (its command line and directory, read from
//! `/proc` before it is killed).

use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

/// `COMMERCE_REDIS_CLUSTER_URL`, if a cluster was started for the tests.
pub fn cluster_url() -> Option<String> {
    std::env::var("COMMERCE_REDIS_CLUSTER_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// `COMMERCE_REDIS_SENTINEL_URL`, if a Sentinel group was started for the tests.
pub fn sentinel_url() -> Option<String> {
    std::env::var("COMMERCE_REDIS_SENTINEL_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// One node of the cluster, as `CLUSTER NODES` lists it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The node id.
    pub id: String,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// Whether it is a master now.
    pub master: bool,
    /// Whether it is flagged as failing.
    pub failed: bool,
    /// Its slot ranges (masters), e.g. `0-5460`.
    pub slots: Vec<(u16, u16)>,
}

/// A direct connection to one node.
pub async fn connect(address: &str) -> MultiplexedConnection {
    redis::Client::open(format!("redis://{address}"))
        .expect("node url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connecting to {address}: {e}"))
}

/// The cluster's nodes as `seed` sees them.
pub async fn nodes(seed: &str) -> Vec<Node> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query_async(&mut connect(seed).await)
        .await
        .expect("CLUSTER NODES");
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let flags = *f.get(2)?;
            Some(Node {
                id: f.first()?.to_string(),
                address: f.get(1)?.split('@').next()?.to_string(),
                master: flags.split(',').any(|x| x == "master"),
                failed: flags.contains("fail"),
                slots: f
                    .iter()
                    .skip(8)
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|n| (n, n)),
                    })
                    .collect(),
            })
        })
        .collect()
}

/// The slot of `key`.
pub async fn slot_of(seed: &str, key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(&mut connect(seed).await)
        .await
        .expect("CLUSTER KEYSLOT")
}

/// The live master serving `slot`.
pub async fn master_of(seed: &str, slot: u16) -> Node {
    nodes(seed)
        .await
        .into_iter()
        .find(|n| n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .unwrap_or_else(|| panic!("no live master serves slot {slot}"))
}

/// The seed node addresses of a `redis+cluster://` URL.
pub fn seeds(url: &str) -> Vec<String> {
    commerce_native::redis_port::cluster_nodes(url)
        .unwrap_or_default()
        .into_iter()
        .map(|u| {
            u.trim_start_matches("redis://")
                .rsplit('@')
                .next()
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

/// A live seed node of the cluster (one may be down during a test).
pub async fn live_seed(url: &str) -> String {
    for seed in seeds(url) {
        if let Ok(client) = redis::Client::open(format!("redis://{seed}"))
            && let Ok(Ok(mut c)) =
                tokio::time::timeout(Duration::from_secs(1), client.get_multiplexed_async_connection()).await
            && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
        {
            return seed;
        }
    }
    panic!("no seed node of {url} answers");
}

/// Moves `slot` from its master to `to` while clients keep using it: the target imports,
/// the source migrates, the keys move in batches with `MIGRATE`, and every master learns
/// the new owner. Clients meanwhile get `ASK` (and `TRYAGAIN` for a script whose keys are
/// split), then `MOVED`.
pub async fn move_slot(seed: &str, slot: u16, to: &Node) {
    let from = master_of(seed, slot).await;
    if from.id == to.id {
        return;
    }
    let mut source = connect(&from.address).await;
    let mut target = connect(&to.address).await;
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(&from.id)
        .query_async(&mut target)
        .await
        .expect("SETSLOT IMPORTING");
    let _: () = redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("MIGRATING")
        .arg(&to.id)
        .query_async(&mut source)
        .await
        .expect("SETSLOT MIGRATING");
    let (host, port) = to.address.rsplit_once(':').expect("host:port");
    loop {
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(100)
            .query_async(&mut source)
            .await
            .expect("GETKEYSINSLOT");
        if keys.is_empty() {
            break;
        }
        let mut migrate = redis::cmd("MIGRATE");
        migrate
            .arg(host)
            .arg(port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("REPLACE")
            .arg("KEYS");
        for key in &keys {
            migrate.arg(key.as_slice());
        }
        let _: redis::Value = migrate.query_async(&mut source).await.expect("MIGRATE");
    }
    for node in nodes(seed).await.iter().filter(|n| n.master && !n.failed) {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg("NODE")
            .arg(&to.id)
            .query_async(&mut connect(&node.address).await)
            .await
            .expect("SETSLOT NODE");
    }
}

/// Waits until a live master other than `old` serves `slot` (a replica was promoted), and
/// returns how long that took.
pub async fn wait_promoted(url: &str, slot: u16, old: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let seed = live_seed(url).await;
        let serving = nodes(&seed).await.into_iter().find(|n| {
            n.master
                && !n.failed
                && n.address != old
                && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
        });
        if serving.is_some() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "no replica took over slot {slot} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the restarted `address` is a replica in sync with its master. A master
/// restarted after its replica took over first comes back believing it still owns its
/// slots, with its own (older) data, until the cluster's gossip demotes it: reads meanwhile
/// would see that older data.
pub async fn wait_rejoined(address: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let replication: Option<String> = match redis::Client::open(format!("redis://{address}")) {
            Ok(client) => match client.get_multiplexed_async_connection().await {
                Ok(mut c) => redis::cmd("INFO")
                    .arg("replication")
                    .query_async(&mut c)
                    .await
                    .ok(),
                Err(_) => None,
            },
            Err(_) => None,
        };
        if replication.is_some_and(|r| r.contains("role:slave") && r.contains("master_link_status:up")) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{address} did not rejoin as a replica within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every slot is served by a live master again (`cluster_state:ok` on the
/// seed), within `within`.
pub async fn wait_cluster_ok(seed: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let info: Option<String> = match redis::Client::open(format!("redis://{seed}")) {
            Ok(client) => match client.get_multiplexed_async_connection().await {
                Ok(mut c) => redis::cmd("CLUSTER").arg("INFO").query_async(&mut c).await.ok(),
                Err(_) => None,
            },
            Err(_) => None,
        };
        if info.is_some_and(|i| i.contains("cluster_state:ok")) {
            let all_served = nodes(seed)
                .await
                .iter()
                .filter(|n| n.master && !n.failed)
                .map(|n| n.slots.iter().map(|(a, b)| usize::from(b - a) + 1).sum::<usize>())
                .sum::<usize>()
                == 16384;
            if all_served {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < within,
            "the cluster did not recover within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A redis-server that a test stopped, to be started again as it ran.
pub struct Stopped {
    /// Its address.
    pub address: String,
    options: Vec<(String, String)>,
}

/// The settings a node is started again with (its data, cluster state and persistence).
const KEPT: &[&str] = &[
    "port",
    "bind",
    "dir",
    "pidfile",
    "logfile",
    "cluster-enabled",
    "cluster-config-file",
    "cluster-node-timeout",
    "appendonly",
    "appendfsync",
    "save",
    "maxclients",
];

/// Kills the redis-server listening at `address` with SIGKILL, by the PID it reports
/// itself (`INFO server`), after reading the settings to start it again with.
pub async fn kill9(address: &str) -> Stopped {
    let mut connection = connect(address).await;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut connection)
        .await
        .expect("INFO server");
    let pid: i32 = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .expect("process_id in INFO");
    let mut options = Vec::new();
    for name in KEPT {
        let pair: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(*name)
            .query_async(&mut connection)
            .await
            .expect("CONFIG GET");
        if let [key, value] = pair.as_slice() {
            options.push((key.clone(), value.clone()));
        }
    }
    let status = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -9 {pid}");
    Stopped {
        address: address.to_owned(),
        options,
    }
}

impl Stopped {
    /// Starts the server again with the settings it had (daemonized, as
    /// `scripts/redis-topology` starts it), and waits until it answers.
    pub async fn restart(self) {
        let mut command = std::process::Command::new("redis-server");
        for (name, value) in &self.options {
            if name == "dir" {
                command.current_dir(value);
            }
            command.arg(format!("--{name}")).arg(value);
        }
        command.arg("--daemonize").arg("yes");
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let status = command.status().expect("restarting the node");
        assert!(
            status.success(),
            "redis-server for {} did not start",
            self.address
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(client) = redis::Client::open(format!("redis://{}", self.address))
                && let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING").query_async::<String>(&mut c).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{} did not come back", self.address);
    }
}
