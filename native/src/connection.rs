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
use commerce_core::http::Response;
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

/// Accepts connections until the listener fails for good, serving each with `router`.
pub async fn accept(listener: TcpListener, router: Router, limits: Limits) -> std::io::Result<()> {
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

/// When a connection last moved a byte, and how many of its requests are being answered.
#[derive(Debug)]
struct Activity {
    started: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }
}

/// One connection: HTTP/1.1 with keep-alive, the header timeout enforced by hyper, and a
/// watchdog that closes it once idle (no request being answered, no byte moved) for the
/// idle timeout. Each request carries the socket's peer address (`ConnectInfo`), the
/// client address the rate limits start from.
async fn serve_one(stream: TcpStream, router: Router, limits: Limits) {
    let peer: Option<SocketAddr> = stream.peer_addr().ok();
    let activity = Arc::new(Activity {
        started: Instant::now(),
        last_ms: AtomicU64::new(0),
        in_flight: AtomicUsize::new(0),
    });
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let answering = activity.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (router, activity) = (router.clone(), answering.clone());
        async move {
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
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
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let tick = (limits.idle / 4).max(Duration::from_millis(25));
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = tokio::time::sleep(tick) => {
                let idle = activity.in_flight.load(Ordering::Relaxed) == 0 && activity.idle_for() >= limits.idle;
                if idle {
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
            self.activity.touch();
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
