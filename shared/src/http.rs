//! The HTTP shapes shared by both runtimes: a request as the router sees it and the
//! response it gives back. The Spin component and the native server only convert to and
//! from these.

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, ErrorCode};

/// Most bytes of a request's target, its path and query together (RFC 9112 §3 asks a
/// server to take at least 8000); past it a request is refused with 414 `URI_TOO_LONG`.
pub const MAX_TARGET_BYTES: usize = 8192;

/// Most header fields a request may carry; past it, 431 `HEADERS_TOO_LARGE`.
pub const MAX_HEADER_FIELDS: usize = 100;

/// Most bytes a request's header fields may take, names and values (a JWT is well under
/// 8 KiB); past it, 431 `HEADERS_TOO_LARGE`.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// An incoming request, body already read (up to the limit plus one byte, so that an
/// oversized body is detectable without reading it all).
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Upper-case method, e.g. `GET`.
    pub method: String,
    /// Path without the query, e.g. `/v1/inventory/var-1`.
    pub path: String,
    /// The query string without its `?`, e.g. `state=pending`; empty if there is none.
    pub query: String,
    /// Headers with lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// The address of the direct peer: natively the socket's, on Spin the host's
    /// `spin-client-addr`; `None` when the runtime does not say. A proxy's forwarding
    /// headers are weighed only where the client address is resolved
    /// (`ratelimit::client_address`), against `trusted_proxies`.
    pub client_addr: Option<std::net::IpAddr>,
}

impl Request {
    /// The first value of a header (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Refuses a request whose head is larger than any route takes: a target past
    /// [`MAX_TARGET_BYTES`] (414), more header fields than [`MAX_HEADER_FIELDS`] or more of
    /// their bytes than [`MAX_HEADER_BYTES`] (431). The fields a Spin host adds of its own
    /// (`spin-full-url`, `spin-client-addr`, …: their names start with `spin-`) are not the
    /// client's and are not counted, so both hosts take the same requests.
    pub fn head_within_limits(&self) -> Result<(), Error> {
        let target = self.path.len()
            + if self.query.is_empty() {
                0
            } else {
                1 + self.query.len()
            };
        if target > MAX_TARGET_BYTES {
            return Err(Error::UriTooLong {
                limit: MAX_TARGET_BYTES,
            });
        }
        let (fields, bytes) = self
            .headers
            .iter()
            .filter(|(name, _)| !name.starts_with("spin-"))
            .fold((0, 0), |(fields, bytes), (name, value)| {
                (fields + 1, bytes + name.len() + value.len())
            });
        if fields > MAX_HEADER_FIELDS {
            return Err(Error::HeadersTooLarge(format!(
                "{fields} header fields; a request may carry at most {MAX_HEADER_FIELDS}"
            )));
        }
        if bytes > MAX_HEADER_BYTES {
            return Err(Error::HeadersTooLarge(format!(
                "{bytes} bytes of header fields; a request may carry at most {MAX_HEADER_BYTES}"
            )));
        }
        Ok(())
    }

    /// The first value of a query parameter, percent-decoded (`+` is a space); `None` if
    /// the query does not name it.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(key) == name).then(|| percent_decode(value))
            })
            .next()
    }

    /// For a route that reads no body: none, or one that is JSON as any body must be
    /// (413, 415, 400 as [`Self::json`] answers), whose content is not read. So a request
    /// with a broken body is refused whatever its route, and changes nothing.
    pub fn no_body(&self, max_body_bytes: usize) -> Result<(), Error> {
        if self.body.is_empty() {
            return Ok(());
        }
        self.json(max_body_bytes).map(drop)
    }

    /// Parses the body as JSON, enforcing the body limit (413), the content type (415)
    /// and well-formedness (400).
    pub fn json(&self, max_body_bytes: usize) -> Result<Value, Error> {
        if self.body.len() > max_body_bytes {
            return Err(Error::PayloadTooLarge {
                limit: max_body_bytes,
            });
        }
        let is_json = self.header("content-type").is_some_and(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
        });
        if !is_json {
            return Err(Error::UnsupportedMediaType);
        }
        serde_json::from_slice(&self.body)
            .map(|Unique(value)| value)
            .map_err(|e| Error::bad_request(ErrorCode::MalformedJson, format!("body is not valid JSON: {e}")))
    }
}

/// A JSON value in which no object names a key twice. RFC 8259 leaves a repeated name's
/// meaning to each reader (serde_json keeps the last, others the first), so a proxy in
/// front could judge one request while this server acts on another: a body that repeats a
/// name is refused as malformed.
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Unique(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "the key {key:?} appears twice"
                )));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// `application/x-www-form-urlencoded` decoding of one name or value: `+` is a space,
/// `%XX` a byte; a `%` not followed by two hex digits stands for itself. Bytes that are not
/// UTF-8 become U+FFFD.
fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', high, low]) => hex(*high).zip(hex(*low)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An outgoing response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Headers to send.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
    /// What went wrong inside a 500: written to the request's log line, never sent.
    pub fault: Option<String>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, body: &impl Serialize) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => Self::with_type(status, "application/json", bytes),
            Err(e) => Self::error(&Error::Internal(format!("serializing response: {e}"))),
        }
    }

    /// A response with an explicit content type.
    pub fn with_type(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body,
            fault: None,
        }
    }

    /// The error body of DESIGN §5 with its status.
    pub fn error(error: &Error) -> Self {
        let mut response = Self::json(error.status(), &error.body());
        response.fault = error.fault().map(str::to_owned);
        if let Some(seconds) = error.retry_after() {
            response.headers.push(("retry-after".into(), seconds.to_string()));
        }
        // Every credential the service takes is a bearer token (RFC 7235 §3.1, RFC 6750).
        if response.status == 401 {
            response
                .headers
                .push(("www-authenticate".into(), "Bearer".into()));
        }
        response
    }

    /// The body parsed as JSON (tests and clients).
    pub fn json_body(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Reads a required field of a JSON object.
pub fn field<'a>(body: &'a Value, name: &str) -> Result<&'a Value, Error> {
    body.get(name)
        .ok_or_else(|| Error::bad_request(ErrorCode::MissingField, format!("field {name:?} is required")))
}

