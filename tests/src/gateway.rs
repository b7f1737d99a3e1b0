//! The payment gateway of the tests: the local Stripe-compatible gateway that `commerce
//! gateway` serves for development (`commerce_native::gateway`), run in the test process
//! so a test can read its ledger, deliver events itself and program failures.

pub use commerce_native::gateway::{Gateway as FakeGateway, Intent as FakeIntent, Refund as FakeRefund};
