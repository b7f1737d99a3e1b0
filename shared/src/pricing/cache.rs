//! What a quote reads of one pricing version and one discount version, decoded, and the
//! cache that keeps it between quotes.
//!
//! A version's entries never change once it is published: versions are numbered in
//! PostgreSQL and only grow (DESIGN §4, invariant 8), and a republish after a Redis loss
//! builds a new number. So an entry read once at version N is that entry for as long as N
//! is current. A quote still asks Redis for both current versions every time (the read
//! script's one round trip, which also reads the clock), naming the versions whose entries
//! it already holds: the script sends the entries only when those are not the current
//! ones, so a quote is wholly of the versions Redis serves, as before.
//!
//! Natively one cache serves every request of the process, so each entry of a version is
//! read about once; in a Spin component the app, and so the cache, lives for one request,
//! and every quote reads its entries. On a Redis Cluster quotes read their entries every
//! time too (the clock would be one more round trip there).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use super::engine::{BundlePricing, Discount, DiscountTarget, PriceList, PricingInput, VariantPrices};
use super::money::Currency;
use super::store::Versions;
use crate::metrics::{self, Cache};

/// Entries of one pricing version: every price list, and the prices of the variants and
/// bundles read so far (`None`: the version has none).
#[derive(Debug, Default)]
pub(super) struct PricingEntries {
    pub lists: Vec<PriceList>,
    pub variants: HashMap<String, Option<VariantPrices>>,
    pub bundles: HashMap<String, Option<BundlePricing>>,
}

/// Entries of one discount version: the ids of the discounts that target each variant and
/// bundle read so far, the definitions of those, and the ids of every order discount (a
/// read always brings those), in the order read. A definition's variant and bundle targets
/// are left empty here and filled with the quoted lines' subjects when a quote is
/// assembled.
#[derive(Debug, Default)]
pub(super) struct DiscountEntries {
    pub by_variant: HashMap<String, Vec<String>>,
    pub by_bundle: HashMap<String, Vec<String>>,
    pub definitions: HashMap<String, Discount>,
    pub order: Vec<String>,
}

/// What the cache needs of one kind's entries.
trait VersionEntries {
    /// Whether the entries of these variants and bundles were read.
    fn holds(&self, variants: &BTreeSet<String>, bundles: &BTreeSet<String>) -> bool;
    /// How many entries are held.
    fn len(&self) -> usize;
    /// Adds what a later read of the same version brought.
    fn extend(&mut self, read: Self);
}

impl VersionEntries for PricingEntries {
    fn holds(&self, variants: &BTreeSet<String>, bundles: &BTreeSet<String>) -> bool {
        variants.iter().all(|v| self.variants.contains_key(v))
            && bundles.iter().all(|b| self.bundles.contains_key(b))
    }

    fn len(&self) -> usize {
        self.variants.len() + self.bundles.len()
    }

    fn extend(&mut self, read: Self) {
        self.variants.extend(read.variants);
        self.bundles.extend(read.bundles);
    }
}

impl VersionEntries for DiscountEntries {
    fn holds(&self, variants: &BTreeSet<String>, bundles: &BTreeSet<String>) -> bool {
        variants.iter().all(|v| self.by_variant.contains_key(v))
            && bundles.iter().all(|b| self.by_bundle.contains_key(b))
    }

    fn len(&self) -> usize {
        self.by_variant.len() + self.by_bundle.len() + self.definitions.len()
    }

    fn extend(&mut self, read: Self) {
        self.by_variant.extend(read.by_variant);
        self.by_bundle.extend(read.by_bundle);
        self.definitions.extend(read.definitions);
    }
}

