//! The `Http` port over Spin's outbound HTTP.

use std::time::Duration;

use commerce_core::error::{Dependency, PortError};
use commerce_core::ports::{Http, OutboundRequest, OutboundResponse};

/// The [`Http`] port over Spin's outbound HTTP (`wasi:http/outgoing-handler`), reaching
/// only what `allowed_outbound_hosts` names (the payment gateway).
///
/// Guarantees: any HTTP answer is `Ok`, whatever its status; a request the host refuses
/// or cannot deliver, or that does not connect or start answering within `timeout` (asked
/// of the host as wasi:http's connect, first-byte and between-bytes timeouts), is
/// [`Failure::Unreachable`](commerce_core::error::Failure::Unreachable) (→ 503).
pub struct SpinHttp {
    /// The gateway's `gateway_timeout_ms`.
    pub timeout: Duration,
}

impl Http for SpinHttp {
    async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, PortError> {
        // The component has nothing to interleave: it blocks on the host's pollables.
        send_blocking(request, self.timeout)
    }
}

/// Sends `request` over `wasi:http/outgoing-handler` with `timeout` as the host's connect,
/// first-byte and between-bytes timeouts (spin-sdk's `send` sets none), and reads the
/// whole answer.
fn send_blocking(request: OutboundRequest, timeout: Duration) -> Result<OutboundResponse, PortError> {
    use wasi::http::types::{
        Fields, Method as WasiMethod, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
    };
    use wasi::io::streams::StreamError;

    let refused = |what: &str| PortError::unreachable(Dependency::Gateway, format!("outbound HTTP {what}"));
    let (scheme, rest) = request
        .url
        .split_once("://")
        .ok_or_else(|| refused("URL has no scheme"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |at| rest.split_at(at));
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_owned()),
    };
    let method = match request.method.as_str() {
        "GET" => WasiMethod::Get,
        "POST" => WasiMethod::Post,
        "PUT" => WasiMethod::Put,
        "DELETE" => WasiMethod::Delete,
        other => WasiMethod::Other(other.to_owned()),
    };
    let headers: Vec<(String, Vec<u8>)> = request
        .headers
        .into_iter()
        .map(|(name, value)| (name, value.into_bytes()))
        .collect();
    let fields = Fields::from_list(&headers).map_err(|e| refused(&format!("headers refused: {e:?}")))?;
    let outgoing = OutgoingRequest::new(fields);
    outgoing
        .set_method(&method)
        .and_then(|()| outgoing.set_scheme(Some(&scheme)))
        .and_then(|()| outgoing.set_authority(Some(authority)))
        .and_then(|()| outgoing.set_path_with_query(Some(path)))
        .map_err(|()| refused(&format!("request refused for {}", request.url)))?;
    let body = outgoing.body().map_err(|()| refused("body unavailable"))?;
    let options = RequestOptions::new();
    let nanos = Some(u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX));
    // A host that does not support one of them refuses it; it then keeps its own default.
    let _ = options.set_connect_timeout(nanos);
    let _ = options.set_first_byte_timeout(nanos);
    let _ = options.set_between_bytes_timeout(nanos);
    let pending = wasi::http::outgoing_handler::handle(outgoing, Some(options))
        .map_err(|e| refused(&format!("not sent: {e:?}")))?;
    {
        let stream = body.write().map_err(|()| refused("body unwritable"))?;
        // wasi:io allows at most 4096 bytes per blocking write.
        for chunk in request.body.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| refused(&format!("body not sent: {e:?}")))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| refused(&format!("body not finished: {e:?}")))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(refused(&format!("failed: {code:?}"))),
        Some(Err(())) | None => return Err(refused("gave no response")),
    };
    let status = response.status();
    let incoming = response
        .consume()
        .map_err(|()| refused("response body unavailable"))?;
    let mut bytes = Vec::new();
    {
        let stream = incoming
            .stream()
            .map_err(|()| refused("response body unreadable"))?;
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(refused(&format!("response broke off: {}", e.to_debug_string())));
                }
            }
        }
    }
    Ok(OutboundResponse { status, body: bytes })
}
