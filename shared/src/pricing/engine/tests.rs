//! The engine's tests: examples of each rule, then properties over random rulesets.

use super::*;
use proptest::prelude::*;

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn list(id: &str, group: Option<&str>, parent: Option<&str>, priority: i32) -> PriceList {
    PriceList {
        id: id.into(),
        currency: eur(),
        customer_group: group.map(Into::into),
        parent_id: parent.map(Into::into),
        priority,
    }
}

fn tier(min_quantity: u32, unit_minor: i64) -> PriceBreak {
    PriceBreak {
        min_quantity,
        unit_minor,
    }
}

/// A variant with a EUR base price and one single-tier entry per `(list, price)`.
fn variant(id: &str, base_minor: i64, entries: &[(&str, i64)]) -> VariantPrices {
    VariantPrices {
        variant_id: id.into(),
        base_minor,
        currency: eur(),
        entries: entries
            .iter()
            .map(|&(list, unit)| (list.to_owned(), vec![tier(1, unit)]))
            .collect(),
    }
}

fn input(price_lists: Vec<PriceList>, variants: Vec<VariantPrices>) -> PricingInput {
    PricingInput {
        price_lists,
        variants,
        bundles: BTreeMap::new(),
        discounts: Vec::new(),
        customer_group: None,
        currency: eur(),
        now_ms: 1_000,
    }
}

fn line(id: &str, variant_id: &str, quantity: u32) -> QuoteLine {
    QuoteLine::Variant {
        line_id: id.into(),
        variant_id: variant_id.into(),
        quantity,
    }
}

fn bundle_line(id: &str, bundle_id: &str, parts: &[&str], quantity: u32) -> QuoteLine {
    QuoteLine::Bundle {
        line_id: id.into(),
        bundle_id: bundle_id.into(),
        parts: parts.iter().map(|&p| p.to_owned()).collect(),
        quantity,
    }
}

fn ids(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|&id| id.to_owned()).collect()
}

fn percent(id: &str, basis_points: u32, target: DiscountTarget, priority: i32) -> Discount {
    Discount {
        id: id.into(),
        kind: DiscountKind::Percentage {
            basis_points,
            currency: None,
        },
        target,
        priority,
        exclusive: false,
        starts_at_ms: None,
        ends_at_ms: None,
    }
}

fn fixed(id: &str, amount_minor: i64, target: DiscountTarget, priority: i32) -> Discount {
    Discount {
        kind: DiscountKind::Fixed {
            amount_minor,
            currency: eur(),
        },
        ..percent(id, 0, target, priority)
    }
}

fn order_over(threshold_minor: i64) -> DiscountTarget {
    DiscountTarget::OrderSubtotal { threshold_minor }
}

/// `(unit price, price list)` of a single line `variant × quantity`.
fn price_of(input: &PricingInput, variant_id: &str, quantity: u32) -> (i64, Option<String>) {
    let quote = quote(input, &[line("l1", variant_id, quantity)]).unwrap();
    let line = &quote.lines[0];
    (line.unit_minor, line.price_list_id.as_deref().map(str::to_owned))
}

fn discounts_of(line: &QuotedLine) -> Vec<(&str, i64)> {
    line.discounts
        .iter()
        .map(|d| (&*d.discount_id, d.amount_minor))
        .collect()
}

fn unprocessable_code(result: Result<Quote, Error>) -> (&'static str, serde_json::Value) {
    match result {
        Err(Error::Unprocessable { code, details, .. }) => (code.as_str(), details),
        other => panic!("expected a 422, got {other:?}"),
    }
}

// Rule 1: price resolution.

#[test]
fn group_list_beats_default_list() {
    let mut input = input(
        vec![list("retail", None, None, 100), list("vip", Some("vip"), None, 0)],
        vec![variant("v1", 1000, &[("retail", 900), ("vip", 800)])],
    );
    assert_eq!(price_of(&input, "v1", 1), (900, Some("retail".into())));
    input.customer_group = Some("vip".into());
    assert_eq!(price_of(&input, "v1", 1), (800, Some("vip".into())));
    input.customer_group = Some("wholesale".into());
    assert_eq!(price_of(&input, "v1", 1), (900, Some("retail".into())));
}

