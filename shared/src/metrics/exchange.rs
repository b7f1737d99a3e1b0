//! One request seen from outside: its route template, its request id (`X-Request-Id`,
//! honoured or made up, always answered), how long it took, and the JSON log line it
//! leaves on stderr (natively the server's stderr; in Spin the component's, which the host
//! writes to its logs).

use std::io::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::http::Response;
use crate::routes::{self, RouteId};

/// The request id header, in and out.
pub const REQUEST_ID: &str = "x-request-id";

/// Longest request id honoured.
const MAX_REQUEST_ID: usize = 128;

/// How much the service logs (`log_level`): every level includes the ones before it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// 5xx answers and failures of background work.
    Error,
    /// …and warnings.
    Warn,
    /// …and one line per request (the default).
    #[default]
    Info,
    /// …and details (nothing more than `Info` logs yet).
    Debug,
}

impl LogLevel {
    /// Parses `off|error|warn|info|debug`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warn" => LogLevel::Warn,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            _ => return None,
        })
    }

    /// The level's name in log lines.
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// A request being answered: started by [`Exchange::begin`] when it arrives, ended by
/// [`Exchange::end`] with its response.
#[derive(Debug)]
pub struct Exchange {
    started: Instant,
    route: RouteId,
    /// The method, kept only for a request no route answers (a route's is in its template).
    stray_method: Option<String>,
    request_id: String,
}

impl Exchange {
    /// Starts timing a request for `method` on `path`, taking its `X-Request-Id` if it is
    /// 1–128 characters of `[A-Za-z0-9._-]`, and making one up otherwise.
    pub fn begin(method: &str, path: &str, request_id: Option<&str>) -> Self {
        let started = Instant::now();
        let request_id = match request_id {
            Some(id) if is_sane(id) => id.to_owned(),
            _ => new_request_id(),
        };
        let route = routes::of(method, path);
        let stray_method = (route == routes::OTHER).then(|| {
            let token =
                !method.is_empty() && method.len() <= 16 && method.bytes().all(|b| b.is_ascii_uppercase());
            if token {
                method.to_owned()
            } else {
                "OTHER".to_owned()
            }
        });
        Self {
            started,
            route,
            stray_method,
            request_id,
        }
    }

    /// The same exchange, timed from `started` (a host that did work before it could
    /// begin, such as reading its settings).
    pub fn since(mut self, started: Instant) -> Self {
        self.started = started;
        self
    }

    /// The request's id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Records the request's metrics, answers its id in `X-Request-Id`, and logs it: at
    /// info, a 5xx at error, nothing below `level`.
    pub fn end(self, response: &mut Response, level: LogLevel) {
        let elapsed = self.started.elapsed();
        super::request(self.route, response.status, elapsed);
        let line_level = if response.status >= 500 {
            LogLevel::Error
        } else {
            LogLevel::Info
        };
        if line_level <= level {
            let (method, route) = match routes::ROUTES.get(self.route) {
                Some(route) => (route.method, route.path),
                None => (self.stray_method.as_deref().unwrap_or("OTHER"), "other"),
            };
            let ts = crate::clock::rfc3339_millis(crate::clock::wall_clock_ms());
            // Every field is a template, a number or a sane id: nothing to escape, but a
            // 500's cause, which is quoted as JSON.
            let fault = match &response.fault {
                Some(cause) => format!(",\"error\":{}", serde_json::Value::from(redacted(cause))),
                None => String::new(),
            };
            let line = format!(
                "{{\"ts\":\"{ts}\",\"level\":\"{}\",\"route\":\"{route}\",\"method\":\"{method}\",\"status\":{},\"durationMs\":{:.3},\"requestId\":\"{}\"{fault}}}\n",
                line_level.name(),
                response.status,
                elapsed.as_secs_f64() * 1000.0,
                self.request_id
            );
            // One write per line, so concurrent requests' lines never interleave.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
        response.headers.push((REQUEST_ID.into(), self.request_id));
    }
}

/// Logs one event that is not a request (background work) as a JSON line on stderr,
/// `{"ts","level","message"}`, if `line` is within `level`.
pub fn log(level: LogLevel, line: LogLevel, message: &str) {
    if line > level || line == LogLevel::Off {
        return;
    }
    let ts = crate::clock::rfc3339_millis(crate::clock::wall_clock_ms());
    let entry = serde_json::json!({ "ts": ts, "level": line.name(), "message": message });
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("{entry}\n").as_bytes());
}

/// `text` with every run of 16 or more hex digits cut to its first 4 and `…`: cart and
/// session ids (128 random bits in hex) are credentials, kept out of the log as paths are.
fn redacted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 16 {
            out.push_str(&run[..4]);
            out.push('…');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

fn is_sane(id: &str) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A new request id: `req_` and 32 hex digits, unique without a system call per request
/// (asking the OS for randomness each time cost more than the rest of the bookkeeping):
/// 64 random bits drawn once per process (per instance in Spin), then a bijective mix
/// (SplitMix64) of a counter, so ids never repeat within a process and do not show how
/// many requests it served.
fn new_request_id() -> String {
    static SEED: OnceLock<(u64, u64)> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let (process, offset) = *SEED.get_or_init(|| {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            // No randomness: the clock still tells processes apart.
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            bytes[..16].copy_from_slice(&now.as_nanos().to_le_bytes());
        }
        let (high, low) = bytes.split_at(8);
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
        (word(high), word(low))
    });
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("req_{process:016x}{:016x}", splitmix64(offset.wrapping_add(n)))
}

/// SplitMix64's output function: a bijection on `u64` that scatters neighbouring inputs.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_request_ids_are_kept_and_others_replaced() {
        for id in ["abc-123", "A.b_c", &"x".repeat(128)] {
            assert_eq!(Exchange::begin("GET", "/", Some(id)).request_id(), id);
        }
        for id in ["", "a b", "a\"b", "ä", &"x".repeat(129), "a\nb"] {
            let made = Exchange::begin("GET", "/", Some(id));
            assert!(made.request_id().starts_with("req_"), "{id:?}");
            assert_eq!(made.request_id().len(), 36);
        }
        assert_ne!(
            Exchange::begin("GET", "/", None).request_id(),
            Exchange::begin("GET", "/", None).request_id()
        );
    }

    #[test]
    fn the_answer_carries_the_request_id() {
        let mut response = Response::json(200, &serde_json::json!({}));
        Exchange::begin("GET", "/metrics", Some("abc")).end(&mut response, LogLevel::Off);
        assert!(
            response
                .headers
                .contains(&(REQUEST_ID.to_owned(), "abc".to_owned()))
        );
    }

    #[test]
    fn ids_are_cut_from_a_logged_cause() {
        assert_eq!(
            redacted("checkout cs_3ea76cf7aab95a217cc31aa2d326be63 has malformed frozen metadata"),
            "checkout cs_3ea7… has malformed frozen metadata"
        );
        assert_eq!(redacted("cart 0123456789abcdef!"), "cart 0123…!");
        assert_eq!(redacted("redis: ERR 42 deadbeef"), "redis: ERR 42 deadbeef");
    }

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(LogLevel::parse("warn"), Some(LogLevel::Warn));
        assert_eq!(LogLevel::parse("loud"), None);
        assert!(LogLevel::Error < LogLevel::Info);
    }
}
