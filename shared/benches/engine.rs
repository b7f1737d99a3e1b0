//! The pricing engine's own cost, without Redis or HTTP: a quote of a 20-line cart (18
//! variant lines and 2 bundle lines) under 10 price lists with parents and quantity breaks
//! and 200 discounts of every target, and the same ruleset with a 1-line cart, the ruleset
//! indexed once beforehand (`quote/20_lines`, `quote/1_line`). Measured in the same run:
//! the same 20-line quote indexing the whole ruleset first (`engine::quote`; a request
//! indexes only the entries its lines read). `scripts/bench` runs it and copies the
//! medians into BENCHMARKS.md.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;

use commerce_core::pricing::engine::{
    self, BundlePricing, Discount, DiscountKind, DiscountTarget, PriceBreak, PriceList, PricingInput,
    QuoteLine, RulesetIndex, VariantPrices,
};
use commerce_core::pricing::money::Currency;
use criterion::{Criterion, criterion_group, criterion_main};

/// The native server's allocator (native/src/main.rs): a quote allocates its lines, and what
/// that costs is the allocator's the engine runs with there, not the C library's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Variants in the ruleset: the lines' and the bundles' parts, and more that no line names.
const VARIANTS: usize = 60;
/// Discounts in the ruleset.
const DISCOUNTS: usize = 200;
/// The instant quoted; some discounts start after it or ended before it.
const NOW_MS: i64 = 1_800_000_000_000;

fn currency(code: &str) -> Currency {
    Currency::parse(code).expect("a valid currency code")
}

fn variant_id(n: usize) -> String {
    format!("var-{n}")
}

/// 10 price lists: a default chain (base ← sale ← clearance), a wholesale chain of three
/// under base, a VIP list under sale, a staff list with no parent, an outlet default list
/// and a USD list that a EUR quote passes over.
fn price_lists() -> Vec<PriceList> {
    let list = |id: &str, group: Option<&str>, parent: Option<&str>, priority: i32, code: &str| PriceList {
        id: id.into(),
        currency: currency(code),
        customer_group: group.map(Into::into),
        parent_id: parent.map(Into::into),
        priority,
    };
    vec![
        list("pl-base", None, None, 0, "EUR"),
        list("pl-sale", None, Some("pl-base"), 5, "EUR"),
        list("pl-clearance", None, Some("pl-sale"), 1, "EUR"),
        list("pl-outlet", None, None, 2, "EUR"),
        list("pl-wholesale", Some("wholesale"), Some("pl-base"), 10, "EUR"),
        list(
            "pl-wholesale-eu",
            Some("wholesale"),
            Some("pl-wholesale"),
            20,
            "EUR",
        ),
        list(
            "pl-wholesale-big",
            Some("wholesale"),
            Some("pl-wholesale-eu"),
            15,
            "EUR",
        ),
        list("pl-vip", Some("vip"), Some("pl-sale"), 10, "EUR"),
        list("pl-staff", Some("staff"), None, 30, "EUR"),
        list("pl-us", Some("wholesale"), None, 50, "USD"),
    ]
}

/// Each variant is priced in some of the lists, with tiers from 1, 10 and 50 units in the
/// wholesale lists, so the walk visits parents and picks quantity breaks.
fn variants() -> Vec<VariantPrices> {
    (1..=VARIANTS)
        .map(|n| {
            let base = 1_000 + (n as i64 * 137) % 9_000;
            let tiers = |pct: i64, breaks: &[(u32, i64)]| -> Vec<PriceBreak> {
                breaks
                    .iter()
                    .map(|&(min_quantity, off)| PriceBreak {
                        min_quantity,
                        unit_minor: base * (pct - off) / 100,
                    })
                    .collect()
            };
            let mut entries = Vec::new();
            if n % 2 == 0 {
                entries.push(("pl-base".to_owned(), tiers(95, &[(1, 0)])));
            }
            if n % 3 == 0 {
                entries.push(("pl-sale".to_owned(), tiers(90, &[(1, 0), (5, 5)])));
            }
            if n % 5 == 0 {
                entries.push((
                    "pl-wholesale".to_owned(),
                    tiers(80, &[(1, 0), (10, 10), (50, 20)]),
                ));
            }
            if n % 7 == 0 {
                entries.push(("pl-wholesale-big".to_owned(), tiers(75, &[(10, 0), (50, 10)])));
            }
            if n % 11 == 0 {
                entries.push(("pl-wholesale-eu".to_owned(), tiers(78, &[(20, 0)])));
            }
            if n % 4 == 0 {
                entries.push(("pl-vip".to_owned(), tiers(85, &[(1, 0)])));
            }
            if n % 13 == 0 {
                entries.push(("pl-us".to_owned(), tiers(100, &[(1, 0)])));
            }
            if n % 17 == 0 {
                entries.push(("pl-outlet".to_owned(), tiers(60, &[(1, 0)])));
            }
            VariantPrices {
                variant_id: variant_id(n),
                base_minor: base,
                currency: currency("EUR"),
                entries,
            }
        })
        .collect()
}

