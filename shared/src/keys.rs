//! The Redis key layout of DESIGN §3.
//!
//! Keys follow `{store}:{type}:{identifier}[:{sub}]` behind an optional namespace prefix.
//! The identifier sits in a Redis Cluster hash tag, so every key of one variant (stock,
//! reserved total, holds) lands in the same slot and a script over them runs unchanged on
//! Cluster. Keys are built only from parsed ids, so they cannot be malformed.

use std::fmt;

use crate::error::Error;
use crate::ids::{BundleId, CartId, CustomerId, Holder, SessionId, SetId, VariantId, check_id};

/// The encoding of ruleset entries in Redis (`pricing/store.rs`), part of the keys of
/// every ruleset version: a build never reads entries of another encoding. A version
/// pointer that names a version published by a build of another encoding names keys that
/// are not there for this one, and the first quote republishes the ruleset from PostgreSQL
/// (DESIGN §4, invariant 8).
pub const RULESET_ENCODING: &str = "v2";

/// The namespace every key of one deployment sits under (`key_prefix`): empty for none, or
/// an id (`[A-Za-z0-9_-]{1,64}`), so it cannot break a key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Parses a namespace: `""` (none) or an id, rejecting anything else with a 400.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        if !raw.is_empty() {
            check_id("key_prefix", raw)?;
        }
        Ok(Self(raw.to_owned()))
    }

    /// The namespace as text (empty for none).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Builds every key of the service under one namespace.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    prefix: String,
}

/// The keys that hold one variant's stock, holds and purchase limit, all in one hash slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariantKeys {
    /// `inventory:variant:{V}`: units on hand, mirrored from PostgreSQL.
    pub stock: String,
    /// `inventory:reserved:{V}`: sum of live hold quantities.
    pub reserved: String,
    /// `inventory:holds:{V}`: sorted set, holder → deadline in ms (Redis clock).
    pub holds: String,
    /// `inventory:hold-qty:{V}`: hash, holder → quantity held.
    pub hold_qty: String,
    /// `inventory:stock-version:{V}`: hash of the PostgreSQL row versions the stock
    /// reflects, so each committed change is mirrored exactly once.
    pub stock_version: String,
    /// `inventory:max-per-order:{V}`: hash of the variant's per-order purchase limit
    /// (`limit`, absent: none) and the PostgreSQL row version it was mirrored at
    /// (`version`), so an older limit never overwrites a newer one.
    pub max_per_order: String,
}

impl VariantKeys {
    /// The hold keys in the order the inventory scripts expect them.
    pub fn as_array(&self) -> [&str; 4] {
        [&self.stock, &self.reserved, &self.holds, &self.hold_qty]
    }

    /// The hold keys and the purchase limit: the order of the scripts that take holds or
    /// show them (reserve, view).
    pub fn with_limit(&self) -> [&str; 5] {
        [
            &self.stock,
            &self.reserved,
            &self.holds,
            &self.hold_qty,
            &self.max_per_order,
        ]
    }

    /// Every key of the variant, its stock version second: the order of the scripts that
    /// load stock with its holds and limit, and read it for `commerce check`.
    pub fn with_version(&self) -> [&str; 6] {
        [
            &self.stock,
            &self.stock_version,
            &self.reserved,
            &self.holds,
            &self.hold_qty,
            &self.max_per_order,
        ]
    }
}

/// The two published rulesets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulesetKind {
    /// Price lists, variant prices, bundle prices.
    Pricing,
    /// Discounts and who they apply to.
    Discounts,
}

impl RulesetKind {
    /// The name in keys, channels and the API: `pricing` or `discount`.
    pub fn name(self) -> &'static str {
        match self {
            RulesetKind::Pricing => "pricing",
            RulesetKind::Discounts => "discount",
        }
    }

    /// The key suffixes of one version, in the order `Keys::ruleset_keys` gives them.
    pub fn suffixes(self) -> &'static [&'static str] {
        match self {
            RulesetKind::Pricing => &[":lists", ":prices", ":bundles"],
            RulesetKind::Discounts => &["", ":variants", ":bundles"],
        }
    }
}

/// The keys of one bundle's cache (hash tag: the bundle id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleKeys {
    base: String,
    /// `bundle:{B}:definition`: the bundle as `GET /v1/bundles/{B}` shows it (JSON).
    pub definition: String,
    /// `bundle:{B}:sets`: hash, set id → how many to choose.
    pub sets: String,
    /// `bundle:{B}:generation`: bumped by every invalidation, so that a load that read
    /// PostgreSQL before an invalidation cannot store what it read after it.
    pub generation: String,
}

