//! Property tests of every parser that reads outside input (issue 12): webhook events and
//! their `Stripe-Signature`, customer tokens, request bodies (as JSON, and through each
//! route), escaped paths, backup files.
//!
//! For each: arbitrary bytes, arbitrary JSON and valid input mutated one step never make
//! it panic, and are either accepted or refused with a 4xx (the code the contract names);
//! valid input is accepted and reads back as what was written. Request bodies go through
//! the one router ([`handle`]) of an app on real Redis and PostgreSQL, so every route's
//! own parsing and checks are exercised; a refusal there must also leave the store it
//! addresses as it was. The pure parsers run many more cases than the routes, whose every
//! case is a few Redis and PostgreSQL calls.
//!
//! `PROPTEST_CASES` raises (or lowers) every target's case count.

#![recursion_limit = "256"]

use commerce_core::auth::{self, TokenTime};
use commerce_core::backup::{self, Entry, MAGIC};
use commerce_core::checkout::gateway::{EventKind, parse_event, sign, verify_signature};
use commerce_core::http::Request;
use commerce_core::router::{Scope, decode_unreserved, handle};
use commerce_tests::{ADMIN_TOKEN, JWT_SECRET, SERVICE_TOKEN, TestApp, WEBHOOK_SECRET, customer_token};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Map, Value, json};

/// A fixed "now" for the pure parsers, so that a failing case replays exactly.
const NOW: i64 = 1_800_000_000;

/// `cases` unless `PROPTEST_CASES` says otherwise.
fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Strings that parsers trip over: ids, numbers, JSON punctuation, long and non-ASCII text.
fn awkward_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_-]{0,12}",
        "var-[0-9]{1,3}",
        "-?[0-9]{1,20}(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?",
        "\\PC{0,40}",
        "[{}\\[\\]\":,\\\\ ]{0,12}",
        Just("x".repeat(300)),
        Just(String::new()),
    ]
}

/// The field names the bodies of the API use, and a few they do not.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "variantId",
            "quantity",
            "bundleId",
            "choices",
            "cartId",
            "customerId",
            "currency",
            "onHand",
            "maxPerOrder",
            "items",
            "lines",
            "ttlSeconds",
            "variantIds",
            "customerGroup",
            "id",
            "object",
            "type",
            "data",
            "amount",
            "metadata",
            "checkout_session",
        ])
        .prop_map(str::to_owned),
        awkward_string(),
    ]
}