fn bundles() -> BTreeMap<String, BundlePricing> {
    BTreeMap::from([
        (
            "bundle-fixed".to_owned(),
            BundlePricing::Fixed {
                unit_minor: 4_999,
                currency: currency("EUR"),
            },
        ),
        (
            "bundle-pct".to_owned(),
            BundlePricing::PercentOff { basis_points: 1_500 },
        ),
    ])
}

/// 200 discounts: variant sets (most), order thresholds and bundles; percentages and fixed
/// amounts (some in USD, which take nothing); priorities 0–9, exclusive ones only at
/// priority 0 so every other discount is still weighed; some outside their window.
fn discounts() -> Vec<Discount> {
    (1..=DISCOUNTS)
        .map(|n| {
            let target = match n % 10 {
                0 => DiscountTarget::OrderSubtotal {
                    threshold_minor: (n as i64 % 7) * 10_000,
                },
                5 => DiscountTarget::Bundles(BTreeSet::from([if n % 20 == 5 {
                    "bundle-fixed".to_owned()
                } else {
                    "bundle-pct".to_owned()
                }])),
                _ => DiscountTarget::Variants(
                    (0..1 + n % 12)
                        .map(|k| variant_id(1 + (n * 7 + k * 13) % VARIANTS))
                        .collect(),
                ),
            };
            let kind = if n % 3 == 0 {
                DiscountKind::Fixed {
                    amount_minor: 50 + (n as i64 % 9) * 25,
                    currency: currency(if n % 27 == 0 { "USD" } else { "EUR" }),
                }
            } else {
                DiscountKind::Percentage {
                    basis_points: 100 + (n as u32 % 15) * 50,
                    currency: None,
                }
            };
            let priority = (n % 10) as i32;
            Discount {
                id: format!("disc-{n}"),
                kind,
                target,
                priority,
                exclusive: priority == 0 && n % 20 == 0,
                starts_at_ms: (n % 19 == 0).then_some(NOW_MS + 60_000),
                ends_at_ms: if n % 23 == 0 {
                    Some(NOW_MS - 60_000)
                } else {
                    (n % 4 == 0).then_some(NOW_MS + 86_400_000)
                },
            }
        })
        .collect()
}

fn input() -> PricingInput {
    PricingInput {
        price_lists: price_lists(),
        variants: variants(),
        bundles: bundles(),
        discounts: discounts(),
        customer_group: Some("wholesale".into()),
        currency: currency("EUR"),
        now_ms: NOW_MS,
    }
}

/// 18 variant lines (quantities 1 to 60, so tiers of 1, 10 and 50 units all apply) and 2
/// bundle lines.
fn twenty_lines() -> Vec<QuoteLine> {
    let mut lines: Vec<QuoteLine> = (1..=18)
        .map(|i| QuoteLine::Variant {
            line_id: format!("l{i}"),
            variant_id: variant_id(i * 3 - 1),
            quantity: [1, 2, 12, 3, 55, 1, 10, 4][i % 8],
        })
        .collect();
    lines.push(QuoteLine::Bundle {
        line_id: "l19".into(),
        bundle_id: "bundle-fixed".into(),
        parts: vec![variant_id(1), variant_id(2)],
        quantity: 2,
    });
    lines.push(QuoteLine::Bundle {
        line_id: "l20".into(),
        bundle_id: "bundle-pct".into(),
        parts: vec![variant_id(10), variant_id(21), variant_id(35)],
        quantity: 12,
    });
    lines
}

fn one_line() -> Vec<QuoteLine> {
    vec![QuoteLine::Variant {
        line_id: "l1".into(),
        variant_id: variant_id(10),
        quantity: 12,
    }]
}

fn bench(c: &mut Criterion) {
    let input = input();
    let (twenty, one) = (twenty_lines(), one_line());
    // What is measured is a successful quote that takes discounts, not an early refusal.
    let index = RulesetIndex::new(&input).expect("the bench ruleset is indexed");
    let context = input.context();
    for lines in [&twenty, &one] {
        let quote = index.quote(&context, lines).expect("the bench cart is priced");
        assert_eq!(quote.lines.len(), lines.len());
        assert!(quote.discount_total_minor > 0, "no discount applied");
    }
    let mut group = c.benchmark_group("quote");
    group.bench_function("20_lines", |b| {
        b.iter(|| index.quote(black_box(&context), black_box(&twenty)))
    });
    group.bench_function("1_line", |b| {
        b.iter(|| index.quote(black_box(&context), black_box(&one)))
    });
    group.bench_function("20_lines_indexing_included", |b| {
        b.iter(|| engine::quote(black_box(&input), black_box(&twenty)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