#[test]
fn list_without_a_price_inherits_its_parents_price() {
    let mut input = input(
        vec![
            list("vip", Some("vip"), Some("vip-base"), 0),
            list("vip-base", Some("vip-base"), Some("retail"), 0),
            list("retail", None, None, 0),
        ],
        vec![
            variant("v1", 1000, &[("vip-base", 700), ("retail", 900)]),
            variant("v2", 1000, &[("retail", 950)]),
        ],
    );
    input.customer_group = Some("vip".into());
    assert_eq!(price_of(&input, "v1", 1), (700, Some("vip-base".into())));
    assert_eq!(price_of(&input, "v2", 1), (950, Some("retail".into())));
}

#[test]
fn missing_parent_ends_the_walk() {
    let input = input(
        vec![list("a", None, Some("gone"), 10), list("b", None, None, 0)],
        vec![variant("v1", 1000, &[("b", 900)])],
    );
    assert_eq!(price_of(&input, "v1", 1), (900, Some("b".into())));
}

#[test]
fn higher_priority_list_wins_and_ties_go_to_the_lower_id() {
    let mut input = input(
        vec![
            list("b", None, None, 5),
            list("a", None, None, 5),
            list("c", None, None, 9),
        ],
        vec![
            variant("v1", 1000, &[("a", 800), ("b", 700), ("c", 900)]),
            variant("v2", 1000, &[("b", 700), ("a", 800)]),
        ],
    );
    assert_eq!(price_of(&input, "v1", 1), (900, Some("c".into())));
    assert_eq!(price_of(&input, "v2", 1), (800, Some("a".into())));
    input.price_lists.reverse();
    assert_eq!(price_of(&input, "v2", 1), (800, Some("a".into())));
}

#[test]
fn quantity_break_is_the_highest_tier_reached() {
    let mut v1 = variant("v1", 1000, &[]);
    v1.entries = vec![("retail".into(), vec![tier(10, 700), tier(1, 900), tier(5, 800)])];
    let input = input(vec![list("retail", None, None, 0)], vec![v1]);
    assert_eq!(price_of(&input, "v1", 1).0, 900);
    assert_eq!(price_of(&input, "v1", 4).0, 900);
    assert_eq!(price_of(&input, "v1", 5).0, 800);
    assert_eq!(price_of(&input, "v1", 9).0, 800);
    assert_eq!(price_of(&input, "v1", 10).0, 700);
    assert_eq!(price_of(&input, "v1", 1000).0, 700);
}

#[test]
fn list_whose_breaks_all_start_above_the_quantity_is_skipped() {
    let mut v1 = variant("v1", 1000, &[("retail", 900)]);
    v1.entries.push(("bulk".into(), vec![tier(10, 600)]));
    let mut input = input(
        vec![
            list("bulk", Some("trade"), Some("retail"), 0),
            list("retail", None, None, 0),
        ],
        vec![v1],
    );
    input.customer_group = Some("trade".into());
    assert_eq!(price_of(&input, "v1", 9), (900, Some("retail".into())));
    assert_eq!(price_of(&input, "v1", 10), (600, Some("bulk".into())));
}

#[test]
fn variant_in_no_list_gets_its_base_price() {
    let input = input(
        vec![list("retail", None, None, 0)],
        vec![variant("v1", 1234, &[("other", 1)])],
    );
    assert_eq!(price_of(&input, "v1", 3), (1234, None));
    let quote = quote(&input, &[line("l1", "v1", 3)]).unwrap();
    assert_eq!(quote.lines[0].line_total_minor, 3702);
    assert_eq!(
        serde_json::to_value(&quote).unwrap()["lines"][0]["priceListId"],
        "base"
    );
}

