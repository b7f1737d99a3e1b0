//! Checkout: lock the cart, freeze the quote, reserve the stock, take the payment, write
//! the order — exactly once (DESIGN §4, invariants 4 and 5).

pub mod gateway;