impl BundleKeys {
    /// `bundle:{B}:eligibility:S`: the set's eligible variants.
    pub fn eligibility(&self, set: &SetId) -> String {
        format!("{}:eligibility:{set}", self.base)
    }
}

impl Keys {
    /// Keys under a namespace (none if it is empty).
    pub fn new(namespace: &KeyPrefix) -> Self {
        let prefix = if namespace.as_str().is_empty() {
            String::new()
        } else {
            format!("{namespace}:")
        };
        Self { prefix }
    }

    /// The namespace prefix including its trailing `:` (empty without a namespace).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys of one variant's stock and holds.
    pub fn variant(&self, variant: &VariantId) -> VariantKeys {
        let p = &self.prefix;
        VariantKeys {
            stock: format!("{p}inventory:variant:{{{variant}}}"),
            reserved: format!("{p}inventory:reserved:{{{variant}}}"),
            holds: format!("{p}inventory:holds:{{{variant}}}"),
            hold_qty: format!("{p}inventory:hold-qty:{{{variant}}}"),
            stock_version: format!("{p}inventory:stock-version:{{{variant}}}"),
            max_per_order: format!("{p}inventory:max-per-order:{{{variant}}}"),
        }
    }

    /// `inventory:holder:{<kind>:<id>}`: the set of variants a holder has holds on, so
    /// that a release knows which variants to visit.
    pub fn holder_holds(&self, holder: &Holder) -> String {
        format!("{}inventory:holder:{{{holder}}}", self.prefix)
    }

    /// `ratelimit:{<subject>}`: a rate limit's bucket (`client:<address>` or
    /// `customer:<id>`), the theoretical arrival time of its next request.
    pub fn rate_limit(&self, subject: &crate::ratelimit::Subject) -> String {
        format!("{}ratelimit:{{{subject}}}", self.prefix)
    }

    /// `cart:session:{S}`: an anonymous cart (hash).
    pub fn cart_session(&self, cart: &CartId) -> String {
        format!("{}cart:session:{{{cart}}}", self.prefix)
    }

    /// `cart:customer:{C}`: a signed-in customer's cart (hash).
    pub fn cart_customer(&self, customer: &CustomerId) -> String {
        format!("{}cart:customer:{{{customer}}}", self.prefix)
    }

    /// `checkout:lock:{S}` (or `checkout:lock:{C}:customer` for a customer's cart): which
    /// checkout session holds the cart. Same hash slot as the cart itself, so cart scripts
    /// can refuse changes while it is held.
    pub fn checkout_lock_session(&self, cart: &CartId) -> String {
        format!("{}checkout:lock:{{{cart}}}", self.prefix)
    }

    /// The lock of a customer's cart (see [`Keys::checkout_lock_session`]).
    pub fn checkout_lock_customer(&self, customer: &CustomerId) -> String {
        format!("{}checkout:lock:{{{customer}}}:customer", self.prefix)
    }

    /// `checkout:session:{S}`: a checkout session's state (hash).
    pub fn checkout_session(&self, session: &SessionId) -> String {
        format!("{}checkout:session:{{{session}}}", self.prefix)
    }

    /// `checkout:metadata:{S}`: what a session froze: quote, versions, lines.
    pub fn checkout_metadata(&self, session: &SessionId) -> String {
        format!("{}checkout:metadata:{{{session}}}", self.prefix)
    }

    /// `payment:intent:{S}`: the session's payment intent.
    pub fn payment_intent(&self, session: &SessionId) -> String {
        format!("{}payment:intent:{{{session}}}", self.prefix)
    }

    /// `catalog:variant:{V}`: cached existence of a catalog variant.
    pub fn catalog_variant(&self, variant: &VariantId) -> String {
        format!("{}catalog:variant:{{{variant}}}", self.prefix)
    }

    /// The keys of one bundle's cache, all in the bundle's hash slot.
    pub fn bundle(&self, bundle: &BundleId) -> BundleKeys {
        let base = format!("{}bundle:{{{bundle}}}", self.prefix);
        BundleKeys {
            definition: format!("{base}:definition"),
            sets: format!("{base}:sets"),
            generation: format!("{base}:generation"),
            base,
        }
    }