#[test]
fn variant_without_a_price_in_the_cart_currency_is_refused() {
    let mut v1 = variant("v1", 1000, &[]);
    v1.currency = usd();
    let input = input(Vec::new(), vec![v1]);
    let (code, details) = unprocessable_code(quote(&input, &[line("l1", "v1", 1)]));
    assert_eq!(code, "CURRENCY_MISMATCH");
    assert_eq!(details["variantId"], "v1");
    assert_eq!(details["variantCurrency"], "USD");
    assert_eq!(details["cartCurrency"], "EUR");
}

#[test]
fn variant_with_foreign_base_price_but_a_list_price_in_the_cart_currency_is_sold() {
    let mut v1 = variant("v1", 1000, &[("retail", 900)]);
    v1.currency = usd();
    let input = input(vec![list("retail", None, None, 0)], vec![v1]);
    assert_eq!(price_of(&input, "v1", 1), (900, Some("retail".into())));
}

#[test]
fn lists_in_another_currency_are_ignored() {
    let mut dollars = list("dollars", None, Some("retail"), 100);
    dollars.currency = usd();
    let mut vip_dollars = list("vip-dollars", Some("vip"), None, 0);
    vip_dollars.currency = usd();
    let mut vip = list("vip", Some("vip"), Some("dollars"), 0);
    vip.parent_id = Some("dollars".into());
    let mut input = input(
        vec![dollars, vip_dollars, vip, list("retail", None, None, 0)],
        vec![variant(
            "v1",
            1000,
            &[("dollars", 1), ("vip-dollars", 2), ("retail", 900)],
        )],
    );
    assert_eq!(price_of(&input, "v1", 1), (900, Some("retail".into())));
    // A parent in another currency is passed over, and the walk goes on to its parent.
    input.customer_group = Some("vip".into());
    assert_eq!(price_of(&input, "v1", 1), (900, Some("retail".into())));
}

#[test]
fn parent_cycle_does_not_loop() {
    let input = input(
        vec![
            list("a", None, Some("b"), 1),
            list("b", None, Some("c"), 0),
            list("c", None, Some("a"), 0),
            list("self", None, Some("self"), 2),
        ],
        vec![variant("v1", 1000, &[]), variant("v2", 1000, &[("c", 500)])],
    );
    assert_eq!(price_of(&input, "v1", 1), (1000, None));
    assert_eq!(price_of(&input, "v2", 1), (500, Some("c".into())));
}

#[test]
fn unknown_variant_or_bundle_is_refused_naming_it() {
    let input = input(Vec::new(), vec![variant("v1", 1000, &[])]);
    let (code, details) = unprocessable_code(quote(&input, &[line("l7", "nope", 1)]));
    assert_eq!(
        (code, &details["variantId"], &details["lineId"]),
        ("UNKNOWN_VARIANT", &json!("nope"), &json!("l7"))
    );
    let (code, details) = unprocessable_code(quote(&input, &[bundle_line("l8", "b9", &["v1"], 1)]));
    assert_eq!((code, &details["bundleId"]), ("UNKNOWN_BUNDLE", &json!("b9")));
}

#[test]
fn quantity_outside_the_line_range_is_a_bad_request() {
    let input = input(Vec::new(), vec![variant("v1", 1000, &[])]);
    for quantity in [0, Quantity::MAX + 1] {
        let error = quote(&input, &[line("l1", "v1", quantity)]).unwrap_err();
        assert_eq!((error.status(), error.code()), (400, "INVALID_QUANTITY"));
    }
}

#[test]
fn negative_price_in_the_ruleset_is_refused() {
    let input = input(Vec::new(), vec![variant("v1", -1, &[])]);
    let (code, _) = unprocessable_code(quote(&input, &[line("l1", "v1", 1)]));
    assert_eq!(code, "INVALID_PRICE");
}

#[test]
fn line_total_beyond_i64_is_refused() {
    let input = input(Vec::new(), vec![variant("v1", i64::MAX / 2, &[])]);
    let (code, _) = unprocessable_code(quote(&input, &[line("l1", "v1", 3)]));
    assert_eq!(code, "AMOUNT_OUT_OF_RANGE");
}

#[test]
fn duplicate_ids_in_the_input_are_a_bug_not_a_quote() {
    let input = input(Vec::new(), vec![variant("v1", 1, &[]), variant("v1", 2, &[])]);
    assert!(matches!(quote(&input, &[]), Err(Error::Internal(_))));
}

