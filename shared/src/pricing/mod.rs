//! The pricing store: price lists per customer group with parent lists, bundle prices,
//! discounts with priority and exclusivity, and the quote that puts them together
//! (DESIGN §5 "Pricing").
//!
//! [`engine`] is the whole of the pricing rules as pure functions over a ruleset the caller
//! has loaded; [`money`] holds the integer money type and the one rounding rule; [`store`]
//! publishes versioned rulesets into Redis and reads them back, [`cache`] keeping what was read
//! of a version for the next quotes; [`quote`] joins a cart to
//! them; [`routes`] is the HTTP side.

pub mod cache;
pub mod engine;
pub mod money;
pub mod quote;
pub mod routes;
pub mod store;