/// Any JSON value, nested up to four levels, biased to the API's field names and to
/// numbers at the edges of i64, u32 and f64.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            any::<i64>(),
            -3i64..300,
            Just(i64::MAX),
            Just(i64::MIN),
            Just(u32::MAX as i64 + 1)
        ]
        .prop_map(Value::from),
        prop_oneof![any::<f64>(), Just(1.5), Just(1e300), Just(-0.0)].prop_map(|f| json!(f)),
        Just(json!(u64::MAX)),
        awkward_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((field_name(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One step away from `valid`: a field removed, a field's value replaced by any JSON, an
/// unknown field added, an array's element replaced, or the whole body replaced.
fn mutated(valid: Value) -> impl Strategy<Value = Value> {
    let fields: Vec<String> = valid
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    let pick = if fields.is_empty() {
        Just(String::from("x")).boxed()
    } else {
        prop::sample::select(fields).boxed()
    };
    (
        0..5u8,
        pick,
        field_name(),
        any_json(),
        any::<prop::sample::Index>(),
    )
        .prop_map(move |(how, field, new_field, value, index)| {
            let mut body = valid.clone();
            match (how, body.as_object_mut()) {
                (0, Some(object)) => {
                    object.remove(&field);
                }
                (1, Some(object)) => {
                    object.insert(field, value);
                }
                (2, Some(object)) => {
                    object.insert(new_field, value);
                }
                (3, Some(object)) => {
                    if let Some(Value::Array(items)) = object.get_mut(&field) {
                        if !items.is_empty() {
                            let at = index.index(items.len());
                            items[at] = value;
                        }
                    }
                }
                _ => body = value,
            }
            body
        })
}

/// Runs `property` on `cases` values of `strategy`; a failure names its smallest case.
fn check<S: Strategy>(
    name: &str,
    cases: u32,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(config(cases));
    if let Err(failure) = runner.run(&strategy, property) {
        panic!("{name}: {failure}");
    }
}

// Webhook signatures.

#[test]
fn a_signed_webhook_is_accepted_and_any_change_to_it_is_refused() {
    let strategy = (
        prop::collection::vec(any::<u8>(), 0..300),
        "[ -~]{1,40}",
        -300i64..=300,
        any::<prop::sample::Index>(),
        1u8..=255,
    );
    check(
        "signed webhook",
        2000,
        strategy,
        |(payload, secret, skew, at, flip)| {
            let header = sign(&payload, &secret, NOW + skew);
            prop_assert!(verify_signature(&payload, Some(&header), &secret, NOW).is_ok());
            // One byte of the payload changed.
            if !payload.is_empty() {
                let mut changed = payload.clone();
                changed[at.index(payload.len())] ^= flip;
                let refused = verify_signature(&changed, Some(&header), &secret, NOW).unwrap_err();
                prop_assert_eq!((refused.status(), refused.code()), (400, "INVALID_SIGNATURE"));
            }
            // One byte of the header changed (keeping it text).
            let mut bytes = header.clone().into_bytes();
            let i = at.index(bytes.len());
            bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(bytes).unwrap();
            if let Err(refused) = verify_signature(&payload, Some(&changed), &secret, NOW) {
                prop_assert_eq!((refused.status(), refused.code()), (400, "INVALID_SIGNATURE"));
            } else {
                // Only a change the header's grammar ignores may pass: none of `t=…,v1=…`.
                prop_assert!(false, "{changed} verified");
            }
            // Another secret.
            let other = format!("{secret}x");
            prop_assert!(verify_signature(&payload, Some(&header), &other, NOW).is_err());
            Ok(())
        },
    );
}

#[test]
fn any_stripe_signature_header_is_refused_with_a_400_not_a_panic() {
    let header = prop_oneof![
        "\\PC{0,120}",
        "(t=[0-9a-z-]{0,12}|v1=[0-9a-f]{0,70}|v0=[0-9a-f]{0,8}|[a-z0-9]{0,3}=?[ -~]{0,8}|)(,(t=[0-9-]{0,22}|v1=[0-9a-fA-F]{0,66}| ?v1=|=|))*{0,6}",
        (any::<i64>(), "[0-9a-f]{64}").prop_map(|(t, v1)| format!("t={t},v1={v1}")),
    ];
    check(
        "Stripe-Signature header",
        3000,
        (
            prop::collection::vec(any::<u8>(), 0..64),
            header,
            prop::option::of(Just(())),
        ),
        |(payload, header, absent)| {
            let header = absent.is_none().then_some(header.as_str());
            match verify_signature(&payload, header, WEBHOOK_SECRET, NOW) {
                Ok(()) => prop_assert!(false, "{header:?} forged a signature"),
                Err(refused) => {
                    prop_assert_eq!((refused.status(), refused.code()), (400, "INVALID_SIGNATURE"));
                }
            }
            Ok(())
        },
    );
}

// Webhook events.

/// A payment intent event as the gateway sends it, and what it says.
fn valid_event() -> impl Strategy<Value = (Value, EventKind, String, Option<String>, i64, String)> {
    (
        "evt_[A-Za-z0-9]{1,24}",
        prop_oneof![
            Just(EventKind::PaymentSucceeded),
            Just(EventKind::PaymentFailed),
            "[a-z_]{1,12}\\.[a-z_]{1,12}".prop_map(EventKind::Other),
        ],
        "pi_[A-Za-z0-9]{1,24}",
        prop::option::of("cs_[0-9a-f]{32}"),
        0i64..1_000_000_000,
        prop::sample::select(vec!["eur", "EUR", "usd", "GBP", "jpy"]),
    )
        .prop_map(|(id, kind, intent, session, amount, currency)| {
            let type_name = match &kind {
                EventKind::PaymentSucceeded => "payment_intent.succeeded".to_owned(),
                EventKind::PaymentFailed => "payment_intent.payment_failed".to_owned(),
                EventKind::Other(name) => name.clone(),
            };
            let mut metadata = json!({});
            if let Some(session) = &session {
                metadata["checkout_session"] = json!(session);
            }
            let event = json!({
                "id": id,
                "object": "event",
                "type": type_name,
                "data": {"object": {
                    "id": intent,
                    "object": "payment_intent",
                    "amount": amount,
                    "currency": currency,
                    "metadata": metadata,
                }},
            });
            (
                event,
                kind,
                intent,
                session,
                amount,
                currency.to_ascii_uppercase(),
            )
        })
}

#[test]
fn a_valid_event_reads_back_as_what_it_says() {
    check(
        "valid event",
        2000,
        valid_event(),
        |(event, kind, intent, session, amount, currency)| {
            let read =
                parse_event(event.to_string().as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(read.id.as_str(), event["id"].as_str().unwrap());
            prop_assert_eq!(read.kind, kind);
            prop_assert_eq!(read.intent_id, intent);
            prop_assert_eq!(read.session_id, session);
            prop_assert_eq!(read.amount, amount);
            prop_assert_eq!(read.currency, currency);
            Ok(())
        },
    );
}

#[test]
fn any_event_payload_is_read_or_refused_with_a_400() {
    let mutated_event = valid_event().prop_flat_map(|(event, ..)| {
        let data = event["data"]["object"].clone();
        (Just(event), mutated(data)).prop_map(|(mut event, object)| {
            event["data"]["object"] = object;
            event
        })
    });
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        valid_event()
            .prop_flat_map(|(event, ..)| mutated(event))
            .prop_map(|v| v.to_string().into_bytes()),
        mutated_event.prop_map(|v| v.to_string().into_bytes()),
    ];
    check("event payload", 3000, payload, |payload| {
        if let Err(refused) = parse_event(&payload) {
            prop_assert_eq!((refused.status(), refused.code()), (400, "INVALID_EVENT"));
        }
        Ok(())
    });
}

// Customer tokens.

/// A signed token's claims: a customer id, maybe a group, an expiry to come, maybe a
/// not-before passed.
fn valid_claims() -> impl Strategy<Value = (String, Option<String>, Value)> {
    (
        "[A-Za-z0-9_-]{1,64}",
        prop::option::of("\\PC{0,20}"),
        1i64..100_000,
        prop::option::of(0i64..100_000),
    )
        .prop_map(|(sub, group, lives, age)| {
            let mut claims = json!({ "sub": sub, "exp": NOW + lives });
            if let Some(group) = &group {
                claims["group"] = json!(group);
            }
            if let Some(age) = age {
                claims["nbf"] = json!(NOW - age);
            }
            (sub, group, claims)
        })
}

#[test]
fn a_signed_token_names_its_customer_and_any_change_to_it_is_refused() {
    check(
        "customer token",
        2000,
        (valid_claims(), any::<prop::sample::Index>(), any::<char>()),
        |((sub, group, claims), at, replacement)| {
            let token = auth::sign(&claims, JWT_SECRET);
            let bearer = format!("Bearer {token}");
            let customer = auth::verify(Some(&bearer), JWT_SECRET, TokenTime::exact(NOW))
                .map_err(|e| TestCaseError::fail(format!("{claims}: {e}")))?;
            prop_assert_eq!(customer.id.as_str(), sub.as_str());
            prop_assert_eq!(customer.group, group);
            // One character replaced by another.
            let mut chars: Vec<char> = token.chars().collect();
            let i = at.index(chars.len());
            if chars[i] != replacement {
                chars[i] = replacement;
                let changed = format!("Bearer {}", chars.into_iter().collect::<String>());
                match auth::verify(Some(&changed), JWT_SECRET, TokenTime::exact(NOW)) {
                    Ok(_) => prop_assert!(false, "{changed} verified"),
                    Err(refused) => prop_assert_eq!(refused.status(), 401),
                }
            }
            // Another secret, and a time past its expiry.
            prop_assert!(auth::verify(Some(&bearer), "other", TokenTime::exact(NOW)).is_err());
            let exp = claims["exp"].as_i64().unwrap();
            prop_assert!(auth::verify(Some(&bearer), JWT_SECRET, TokenTime::exact(exp)).is_err());
            Ok(())
        },
    );
}

#[test]
fn any_authorization_header_is_refused_with_a_401_not_a_panic() {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let encode = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
    // Tokens built of arbitrary parts: a header naming any algorithm, any claims, any
    // signature (correct for the parts, or not).
    let built = (
        any_json(),
        any_json(),
        prop::option::of("[A-Za-z0-9_-]{0,50}"),
        any::<bool>(),
    )
        .prop_map(move |(header, claims, signature, with_alg)| {
            let header = if with_alg {
                json!({"alg": if header.is_string() { header.clone() } else { json!("none") }, "typ": "JWT"})
            } else {
                header
            };
            let signing_input = format!("{}.{}", encode(header), encode(claims.clone()));
            match signature {
                Some(signature) => format!("Bearer {signing_input}.{signature}"),
                // Correctly signed: only claims the contract accepts may pass.
                None => {
                    let signed = auth::sign(&claims, JWT_SECRET);
                    if with_alg {
                        format!("Bearer {signing_input}.")
                    } else {
                        format!("Bearer {signed}")
                    }
                }
            }
        });
    let header = prop_oneof!["\\PC{0,200}", "Bearer [A-Za-z0-9_.=+/-]{0,200}", built,];
    check("Authorization header", 3000, header, |header| {
        match auth::verify(Some(&header), JWT_SECRET, TokenTime::exact(NOW)) {
            Err(refused) => prop_assert_eq!((refused.status(), refused.code()), (401, "UNAUTHORIZED")),
            Ok(customer) => {
                // Only a token this secret signed, with a customer id and a live expiry.
                let claims: Value = serde_json::from_slice(
                    &URL_SAFE_NO_PAD
                        .decode(header.split('.').nth(1).unwrap_or_default())
                        .unwrap_or_default(),
                )
                .unwrap_or(Value::Null);
                prop_assert_eq!(claims["sub"].as_str(), Some(customer.id.as_str()), "{}", header);
                prop_assert!(claims["exp"].as_i64().is_some_and(|exp| exp > NOW), "{}", header);
                let resigned = format!("Bearer {}", auth::sign(&claims, JWT_SECRET));
                prop_assert_eq!(resigned, header);
            }
        }
        Ok(())
    });
}

// Backup files.

fn entry() -> impl Strategy<Value = Entry> {
    (
        "\\PC{0,30}",
        any::<i64>(),
        prop::collection::vec(any::<u8>(), 0..60),
    )
        .prop_map(|(key, ttl_ms, dump)| Entry { key, ttl_ms, dump })
}

fn file_of(entries: &[Entry]) -> Vec<u8> {
    let mut file = backup::Writer::new();
    for entry in entries {
        file.push(entry);
    }
    file.finish()
}

#[test]
fn a_backup_file_reads_back_as_the_entries_written() {
    check(
        "backup file",
        2000,
        prop::collection::vec(entry(), 0..8),
        |entries| {
            let read = backup::decode(&file_of(&entries)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(read, entries);
            Ok(())
        },
    );
}

#[test]
fn a_cut_backup_file_is_refused_wherever_it_is_cut() {
    check(
        "cut backup file",
        2000,
        (prop::collection::vec(entry(), 0..6), any::<prop::sample::Index>()),
        |(entries, at)| {
            let file = file_of(&entries);
            // Anywhere short of the whole file, between entries too: the trailer counts
            // the entries and sums every byte before it.
            let cut = at.index(file.len());
            let refused = backup::decode(&file[..cut]).unwrap_err();
            prop_assert_eq!((refused.status(), refused.code()), (400, "INVALID_BACKUP"));
            Ok(())
        },
    );
}

#[test]
fn any_bytes_as_a_backup_file_are_read_or_refused_with_a_400() {
    let bytes = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(|tail| [MAGIC, &tail].concat()),
        (
            prop::collection::vec(entry(), 1..4),
            any::<prop::sample::Index>(),
            1u8..=255
        )
            .prop_map(|(entries, at, flip)| {
                let mut file = file_of(&entries);
                let i = at.index(file.len());
                file[i] ^= flip;
                file
            }),
    ];
    check("backup bytes", 3000, bytes, |bytes| {
        match backup::decode(&bytes) {
            // The format has one spelling of each list of entries: what reads, writes back
            // as the same bytes.
            Ok(entries) => prop_assert_eq!(file_of(&entries), bytes),
            Err(refused) => {
                prop_assert_eq!((refused.status(), refused.code()), (400, "INVALID_BACKUP"));
            }
        }
        Ok(())
    });
}

// JSON bodies as read before any route (`Request::json`), and escaped paths.

/// A JSON text written out by hand, so that an object may name a key twice, also through
/// an escape (`"\u0061"` is `"a"`): the text, and whether some object in it repeats a name.
fn json_text() -> impl Strategy<Value = (String, bool)> {
    let leaf = any_json().prop_map(|v| (v.to_string(), false));
    leaf.prop_recursive(3, 32, 4, |inner| {
        let key = prop::sample::select(vec![
            ("a", "a"),
            ("\\u0061", "a"),
            ("b", "b"),
            ("quantity", "quantity"),
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| {
                let repeats = items.iter().any(|(_, r)| *r);
                let texts: Vec<&str> = items.iter().map(|(t, _)| t.as_str()).collect();
                (format!("[{}]", texts.join(",")), repeats)
            }),
            prop::collection::vec((key, inner), 0..4).prop_map(|fields| {
                let mut names = std::collections::HashSet::new();
                let repeats = fields.iter().any(|(_, (_, r))| *r)
                    | !fields.iter().all(|((_, name), _)| names.insert(*name));
                let texts: Vec<String> = fields
                    .iter()
                    .map(|((raw, _), (text, _))| format!("\"{raw}\": {text}"))
                    .collect();
                (format!("{{{}}}", texts.join(", ")), repeats)
            }),
        ]
    })
}

fn json_request(body: Vec<u8>, content_type: &str) -> Request {
    Request {
        method: "POST".into(),
        path: "/v1/pricing/quote".into(),
        query: String::new(),
        headers: vec![("content-type".into(), content_type.into())],
        body,
        client_addr: None,
    }
}

#[test]
fn a_json_body_reads_as_serde_json_reads_it_unless_an_object_repeats_a_name() {
    check("json body", 3000, json_text(), |(text, repeats)| {
        match json_request(text.clone().into_bytes(), "application/json").json(1 << 20) {
            Ok(value) => {
                prop_assert!(!repeats, "accepted a repeated name: {}", text);
                prop_assert_eq!(value, serde_json::from_str::<Value>(&text).expect("valid JSON"));
            }
            Err(refused) => {
                prop_assert!(repeats, "refused {}: {}", text, refused.body());
                prop_assert_eq!((refused.status(), refused.code()), (400, "MALFORMED_JSON"));
            }
        }
        Ok(())
    });
}

#[test]
fn any_body_is_read_or_refused_with_a_4xx_for_its_size_type_or_form() {
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        json_text().prop_map(|(t, _)| t.into_bytes()),
    ];
    let content_type = prop::sample::select(vec![
        "application/json",
        "Application/JSON; charset=utf-8",
        "text/plain",
        "",
    ]);
    let strategy = (body, content_type, 0usize..300);
    check("any body", 3000, strategy, |(body, content_type, limit)| {
        let read = json_request(body.clone(), content_type).json(limit);
        let expected = if body.len() > limit {
            Some((413, "PAYLOAD_TOO_LARGE"))
        } else if !content_type.to_ascii_lowercase().starts_with("application/json") {
            Some((415, "UNSUPPORTED_MEDIA_TYPE"))
        } else {
            serde_json::from_slice::<Value>(&body)
                .err()
                .map(|_| (400, "MALFORMED_JSON"))
        };
        match (read, expected) {
            (Ok(value), None) => {
                prop_assert_eq!(value, serde_json::from_slice::<Value>(&body).expect("valid JSON"))
            }
            // A valid text may still repeat a name: the one refusal serde_json does not make.
            (Err(refused), None) => {
                prop_assert_eq!((refused.status(), refused.code()), (400, "MALFORMED_JSON"))
            }
            (Err(refused), Some(expected)) => prop_assert_eq!((refused.status(), refused.code()), expected),
            (Ok(value), Some(expected)) => prop_assert!(false, "accepted {value} where {expected:?} was due"),
        }
        Ok(())
    });
}

/// A path whose characters are each sent as they are or percent-escaped (upper- or
/// lower-case hex): the text sent, and what it must read as, where only escapes of
/// unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded. A bare `%` is always sent
/// escaped, as a URI must.
fn escaped_path() -> impl Strategy<Value = (String, String)> {
    let character = prop_oneof![
        prop::sample::select("AZaz09-._~/:?#[]@!$&'()*+,;= %{}\"\\".chars().collect::<Vec<_>>()),
        any::<char>(),
    ];
    prop::collection::vec((character, 0..3u8), 0..24).prop_map(|chars| {
        let (mut sent, mut read) = (String::new(), String::new());
        for (c, how) in chars {
            let unreserved = c.is_ascii_alphanumeric() || "-._~".contains(c);
            let escape = match how {
                _ if c == '%' => Some("%25".to_owned()),
                1 if c.is_ascii() => Some(format!("%{:02X}", c as u8)),
                2 if c.is_ascii() => Some(format!("%{:02x}", c as u8)),
                _ => None,
            };
            match escape {
                Some(escape) => {
                    sent.push_str(&escape);
                    if unreserved {
                        read.push(c);
                    } else {
                        read.push_str(&escape);
                    }
                }
                None => {
                    sent.push(c);
                    read.push(c);
                }
            }
        }
        (format!("/v1/{sent}"), format!("/v1/{read}"))
    })
}

#[test]
fn a_path_reads_with_its_unreserved_escapes_decoded_and_every_other_kept() {
    check("escaped path", 5000, escaped_path(), |(sent, read)| {
        prop_assert_eq!(decode_unreserved(&sent), read);
        Ok(())
    });
    check("any path", 5000, "\\PC{0,40}|[%0-9a-fA-F/-]{0,40}", |path| {
        let decoded = decode_unreserved(&path);
        prop_assert!(decoded.len() <= path.len(), "{} grew to {}", path, decoded);
        if !path.contains('%') {
            prop_assert_eq!(decoded, path);
        }
        Ok(())
    });
}

// Request bodies, through the router of an app on real Redis and PostgreSQL.

/// One route's request with a generated body.
struct Route {
    method: &'static str,
    path: String,
    authorization: Option<String>,
    /// The key names (`:cart:` …) of the store a refused request must leave as it was.
    store: &'static str,
}

impl Route {
    fn request(&self, body: Vec<u8>, content_type: &str) -> Request {
        let mut headers = vec![("content-type".to_owned(), content_type.to_owned())];
        if let Some(token) = &self.authorization {
            headers.push(("authorization".to_owned(), token.clone()));
        }
        headers.push((
            "idempotency-key".to_owned(),
            commerce_core::ids::random_hex_128().expect("random bytes"),
        ));
        Request {
            method: self.method.into(),
            path: self.path.clone(),
            query: String::new(),
            headers,
            body,
            client_addr: None,
        }
    }
}

/// Sends `valid`, which must be accepted, then `cases` generated bodies (arbitrary bytes,
/// arbitrary JSON, `valid` mutated, `valid` as another content type) to `route`: every
/// answer is a 2xx or a 4xx with an error code, and a 4xx leaves the route's store as it
/// was.
fn bodies_are_accepted_or_refused(
    app: &TestApp,
    runtime: &tokio::runtime::Runtime,
    route: &Route,
    valid: Value,
    cases: u32,
) {
    let name = format!("{} {}", route.method, route.path);
    let answer = runtime.block_on(handle(
        &*app.app,
        route.request(valid.to_string().into_bytes(), "application/json"),
        Scope::All,
    ));
    assert!(
        (200..300).contains(&answer.status),
        "{name}: the valid {valid} was refused: {:?}",
        answer.json_body()
    );
    let body = prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| (b, "application/json")),
        1 => any_json().prop_map(|v| (v.to_string().into_bytes(), "application/json")),
        4 => mutated(valid.clone()).prop_map(|v| (v.to_string().into_bytes(), "application/json")),
        1 => Just((valid.to_string().into_bytes(), "text/plain")),
    ];
    // The store as the last accepted request left it: a refusal must find it so.
    let store = std::sync::Mutex::new(runtime.block_on(app.redis_snapshot_of(route.store)));
    check(&name, cases, body, |(body, content_type)| {
        runtime.block_on(async {
            let shown = String::from_utf8_lossy(&body).into_owned();
            let answer = handle(&*app.app, route.request(body, content_type), Scope::All).await;
            let status = answer.status;
            prop_assert!(
                (200..300).contains(&status) || (400..500).contains(&status),
                "{} for {}: {:?}",
                status,
                shown,
                answer.json_body()
            );
            let now = app.redis_snapshot_of(route.store).await;
            let before = std::mem::replace(&mut *store.lock().unwrap(), now.clone());
            if status >= 400 {
                let code = answer.json_body().map(|b| b["error"]["code"].clone());
                prop_assert!(
                    code.as_ref().is_some_and(Value::is_string),
                    "{status} without an error code for {shown}"
                );
                prop_assert!(
                    now == before,
                    "{status} {code:?} for {shown}, and the store changed"
                );
            }
            Ok(())
        })
    });
}

