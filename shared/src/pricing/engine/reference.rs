//! The engine as it was before issue 11 (by-variant lookups in `HashMap`s keyed by
//! SipHash, a parent walk per candidate list and a binary search per list for each line,
//! and the discount candidates sorted by a stable sort per quote), kept only until the
//! faster [`RulesetIndex`](super::RulesetIndex) is shown to give exactly its quotes
//! (`tests::new_engine_matches_the_old_one`) and both are measured in one criterion run.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::json;

use super::{
    AppliedDiscount, BundlePricing, Discount, DiscountKind, DiscountTarget, PriceBreak, PriceList,
    PricingInput, Quote, QuoteContext, QuoteLine, QuotedLine, VariantPrices,
};
use crate::error::{Error, ErrorCode};
use crate::ids::Quantity;
use crate::pricing::money::{Currency, Money, percent_of};

/// Prices `lines` under `input` with the old engine: [`RulesetIndex::new`] then
/// [`RulesetIndex::quote`].
pub fn quote(input: &PricingInput, lines: &[QuoteLine]) -> Result<Quote, Error> {
    RulesetIndex::new(input)?.quote(&input.context(), lines)
}

/// A price list's position in [`RulesetIndex::lists`].
type ListIx = usize;
/// A discount's position in [`RulesetIndex::discounts`], which is the order rule 3
/// applies discounts in: a lower rank applies first.
type Rank = u32;
/// Where a discount candidate applies: a line's index, or [`ORDER`].
type Slot = u32;
/// The slot of the order as a whole.
const ORDER: Slot = Slot::MAX;

/// The ruleset of a [`PricingInput`] (its price lists, variants, bundles and discounts,
/// not its context) arranged so that a quote looks up what applies to its lines instead
/// of searching the whole ruleset:
///
/// - every ordering the rules ask for is done once, here: price lists by priority (rule
///   1's candidate order), each list's parent walk, each variant's tiers per list, and
///   discounts by priority and id (rule 3's order);
/// - a variant line finds its prices by variant id, and the discounts that may apply to
///   it by variant (or bundle) id, so the cost of a quote grows with its lines and the
///   discounts that target them, not with the size of the ruleset.
///
/// Build it once per ruleset and quote with it as often as needed; it borrows the input.
pub struct RulesetIndex<'a> {
    /// The price lists, in the input's order.
    lists: Vec<&'a PriceList>,
    /// Every list by priority descending, ties by id ascending: rule 1's candidate order
    /// within the customer's group lists and within the default lists.
    by_priority: Vec<ListIx>,
    /// For each list, the lists its walk visits: itself, then its parents, up to a
    /// missing parent or a list already visited (a cycle).
    chains: Vec<Vec<ListIx>>,
    /// The position of each variant in `variants` and `by_variant`.
    variant_ix: HashMap<&'a str, usize>,
    /// Each variant's base price and, per list that prices it, its tiers.
    variants: Vec<IndexedVariant<'a>>,
    /// The position of each bundle in `bundles` and `by_bundle`.
    bundle_ix: HashMap<&'a str, usize>,
    bundles: Vec<&'a BundlePricing>,
    /// The discounts in the order rule 3 applies them: priority descending, ties by id.
    discounts: Vec<RankedDiscount<'a>>,
    /// The `Variants` discounts naming each variant (that the ruleset prices).
    by_variant: Targeted,
    /// The `Bundles` discounts naming each bundle (that the ruleset prices).
    by_bundle: Targeted,
    /// The ranks of the `OrderSubtotal` discounts, ascending.
    on_order: Vec<Rank>,
}

/// A discount and its id, shared with every [`AppliedDiscount`] it gives.
struct RankedDiscount<'a> {
    rule: &'a Discount,
    id: Arc<str>,
}

/// A variant's prices, by list.
struct IndexedVariant<'a> {
    prices: &'a VariantPrices,
    /// Every tier of every list that prices the variant (several entries for one list
    /// merged), sorted by list, then `min_quantity` ascending, then price descending: the
    /// tier of a list that applies to a quantity is the last of the list's run starting at
    /// or below it.
    tiers: Vec<(ListIx, PriceBreak)>,
}