/// Reads a required string field of a JSON object.
pub fn str_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, Error> {
    field(body, name)?.as_str().ok_or_else(|| {
        Error::bad_request(
            ErrorCode::InvalidField,
            format!("field {name:?} must be a string"),
        )
    })
}

/// Reads a required array field of a JSON object with at most `max` elements.
pub fn array_field<'a>(body: &'a Value, name: &str, max: usize) -> Result<&'a [Value], Error> {
    let items = field(body, name)?.as_array().ok_or_else(|| {
        Error::bad_request(
            ErrorCode::InvalidField,
            format!("field {name:?} must be an array"),
        )
    })?;
    if items.is_empty() || items.len() > max {
        return Err(Error::bad_request(
            ErrorCode::InvalidField,
            format!("field {name:?} must hold 1 to {max} elements"),
        ));
    }
    Ok(items)
}

/// Rejects a body that is not a JSON object.
pub fn object(body: &Value) -> Result<&Value, Error> {
    if body.is_object() {
        Ok(body)
    } else {
        Err(Error::bad_request(
            ErrorCode::InvalidBody,
            "body must be a JSON object",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_past_its_limits_is_refused_with_414_or_431() {
        let header = |name: &str, value: &str| (name.to_owned(), value.to_owned());
        let at_most = Request {
            path: format!("/{}", "p".repeat(4000)),
            query: "q".repeat(MAX_TARGET_BYTES - 4002),
            headers: (0..MAX_HEADER_FIELDS)
                .map(|i| header(&format!("x-{i}"), "v"))
                .collect(),
            ..Request::default()
        };
        assert!(at_most.head_within_limits().is_ok());
        let longer = Request {
            query: format!("{}q", at_most.query),
            ..at_most.clone()
        };
        let refused = longer.head_within_limits().unwrap_err();
        assert_eq!((refused.status(), refused.code()), (414, "URI_TOO_LONG"));
        let mut more = at_most.clone();
        more.headers.push(header("x-last", "v"));
        let refused = more.head_within_limits().unwrap_err();
        assert_eq!((refused.status(), refused.code()), (431, "HEADERS_TOO_LARGE"));
        // A Spin host's own fields are not the client's.
        let mut hosted = at_most.clone();
        hosted.headers.extend([
            header("spin-full-url", "http://x/"),
            header("spin-client-addr", "[::1]:1"),
        ]);
        assert!(hosted.head_within_limits().is_ok());
        let big = Request {
            headers: vec![header("authorization", &"t".repeat(MAX_HEADER_BYTES - 13))],
            ..Request::default()
        };
        assert!(big.head_within_limits().is_ok());
        let bigger = Request {
            headers: vec![header("authorization", &"t".repeat(MAX_HEADER_BYTES - 12))],
            ..Request::default()
        };
        let refused = bigger.head_within_limits().unwrap_err();
        assert_eq!((refused.status(), refused.code()), (431, "HEADERS_TOO_LARGE"));
    }

    fn with_query(query: &str) -> Request {
        Request {
            query: query.into(),
            ..Request::default()
        }
    }

    #[test]
    fn query_parameters_are_read_decoded_and_first_wins() {
        let req = with_query("state=pending&limit=5&state=sent&note=a+b%2Fc%ZZ&flag&%73tate2=x");
        assert_eq!(req.query_param("state").as_deref(), Some("pending"));
        assert_eq!(req.query_param("limit").as_deref(), Some("5"));
        assert_eq!(req.query_param("note").as_deref(), Some("a b/c%ZZ"));
        assert_eq!(req.query_param("flag").as_deref(), Some(""));
        assert_eq!(req.query_param("state2").as_deref(), Some("x"));
        assert_eq!(req.query_param("missing"), None);
        assert_eq!(with_query("").query_param("state"), None);
        assert_eq!(
            with_query("a=%e9%").query_param("a").as_deref(),
            Some("\u{fffd}%")
        );
    }

    fn with_body(body: &str) -> Request {
        Request {
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            ..Request::default()
        }
    }

    #[test]
    fn a_body_is_read_as_serde_json_reads_it_unless_an_object_repeats_a_key() {
        for body in [
            r#"{"cartId":"c1","items":[{"variantId":"var-1","quantity":2}],"ttlSeconds":60}"#,
            r#"[1,-2,3.5,1e300,18446744073709551615,true,null,"é\u0000",{},[]]"#,
            r#"{"a":{"b":1},"c":{"b":2}}"#,
        ] {
            let expected: Value = serde_json::from_str(body).unwrap();
            assert_eq!(with_body(body).json(1 << 20).unwrap(), expected, "{body}");
        }
        for body in [
            r#"{"cartId":"a","cartId":"b"}"#,
            r#"{"items":[{"variantId":"var-1","variantId":"var-2"}]}"#,
            r#"{"a":{"b":1,"c":2,"b":3}}"#,
        ] {
            let refused = with_body(body).json(1 << 20).unwrap_err();
            assert!(
                matches!(&refused, Error::BadRequest { code: ErrorCode::MalformedJson, message } if message.contains("appears twice")),
                "{body}: {refused:?}"
            );
        }
    }
}
