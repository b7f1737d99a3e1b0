//! Backup, restore and copy of a namespace's Redis keys (DESIGN §1: `commerce backup`,
//! `restore`, `copy`). Keys are read with SCAN (never `KEYS`, which blocks Redis) and
//! moved as `DUMP` payloads with their remaining time to live, so every type (hashes,
//! sorted sets, strings) round-trips exactly. After restoring an older backup, run
//! `commerce reconcile`: PostgreSQL, not the backup, is the record of stock.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, ErrorCode, Failure, Result};
use crate::keys::Keys;
use crate::ports::{Redis, RedisArg, RedisReply};
use crate::scan::Scan;
use crate::script::{Script, lua};
use sha2::{Digest, Sha256};

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
    let mut scan = Scan::new(redis, format!("{}*", keys.prefix()), SCAN_COUNT);
    let mut exported = 0;
    while let Some(found) = scan.next_page().await? {
        for key in found {
            let dump = redis.execute("DUMP", vec![key.as_str().into()]).await?;
            let ttl = redis.execute("PTTL", vec![key.as_str().into()]).await?;
            let (Some(RedisReply::Bytes(dump)), Some(ttl)) =
                (dump.into_iter().next(), ttl.first().and_then(RedisReply::as_int))
            else {
                continue;
            };
            if ttl == -2 {
                continue;
            }
            sink(Entry {
                key,
                ttl_ms: ttl.max(0),
                dump,
            })?;
            exported += 1;
        }
    }
    Ok(exported)
}

/// Moves a staged key to its own name (see `promote.lua`).
static PROMOTE: Script = Script::new(lua!("backup/promote.lua"));

/// How long a staged key lives if the restore never gets to promote it (it crashed): a
/// day, far more than staging any backup takes, after which Redis drops the leftovers.
pub const STAGING_TTL_MS: i64 = 24 * 60 * 60 * 1000;

/// Restores a whole backup, all or nothing as far as Redis allows, into the namespace of
/// `keys`; returns the number of keys restored.
///
/// Nothing is written before every entry was checked: each key must lie in the namespace
/// (so the app's Redis user may write it, and a backup of another namespace is not mixed
/// into this one) and have a time to live of zero or more. Then every entry is `RESTORE`d
/// under a staging name of its own (`<prefix>restore~<run>~<n>:…`, in the key's hash slot,
/// living [`STAGING_TTL_MS`]), so Redis checks each `DUMP` payload without touching a
/// real key; if it refuses one, the staged keys are deleted and the error names the entry:
/// Redis is as it was. Only when every entry is staged is each moved to its own name by
/// one script call (atomic per key, `REPLACE`ing the key there; a variant's holds with
/// their quantities).
/// That last phase fails only if Redis does (unreachable, out of memory, a staged key
/// expired); its error says which entry it stopped at, and how many were restored.
/// `progress` hears how many entries each phase has done.
pub async fn restore(
    redis: &impl Redis,
    keys: &Keys,
    entries: &[Entry],
    mut progress: impl FnMut(Phase, u64),
) -> Result<u64> {
    let run = run_id();
    let cluster = redis.is_cluster();
    let mut staging = Vec::with_capacity(entries.len());
    for (n, entry) in entries.iter().enumerate() {
        let refuse = |why: &str| {
            Error::bad_request(
                ErrorCode::InvalidBackup,
                format!(
                    "entry {} (key {:?}) {why}; nothing was restored",
                    n + 1,
                    entry.key
                ),
            )
        };
        if !entry.key.starts_with(keys.prefix()) {
            return Err(refuse(&format!(
                "is outside the namespace {:?} being restored",
                keys.prefix()
            )));
        }
        if entry.ttl_ms < 0 {
            return Err(refuse("has a negative time to live"));
        }
        staging.push(
            staging_name(keys.prefix(), &run, n, &entry.key, cluster)
                .ok_or_else(|| refuse("has no staging name in its hash slot on a Redis Cluster"))?,
        );
    }

    for (n, (entry, staged)) in entries.iter().zip(&staging).enumerate() {
        let outcome = redis
            .execute(
                "RESTORE",
                vec![
                    staged.as_str().into(),
                    RedisArg::Int(STAGING_TTL_MS),
                    RedisArg::Bytes(entry.dump.clone()),
                ],
            )
            .await;
        if let Err(e) = outcome {
            discard(redis, &staging[..n]).await;
            let message = format!(
                "entry {} (key {:?}): Redis refused to restore it ({e}); nothing was restored",
                n + 1,
                entry.key
            );
            return Err(match e.failure {
                Failure::Server(_) => Error::bad_request(ErrorCode::InvalidBackup, message),
                Failure::Unreachable(_) => Error::Unavailable {
                    dependency: e.dependency.name(),
                    message,
                },
            });
        }
        progress(Phase::Staged, n as u64 + 1);
    }

    // A variant's holds and their quantities move in one call: a variant with one of
    // them in place and not the other has its holds dropped as expired by the next
    // operation on it (`purge.lua`).
    let mut done = 0;
    for group in promotion_groups(keys, entries) {
        let mut names: Vec<&str> = Vec::with_capacity(2 * group.len());
        let mut ttls = Vec::with_capacity(group.len());
        for &i in &group {
            names.extend([staging[i].as_str(), entries[i].key.as_str()]);
            ttls.push(RedisArg::Int(entries[i].ttl_ms));
        }
        if let Err(e) = PROMOTE.run(redis, &names, ttls).await {
            // Those promoted are no longer staged: deleting them again is nothing.
            discard(redis, &staging).await;
            return Err(Error::Unavailable {
                dependency: "redis",
                message: format!(
                    "restore stopped at entry {} (key {:?}): {e}; {done} entries were restored before it, \
                     the rest were not: restore the backup again",
                    group[0] + 1,
                    entries[group[0]].key
                ),
            });
        }
        for _ in &group {
            done += 1;
            progress(Phase::Promoted, done);
        }
    }
    Ok(entries.len() as u64)
}

