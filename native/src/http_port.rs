//! The outbound HTTP port over reqwest (rustls), with a timeout on every request.

use std::time::Duration;

use commerce_core::error::{Dependency, PortError};
use commerce_core::ports::{Http, OutboundRequest, OutboundResponse};

/// The native outbound HTTP adapter.
#[derive(Clone)]
pub struct NativeHttp {
    client: reqwest::Client,
}

impl NativeHttp {
    /// A client whose requests give up after `timeout` (connect and answer).
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(Self { client })
    }
}

impl Http for NativeHttp {
    async fn send(&self, request: OutboundRequest) -> Result<OutboundResponse, PortError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|e| PortError::server(Dependency::Gateway, format!("bad method: {e}")))?;
        let mut builder = self.client.request(method, &request.url).body(request.body);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        let response = builder.send().await.map_err(outage)?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(outage)?;
        Ok(OutboundResponse {
            status,
            body: body.to_vec(),
        })
    }
}

/// A failed call, its causes spelled out: reqwest's own text says only "error sending
/// request", while what went wrong (`operation timed out`, `Connection refused`) is in its
/// sources, which is what an operator and the error kind of the metrics need.
fn outage(e: reqwest::Error) -> PortError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_timeout() && !message.contains("timed out") {
        message.push_str(" (timed out)");
    }
    PortError::unreachable(Dependency::Gateway, message)
}