    /// `pricing-ruleset-version` / `discount-ruleset-version` (DESIGN §3): the version
    /// quotes read.
    pub fn ruleset_version(&self, kind: RulesetKind) -> String {
        format!("{}{}-ruleset-version", self.prefix, kind.name())
    }

    /// `pricing-ruleset-version` / `discount-ruleset-version`: the channel a publish
    /// announces its new version on (channels are not keys: the same name as the pointer).
    pub fn ruleset_channel(&self, kind: RulesetKind) -> String {
        format!("{}{}-ruleset-version", self.prefix, kind.name())
    }

    /// `pricing-ruleset-republish` / `discount-ruleset-republish`: the lock under which one
    /// request republishes a ruleset Redis lost.
    pub fn ruleset_republish_lock(&self, kind: RulesetKind) -> String {
        format!("{}{}-ruleset-republish", self.prefix, kind.name())
    }

    /// The namespace prefix of every key of a ruleset version (the part before the version:
    /// `pricing:ruleset-bundle-v2:{` …), for scripts that derive a version's keys.
    pub fn ruleset_stem(&self, kind: RulesetKind) -> String {
        format!(
            "{}{}:ruleset-bundle-{RULESET_ENCODING}:{{",
            self.prefix,
            kind.name()
        )
    }

    /// The keys of one ruleset version, all in the version's hash slot:
    /// pricing `…{N}:lists`, `…{N}:prices`, `…{N}:bundles`;
    /// discounts `…{N}` (definitions), `…{N}:variants`, `…{N}:bundles` (who each applies to).
    pub fn ruleset_keys(&self, kind: RulesetKind, version: i64) -> Vec<String> {
        let base = format!("{}{version}}}", self.ruleset_stem(kind));
        kind.suffixes().iter().map(|s| format!("{base}{s}")).collect()
    }

    /// `discount:eligibility:{D}` (DESIGN §3): the variants a discount targets, as the
    /// current discount version has them (written after each switch; quotes read the
    /// version's own `:variants` index instead).
    pub fn discount_eligibility(&self, discount: &str) -> String {
        format!("{}discount:eligibility:{{{discount}}}", self.prefix)
    }

    /// A SCAN pattern matching every variant's holds set (deadlines) in this namespace.
    pub fn all_holds_pattern(&self) -> String {
        format!("{}inventory:holds:{{*}}", self.prefix)
    }

    /// A SCAN pattern matching every variant's hold quantities (`hold-qty`) in this
    /// namespace.
    pub fn all_hold_qty_pattern(&self) -> String {
        format!("{}inventory:hold-qty:{{*}}", self.prefix)
    }

    /// A SCAN pattern matching every variant's stock key in this namespace.
    pub fn all_stock_pattern(&self) -> String {
        format!("{}inventory:variant:{{*}}", self.prefix)
    }

    /// Reads the variant id back out of a `stock`, `holds` or `hold-qty` key found by SCAN.
    pub fn variant_of_holds_key(&self, key: &str) -> Option<VariantId> {
        let rest = key.strip_prefix(&self.prefix)?;
        let id = rest
            .strip_prefix("inventory:holds:{")
            .or_else(|| rest.strip_prefix("inventory:hold-qty:{"))
            .or_else(|| rest.strip_prefix("inventory:variant:{"))?
            .strip_suffix('}')?;
        VariantId::parse(id).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_keys_share_one_hash_tag_under_the_namespace() {
        let keys = Keys::new(&KeyPrefix::parse("t1").unwrap());
        let v = VariantId::parse("var-9").unwrap();
        let k = keys.variant(&v);
        assert_eq!(k.stock, "t1:inventory:variant:{var-9}");
        assert_eq!(k.hold_qty, "t1:inventory:hold-qty:{var-9}");
        for key in k.as_array() {
            assert!(key.ends_with("{var-9}"));
        }
        assert_eq!(keys.variant_of_holds_key(&k.holds), Some(v.clone()));
        assert_eq!(keys.variant_of_holds_key(&k.hold_qty), Some(v.clone()));
        assert_eq!(keys.variant_of_holds_key(&k.stock), Some(v));
    }

    #[test]
    fn no_namespace_means_no_prefix() {
        let v = VariantId::parse("a").unwrap();
        assert_eq!(
            Keys::new(&KeyPrefix::default()).variant(&v).stock,
            "inventory:variant:{a}"
        );
    }
}
