//! The payment gateway (Stripe's wire format): written by the gateway work.
