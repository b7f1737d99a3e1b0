//! Customer authentication: HS256 JWTs whose `sub` is the customer id and whose optional
//! `group` claim is the customer's pricing group (DESIGN §5).
//!
//! Only HS256 is accepted: a token naming another algorithm (`none`, RS256, …) is refused
//! before its signature is looked at, so the algorithm cannot be chosen by the bearer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::error::Error;
use crate::ids::CustomerId;

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    /// The customer (`sub`).
    pub id: CustomerId,
    /// The pricing group (`group`), if any.
    pub group: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    /// Extensions the issuer says must be understood (RFC 7515 §4.1.11): this server
    /// understands none, so a token naming any is refused. Read as any JSON, so that a
    /// `crit` of any form (even `null`) is seen.
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

/// Whether a field is there, whatever its value.
fn present<'de, D: serde::Deserializer<'de>>(field: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(field).map(|_| true)
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    group: Option<String>,
    exp: Option<NumericDate>,
    nbf: Option<NumericDate>,
}

/// A JWT time (RFC 7519 §2, NumericDate): seconds since the epoch, which may have a
/// fraction. Held as the first whole second at or after it: with the clock read in whole
/// seconds, "now ≥ 2000.5" and "now ≥ 2001" are the same test, and so are "now < 2000.5"
/// and "now < 2001". Past the range of i64 it stays at the end of the range.
#[derive(Clone, Copy)]
struct NumericDate(i64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: serde::Deserializer<'de>>(value: D) -> Result<Self, D::Error> {
        let number = serde_json::Number::deserialize(value)?;
        // `as` saturates at the ends of i64 (JSON has no NaN or infinity).
        Ok(Self(number.as_i64().unwrap_or_else(|| {
            number.as_f64().map_or(i64::MAX, |seconds| seconds.ceil() as i64)
        })))
    }
}

/// A JWT part read as what it must be, a JSON object (RFC 7519 §7.2): serde would also
/// fill a struct from an array (`["a", null, 4294967296]`), which no issuer writes.
fn json_object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<T> {
    match serde_json::from_slice(bytes).ok()? {
        object @ serde_json::Value::Object(_) => serde_json::from_value(object).ok(),
        _ => None,
    }
}

fn unauthorized(message: &str) -> Error {
    Error::Unauthorized(message.to_owned())
}

/// When a token is checked: the local clock and how far it may disagree with the issuer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTime {
    /// Epoch seconds now.
    pub now_s: i64,
    /// Clock leeway in seconds, granted on `exp` and `nbf`.
    pub leeway_s: i64,
}

impl TokenTime {
    /// Exactly `now_s`, no leeway (tests).
    pub fn exact(now_s: i64) -> Self {
        Self { now_s, leeway_s: 0 }
    }
}

/// The token of an `Authorization: Bearer <token>` header. The scheme's name is
/// case-insensitive (RFC 7235 §2.1): `bearer x` and `BEARER x` name the token `x` too.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    // RFC 6750: `Bearer 1*SP token`.
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Verifies `Authorization: Bearer <jwt>` against `secret` at `at` and returns the
/// customer. Missing, malformed, badly signed tokens, tokens without `exp` (a token must
/// end), expired ones and ones not valid yet (`nbf`) are 401, each within the leeway; an
/// empty secret refuses every token.
pub fn verify(authorization: Option<&str>, secret: &str, at: TokenTime) -> Result<Customer, Error> {
    let token = authorization
        .and_then(bearer)
        .ok_or_else(|| unauthorized("customer routes need a bearer token"))?;
    if secret.is_empty() {
        return Err(unauthorized("customer tokens are not configured (jwt_secret)"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unauthorized("the token is not a JWT"));
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| unauthorized("the token is not a JWT"))
    };
    let header: Header =
        json_object(&decode(header)?).ok_or_else(|| unauthorized("the token header is malformed"))?;
    if header.alg != "HS256" {
        return Err(unauthorized("only HS256 tokens are accepted"));
    }
    if header.crit {
        return Err(unauthorized(
            "the token names critical extensions (crit), which this server does not understand",
        ));
    }
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| unauthorized("bad secret"))?;
    mac.update(&token.as_bytes()[..header_and_payload_len(token)]);
    // verify_slice compares in constant time.
    mac.verify_slice(&decode(signature)?)
        .map_err(|_| unauthorized("the token signature is invalid"))?;
    let claims: Claims =
        json_object(&decode(payload)?).ok_or_else(|| unauthorized("the token claims are malformed"))?;
    let Some(NumericDate(exp)) = claims.exp else {
        return Err(unauthorized("the token has no expiry (exp)"));
    };
    if at.now_s >= exp.saturating_add(at.leeway_s) {
        return Err(unauthorized("the token has expired"));
    }
    if claims
        .nbf
        .is_some_and(|NumericDate(nbf)| at.now_s.saturating_add(at.leeway_s) < nbf)
    {
        return Err(unauthorized("the token is not valid yet"));
    }
    let id =
        CustomerId::parse(&claims.sub).map_err(|_| unauthorized("the token subject is not a customer id"))?;
    Ok(Customer {
        id,
        group: claims.group,
    })
}