/// The entries of a backup in the calls that promote them: each alone, but a variant's
/// holds (`inventory:holds:{V}`) with their quantities (`inventory:hold-qty:{V}`, the same
/// hash slot), in the backup's order.
fn promotion_groups(keys: &Keys, entries: &[Entry]) -> Vec<Vec<usize>> {
    let (holds, quantities) = (
        format!("{}inventory:holds:", keys.prefix()),
        format!("{}inventory:hold-qty:", keys.prefix()),
    );
    let variant_of = |entry: &Entry, kind: &str| entry.key.strip_prefix(kind).map(str::to_owned);
    let quantities_of: HashMap<String, usize> = (0..entries.len())
        .filter_map(|i| Some((variant_of(&entries[i], &quantities)?, i)))
        .collect();
    let with_holds: HashSet<String> = entries.iter().filter_map(|e| variant_of(e, &holds)).collect();
    let mut groups = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        if variant_of(entry, &quantities).is_some_and(|v| with_holds.contains(&v)) {
            continue; // moved with its holds
        }
        match variant_of(entry, &holds).and_then(|v| quantities_of.get(&v)) {
            Some(&j) => groups.push(vec![i, j]),
            None => groups.push(vec![i]),
        }
    }
    groups
}

/// The two phases of a [`restore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Entries restored under their staging names: Redis accepted their payloads.
    Staged,
    /// Entries moved to their own names.
    Promoted,
}

/// Deletes staged keys, one call each (they lie in as many hash slots). Best effort: what
/// is left expires after [`STAGING_TTL_MS`].
async fn discard(redis: &impl Redis, staged: &[String]) {
    for key in staged {
        let _ = redis.execute("DEL", vec![key.as_str().into()]).await;
    }
}

/// A name for this restore's staging keys that no other restore picks.
fn run_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bytes.copy_from_slice(&now.as_nanos().to_le_bytes()[..8]);
    }
    format!("{:016x}", u64::from_le_bytes(bytes))
}

/// The staging name of the `n`th entry, `key`: under the namespace `prefix` (the app's
/// Redis user may write only there) and in `key`'s hash slot, so that one script can move
/// it on a cluster. A key with a hash tag keeps it (the staging part before the key has no
/// braces); a key without is hashed whole, so it becomes the staging name's tag, which it
/// can only be if it has no `}`: such a key gets no staging name on a cluster (`None`).
fn staging_name(prefix: &str, run: &str, n: usize, key: &str, cluster: bool) -> Option<String> {
    let head = format!("{prefix}restore~{run}~{n}:");
    let tagged = key
        .find('{')
        .and_then(|open| key[open + 1..].find('}'))
        .is_some_and(|close| close > 0);
    if tagged {
        Some(format!("{head}{key}"))
    } else if !key.contains('}') {
        Some(format!("{head}{{{key}}}"))
    } else if cluster {
        None
    } else {
        Some(format!("{head}{key}"))
    }
}

