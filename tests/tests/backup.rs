//! `commerce backup` and `restore` (README, "Admin jobs"): a backup brings every key of the
//! namespace back exactly; a file cut or changed anywhere is refused before anything is
//! written; a payload Redis refuses leaves Redis as it was, with a non-zero exit naming the
//! entry. Against the real Redis, through the library and through the `commerce` binary.

use commerce_core::backup::{self, Entry, Phase, Writer};
use commerce_tests::TestApp;
use commerce_tests::faults::{Persistence, RedisProcess};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use serde_json::json;

/// Every entry of the app's namespace, as `commerce backup` reads them.
async fn export(app: &TestApp) -> Vec<Entry> {
    let mut entries = Vec::new();
    backup::export(&app.app.redis, &app.app.keys, |e| {
        entries.push(e);
        Ok(())
    })
    .await
    .unwrap();
    entries
}

fn file_of(entries: &[Entry]) -> Vec<u8> {
    let mut writer = Writer::new();
    for entry in entries {
        writer.push(entry);
    }
    writer.finish()
}

/// Moves the state on from the backup of `entries`, so that restoring any entry shows:
/// every key is gone but the first, which holds another value.
async fn moved_on(app: &TestApp, entries: &[Entry]) {
    app.flush_redis().await;
    let mut redis = app.redis.clone();
    let _: () = redis::cmd("SET")
        .arg(&entries[0].key)
        .arg("moved on")
        .query_async(&mut redis)
        .await
        .unwrap();
}

/// Runs `commerce restore --in <file>` on the app's namespace.
fn restore_with_the_cli(app: &TestApp, file: &[u8]) -> std::process::Output {
    let path = std::env::temp_dir().join(format!("{}.backup", app.namespace));
    std::fs::write(&path, file).unwrap();
    let output = app.cli(&["restore", "--in", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
    output
}

#[tokio::test]
async fn a_backup_restores_every_key_of_the_namespace_exactly() {
    let app = TestApp::spawn().await;
    app.seed(20).await;
    let mut held = json!({"cartId": "kept", "items": [{"variantId": "var-1", "quantity": 3}]});
    held["ttlSeconds"] = json!(600);
    assert_eq!(app.reserve(held).await.status, 201);
    let cart = app.cart_with(&[("var-2", 2)]).await;
    let before = app.redis_snapshot().await;

    let entries = export(&app).await;
    assert_eq!(entries.len(), before.len());
    let file = file_of(&entries);
    app.flush_redis().await;
    assert!(app.redis_keys().await.is_empty());
    let read = backup::decode(&file).unwrap();
    let mut heard = Vec::new();
    let restored = backup::restore(&app.app.redis, &app.app.keys, &read, |phase, done| {
        heard.push((phase, done))
    })
    .await
    .unwrap();
    assert_eq!(restored as usize, entries.len());
    // Every entry is staged before the first is promoted, and progress counts each once.
    let n = entries.len() as u64;
    let staged: Vec<(Phase, u64)> = (1..=n).map(|done| (Phase::Staged, done)).collect();
    let promoted: Vec<(Phase, u64)> = (1..=n).map(|done| (Phase::Promoted, done)).collect();
    assert_eq!(heard, [staged, promoted].concat());
    // No staging key is left either: they are under the namespace too.
    assert_eq!(app.redis_snapshot().await, before, "a key came back different");
    assert_eq!(app.sellable("var-1").await, 97);
    let mut redis = app.redis.clone();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(app.cart_key(&cart))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(ttl > 0, "the cart lost its time to live");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(app.key("inventory:variant:{var-3}"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(ttl, -1, "a key without expiry came back with one");
    app.finish().await;
}

#[tokio::test]
async fn a_backup_cut_anywhere_or_with_any_byte_flipped_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    app.seed(3).await;
    let entries = export(&app).await;
    assert!(entries.len() >= 3, "{} keys", entries.len());
    let file = file_of(&entries);
    for cut in 0..file.len() {
        let refused = backup::decode(&file[..cut]).unwrap_err();
        assert_eq!(
            (refused.status(), refused.code()),
            (400, "INVALID_BACKUP"),
            "cut at {cut}"
        );
    }
    for at in 0..file.len() {
        let mut flipped = file.clone();
        flipped[at] ^= 0x20;
        assert!(backup::decode(&flipped).is_err(), "byte {at} flipped");
    }

    // Through the binary, after the state moved on (every key is gone but the first, which
    // holds something else): a file cut exactly after the first entry (which format 1 read
    // as a whole, shorter backup) and one with a flipped byte.
    moved_on(&app, &entries).await;
    let now = app.redis_snapshot().await;
    let first_entry_end = backup::MAGIC.len() + 16 + entries[0].key.len() + entries[0].dump.len();
    let mut flipped = file.clone();
    flipped[first_entry_end - 1] ^= 0x01;
    for bad in [&file[..first_entry_end], &flipped[..]] {
        let output = restore_with_the_cli(&app, bad);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(output.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("invalid backup"), "{stderr}");
        assert_eq!(app.redis_snapshot().await, now, "a refused file changed Redis");
    }
    app.finish().await;
}

#[tokio::test]
async fn a_corrupt_dump_payload_leaves_redis_as_it_was_before_the_restore() {
    let app = TestApp::spawn().await;
    app.seed(5).await;
    let entries = export(&app).await;
    assert!(entries.len() >= 3, "{} keys", entries.len());
    let whole = file_of(&entries);

    moved_on(&app, &entries).await;
    let before = app.redis_snapshot().await;

    // One payload in the middle is garbage under a valid file checksum: the file reads, but
    // Redis refuses that payload.
    let mut corrupt = entries.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle].dump = b"not a DUMP payload".to_vec();
    let corrupt = file_of(&corrupt);

    let read = backup::decode(&corrupt).unwrap();
    let mut heard = Vec::new();
    let refused = backup::restore(&app.app.redis, &app.app.keys, &read, |phase, done| {
        heard.push((phase, done))
    })
    .await
    .unwrap_err();
    // Staging stopped at the refused entry; nothing was promoted.
    assert_eq!(heard.last(), Some(&(Phase::Staged, middle as u64)), "{heard:?}");
    assert_eq!(refused.code(), "INVALID_BACKUP", "{refused}");
    assert!(refused.to_string().contains(&entries[middle].key), "{refused}");
    assert_eq!(
        app.redis_snapshot().await,
        before,
        "a refused restore changed Redis"
    );

    let output = restore_with_the_cli(&app, &corrupt);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("entry {}", middle + 1)) && stderr.contains(&entries[middle].key),
        "the error names the entry: {stderr}"
    );
    assert_eq!(
        app.redis_snapshot().await,
        before,
        "a refused restore changed Redis"
    );

    // The whole backup, through the binary, brings back the state it was taken in.
    let output = restore_with_the_cli(&app, &whole);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let mut backed_up: Vec<(String, Vec<u8>)> = entries.into_iter().map(|e| (e.key, e.dump)).collect();
    backed_up.sort();
    let mut after = app.redis_snapshot().await;
    after.sort();
    assert_eq!(after, backed_up);
    app.finish().await;
}

