//! Quotes: a cart (or a list of lines) priced by the current rulesets.
//!
//! A quote of a cart costs at most two Redis round trips whatever the catalog's size: one
//! to read the cart, one script that reads the current versions and exactly the entries the
//! lines need; natively one, once the entries are held (see [`price_cart`]). On a Redis
//! Cluster, where the pointers to the current versions live in slots of their own, the
//! cart and the pointers are read at once, then the entries: two as well. The rules
//! themselves are the pure [`engine`](super::engine).

use std::collections::BTreeSet;

use serde::Serialize;

use super::engine::{self, Quote, QuoteLine};
use super::money::Currency;
use super::store::{Rulesets, Versions};
use crate::app::App;
use crate::cart::{CartLine, CartRef, Carts, LineItem};
use crate::error::Result;
use crate::ids::Quantity;
use crate::keys::RulesetKind;
use crate::ports::{Http, Redis, Sql};

/// A quote and the ruleset versions it was computed with (what checkout freezes).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Priced {
    /// The quote.
    #[serde(flatten)]
    pub quote: Quote,
    /// The versions used.
    pub versions: Versions,
}

/// Prices lines in `currency` for `customer_group` with the current rulesets.
pub async fn price_lines<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    lines: &[QuoteLine],
    currency: Currency,
    customer_group: Option<String>,
) -> Result<Priced> {
    price(app, None, lines, currency, customer_group).await
}

/// [`price_lines`], from the versions `pointers` name when the caller has just read them
/// ([`Rulesets::pointers`], on a Redis Cluster).
async fn price<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    pointers: Option<Versions>,
    lines: &[QuoteLine],
    currency: Currency,
    customer_group: Option<String>,
) -> Result<Priced> {
    let (variants, bundles) = subjects(lines);
    let rulesets = Rulesets::new(&app.redis, &app.sql, &app.keys);
    let (input, versions) = rulesets
        .read(
            &app.rulesets,
            pointers,
            &variants,
            &bundles,
            currency,
            customer_group,
        )
        .await?;
    let quote = engine::quote(&input, lines)?;
    Ok(Priced { quote, versions })
}

/// The variants (bundle parts included) and the bundles that lines name.
fn subjects(lines: &[QuoteLine]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut variants = BTreeSet::new();
    let mut bundles = BTreeSet::new();
    for line in lines {
        match line {
            QuoteLine::Variant { variant_id, .. } => {
                variants.insert(variant_id.clone());
            }
            QuoteLine::Bundle { bundle_id, parts, .. } => {
                bundles.insert(bundle_id.clone());
                variants.extend(parts.iter().cloned());
            }
        }
    }
    (variants, bundles)
}

/// Prices a cart: its lines in its currency.
///
/// Once the process holds ruleset entries ([`RulesetCache`](super::cache::RulesetCache)) and Redis is one server, the
/// cart is read together with the current versions and the clock (`cart/lines.lua`), so a
/// cart whose entries are held for those versions costs one round trip; otherwise, or when
/// they are not held, the ruleset read follows as in [`price_lines`] (two). On a Redis
/// Cluster the cart and the version pointers live in slots of their own and the process
/// holds no entries: the cart and both pointers are read at once, then those versions'
/// entries (two).
pub async fn price_cart<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    cart: &CartRef,
    customer_group: Option<String>,
) -> Result<Priced> {
    let carts = Carts::of(app);
    if app.redis.is_cluster() {
        let rulesets = Rulesets::new(&app.redis, &app.sql, &app.keys);
        let (cart, pointers) = futures_util::future::join(carts.lines(cart), rulesets.pointers()).await;
        let (currency, lines) = cart?;
        let lines = cart_quote_lines(&lines);
        return price(app, Some(pointers?), &lines, currency, customer_group).await;
    }
    if app.rulesets.is_empty() {
        let (currency, lines) = carts.lines(cart).await?;
        return price_lines(app, &cart_quote_lines(&lines), currency, customer_group).await;
    }
    let pointers = [
        app.keys.ruleset_version(RulesetKind::Pricing),
        app.keys.ruleset_version(RulesetKind::Discounts),
    ];
    let (currency, lines, [pricing, discounts, now_ms]) = carts
        .lines_and_pointers(cart, [&pointers[0], &pointers[1]])
        .await?;
    let lines = cart_quote_lines(&lines);
    let (variants, bundles) = subjects(&lines);
    let versions = Versions { pricing, discounts };
    match app
        .rulesets
        .input_at(versions, now_ms, &variants, &bundles, currency, &customer_group)
    {
        Some(input) => Ok(Priced {
            quote: engine::quote(&input, &lines)?,
            versions,
        }),
        None => price_lines(app, &lines, currency, customer_group).await,
    }
}

/// The quote lines of a cart's lines.
pub fn cart_quote_lines(lines: &[CartLine]) -> Vec<QuoteLine> {
    lines
        .iter()
        .map(|line| quote_line(&line.item, line.line_id.to_string(), line.quantity))
        .collect()
}

/// The quote line of an item a client sent, whose line id (`item.line_id()`) the caller
/// already has.
pub fn item_quote_line(item: &LineItem, line_id: String, quantity: Quantity) -> QuoteLine {
    quote_line(item, line_id, quantity.get())
}

fn quote_line(item: &LineItem, line_id: String, quantity: u32) -> QuoteLine {
    match item {
        LineItem::Variant(v) => QuoteLine::Variant {
            line_id,
            variant_id: v.to_string(),
            quantity,
        },
        LineItem::Bundle(b, _) => QuoteLine::Bundle {
            line_id,
            bundle_id: b.to_string(),
            parts: item.variants().map(ToString::to_string).collect(),
            quantity,
        },
    }
}
