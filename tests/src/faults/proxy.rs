//! A TCP proxy from a free port of 127.0.0.1 to a target (Redis or PostgreSQL), through
//! which a test pauses a dependency (bytes stop flowing both ways, connections stay open,
//! new ones are accepted and held) or slows it (each chunk from the server is delayed).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// At most this many connections at once; more are closed on arrival.
const MAX_CONNECTIONS: usize = 1024;
/// At most this many chunks wait in one direction of one connection (a delay line).
const MAX_CHUNKS_IN_FLIGHT: usize = 256;
/// The epoch that tells every connection the proxy is gone.
const SHUT_DOWN: u64 = u64::MAX;

struct Shared {
    target: SocketAddr,
    paused: watch::Sender<bool>,
    latency_us: AtomicU64,
    /// Bumped by `close_all`; a connection ends when the epoch it began in is over.
    epoch: watch::Sender<u64>,
    live: AtomicUsize,
}

impl Shared {
    async fn until_resumed(&self) {
        let mut paused = self.paused.subscribe();
        let _ = paused.wait_for(|p| !*p).await;
    }
}

/// A running proxy; it stops, with all its connections, when dropped.
pub struct Proxy {
    /// The address to give clients instead of the target's.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            target,
            paused: watch::Sender::new(false),
            latency_us: AtomicU64::new(0),
            epoch: watch::Sender::new(0),
            live: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy { addr, shared, accept }
    }

    /// Stops forwarding bytes both ways; connections stay open, and new ones are accepted
    /// but not connected to the target until [`Proxy::resume`].
    pub fn pause(&self) {
        self.shared.paused.send_replace(true);
    }

    /// Forwards again everything held since [`Proxy::pause`].
    pub fn resume(&self) {
        self.shared.paused.send_replace(false);
    }

    /// Delays each chunk the target sends by `latency` (a delay line: chunks keep their
    /// order and their spacing, throughput is unchanged).
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_us
            .store(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Closes every connection open now (their clients see the connection drop).
    pub fn close_all(&self) {
        self.shared.epoch.send_modify(|e| *e += 1);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        super::url_via(url, self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.shared.epoch.send_replace(SHUT_DOWN);
        self.shared.paused.send_replace(false);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if shared.live.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            continue;
        }
        shared.live.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            let epoch = *shared.epoch.borrow();
            let mut epochs = shared.epoch.subscribe();
            tokio::select! {
                _ = epochs.wait_for(|e| *e != epoch) => {}
                _ = relay(client, &shared) => {}
            }
            shared.live.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

async fn relay(client: TcpStream, shared: &Arc<Shared>) -> std::io::Result<()> {
    // A connection made while paused is held here, as a stalled server would hold it.
    shared.until_resumed().await;
    let server = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(shared.target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting to the target"))??;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let (up, down) = tokio::join!(
        pump(client_read, server_write, shared.clone(), false),
        pump(server_read, client_write, shared.clone(), true),
    );
    up.and(down)
}

/// Copies `from` to `to` through a bounded delay line: each chunk is due `latency` after
/// it arrived (when `delayed`), and waits while the proxy is paused.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Arc<Shared>,
    delayed: bool,
) -> std::io::Result<()> {
    let (chunks, mut line) = mpsc::channel::<(Instant, Vec<u8>)>(MAX_CHUNKS_IN_FLIGHT);
    let latency = shared.clone();
    let read = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buffer).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            let delay = if delayed {
                Duration::from_micros(latency.latency_us.load(Ordering::Relaxed))
            } else {
                Duration::ZERO
            };
            if chunks
                .send((Instant::now() + delay, buffer[..n].to_vec()))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = line.recv().await {
            tokio::time::sleep_until(due).await;
            shared.until_resumed().await;
            to.write_all(&bytes).await?;
        }
        to.shutdown().await
    };
    let (read, write) = tokio::join!(read, write);
    read.and(write)
}