/// The first bytes of a backup file in the current format (2).
pub const MAGIC: &[u8] = b"spin-commerce backup 2\n";

/// The first bytes of a backup file in format 1, which `commerce` before format 2 wrote.
/// Format 1 has no count and no checksum, so a file cut between two entries reads as a
/// whole, shorter backup: [`decode`] refuses it rather than restore what may be part of a
/// backup.
pub const MAGIC_V1: &[u8] = b"spin-commerce backup 1\n";

/// Where a key length would be, this value marks the trailer (a Redis key is at most
/// 512 MiB, so no key has this length).
const TRAILER: u32 = u32::MAX;

/// Length of the trailer: its mark, the entry count (u64 BE) and the SHA-256.
const TRAILER_LEN: usize = 4 + 8 + 32;

/// Writes a backup file in format 2: [`MAGIC`]; each entry as its key length (u32 BE),
/// key, time to live (i64 BE), payload length (u32 BE), payload; then the trailer: the
/// mark `FF FF FF FF`, the number of entries (u64 BE) and the SHA-256 of every byte
/// before it. A file cut anywhere, or with any byte changed, fails the checksum.
#[derive(Debug)]
pub struct Writer {
    file: Vec<u8>,
    count: u64,
}

impl Default for Writer {
    fn default() -> Self {
        Self::new()
    }
}

impl Writer {
    /// A backup file with no entries yet.
    pub fn new() -> Self {
        Self {
            file: MAGIC.to_vec(),
            count: 0,
        }
    }

    /// Appends one entry.
    pub fn push(&mut self, entry: &Entry) {
        encode(entry, &mut self.file);
        self.count += 1;
    }

    /// The whole file, trailer included.
    pub fn finish(mut self) -> Vec<u8> {
        self.file.extend_from_slice(&TRAILER.to_be_bytes());
        self.file.extend_from_slice(&self.count.to_be_bytes());
        let digest = Sha256::digest(&self.file);
        self.file.extend_from_slice(&digest);
        self.file
    }
}

/// Appends one entry as format 2 (and 1) lay it out: key length (u32 BE), key, time to
/// live (i64 BE), payload length (u32 BE), payload. Only part of a file: [`Writer`] adds
/// the header and the trailer that [`decode`] requires.
pub fn encode(entry: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(&(entry.key.len() as u32).to_be_bytes());
    out.extend_from_slice(entry.key.as_bytes());
    out.extend_from_slice(&entry.ttl_ms.to_be_bytes());
    out.extend_from_slice(&(entry.dump.len() as u32).to_be_bytes());
    out.extend_from_slice(&entry.dump);
}