// Rule 2: bundles.

#[test]
fn fixed_price_bundle_costs_its_price_whatever_the_parts() {
    let mut input = input(
        Vec::new(),
        vec![variant("v1", 1000, &[]), variant("v2", 2000, &[])],
    );
    input.bundles.insert(
        "b1".into(),
        BundlePricing::Fixed {
            unit_minor: 2500,
            currency: eur(),
        },
    );
    let quote = quote(&input, &[bundle_line("l1", "b1", &["v1", "v2"], 2)]).unwrap();
    let line = &quote.lines[0];
    assert_eq!(
        (line.unit_minor, line.line_total_minor, &line.price_list_id),
        (2500, 5000, &None)
    );
    assert_eq!(quote.total_minor, 5000);
}

#[test]
fn fixed_price_bundle_in_another_currency_is_refused() {
    let mut input = input(Vec::new(), Vec::new());
    input.bundles.insert(
        "b1".into(),
        BundlePricing::Fixed {
            unit_minor: 2500,
            currency: usd(),
        },
    );
    let (code, details) = unprocessable_code(quote(&input, &[bundle_line("l1", "b1", &[], 1)]));
    assert_eq!((code, &details["bundleId"]), ("CURRENCY_MISMATCH", &json!("b1")));
}

#[test]
fn percent_off_bundle_takes_the_percentage_off_its_parts_priced_at_the_line_quantity() {
    let mut v2 = variant("v2", 2000, &[]);
    v2.entries = vec![("retail".into(), vec![tier(1, 1900), tier(3, 1501)])];
    let mut input = input(
        vec![list("retail", None, None, 0)],
        vec![variant("v1", 1000, &[]), v2],
    );
    input
        .bundles
        .insert("b1".into(), BundlePricing::PercentOff { basis_points: 1000 });
    let one = quote(&input, &[bundle_line("l1", "b1", &["v1", "v2"], 1)]).unwrap();
    // (1000 + 1900) − 10 % = 2900 − 290
    assert_eq!(one.lines[0].unit_minor, 2610);
    let three = quote(&input, &[bundle_line("l1", "b1", &["v1", "v2"], 3)]).unwrap();
    // (1000 + 1501) − 10 % = 2501 − 250.1 → 2501 − 250
    assert_eq!(three.lines[0].unit_minor, 2251);
    assert_eq!(three.lines[0].line_total_minor, 6753);
    assert_eq!(three.lines[0].price_list_id, None);
}

// Rule 3: discounts.

/// Two lines, v1 × 1 at 10.00 and v2 × 2 at 5.00: subtotal 20.00.
fn two_lines() -> (PricingInput, Vec<QuoteLine>) {
    let input = input(
        Vec::new(),
        vec![variant("v1", 1000, &[]), variant("v2", 500, &[])],
    );
    (input, vec![line("l1", "v1", 1), line("l2", "v2", 2)])
}

#[test]
fn higher_priority_discount_applies_first_on_what_is_left() {
    let (mut input, lines) = two_lines();
    let v1 = || DiscountTarget::Variants(ids(&["v1"]));
    input.discounts = vec![fixed("a-fixed", 100, v1(), 1), percent("z-half", 5000, v1(), 2)];
    let quote = quote(&input, &lines).unwrap();
    // 50 % of 1000 first, then 100 off the 500 left.
    assert_eq!(discounts_of(&quote.lines[0]), [("z-half", 500), ("a-fixed", 100)]);
    assert_eq!(quote.total_minor, 2000 - 600);

    // Same priority: by id, so the fixed amount goes first.
    input.discounts[1].priority = 1;
    let quote = super::quote(&input, &lines).unwrap();
    assert_eq!(discounts_of(&quote.lines[0]), [("a-fixed", 100), ("z-half", 450)]);
}

