//! Money as integer minor units with an ISO 4217 currency (DESIGN §4, invariant 6).
//!
//! No float ever holds an amount, not even in between: sums and products are checked
//! `i64`, percentages go through [`percent_of`] on `i128`, and the one rounding rule of
//! the service is stated and implemented there.

use std::fmt;

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};
use serde_json::json;

use crate::error::{Error, ErrorCode};

/// Basis points in a whole: 1 bp = 0.01 %, so `10_000` bp = 100 %.
pub const BASIS_POINTS_PER_WHOLE: u32 = 10_000;

/// An ISO 4217 currency code: one of [`ISO_4217`], so three ASCII uppercase letters.
/// Serialized as the code itself (`"EUR"`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

/// The codes ISO 4217 assigns (the list of 2025, funds and the test code `XTS` included),
/// sorted for a binary search. Not `XXX`, "no currency", which no price can be in.
pub const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD",
    "BIF", "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHE", "CHF",
    "CHW", "CLF", "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD",
    "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD",
    "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR",
    "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA",
    "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO",
    "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB",
    "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SLL", "SOS", "SRD", "SSP", "STN", "SVC",
    "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN",
    "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV", "WST", "XAF", "XAG", "XAU", "XBA", "XBB", "XBC",
    "XBD", "XCD", "XCG", "XDR", "XOF", "XPD", "XPF", "XPT", "XSU", "XTS", "XUA", "YER", "ZAR", "ZMW", "ZWG",
    "ZWL",
];

impl Currency {
    /// Parses a currency code, refusing anything ISO 4217 does not assign with a 400
    /// `INVALID_CURRENCY` (`"eur"`, `"EURO"`, `"€"`, `"ZZZ"` and `"XXX"` are all refused).
    pub fn parse(raw: &str) -> Result<Self, Error> {
        if ISO_4217.binary_search(&raw).is_err() {
            return Err(Error::bad_request(
                ErrorCode::InvalidCurrency,
                format!("currency must be an ISO 4217 code in upper case, such as \"EUR\", not {raw:?}"),
            ));
        }
        let mut code = [0; 3];
        code.copy_from_slice(raw.as_bytes());
        Ok(Self(code))
    }

    /// The code as text, e.g. `"EUR"`.
    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored, so this is always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An amount of money: integer minor units (cents for EUR) in one currency.
///
/// Arithmetic is checked: amounts of different currencies are never combined (422
/// `CURRENCY_MISMATCH`) and a result outside `i64` is refused (422 `AMOUNT_OUT_OF_RANGE`),
/// never wrapped or saturated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    /// The amount in minor units of `currency`.
    pub minor: i64,
    /// The currency of the amount.
    pub currency: Currency,
}

impl Money {
    /// `minor` units of `currency`.
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    /// Nothing, in `currency`.
    pub fn zero(currency: Currency) -> Self {
        Self::new(0, currency)
    }

    /// `self + other`, refused if the currencies differ or the sum leaves `i64`.
    pub fn checked_add(self, other: Money) -> Result<Money, Error> {
        self.same_currency(other)?;
        self.minor
            .checked_add(other.minor)
            .map(|minor| Money::new(minor, self.currency))
            .ok_or_else(|| out_of_range(self.currency))
    }

    /// `self - other`, refused if the currencies differ or the difference leaves `i64`.
    pub fn checked_sub(self, other: Money) -> Result<Money, Error> {
        self.same_currency(other)?;
        self.minor
            .checked_sub(other.minor)
            .map(|minor| Money::new(minor, self.currency))
            .ok_or_else(|| out_of_range(self.currency))
    }

    /// `self × quantity` (a unit price times units), refused if the product leaves `i64`.
    pub fn checked_mul(self, quantity: u32) -> Result<Money, Error> {
        self.minor
            .checked_mul(i64::from(quantity))
            .map(|minor| Money::new(minor, self.currency))
            .ok_or_else(|| out_of_range(self.currency))
    }

