//! The price and discount engine: from a ruleset and a cart's lines to a [`Quote`].
//!
//! Everything here is a pure function of its input: no I/O, no clock (`now` arrives as
//! [`PricingInput::now_ms`]), no float. The same input always gives the same quote, and
//! the order in which price lists or discounts are given does not matter: every choice
//! between them is made by an explicit ordering (priority, then id).
//!
//! The rules, each implemented once below:
//! 1. **Price resolution** of a variant: `walks` (the order lists are consulted in, once
//!    per customer group and currency), `RulesetIndex::resolve_variant` and
//!    `walked_price`.
//! 2. **Bundle unit price**: `RulesetIndex::resolve_bundle`.
//! 3. **Discounts**, in priority order with exclusivity, never taking a line or the order
//!    below zero: `RulesetIndex::apply_discounts`.
//! 4. **Totals**: `subtotal = Σ line totals`, `discountTotal = Σ every listed discount`,
//!    `total = subtotal − discountTotal ≥ 0`: [`RulesetIndex::quote`].
//!
//! A ruleset is indexed once ([`RulesetIndex`]: the orderings the rules ask for, and
//! lookups by variant and bundle id), then quoted; [`quote`] does both for one quote. A
//! quote looks each line's variant or bundle up once, allocates per line only what the
//! quote returns, and nothing per discount candidate.
//!
//! Rounding happens in exactly one place, [`percent_of`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::json;

use super::money::{Currency, Money, percent_of};
use crate::error::{Error, ErrorCode};
use crate::ids::Quantity;

/// What a line priced at no price list shows as its `priceListId`: the variant's base
/// price, or a bundle's own pricing.
pub const BASE_PRICE_LIST_ID: &str = "base";

/// A price list: prices in one currency for one customer group (or for everyone), with an
/// optional parent whose prices it inherits where it has none.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceList {
    /// Unique among the lists of a [`PricingInput`].
    pub id: String,
    /// The currency of every price in the list; lists of another currency than the cart's
    /// are never used.
    pub currency: Currency,
    /// The customer group the list is for; `None` is a default list, for everyone.
    pub customer_group: Option<String>,
    /// The list consulted next when this one has no price for a variant.
    pub parent_id: Option<String>,
    /// Higher is consulted first among the lists of the same kind (group or default).
    pub priority: i32,
}

/// One quantity tier of a list's price for a variant: from `min_quantity` units on, each
/// unit costs `unit_minor`.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceBreak {
    /// The smallest line quantity the tier applies to (at least 1).
    pub min_quantity: u32,
    /// The unit price in minor units of the list's currency.
    pub unit_minor: i64,
}

/// The prices of one variant: its base price and its entries in the price lists.
#[derive(Clone, Debug, PartialEq)]
pub struct VariantPrices {
    /// Unique among the variants of a [`PricingInput`].
    pub variant_id: String,
    /// The price when no price list has one, in minor units of `currency`.
    pub base_minor: i64,
    /// The currency of the base price.
    pub currency: Currency,
    /// Per price list id, the variant's quantity tiers in that list. Several entries for
    /// one list count as one entry holding all their tiers.
    pub entries: Vec<(String, Vec<PriceBreak>)>,
}

/// How a bundle is priced.
#[derive(Clone, Debug, PartialEq)]
pub enum BundlePricing {
    /// One fixed price per bundle, whatever parts were chosen.
    Fixed {
        /// The bundle's unit price in minor units of `currency`.
        unit_minor: i64,
        /// Must be the cart's currency.
        currency: Currency,
    },
    /// The sum of the chosen parts' prices, less a percentage.
    PercentOff {
        /// The reduction in basis points (10 000 = 100 %).
        basis_points: u32,
    },
}

/// A discount rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Discount {
    /// Unique among the discounts of a [`PricingInput`].
    pub id: String,
    /// How much it takes.
    pub kind: DiscountKind,
    /// What it applies to.
    pub target: DiscountTarget,
    /// Higher applies first, on what lower ones have not taken yet.
    pub priority: i32,
    /// Once it has taken something, no discount of lower priority applies anywhere;
    /// discounts of the same priority still do.
    pub exclusive: bool,
    /// Active from this instant on (inclusive), epoch milliseconds; `None` = always was.
    pub starts_at_ms: Option<i64>,
    /// Active until this instant (exclusive), epoch milliseconds; `None` = never ends.
    pub ends_at_ms: Option<i64>,
}

impl Discount {
    /// Whether the discount is active at `now_ms`: `starts_at_ms <= now_ms < ends_at_ms`,
    /// an absent bound being open.
    pub fn is_active_at(&self, now_ms: i64) -> bool {
        self.starts_at_ms.is_none_or(|start| start <= now_ms)
            && self.ends_at_ms.is_none_or(|end| now_ms < end)
    }
}

