//! Checkout: lock the cart, freeze the quote, reserve the stock, take the payment, write
//! the order — exactly once (DESIGN §4, invariants 4 and 5).
//!
//! Every transition is a compare-and-set script on `checkout:session:{S}`, from the states
//! [`state::State::sources`] allows. Each step after payment is idempotent and the state
//! records how far the work got, so a duplicate webhook, a retry, or a crash between any
//! two steps resumes from the state it finds and ends in exactly one order:
//! PAYMENT_CONFIRMED → order written in PostgreSQL (unique per session) → ORDER_CREATED →
//! holds committed in Redis (each change once) → cart emptied, lock released → COMPLETED.

pub mod gateway;
mod order;
pub mod paid;
pub mod routes;
pub mod state;

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use self::state::State;
use crate::app::App;
use crate::auth;
use crate::cart::{self, CartLine, CartRef, Carts};
use crate::clock::rfc3339_millis;
use crate::error::{Error, PortError, Result};
use crate::ids::{CartId, CustomerId, Quantity, VariantId};
use crate::inventory::{Holder, Inventory};
use crate::metrics::{self, Event};
use crate::outbox;
use crate::ports::{Http, Redis, RedisArg, RedisReply, Sql};
use crate::pricing::money::Currency;
use crate::pricing::quote::{cart_quote_lines, price_lines};
use crate::script::{Script, tag, unexpected};

static LOCK: Script = Script::new(concat!(
    include_str!("../cart/cart.lua"),
    include_str!("lock.lua")
));
static UNLOCK: Script = Script::new(include_str!("unlock.lua"));
static EMPTY_CART: Script = Script::new(include_str!("empty_cart.lua"));
static CREATE: Script = Script::new(concat!(include_str!("session.lua"), include_str!("create.lua")));
static GET: Script = Script::new(concat!(include_str!("session.lua"), include_str!("get.lua")));
static TRANSITION: Script = Script::new(concat!(
    include_str!("session.lua"),
    include_str!("transition.lua")
));
static FLAG_REFUND: Script = Script::new(concat!(
    include_str!("session.lua"),
    include_str!("flag_refund.lua")
));
static RESTORE: Script = Script::new(concat!(include_str!("session.lua"), include_str!("restore.lua")));

/// How long a session record is kept after its deadline (to answer GETs and late webhooks).
const KEEP_MS: i64 = 24 * 60 * 60 * 1000;
/// How long a payment intent is kept (seed `PAYMENT_INTENT`).
const INTENT_TTL_MS: i64 = 24 * 60 * 60 * 1000;

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
    /// The frozen total, minor units.
    pub total: i64,
    /// Its currency.
    pub currency: String,
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
struct Session {
    id: CartId,
    cart: CartRef,
    state: State,
    version: i64,
    deadline_ms: i64,
    total: i64,
    currency: String,
    history: Vec<Value>,
    intent: Option<String>,
    order: Option<String>,
    refund: Option<String>,
}

impl Session {
    fn view(&self, quote: Option<Value>) -> SessionView {
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
            currency: self.currency.clone(),
            expires_at: rfc3339_millis(self.deadline_ms),
            history: self.history.clone(),
            payment_intent_id: self.intent.clone(),
            order_id: self.order.clone(),
            refund_required: self.refund.clone(),
            quote,
        }
    }
}

