//! `commerce-native`: spin-commerce outside Spin. The same ports as the components, over
//! redis-rs and tokio-postgres; a native HTTP server with the same routes; and the admin
//! jobs of the `commerce` CLI. No behaviour lives here: it is all in `commerce-core`.

pub mod config;
mod connection;
pub mod gateway;
pub mod http_port;
pub mod migrate;
pub mod pg_port;
pub mod pg_tls;
pub mod progress;
pub mod redis_port;
pub mod server;

pub use config::EnvConfig;
pub use http_port::NativeHttp;
pub use pg_port::NativePg;
pub use redis_port::NativeRedis;
pub use server::{NativeApp, build_app, serve};
