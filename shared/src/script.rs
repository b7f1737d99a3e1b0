//! Lua scripts run by SHA with a NOSCRIPT fallback.
//!
//! A script is sent in full only the first time a Redis server sees it (or after a
//! restart or `SCRIPT FLUSH`); every other call is an `EVALSHA`, one round trip either way
//! in the common case. NOSCRIPT is recognised by its text because the Spin host hands
//! server errors over as text (DESIGN §2).

use std::sync::OnceLock;

use crate::error::{Error, PortError};
use crate::ports::{Redis, RedisArg, RedisReply};

/// A Lua script compiled into the binary, with its SHA-1 computed once.
pub struct Script {
    source: &'static str,
    sha: OnceLock<String>,
}

impl Script {
    /// Wraps a script source (usually `include_str!("x.lua")`).
    pub const fn new(source: &'static str) -> Self {
        Self {
            source,
            sha: OnceLock::new(),
        }
    }

    /// The script's SHA-1, as `SCRIPT LOAD` would answer it.
    pub fn sha(&self) -> &str {
        self.sha
            .get_or_init(|| sha1_smol::Sha1::from(self.source).digest().to_string())
    }

    /// Runs the script with `keys` and `args`: `EVALSHA`, then `EVAL` if the server does
    /// not know it yet.
    pub async fn run<R: Redis>(
        &self,
        redis: &R,
        keys: &[&str],
        args: Vec<RedisArg>,
    ) -> Result<Vec<RedisReply>, PortError> {
        let call = |head: RedisArg| {
            let mut all = Vec::with_capacity(2 + keys.len() + args.len());
            all.push(head);
            all.push(RedisArg::Int(keys.len() as i64));
            all.extend(keys.iter().map(|k| RedisArg::from(*k)));
            all.extend(args.iter().cloned());
            all
        };
        match redis.execute("EVALSHA", call(self.sha().into())).await {
            Err(PortError::Server(message)) if message.contains("NOSCRIPT") => {
                redis.execute("EVAL", call(self.source.into())).await
            }
            other => other,
        }
    }
}

/// The leading tag of a script's flat reply (`OK`, `MISSING`, …), empty if there is none.
pub fn tag(reply: &[RedisReply]) -> &str {
    reply.first().and_then(RedisReply::as_text).unwrap_or("")
}

/// The error for a script reply of a shape its caller does not know: a bug or a foreign
/// script under the same SHA, never the client's fault (500).
pub fn unexpected(reply: &[RedisReply]) -> Error {
    Error::Internal(format!("unexpected script reply: {reply:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha_matches_redis_script_load() {
        // `redis-cli SCRIPT LOAD "return 1"` answers this digest.
        let script = Script::new("return 1");
        assert_eq!(script.sha(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }
}