/// `session:<cart>` / `customer:<id>`: how a session names its cart.
fn cart_ref_text(cart: &CartRef) -> String {
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
fn parse_session(reply: &[RedisReply]) -> Result<(String, Option<Session>)> {
    let tag = reply
        .first()
        .and_then(RedisReply::as_text)
        .unwrap_or("")
        .to_owned();
    let Some(json) = reply.get(1).and_then(RedisReply::as_text) else {
        return Ok((tag, None));
    };
    let bad = || Error::Internal(format!("malformed checkout session: {json}"));
    let v: Value = serde_json::from_str(json).map_err(|_| bad())?;
    let text = |k: &str| v[k].as_str().map(str::to_owned);
    let int = |k: &str| text(k).and_then(|s| s.parse::<i64>().ok());
    let history = text("history")
        .and_then(|h| serde_json::from_str::<Vec<Value>>(&h).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|h| json!({ "state": h["state"], "at": rfc3339_millis(h["at"].as_i64().unwrap_or(0)) }))
        .collect();
    let session = Session {
        id: text("id").and_then(|s| CartId::parse(&s).ok()).ok_or_else(bad)?,
        cart: text("cart").and_then(|c| parse_cart_ref(&c)).ok_or_else(bad)?,
        state: text("state").and_then(|s| State::parse(&s)).ok_or_else(bad)?,
        version: int("version").ok_or_else(bad)?,
        deadline_ms: int("deadline").ok_or_else(bad)?,
        total: int("total").ok_or_else(bad)?,
        currency: text("currency").ok_or_else(bad)?,
        history,
        intent: text("intent"),
        order: text("order"),
        refund: text("refund"),
    };
    Ok((tag, Some(session)))
}

fn checkout_not_found(session: &CartId) -> Error {
    Error::not_found("CHECKOUT_NOT_FOUND", format!("no checkout session {session}"))
}

fn wrong_state(session: &Session, doing: &str) -> Error {
    Error::Conflict {
        code: "CHECKOUT_STATE",
        message: format!("cannot {doing}: the checkout is {}", session.state),
        details: json!({ "sessionId": session.id.as_str(), "state": session.state.name() }),
    }
}

/// Units per variant that a cart's lines take from stock: direct lines and bundle parts
/// summed per variant, so a variant wanted twice is checked against stock once, in full.
pub fn demand(lines: &[CartLine]) -> Result<Vec<(VariantId, Quantity)>> {
    let mut units: BTreeMap<VariantId, i64> = BTreeMap::new();
    for line in lines {
        let d = &line.definition;
        let parts: Vec<&str> = match d["variantId"].as_str() {
            Some(v) => vec![v],
            None => d["choices"]
                .as_object()
                .into_iter()
                .flat_map(|sets| sets.values())
                .flat_map(|chosen| chosen.as_array().into_iter().flatten())
                .filter_map(Value::as_str)
                .collect(),
        };
        for part in parts {
            *units.entry(VariantId::parse(part)?).or_default() += line.quantity;
        }
    }
    units
        .into_iter()
        .map(|(variant, n)| {
            let quantity = Quantity::new(n).map_err(|_| Error::Unprocessable {
                code: "CART_LIMIT",
                message: format!("the cart takes {n} units of {variant}, more than one checkout may"),
                details: json!({ "variantId": variant.as_str() }),
            })?;
            Ok((variant, quantity))
        })
        .collect()
}

/// The units per variant a session froze at its start (what it holds and will take).
pub(crate) fn frozen_demand(metadata: &Value) -> Result<Vec<(VariantId, Quantity)>> {
    let entries = metadata["demand"].as_array().into_iter().flatten();
    entries
        .map(|d| {
            let variant = d[0].as_str().and_then(|v| VariantId::parse(v).ok());
            let quantity = d[1].as_i64().and_then(|q| Quantity::new(q).ok());
            variant
                .zip(quantity)
                .ok_or_else(|| Error::Internal(format!("malformed frozen demand: {d}")))
        })
        .collect()
}

/// The checkout store over an app's ports.
pub struct Checkouts<'a, R, S, H> {
    app: &'a App<R, S, H>,
}

impl<'a, R: Redis, S: Sql, H: Http> Checkouts<'a, R, S, H> {
    /// The store.
    pub fn new(app: &'a App<R, S, H>) -> Self {
        Self { app }
    }

