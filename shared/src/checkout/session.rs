//! A checkout session: what the API shows ([`SessionView`]), what Redis stores
//! ([`Session`], one hash), and how a session script's reply decodes into it.

use serde::Serialize;
use serde_json::{Value, json};

use super::state::State;
use crate::cart::CartRef;
use crate::clock::rfc3339_millis;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{CartId, CustomerId, SessionId};
use crate::ports::RedisReply;
use crate::pricing::money::{self, Currency, Money};

/// A checkout session as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    /// The session (unguessable, `cs_` + 128 random bits).
    pub session_id: String,
    /// Where it is.
    pub state: String,
    /// The anonymous cart checked out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart_id: Option<String>,
    /// The customer whose cart is checked out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// The frozen total: `total` in minor units beside its `currency`.
    #[serde(flatten, serialize_with = "money::as_total")]
    pub total: Money,
    /// Until when payment may arrive (RFC 3339).
    pub expires_at: String,
    /// Every state it passed, with when.
    pub history: Vec<Value>,
    /// The payment intent, once created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_intent_id: Option<String>,
    /// The order, once written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    /// Set when a payment arrived that the session could no longer accept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_required: Option<String>,
    /// The frozen quote (prices, discounts, ruleset versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quote: Option<Value>,
}

/// A session as stored.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) id: SessionId,
    pub(super) cart: CartRef,
    pub(super) state: State,
    pub(super) version: i64,
    pub(super) deadline_ms: i64,
    pub(super) total: Money,
    /// Every state it passed, as stored (JSON `[{state, at}]`, `at` in epoch ms): read
    /// into the API's form only when a view is shown.
    pub(super) history: String,
    pub(super) intent: Option<String>,
    pub(super) order: Option<String>,
    pub(super) refund: Option<String>,
    /// Ended (CANCELLED, EXPIRED, FAILED) by a request that has not yet freed what it
    /// held: cut short, if no request is still at it.
    pub(super) releasing: bool,
    /// Releasing, and past PostgreSQL's part of it (`released_in_postgres.lua`): its end
    /// is recorded there and what its intent is owed is in the outbox.
    pub(super) released_in_postgres: bool,
}

impl Session {
    pub(super) fn view(&self, quote: Option<Value>) -> SessionView {
        let (cart_id, customer_id) = match &self.cart {
            CartRef::Session(c) => (Some(c.to_string()), None),
            CartRef::Customer(c) => (None, Some(c.to_string())),
        };
        SessionView {
            session_id: self.id.to_string(),
            state: self.state.name().to_owned(),
            cart_id,
            customer_id,
            total: self.total,
            expires_at: rfc3339_millis(self.deadline_ms),
            history: history_view(&self.history),
            payment_intent_id: self.intent.clone(),
            order_id: self.order.clone(),
            refund_required: self.refund.clone(),
            quote,
        }
    }
}

/// The stored history as the API shows it: `at` in RFC 3339.
fn history_view(stored: &str) -> Vec<Value> {
    serde_json::from_str::<Vec<Value>>(stored)
        .unwrap_or_default()
        .into_iter()
        .map(|h| json!({ "state": h["state"], "at": rfc3339_millis(h["at"].as_i64().unwrap_or(0)) }))
        .collect()
}

/// `session:<cart>` / `customer:<id>`: how a session names its cart.
pub(super) fn cart_ref_text(cart: &CartRef) -> String {
    match cart {
        CartRef::Session(c) => format!("session:{c}"),
        CartRef::Customer(c) => format!("customer:{c}"),
    }
}

pub(crate) fn parse_cart_ref(text: &str) -> Option<CartRef> {
    match text.split_once(':')? {
        ("session", id) => CartId::parse(id).ok().map(CartRef::Session),
        ("customer", id) => CustomerId::parse(id).ok().map(CartRef::Customer),
        _ => None,
    }
}

/// A session script reply: its tag and the session.
pub(super) fn parse_session(reply: &[RedisReply]) -> Result<(String, Option<Session>)> {
    let (tag, session, _) = parse_session_with(reply, 0)?;
    Ok((tag, session))
}