#[test]
fn exclusive_discount_stops_lower_priority_but_not_equal_priority() {
    let (mut input, lines) = two_lines();
    let v1 = || DiscountTarget::Variants(ids(&["v1"]));
    let v2 = || DiscountTarget::Variants(ids(&["v2"]));
    let mut exclusive = percent("excl", 1000, v1(), 5);
    exclusive.exclusive = true;
    input.discounts = vec![
        exclusive,
        percent("same-priority", 1000, v2(), 5),
        percent("lower-on-v2", 1000, v2(), 4),
        fixed("lower-order", 100, order_over(0), 1),
        percent("higher", 1000, v1(), 6),
    ];
    let quote = quote(&input, &lines).unwrap();
    assert_eq!(discounts_of(&quote.lines[0]), [("higher", 100), ("excl", 90)]);
    assert_eq!(discounts_of(&quote.lines[1]), [("same-priority", 100)]);
    assert!(quote.order_discounts.is_empty());
}

#[test]
fn exclusive_discount_that_takes_nothing_excludes_nothing() {
    let (mut input, lines) = two_lines();
    let mut exclusive = percent("excl", 1000, DiscountTarget::Variants(ids(&["absent"])), 5);
    exclusive.exclusive = true;
    input.discounts = vec![
        exclusive,
        percent("lower", 1000, DiscountTarget::Variants(ids(&["v1"])), 1),
    ];
    let quote = quote(&input, &lines).unwrap();
    assert_eq!(discounts_of(&quote.lines[0]), [("lower", 100)]);
}

#[test]
fn discount_window_starts_inclusive_and_ends_exclusive() {
    let (mut input, lines) = two_lines();
    let mut windowed = percent("window", 1000, DiscountTarget::Variants(ids(&["v1"])), 0);
    windowed.starts_at_ms = Some(100);
    windowed.ends_at_ms = Some(200);
    input.discounts = vec![windowed];
    for (now_ms, applies) in [(99, false), (100, true), (199, true), (200, false)] {
        input.now_ms = now_ms;
        let quote = quote(&input, &lines).unwrap();
        assert_eq!(!quote.lines[0].discounts.is_empty(), applies, "at {now_ms}");
    }
    input.discounts[0].starts_at_ms = None;
    input.now_ms = i64::MIN;
    assert_eq!(quote(&input, &lines).unwrap().discount_total_minor, 100);
    input.discounts[0].ends_at_ms = None;
    input.now_ms = i64::MAX;
    assert_eq!(quote(&input, &lines).unwrap().discount_total_minor, 100);
}

#[test]
fn fixed_discount_is_per_unit_and_capped_at_the_line() {
    let (mut input, lines) = two_lines();
    input.discounts = vec![fixed("off", 150, DiscountTarget::Variants(ids(&["v2"])), 0)];
    let quote = quote(&input, &lines).unwrap();
    assert_eq!(discounts_of(&quote.lines[1]), [("off", 300)]);

    input.discounts = vec![fixed("off", 800, DiscountTarget::Variants(ids(&["v1", "v2"])), 0)];
    let quote = super::quote(&input, &lines).unwrap();
    assert_eq!(discounts_of(&quote.lines[0]), [("off", 800)]);
    assert_eq!(discounts_of(&quote.lines[1]), [("off", 1000)]);
    assert_eq!(quote.total_minor, 200);
}

#[test]
fn bundle_discount_applies_to_its_bundle_lines_only() {
    let (mut input, mut lines) = two_lines();
    input.bundles.insert(
        "b1".into(),
        BundlePricing::Fixed {
            unit_minor: 3000,
            currency: eur(),
        },
    );
    lines.push(bundle_line("l3", "b1", &["v1", "v2"], 1));
    input.discounts = vec![percent("bundles", 1000, DiscountTarget::Bundles(ids(&["b1"])), 0)];
    let quote = quote(&input, &lines).unwrap();
    assert!(quote.lines[0].discounts.is_empty() && quote.lines[1].discounts.is_empty());
    assert_eq!(discounts_of(&quote.lines[2]), [("bundles", 300)]);
}

