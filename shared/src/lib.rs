//! `commerce-core`: every rule, Lua script, key, route and handler of spin-commerce.
//!
//! The crate talks to the outside only through the ports in [`ports`]; `commerce-spin`
//! (`spin-adapter/`, used by the Spin components) and `commerce-native` implement them. Data
//! flows one way: HTTP request → [`router::handle`] → store → port → adapter.

pub mod app;
pub mod auth;
pub mod backup;
pub mod bundle;
pub mod cart;
pub mod catalog;
pub mod check;
pub mod checkout;
pub mod clock;
pub mod error;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod inventory;
pub mod keys;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod outbox;
pub mod ports;
pub mod pricing;
pub mod ratelimit;
pub mod router;
pub mod script;
pub mod settings;

pub use app::App;
pub use error::{Error, ErrorCode, PortError, Result};
pub use router::{Scope, handle};
pub use settings::Settings;
