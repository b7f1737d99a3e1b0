//! Quotes: a cart (or a list of lines) priced by the current rulesets.
//!
//! A quote of a cart costs two Redis round trips whatever the catalog's size: one to read
//! the cart, one script that reads the current versions and exactly the entries the lines
//! need. The rules themselves are the pure [`engine`](super::engine).

use std::collections::BTreeSet;

use serde::Serialize;

use super::engine::{self, Quote, QuoteLine};
use super::money::Currency;
use super::store::{Rulesets, Versions};
use crate::app::App;
use crate::cart::{CartLine, CartRef, Carts, LineItem};
use crate::error::{Error, Result};
use crate::ids::Quantity;
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
    let rulesets = Rulesets::new(&app.redis, &app.sql, &app.keys);
    let (input, versions) = rulesets
        .read(&variants, &bundles, currency, customer_group)
        .await?;
    let quote = engine::quote(&input, lines)?;
    Ok(Priced { quote, versions })
}

/// Prices a cart: its lines in its currency.
pub async fn price_cart<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    cart: &CartRef,
    customer_group: Option<String>,
) -> Result<Priced> {
    let (view, lines) = Carts::of(app).lines(cart).await?;
    let currency = view.currency;
    price_lines(app, &cart_quote_lines(&lines)?, currency, customer_group).await
}

/// The quote lines of stored cart lines.
pub fn cart_quote_lines(lines: &[CartLine]) -> Result<Vec<QuoteLine>> {
    lines
        .iter()
        .map(|line| {
            let quantity =
                u32::try_from(line.quantity).map_err(|_| Error::Internal("bad cart quantity".into()))?;
            let d = &line.definition;
            if let Some(variant) = d["variantId"].as_str() {
                return Ok(QuoteLine::Variant {
                    line_id: line.line_id.clone(),
                    variant_id: variant.to_owned(),
                    quantity,
                });
            }
            let bundle = d["bundleId"]
                .as_str()
                .ok_or_else(|| Error::Internal("bad cart line".into()))?;
            let parts = d["choices"]
                .as_object()
                .into_iter()
                .flat_map(|sets| sets.values())
                .flat_map(|chosen| chosen.as_array().into_iter().flatten())
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            Ok(QuoteLine::Bundle {
                line_id: line.line_id.clone(),
                bundle_id: bundle.to_owned(),
                parts,
                quantity,
            })
        })
        .collect()
}

/// The quote line of an item a client sent.
pub fn item_quote_line(item: &LineItem, quantity: Quantity) -> QuoteLine {
    let line_id = item.line_id().to_string();
    match item {
        LineItem::Variant(v) => QuoteLine::Variant {
            line_id,
            variant_id: v.to_string(),
            quantity: quantity.get(),
        },
        LineItem::Bundle(b, choices) => QuoteLine::Bundle {
            line_id,
            bundle_id: b.to_string(),
            parts: choices.values().flatten().map(ToString::to_string).collect(),
            quantity: quantity.get(),
        },
    }
}