/// How much a discount takes.
#[derive(Clone, Debug, PartialEq)]
pub enum DiscountKind {
    /// A percentage of what is left of the line (or the order), rounded by [`percent_of`].
    /// Given a currency, it is for carts in that currency only (skipped, not an error, in
    /// others, as a fixed amount is): its order threshold is then in that currency too.
    Percentage {
        /// Basis points (10 000 = 100 %).
        basis_points: u32,
        /// The only currency whose carts it applies to; `None`: any.
        currency: Option<Currency>,
    },
    /// A fixed amount: per unit on a line, once on the order. Skipped (not an error) when
    /// its currency is not the cart's; a negative amount takes nothing.
    Fixed {
        /// The amount in minor units of `currency`.
        amount_minor: i64,
        /// The amount's currency.
        currency: Currency,
    },
}

/// What a discount applies to.
#[derive(Clone, Debug, PartialEq)]
pub enum DiscountTarget {
    /// Each variant line whose variant is in the set (not variants inside bundles).
    Variants(BTreeSet<String>),
    /// The order, once, when its subtotal before any discount is at least the threshold.
    OrderSubtotal {
        /// The smallest subtotal that qualifies, minor units of the cart's currency.
        threshold_minor: i64,
    },
    /// Each bundle line whose bundle is in the set.
    Bundles(BTreeSet<String>),
}

/// A line to be quoted.
#[derive(Clone, Debug, PartialEq)]
pub enum QuoteLine {
    /// Units of one variant.
    Variant {
        /// The cart line id, echoed in the quote.
        line_id: String,
        /// The variant.
        variant_id: String,
        /// Units, from 1 to [`Quantity::MAX`].
        quantity: u32,
    },
    /// Units of a bundle made of chosen variants.
    Bundle {
        /// The cart line id, echoed in the quote.
        line_id: String,
        /// The bundle.
        bundle_id: String,
        /// The chosen variants, one unit of each per bundle.
        parts: Vec<String>,
        /// Bundles, from 1 to [`Quantity::MAX`].
        quantity: u32,
    },
}

impl QuoteLine {
    fn line_id(&self) -> &str {
        match self {
            QuoteLine::Variant { line_id, .. } | QuoteLine::Bundle { line_id, .. } => line_id,
        }
    }

    fn quantity(&self) -> u32 {
        match self {
            QuoteLine::Variant { quantity, .. } | QuoteLine::Bundle { quantity, .. } => *quantity,
        }
    }
}

/// Everything a quote depends on: the ruleset (as loaded by the caller, holding at least
/// the variants and bundles the lines name) and the request's context.
///
/// Ids are unique within each collection; a duplicate is a bug in whoever built the input
/// and is refused as [`Error::Internal`], since it would make the quote depend on order.
#[derive(Clone, Debug, PartialEq)]
pub struct PricingInput {
    /// Every price list, in any order.
    pub price_lists: Vec<PriceList>,
    /// The prices of (at least) the variants the lines name, bundle parts included.
    pub variants: Vec<VariantPrices>,
    /// The pricing of (at least) the bundles the lines name, by bundle id.
    pub bundles: BTreeMap<String, BundlePricing>,
    /// Every discount, active or not, in any order.
    pub discounts: Vec<Discount>,
    /// The customer's pricing group, if any.
    pub customer_group: Option<String>,
    /// The cart's currency: every price and total of the quote is in it.
    pub currency: Currency,
    /// The instant the quote is for, epoch milliseconds (decides which discounts are
    /// active).
    pub now_ms: i64,
}

/// The priced cart: DESIGN §5's quote shape (the caller adds `versions`).
///
/// Guarantees: `subtotal_minor == Σ lines[i].line_total_minor`, `discount_total_minor ==
/// Σ` every amount in `lines[i].discounts` and `order_discounts`, `total_minor ==
/// subtotal_minor − discount_total_minor >= 0`, every listed amount is `> 0`, and no line's
/// discounts add up to more than its line total.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quote {
    /// The cart's currency, which every amount is in.
    pub currency: Currency,
    /// The lines, in the order they were given.
    pub lines: Vec<QuotedLine>,
    /// Discounts on the order as a whole, in the order they were applied.
    pub order_discounts: Vec<AppliedDiscount>,
    /// Σ line totals, before any discount.
    #[serde(rename = "subtotal")]
    pub subtotal_minor: i64,
    /// Σ every line and order discount.
    #[serde(rename = "discountTotal")]
    pub discount_total_minor: i64,
    /// What the customer pays: `subtotal − discountTotal`, never negative.
    #[serde(rename = "total")]
    pub total_minor: i64,
}

/// One priced line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuotedLine {
    /// The cart line id it prices.
    pub line_id: String,
    /// The variant it prices, for a line of one variant (shared with the index, as the
    /// list's id below: naming them copies no text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant_id: Option<Arc<str>>,
    /// The bundle it prices, for a bundle line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_id: Option<Arc<str>>,
    /// The price of one unit (one bundle), never negative.
    #[serde(rename = "unitPrice")]
    pub unit_minor: i64,
    /// The list the unit price came from; `None` for a base price or a bundle's own
    /// pricing, shown as [`BASE_PRICE_LIST_ID`].
    #[serde(serialize_with = "list_id_or_base")]
    pub price_list_id: Option<Arc<str>>,
    /// Units (bundles) on the line.
    pub quantity: u32,
    /// `unit_minor × quantity`, before discounts.
    #[serde(rename = "lineTotal")]
    pub line_total_minor: i64,
    /// The discounts taken off this line, in the order they were applied; together never
    /// more than `line_total_minor`.
    pub discounts: Vec<AppliedDiscount>,
}