#[test]
fn order_discount_applies_from_exactly_the_threshold() {
    let (mut input, lines) = two_lines();
    input.discounts = vec![
        percent("pct", 1000, order_over(2000), 1),
        fixed("fix", 300, order_over(2000), 0),
    ];
    let quote = quote(&input, &lines).unwrap();
    let order: Vec<_> = quote
        .order_discounts
        .iter()
        .map(|d| (&*d.discount_id, d.amount_minor))
        .collect();
    assert_eq!(order, [("pct", 200), ("fix", 300)]);
    assert_eq!(quote.total_minor, 1500);

    input.discounts[0].target = order_over(2001);
    input.discounts[1].target = order_over(2001);
    assert!(super::quote(&input, &lines).unwrap().order_discounts.is_empty());
}

#[test]
fn order_threshold_is_judged_on_the_subtotal_before_discounts() {
    let (mut input, lines) = two_lines();
    input.discounts = vec![
        percent("line", 5000, DiscountTarget::Variants(ids(&["v1"])), 9),
        fixed("order", 100, order_over(2000), 0),
    ];
    let quote = quote(&input, &lines).unwrap();
    assert_eq!(quote.order_discounts.len(), 1);
    assert_eq!(quote.total_minor, 2000 - 500 - 100);
}

#[test]
fn full_percentage_discount_gives_zero_not_negative() {
    let (mut input, lines) = two_lines();
    input.discounts = vec![
        percent("all", 10_000, order_over(0), 9),
        percent("all-again", 10_000, DiscountTarget::Variants(ids(&["v1"])), 8),
        fixed("more", 500, order_over(0), 7),
        percent("over", 20_000, DiscountTarget::Variants(ids(&["v2"])), 6),
    ];
    let quote = quote(&input, &lines).unwrap();
    assert_eq!(quote.order_discounts.len(), 1);
    assert!(quote.lines.iter().all(|line| line.discounts.is_empty()));
    assert_eq!((quote.discount_total_minor, quote.total_minor), (2000, 0));

    input.discounts = vec![percent("over", 20_000, DiscountTarget::Variants(ids(&["v2"])), 0)];
    let quote = super::quote(&input, &lines).unwrap();
    assert_eq!(discounts_of(&quote.lines[1]), [("over", 1000)]);
    assert_eq!(quote.total_minor, 1000);
}

#[test]
fn fixed_discount_in_another_currency_is_skipped() {
    let (mut input, lines) = two_lines();
    let mut dollars = fixed("usd", 100, order_over(0), 1);
    dollars.kind = DiscountKind::Fixed {
        amount_minor: 100,
        currency: usd(),
    };
    dollars.exclusive = true;
    input.discounts = vec![dollars, fixed("eur", 100, order_over(0), 0)];
    let quote = quote(&input, &lines).unwrap();
    let order: Vec<_> = quote.order_discounts.iter().map(|d| &*d.discount_id).collect();
    assert_eq!(order, ["eur"]);
}

#[test]
fn quote_serializes_to_the_design_shape() {
    let (mut input, lines) = two_lines();
    input.price_lists = vec![list("retail", None, None, 0)];
    input.variants[0].entries = vec![("retail".into(), vec![tier(1, 900)])];
    input.discounts = vec![
        percent("d1", 1000, DiscountTarget::Variants(ids(&["v2"])), 1),
        fixed("d2", 50, order_over(0), 0),
    ];
    let quote = quote(&input, &lines).unwrap();
    assert_eq!(
        serde_json::to_value(&quote).unwrap(),
        json!({
            "currency": "EUR",
            "lines": [
                {"lineId": "l1", "variantId": "v1", "unitPrice": 900, "priceListId": "retail",
                 "quantity": 1, "lineTotal": 900, "discounts": []},
                {"lineId": "l2", "variantId": "v2", "unitPrice": 500, "priceListId": "base", "quantity": 2,
                 "lineTotal": 1000, "discounts": [{"discountId": "d1", "amount": 100}]},
            ],
            "orderDiscounts": [{"discountId": "d2", "amount": 50}],
            "subtotal": 1900,
            "discountTotal": 150,
            "total": 1750,
        })
    );
}

// Properties over random rulesets.