/// Each key's `DUMP` and whether it has a time to live, sorted by key.
async fn dumps(redis: &mut impl ConnectionLike, keys: &[String]) -> Vec<(String, Vec<u8>, bool)> {
    let mut out = Vec::new();
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP").arg(key).query_async(redis).await.unwrap();
        let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(redis).await.unwrap();
        out.push((key.clone(), dump, ttl > 0));
    }
    out.sort();
    out
}

/// Every key of a Redis of the test's own.
async fn all_keys(redis: &mut MultiplexedConnection) -> Vec<String> {
    redis::cmd("KEYS").arg("*").query_async(redis).await.unwrap()
}

/// `commerce copy` moves every key of the namespace, with its time to live, into another
/// Redis (one of the test's own), and a target that refuses a payload gets nothing.
#[tokio::test]
async fn copy_moves_the_namespace_to_another_redis_all_or_nothing() {
    let app = TestApp::spawn().await;
    app.seed(20).await;
    let mut held = json!({"cartId": "kept", "items": [{"variantId": "var-1", "quantity": 3}]});
    held["ttlSeconds"] = json!(600);
    assert_eq!(app.reserve(held).await.status, 201);
    app.cart_with(&[("var-2", 2)]).await;
    // The namespace's own keys, on a standalone Redis or a Cluster alike.
    let before = dumps(&mut app.redis.clone(), &app.redis_keys().await).await;
    let target = RedisProcess::start(Persistence::Nothing).await;
    let mut redis = redis::Client::open(target.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    let output = app.cli(&["copy", "--to-redis-url", &target.url()]);
    assert!(output.status.success(), "{output:?}");
    let keys = all_keys(&mut redis).await;
    let copied = dumps(&mut redis, &keys).await;
    assert_eq!(
        copied, before,
        "the copy differs from the namespace (or lost a time to live)"
    );

    // A target that cannot take the payloads (a Redis refusing writes) is left empty.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut redis).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut redis)
        .await
        .unwrap();
    let output = app.cli(&["copy", "--to-redis-url", &target.url()]);
    assert!(!output.status.success(), "{output:?}");
    assert!(all_keys(&mut redis).await.is_empty());
    app.finish().await;
}
