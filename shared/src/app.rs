//! The application: the ports and settings every handler works with.

use crate::keys::Keys;
use crate::ports::{Http, Redis, Sql};
use crate::settings::Settings;

/// Everything a request handler needs. Natively one `App` serves every request; in Spin
/// one is built per request from the host's interfaces.
pub struct App<R, S, H> {
    /// The Redis port.
    pub redis: R,
    /// The PostgreSQL port.
    pub sql: S,
    /// The outbound HTTP port (the payment gateway).
    pub http: H,
    /// The settings.
    pub settings: Settings,
    /// The key builder for the configured namespace.
    pub keys: Keys,
}

impl<R: Redis, S: Sql, H: Http> App<R, S, H> {
    /// An app over the given ports.
    pub fn new(redis: R, sql: S, http: H, settings: Settings) -> Self {
        let keys = Keys::new(&settings.key_prefix);
        Self {
            redis,
            sql,
            http,
            settings,
            keys,
        }
    }
}
