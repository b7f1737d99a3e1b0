//! `call_floor`: what one Redis round trip and one PostgreSQL write cost at the least,
//! through the server's own ports (`NativeRedis`, `NativePg`) under the purchase driver's
//! concurrency: the floor under a purchase's calls (`scripts/bench --before REV
//! --purchases`).
//!
//! - Redis: `--concurrency` tasks call a script that does nothing (`return 1`, by `EVALSHA`)
//!   for `--seconds`, on the one multiplexed connection the server uses. Reports the calls,
//!   this process's CPU per call, and Redis's (`INFO cpu`: a Redis that serves nothing
//!   else meanwhile, as the bench's).
//! - PostgreSQL: the same tasks each insert one row into a table of their own (one
//!   statement, committed) through a pool of `--pool` connections (by default the server's
//!   own: `database_pool_size` of the environment's settings, or its rule for this
//!   machine's cores). Reports the rows, this process's CPU per row, and the CPU of the
//!   pool's backends per row (`/proc`, this machine's PostgreSQL).
//!
//! Prints one JSON line: `{"redisCalls":N,"redisClientUs":…,"redisServerUs":…,"pgRows":N,
//! "pgBackends":N,"pgClientUs":…,"pgBackendUs":…}`.
//!
//! ```text
//! call_floor --redis URL --database URL [--seconds 5] [--concurrency 64] [--pool P]
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use commerce_core::Settings;
use commerce_core::ports::{Redis, RedisReply, Sql, SqlValue};
use commerce_core::script::Script;
use commerce_native::{EnvConfig, NativePg, NativeRedis};
use commerce_tests::driver::own_cpu_seconds;
use serde_json::json;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: call_floor --redis URL --database URL [--seconds S] [--concurrency C] [--pool P]";

/// The script that does nothing, called as the stores call theirs (`EVALSHA`, then `EVAL`
/// once if the server does not know it).
static NOTHING: Script = Script::new(&["return 1"]);

/// The table the PostgreSQL half writes (made and dropped by the run).
const TABLE: &str = "call_floor_rows";

struct Args {
    redis: String,
    database: String,
    seconds: u64,
    concurrency: usize,
    /// `None`: the server's own pool size.
    pool: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        redis: String::new(),
        database: String::new(),
        seconds: 5,
        concurrency: 64,
        pool: None,
    };
    let mut raw = std::env::args().skip(1);
    while let Some(flag) = raw.next() {
        let value = raw.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |value: &str| commerce_tests::driver::count(&flag, value);
        match flag.as_str() {
            "--redis" => args.redis = value,
            "--database" => args.database = value,
            "--seconds" => args.seconds = number(&value)? as u64,
            "--concurrency" => args.concurrency = number(&value)?,
            "--pool" => args.pool = Some(number(&value)?),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.redis.is_empty() || args.database.is_empty() {
        return Err("--redis and --database are required".into());
    }
    Ok(args)
}

/// Runs `call` from `concurrency` tasks until `seconds` pass; the calls made and this
/// process's CPU seconds meanwhile.
async fn load<F, Fut>(concurrency: usize, seconds: u64, call: F) -> Result<(u64, f64), String>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let cpu = own_cpu_seconds();
    let tasks: Vec<_> = (0..concurrency as u64)
        .map(|task| {
            let (stop, done, call) = (stop.clone(), done.clone(), call.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    call(task << 32 | n).await?;
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok((done.load(Ordering::Relaxed), own_cpu_seconds() - cpu))
}

/// User plus system CPU ticks of process `pid` so far (`/proc/<pid>/stat`).
fn ticks(pid: i64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces), from the state on.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

async fn run(args: Args) -> Result<serde_json::Value, String> {
    let timeout = Duration::from_secs(5);
    let redis = Arc::new(NativeRedis::new(&args.redis, timeout, "").map_err(|e| e.to_string())?);
    let cpu_before = redis_cpu_seconds(&redis).await?;
    let (calls, client_cpu) = load(args.concurrency, args.seconds, {
        let redis = redis.clone();
        move |_| {
            let redis = redis.clone();
            async move {
                NOTHING
                    .run(&*redis, &[], vec![])
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        }
    })
    .await?;
    let server_cpu = redis_cpu_seconds(&redis).await? - cpu_before;

    let separator = if args.database.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}application_name=call_floor", args.database);
    let pool = match args.pool {
        Some(pool) => pool,
        None => Settings::from_config(&EnvConfig::new())?
            .database_pool_size_for(std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    let pg = Arc::new(NativePg::new(&url, timeout, pool, "").map_err(|e| e.to_string())?);
    let sql = |statement: &str| {
        let pg = pg.clone();
        let statement = statement.to_owned();
        async move { pg.execute(&statement, &[]).await.map_err(|e| e.to_string()) }
    };
    sql(&format!("DROP TABLE IF EXISTS {TABLE}")).await?;
    sql(&format!(
        "CREATE TABLE {TABLE} (id bigint PRIMARY KEY, note text NOT NULL)"
    ))
    .await?;
    let insert = format!("INSERT INTO {TABLE} (id, note) VALUES ($1, 'x')");
    let write = {
        let pg = pg.clone();
        move |id: u64| {
            let (pg, insert) = (pg.clone(), insert.clone());
            async move {
                pg.execute(&insert, &[SqlValue::Int(id as i64)])
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        }
    };
    // A first second opens the pool's connections; then their backends are measured.
    load(args.concurrency, 1, write.clone()).await?;
    let backends: Vec<i64> = pg
        .query(
            "SELECT pid::bigint FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'call_floor'",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|row| row.first().and_then(SqlValue::as_int))
        .collect();
    let backend_ticks = || backends.iter().map(|pid| ticks(*pid)).sum::<u64>();
    let before = backend_ticks();
    let (rows, pg_cpu) = load(args.concurrency, args.seconds, move |id| write(id + (1 << 62))).await?;
    let backend_seconds = (backend_ticks() - before) as f64 / clock_ticks();
    sql(&format!("DROP TABLE {TABLE}")).await?;
    let us = |seconds: f64, n: u64| (seconds * 1e6 / n.max(1) as f64 * 10.0).round() / 10.0;
    Ok(json!({
        "redisCalls": calls,
        "redisClientUs": us(client_cpu, calls),
        "redisServerUs": us(server_cpu, calls),
        "pgRows": rows,
        "pgBackends": backends.len(),
        "pgClientUs": us(pg_cpu, rows),
        "pgBackendUs": us(backend_seconds, rows),
    }))
}

/// The CPU seconds (user + system) the Redis server has used so far (`INFO cpu`).
async fn redis_cpu_seconds(redis: &NativeRedis) -> Result<f64, String> {
    let info = redis
        .execute("INFO", vec!["cpu".into()])
        .await
        .map_err(|e| e.to_string())?;
    let text = match info.first() {
        Some(RedisReply::Bytes(text)) => String::from_utf8_lossy(text).into_owned(),
        other => return Err(format!("INFO cpu answered {other:?}")),
    };
    Ok(text
        .lines()
        .filter(|l| l.starts_with("used_cpu_sys:") || l.starts_with("used_cpu_user:"))
        .filter_map(|l| l.split_once(':')?.1.trim().parse::<f64>().ok())
        .sum())
}

/// Ticks per second of `/proc`'s CPU times.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

fn main() -> ExitCode {
    commerce_tests::driver::main("call_floor", USAGE, parse_args, |args, runtime| {
        runtime.block_on(run(args))
    })
}
