//! The Redis users of `scripts/services` (README, "Redis users and TLS"): the app's user
//! (`COMMERCE_REDIS_URL`) may run only the app's commands on keys and channels under
//! `COMMERCE_KEY_PREFIX`; the monitor user (`COMMERCE_REDIS_MONITOR_URL`) only reads the
//! server's health. That the app itself works as its user is shown by every other test,
//! which all run the app as that user.
//!
//! Skipped, saying so, where the Redis has no such users (a `COMMERCE_REDIS_URL` given
//! from outside, without an admin URL or without a user of its own).

use commerce_tests::{admin_redis_url, key_prefix_for, redis_client};
use redis::aio::MultiplexedConnection;

/// The user named in a Redis URL (`redis://user:password@host`), if any.
fn user_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let credentials = rest.rsplit_once('@')?.0;
    let user = credentials.split(':').next().unwrap_or_default();
    (!user.is_empty()).then(|| user.to_owned())
}

async fn connect(url: &str) -> MultiplexedConnection {
    redis_client(url)
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The app's URL and user, and an admin connection, when the Redis has the ACL of
/// `scripts/services`: an admin URL apart from the app's, and an app user that is not the
/// admin and may not FLUSHALL (asked with ACL DRYRUN, which runs nothing). `None`: skip.
async fn acl_setup() -> Option<(String, String, MultiplexedConnection)> {
    let app_url =
        std::env::var("COMMERCE_REDIS_URL").expect("COMMERCE_REDIS_URL: run the tests with scripts/test");
    let admin_url = admin_redis_url();
    let user = match user_of(&app_url) {
        Some(user) if user != "default" && admin_url != app_url => user,
        _ => {
            eprintln!(
                "skipped: COMMERCE_REDIS_URL names no user of its own or COMMERCE_REDIS_ADMIN_URL is not set \
                 (a Redis from outside scripts/services, without its ACL)"
            );
            return None;
        }
    };
    let mut admin = connect(&admin_url).await;
    let verdict: redis::Value = redis::cmd("ACL")
        .arg("DRYRUN")
        .arg(&user)
        .arg("FLUSHALL")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(
        !matches!(verdict, redis::Value::Okay) && verdict != redis::Value::SimpleString("OK".into()),
        "the app's user {user} may FLUSHALL: the ACL of scripts/services is missing"
    );
    Some((app_url, user, admin))
}

/// Runs `command` and returns the error code it was refused with ("" if it was not).
async fn refusal(connection: &mut MultiplexedConnection, command: &redis::Cmd) -> String {
    match command.query_async::<redis::Value>(connection).await {
        Ok(value) => panic!("{command:?} was run: {value:?}"),
        Err(e) => e.code().unwrap_or_default().to_owned(),
    }
}

#[tokio::test]
async fn the_app_user_cannot_run_admin_commands_nor_touch_keys_outside_its_prefix() {
    let Some((app_url, _, _admin)) = acl_setup().await else {
        return;
    };
    let mut app = connect(&app_url).await;
    let outside = "outside-the-prefix:key";
    for command in [
        redis::cmd("FLUSHALL"),
        redis::cmd("FLUSHDB"),
        redis::Cmd::new().arg("CONFIG").arg("GET").arg("*").clone(),
        redis::Cmd::new()
            .arg("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("1")
            .clone(),
        redis::Cmd::new().arg("KEYS").arg("*").clone(),
        redis::Cmd::new().arg("SCRIPT").arg("FLUSH").clone(),
        redis::Cmd::new().arg("SHUTDOWN").arg("NOSAVE").clone(),
        redis::Cmd::new().arg("ACL").arg("LIST").clone(),
        redis::Cmd::new().arg("GET").arg(outside).clone(),
        redis::Cmd::new().arg("SET").arg(outside).arg("1").clone(),
        redis::Cmd::new().arg("DEL").arg(outside).clone(),
        redis::Cmd::new()
            .arg("PUBLISH")
            .arg("outside-the-prefix")
            .arg("1")
            .clone(),
    ] {
        assert_eq!(refusal(&mut app, &command).await, "NOPERM", "{command:?}");
    }

    // Its own keys it reads and writes.
    let key = format!("{}:acl-probe", key_prefix_for("acl"));
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("1")
        .query_async(&mut app)
        .await
        .unwrap();
    let value: String = redis::cmd("GET").arg(&key).query_async(&mut app).await.unwrap();
    assert_eq!(value, "1");
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut app).await.unwrap();
}

#[tokio::test]
async fn the_monitor_user_reads_the_servers_health_and_nothing_else() {
    let Some(_) = acl_setup().await else {
        return;
    };
    let Ok(monitor_url) = std::env::var("COMMERCE_REDIS_MONITOR_URL") else {
        eprintln!("skipped: COMMERCE_REDIS_MONITOR_URL is not set (scripts/services prints it)");
        return;
    };
    let mut monitor = connect(&monitor_url).await;
    let pong: String = redis::cmd("PING").query_async(&mut monitor).await.unwrap();
    assert_eq!(pong, "PONG");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut monitor)
        .await
        .unwrap();
    assert!(info.contains("redis_version"), "{info}");
    let _: redis::Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .query_async(&mut monitor)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("LATENCY")
        .arg("LATEST")
        .query_async(&mut monitor)
        .await
        .unwrap();
    for command in [
        redis::Cmd::new()
            .arg("GET")
            .arg(format!("{}:x", key_prefix_for("acl")))
            .clone(),
        redis::Cmd::new().arg("SLOWLOG").arg("RESET").clone(),
        redis::Cmd::new().arg("CONFIG").arg("GET").arg("*").clone(),
        redis::cmd("FLUSHALL"),
    ] {
        assert_eq!(refusal(&mut monitor, &command).await, "NOPERM", "{command:?}");
    }
}