/// The engine's input for these variants and bundles from the entries of one version of
/// each kind, or `None` when an entry was never read. Discounts come in the read script's
/// order: those of the variants, then of the bundles (each once, at its first subject),
/// then the order discounts.
pub(super) fn assemble(
    pricing: &PricingEntries,
    discounts: &DiscountEntries,
    variants: &BTreeSet<String>,
    bundles: &BTreeSet<String>,
    currency: Currency,
    customer_group: Option<String>,
    now_ms: i64,
) -> Option<PricingInput> {
    let mut variant_prices = Vec::with_capacity(variants.len());
    for id in variants {
        variant_prices.extend(pricing.variants.get(id)?.clone());
    }
    let mut bundle_prices = BTreeMap::new();
    for id in bundles {
        if let Some(found) = pricing.bundles.get(id)? {
            bundle_prices.insert(id.clone(), found.clone());
        }
    }

    // Who each discount applies to, among the quoted variants and bundles.
    let mut targets: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let mut ids: Vec<&str> = Vec::new();
    let subjects = [(variants, &discounts.by_variant), (bundles, &discounts.by_bundle)];
    for (asked, by_subject) in subjects {
        for subject in asked {
            for id in by_subject.get(subject)? {
                let of = targets.entry(id).or_insert_with(|| {
                    ids.push(id);
                    BTreeSet::new()
                });
                of.insert(subject.clone());
            }
        }
    }
    ids.extend(
        discounts
            .order
            .iter()
            .map(String::as_str)
            .filter(|id| !targets.contains_key(id)),
    );
    let mut applicable = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(definition) = discounts.definitions.get(id) else {
            continue;
        };
        let mut discount = definition.clone();
        match &mut discount.target {
            DiscountTarget::Variants(of) | DiscountTarget::Bundles(of) => {
                *of = targets.remove(id).unwrap_or_default();
            }
            DiscountTarget::OrderSubtotal { .. } => {}
        }
        applicable.push(discount);
    }

    Some(PricingInput {
        price_lists: pricing.lists.clone(),
        variants: variant_prices,
        bundles: bundle_prices,
        discounts: applicable,
        customer_group,
        currency,
        now_ms,
    })
}

/// The entries of the newest pricing version and the newest discount version a process has
/// read (see the module's text).
#[derive(Debug)]
pub struct RulesetCache {
    /// Variants, bundles and discounts kept per version at most (`ruleset_cache_entries`);
    /// past that a version's cache starts again from what the last read brought. Each is
    /// a few hundred bytes. 0: nothing is kept.
    capacity: usize,
    newest: Mutex<Newest>,
    /// Until when (epoch ms) PostgreSQL's word that no discount version was ever published
    /// holds for this process (see `Rulesets::read`).
    no_discounts_until_ms: std::sync::atomic::AtomicI64,
}

#[derive(Debug, Default)]
struct Newest {
    pricing: Option<(i64, PricingEntries)>,
    discounts: Option<(i64, DiscountEntries)>,
}

/// Keeps `read` as the entries of `version`: added to those held when they are of the
/// same version, in their place when newer (or when the held ones are too many), and
/// dropped when older.
fn keep<E: VersionEntries>(held: &mut Option<(i64, E)>, version: i64, read: E, capacity: usize) {
    match held {
        Some((at, entries)) if *at == version && entries.len() + read.len() <= capacity => {
            entries.extend(read);
        }
        Some((at, _)) if *at > version => {}
        _ => *held = Some((version, read)),
    }
}