    fn same_currency(self, other: Money) -> Result<(), Error> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(Error::Unprocessable {
                code: ErrorCode::CurrencyMismatch,
                message: format!(
                    "amounts in {} and {} cannot be combined",
                    self.currency, other.currency
                ),
                details: json!({ "currencies": [self.currency, other.currency] }),
            })
        }
    }
}

/// Serializes a [`Money`] flattened into the struct that holds it (`#[serde(flatten,
/// serialize_with = "money::as_total")]`), as the API shows a total: `"total"` in minor
/// units beside its `"currency"`.
pub fn as_total<S: Serializer>(money: &Money, serializer: S) -> Result<S::Ok, S::Error> {
    flattened(money, "total", serializer)
}

/// As [`as_total`], for an `"amount"` beside its `"currency"` (a payment intent).
pub fn as_amount<S: Serializer>(money: &Money, serializer: S) -> Result<S::Ok, S::Error> {
    flattened(money, "amount", serializer)
}

fn flattened<S: Serializer>(money: &Money, name: &'static str, serializer: S) -> Result<S::Ok, S::Error> {
    let mut fields = serializer.serialize_struct("Money", 2)?;
    fields.serialize_field(name, &money.minor)?;
    fields.serialize_field("currency", &money.currency)?;
    fields.end()
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.minor, self.currency)
    }
}

/// The 422 for an amount that does not fit in `i64` minor units.
fn out_of_range(currency: Currency) -> Error {
    Error::Unprocessable {
        code: ErrorCode::AmountOutOfRange,
        message: format!("amount in {currency} is out of range"),
        details: json!({ "currency": currency }),
    }
}

