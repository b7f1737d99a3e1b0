//! Walking the keys that match a pattern with `SCAN`, a page at a time (never `KEYS`,
//! which blocks Redis while it walks the whole keyspace). On a Redis Cluster the native
//! adapter's `SCAN` visits every master in turn, its cursor saying which.
//!
//! `SCAN`'s guarantees are the walk's: a key present from start to end is seen at least
//! once (maybe twice); one added or removed meanwhile may or may not be. Every caller
//! (backup, the sweep of expired holds, the check of live sessions) is written for that.

use crate::error::Result;
use crate::ports::{Redis, RedisArg, RedisReply};
use crate::script::unexpected;

/// One walk over the keys matching a pattern.
pub struct Scan<'a, R: Redis> {
    redis: &'a R,
    pattern: String,
    count: i64,
    /// The cursor of the next page; `None` once Redis said the walk is done.
    cursor: Option<String>,
}

impl<'a, R: Redis> Scan<'a, R> {
    /// A walk over the keys matching `pattern` (`MATCH`), asking about `count` keys a page
    /// (`COUNT`: a hint to Redis, not a limit).
    pub fn new(redis: &'a R, pattern: impl Into<String>, count: i64) -> Self {
        Self {
            redis,
            pattern: pattern.into(),
            count,
            cursor: Some("0".to_owned()),
        }
    }

    /// The keys of the next page (which may be empty), or `None` once the walk is done.
    pub async fn next_page(&mut self) -> Result<Option<Vec<String>>> {
        let Some(cursor) = self.cursor.take() else {
            return Ok(None);
        };
        let call = self.redis.execute(
            "SCAN",
            vec![
                cursor.into(),
                "MATCH".into(),
                self.pattern.as_str().into(),
                "COUNT".into(),
                RedisArg::Int(self.count),
            ],
        );
        // Boxed: the adapter's future nested inside the caller's (a backup's export inside
        // a test's future) otherwise takes rustc past its query depth limit in a clean build.
        // One allocation a page.
        let page = Box::pin(call).await?;
        let (next, keys) = page.split_first().ok_or_else(|| unexpected(&page))?;
        let next = next.as_text().ok_or_else(|| unexpected(&page))?;
        self.cursor = (next != "0").then(|| next.to_owned());
        Ok(Some(
            keys.iter()
                .filter_map(RedisReply::as_text)
                .map(str::to_owned)
                .collect(),
        ))
    }
}