/// Verifies the token and that it belongs to `customer` (the path's): another customer's
/// token is 403.
pub fn verify_customer(
    authorization: Option<&str>,
    secret: &str,
    at: TokenTime,
    customer: &CustomerId,
) -> Result<Customer, Error> {
    let bearer = verify(authorization, secret, at)?;
    if &bearer.id != customer {
        return Err(Error::Forbidden("the token belongs to another customer".into()));
    }
    Ok(bearer)
}

fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

/// Signs claims as an HS256 JWT (tests, demo tooling).
pub fn sign(claims: &serde_json::Value, secret: &str) -> String {
    sign_with_header(&serde_json::json!({"alg": "HS256", "typ": "JWT"}), claims, secret)
}

/// Signs claims with HMAC-SHA256 under any header (tests of what the header may say).
pub fn sign_with_header(header: &serde_json::Value, claims: &serde_json::Value, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(header.to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// Seconds since the epoch by the local clock (token lifetimes only; stock and checkout
/// expiry use the Redis clock).
pub fn now_s() -> i64 {
    crate::clock::wall_clock_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &str = "s3cret";

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn the_bearer_scheme_is_named_in_any_case() {
        for header in ["Bearer t", "bearer t", "BEARER t", "bEaReR t", "Bearer   t"] {
            assert_eq!(super::bearer(header), Some("t"), "{header}");
        }
        for header in ["Basic t", "Bearert", "Bearer", "", " Bearer t"] {
            assert_eq!(super::bearer(header), None, "{header}");
        }
    }

    #[test]
    fn a_signed_token_names_its_customer_and_group() {
        let token = sign(
            &json!({"sub": "cust-1", "group": "wholesale", "exp": 2000}),
            SECRET,
        );
        let customer = verify(Some(&bearer(&token)), SECRET, TokenTime::exact(1000)).unwrap();
        assert_eq!(customer.id.as_str(), "cust-1");
        assert_eq!(customer.group.as_deref(), Some("wholesale"));
    }

    #[test]
    fn claims_or_a_header_that_are_not_an_object_are_refused() {
        // Found by tests/tests/parsers.rs: serde fills a struct from an array too.
        let array_claims = sign(&json!(["cust-1", null, 2000, null]), SECRET);
        let array_header =
            sign_with_header(&json!(["HS256"]), &json!({"sub": "cust-1", "exp": 2000}), SECRET);
        for token in [array_claims, array_header] {
            let refused = verify(Some(&bearer(&token)), SECRET, TokenTime::exact(1000)).unwrap_err();
            assert_eq!(refused.status(), 401, "{token}");
        }
    }

    #[test]
    fn bad_tokens_are_refused() {
        let good = sign(&json!({"sub": "cust-1", "exp": 2000}), SECRET);
        let expired = sign(&json!({"sub": "cust-1", "exp": 999}), SECRET);
        let endless = sign(&json!({"sub": "cust-1"}), SECRET);
        let early = sign(&json!({"sub": "cust-1", "exp": 2000, "nbf": 1001}), SECRET);
        let other_key = sign(&json!({"sub": "cust-1"}), "other");
        let bad_sub = sign(&json!({"sub": "a:b"}), SECRET);
        let (h, p, _) = (
            good.split('.').next().unwrap(),
            good.split('.').nth(1).unwrap(),
            (),
        );
        let none_alg = format!("{}.{p}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#));
        let tampered = format!(
            "{h}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"sub":"cust-2"}"#),
            good.split('.').nth(2).unwrap()
        );
        for token in [
            expired,
            endless,
            early,
            other_key,
            bad_sub,
            none_alg,
            tampered,
            "x.y".into(),
            "".into(),
        ] {
            let err = verify(Some(&bearer(&token)), SECRET, TokenTime::exact(1000)).unwrap_err();
            assert_eq!(err.status(), 401, "{token}");
        }
        assert_eq!(
            verify(None, SECRET, TokenTime::exact(1000)).unwrap_err().status(),
            401
        );
        assert_eq!(
            verify(Some(&bearer(&good)), "", TokenTime::exact(1000))
                .unwrap_err()
                .status(),
            401
        );
    }

    #[test]
    fn the_leeway_covers_clock_skew_on_both_ends() {
        let token = sign(&json!({"sub": "cust-1", "exp": 1000, "nbf": 900}), SECRET);
        let at = |now_s| TokenTime { now_s, leeway_s: 60 };
        for now in [841, 1000, 1059] {
            assert!(verify(Some(&bearer(&token)), SECRET, at(now)).is_ok(), "{now}");
        }
        for now in [839, 1060] {
            assert_eq!(
                verify(Some(&bearer(&token)), SECRET, at(now))
                    .unwrap_err()
                    .status(),
                401,
                "{now}"
            );
        }
    }

    #[test]
    fn instants_at_the_end_of_the_range_do_not_wrap() {
        let token = sign(&json!({"sub": "cust-1", "exp": i64::MAX}), SECRET);
        let at = TokenTime {
            now_s: 1000,
            leeway_s: 60,
        };
        assert!(verify(Some(&bearer(&token)), SECRET, at).is_ok());
        let late = sign(&json!({"sub": "cust-1", "exp": 2000, "nbf": i64::MAX}), SECRET);
        assert_eq!(
            verify(Some(&bearer(&late)), SECRET, at).unwrap_err().status(),
            401
        );
    }

    #[test]
    fn times_may_have_a_fraction() {
        let token = sign(&json!({"sub": "cust-1", "exp": 1000.5, "nbf": 900.25}), SECRET);
        for now in [901, 1000] {
            assert!(
                verify(Some(&bearer(&token)), SECRET, TokenTime::exact(now)).is_ok(),
                "{now}"
            );
        }
        for now in [900, 1001] {
            let refused = verify(Some(&bearer(&token)), SECRET, TokenTime::exact(now)).unwrap_err();
            assert_eq!(refused.status(), 401, "{now}");
        }
        // Beyond i64 either way: never expires, never valid yet.
        let endless = sign(&json!({"sub": "cust-1", "exp": 1e300}), SECRET);
        assert!(verify(Some(&bearer(&endless)), SECRET, TokenTime::exact(1000)).is_ok());
        let never = sign(&json!({"sub": "cust-1", "exp": 2000, "nbf": 1e300}), SECRET);
        assert_eq!(
            verify(Some(&bearer(&never)), SECRET, TokenTime::exact(1000))
                .unwrap_err()
                .status(),
            401
        );
        // A time that is not a number is a malformed token.
        let text = sign(&json!({"sub": "cust-1", "exp": "2000"}), SECRET);
        assert_eq!(
            verify(Some(&bearer(&text)), SECRET, TokenTime::exact(1000))
                .unwrap_err()
                .status(),
            401
        );
    }

    #[test]
    fn a_token_naming_critical_extensions_is_refused() {
        let claims = json!({"sub": "cust-1", "exp": 2000});
        for header in [
            json!({"alg": "HS256", "crit": ["exp"]}),
            json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
            json!({"alg": "HS256", "crit": null}),
            json!({"alg": "HS256", "crit": []}),
        ] {
            let token = sign_with_header(&header, &claims, SECRET);
            let refused = verify(Some(&bearer(&token)), SECRET, TokenTime::exact(1000)).unwrap_err();
            assert_eq!(refused.status(), 401, "{token}");
        }
    }

    #[test]
    fn another_customers_token_is_forbidden() {
        let token = sign(&json!({"sub": "cust-1", "exp": 10}), SECRET);
        let other = CustomerId::parse("cust-2").unwrap();
        assert_eq!(
            verify_customer(Some(&bearer(&token)), SECRET, TokenTime::exact(0), &other)
                .unwrap_err()
                .status(),
            403
        );
    }
}
