//! `commerce-spin`: spin-commerce on a Spin host. The Spin adapters of the ports of
//! `commerce-core`, one file per port, and [`serve`], the one entry point of every
//! component.
//!
//! A component's `lib.rs` only calls [`serve`] with its [`Scope`](commerce_core::Scope);
//! everything else happens here or in the shared handlers. One set of adapters is built
//! per request: Spin gives a component no state between requests, so the Redis and
//! PostgreSQL connections are opened lazily, on first use, and live as long as the
//! request.
//!
//! - [`serve`] (`serve.rs`): Spin's request in, the router's answer out, the body read up
//!   to its limit;
//! - [`SpinRedis`] (`redis.rs`): the `Redis` port over `fermyon:spin/redis`;
//! - [`SpinPg`] (`pg.rs`): the `Sql` port over `spin:postgres/postgres`;
//! - [`SpinHttp`] (`http.rs`): the `Http` port over `wasi:http/outgoing-handler`;
//! - [`SpinConfig`] (`config.rs`): the `Config` port over Spin variables;
//! - [`Deadline`] (`deadline.rs`): the timeouts of Redis and PostgreSQL calls, and
//!   `connection.rs`: their connections, opened on first use.
//!
//! Spin has no per-call timeout on outbound Redis or PostgreSQL, and a host call cannot
//! be interrupted from inside the component (DESIGN §2). What the component can bound, it
//! does: a call that outlasts its native timeout (`redis_timeout_ms`,
//! `database_timeout_ms`) is answered as natively, a 503, and no further call to that
//! dependency is made in the request; no call starts once the request has run for
//! `request_timeout_ms` (natively its deadline); a request body is read only up to its limit;
//! the payment gateway is called with `gateway_timeout_ms` as wasi:http's connect and
//! first-byte timeouts. A hung call itself lasts until the dependency answers or the
//! platform's handler timeout ends the request: the README says what a deployer sets.
//!
//! The crate also builds natively (the host calls are then never made), so that its unit
//! tests run with `cargo test`.

mod config;
mod connection;
mod deadline;
mod http;
mod pg;
mod redis;
mod serve;

pub use config::SpinConfig;
pub use deadline::Deadline;
pub use http::SpinHttp;
pub use pg::SpinPg;
pub use redis::SpinRedis;
pub use serve::serve;
