//! Identifiers and quantities, parsed once at the edge.
//!
//! Past the HTTP layer an id cannot be malformed: keys are built only from these types, so
//! no `:`, `{`, `*`, space or newline can ever reach a Redis key or a log line.

use std::fmt;

use crate::error::{Error, ErrorCode};

/// Longest id accepted, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Checks the id rule of DESIGN §3: `^[A-Za-z0-9_-]{1,64}$`.
pub(crate) fn check_id(kind: &'static str, raw: &str) -> Result<(), Error> {
    let well_formed = !raw.is_empty()
        && raw.len() <= MAX_ID_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if well_formed {
        Ok(())
    } else {
        Err(Error::bad_request(
            ErrorCode::InvalidId,
            format!("{kind} must be 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9, '_' or '-'"),
        ))
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = Error;

            /// Checks an id read from JSON (stored data included) like one from a request.
            fn try_from(raw: String) -> Result<Self, Error> {
                check_id($kind, &raw)?;
                Ok(Self(raw))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl $name {
            /// Parses an id, rejecting anything outside `[A-Za-z0-9_-]{1,64}` with a 400.
            pub fn parse(raw: &str) -> Result<Self, Error> {
                check_id($kind, raw)?;
                Ok(Self(raw.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A sellable variant (SKU) of a product.
    VariantId,
    "variantId"
);
id_type!(
    /// A cart (an anonymous cart's id, `cart:session:{S}`).
    CartId,
    "cartId"
);
id_type!(
    /// A checkout session (`cs_<hex>`).
    SessionId,
    "sessionId"
);
id_type!(
    /// The id an outside caller of `POST /v1/inventory/reservations` names its holds by
    /// (the request's `cartId`).
    ExternalHolderId,
    "cartId"
);
id_type!(
    /// A product of the catalog.
    ProductId,
    "productId"
);
id_type!(
    /// A signed-in customer (the `sub` of their token).
    CustomerId,
    "customerId"
);
id_type!(
    /// A bundle of the catalog.
    BundleId,
    "bundleId"
);
id_type!(
    /// One choice set of a bundle.
    SetId,
    "setId"
);
id_type!(
    /// One line of a cart.
    LineId,
    "lineId"
);

/// A holder of stock, with its namespace (DESIGN §4, invariant 3).
///
/// Holders live in separate namespaces: a hold is named `<kind>:<id>` in every hold key, so
/// an outside caller that names a checkout session's id names another holder altogether
/// and can neither free nor overwrite that session's holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A checkout session, from its start until its order or its end.
    Checkout(SessionId),
    /// A trusted outside caller of `POST /v1/inventory/reservations` (admin or service
    /// token), naming its own holder ids.
    External(ExternalHolderId),
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

/// 128 random bits as 32 hex characters: the unguessable part of cart and checkout
/// session ids, and idempotency resume tokens.
pub fn random_hex_128() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A quantity of units on a line: an integer in `1..=Quantity::MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity(u32);

impl Quantity {
    /// Largest quantity one line may ask for; more is certainly a client bug.
    pub const MAX: u32 = 100_000;

    /// Builds a quantity from a count, rejecting 0 and anything above [`Quantity::MAX`].
    pub fn new(count: i64) -> Result<Self, Error> {
        match u32::try_from(count) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Self(n)),
            _ => Err(Self::invalid()),
        }
    }

    /// Parses a JSON value that must be an integer in range (not `1.5`, not `"2"`).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, Error> {
        value.as_i64().ok_or_else(Self::invalid).and_then(Self::new)
    }

    /// The count.
    pub fn get(self) -> u32 {
        self.0
    }

    fn invalid() -> Error {
        Error::bad_request(
            ErrorCode::InvalidQuantity,
            format!("quantity must be an integer from 1 to {}", Self::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_that_could_break_a_key_are_rejected() {
        for raw in ["", "a:b", "a{b", "a}b", "a*", "a b", "a\nb", "é", &"x".repeat(65)] {
            assert!(VariantId::parse(raw).is_err(), "{raw:?} accepted");
        }
        assert!(VariantId::parse(&"x".repeat(64)).is_ok());
        assert!(VariantId::parse("var-1_A").is_ok());
    }

    #[test]
    fn holder_namespaces_never_collide() {
        let (a, b) = (
            Holder::Checkout(SessionId::parse("cs_1").unwrap()),
            Holder::External(ExternalHolderId::parse("cs_1").unwrap()),
        );
        assert_ne!(a.to_string(), b.to_string());
        assert_eq!(a.to_string(), "checkout:cs_1");
    }

    #[test]
    fn quantities_outside_range_are_rejected() {
        for raw in ["0", "-1", "1.5", "\"2\"", "100001", "1e30", "null"] {
            let value: serde_json::Value = serde_json::from_str(raw).unwrap();
            assert!(Quantity::from_json(&value).is_err(), "{raw} accepted");
        }
        assert_eq!(Quantity::from_json(&serde_json::json!(7)).unwrap().get(), 7);
    }

    proptest! {
        #[test]
        fn parsed_ids_are_exactly_the_allowed_alphabet(raw in "\\PC{0,70}") {
            let allowed = !raw.is_empty() && raw.len() <= 64
                && raw.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            prop_assert_eq!(VariantId::parse(&raw).is_ok(), allowed);
        }
    }
}