/// A discount that took something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppliedDiscount {
    /// The discount (shared with the index that applied it, so listing it copies no text).
    pub discount_id: Arc<str>,
    /// What it took, always `> 0`.
    #[serde(rename = "amount")]
    pub amount_minor: i64,
}

fn list_id_or_base<S: Serializer>(id: &Option<Arc<str>>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(id.as_deref().unwrap_or(BASE_PRICE_LIST_ID))
}

/// Prices `lines` under `input`: [`RulesetIndex::new`] then [`RulesetIndex::quote`] in the
/// input's context. For one quote of a ruleset read for it (what a request does); whoever
/// quotes one ruleset many times indexes it once and calls [`RulesetIndex::quote`].
pub fn quote(input: &PricingInput, lines: &[QuoteLine]) -> Result<Quote, Error> {
    RulesetIndex::new(input)?.quote(&input.context(), lines)
}

/// What a quote is for besides its lines: who, in which currency, when.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuoteContext<'c> {
    /// The customer's pricing group, if any.
    pub customer_group: Option<&'c str>,
    /// The cart's currency: every price and total of the quote is in it.
    pub currency: Currency,
    /// The instant the quote is for, epoch milliseconds (decides which discounts are
    /// active).
    pub now_ms: i64,
}

impl PricingInput {
    /// The input's customer group, currency and instant.
    pub fn context(&self) -> QuoteContext<'_> {
        QuoteContext {
            customer_group: self.customer_group.as_deref(),
            currency: self.currency,
            now_ms: self.now_ms,
        }
    }
}

/// A price list's position in [`RulesetIndex::lists`].
type ListIx = u32;
/// A variant's position in [`RulesetIndex::variants`] (or a bundle's in
/// [`RulesetIndex::bundles`]).
type Position = u32;
/// A discount's position in [`RulesetIndex::discounts`], which is the order rule 3
/// applies discounts in: a lower rank applies first.
type Rank = u32;
/// Where a discount candidate applies: a line's index, or [`ORDER`].
type Slot = u32;
/// The slot of the order as a whole.
const ORDER: Slot = Slot::MAX;

/// Up to this many candidates, [`RulesetIndex::in_rank_order`] sorts them by comparing.
const SORTED_BY_COMPARING: usize = 64;

/// A discount that may apply to a slot.
#[derive(Clone, Copy)]
struct Candidate {
    rank: Rank,
    slot: Slot,
}

/// The place, in a [`Walk`], of a list the walk never reaches.
const NOT_WALKED: u32 = u32::MAX;

/// The ruleset of a [`PricingInput`] (its price lists, variants, bundles and discounts,
/// not its context) arranged so that a quote looks up what applies to its lines instead
/// of searching the whole ruleset:
///
/// - every ordering the rules ask for is done once, here: rule 1's walk through the price
///   lists for each customer group and currency, each variant's tiers by quantity, and
///   discounts by priority and id (rule 3's order);
/// - a line finds its variant (or bundle) by id once, and through its position its tiers
///   and the discounts that may apply to it, so the cost of a quote grows with its lines
///   and the discounts that target them, not with the size of the ruleset.
///
/// Build it once per ruleset and quote with it as often as needed; it borrows the input.
pub struct RulesetIndex<'a> {
    /// The price lists, in the input's order.
    lists: Vec<&'a PriceList>,
    /// Their ids, in the same order, shared with the quotes that name them.
    list_ids: Vec<Arc<str>>,
    /// Rule 1's walk for each customer group and currency that some list has.
    walks: Vec<Walk<'a>>,
    /// The position of each variant in `variants` and `by_variant`.
    variant_ix: IdMap<'a>,
    /// Each variant's base price and where its tiers are in `tiers`.
    variants: Vec<IndexedVariant<'a>>,
    /// Every tier of every variant, each variant's tiers side by side.
    tiers: Vec<Tier>,
    /// The position of each bundle in `bundles` and `by_bundle`.
    bundle_ix: IdMap<'a>,
    /// Each bundle's id and pricing.
    bundles: Vec<(Arc<str>, &'a BundlePricing)>,
    /// The discounts in the order rule 3 applies them: priority descending, ties by id.
    discounts: Vec<RankedDiscount<'a>>,
    /// The `Variants` discounts naming each variant (that the ruleset prices).
    by_variant: Targeted,
    /// The `Bundles` discounts naming each bundle (that the ruleset prices).
    by_bundle: Targeted,
    /// The ranks of the `OrderSubtotal` discounts, ascending.
    on_order: Vec<Rank>,
}

/// Positions by id, hashed with FNV-1a rather than SipHash: ids are a few bytes, and the
/// keys are the ruleset's own ids (a cart only looks them up, it cannot add colliding
/// ones), so SipHash's defence against chosen collisions would buy nothing here.
type IdMap<'a> = HashMap<&'a str, Position, BuildHasherDefault<Fnv1a>>;

