//! What the load drivers of `src/bin/` (`checkout_load`, `rate_load`) share: how they start,
//! report and fail, so `scripts/bench` reads every driver alike.

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
