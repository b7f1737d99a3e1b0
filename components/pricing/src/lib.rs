//! The pricing component of spin-commerce: quotes, bundles, and the pricing, discount and bundle admin routes.
//!
//! It only hands each request to the shared handler with its scope; every rule lives in
//! `commerce-core` (DESIGN §1).

use commerce_core::Scope;
use spin_sdk::http::{IncomingRequest, Response};

/// Answers every request Spin routes to this component (see `spin.toml`).
#[spin_sdk::http_component]
async fn handle(req: IncomingRequest) -> Response {
    commerce_spin::serve(req, Scope::Pricing).await
}