/// `basis_points` of `amount_minor`, in whole minor units: **the one rounding rule of the
/// service**.
///
/// The exact value `amount_minor × basis_points / 10 000` is rounded **half up**: a
/// remainder of exactly half a minor unit or more rounds up to the next unit, less rounds
/// down (1 bp of 5 000 = 0.5 → 1; 1 bp of 4 999 = 0.4999 → 0). Amounts in the service are
/// never negative; should one be, it is rounded as its mirror image (half away from zero),
/// so `percent_of(-a, bp) == -percent_of(a, bp)`.
///
/// Guarantees, for `0 <= amount_minor`:
/// - `0 <= result <= amount_minor`;
/// - `percent_of(a, 0) == 0` and `percent_of(a, 10_000) == a`;
/// - `|result × 10 000 − amount_minor × basis_points| <= 5 000` (off by at most half a
///   minor unit).
///
/// More than 10 000 bp counts as 10 000 bp: a percentage never takes more than the whole.
/// The product is computed in `i128`, so it cannot overflow for any `i64` amount.
pub fn percent_of(amount_minor: i64, basis_points: u32) -> i64 {
    let basis_points = basis_points.min(BASIS_POINTS_PER_WHOLE);
    // The same rule in i64 whenever the product and the shift fit, which is every amount
    // below about 9 × 10¹⁴ minor units: an i128 division is a library call, and a quote
    // rounds once per discount it applies.
    let whole = i64::from(BASIS_POINTS_PER_WHOLE);
    if let Some(exact) = amount_minor.checked_mul(i64::from(basis_points)) {
        if let Some(shifted) = exact.checked_add(if exact >= 0 { whole / 2 } else { -whole / 2 }) {
            return shifted / whole;
        }
    }
    let whole = i128::from(BASIS_POINTS_PER_WHOLE);
    let half = whole / 2;
    let exact = i128::from(amount_minor) * i128::from(basis_points);
    // `/` truncates toward zero, so shifting by half a unit away from zero first rounds
    // half away from zero, which is half up on non-negative amounts.
    let rounded = if exact >= 0 {
        (exact + half) / whole
    } else {
        (exact - half) / whole
    };
    // |rounded| <= |amount_minor| because basis_points <= 10 000, so it fits in i64.
    rounded as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn currency_codes_are_the_ones_iso_4217_assigns() {
        assert!(ISO_4217.windows(2).all(|w| w[0] < w[1]), "sorted, for the search");
        assert!(
            ISO_4217
                .iter()
                .all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
        );
        for raw in [
            "", "EU", "EURO", "eur", "Eur", "E1R", "€UR", "EU ", "É", "ZZZ", "ABC", "XXX",
        ] {
            let error = Currency::parse(raw).unwrap_err();
            assert_eq!(
                (error.status(), error.code()),
                (400, "INVALID_CURRENCY"),
                "{raw:?}"
            );
        }
        for raw in ["EUR", "USD", "JPY", "GBP", "CHF", "XTS"] {
            assert_eq!(Currency::parse(raw).unwrap().to_string(), raw);
        }
        assert_eq!(serde_json::to_value(usd()).unwrap(), json!("USD"));
    }

    #[test]
    fn money_of_different_currencies_never_mixes() {
        for result in [
            Money::new(1, eur()).checked_add(Money::new(1, usd())),
            Money::new(1, eur()).checked_sub(Money::new(1, usd())),
        ] {
            let error = result.unwrap_err();
            assert_eq!((error.status(), error.code()), (422, "CURRENCY_MISMATCH"));
        }
        assert_eq!(
            Money::new(150, eur()).checked_add(Money::new(49, eur())).unwrap(),
            Money::new(199, eur())
        );
        assert_eq!(
            Money::new(150, eur())
                .checked_sub(Money::new(200, eur()))
                .unwrap(),
            Money::new(-50, eur())
        );
    }

    #[test]
    fn money_overflow_is_refused_not_wrapped() {
        let max = Money::new(i64::MAX, eur());
        for result in [
            max.checked_add(Money::new(1, eur())),
            Money::new(i64::MIN, eur()).checked_sub(Money::new(1, eur())),
            max.checked_mul(2),
        ] {
            let error = result.unwrap_err();
            assert_eq!((error.status(), error.code()), (422, "AMOUNT_OUT_OF_RANGE"));
        }
        assert_eq!(
            Money::new(1999, eur()).checked_mul(3).unwrap(),
            Money::new(5997, eur())
        );
    }

    #[test]
    fn percent_of_rounds_half_up() {
        assert_eq!(percent_of(5_000, 1), 1); // 0.5 → 1
        assert_eq!(percent_of(4_999, 1), 0); // 0.4999 → 0
        assert_eq!(percent_of(15_000, 1), 2); // 1.5 → 2
        assert_eq!(percent_of(1_999, 1_000), 200); // 199.9 → 200
        assert_eq!(percent_of(1_995, 1_000), 200); // 199.5 → 200
        assert_eq!(percent_of(1_994, 1_000), 199); // 199.4 → 199
        assert_eq!(percent_of(-5_000, 1), -1); // mirror image
    }

    #[test]
    fn percent_of_never_takes_more_than_the_whole() {
        assert_eq!(percent_of(1_234, 20_000), 1_234);
        assert_eq!(percent_of(i64::MAX, u32::MAX), i64::MAX);
        assert_eq!(percent_of(i64::MIN, u32::MAX), i64::MIN);
    }

    proptest! {
        #[test]
        fn percent_of_is_bounded_exact_and_rounded_half_up(
            amount in 0..=i64::MAX,
            bp in 0..=BASIS_POINTS_PER_WHOLE,
        ) {
            let result = percent_of(amount, bp);
            prop_assert!((0..=amount).contains(&result));
            prop_assert_eq!(percent_of(amount, BASIS_POINTS_PER_WHOLE), amount);
            prop_assert_eq!(percent_of(amount, 0), 0);
            let error = i128::from(result) * 10_000 - i128::from(amount) * i128::from(bp);
            prop_assert!(error.abs() <= 5_000, "off by {error}/10000 of a unit");
            // Exactly half a unit always rounds up.
            prop_assert!(error > -5_000);
            prop_assert_eq!(percent_of(-amount, bp), -result);
        }
    }
}
