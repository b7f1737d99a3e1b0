//! The least a spin-sdk 5.2 component can do per request, for `scripts/bench --spin`:
//! `GET /live` answers at once; `GET /redis` opens the host's Redis connection and runs
//! `INCR` and `EVAL "return 1" 0`, as the cheapest request that touches Redis. The
//! address comes from the environment (`spin up --env REDIS_URL=…`), not from a Spin
//! variable: a variable lookup is a cost of its own on the host, which the bench
//! measures apart.

use spin_sdk::http::{IncomingRequest, Response};
use spin_sdk::redis::{Connection, RedisParameter};

/// Answers `/live` and `/redis`; anything else is 404.
#[spin_sdk::http_component]
async fn handle(req: IncomingRequest) -> Response {
    match req.path_with_query().as_deref() {
        Some("/live") => Response::new(200, "alive"),
        Some("/redis") => match redis_round_trip() {
            Ok(()) => Response::new(200, "ok"),
            Err(e) => Response::new(503, e.to_string()),
        },
        _ => Response::new(404, "no such route"),
    }
}

fn redis_round_trip() -> Result<(), spin_sdk::redis::Error> {
    let address = std::env::var("REDIS_URL").unwrap_or_default();
    let connection = Connection::open(&address)?;
    connection.execute("INCR", &[RedisParameter::Binary(b"bench-minimal".to_vec())])?;
    connection.execute(
        "EVAL",
        &[RedisParameter::Binary(b"return 1".to_vec()), RedisParameter::Int64(0)],
    )?;
    Ok(())
}
