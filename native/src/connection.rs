//! The accept loop of `commerce serve`: a cap on open connections and the timeouts that
//! keep slow, idle or stuck clients from holding the server's sockets (issue: 350
//! slow-header connections were never closed; ~20,000 idle ones exhausted the file
//! descriptors and `/health` stopped answering).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use commerce_core::http::{MAX_HEADER_FIELDS, Response};
use commerce_core::{Error, Settings};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// The connection limits, from the settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    header: Duration,
    idle: Duration,
    max_connections: usize,
}

impl Limits {
    /// `http_header_timeout_ms`, `http_idle_timeout_ms` and `max_connections`.
    pub fn of(settings: &Settings) -> Self {
        Self {
            header: Duration::from_millis(settings.http_header_timeout_ms),
            idle: Duration::from_millis(settings.http_idle_timeout_ms),
            max_connections: settings.max_connections,
        }
    }
}

/// Files the process keeps open besides its clients' connections: the PostgreSQL pool,
/// Redis, the listener, the runtime's own, with room to spare.
const OTHER_FILES: u64 = 256;

/// Raises the process's soft limit of open files to its hard limit, so that the connection
/// cap, not the file limit, is what refuses clients: past the file limit `accept` fails and
/// new clients wait unanswered instead of getting the cap's 503. Says so when even the hard
/// limit is below what `max_connections` needs.
pub fn raise_open_file_limit(max_connections: usize) {
    // SAFETY: getrlimit and setrlimit read and write only the struct they are given.
    let limit = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
        limit.rlim_cur
    };
    let needed = max_connections as u64 + OTHER_FILES;
    if (limit as u64) < needed {
        eprintln!(
            "commerce: warning: max_connections is {max_connections} but this process may open only {limit} \
             files: past about {} connections new clients wait instead of being refused; raise the \
             limit (ulimit -n) or lower max_connections",
            (limit as u64).saturating_sub(OTHER_FILES)
        );
    }
}

/// Accepts connections until the listener fails for good, serving each with `router`.
pub async fn accept(listener: TcpListener, router: Router, limits: Limits) -> std::io::Result<()> {
    raise_open_file_limit(limits.max_connections);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors or a connection reset before it was taken: wait a
            // moment rather than spin, and go on serving the connections already open.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let router = router.clone();
                tokio::spawn(async move {
                    serve_one(stream, router, limits).await;
                    drop(slot);
                });
            }
            Err(_) => {
                tokio::spawn(refuse(stream));
            }
        }
    }
}

/// Beyond the cap: a 503 with the error body and `Retry-After`, then the socket closes.
async fn refuse(mut stream: TcpStream) {
    let response = Response::error(&Error::Unavailable {
        dependency: "server",
        message: "too many open connections".into(),
    });
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n",
        response.body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&response.body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// When a connection last moved a byte, how many of its requests are being answered, and
/// since when a request's head has been arriving.
#[derive(Debug)]
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// 1 + the ms (since `started`) of the first byte of a head not yet whole; 0: none.
    head_since_ms: AtomicU64,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes came in: between requests they are the start of the next one's head.
    fn read(&self) {
        self.touch();
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.head_since_ms.compare_exchange(
                0,
                self.now_ms() + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// A request's head is whole (hyper hands the request over): it is being answered.
    fn answering(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(0, Ordering::Relaxed);
    }

    /// How long the head now arriving has taken, if one is.
    fn head_for(&self) -> Option<Duration> {
        let since = self.head_since_ms.load(Ordering::Relaxed);
        (since > 0 && self.in_flight.load(Ordering::Relaxed) == 0)
            .then(|| Duration::from_millis(self.now_ms().saturating_sub(since - 1)))
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// One connection: HTTP/1.1 with keep-alive, and a watchdog that closes it once a
/// request's head has been arriving for the header timeout (from its first byte), or once
/// idle (no request being answered, no byte moved) for the idle timeout. The header timeout
/// is ours, not hyper's `header_read_timeout` (turned off: hyper's also runs while a
/// kept-alive connection waits for its next request, and is 30 s unless set, so it would
/// cut every idle connection at 30 s or the header timeout instead of the idle one). Each request carries the socket's peer address
/// (`ConnectInfo`), the client address the rate limits start from.
async fn serve_one(stream: TcpStream, router: Router, limits: Limits) {
    let peer: Option<SocketAddr> = stream.peer_addr().ok();
    let activity = Arc::new(Activity {
        started: Instant::now(),
        last_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
        head_since_ms: AtomicU64::new(0),
    });
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let answering = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (router, activity) = (router.clone(), answering.clone());
        async move {
            activity.answering();
            let mut req = req.map(axum::body::Body::new);
            if let Some(peer) = peer {
                req.extensions_mut().insert(ConnectInfo(peer));
            }
            let response = router.oneshot(req).await;
            activity.in_flight.fetch_sub(1, Ordering::Relaxed);
            activity.touch();
            response
        }
    });
    // hyper's own refusal of a head past its limits has an empty body: its limit on the
    // fields is set past the router's (`Request::head_within_limits`), which answers the
    // usual excess with the JSON error body; its buffer (about 400 KB) is past the
    // router's byte limit already.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .max_headers(4 * MAX_HEADER_FIELDS)
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let tick = (limits.idle.min(limits.header) / 4).max(Duration::from_millis(25));
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = tokio::time::sleep(tick) => {
                let idle = activity.in_flight.load(Ordering::Relaxed) == 0 && activity.idle_for() >= limits.idle;
                let slow_head = activity.head_for().is_some_and(|took| took >= limits.header);
                if idle || slow_head {
                    // Nothing is being answered: closing loses no response.
                    return;
                }
            }
        }
    }
}

/// A socket that records when it last moved a byte.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