#[test]
fn every_request_body_is_accepted_or_refused_with_a_4xx_that_changes_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // 20 variants: the fewest with the demo bundles.
    let (app, _gateway) = runtime.block_on(TestApp::shop(20, |c| c));
    let cart = runtime.block_on(app.cart_with(&[("var-1", 1)]));
    let line = runtime.block_on(app.get(&format!("/v1/carts/{cart}"))).body["lines"][0]["lineId"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_cart = runtime.block_on(app.cart_with(&[("var-2", 1)]));
    let checkout_cart = runtime.block_on(app.cart_with(&[("var-3", 1)]));
    let bearer = |token: &str| Some(format!("Bearer {token}"));
    let anonymous = |method, path: String, store| Route {
        method,
        path,
        authorization: None,
        store,
    };
    let bundle =
        json!({"bundleId": "bundle-3", "choices": {"first": ["var-1"], "second": ["var-5"]}, "quantity": 1});
    let cases = 32;
    let routes = [
        (
            anonymous("POST", format!("/v1/carts/{cart}/items"), ":cart:"),
            json!({"variantId": "var-2", "quantity": 2}),
        ),
        (
            anonymous("POST", format!("/v1/carts/{cart}/items"), ":cart:"),
            bundle,
        ),
        (
            anonymous("PATCH", format!("/v1/carts/{cart}/items/{line}"), ":cart:"),
            json!({"quantity": 3}),
        ),
        (
            anonymous("POST", "/v1/carts".into(), ":cart:"),
            json!({"currency": "EUR"}),
        ),
        (
            Route {
                method: "POST",
                path: "/v1/customers/erin/cart/merge".into(),
                authorization: bearer(&customer_token("erin")),
                store: ":cart:",
            },
            json!({"cartId": other_cart}),
        ),
        (
            anonymous("POST", "/v1/inventory/availability".into(), ":inventory:"),
            json!({"variantIds": ["var-1", "var-2"]}),
        ),
        (
            Route {
                method: "POST",
                path: "/v1/inventory/reservations".into(),
                authorization: bearer(SERVICE_TOKEN),
                store: ":inventory:",
            },
            json!({"cartId": "backend-1", "items": [{"variantId": "var-1", "quantity": 1}], "ttlSeconds": 60}),
        ),
        (
            Route {
                method: "PUT",
                path: "/v1/admin/inventory/var-2".into(),
                authorization: bearer(ADMIN_TOKEN),
                store: ":inventory:",
            },
            json!({"onHand": 50, "maxPerOrder": 5}),
        ),
        (
            anonymous("POST", "/v1/pricing/quote".into(), ":pricing:"),
            json!({"lines": [{"variantId": "var-1", "quantity": 2}]}),
        ),
        (
            Route {
                method: "POST",
                path: "/v1/pricing/quote".into(),
                authorization: bearer(ADMIN_TOKEN),
                store: ":pricing:",
            },
            json!({"customerGroup": "vip", "lines": [{"variantId": "var-1", "quantity": 1}]}),
        ),
        (
            anonymous("POST", "/v1/checkout".into(), ":checkout:session:"),
            json!({"cartId": checkout_cart}),
        ),
    ];
    for (route, valid) in routes {
        bodies_are_accepted_or_refused(&app, &runtime, &route, valid, cases);
    }
    runtime.block_on(app.finish());
}

