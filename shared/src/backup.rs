//! Backup, restore and copy of a namespace's Redis keys (DESIGN §1: `commerce backup`,
//! `restore`, `copy`). Keys are read with SCAN (never `KEYS`, which blocks Redis) and
//! moved as `DUMP` payloads with their remaining time to live, so every type (hashes,
//! sorted sets, strings) round-trips exactly. After restoring an older backup, run
//! `commerce reconcile`: PostgreSQL, not the backup, is the record of stock.

use crate::error::{Error, ErrorCode, PortError, Result};
use crate::keys::Keys;
use crate::ports::{Redis, RedisArg, RedisReply};
use crate::script::unexpected;

/// One key as `DUMP` serialises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full key, namespace included.
    pub key: String,
    /// Milliseconds left to live; 0 for a key without expiry.
    pub ttl_ms: i64,
    /// The `DUMP` payload.
    pub dump: Vec<u8>,
}

/// Keys per SCAN page.
const SCAN_COUNT: i64 = 1000;

/// Reads every key of the namespace (every key when there is none), handing each entry to
/// `sink`. Keys that expire while being read are skipped. Returns the number exported.
pub async fn export(
    redis: &impl Redis,
    keys: &Keys,
    mut sink: impl FnMut(Entry) -> Result<()>,
) -> Result<u64> {
    let pattern = format!("{}*", keys.prefix());
    let mut cursor = "0".to_owned();
    let mut exported = 0;
    loop {
        let page = redis
            .execute(
                "SCAN",
                vec![
                    cursor.as_str().into(),
                    "MATCH".into(),
                    pattern.as_str().into(),
                    "COUNT".into(),
                    RedisArg::Int(SCAN_COUNT),
                ],
            )
            .await
            .map_err(PortError::redis)?;
        let (next, found) = page.split_first().ok_or_else(|| unexpected(&page))?;
        cursor = next.as_text().ok_or_else(|| unexpected(&page))?.to_owned();
        for key in found.iter().filter_map(RedisReply::as_text) {
            let dump = redis
                .execute("DUMP", vec![key.into()])
                .await
                .map_err(PortError::redis)?;
            let ttl = redis
                .execute("PTTL", vec![key.into()])
                .await
                .map_err(PortError::redis)?;
            let (Some(RedisReply::Bytes(dump)), Some(ttl)) =
                (dump.into_iter().next(), ttl.first().and_then(RedisReply::as_int))
            else {
                continue;
            };
            if ttl == -2 {
                continue;
            }
            sink(Entry {
                key: key.to_owned(),
                ttl_ms: ttl.max(0),
                dump,
            })?;
            exported += 1;
        }
        if cursor == "0" {
            return Ok(exported);
        }
    }
}

/// Writes entries back with `RESTORE … REPLACE`, keeping their time to live. Returns the
/// number restored.
pub async fn import(redis: &impl Redis, entries: impl IntoIterator<Item = Entry>) -> Result<u64> {
    let mut restored = 0;
    for entry in entries {
        redis
            .execute(
                "RESTORE",
                vec![
                    entry.key.into(),
                    RedisArg::Int(entry.ttl_ms),
                    RedisArg::Bytes(entry.dump),
                    "REPLACE".into(),
                ],
            )
            .await
            .map_err(PortError::redis)?;
        restored += 1;
    }
    Ok(restored)
}

/// The backup file's first bytes.
pub const MAGIC: &[u8] = b"spin-commerce backup 1\n";

/// Appends one entry in the backup file format: key length (u32 BE), key, time to live
/// (i64 BE), payload length (u32 BE), payload.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(&(entry.key.len() as u32).to_be_bytes());
    out.extend_from_slice(entry.key.as_bytes());
    out.extend_from_slice(&entry.ttl_ms.to_be_bytes());
    out.extend_from_slice(&(entry.dump.len() as u32).to_be_bytes());
    out.extend_from_slice(&entry.dump);
}

/// Reads a whole backup file; a truncated or foreign file is an error, not a partial read.
pub fn decode(bytes: &[u8]) -> Result<Vec<Entry>> {
    let bad = || {
        Error::bad_request(
            ErrorCode::InvalidBackup,
            "not a spin-commerce backup, or truncated",
        )
    };
    let body = bytes.strip_prefix(MAGIC).ok_or_else(bad)?;
    let mut at = 0;
    let mut take = |n: usize| -> Result<&[u8]> {
        let part = body.get(at..at + n).ok_or_else(bad)?;
        at += n;
        Ok(part)
    };
    let mut entries = Vec::new();
    let mut read = 0;
    while read < body.len() {
        let key_len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        let key = String::from_utf8(take(key_len)?.to_vec()).map_err(|_| bad())?;
        let ttl_ms = i64::from_be_bytes(take(8)?.try_into().map_err(|_| bad())?);
        let dump_len = u32::from_be_bytes(take(4)?.try_into().map_err(|_| bad())?) as usize;
        let dump = take(dump_len)?.to_vec();
        read += 16 + key_len + dump_len;
        entries.push(Entry { key, ttl_ms, dump });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_format_round_trips_and_refuses_truncation() {
        let entries = vec![
            Entry {
                key: "a:b".into(),
                ttl_ms: 0,
                dump: vec![1, 2, 3],
            },
            Entry {
                key: "c".into(),
                ttl_ms: 5000,
                dump: vec![],
            },
        ];
        let mut file = MAGIC.to_vec();
        for e in &entries {
            encode(e, &mut file);
        }
        assert_eq!(decode(&file).unwrap(), entries);
        assert!(decode(&file[..file.len() - 1]).is_err());
        assert!(decode(b"something else").is_err());
    }
}