/// Reads a whole backup file (format 2, see [`Writer`]); a truncated, changed or foreign
/// file is an error (400 `INVALID_BACKUP`), never a partial read. The checksum is checked
/// before anything else is read. A format-1 file is refused with a message saying so.
pub fn decode(bytes: &[u8]) -> Result<Vec<Entry>> {
    let invalid = |why: &str| Error::bad_request(ErrorCode::InvalidBackup, format!("invalid backup: {why}"));
    if bytes.starts_with(MAGIC_V1) {
        return Err(invalid(
            "this is a format-1 backup, which has no checksum and cannot tell a truncated file \
             from a whole one; this version reads format 2 only (take a new backup, or restore \
             this one with the release that wrote it)",
        ));
    }
    let Some(signed) = bytes.strip_prefix(MAGIC) else {
        return Err(invalid("not a spin-commerce backup (format 2)"));
    };
    if signed.len() < TRAILER_LEN {
        return Err(invalid("truncated (shorter than its trailer)"));
    }
    let (signed_part, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(signed_part).as_slice() != digest {
        return Err(invalid("checksum mismatch: the file is truncated or was changed"));
    }
    let bad = || invalid("malformed entries under a valid checksum");
    let mut body = Cursor(&signed[..signed.len() - 32]);
    let mut entries = Vec::new();
    loop {
        let key_len = body.number(4).ok_or_else(bad)? as u32;
        if key_len == TRAILER {
            let count = body.number(8).ok_or_else(bad)?;
            if count != entries.len() as u64 || !body.0.is_empty() {
                return Err(bad());
            }
            return Ok(entries);
        }
        let key = body.take(key_len as usize).ok_or_else(bad)?;
        let key = String::from_utf8(key.to_vec()).map_err(|_| bad())?;
        let ttl_ms = body.number(8).ok_or_else(bad)? as i64;
        let dump_len = body.number(4).ok_or_else(bad)? as usize;
        let dump = body.take(dump_len).ok_or_else(bad)?.to_vec();
        entries.push(Entry { key, ttl_ms, dump });
    }
}

/// The unread rest of a backup file's entries.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    /// The next `n` bytes, if there are that many.
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (part, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(part)
    }

    /// The next `n` bytes as a big-endian number.
    fn number(&mut self, n: usize) -> Option<u64> {
        Some(self.take(n)?.iter().fold(0, |acc, b| (acc << 8) | u64::from(*b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_variant_s_holds_are_promoted_with_their_quantities() {
        let keys = Keys::new(&crate::keys::KeyPrefix::parse("p").unwrap());
        let entry = |key: &str| Entry {
            key: key.into(),
            ttl_ms: 0,
            dump: Vec::new(),
        };
        let entries = [
            entry("p:inventory:hold-qty:{v1}"),
            entry("p:inventory:variant:{v1}"),
            entry("p:inventory:holds:{v1}"),
            entry("p:inventory:holds:{v2}"),
            entry("p:inventory:hold-qty:{v3}"),
        ];
        assert_eq!(
            promotion_groups(&keys, &entries),
            vec![vec![1], vec![2, 0], vec![3], vec![4]]
        );
    }

    fn entries() -> Vec<Entry> {
        vec![
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
        ]
    }

    fn file_of(entries: &[Entry]) -> Vec<u8> {
        let mut writer = Writer::new();
        for e in entries {
            writer.push(e);
        }
        writer.finish()
    }

    #[test]
    fn the_file_format_round_trips() {
        assert_eq!(decode(&file_of(&entries())).unwrap(), entries());
        assert_eq!(decode(&file_of(&[])).unwrap(), Vec::new());
    }

    #[test]
    fn a_file_cut_anywhere_or_changed_anywhere_is_refused() {
        let file = file_of(&entries());
        for cut in 0..file.len() {
            let refused = decode(&file[..cut]).unwrap_err();
            assert_eq!(refused.code(), "INVALID_BACKUP", "cut at {cut}");
        }
        for at in 0..file.len() {
            let mut changed = file.clone();
            changed[at] ^= 0x01;
            assert!(decode(&changed).is_err(), "byte {at} flipped");
        }
        assert!(decode(b"something else").is_err());
    }

    #[test]
    fn a_count_that_disagrees_with_the_entries_is_refused_under_a_valid_checksum() {
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&TRAILER.to_be_bytes());
        file.extend_from_slice(&1u64.to_be_bytes());
        let digest = Sha256::digest(&file);
        file.extend_from_slice(&digest);
        assert_eq!(decode(&file).unwrap_err().code(), "INVALID_BACKUP");
    }

    #[test]
    fn a_format_1_file_is_refused_as_such() {
        let mut file = MAGIC_V1.to_vec();
        file.extend_from_slice(&[0, 0, 0, 1, b'k', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let refused = decode(&file).unwrap_err();
        assert!(refused.to_string().contains("format-1"), "{refused}");
    }

    #[test]
    fn staging_names_stay_in_the_namespace_and_the_hash_tag_of_their_key() {
        let name = |key: &str, cluster| staging_name("shop:", "r", 7, key, cluster);
        assert_eq!(
            name("shop:cart:session:{c1}", true).as_deref(),
            Some("shop:restore~r~7:shop:cart:session:{c1}")
        );
        assert_eq!(
            name("shop:pricing-ruleset-version", true).as_deref(),
            Some("shop:restore~r~7:{shop:pricing-ruleset-version}")
        );
        assert_eq!(name("shop:odd{}key}", true), None);
        assert_eq!(
            name("shop:odd{}key}", false).as_deref(),
            Some("shop:restore~r~7:shop:odd{}key}")
        );
    }
}