/// A session script reply that also carries the values of `extras` keys asked for with it
/// (`session.lua`): its tag, the session, and each extra value (`None`: the key had none).
pub(super) fn parse_session_with(
    reply: &[RedisReply],
    extras: usize,
) -> Result<(String, Option<Session>, Vec<Option<String>>)> {
    let tag = reply
        .first()
        .and_then(RedisReply::as_text)
        .unwrap_or("")
        .to_owned();
    if reply.len() < 2 {
        return Ok((tag, None, vec![None; extras]));
    }
    let bad = || {
        Error::Internal(format!(
            "malformed checkout session reply ({} parts)",
            reply.len()
        ))
    };
    let values = reply.get(1..1 + extras).ok_or_else(bad)?;
    let extra = values.iter().map(|v| v.as_text().map(str::to_owned)).collect();
    let pairs = &reply[1 + extras..];
    if pairs.len() % 2 != 0 {
        return Err(bad());
    }
    let text = |field: &str| {
        pairs
            .chunks_exact(2)
            .find(|pair| pair[0].as_text() == Some(field))
            .and_then(|pair| pair[1].as_text())
    };
    let int = |field: &str| text(field).and_then(|s| s.parse::<i64>().ok());
    let session = Session {
        id: text("id")
            .and_then(|s| SessionId::parse(s).ok())
            .ok_or_else(bad)?,
        cart: text("cart").and_then(parse_cart_ref).ok_or_else(bad)?,
        state: text("state").and_then(State::parse).ok_or_else(bad)?,
        version: int("version").ok_or_else(bad)?,
        deadline_ms: int("deadline").ok_or_else(bad)?,
        total: Money::new(
            int("total").ok_or_else(bad)?,
            text("currency")
                .and_then(|c| Currency::parse(c).ok())
                .ok_or_else(bad)?,
        ),
        history: text("history").unwrap_or("[]").to_owned(),
        intent: text("intent").map(str::to_owned),
        order: text("order").map(str::to_owned),
        refund: text("refund").map(str::to_owned),
        releasing: text("releasing").is_some(),
        released_in_postgres: text("releasing") == Some("postgres"),
    };
    Ok((tag, Some(session), extra))
}

pub(super) fn checkout_not_found(session: &SessionId) -> Error {
    Error::not_found(
        ErrorCode::CheckoutNotFound,
        format!("no checkout session {session}"),
    )
}

pub(super) fn wrong_state(session: &Session, doing: &str) -> Error {
    Error::Conflict {
        code: ErrorCode::CheckoutState,
        message: format!("cannot {doing}: the checkout is {}", session.state),
        details: json!({ "sessionId": session.id.as_str(), "state": session.state.name() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> RedisReply {
        RedisReply::Bytes(text.as_bytes().to_vec())
    }

    fn reply(tag: &str, extras: &[Option<&str>], pairs: &[(&str, &str)]) -> Vec<RedisReply> {
        let mut out = vec![bulk(tag)];
        out.extend(extras.iter().map(|e| e.map_or(RedisReply::Nil, bulk)));
        for (field, value) in pairs {
            out.extend([bulk(field), bulk(value)]);
        }
        out
    }

    const SESSION: [(&str, &str); 8] = [
        ("id", "cs_1"),
        ("cart", "session:c1"),
        ("state", "PAYMENT_PENDING"),
        ("version", "3"),
        ("deadline", "1000"),
        ("total", "1999"),
        ("currency", "EUR"),
        (
            "history",
            r#"[{"state":"CREATED","at":0},{"state":"LOCKED","at":1}]"#,
        ),
    ];

    #[test]
    fn a_flat_reply_reads_back_the_session_and_the_extra_values_in_order() {
        let mut pairs = SESSION.to_vec();
        pairs.push(("intent", "pi_1"));
        let (tag, session, extras) =
            parse_session_with(&reply("OK", &[None, Some("{}")], &pairs), 2).unwrap();
        let session = session.unwrap();
        assert_eq!(tag, "OK");
        assert_eq!(extras, vec![None, Some("{}".to_owned())]);
        assert_eq!(session.id.as_str(), "cs_1");
        assert_eq!(session.state, State::PaymentPending);
        assert_eq!(
            (session.version, session.deadline_ms, session.total.minor),
            (3, 1000, 1999)
        );
        assert_eq!(session.intent.as_deref(), Some("pi_1"));
        assert_eq!(session.order, None);
        let history = session.view(None).history;
        assert_eq!(history.len(), 2);
        assert_eq!(
            history[1],
            json!({ "state": "LOCKED", "at": "1970-01-01T00:00:00.001Z" })
        );
    }

    #[test]
    fn no_session_reads_as_none_and_a_broken_reply_is_an_error() {
        let (tag, session, extras) = parse_session_with(&reply("NOT_FOUND", &[], &[]), 1).unwrap();
        assert_eq!(
            (tag.as_str(), session.is_none(), extras),
            ("NOT_FOUND", true, vec![None])
        );
        let mut odd = reply("OK", &[], &SESSION);
        odd.pop();
        assert!(parse_session_with(&odd, 0).is_err(), "a field without its value");
        let missing: Vec<_> = SESSION.iter().copied().filter(|(f, _)| *f != "state").collect();
        assert!(
            parse_session_with(&reply("OK", &[], &missing), 0).is_err(),
            "no state"
        );
    }
}
