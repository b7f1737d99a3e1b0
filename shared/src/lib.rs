//! `commerce-core`: every rule, Lua script, key, route and handler of spin-commerce.
//!
//! The crate talks to the outside only through the ports in [`ports`]; `commerce-spin`
//! (`spin-adapter/`, used by the Spin components) and `commerce-native` implement them. Data
//! flows one way: HTTP request → [`router::handle`] → store → port → adapter.
//!
//! Where things live:
//! - **a route**: the `routes.rs` of its store lists its paths and the method answering
//!   each: `/v1/inventory/…` in `inventory/`, `/v1/carts/…` and `/v1/customers/…` in
//!   `cart/`, `/v1/bundles/…` in `bundle/`, `/v1/pricing/…` and
//!   `/v1/admin/{pricing,discounts}/…` in `pricing/`, `/v1/checkout/…` in `checkout/`,
//!   `/v1/admin/refunds` in `outbox/`; `/health`, `/metrics`, `/openapi.json` and
//!   `/v1/admin/check` are [`ops`]. [`router`] asks [`ratelimit`] first, then each store.
//!   [`routes`] is the one table of them all (metrics labels, `Allow`, the OpenAPI check).
//! - **a Lua script**: beside the store that runs it (`<store>/*.lua`, each headed by its
//!   keys, arguments and replies), loaded by `lua!` behind the one prelude
//!   (`script/prelude.lua`); [`script`] runs it by SHA with the `EVAL` fallback.
//! - **a rule**: prices and discounts in [`pricing::engine`], the checkout's states and
//!   transitions in [`checkout::state`], stock and holds in [`inventory`] (`reserve.lua`,
//!   `purge.lua`), the cart's limits in [`cart`], keys in [`keys`], error codes and their
//!   statuses in [`error`], settings and their defaults in [`settings`].

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
pub mod routes;
pub mod scan;
pub mod script;
pub mod settings;

pub use app::App;
pub use error::{Error, ErrorCode, PortError, Result};
pub use router::{Scope, handle};
pub use settings::Settings;