/// The 64-bit FNV-1a hash.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Rule 1's order of the price lists for one customer group and currency: the candidate
/// lists (the group's, then the default ones; within each, priority descending, ties by
/// id ascending), each followed by its parents up to a missing parent or a cycle, lists of
/// another currency left out. A list met a second time is not walked again: it priced
/// nothing the first time and would price nothing now.
///
/// Kept as each list's place in that order, so a variant's price is the applicable tier
/// of its walked list with the lowest place, found among its own tiers alone.
struct Walk<'a> {
    /// The group the walk is for; `None` is the walk of a customer whose group no list
    /// of the currency has.
    customer_group: Option<&'a str>,
    currency: Currency,
    /// Per list, its place in the walk (lower is consulted first), or [`NOT_WALKED`].
    places: Vec<u32>,
}

/// A discount and its id, shared with every [`AppliedDiscount`] it gives.
struct RankedDiscount<'a> {
    rule: &'a Discount,
    id: Arc<str>,
}

impl RankedDiscount<'_> {
    /// The discount listed as having taken `amount_minor`.
    fn applied(&self, amount_minor: i64) -> AppliedDiscount {
        AppliedDiscount {
            discount_id: Arc::clone(&self.id),
            amount_minor,
        }
    }
}

/// A variant's base price and its tiers.
struct IndexedVariant<'a> {
    prices: &'a VariantPrices,
    /// Its id, shared with the quotes that name it.
    id: Arc<str>,
    /// Where the variant's tiers are in [`RulesetIndex::tiers`]: every tier of every list
    /// that prices it (several entries for one list merged), sorted by `min_quantity`
    /// ascending, then price descending, so that of two tiers of one list that apply to a
    /// quantity, the later is the one rule 1 takes.
    tiers: Range<usize>,
}

/// One quantity tier of one list's price for a variant.
struct Tier {
    list: ListIx,
    min_quantity: u32,
    unit_minor: i64,
}

/// Rule 1, a variant's price at `quantity` on `walk`: the tier with the highest
/// `min_quantity <= quantity` (equal tiers: the lower price) of the first list of the walk
/// that has one, and that list; `None` when no walked list prices the variant at this
/// quantity.
fn walked_price(tiers: &[Tier], walk: &Walk<'_>, quantity: u32) -> Option<(ListIx, i64)> {
    let mut best: Option<(u32, &Tier)> = None;
    // Tiers by `min_quantity` ascending: past the first that starts above `quantity`, none
    // applies.
    for tier in tiers.iter().take_while(|tier| tier.min_quantity <= quantity) {
        let place = walk.places[tier.list as usize];
        // `<=`: a later tier of the same list (same place) is the better one.
        if place != NOT_WALKED && best.is_none_or(|(best_place, _)| place <= best_place) {
            best = Some((place, tier));
        }
    }
    best.map(|(_, tier)| (tier.list, tier.unit_minor))
}

/// The discounts naming each variant (or each bundle), by its position: the ranks of
/// target `t` are `ranks[starts[t]..starts[t + 1]]`, ascending.
struct Targeted {
    starts: Vec<usize>,
    ranks: Vec<Rank>,
}

impl Targeted {
    /// From `(target position, rank)` pairs in ascending rank order, `targets` positions.
    /// A counting sort: count each target's ranks, then place them in the order given.
    fn new(targets: usize, pairs: &[(Position, Rank)]) -> Self {
        let mut starts = vec![0; targets + 1];
        for &(target, _) in pairs {
            starts[target as usize + 1] += 1;
        }
        for target in 0..targets {
            starts[target + 1] += starts[target];
        }
        let mut next = starts.clone();
        let mut ranks = vec![0; pairs.len()];
        for &(target, rank) in pairs {
            ranks[next[target as usize]] = rank;
            next[target as usize] += 1;
        }
        Self { starts, ranks }
    }

    /// The ranks of the discounts naming target `target`, ascending.
    fn of(&self, target: Position) -> &[Rank] {
        let target = target as usize;
        &self.ranks[self.starts[target]..self.starts[target + 1]]
    }
}