#[test]
fn a_signed_webhook_of_any_payload_is_answered_without_a_5xx() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (app, _gateway) = runtime.block_on(TestApp::shop(1, |c| c));
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        any_json().prop_map(|v| v.to_string().into_bytes()),
        valid_event().prop_map(|(event, ..)| event.to_string().into_bytes()),
        valid_event()
            .prop_flat_map(|(event, ..)| mutated(event))
            .prop_map(|v| v.to_string().into_bytes()),
    ];
    check("signed webhook payload", 64, payload, |payload| {
        runtime.block_on(async {
            let orders_before = orders(&app).await;
            let header = sign(&payload, WEBHOOK_SECRET, commerce_core::auth::now_s());
            let shown = String::from_utf8_lossy(&payload).into_owned();
            let request = Request {
                method: "POST".into(),
                path: "/v1/checkout/payment-webhook".into(),
                query: String::new(),
                headers: vec![
                    ("content-type".into(), "application/json".into()),
                    ("stripe-signature".into(), header),
                ],
                body: payload,
                client_addr: None,
            };
            let answer = handle(&*app.app, request, Scope::All).await;
            prop_assert!(
                (200..300).contains(&answer.status) || (400..500).contains(&answer.status),
                "{} for {}: {:?}",
                answer.status,
                shown,
                answer.json_body()
            );
            // No session exists: nothing becomes an order.
            prop_assert_eq!(orders(&app).await, orders_before);
            Ok(())
        })
    });
    runtime.block_on(app.finish());
}

async fn orders(app: &TestApp) -> i64 {
    app.pg
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0)
}