const CURRENCIES: [&str; 2] = ["EUR", "USD"];
const GROUPS: [&str; 2] = ["vip", "trade"];
const VARIANTS: usize = 5;
const BUNDLES: usize = 3;

fn currency() -> impl Strategy<Value = Currency> {
    prop_oneof![4 => Just(0usize), 1 => Just(1usize)].prop_map(|i| Currency::parse(CURRENCIES[i]).unwrap())
}

fn group() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(proptest::sample::select(GROUPS.to_vec()).prop_map(String::from))
}

fn price_lists() -> impl Strategy<Value = Vec<PriceList>> {
    prop::collection::vec(
        (currency(), group(), proptest::option::of(0..6usize), -3..3i32),
        0..5,
    )
    .prop_map(|lists| {
        lists
            .into_iter()
            .enumerate()
            .map(|(i, (currency, customer_group, parent, priority))| PriceList {
                id: format!("pl-{i}"),
                currency,
                customer_group,
                parent_id: parent.map(|p| format!("pl-{p}")),
                priority,
            })
            .collect()
    })
}

fn variants() -> impl Strategy<Value = Vec<VariantPrices>> {
    let entry = (0..5usize, prop::collection::vec((1..6u32, 0..50_000i64), 0..3));
    let variant = (0..50_000i64, currency(), prop::collection::vec(entry, 0..3));
    prop::collection::vec(variant, VARIANTS).prop_map(|variants| {
        variants
            .into_iter()
            .enumerate()
            .map(|(i, (base_minor, currency, entries))| VariantPrices {
                variant_id: format!("v-{i}"),
                base_minor,
                currency,
                entries: entries
                    .into_iter()
                    .map(|(list, breaks)| {
                        let breaks = breaks
                            .into_iter()
                            .map(|(min_quantity, unit_minor)| PriceBreak {
                                min_quantity,
                                unit_minor,
                            })
                            .collect();
                        (format!("pl-{list}"), breaks)
                    })
                    .collect(),
            })
            .collect()
    })
}

fn bundles() -> impl Strategy<Value = BTreeMap<String, BundlePricing>> {
    let pricing = prop_oneof![
        (0..100_000i64, currency())
            .prop_map(|(unit_minor, currency)| BundlePricing::Fixed { unit_minor, currency }),
        (0..=12_000u32).prop_map(|basis_points| BundlePricing::PercentOff { basis_points }),
    ];
    prop::collection::vec(pricing, BUNDLES).prop_map(|bundles| {
        bundles
            .into_iter()
            .enumerate()
            .map(|(i, pricing)| (format!("b-{i}"), pricing))
            .collect()
    })
}

fn id_set(prefix: &'static str, count: usize) -> impl Strategy<Value = BTreeSet<String>> {
    prop::collection::btree_set(0..count, 0..=count)
        .prop_map(move |ids| ids.into_iter().map(|i| format!("{prefix}-{i}")).collect())
}

fn discounts() -> impl Strategy<Value = Vec<Discount>> {
    let kind = prop_oneof![
        (0..=12_000u32).prop_map(|basis_points| DiscountKind::Percentage {
            basis_points,
            currency: None,
        }),
        (-100..5_000i64, currency()).prop_map(|(amount_minor, currency)| DiscountKind::Fixed {
            amount_minor,
            currency
        }),
    ];
    let target = prop_oneof![
        id_set("v", VARIANTS).prop_map(DiscountTarget::Variants),
        (0..60_000i64).prop_map(|threshold_minor| DiscountTarget::OrderSubtotal { threshold_minor }),
        id_set("b", BUNDLES).prop_map(DiscountTarget::Bundles),
    ];
    let window = (proptest::option::of(0..100i64), proptest::option::of(0..100i64));
    let discount = (kind, target, -2..3i32, any::<bool>(), window);
    prop::collection::vec(discount, 0..8).prop_map(|discounts| {
        discounts
            .into_iter()
            .enumerate()
            .map(
                |(i, (kind, target, priority, exclusive, (starts_at_ms, ends_at_ms)))| Discount {
                    id: format!("d-{i}"),
                    kind,
                    target,
                    priority,
                    exclusive,
                    starts_at_ms,
                    ends_at_ms,
                },
            )
            .collect()
    })
}