impl<'a> RulesetIndex<'a> {
    /// Indexes the ruleset of `input`. A duplicate price list, variant or discount id is
    /// refused as [`Error::Internal`] (it would make quotes depend on order).
    pub fn new(input: &'a PricingInput) -> Result<Self, Error> {
        let list_ix = unique("price list", input.price_lists.iter().map(|l| l.id.as_str()))?;
        let variant_ix = unique("variant", input.variants.iter().map(|v| v.variant_id.as_str()))?;
        unique("discount", input.discounts.iter().map(|d| d.id.as_str()))?;
        let lists: Vec<&PriceList> = input.price_lists.iter().collect();
        let walks = walks(&lists, &list_ix);

        let mut tiers = Vec::new();
        let mut variants = Vec::with_capacity(input.variants.len());
        for prices in &input.variants {
            let start = tiers.len();
            for (list_id, breaks) in &prices.entries {
                // A list that does not exist is never walked to.
                let Some(&list) = list_ix.get(list_id.as_str()) else {
                    continue;
                };
                tiers.extend(breaks.iter().map(|tier| Tier {
                    list,
                    min_quantity: tier.min_quantity,
                    unit_minor: tier.unit_minor,
                }));
            }
            tiers[start..].sort_by_key(|tier| (tier.min_quantity, Reverse(tier.unit_minor)));
            variants.push(IndexedVariant {
                prices,
                id: prices.variant_id.as_str().into(),
                tiers: start..tiers.len(),
            });
        }
        let bundle_ix: IdMap = input.bundles.keys().map(String::as_str).zip(0..).collect();

        let mut discounts: Vec<&Discount> = input.discounts.iter().collect();
        discounts.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
        let (mut by_variant, mut by_bundle, mut on_order) = (Vec::new(), Vec::new(), Vec::new());
        // A discount naming a variant or bundle the ruleset does not price is left out for
        // it: a line of it is refused before discounts apply.
        for (rank, discount) in (0..).zip(&discounts) {
            match &discount.target {
                DiscountTarget::Variants(ids) => by_variant.extend(named(ids, &variant_ix, rank)),
                DiscountTarget::Bundles(ids) => by_bundle.extend(named(ids, &bundle_ix, rank)),
                DiscountTarget::OrderSubtotal { .. } => on_order.push(rank),
            }
        }
        let discounts = (discounts.into_iter())
            .map(|rule| RankedDiscount {
                rule,
                id: rule.id.as_str().into(),
            })
            .collect();
        Ok(Self {
            list_ids: lists.iter().map(|list| list.id.as_str().into()).collect(),
            lists,
            walks,
            by_variant: Targeted::new(variants.len(), &by_variant),
            by_bundle: Targeted::new(bundle_ix.len(), &by_bundle),
            variant_ix,
            variants,
            tiers,
            bundle_ix,
            bundles: (input.bundles.iter())
                .map(|(id, pricing)| (id.as_str().into(), pricing))
                .collect(),
            discounts,
            on_order,
        })
    }

    /// Prices `lines` in `context`: unit prices (rules 1 and 2), line totals, discounts
    /// (rule 3) and totals, with the guarantees stated on [`Quote`].
    ///
    /// Refuses, without a partial quote:
    /// - a quantity of 0 or above [`Quantity::MAX`]: 400 `INVALID_QUANTITY`;
    /// - a variant or bundle the ruleset does not price: 422 `UNKNOWN_VARIANT` /
    ///   `UNKNOWN_BUNDLE`, naming it and the line;
    /// - a variant with no price in the cart's currency, or a fixed-price bundle in another
    ///   currency: 422 `CURRENCY_MISMATCH`;
    /// - a negative price in the ruleset: 422 `INVALID_PRICE`;
    /// - an amount beyond `i64` minor units: 422 `AMOUNT_OUT_OF_RANGE`.
    pub fn quote(&self, context: &QuoteContext<'_>, lines: &[QuoteLine]) -> Result<Quote, Error> {
        let currency = context.currency;
        let walk = self.walk(context);
        let mut priced = Vec::with_capacity(lines.len());
        // For each line, the ranks of the discounts naming its variant or bundle.
        let mut targeted = Vec::with_capacity(lines.len());
        let mut subtotal = Money::zero(currency);
        for line in lines {
            let quantity = Quantity::new(i64::from(line.quantity()))?.get();
            let (unit, targeted_by, subject) = match line {
                QuoteLine::Variant { variant_id, .. } => {
                    let variant = self.variant(line, variant_id)?;
                    let unit = self.resolve_variant(context, walk, line, variant, quantity)?;
                    let id = &self.variants[variant as usize].id;
                    (unit, self.by_variant.of(variant), (Some(id), None))
                }
                QuoteLine::Bundle { bundle_id, parts, .. } => {
                    let bundle = self.bundle(line, bundle_id)?;
                    let unit = self.resolve_bundle(context, walk, line, bundle, parts, quantity)?;
                    (
                        unit,
                        self.by_bundle.of(bundle),
                        (None, Some(&self.bundles[bundle as usize].0)),
                    )
                }
            };
            let line_total = Money::new(unit.unit_minor, currency).checked_mul(quantity)?;
            subtotal = subtotal.checked_add(line_total)?;
            targeted.push(targeted_by);
            priced.push(QuotedLine {
                line_id: line.line_id().to_owned(),
                variant_id: subject.0.cloned(),
                bundle_id: subject.1.cloned(),
                unit_minor: unit.unit_minor,
                price_list_id: unit.list.map(|list| Arc::clone(&self.list_ids[list as usize])),
                quantity,
                line_total_minor: line_total.minor,
                // Room for every discount the line may take, so listing them does not
                // regrow.
                discounts: Vec::with_capacity(targeted_by.len()),
            });
        }
        let order_discounts = self.apply_discounts(context, &targeted, &mut priced, subtotal.minor);
        // Every amount was capped at what was left of the order, so neither sum can exceed
        // the subtotal.
        let discount_total_minor = priced
            .iter()
            .flat_map(|line| &line.discounts)
            .chain(&order_discounts)
            .map(|discount| discount.amount_minor)
            .sum::<i64>();
        Ok(Quote {
            currency,
            lines: priced,
            order_discounts,
            subtotal_minor: subtotal.minor,
            discount_total_minor,
            total_minor: subtotal.minor - discount_total_minor,
        })
    }

