//! The application: the ports and settings every handler works with.

use crate::error::{Error, Result};
use crate::keys::Keys;
use crate::ports::{Http, Redis, Sql};
use crate::pricing::cache::RulesetCache;
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
    /// The ruleset entries quotes have read, kept for as long as their versions are current.
    pub rulesets: RulesetCache,
}

impl<R: Redis, S: Sql, H: Http> App<R, S, H> {
    /// An app over the given ports.
    pub fn new(redis: R, sql: S, http: H, settings: Settings) -> Self {
        let keys = Keys::new(&settings.key_prefix);
        let rulesets = RulesetCache::new(settings.ruleset_cache_entries);
        Self {
            redis,
            sql,
            http,
            settings,
            keys,
            rulesets,
        }
    }

    /// With `redis_wait_replicas` set, waits until that many replicas have the writes made
    /// to the nodes serving `keys` (a reservation, a checkout session): a failover then no
    /// longer loses them. Fewer in `redis_wait_timeout_ms` is a 503; the write stands on
    /// the master and a retry repeats it harmlessly.
    pub async fn replicated(&self, keys: &[&str]) -> Result<()> {
        let wanted = i64::from(self.settings.redis_wait_replicas);
        if wanted == 0 {
            return Ok(());
        }
        let timeout = i64::try_from(self.settings.redis_wait_timeout_ms).unwrap_or(i64::MAX);
        let acknowledged = self.redis.wait_replicas(keys, wanted, timeout).await?;
        if acknowledged < wanted {
            return Err(Error::Unavailable {
                dependency: "redis",
                message: format!(
                    "{acknowledged} of {wanted} replica(s) acknowledged the write within {timeout} ms"
                ),
            });
        }
        Ok(())
    }
}
