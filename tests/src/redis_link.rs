//! The tests' own Redis connection, to a standalone server or to a Redis Cluster (when
//! `COMMERCE_REDIS_URL` is a `redis+cluster://` URL): commands go through it the same way
//! either way, and a key scan visits every master of the cluster.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection for checking what the app left in Redis.
#[derive(Clone)]
pub enum TestRedis {
    /// One server.
    Single(MultiplexedConnection),
    /// A cluster, with its seed nodes for scans.
    Cluster {
        /// Routes each command by its key's slot.
        connection: ClusterConnection,
        /// Every seed node's URL.
        nodes: Vec<String>,
    },
}

impl TestRedis {
    /// Connects to `url`; a `redis+sentinel://` URL to the master the sentinels name now.
    pub async fn connect(url: &str) -> redis::RedisResult<Self> {
        if let Some((sentinels, master)) = commerce_native::redis_port::sentinel_nodes(url) {
            for sentinel in sentinels {
                let Ok(client) = redis::Client::open(sentinel) else {
                    continue;
                };
                let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                    continue;
                };
                let address: Vec<String> = match redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&master)
                    .query_async(&mut connection)
                    .await
                {
                    Ok(address) => address,
                    Err(_) => continue,
                };
                if let [host, port] = address.as_slice() {
                    let client = redis::Client::open(format!("redis://{host}:{port}"))?;
                    return Ok(TestRedis::Single(
                        client.get_multiplexed_async_connection().await?,
                    ));
                }
            }
            return Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no sentinel named a master",
            )));
        }
        match commerce_native::redis_port::cluster_nodes(url) {
            Some(nodes) => {
                let connection = redis::cluster::ClusterClient::new(nodes.clone())?
                    .get_async_connection()
                    .await?;
                Ok(TestRedis::Cluster { connection, nodes })
            }
            None => Ok(TestRedis::Single(
                crate::redis_client(url)
                    .get_multiplexed_async_connection()
                    .await?,
            )),
        }
    }

    /// Every key matching `pattern`, on every master.
    pub async fn scan(&self, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        match self {
            TestRedis::Single(connection) => scan_one(&mut connection.clone(), pattern, &mut keys).await,
            TestRedis::Cluster { nodes, .. } => {
                for node in nodes {
                    let Ok(client) = redis::Client::open(node.as_str()) else {
                        continue;
                    };
                    let Ok(mut connection) = client.get_multiplexed_async_connection().await else {
                        continue; // a node that is down holds no slots now
                    };
                    let role: Vec<Value> = redis::cmd("ROLE")
                        .query_async(&mut connection)
                        .await
                        .unwrap_or_default();
                    if matches!(role.first(), Some(Value::BulkString(r)) if r == b"master") {
                        scan_one(&mut connection, pattern, &mut keys).await;
                    }
                }
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }
}

async fn scan_one(connection: &mut MultiplexedConnection, pattern: &str, keys: &mut Vec<String>) {
    let mut cursor = 0u64;
    loop {
        let page: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(5000)
            .query_async(connection)
            .await;
        let (next, page) = page.expect("SCAN");
        keys.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

impl ConnectionLike for TestRedis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            TestRedis::Single(c) => c.req_packed_command(cmd),
            TestRedis::Cluster { connection, .. } => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            TestRedis::Single(c) => c.req_packed_commands(cmd, offset, count),
            TestRedis::Cluster { connection, .. } => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        0
    }
}