    fn inventory(&self) -> Inventory<'a, R, S> {
        Inventory::new(&self.app.redis, &self.app.sql, &self.app.keys)
    }

    fn carts(&self) -> Carts<'a, R> {
        Carts::new(&self.app.redis, &self.app.keys, &self.app.settings)
    }

    fn lock_ttl_ms(&self) -> i64 {
        i64::from(self.app.settings.checkout_lock_ttl_seconds) * 1000
    }

    fn session_ttl_ms(&self) -> i64 {
        i64::from(self.app.settings.checkout_session_ttl_seconds) * 1000
    }

    fn grace_ms(&self) -> i64 {
        i64::from(self.app.settings.hold_grace_seconds) * 1000
    }

    /// Holds the frozen demand for the session for `ttl_ms` plus the grace period, and
    /// returns the session's deadline: the holds' deadline, read once from the Redis clock,
    /// less the grace. So the holds always outlive the session (DESIGN §4, invariant 2).
    async fn hold(&self, session: &CartId, demand: &[(VariantId, Quantity)], ttl_ms: i64) -> Result<i64> {
        let held = self
            .inventory()
            .reserve(
                &Holder::Checkout(session.clone()),
                demand,
                ttl_ms + self.grace_ms(),
            )
            .await?;
        let stock_keys: Vec<String> = demand
            .iter()
            .map(|(v, _)| self.app.keys.variant(v).stock)
            .collect();
        self.app
            .replicated(&stock_keys.iter().map(String::as_str).collect::<Vec<_>>())
            .await?;
        Ok(held.deadline_ms - self.grace_ms())
    }

    async fn run(&self, script: &Script, keys: &[&str], args: Vec<RedisArg>) -> Result<Vec<RedisReply>> {
        script
            .run(&self.app.redis, keys, args)
            .await
            .map_err(PortError::redis)
    }

    /// Starts a checkout of `cart` as session `cs_<token>`: locks the cart, freezes its
    /// quote and ruleset versions, and holds every unit it needs until the lock's deadline
    /// (`checkout_lock_ttl_seconds`). A second live checkout of the cart is 409 naming it;
    /// short stock is 409 with the variants, and the lock is released. Run again with the
    /// same token (a retry), it continues the same session.
    pub async fn start(
        &self,
        cart: &CartRef,
        token: &str,
        customer_group: Option<String>,
    ) -> Result<SessionView> {
        let session = CartId::parse(&format!("cs_{token}"))?;
        let carts = self.carts();
        let (cart_key, lock_key) = (carts.key(cart), carts.lock_key(cart));
        let locked = self
            .run(
                &LOCK,
                &[&cart_key, &lock_key],
                vec![session.as_str().into(), RedisArg::Int(self.lock_ttl_ms())],
            )
            .await?;
        match tag(&locked) {
            "OK" => {}
            "HELD" => {
                let holder = locked
                    .get(1)
                    .and_then(RedisReply::as_text)
                    .unwrap_or("")
                    .to_owned();
                return Err(Error::Conflict {
                    code: "CHECKOUT_IN_PROGRESS",
                    message: format!("the cart is already being checked out by session {holder}"),
                    details: json!({ "sessionId": holder }),
                });
            }
            "NO_CART" | "EMPTY" => {
                return Err(Error::Conflict {
                    code: "CART_EMPTY",
                    message: "there is nothing in the cart to check out".into(),
                    details: Value::Null,
                });
            }
            "MERGED" => {
                return Err(Error::Conflict {
                    code: "CART_MERGED",
                    message: "the cart has been merged into a customer's cart".into(),
                    details: Value::Null,
                });
            }
            _ => return Err(unexpected(&locked)),
        }
        match self
            .freeze_and_hold(cart, &session, &locked, customer_group)
            .await
        {
            Ok(view) => Ok(view),
            Err(error) => {
                // Refused (short stock, prices): nothing may stay held for this session. A
                // dependency failure keeps the lock for the retry that resumes the session.
                if error.status() < 500 {
                    self.unlock(&lock_key, &session).await?;
                }
                Err(error)
            }
        }
    }

    async fn freeze_and_hold(
        &self,
        cart: &CartRef,
        session: &CartId,
        locked: &[RedisReply],
        customer_group: Option<String>,
    ) -> Result<SessionView> {
        let (view, lines) = cart::decode_with_lines(cart, locked)?;
        let currency = Currency::parse(&view.currency)?;
        let priced = price_lines(self.app, &cart_quote_lines(&lines)?, currency, customer_group).await?;
        let demand = demand(&lines)?;
        let deadline = self.hold(session, &demand, self.lock_ttl_ms()).await?;
        let definitions: serde_json::Map<String, Value> = lines
            .iter()
            .map(|l| (l.line_id.clone(), l.definition.clone()))
            .collect();
        let quote = serde_json::to_value(&priced).map_err(|e| Error::Internal(e.to_string()))?;
        let metadata = json!({
            "quote": quote,
            "definitions": definitions,
            "demand": demand.iter().map(|(v, q)| json!([v.as_str(), q.get()])).collect::<Vec<_>>(),
        });
        let (session_key, metadata_key) = (
            self.app.keys.checkout_session(session),
            self.app.keys.checkout_metadata(session),
        );
        let created = self
            .run(
                &CREATE,
                &[&session_key, &metadata_key],
                vec![
                    session.as_str().into(),
                    cart_ref_text(cart).into(),
                    RedisArg::Int(deadline),
                    RedisArg::Int(KEEP_MS),
                    RedisArg::Int(priced.quote.total_minor),
                    currency.as_str().into(),
                    metadata.to_string().into(),
                ],
            )
            .await?;
        let (tag, stored) = parse_session(&created)?;
        let stored = stored.ok_or_else(|| Error::Internal("session not created".into()))?;
        self.app.replicated(&[&session_key]).await?;
        // A retry finds the session of the first attempt: its frozen quote stands.
        let frozen = if tag == "EXISTS" {
            self.metadata(session).await?["quote"].clone()
        } else {
            quote
        };
        Ok(stored.view(Some(frozen)))
    }

    /// The session's frozen quote, definitions and demand: from Redis, or, if Redis lost
    /// them meanwhile (a flush between two calls of one request), from PostgreSQL's copy
    /// of a paid session. Neither: the session is gone (404).
    async fn metadata(&self, session: &CartId) -> Result<Value> {
        let key = self.app.keys.checkout_metadata(session);
        let reply = self
            .app
            .redis
            .execute("GET", vec![key.into()])
            .await
            .map_err(PortError::redis)?;
        if let Some(text) = reply.first().and_then(RedisReply::as_text) {
            return serde_json::from_str(text)
                .map_err(|_| Error::Internal(format!("checkout {session} has malformed frozen metadata")));
        }
        let kept = paid::load(&self.app.sql, session.as_str())
            .await?
            .ok_or_else(|| checkout_not_found(session))?;
        serde_json::from_str(&kept.metadata)
            .map_err(|_| Error::Internal(format!("checkout {session} has malformed metadata in PostgreSQL")))
    }

    async fn unlock(&self, lock_key: &str, session: &CartId) -> Result<()> {
        self.run(&UNLOCK, &[lock_key], vec![session.as_str().into(), "".into()])
            .await?;
        Ok(())
    }

    /// Releases what a session that ended without an order still holds: its stock holds
    /// and its cart's lock (owner-checked), and cancels its payment intent at the gateway
    /// (through the outbox) when `cancel_intent`. A paid session is first marked ended in
    /// PostgreSQL, so no reload puts its holds back. Idempotent.
    async fn release(&self, session: &Session, cancel_intent: bool) -> Result<()> {
        let mut known = Vec::new();
        let intent = match &session.intent {
            Some(intent) => Some(intent.clone()),
            None => self.stored_intent_id(&session.id).await?,
        };
        if let Some(intent) = intent {
            paid::end(&self.app.sql, session.id.as_str(), session.state.name()).await?;
            if cancel_intent {
                let reason = format!("the checkout is {}", session.state);
                outbox::enqueue_cancel(&self.app.sql, session.id.as_str(), &intent, &reason).await?;
                self.send_now(&intent).await;
            }
            if session.intent.is_some() {
                known = frozen_demand(&self.metadata(&session.id).await?)?
                    .into_iter()
                    .map(|(v, _)| v)
                    .collect();
            }
        }
        self.inventory()
            .release(&Holder::Checkout(session.id.clone()), &known)
            .await?;
        self.unlock(&self.carts().lock_key(&session.cart), &session.id)
            .await
    }

    /// Sends what the outbox owes for `intent` now, from the request that created the need.
    /// A gateway that does not take it now leaves the row pending for the drainers: the
    /// money is owed either way, so this never fails the request.
    async fn send_now(&self, intent: &str) {
        let _ = outbox::drain_intent(self.app, intent).await;
    }

    /// Refuses a caller who may not act on the session: a customer's session answers only
    /// that customer's token (or the admin token); an anonymous session's id is its
    /// capability.
    fn authorize(&self, session: &Session, authorization: Option<&str>) -> Result<()> {
        match &session.cart {
            CartRef::Session(_) => Ok(()),
            CartRef::Customer(customer) => {
                if self.app.settings.authorize_admin(authorization).is_ok() {
                    return Ok(());
                }
                auth::verify_customer(
                    authorization,
                    &self.app.settings.jwt_secret,
                    self.app.settings.token_time(),
                    customer,
                )
                .map(|_| ())
            }
        }
    }

    /// Reads a session; one past its deadline before payment is expired now and releases
    /// what it held.
    async fn load(&self, id: &CartId) -> Result<Session> {
        let key = self.app.keys.checkout_session(id);
        let reply = self.run(&GET, &[&key], Vec::new()).await?;
        let (tag, session) = parse_session(&reply)?;
        let session = session.ok_or_else(|| checkout_not_found(id))?;
        if tag == "EXPIRED_NOW" {
            ended(State::Expired);
            self.release(&session, true).await?;
        }
        Ok(session)
    }

    /// Moves a session to `to` (compare-and-set from the allowed sources), optionally with a
    /// new deadline (epoch ms, Redis clock) and fields. Returns the reply's tag and the
    /// session after it.
    async fn transition(
        &self,
        id: &CartId,
        to: State,
        deadline_ms: Option<i64>,
        fields: &[(&str, &str)],
    ) -> Result<(String, Session)> {
        let (key, metadata) = (
            self.app.keys.checkout_session(id),
            self.app.keys.checkout_metadata(id),
        );
        let sources: Vec<&str> = State::sources(to).into_iter().map(State::name).collect();
        let mut args = vec![
            to.name().into(),
            sources.join(",").into(),
            deadline_ms.map(|t| t.to_string()).unwrap_or_default().into(),
            RedisArg::Int(KEEP_MS),
        ];
        for (field, value) in fields {
            args.push((*field).into());
            args.push((*value).into());
        }
        let reply = self.run(&TRANSITION, &[&key, &metadata], args).await?;
        let (tag, session) = parse_session(&reply)?;
        let session = session.ok_or_else(|| checkout_not_found(id))?;
        self.app.replicated(&[&key]).await?;
        if tag == "OK" {
            ended(to);
        }
        if tag == "EXPIRED_NOW" {
            ended(State::Expired);
            self.release(&session, true).await?;
        }
        Ok((tag, session))
    }

    /// The session, with its frozen quote, for a caller the session answers.
    pub async fn get(&self, id: &CartId, authorization: Option<&str>) -> Result<SessionView> {
        let session = self.load(id).await?;
        self.authorize(&session, authorization)?;
        let quote = self.metadata(id).await.ok().map(|m| m["quote"].clone());
        Ok(session.view(quote))
    }

    /// Cancels a session before payment: holds and lock released, its intent (if any)
    /// cancelled at the gateway. After payment, 409.
    pub async fn cancel(&self, id: &CartId, authorization: Option<&str>) -> Result<SessionView> {
        let session = self.load(id).await?;
        self.authorize(&session, authorization)?;
        let (tag, session) = self.transition(id, State::Cancelled, None, &[]).await?;
        match tag.as_str() {
            "OK" | "SAME" => {
                self.release(&session, true).await?;
                Ok(session.view(None))
            }
            _ => Err(wrong_state(&session, "cancel")),
        }
    }

    /// Creates the payment intent for the frozen total with the gateway (idempotent: the
    /// gateway sees the same idempotency key for the session every time), extends the holds
    /// and the lock to the session's lifetime, keeps the paid session in PostgreSQL, and
    /// moves the session to PAYMENT_PENDING.
    pub async fn payment_intent(&self, id: &CartId, authorization: Option<&str>) -> Result<Value> {
        let session = self.load(id).await?;
        self.authorize(&session, authorization)?;
        match session.state {
            State::Locked | State::PaymentPending => {}
            _ if session.intent.is_some() && !session.state.is_terminal() => {}
            _ => return Err(wrong_state(&session, "take a payment")),
        }
        let intent_key = self.app.keys.payment_intent(id);
        let stored = self
            .app
            .redis
            .execute("GET", vec![intent_key.as_str().into()])
            .await
            .map_err(PortError::redis)?;
        let intent: Value = match stored.first().and_then(RedisReply::as_text) {
            Some(text) => {
                serde_json::from_str(text).map_err(|_| Error::Internal("malformed stored intent".into()))?
            }
            None => {
                let currency = Currency::parse(&session.currency)?;
                let created = gateway::create_intent(
                    &self.app.http,
                    &self.app.settings.payment_gateway_url,
                    &self.app.settings.payment_gateway_key,
                    id.as_str(),
                    session.total,
                    currency,
                    &format!("checkout-{id}"),
                )
                .await?;
                let intent = serde_json::to_value(&created).map_err(|e| Error::Internal(e.to_string()))?;
                self.app
                    .redis
                    .execute(
                        "SET",
                        vec![
                            intent_key.as_str().into(),
                            intent.to_string().into(),
                            "NX".into(),
                            "PX".into(),
                            RedisArg::Int(INTENT_TTL_MS),
                        ],
                    )
                    .await
                    .map_err(PortError::redis)?;
                intent
            }
        };
        let intent_id = intent["id"].as_str().unwrap_or_default().to_owned();
        let mut session = session;
        if session.state == State::Locked {
            // Hold stock and cart for the whole payment window: the holds first (their
            // deadline, less the grace, is the session's), then PostgreSQL's copy, then the
            // session, so at every moment the holds outlive the session.
            let metadata = self.metadata(id).await?;
            let demand = frozen_demand(&metadata)?;
            let deadline = self.hold(id, &demand, self.session_ttl_ms()).await?;
            let cart_ref = cart_ref_text(&session.cart);
            let customer = match &session.cart {
                CartRef::Customer(c) => Some(c.as_str()),
                CartRef::Session(_) => None,
            };
            paid::save(
                &self.app.sql,
                &paid::PaidSession {
                    id: id.as_str(),
                    cart_ref: &cart_ref,
                    customer,
                    total: session.total,
                    currency: &session.currency,
                    intent_id: &intent_id,
                    intent: &intent,
                    deadline_ms: deadline,
                    holds_deadline_ms: deadline + self.grace_ms(),
                    metadata: &metadata,
                    demand: &demand,
                },
            )
            .await?;
            let lock_key = self.carts().lock_key(&session.cart);
            self.run(
                &UNLOCK,
                &[&lock_key],
                vec![
                    id.as_str().into(),
                    RedisArg::Int(self.session_ttl_ms() + self.grace_ms()),
                ],
            )
            .await?;
            let (tag, moved) = self
                .transition(
                    id,
                    State::PaymentPending,
                    Some(deadline),
                    &[("intent", &intent_id)],
                )
                .await?;
            if !matches!(tag.as_str(), "OK" | "SAME") && moved.state != State::PaymentPending {
                return Err(wrong_state(&moved, "take a payment"));
            }
            session = moved;
        }
        Ok(json!({
            "sessionId": id.as_str(),
            "state": session.state.name(),
            "paymentIntentId": intent_id,
            "clientSecret": intent["clientSecret"],
            "amount": session.total,
            "currency": session.currency,
            "expiresAt": rfc3339_millis(session.deadline_ms),
        }))
    }

    /// Handles a verified gateway event. A confirmed payment places the order (or resumes
    /// placing it); a payment that can no longer become an order is refunded; a failed
    /// payment of the session's own intent ends the session and releases what it held.
    pub async fn handle_event(&self, event: &gateway::WebhookEvent) -> Result<Value> {
        let Some(id) = event.session_id.as_deref() else {
            return Ok(json!({ "received": true, "ignored": "the payment has no checkout session" }));
        };
        let id = CartId::parse(id)?;
        match &event.kind {
            gateway::EventKind::PaymentSucceeded => self.confirm(&id, event).await,
            gateway::EventKind::PaymentFailed => self.payment_failed(&id, event).await,
            gateway::EventKind::Other(kind) => Ok(json!({ "received": true, "ignored": kind })),
        }
    }

    async fn payment_failed(&self, id: &CartId, event: &gateway::WebhookEvent) -> Result<Value> {
        let session = match self.load(id).await {
            Ok(session) => session,
            Err(Error::NotFound { .. }) => {
                return Ok(json!({ "received": true, "ignored": "unknown session" }));
            }
            Err(other) => return Err(other),
        };
        // Only the session's own intent speaks for it: a failure of any other intent (an
        // old one, or one forged into the metadata of another payment) changes nothing.
        let own = match &session.intent {
            Some(intent) => intent.clone(),
            None => self.stored_intent_id(id).await?.unwrap_or_default(),
        };
        // Once the payment is confirmed, a late failure event of the same intent (events
        // arrive out of order) changes nothing either.
        if own != event.intent_id || !session.state.is_before_payment() {
            return Ok(json!({
                "received": true,
                "sessionId": id.as_str(),
                "state": session.state.name(),
                "ignored": "the failure is not of this session's pending intent",
            }));
        }
        let (tag, session) = self.transition(id, State::Failed, None, &[]).await?;
        if matches!(tag.as_str(), "OK" | "SAME") {
            self.release(&session, true).await?;
        }
        Ok(json!({ "received": true, "sessionId": id.as_str(), "state": session.state.name() }))
    }

    /// The id of the intent created for the session, if any.
    async fn stored_intent_id(&self, id: &CartId) -> Result<Option<String>> {
        let stored = self
            .app
            .redis
            .execute("GET", vec![self.app.keys.payment_intent(id).into()])
            .await
            .map_err(PortError::redis)?;
        Ok(stored
            .first()
            .and_then(RedisReply::as_text)
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .and_then(|v| v["id"].as_str().map(str::to_owned)))
    }

    /// The session from Redis, or, if Redis lost it, put back from PostgreSQL's copy of a
    /// paid session. `None`: neither knows it.
    async fn load_or_restore(&self, id: &CartId) -> Result<Option<Session>> {
        match self.load(id).await {
            Ok(session) => return Ok(Some(session)),
            Err(Error::NotFound { .. }) => {}
            Err(other) => return Err(other),
        }
        let Some(kept) = paid::load(&self.app.sql, id.as_str()).await? else {
            return Ok(None);
        };
        let state = kept
            .ended_state
            .as_deref()
            .unwrap_or(State::PaymentPending.name());
        let keys = [
            self.app.keys.checkout_session(id),
            self.app.keys.checkout_metadata(id),
            self.app.keys.payment_intent(id),
        ];
        let reply = self
            .run(
                &RESTORE,
                &[&keys[0], &keys[1], &keys[2]],
                vec![
                    id.as_str().into(),
                    kept.cart_ref.as_str().into(),
                    RedisArg::Int(kept.deadline_ms),
                    RedisArg::Int(KEEP_MS),
                    RedisArg::Int(kept.total),
                    kept.currency.as_str().into(),
                    kept.metadata.as_str().into(),
                    kept.intent_id.as_str().into(),
                    kept.intent.as_str().into(),
                    state.into(),
                ],
            )
            .await?;
        let (tag, session) = parse_session(&reply)?;
        let session = session.ok_or_else(|| checkout_not_found(id))?;
        if tag == "EXPIRED_NOW" {
            ended(State::Expired);
            self.release(&session, true).await?;
        }
        Ok(Some(session))
    }

    async fn confirm(&self, id: &CartId, event: &gateway::WebhookEvent) -> Result<Value> {
        // Redis first: on the hot path the session is there, and nothing else is asked
        // before its deadline is checked.
        match self.load(id).await {
            Ok(session) => self.confirm_session(session, event).await,
            Err(Error::NotFound { .. }) => self.confirm_forgotten(id, event).await,
            Err(other) => Err(other),
        }
    }

    /// A payment for a session Redis does not have (lost, or long gone): an order that
    /// exists answers for its own payment, whatever Redis remembers; a paid session
    /// PostgreSQL keeps is put back and completed; any other payment goes back.
    async fn confirm_forgotten(&self, id: &CartId, event: &gateway::WebhookEvent) -> Result<Value> {
        if let Some((order_id, _, intent)) = order::find(&self.app.sql, id.as_str()).await? {
            if intent == event.intent_id {
                // Redis may have lost the session before the order's stock change reached
                // it: mirror it now (each change applies once, so a repeat changes nothing).
                let changes = order::changes_of(&self.app.sql, id.as_str()).await?;
                self.inventory()
                    .commit(&Holder::Checkout(id.clone()), &changes)
                    .await?;
                return Ok(json!({ "received": true, "sessionId": id.as_str(), "orderId": order_id }));
            }
            let mut answer = self
                .refund_unknown(id, event, "the checkout was already paid by another payment")
                .await?;
            answer["orderId"] = json!(order_id);
            return Ok(answer);
        }
        match self.load_or_restore(id).await? {
            Some(session) => self.confirm_session(session, event).await,
            None => self.refund_unknown(id, event, "unknown session").await,
        }
    }

    async fn confirm_session(&self, session: Session, event: &gateway::WebhookEvent) -> Result<Value> {
        let id = session.id.clone();
        let matches = event.amount == session.total
            && event.currency == session.currency
            && session.intent.as_deref().is_none_or(|i| i == event.intent_id);
        let reason = if !matches {
            Some("the payment does not match the checkout")
        } else if !session.state.is_terminal() || session.state == State::Completed {
            None
        } else {
            Some("the checkout had ended")
        };
        if let Some(reason) = reason {
            return self.refund(&session, event, reason).await;
        }
        let mut session = session;
        if session.state == State::Locked {
            // The intent was created but the move to PAYMENT_PENDING was lost (a crash).
            session = self
                .transition(&id, State::PaymentPending, None, &[("intent", &event.intent_id)])
                .await?
                .1;
        }
        if session.state == State::PaymentPending {
            // Past its deadline the session expires here instead: its units may have been
            // sold again, so the payment goes back rather than becoming an order.
            let (tag, moved) = self.transition(&id, State::PaymentConfirmed, None, &[]).await?;
            if tag == "EXPIRED_NOW" || moved.state.is_terminal() && moved.state != State::Completed {
                return self.refund(&moved, event, "the checkout had ended").await;
            }
            session = moved;
        }
        self.place_order(session, &event.intent_id, event).await
    }

    /// Refunds a payment the session cannot take (through the outbox, keyed by intent) —
    /// unless PostgreSQL has the order of this very payment, which stands whatever Redis
    /// remembers (a Redis restored from an older copy).
    async fn refund(&self, session: &Session, event: &gateway::WebhookEvent, reason: &str) -> Result<Value> {
        if let Some((order_id, _, intent)) = order::find(&self.app.sql, session.id.as_str()).await?
            && intent == event.intent_id
        {
            return Ok(json!({ "received": true, "sessionId": session.id.as_str(), "orderId": order_id }));
        }
        self.send_refund(&session.id, event, reason).await?;
        let key = self.app.keys.checkout_session(&session.id);
        self.run(
            &FLAG_REFUND,
            &[&key],
            vec![event.intent_id.as_str().into(), reason.into()],
        )
        .await?;
        Ok(
            json!({ "received": true, "sessionId": session.id.as_str(), "state": session.state.name(), "refundRequired": reason }),
        )
    }

    /// Refunds a payment for a session that neither Redis nor PostgreSQL can sell to.
    async fn refund_unknown(
        &self,
        id: &CartId,
        event: &gateway::WebhookEvent,
        reason: &str,
    ) -> Result<Value> {
        self.send_refund(id, event, reason).await?;
        Ok(json!({ "received": true, "sessionId": id.as_str(), "refundRequired": reason }))
    }

    /// Owes the payment back through the outbox (keyed by intent) and sends it now.
    async fn send_refund(&self, id: &CartId, event: &gateway::WebhookEvent, reason: &str) -> Result<()> {
        outbox::enqueue_refund(
            &self.app.sql,
            id.as_str(),
            &event.intent_id,
            event.amount,
            &event.currency,
            reason,
        )
        .await?;
        self.send_now(&event.intent_id).await;
        Ok(())
    }

    /// From PAYMENT_CONFIRMED (or wherever a crash left it) to COMPLETED; or, when on-hand
    /// cannot cover the order, to FAILED with the payment refunded.
    async fn place_order(
        &self,
        mut session: Session,
        intent: &str,
        event: &gateway::WebhookEvent,
    ) -> Result<Value> {
        let order_id = format!("ord_{}", session.id.as_str().trim_start_matches("cs_"));
        let mut changes = None;
        if session.state == State::PaymentConfirmed {
            let metadata = self.metadata(&session.id).await?;
            let demand = frozen_demand(&metadata)?;
            let customer = match &session.cart {
                CartRef::Customer(c) => Some(c.as_str()),
                CartRef::Session(_) => None,
            };
            let cart_ref = cart_ref_text(&session.cart);
            let written = order::write(
                &self.app.sql,
                &order::NewOrder {
                    id: &order_id,
                    session: session.id.as_str(),
                    state_version: session.version,
                    cart_ref: &cart_ref,
                    customer,
                    quote: &metadata["quote"],
                    definitions: &metadata["definitions"],
                    demand: &demand,
                    payment_intent: intent,
                },
            )
            .await?;
            match written {
                order::Written::Placed(written) => changes = Some(written),
                order::Written::Refused(shortages) => {
                    let (_, failed) = self.transition(&session.id, State::Failed, None, &[]).await?;
                    let reason = "on-hand stock could not cover the order";
                    let mut answer = self.refund(&failed, event, reason).await?;
                    self.release(&failed, false).await?;
                    answer["state"] = json!(failed.state.name());
                    answer["shortages"] = shortages;
                    return Ok(answer);
                }
            }
            session = self
                .transition(&session.id, State::OrderCreated, None, &[("order", &order_id)])
                .await?
                .1;
        }
        if session.state == State::OrderCreated {
            let changes = match changes {
                Some(c) => c,
                None => order::changes_of(&self.app.sql, session.id.as_str()).await?,
            };
            self.inventory()
                .commit(&Holder::Checkout(session.id.clone()), &changes)
                .await?;
            let carts = self.carts();
            let (cart_key, lock_key) = (carts.key(&session.cart), carts.lock_key(&session.cart));
            self.run(
                &EMPTY_CART,
                &[&cart_key, &lock_key],
                vec![session.id.as_str().into()],
            )
            .await?;
            session = self.transition(&session.id, State::Completed, None, &[]).await?.1;
        }
        if session.state != State::Completed {
            return Err(wrong_state(&session, "place the order"));
        }
        let order = order::find(&self.app.sql, session.id.as_str())
            .await?
            .map(|(id, _, _)| id);
        Ok(
            json!({ "received": true, "sessionId": session.id.as_str(), "state": session.state.name(), "orderId": order }),
        )
    }
}

/// Counts a session that reached a final state (`commerce_checkouts_ended_total`); any
/// other state counts nothing.
fn ended(state: State) {
    let event = match state {
        State::Completed => Event::CheckoutCompleted,
        State::Cancelled => Event::CheckoutCancelled,
        State::Expired => Event::CheckoutExpired,
        State::Failed => Event::CheckoutFailed,
        _ => return,
    };
    metrics::event(event);
}

/// The customer a checkout request acts for, from their token.
pub fn customer_of<R: Redis, S: Sql, H: Http>(
    app: &App<R, S, H>,
    authorization: Option<&str>,
) -> Result<auth::Customer> {
    auth::verify(authorization, &app.settings.jwt_secret, app.settings.token_time())
}
