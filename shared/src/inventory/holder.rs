//! Who holds stock (DESIGN §4, invariant 3).
//!
//! Holders live in separate namespaces: a hold is named `<kind>:<id>` in every hold key, so
//! an outside caller that names a checkout session's id names another holder altogether
//! and can neither free nor overwrite that session's holds.

use std::fmt;

use crate::ids::CartId;

/// A holder of stock, with its namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A checkout session, from its start until its order or its end.
    Checkout(CartId),
    /// A trusted outside caller of `POST /v1/inventory/reservations` (admin or service
    /// token), naming its own holder ids.
    External(CartId),
}

impl Holder {
    /// The holder's id within its namespace.
    pub fn id(&self) -> &CartId {
        match self {
            Holder::Checkout(id) | Holder::External(id) => id,
        }
    }
}

/// `checkout:<id>` or `external:<id>`: the name in hold keys.
impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Checkout(id) => write!(f, "checkout:{id}"),
            Holder::External(id) => write!(f, "external:{id}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_never_collide() {
        let id = CartId::parse("cs_1").unwrap();
        let (a, b) = (Holder::Checkout(id.clone()), Holder::External(id));
        assert_ne!(a.to_string(), b.to_string());
        assert_eq!(a.to_string(), "checkout:cs_1");
    }
}