    /// Rule 1's walk for the quote's customer group and currency: the group's own walk,
    /// else (no list of the currency is for the group) the default lists' walk; `None`
    /// when no list is in the currency.
    fn walk(&self, context: &QuoteContext<'_>) -> Option<&Walk<'a>> {
        let of = |group: Option<&str>| {
            (self.walks.iter()).find(|walk| walk.currency == context.currency && walk.customer_group == group)
        };
        context
            .customer_group
            .and_then(|group| of(Some(group)))
            .or_else(|| of(None))
    }

    /// The position of `variant_id`, refused (naming `line`) when the ruleset does not
    /// price it.
    fn variant(&self, line: &QuoteLine, variant_id: &str) -> Result<Position, Error> {
        self.variant_ix.get(variant_id).copied().ok_or_else(|| {
            unprocessable(
                ErrorCode::UnknownVariant,
                format!("variant {variant_id} has no price"),
                json!({ "lineId": line.line_id(), "variantId": variant_id }),
            )
        })
    }

    /// The position of `bundle_id`, refused (naming `line`) when the ruleset does not
    /// price it.
    fn bundle(&self, line: &QuoteLine, bundle_id: &str) -> Result<Position, Error> {
        self.bundle_ix.get(bundle_id).copied().ok_or_else(|| {
            unprocessable(
                ErrorCode::UnknownBundle,
                format!("bundle {bundle_id} has no pricing"),
                json!({ "lineId": line.line_id(), "bundleId": bundle_id }),
            )
        })
    }

    /// Rule 1, price resolution of the variant at `variant` at `quantity` units.
    ///
    /// Walk the price lists in `walk`'s order (see [`Walk`]) and take the first list that
    /// prices the variant at this quantity: its tier with the highest `min_quantity <=
    /// quantity` (equal tiers: the lower price); a list whose tiers all start above the
    /// quantity does not apply and the walk goes on. If no list prices the variant, its
    /// base price applies, which must be in the cart's currency.
    fn resolve_variant(
        &self,
        context: &QuoteContext<'_>,
        walk: Option<&Walk<'_>>,
        line: &QuoteLine,
        variant: Position,
        quantity: u32,
    ) -> Result<UnitPrice, Error> {
        let variant = &self.variants[variant as usize];
        let from_list =
            walk.and_then(|walk| walked_price(&self.tiers[variant.tiers.clone()], walk, quantity));
        let prices = variant.prices;
        let (unit_minor, list) = match from_list {
            Some((list, unit_minor)) => (unit_minor, Some(list)),
            None if prices.currency == context.currency => (prices.base_minor, None),
            None => {
                return Err(unprocessable(
                    ErrorCode::CurrencyMismatch,
                    format!(
                        "variant {} has no price in {}, only a base price in {}",
                        prices.variant_id, context.currency, prices.currency
                    ),
                    json!({
                        "lineId": line.line_id(),
                        "variantId": prices.variant_id,
                        "variantCurrency": prices.currency,
                        "cartCurrency": context.currency,
                    }),
                ));
            }
        };
        non_negative(unit_minor, || {
            let price_list_id = list.map(|list| &self.lists[list as usize].id);
            json!({ "variantId": prices.variant_id, "priceListId": price_list_id })
        })?;
        Ok(UnitPrice { unit_minor, list })
    }

    /// Rule 2, the unit price of the bundle at `bundle`.
    ///
    /// `Fixed`: its price, which must be in the cart's currency. `PercentOff`: the sum of
    /// the parts' unit prices, each resolved by rule 1 at the bundle line's quantity, less
    /// [`percent_of`] that sum. Either way the price comes from no list.
    fn resolve_bundle(
        &self,
        context: &QuoteContext<'_>,
        walk: Option<&Walk<'_>>,
        line: &QuoteLine,
        bundle: Position,
        parts: &[String],
        quantity: u32,
    ) -> Result<UnitPrice, Error> {
        let currency = context.currency;
        let (bundle_id, pricing) = &self.bundles[bundle as usize];
        let unit_minor = match pricing {
            BundlePricing::Fixed {
                unit_minor,
                currency: bundle_currency,
            } => {
                if *bundle_currency != currency {
                    return Err(unprocessable(
                        ErrorCode::CurrencyMismatch,
                        format!("bundle {bundle_id} is priced in {bundle_currency}, not {currency}"),
                        json!({
                            "lineId": line.line_id(),
                            "bundleId": bundle_id,
                            "bundleCurrency": bundle_currency,
                            "cartCurrency": currency,
                        }),
                    ));
                }
                non_negative(*unit_minor, || json!({ "bundleId": bundle_id }))?;
                *unit_minor
            }
            BundlePricing::PercentOff { basis_points } => {
                let mut sum = Money::zero(currency);
                for part in parts {
                    let variant = self.variant(line, part)?;
                    let part_price = self.resolve_variant(context, walk, line, variant, quantity)?;
                    sum = sum.checked_add(Money::new(part_price.unit_minor, currency))?;
                }
                sum.minor - percent_of(sum.minor, *basis_points)
            }
        };
        Ok(UnitPrice {
            unit_minor,
            list: None,
        })
    }

    /// Rule 3, discounts. Fills each line's `discounts` and returns the order's.
    ///
    /// - Only discounts active at `now_ms` count ([`Discount::is_active_at`]).
    /// - They apply one after the other by priority descending, ties by id ascending, each
    ///   on what the ones before it left: a line's remaining value is its total less its
    ///   discounts so far; the order's is the subtotal less every discount so far.
    /// - `Variants` / `Bundles` apply to each matching line; `OrderSubtotal` applies once to
    ///   the order when the subtotal before any discount is at least the threshold.
    /// - `Percentage` takes [`percent_of`] the remaining value of the line (or order);
    ///   `Fixed` takes its amount per unit on a line and once on the order, and nothing
    ///   when its currency is not the cart's.
    /// - Every amount is capped at what remains of its line and of the order, so no line
    ///   and no order total ever goes below zero. An amount of 0 is not listed.
    /// - Exclusivity: once an exclusive discount has taken something anywhere, no discount
    ///   of lower priority applies anywhere; discounts of the same priority still do.
    ///
    /// Only the discounts that target one of the lines (`targeted`, the ranks naming each
    /// line), or the order, are visited (see [`RulesetIndex::in_rank_order`]).
    fn apply_discounts(
        &self,
        context: &QuoteContext<'_>,
        targeted: &[&[Rank]],
        priced: &mut [QuotedLine],
        subtotal_minor: i64,
    ) -> Vec<AppliedDiscount> {
        let candidates = self.in_rank_order(targeted);

        let mut left = Left {
            lines: priced.iter().map(|line| line.line_total_minor).collect(),
            order: subtotal_minor,
        };
        let mut order_discounts = Vec::with_capacity(self.on_order.len());
        let mut exclusive_priority: Option<i32> = None;
        for same_discount in candidates.chunk_by(|a, b| a.rank == b.rank) {
            let ranked = &self.discounts[same_discount[0].rank as usize];
            let discount = ranked.rule;
            if !discount.is_active_at(context.now_ms) {
                continue;
            }
            if exclusive_priority.is_some_and(|priority| discount.priority < priority) {
                break;
            }
            let mut took_something = false;
            for candidate in same_discount {
                match (candidate.slot, &discount.target) {
                    (ORDER, DiscountTarget::OrderSubtotal { threshold_minor }) => {
                        if subtotal_minor >= *threshold_minor {
                            let amount = left.take(&discount.kind, None, context.currency);
                            if amount > 0 {
                                order_discounts.push(ranked.applied(amount));
                                took_something = true;
                            }
                        }
                    }
                    (ORDER, _) => unreachable!("only order discounts apply to the order"),
                    (line, _) => {
                        let index = line as usize;
                        let quoted = &mut priced[index];
                        let units = quoted.quantity;
                        let amount = left.take(&discount.kind, Some((index, units)), context.currency);
                        if amount > 0 {
                            quoted.discounts.push(ranked.applied(amount));
                            took_something = true;
                        }
                    }
                }
            }
            if took_something && discount.exclusive {
                exclusive_priority.get_or_insert(discount.priority);
            }
        }
        order_discounts
    }

    /// A candidate for each rank in `targeted[line]` (the discounts naming each line) and
    /// each order discount, in the order a pass over every discount, then every line, then
    /// the order, would meet them: by rank; for one rank, in line order, the order last.
    ///
    /// Listed line by line, then sorted by rank by a stable radix sort, a byte of the rank
    /// per pass: linear in the candidates, where a comparison sort was the largest single
    /// cost of a quote.
    fn in_rank_order(&self, targeted: &[&[Rank]]) -> Vec<Candidate> {
        let count = self.on_order.len() + targeted.iter().map(|ranks| ranks.len()).sum::<usize>();
        let mut candidates = Vec::with_capacity(count);
        for (ranks, slot) in targeted.iter().zip(0..) {
            candidates.extend(ranks.iter().map(|&rank| Candidate { rank, slot }));
        }
        candidates.extend(self.on_order.iter().map(|&rank| Candidate { rank, slot: ORDER }));
        // A radix pass costs its 256 buckets whatever the count: for a few candidates,
        // comparing them is cheaper (no pair is there twice, so unstable is enough).
        if count <= SORTED_BY_COMPARING {
            candidates.sort_unstable_by_key(|candidate| (candidate.rank, candidate.slot));
            return candidates;
        }
        let highest_rank = self.discounts.len().saturating_sub(1);
        let mut sorted = vec![Candidate { rank: 0, slot: 0 }; count];
        let mut shift = 0;
        while shift < Rank::BITS && highest_rank >> shift != 0 {
            let digit = |candidate: &Candidate| (candidate.rank >> shift & 0xff) as usize;
            // Where each digit's candidates start in `sorted`.
            let mut starts = [0u32; 257];
            for candidate in &candidates {
                starts[digit(candidate) + 1] += 1;
            }
            for digit in 0..256 {
                starts[digit + 1] += starts[digit];
            }
            for candidate in &candidates {
                let start = &mut starts[digit(candidate)];
                sorted[*start as usize] = *candidate;
                *start += 1;
            }
            std::mem::swap(&mut candidates, &mut sorted);
            shift += 8;
        }
        candidates
    }
}

/// Rule 1's walks, one for each currency some list has with no customer group, and one
/// for each customer group and currency that some list has.
fn walks<'a>(lists: &[&'a PriceList], list_ix: &IdMap<'_>) -> Vec<Walk<'a>> {
    let mut by_priority: Vec<usize> = (0..lists.len()).collect();
    by_priority.sort_by(|&a, &b| {
        (lists[b].priority.cmp(&lists[a].priority)).then_with(|| lists[a].id.cmp(&lists[b].id))
    });
    // For each list, the lists its walk visits: itself, then its parents, up to a missing
    // parent or a list already visited (a cycle).
    let chains: Vec<Vec<usize>> = (0..lists.len())
        .map(|start| {
            let mut chain = vec![start];
            while let Some(&parent) = lists[*chain.last().expect("starts non-empty")]
                .parent_id
                .as_deref()
                .and_then(|parent| list_ix.get(parent))
            {
                let parent = parent as usize;
                if chain.contains(&parent) {
                    break;
                }
                chain.push(parent);
            }
            chain
        })
        .collect();
    let mut contexts: Vec<(Option<&'a str>, Currency)> = (lists.iter().copied())
        .flat_map(|list| {
            [
                (None, list.currency),
                (list.customer_group.as_deref(), list.currency),
            ]
        })
        .collect();
    contexts.sort_unstable();
    contexts.dedup();
    (contexts.into_iter())
        .map(|(customer_group, currency)| {
            let in_currency = |list: &usize| lists[*list].currency == currency;
            let group = (by_priority.iter().filter(|list| in_currency(list))).filter(|&&list| {
                customer_group.is_some() && lists[list].customer_group.as_deref() == customer_group
            });
            let default = (by_priority.iter().filter(|list| in_currency(list)))
                .filter(|&&list| lists[list].customer_group.is_none());
            let mut places = vec![NOT_WALKED; lists.len()];
            let mut next_place = 0;
            for &candidate in group.chain(default) {
                for &list in chains[candidate].iter().filter(|list| in_currency(list)) {
                    if places[list] == NOT_WALKED {
                        places[list] = next_place;
                        next_place += 1;
                    }
                }
            }
            Walk {
                customer_group,
                currency,
                places,
            }
        })
        .collect()
}

/// A resolved unit price and where it came from.
struct UnitPrice {
    unit_minor: i64,
    /// The list it came from, if any.
    list: Option<ListIx>,
}

/// What the discounts applied so far have left of each line and of the order; never
/// negative.
struct Left {
    lines: Vec<i64>,
    order: i64,
}

impl Left {
    /// Takes a discount of `kind` from line `index` of `units` units, or from the order
    /// (`None`), capped at what is left of that line and of the order, and returns what it
    /// took: 0 when nothing.
    fn take(&mut self, kind: &DiscountKind, line: Option<(usize, u32)>, cart: Currency) -> i64 {
        let (line_left, units) = match line {
            Some((index, units)) => (self.lines[index], units),
            None => (self.order, 1),
        };
        let amount = discount_amount(kind, line_left, units, cart).min(self.order);
        if amount > 0 {
            if let Some((index, _)) = line {
                self.lines[index] -= amount;
            }
            self.order -= amount;
        }
        amount.max(0)
    }
}

/// What a discount of `kind` takes from a remaining value `left >= 0` of `units` units:
/// always in `0..=left`.
fn discount_amount(kind: &DiscountKind, left: i64, units: u32, cart: Currency) -> i64 {
    let wanted = match kind {
        DiscountKind::Percentage {
            basis_points,
            currency,
        } if currency.is_none_or(|c| c == cart) => percent_of(left, *basis_points),
        DiscountKind::Percentage { .. } => 0,
        // Saturating: a product beyond `i64` is beyond `left` too, and clamps the same.
        DiscountKind::Fixed {
            amount_minor,
            currency,
        } if *currency == cart => amount_minor.saturating_mul(i64::from(units)),
        DiscountKind::Fixed { .. } => 0,
    };
    wanted.clamp(0, left.max(0))
}

/// `(position, rank)` for each of `ids` that has a position.
fn named<'i>(
    ids: &'i BTreeSet<String>,
    positions: &'i IdMap<'_>,
    rank: Rank,
) -> impl Iterator<Item = (Position, Rank)> + 'i {
    ids.iter()
        .filter_map(move |id| Some((*positions.get(id.as_str())?, rank)))
}

/// The position of each id, refusing a duplicate id.
fn unique<'a>(kind: &str, ids: impl Iterator<Item = &'a str>) -> Result<IdMap<'a>, Error> {
    let mut positions = IdMap::default();
    for (id, position) in ids.zip(0..) {
        if positions.insert(id, position).is_some() {
            return Err(Error::Internal(format!("pricing input has {kind} {id} twice")));
        }
    }
    Ok(positions)
}

/// Refuses a negative price from the ruleset: the quote's guarantees rest on none.
/// `details` is built only for the error.
fn non_negative(unit_minor: i64, details: impl FnOnce() -> serde_json::Value) -> Result<(), Error> {
    if unit_minor >= 0 {
        Ok(())
    } else {
        Err(unprocessable(
            ErrorCode::InvalidPrice,
            format!("the ruleset has a negative price ({unit_minor})"),
            details(),
        ))
    }
}

fn unprocessable(code: ErrorCode, message: String, details: serde_json::Value) -> Error {
    Error::Unprocessable {
        code,
        message,
        details,
    }
}

#[cfg(test)]
mod tests;