impl RulesetCache {
    /// A cache of at most `capacity` entries per version (0: off).
    pub fn new(capacity: u32) -> Self {
        Self {
            capacity: capacity as usize,
            newest: Mutex::new(Newest::default()),
            no_discounts_until_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Whether PostgreSQL said, less than a few seconds ago, that no discount version was
    /// ever published.
    pub(super) fn knows_no_discounts(&self, now_ms: i64) -> bool {
        now_ms
            < self
                .no_discounts_until_ms
                .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Keeps PostgreSQL's word that no discount version was ever published until `until_ms`.
    pub(super) fn no_discounts_until(&self, until_ms: i64) {
        self.no_discounts_until_ms
            .store(until_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// The engine's input for these variants and bundles from the held entries, and the
    /// versions it is of, when every entry they need is held (`now_ms` is left for the
    /// caller, who reads the clock).
    pub(super) fn input(
        &self,
        variants: &BTreeSet<String>,
        bundles: &BTreeSet<String>,
        currency: Currency,
        customer_group: &Option<String>,
    ) -> Option<(Versions, PricingInput)> {
        let newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        let (Some((pricing, prices)), Some((discounts, offers))) = (&newest.pricing, &newest.discounts)
        else {
            return None;
        };
        if !prices.holds(variants, bundles) || !offers.holds(variants, bundles) {
            return None;
        }
        let input = assemble(
            prices,
            offers,
            variants,
            bundles,
            currency,
            customer_group.clone(),
            0,
        )?;
        let versions = Versions {
            pricing: *pricing,
            discounts: *discounts,
        };
        Some((versions, input))
    }

    /// Whether nothing is held (always so in a Spin component, whose app lives for one
    /// request).
    pub fn is_empty(&self) -> bool {
        let newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        newest.pricing.is_none()
    }

    /// The engine's input for these variants and bundles at `now_ms` when the held entries
    /// are of exactly `versions` (the current ones, read by the caller) and include every
    /// entry they need (a hit). When not, the caller reads them from Redis, which counts
    /// the miss.
    pub(super) fn input_at(
        &self,
        versions: Versions,
        now_ms: i64,
        variants: &BTreeSet<String>,
        bundles: &BTreeSet<String>,
        currency: Currency,
        customer_group: &Option<String>,
    ) -> Option<PricingInput> {
        let held = self
            .input(variants, bundles, currency, customer_group)
            .filter(|(held, _)| *held == versions);
        let (_, mut input) = held?;
        metrics::cache(Cache::Ruleset, true, 1);
        input.now_ms = now_ms;
        Some(input)
    }

    /// Keeps what a read brought of these versions.
    pub(super) fn keep(&self, versions: Versions, pricing: PricingEntries, discounts: DiscountEntries) {
        if self.capacity == 0 {
            return;
        }
        let mut newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        keep(&mut newest.pricing, versions.pricing, pricing, self.capacity);
        keep(
            &mut newest.discounts,
            versions.discounts,
            discounts,
            self.capacity,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    }

    /// What a read of `variants` at a version brings: each priced at `price`, no discounts.
    fn read(variants: &[&str], price: i64) -> (PricingEntries, DiscountEntries) {
        let mut pricing = PricingEntries::default();
        let mut discounts = DiscountEntries::default();
        for id in variants {
            let prices = VariantPrices {
                variant_id: (*id).to_owned(),
                base_minor: price,
                currency: eur(),
                entries: Vec::new(),
            };
            pricing.variants.insert((*id).to_owned(), Some(prices));
            discounts.by_variant.insert((*id).to_owned(), Vec::new());
        }
        (pricing, discounts)
    }

    fn versions(pricing: i64) -> Versions {
        Versions {
            pricing,
            discounts: 0,
        }
    }

    /// The held versions and base prices for `variants`, if every entry is held.
    fn held(cache: &RulesetCache, variants: &[&str]) -> Option<(i64, Vec<i64>)> {
        let (versions, input) = cache.input(&set(variants), &BTreeSet::new(), eur(), &None)?;
        Some((
            versions.pricing,
            input.variants.iter().map(|v| v.base_minor).collect(),
        ))
    }

    #[test]
    fn reads_of_one_version_add_up_and_a_newer_version_replaces_them() {
        let cache = RulesetCache::new(100);
        assert_eq!(held(&cache, &["var-1"]), None);
        let (p, d) = read(&["var-1"], 100);
        cache.keep(versions(1), p, d);
        let (p, d) = read(&["var-2"], 200);
        cache.keep(versions(1), p, d);
        assert_eq!(held(&cache, &["var-1", "var-2"]), Some((1, vec![100, 200])));
        assert_eq!(held(&cache, &["var-1", "var-3"]), None, "var-3 was never read");

        let (p, d) = read(&["var-2"], 250);
        cache.keep(versions(2), p, d);
        assert_eq!(held(&cache, &["var-2"]), Some((2, vec![250])));
        assert_eq!(held(&cache, &["var-1"]), None, "version 1's entries are gone");

        let (p, d) = read(&["var-1"], 100);
        cache.keep(versions(1), p, d);
        assert_eq!(held(&cache, &["var-1"]), None, "an older version is not kept");
    }

    #[test]
    fn a_full_cache_starts_again_and_capacity_zero_keeps_nothing() {
        let cache = RulesetCache::new(2);
        let (p, d) = read(&["var-1"], 100);
        cache.keep(versions(1), p, d);
        let (p, d) = read(&["var-2", "var-3"], 200);
        cache.keep(versions(1), p, d);
        assert_eq!(
            held(&cache, &["var-1"]),
            None,
            "past 2 entries the version starts again"
        );
        assert_eq!(held(&cache, &["var-2", "var-3"]), Some((1, vec![200, 200])));

        let off = RulesetCache::new(0);
        let (p, d) = read(&["var-1"], 100);
        off.keep(versions(1), p, d);
        assert_eq!(held(&off, &["var-1"]), None);
    }
}