impl IndexedVariant<'_> {
    /// Rule 1, a list's price for the variant at `quantity`: the tier with the highest
    /// `min_quantity <= quantity` (equal tiers: the lower price). `None` when the list has
    /// no entry for the variant or every tier starts above `quantity`; the list then does
    /// not apply and the walk goes on.
    fn tier_price(&self, list: ListIx, quantity: u32) -> Option<i64> {
        let reached = self
            .tiers
            .partition_point(|(ix, tier)| (*ix, tier.min_quantity) <= (list, quantity));
        let (ix, tier) = self.tiers.get(reached.checked_sub(1)?)?;
        (*ix == list).then_some(tier.unit_minor)
    }
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
    fn new(targets: usize, pairs: &[(usize, Rank)]) -> Self {
        let mut starts = vec![0; targets + 1];
        for &(target, _) in pairs {
            starts[target + 1] += 1;
        }
        for target in 0..targets {
            starts[target + 1] += starts[target];
        }
        let mut next = starts.clone();
        let mut ranks = vec![0; pairs.len()];
        for &(target, rank) in pairs {
            ranks[next[target]] = rank;
            next[target] += 1;
        }
        Self { starts, ranks }
    }

    /// The ranks of the discounts naming target `target`, ascending.
    fn of(&self, target: usize) -> &[Rank] {
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

        let mut by_priority: Vec<ListIx> = (0..lists.len()).collect();
        by_priority.sort_by(|&a, &b| {
            (lists[b].priority.cmp(&lists[a].priority)).then_with(|| lists[a].id.cmp(&lists[b].id))
        });
        let chains = (0..lists.len())
            .map(|start| {
                let mut chain = vec![start];
                while let Some(&parent) = lists[*chain.last().expect("starts non-empty")]
                    .parent_id
                    .as_deref()
                    .and_then(|parent| list_ix.get(parent))
                {
                    if chain.contains(&parent) {
                        break;
                    }
                    chain.push(parent);
                }
                chain
            })
            .collect();

        let variants: Vec<IndexedVariant> = input
            .variants
            .iter()
            .map(|prices| {
                let mut tiers: Vec<(ListIx, PriceBreak)> = (prices.entries.iter())
                    // A list that does not exist is never walked to.
                    .filter_map(|(list_id, breaks)| Some((*list_ix.get(list_id.as_str())?, breaks)))
                    .flat_map(|(ix, breaks)| breaks.iter().map(move |tier| (ix, tier.clone())))
                    .collect();
                tiers.sort_by_key(|(ix, tier)| (*ix, tier.min_quantity, Reverse(tier.unit_minor)));
                IndexedVariant { prices, tiers }
            })
            .collect();
        let bundle_ix: HashMap<&str, usize> = input.bundles.keys().map(String::as_str).zip(0..).collect();

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
            lists,
            by_priority,
            chains,
            by_variant: Targeted::new(variants.len(), &by_variant),
            by_bundle: Targeted::new(bundle_ix.len(), &by_bundle),
            variant_ix,
            variants,
            bundle_ix,
            bundles: input.bundles.values().collect(),
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
        let candidates: Vec<ListIx> = self.candidates(context).collect();
        let mut priced = Vec::with_capacity(lines.len());
        let mut subtotal = Money::zero(currency);
        for line in lines {
            let quantity = Quantity::new(i64::from(line.quantity()))?.get();
            let unit = match line {
                QuoteLine::Variant { variant_id, .. } => {
                    self.resolve_variant(context, &candidates, line, variant_id, quantity)?
                }
                QuoteLine::Bundle { bundle_id, parts, .. } => {
                    self.resolve_bundle(context, &candidates, line, bundle_id, parts, quantity)?
                }
            };
            let line_total = Money::new(unit.unit_minor, currency).checked_mul(quantity)?;
            subtotal = subtotal.checked_add(line_total)?;
            priced.push(QuotedLine {
                line_id: line.line_id().to_owned(),
                unit_minor: unit.unit_minor,
                price_list_id: unit.price_list_id,
                quantity,
                line_total_minor: line_total.minor,
                discounts: Vec::new(),
            });
        }
        let order_discounts = self.apply_discounts(context, lines, &mut priced, subtotal.minor);
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

    /// Rule 1, the candidate lists in order: the lists of the customer's group, then the
    /// default lists; within each, priority descending, ties by id ascending. Lists of
    /// another currency than the cart's are never candidates.
    fn candidates<'q>(&'q self, context: &'q QuoteContext<'_>) -> impl Iterator<Item = ListIx> + 'q {
        let in_currency = move |&ix: &ListIx| self.lists[ix].currency == context.currency;
        let group = self
            .by_priority
            .iter()
            .copied()
            .filter(in_currency)
            .filter(move |&ix| {
                let list_group = self.lists[ix].customer_group.as_deref();
                list_group.is_some() && list_group == context.customer_group
            });
        let default = (self.by_priority.iter().copied())
            .filter(in_currency)
            .filter(move |&ix| self.lists[ix].customer_group.is_none());
        group.chain(default)
    }

    /// Rule 1, price resolution of `variant_id` at `quantity` units.
    ///
    /// For each of the quote's `candidates` lists in order (see
    /// [`RulesetIndex::candidates`]), walk the list
    /// and then its parents (its chain) and take the first list that prices the variant at
    /// this quantity (see [`IndexedVariant::tier_price`]); a parent in another currency is
    /// passed over. If no list prices the variant, its base price applies, which must be
    /// in the cart's currency.
    fn resolve_variant(
        &self,
        context: &QuoteContext<'_>,
        candidates: &[ListIx],
        line: &QuoteLine,
        variant_id: &str,
        quantity: u32,
    ) -> Result<UnitPrice, Error> {
        let variant = self.variant_ix.get(variant_id).map(|&ix| &self.variants[ix]);
        let variant = variant.ok_or_else(|| {
            unprocessable(
                ErrorCode::UnknownVariant,
                format!("variant {variant_id} has no price"),
                json!({ "lineId": line.line_id(), "variantId": variant_id }),
            )
        })?;
        let from_list = candidates.iter().find_map(|&candidate| {
            self.chains[candidate]
                .iter()
                .filter(|&&ix| self.lists[ix].currency == context.currency)
                .find_map(|&ix| Some((ix, variant.tier_price(ix, quantity)?)))
        });
        let (unit_minor, price_list_id) = match from_list {
            Some((ix, unit_minor)) => (unit_minor, Some(self.lists[ix].id.clone())),
            None if variant.prices.currency == context.currency => (variant.prices.base_minor, None),
            None => {
                return Err(unprocessable(
                    ErrorCode::CurrencyMismatch,
                    format!(
                        "variant {variant_id} has no price in {}, only a base price in {}",
                        context.currency, variant.prices.currency
                    ),
                    json!({
                        "lineId": line.line_id(),
                        "variantId": variant_id,
                        "variantCurrency": variant.prices.currency,
                        "cartCurrency": context.currency,
                    }),
                ));
            }
        };
        non_negative(
            unit_minor,
            || json!({ "variantId": variant_id, "priceListId": price_list_id }),
        )?;
        Ok(UnitPrice {
            unit_minor,
            price_list_id,
        })
    }

    /// Rule 2, the unit price of a bundle.
    ///
    /// `Fixed`: its price, which must be in the cart's currency. `PercentOff`: the sum of
    /// the parts' unit prices, each resolved by rule 1 at the bundle line's quantity, less
    /// [`percent_of`] that sum. Either way the price comes from no list (`price_list_id`
    /// is `None`).
    fn resolve_bundle(
        &self,
        context: &QuoteContext<'_>,
        candidates: &[ListIx],
        line: &QuoteLine,
        bundle_id: &str,
        parts: &[String],
        quantity: u32,
    ) -> Result<UnitPrice, Error> {
        let currency = context.currency;
        let pricing = self.bundle_ix.get(bundle_id).map(|&ix| self.bundles[ix]);
        let pricing = pricing.ok_or_else(|| {
            unprocessable(
                ErrorCode::UnknownBundle,
                format!("bundle {bundle_id} has no pricing"),
                json!({ "lineId": line.line_id(), "bundleId": bundle_id }),
            )
        })?;
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
                    let part_price = self.resolve_variant(context, candidates, line, part, quantity)?;
                    sum = sum.checked_add(Money::new(part_price.unit_minor, currency))?;
                }
                sum.minor - percent_of(sum.minor, *basis_points)
            }
        };
        Ok(UnitPrice {
            unit_minor,
            price_list_id: None,
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
    /// Only the discounts that target one of the lines, or the order, are visited: the
    /// (rank, line) pairs looked up in the index, sorted, are exactly the order in which
    /// a pass over every discount and every line would meet them.
    fn apply_discounts(
        &self,
        context: &QuoteContext<'_>,
        lines: &[QuoteLine],
        priced: &mut [QuotedLine],
        subtotal_minor: i64,
    ) -> Vec<AppliedDiscount> {
        // One (rank, slot) per discount and line (or order) it may apply to; sorted, the
        // order of a pass over every discount, then every line.
        let mut candidates: Vec<(Rank, Slot)> = Vec::new();
        for ((index, line), slot) in lines.iter().enumerate().zip(0..) {
            // Every line was priced, so its variant or bundle is in the index.
            let ranks = match line {
                QuoteLine::Variant { variant_id, .. } => {
                    self.by_variant.of(self.variant_ix[variant_id.as_str()])
                }
                QuoteLine::Bundle { bundle_id, .. } => self.by_bundle.of(self.bundle_ix[bundle_id.as_str()]),
            };
            // Room for every discount the line may take, so listing them does not regrow.
            priced[index].discounts.reserve(ranks.len());
            candidates.extend(ranks.iter().map(|&rank| (rank, slot)));
        }
        candidates.extend(self.on_order.iter().map(|&rank| (rank, ORDER)));
        // Runs of ascending ranks, one per line, merged by a stable sort on the rank
        // alone, which keeps the lines of one discount in line order.
        candidates.sort_by_key(|&(rank, _)| rank);

        let mut left = Left {
            lines: priced.iter().map(|line| line.line_total_minor).collect(),
            order: subtotal_minor,
        };
        let mut order_discounts = Vec::new();
        let mut exclusive_priority: Option<i32> = None;
        for same_discount in candidates.chunk_by(|a, b| a.0 == b.0) {
            let ranked = &self.discounts[same_discount[0].0 as usize];
            let discount = ranked.rule;
            if !discount.is_active_at(context.now_ms) {
                continue;
            }
            if exclusive_priority.is_some_and(|priority| discount.priority < priority) {
                break;
            }
            let mut took_something = false;
            for &(_, slot) in same_discount {
                match (slot, &discount.target) {
                    (ORDER, DiscountTarget::OrderSubtotal { threshold_minor }) => {
                        if subtotal_minor >= *threshold_minor {
                            if let Some(applied) = left.take(ranked, None, context.currency) {
                                order_discounts.push(applied);
                                took_something = true;
                            }
                        }
                    }
                    (ORDER, _) => unreachable!("only order discounts apply to the order"),
                    (line, _) => {
                        let index = line as usize;
                        let quoted = &mut priced[index];
                        if let Some(applied) =
                            left.take(ranked, Some((index, quoted.quantity)), context.currency)
                        {
                            quoted.discounts.push(applied);
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
}

/// A resolved unit price and where it came from.
struct UnitPrice {
    unit_minor: i64,
    price_list_id: Option<String>,
}

/// What the discounts applied so far have left of each line and of the order; never
/// negative.
struct Left {
    lines: Vec<i64>,
    order: i64,
}

impl Left {
    /// Takes `discount` from line `index` of `units` units, or from the order (`None`),
    /// capped at what is left of that line and of the order. `None` if it takes nothing.
    fn take(
        &mut self,
        discount: &RankedDiscount<'_>,
        line: Option<(usize, u32)>,
        cart: Currency,
    ) -> Option<AppliedDiscount> {
        let (line_left, units) = match line {
            Some((index, units)) => (self.lines[index], units),
            None => (self.order, 1),
        };
        let amount = discount_amount(&discount.rule.kind, line_left, units, cart).min(self.order);
        if amount <= 0 {
            return None;
        }
        if let Some((index, _)) = line {
            self.lines[index] -= amount;
        }
        self.order -= amount;
        Some(AppliedDiscount {
            discount_id: Arc::clone(&discount.id),
            amount_minor: amount,
        })
    }
}

/// What a discount of `kind` takes from a remaining value `left >= 0` of `units` units:
/// always in `0..=left`.
fn discount_amount(kind: &DiscountKind, left: i64, units: u32, cart: Currency) -> i64 {
    let wanted = match kind {
        DiscountKind::Percentage { basis_points } => i128::from(percent_of(left, *basis_points)),
        DiscountKind::Fixed {
            amount_minor,
            currency,
        } if *currency == cart => i128::from(*amount_minor) * i128::from(units),
        DiscountKind::Fixed { .. } => 0,
    };
    // Clamped into 0..=left, so it fits in i64.
    wanted.clamp(0, i128::from(left.max(0))) as i64
}

/// `(position, rank)` for each of `ids` that has a position.
fn named<'i>(
    ids: &'i BTreeSet<String>,
    positions: &'i HashMap<&str, usize>,
    rank: Rank,
) -> impl Iterator<Item = (usize, Rank)> + 'i {
    ids.iter()
        .filter_map(move |id| Some((*positions.get(id.as_str())?, rank)))
}

/// The position of each id, refusing a duplicate id.
fn unique<'a>(kind: &str, ids: impl Iterator<Item = &'a str>) -> Result<HashMap<&'a str, usize>, Error> {
    let mut positions = HashMap::new();
    for (position, id) in ids.enumerate() {
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
