//! What the load drivers of `src/bin/` (`checkout_load`, `rate_load`, `call_floor`) share:
//! how they read their flags, start, report and fail, so `scripts/bench` reads every driver
//! alike; and how a test runs one ([`report_of`]).

use std::process::ExitCode;

use serde_json::Value;
use tokio::runtime::Runtime;

/// Runs a driver named `name`: its arguments from `parse` (an error exits 2 with `usage`),
/// then `run` on a multi-threaded runtime. The JSON report goes to stdout (exit 0); an
/// error to stderr (exit 1).
pub fn main<A>(
    name: &str,
    usage: &str,
    parse: impl FnOnce() -> Result<A, String>,
    run: impl FnOnce(A, &Runtime) -> Result<Value, String>,
) -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(error) => {
            eprintln!("{name}: {error}\n{usage}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match run(args, &runtime) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("{name}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// User plus system CPU time this process (a driver, with any fake gateway it runs) has
/// used, so a bench can say what the driver took of the machine it shares with what it
/// measures.
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, zeroed here.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// The value `value` of flag `flag` as a positive integer, or the error that says so.
pub fn count(flag: &str, value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{flag} takes a positive integer, not {value:?}"))
}

/// Runs the driver at `path` (a test's `env!("CARGO_BIN_EXE_…")`) with `args`, off the
/// test's runtime: its exit status, its JSON report (Null if none) and its stderr.
pub async fn report_of(path: &'static str, args: Vec<String>) -> (std::process::ExitStatus, Value, String) {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(path)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{path} runs: {e}"))
    })
    .await
    .expect("the driver's thread");
    let report = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status, report, stderr)
}
