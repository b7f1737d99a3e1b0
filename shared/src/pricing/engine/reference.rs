//! The engine as it was before [`RulesetIndex`](super::RulesetIndex): every quote searched
//! the input (a tree lookup per discount and line). Kept only until the indexed engine is
//! shown to give the same quotes (`tests.rs`, `indexed_engine_matches_the_reference`) and
//! measured against it (`benches/engine.rs`); then removed.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use super::{
    AppliedDiscount, BundlePricing, Discount, DiscountKind, DiscountTarget, PriceList, PricingInput, Quote,
    QuoteLine, QuotedLine, VariantPrices,
};
use crate::error::Error;
use crate::ids::Quantity;
use crate::pricing::money::{Currency, Money, percent_of};

/// Prices `lines` under `input`: unit prices (rules 1 and 2), line totals, discounts
/// (rule 3) and totals, with the guarantees stated on [`Quote`].
///
/// Refuses, without a partial quote:
/// - a quantity of 0 or above [`Quantity::MAX`]: 400 `INVALID_QUANTITY`;
/// - a variant or bundle the input does not price: 422 `UNKNOWN_VARIANT` /
///   `UNKNOWN_BUNDLE`, naming it and the line;
/// - a variant with no price in the cart's currency, or a fixed-price bundle in another
///   currency: 422 `CURRENCY_MISMATCH`;
/// - a negative price in the ruleset: 422 `INVALID_PRICE`;
/// - an amount beyond `i64` minor units: 422 `AMOUNT_OUT_OF_RANGE`;
/// - an input with a duplicate price list, variant or discount id: [`Error::Internal`].
pub fn quote(input: &PricingInput, lines: &[QuoteLine]) -> Result<Quote, Error> {
    let ruleset = Ruleset::index(input)?;
    let currency = input.currency;
    let mut priced = Vec::with_capacity(lines.len());
    let mut subtotal = Money::zero(currency);
    for line in lines {
        let quantity = Quantity::new(i64::from(line.quantity()))?.get();
        let unit = match line {
            QuoteLine::Variant { variant_id, .. } => ruleset.resolve_variant(line, variant_id, quantity)?,
            QuoteLine::Bundle { bundle_id, parts, .. } => {
                ruleset.resolve_bundle(line, bundle_id, parts, quantity)?
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
    let order_discounts = apply_discounts(input, lines, &mut priced, subtotal.minor);
    // Every amount was capped at what was left of the order, so neither sum can exceed the
    // subtotal.
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

/// A resolved unit price and where it came from.
struct UnitPrice {
    unit_minor: i64,
    price_list_id: Option<String>,
}

/// The input, indexed by id, with the candidate lists of rule 1 in order.
struct Ruleset<'a> {
    input: &'a PricingInput,
    lists: BTreeMap<&'a str, &'a PriceList>,
    variants: BTreeMap<&'a str, &'a VariantPrices>,
    /// The lists a variant's price is looked up from, most specific first.
    candidates: Vec<&'a PriceList>,
}

impl<'a> Ruleset<'a> {
    fn index(input: &'a PricingInput) -> Result<Self, Error> {
        let lists = unique("price list", input.price_lists.iter().map(|l| (l.id.as_str(), l)))?;
        let variants = unique(
            "variant",
            input.variants.iter().map(|v| (v.variant_id.as_str(), v)),
        )?;
        unique("discount", input.discounts.iter().map(|d| (d.id.as_str(), d)))?;

        // Rule 1, candidate order: the lists of the customer's group, then the default
        // lists; within each, priority descending, ties by id ascending. Lists of another
        // currency are never candidates.
        let in_currency = || input.price_lists.iter().filter(|l| l.currency == input.currency);
        let mut group: Vec<&PriceList> = in_currency()
            .filter(|l| l.customer_group.is_some() && l.customer_group == input.customer_group)
            .collect();
        let mut default: Vec<&PriceList> = in_currency().filter(|l| l.customer_group.is_none()).collect();
        for lists in [&mut group, &mut default] {
            lists.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));
        }
        group.append(&mut default);
        Ok(Self {
            input,
            lists,
            variants,
            candidates: group,
        })
    }

    /// Rule 1, price resolution of `variant_id` at `quantity` units.
    ///
    /// For each candidate list in order (see [`Ruleset::index`]), walk the list and then its
    /// parents and take the first list that prices the variant at this quantity (see
    /// [`tier_price`]); a parent in another currency is passed over, the walk stops at a
    /// missing parent or at a list it has already visited (a cycle). If no list prices the
    /// variant, its base price applies, which must be in the cart's currency.
    fn resolve_variant(&self, line: &QuoteLine, variant_id: &str, quantity: u32) -> Result<UnitPrice, Error> {
        let variant = self.variants.get(variant_id).ok_or_else(|| {
            unprocessable(
                "UNKNOWN_VARIANT",
                format!("variant {variant_id} has no price"),
                json!({ "lineId": line.line_id(), "variantId": variant_id }),
            )
        })?;
        let from_list = self
            .candidates
            .iter()
            .find_map(|&candidate| self.walk(candidate, variant, quantity));
        let (unit_minor, price_list_id) = match from_list {
            Some((list, unit_minor)) => (unit_minor, Some(list.id.clone())),
            None if variant.currency == self.input.currency => (variant.base_minor, None),
            None => {
                return Err(unprocessable(
                    "CURRENCY_MISMATCH",
                    format!(
                        "variant {variant_id} has no price in {}, only a base price in {}",
                        self.input.currency, variant.currency
                    ),
                    json!({
                        "lineId": line.line_id(),
                        "variantId": variant_id,
                        "variantCurrency": variant.currency,
                        "cartCurrency": self.input.currency,
                    }),
                ));
            }
        };
        non_negative(
            unit_minor,
            json!({ "variantId": variant_id, "priceListId": price_list_id }),
        )?;
        Ok(UnitPrice {
            unit_minor,
            price_list_id,
        })
    }

    /// The first list on the parent chain from `start` that prices `variant` at
    /// `quantity`, with the price.
    fn walk(
        &self,
        start: &'a PriceList,
        variant: &VariantPrices,
        quantity: u32,
    ) -> Option<(&'a PriceList, i64)> {
        let mut visited = BTreeSet::new();
        let mut next = Some(start);
        while let Some(list) = next {
            if !visited.insert(list.id.as_str()) {
                return None;
            }
            if list.currency == self.input.currency {
                if let Some(unit_minor) = tier_price(variant, &list.id, quantity) {
                    return Some((list, unit_minor));
                }
            }
            next = list
                .parent_id
                .as_deref()
                .and_then(|parent| self.lists.get(parent).copied());
        }
        None
    }

    /// Rule 2, the unit price of a bundle.
    ///
    /// `Fixed`: its price, which must be in the cart's currency. `PercentOff`: the sum of
    /// the parts' unit prices, each resolved by rule 1 at the bundle line's quantity, less
    /// [`percent_of`] that sum. Either way the price comes from no list (`price_list_id`
    /// is `None`).
    fn resolve_bundle(
        &self,
        line: &QuoteLine,
        bundle_id: &str,
        parts: &[String],
        quantity: u32,
    ) -> Result<UnitPrice, Error> {
        let currency = self.input.currency;
        let pricing = self.input.bundles.get(bundle_id).ok_or_else(|| {
            unprocessable(
                "UNKNOWN_BUNDLE",
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
                        "CURRENCY_MISMATCH",
                        format!("bundle {bundle_id} is priced in {bundle_currency}, not {currency}"),
                        json!({
                            "lineId": line.line_id(),
                            "bundleId": bundle_id,
                            "bundleCurrency": bundle_currency,
                            "cartCurrency": currency,
                        }),
                    ));
                }
                non_negative(*unit_minor, json!({ "bundleId": bundle_id }))?;
                *unit_minor
            }
            BundlePricing::PercentOff { basis_points } => {
                let mut sum = Money::zero(currency);
                for part in parts {
                    let part_price = self.resolve_variant(line, part, quantity)?;
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
}

/// Rule 1, a list's price for a variant at `quantity`: the tier with the highest
/// `min_quantity <= quantity` (equal tiers: the lower price). `None` when the list has no
/// entry for the variant or every tier starts above `quantity`; the list then does not
/// apply and the walk goes on.
fn tier_price(variant: &VariantPrices, list_id: &str, quantity: u32) -> Option<i64> {
    variant
        .entries
        .iter()
        .filter(|(id, _)| id == list_id)
        .flat_map(|(_, breaks)| breaks)
        .filter(|tier| tier.min_quantity <= quantity)
        .max_by_key(|tier| (tier.min_quantity, Reverse(tier.unit_minor)))
        .map(|tier| tier.unit_minor)
}

/// Rule 3, discounts. Fills each line's `discounts` and returns the order's.
///
/// - Only discounts active at `now_ms` count ([`Discount::is_active_at`]).
/// - They apply one after the other by priority descending, ties by id ascending, each on
///   what the ones before it left: a line's remaining value is its total less its
///   discounts so far; the order's is the subtotal less every discount so far.
/// - `Variants` / `Bundles` apply to each matching line; `OrderSubtotal` applies once to
///   the order when the subtotal before any discount is at least the threshold.
/// - `Percentage` takes [`percent_of`] the remaining value of the line (or order);
///   `Fixed` takes its amount per unit on a line and once on the order, and nothing when
///   its currency is not the cart's.
/// - Every amount is capped at what remains of its line and of the order, so no line and
///   no order total ever goes below zero. An amount of 0 is not listed.
/// - Exclusivity: once an exclusive discount has taken something anywhere, no discount of
///   lower priority applies anywhere; discounts of the same priority still do.
fn apply_discounts(
    input: &PricingInput,
    lines: &[QuoteLine],
    priced: &mut [QuotedLine],
    subtotal_minor: i64,
) -> Vec<AppliedDiscount> {
    let mut active: Vec<&Discount> = input
        .discounts
        .iter()
        .filter(|d| d.is_active_at(input.now_ms))
        .collect();
    active.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));

    let mut left = Left {
        lines: priced.iter().map(|line| line.line_total_minor).collect(),
        order: subtotal_minor,
    };
    let mut order_discounts = Vec::new();
    let mut exclusive_priority: Option<i32> = None;
    for discount in active {
        if exclusive_priority.is_some_and(|priority| discount.priority < priority) {
            break;
        }
        let mut took_something = false;
        match &discount.target {
            DiscountTarget::OrderSubtotal { threshold_minor } => {
                if subtotal_minor >= *threshold_minor {
                    if let Some(applied) = left.take(discount, None, input.currency) {
                        order_discounts.push(applied);
                        took_something = true;
                    }
                }
            }
            target => {
                for (index, (line, quoted)) in lines.iter().zip(priced.iter_mut()).enumerate() {
                    if !targets(target, line) {
                        continue;
                    }
                    if let Some(applied) = left.take(discount, Some((index, quoted.quantity)), input.currency)
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
        discount: &Discount,
        line: Option<(usize, u32)>,
        cart: Currency,
    ) -> Option<AppliedDiscount> {
        let (line_left, units) = match line {
            Some((index, units)) => (self.lines[index], units),
            None => (self.order, 1),
        };
        let amount = discount_amount(&discount.kind, line_left, units, cart).min(self.order);
        if amount <= 0 {
            return None;
        }
        if let Some((index, _)) = line {
            self.lines[index] -= amount;
        }
        self.order -= amount;
        Some(AppliedDiscount {
            discount_id: discount.id.as_str().into(),
            amount_minor: amount,
        })
    }
}

/// Whether a line-level target covers `line`.
fn targets(target: &DiscountTarget, line: &QuoteLine) -> bool {
    match (target, line) {
        (DiscountTarget::Variants(ids), QuoteLine::Variant { variant_id, .. }) => ids.contains(variant_id),
        (DiscountTarget::Bundles(ids), QuoteLine::Bundle { bundle_id, .. }) => ids.contains(bundle_id),
        _ => false,
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

/// Indexes items by id, refusing a duplicate id.
fn unique<'a, T>(
    kind: &str,
    items: impl Iterator<Item = (&'a str, &'a T)>,
) -> Result<BTreeMap<&'a str, &'a T>, Error> {
    let mut index = BTreeMap::new();
    for (id, item) in items {
        if index.insert(id, item).is_some() {
            return Err(Error::Internal(format!("pricing input has {kind} {id} twice")));
        }
    }
    Ok(index)
}

/// Refuses a negative price from the ruleset: the quote's guarantees rest on none.
fn non_negative(unit_minor: i64, details: serde_json::Value) -> Result<(), Error> {
    if unit_minor >= 0 {
        Ok(())
    } else {
        Err(unprocessable(
            "INVALID_PRICE",
            format!("the ruleset has a negative price ({unit_minor})"),
            details,
        ))
    }
}

fn unprocessable(code: &'static str, message: String, details: serde_json::Value) -> Error {
    Error::Unprocessable {
        code,
        message,
        details,
    }
}