fn lines() -> impl Strategy<Value = Vec<QuoteLine>> {
    let variant_id = (0..VARIANTS).prop_map(|i| format!("v-{i}"));
    let line =
        prop_oneof![
            (variant_id.clone(), 1..20u32).prop_map(|(variant_id, quantity)| (variant_id, None, quantity)),
            (0..BUNDLES, prop::collection::vec(variant_id, 0..3), 1..20u32)
                .prop_map(|(b, parts, quantity)| (format!("b-{b}"), Some(parts), quantity)),
        ];
    prop::collection::vec(line, 0..6).prop_map(|lines| {
        lines
            .into_iter()
            .enumerate()
            .map(|(i, (id, parts, quantity))| match parts {
                None => QuoteLine::Variant {
                    line_id: format!("l-{i}"),
                    variant_id: id,
                    quantity,
                },
                Some(parts) => QuoteLine::Bundle {
                    line_id: format!("l-{i}"),
                    bundle_id: id,
                    parts,
                    quantity,
                },
            })
            .collect()
    })
}

/// A random input, the same input with its price lists and discounts shuffled, and
/// lines.
fn scenario() -> impl Strategy<Value = (PricingInput, PricingInput, Vec<QuoteLine>)> {
    (
        price_lists(),
        variants(),
        bundles(),
        discounts(),
        group(),
        currency(),
        0..100i64,
        lines(),
    )
        .prop_flat_map(
            |(price_lists, variants, bundles, discounts, customer_group, currency, now_ms, lines)| {
                let input = PricingInput {
                    price_lists: price_lists.clone(),
                    variants,
                    bundles,
                    discounts: discounts.clone(),
                    customer_group,
                    currency,
                    now_ms,
                };
                (
                    Just(input),
                    Just(price_lists).prop_shuffle(),
                    Just(discounts).prop_shuffle(),
                    Just(lines),
                )
                    .prop_map(|(input, price_lists, discounts, lines)| {
                        let shuffled = PricingInput {
                            price_lists,
                            discounts,
                            ..input.clone()
                        };
                        (input, shuffled, lines)
                    })
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn quote_totals_add_up_never_go_negative_and_do_not_depend_on_order(
        (input, shuffled, lines) in scenario()
    ) {
        let first = quote(&input, &lines);
        let again = quote(&input, &lines);
        let reordered = quote(&shuffled, &lines);
        let quote = match first {
            Ok(quote) => quote,
            Err(error) => {
                prop_assert_eq!(error.code(), "CURRENCY_MISMATCH");
                prop_assert_eq!(again.map_err(|e| e.to_string()), Err(error.to_string()));
                prop_assert_eq!(reordered.map_err(|e| e.to_string()), Err(error.to_string()));
                return Ok(());
            }
        };
        prop_assert_eq!(again.as_ref().ok(), Some(&quote));
        prop_assert_eq!(reordered.as_ref().ok(), Some(&quote));

        prop_assert_eq!(quote.total_minor, quote.subtotal_minor - quote.discount_total_minor);
        prop_assert_eq!(quote.subtotal_minor, quote.lines.iter().map(|l| l.line_total_minor).sum::<i64>());
        let listed: Vec<i64> = quote
            .lines
            .iter()
            .flat_map(|l| &l.discounts)
            .chain(&quote.order_discounts)
            .map(|d| d.amount_minor)
            .collect();
        prop_assert_eq!(quote.discount_total_minor, listed.iter().sum::<i64>());
        prop_assert!(listed.iter().all(|&amount| amount > 0));
        prop_assert!(quote.total_minor >= 0);
        for line in &quote.lines {
            prop_assert!(line.unit_minor >= 0);
            prop_assert_eq!(line.line_total_minor, line.unit_minor * i64::from(line.quantity));
            let taken: i64 = line.discounts.iter().map(|d| d.amount_minor).sum();
            prop_assert!(taken <= line.line_total_minor);
        }
    }
}