/// Every command the stores' Lua scripts call is granted to the app's user on its keys,
/// so a script added or changed does not first fail in production with NOPERM.
#[tokio::test]
async fn every_command_of_the_scripts_is_granted_to_the_app_user() {
    let Some((_, user, mut admin)) = acl_setup().await else {
        return;
    };
    let source = commerce_tests::host::workspace_root().join("shared/src");
    let mut commands = std::collections::BTreeSet::new();
    let mut pending = vec![source];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "lua") {
                let text = std::fs::read_to_string(&path).unwrap();
                // A command named where it is called, directly or through the prelude's
                // `call_each` (whose own `redis.call(command, …)` names none).
                for opening in ["redis.call(", "call_each("] {
                    for call in text.split(opening).skip(1) {
                        let Some(quoted) = call.strip_prefix(['\'', '"']) else {
                            continue;
                        };
                        let name: String = quoted.chars().take_while(char::is_ascii_alphabetic).collect();
                        commands.insert(name.to_ascii_uppercase());
                    }
                }
            }
        }
    }
    assert!(commands.len() > 10, "found too few script commands: {commands:?}");
    let key = format!("{}:k", key_prefix_for("acl"));
    for command in &commands {
        // Its smallest call: the namespace's key first (the channel, for PUBLISH: the
        // scripts' keys and channels share the prefix), "1" for any further argument.
        let info: redis::Value = redis::cmd("COMMAND")
            .arg("INFO")
            .arg(command)
            .query_async(&mut admin)
            .await
            .unwrap();
        let arity = match info {
            redis::Value::Array(entries) => match entries.first() {
                Some(redis::Value::Array(fields)) => match fields.get(1) {
                    Some(redis::Value::Int(arity)) => *arity,
                    other => panic!("{command}: no arity in COMMAND INFO: {other:?}"),
                },
                other => panic!("{command} is no Redis command: {other:?}"),
            },
            other => panic!("COMMAND INFO {command}: {other:?}"),
        };
        let mut dryrun = redis::cmd("ACL");
        dryrun.arg("DRYRUN").arg(&user).arg(command);
        for position in 1..arity.unsigned_abs() {
            if position == 1 {
                dryrun.arg(&key);
            } else {
                dryrun.arg("1");
            }
        }
        let verdict: redis::Value = dryrun.query_async(&mut admin).await.unwrap();
        assert!(
            matches!(&verdict, redis::Value::Okay) || verdict == redis::Value::SimpleString("OK".into()),
            "{command} is not granted to {user}: {verdict:?}"
        );
    }
}

/// The Redis of `scripts/services` keeps an append-only file fsynced every second and no
/// RDB snapshots (DESIGN §6, README "Persistence"): after a crash it comes back with all
/// but about the last second, which PostgreSQL then repairs.
#[tokio::test]
async fn the_redis_of_scripts_services_keeps_an_append_only_file() {
    let Some((_, _, mut admin)) = acl_setup().await else {
        return;
    };
    let mut settings = Vec::new();
    for name in ["appendonly", "appendfsync", "save"] {
        let pair: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg(name)
            .query_async(&mut admin)
            .await
            .unwrap();
        settings.push(pair.get(1).cloned().unwrap_or_default());
    }
    assert_eq!(settings, ["yes", "everysec", ""], "appendonly, appendfsync, save");
}
