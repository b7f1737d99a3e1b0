//! Checkout: lock the cart, freeze the quote, reserve the stock, take the payment, write
//! the order — exactly once (DESIGN §4, invariants 4 and 5).
//!
//! Every transition is a compare-and-set script on `checkout:session:{S}`, from the states
//! [`state::State::sources`] allows. Each step after payment is idempotent and the state
//! records how far the work got, so a duplicate webhook, a retry, or a crash between any
//! two steps resumes from the state it finds and ends in exactly one order:
//! PAYMENT_CONFIRMED → order written in PostgreSQL (unique per session) → ORDER_CREATED →
//! holds committed in Redis (each change once) → cart emptied, lock released → COMPLETED.
//!
//! One file a job, all methods of [`Checkouts`]:
//! - `routes.rs`: the routes, and which method answers each;
//! - `session.rs`: what a session is, as the API shows it and as Redis stores it
//!   (`session.lua`, the head of every session script);
//! - `start.rs`: starting a checkout (`lock.lua`, `create.lua`) and the units it takes;
//! - this file: reading, moving (`get.lua`, `transition.lua`), cancelling and releasing a
//!   session (`unlock.lua`);
//! - `payment.rs`: the payment intent;
//! - `events.rs`: the gateway's events, up to the order (`restore.lua`, `flag_refund.lua`,
//!   `empty_cart.lua`);
//! - `state.rs`: the state machine; `gateway/`: the gateway's wire format (the intent
//!   client and the webhook verifier); `order.rs` and `paid.rs`: the orders and the paid
//!   sessions in PostgreSQL.

mod events;
pub mod gateway;
mod order;
pub mod paid;
mod payment;
pub mod routes;
mod session;
mod start;
pub mod state;

use serde_json::Value;

pub use self::events::EventOutcome;
pub use self::payment::PaymentView;
pub use self::session::SessionView;
pub(crate) use self::session::parse_cart_ref;
use self::session::{Session, checkout_not_found, parse_session, parse_session_with, wrong_state};
pub use self::start::demand;
pub(crate) use self::start::frozen_demand;
use self::state::State;
use crate::app::App;
use crate::auth;
use crate::cart::{CartRef, Carts};
use crate::error::{Dependency, Error, Result};
use crate::ids::{Holder, Quantity, SessionId, VariantId};
use crate::inventory::Inventory;
use crate::metrics::{self, Event};
use crate::outbox;
use crate::ports::{Http, Redis, RedisArg, RedisReply, Sql, SqlValue};
use crate::script::{Script, lua, tag};

pub(crate) static UNLOCK: Script = Script::new(lua!("checkout/unlock.lua"));
static GET: Script = Script::new(lua!("checkout/session.lua", "checkout/get.lua"));
pub(crate) static TRANSITION: Script = Script::new(lua!("checkout/session.lua", "checkout/transition.lua"));
static RESTORE: Script = Script::new(lua!("checkout/session.lua", "checkout/restore.lua"));
static FORGET: Script = Script::new(lua!("checkout/forget.lua"));
static RELEASED_IN_POSTGRES: Script = Script::new(lua!("checkout/released_in_postgres.lua"));

/// PostgreSQL's live copies of sessions past their deadline (`$2`, epoch ms), the oldest
/// first; `$1` bounds the holds' deadline so the partial index of live sessions serves it.
const OVERDUE: &str = "\
SELECT id FROM checkout_sessions
WHERE ended_at IS NULL AND holds_deadline_ms < $1 AND deadline_ms < $2
ORDER BY holds_deadline_ms LIMIT $3";

/// Paid sessions ended (CANCELLED, EXPIRED, FAILED) more than `$1` ms ago whose release
/// never ran whole (its request cut short after the end was written), oldest first.
const CUT_SHORT: &str = "\
SELECT id FROM checkout_sessions
WHERE released_at IS NULL AND ended_state IS NOT NULL
  AND ended_at < now() - make_interval(secs => $1::bigint / 1000.0)
ORDER BY ended_at LIMIT $2";

/// The refund the outbox owes for the payment intent `$1`, if any.
const REFUND_OF: &str = "SELECT reason FROM payment_outbox WHERE kind = 'refund' AND payment_intent_id = $1";

/// How long a session record is kept after its deadline (to answer GETs and late webhooks).
const KEEP_MS: i64 = 24 * 60 * 60 * 1000;

/// The cart as a session froze it (its frozen metadata): its version then, its generation
/// (its `created`: which life of the cart's key) and when that version was written (its
/// `written`: a version number a rolled-back Redis gave again to other lines is another
/// cart). `None` where a session from before did not keep them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FrozenCart {
    pub(crate) version: Option<i64>,
    pub(crate) generation: Option<i64>,
    pub(crate) written: Option<String>,
}

impl FrozenCart {
    /// From the frozen metadata.
    pub(crate) fn of(metadata: &Value) -> Self {
        Self {
            version: metadata["cartVersion"].as_i64(),
            generation: metadata["cartGeneration"].as_i64(),
            written: metadata["cartWritten"].as_str().map(str::to_owned),
        }
    }

    /// From the frozen metadata's text, as Redis or PostgreSQL keeps it.
    pub(crate) fn of_text(metadata: &str) -> Self {
        serde_json::from_str::<Value>(metadata).map_or_else(|_| Self::default(), |m| Self::of(&m))
    }

    /// The same life of the cart's key, at whatever version.
    pub(crate) fn any_version(&self) -> Self {
        Self {
            generation: self.generation,
            ..Self::default()
        }
    }

    /// The script arguments of what was kept: version, generation, written ('' for each
    /// not kept).
    pub(crate) fn args(&self) -> [RedisArg; 3] {
        [
            or_empty(self.version),
            or_empty(self.generation),
            self.written.as_deref().unwrap_or("").into(),
        ]
    }
}

/// A frozen number for a script that reads '' as "not kept" (sessions from before it was).
pub(crate) fn or_empty(frozen: Option<i64>) -> RedisArg {
    frozen.map_or(RedisArg::from(""), RedisArg::Int)
}

/// What reading a session Redis shows paid does when PostgreSQL, asked whether its order
/// was written, cannot be reached.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Unreachable {
    /// A read shows what Redis has (the next call asks again).
    ShowsRedis,
    /// The read fails (503): its caller would need PostgreSQL next anyway.
    Fails,
}

/// A session as [`Checkouts::read`] met it: with the values of the keys asked with it, and
/// whether PostgreSQL was out of reach for a question the read asked of it (then the
/// caller does not ask again: a request answers within one timeout).
struct Met {
    session: Session,
    values: Vec<Option<String>>,
    postgres_down: bool,
}

/// What keeping a cart's lock for a session came to ([`Checkouts::take_lock_of`]).
pub(crate) enum LockTaken {
    /// The session holds it now.
    Held,
    /// Another session holds it (named).
    ByOther(String),
    /// The lock was free but the cart is no longer at the version the session locked (the
    /// version it is at now).
    CartMoved(String),
    /// The cart is another life of its key (built again after a Redis loss): its lock is
    /// not the session's business.
    OtherCart,
}

/// What [`Checkouts::relock`] did for a live session that lost its cart's lock.
pub(crate) enum Relocked {
    /// It holds the lock again.
    Taken,
    /// Its cart changed since it froze it (the version it is at now): it is cancelled.
    Cancelled(String),
    /// It moved on meanwhile (paid, ordered, ended: the state it is in now).
    MovedOn(State),
    /// PostgreSQL has its order: it is finished (COMPLETED).
    Ordered,
    /// The lock is another session's, or the cart another life of its key: left alone.
    Left,
}

/// What [`Checkouts::meet_lock_holder`] found of the session keeping a cart's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockHolder {
    /// It is over, and its lock is released: the caller may try the cart again.
    Ended,
    /// It is live (or the lock does not name a session): it keeps the lock.
    Live,
    /// Neither Redis nor PostgreSQL knows it: a start that crashed before creating it, or
    /// a Redis that lost it but kept the lock.
    Unknown,
}

/// The checkout store over an app's ports.
pub struct Checkouts<'a, R, S, H> {
    app: &'a App<R, S, H>,
    /// The intent a verified `payment_intent.succeeded` event says is paid, while that
    /// event is handled: a session that ends meanwhile (its deadline passed) does not ask
    /// the gateway to cancel it. A paid intent cannot be cancelled; its refund follows.
    paid: Option<String>,
}

impl<'a, R: Redis, S: Sql, H: Http> Checkouts<'a, R, S, H> {
    /// The store.
    pub fn new(app: &'a App<R, S, H>) -> Self {
        Self { app, paid: None }
    }

    fn inventory(&self) -> Inventory<'a, R, S> {
        Inventory::new(&self.app.redis, &self.app.sql, &self.app.keys)
    }

    fn carts(&self) -> Carts<'a, R> {
        Carts::of(self.app)
    }

    fn lock_ttl_ms(&self) -> i64 {
        i64::from(self.app.settings.checkout_lock_ttl_seconds) * 1000
    }

    /// How long a new session's cart lock lasts: as long as its holds (its deadline and the
    /// grace period), so a call that meets the cart after the deadline meets the session
    /// and expires it ([`Self::meet_lock_holder`]), rather than a second checkout holding
    /// the same units again while the first one's holds live on.
    fn lock_life_ms(&self) -> i64 {
        self.lock_ttl_ms() + self.grace_ms()
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
    async fn hold(&self, session: &SessionId, demand: &[(VariantId, Quantity)], ttl_ms: i64) -> Result<i64> {
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
        script.run(&self.app.redis, keys, args).await.map_err(Error::from)
    }

    /// The session's frozen quote, definitions and demand: from Redis, or, if Redis lost
    /// them meanwhile (a flush between two calls of one request), from PostgreSQL's copy
    /// of a paid session. Neither: the session is gone (404).
    async fn metadata(&self, session: &SessionId) -> Result<Value> {
        let stored = self.stored_metadata(session).await?;
        self.metadata_from(session, stored.as_deref()).await
    }

    /// The text Redis keeps of a session's frozen metadata, if any.
    async fn stored_metadata(&self, session: &SessionId) -> Result<Option<String>> {
        let key = self.app.keys.checkout_metadata(session);
        let reply = self.app.redis.execute("GET", vec![key.into()]).await?;
        Ok(reply.first().and_then(RedisReply::as_text).map(str::to_owned))
    }

    /// A session's frozen metadata where it can be had; `None` where it is lost to the
    /// session: in neither Redis (`stored`, the text Redis keeps) nor PostgreSQL, or kept
    /// in neither in a form that can be read. A dependency's failure (unreachable, or an
    /// error it answered) is an error: it says nothing of the metadata.
    async fn frozen_of(&self, session: &SessionId, stored: Option<&str>) -> Result<Option<Value>> {
        if let Some(text) = stored
            && let Ok(metadata) = serde_json::from_str(text)
        {
            return Ok(Some(metadata));
        }
        let kept = paid::load(&self.app.sql, session.as_str()).await?;
        Ok(kept.and_then(|kept| serde_json::from_str(&kept.metadata).ok()))
    }

    /// [`Self::metadata`] where the caller already read Redis's copy: `stored`, the text
    /// Redis keeps, or `None` where it had none (then PostgreSQL's copy, as for a copy
    /// Redis keeps damaged: a paid session's payment still ends in its order or refund).
    async fn metadata_from(&self, session: &SessionId, stored: Option<&str>) -> Result<Value> {
        if let Some(text) = stored
            && let Ok(metadata) = serde_json::from_str(text)
        {
            return Ok(metadata);
        }
        let kept = paid::load(&self.app.sql, session.as_str())
            .await?
            .ok_or_else(|| match stored {
                Some(_) => Error::Internal(format!("checkout {session} has malformed frozen metadata")),
                None => checkout_not_found(session),
            })?;
        serde_json::from_str(&kept.metadata)
            .map_err(|_| Error::Internal(format!("checkout {session} has malformed metadata in PostgreSQL")))
    }

    /// Releases a cart's lock if `session` holds it.
    async fn unlock(&self, lock_key: &str, session: &str) -> Result<()> {
        self.run(&UNLOCK, &[lock_key], vec![session.into(), "".into()])
            .await?;
        Ok(())
    }

    /// Keeps `cart`'s lock for `session` until `until_ms` (epoch ms, Redis clock): extended
    /// if the session holds it, taken back if nobody does (a lock lost while the session
    /// lives: deleted, a partial Redis loss), never taken from another session. With
    /// the cart as `frozen`: with its version, a lost lock is taken back only if the cart
    /// is still at that version, written when it was (a cart changed or ordered meanwhile,
    /// by a second checkout the lost lock let in, or a version number a rolled-back Redis
    /// gave again to other lines, is not the one the session froze); with its generation,
    /// a cart that is another life of its key (built again after a Redis loss) is left
    /// alone, its lock neither taken nor yielded to.
    pub(crate) async fn take_lock_of(
        &self,
        cart: &CartRef,
        session: &SessionId,
        until_ms: i64,
        frozen: &FrozenCart,
    ) -> Result<LockTaken> {
        let (keys, args) = self.take_lock_call(cart, session, until_ms, frozen);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        Ok(lock_taken(&self.run(&UNLOCK, &keys, args).await?))
    }

    /// `unlock.lua`'s keys and arguments for [`Self::take_lock_of`]: the lock, and the
    /// cart where the session kept how it froze it.
    fn take_lock_call(
        &self,
        cart: &CartRef,
        session: &SessionId,
        until_ms: i64,
        frozen: &FrozenCart,
    ) -> (Vec<String>, Vec<RedisArg>) {
        let carts = self.carts();
        let mut keys = vec![carts.lock_key(cart)];
        let mut args = vec![session.as_str().into(), RedisArg::Int(until_ms), "take".into()];
        if *frozen != FrozenCart::default() {
            keys.push(carts.key(cart));
            args.extend(frozen.args());
        }
        (keys, args)
    }

    /// Meets the session `holder` that keeps a cart's lock, as any call that meets it
    /// does: one past its deadline before payment expires now (freeing its holds and
    /// cancelling its intent, as a read would), and one that is over (so, or already)
    /// gives back its lock (owner-checked), which a crash may have left.
    pub(crate) async fn meet_lock_holder(&self, holder: &str) -> Result<LockHolder> {
        let Ok(id) = SessionId::parse(holder) else {
            return Ok(LockHolder::Live);
        };
        let session = match self.load(&id).await {
            Ok(session) => session,
            Err(Error::NotFound { .. }) => return Ok(LockHolder::Unknown),
            Err(other) => return Err(other),
        };
        let ended = session.state.is_terminal()
            || (session.state == State::Locked
                && self.frozen_lost(&id).await?
                && self.cancel_lost(&session).await?.state.is_terminal());
        if !ended {
            return Ok(LockHolder::Live);
        }
        self.unlock(&self.carts().lock_key(&session.cart), holder).await?;
        Ok(LockHolder::Ended)
    }

    /// Whether the session's frozen cart is lost: in neither Redis nor PostgreSQL (a
    /// partial Redis loss of a session that has no payment intent yet), or kept in a form
    /// that cannot be read. It is written with the session, in one script, so a session
    /// without it is not one being created.
    async fn frozen_lost(&self, id: &SessionId) -> Result<bool> {
        Ok(self.frozen(id).await?.is_none())
    }

    /// [`Self::frozen_of`] of what Redis keeps now.
    async fn frozen(&self, id: &SessionId) -> Result<Option<Value>> {
        let stored = self.stored_metadata(id).await?;
        self.frozen_of(id, stored.as_deref()).await
    }

    /// Cancels a LOCKED session whose frozen cart is lost ([`Self::frozen_lost`]): it can
    /// take no payment, and would keep its units and its cart's lock until its deadline.
    /// Its holds and lock are freed. Returns the session as it is now: cancelled, or what
    /// it moved on to meanwhile.
    async fn cancel_lost(&self, session: &Session) -> Result<Session> {
        let (moved, current) = self.transition(&session.id, State::Cancelled, None, &[]).await?;
        if matches!(moved.as_str(), "OK" | "SAME") {
            self.release(&current, true).await?;
        }
        Ok(current)
    }

    /// Ends the sessions waiting for a payment whose deadline passed with no call meeting
    /// them (a shopper who never came back): each is met now, as a read of it would meet
    /// it, so it expires, frees its holds and lock, and has its intent cancelled at the
    /// gateway. Candidates are PostgreSQL's live copies (every session with a payment
    /// intent has one) past their deadline by this process's clock; the expiry itself is
    /// decided by the session script on the Redis clock, as always. One left ended in
    /// Redis but live in PostgreSQL (a crash between the two) is ended there too, and one
    /// whose payment was confirmed but whose order was never written is ordered. So is one
    /// PostgreSQL shows ended whose release never ran whole (its request cut short after
    /// the end was written, longer ago than a request may run): its holds and lock are
    /// freed and its intent cancelled. At most `limit` sessions of each kind per call, the
    /// oldest first; returns how many it ended.
    pub async fn expire_overdue(&self, limit: i64) -> Result<u64> {
        let now = crate::clock::wall_clock_ms();
        let mut rows = self
            .app
            .sql
            .query(
                OVERDUE,
                &[
                    SqlValue::Int(now.saturating_add(self.grace_ms())),
                    SqlValue::Int(now),
                    SqlValue::Int(limit),
                ],
            )
            .await?;
        let request_ms = i64::try_from(self.app.settings.request_timeout_ms).unwrap_or(i64::MAX);
        rows.extend(
            self.app
                .sql
                .query(CUT_SHORT, &[SqlValue::Int(request_ms), SqlValue::Int(limit)])
                .await?,
        );
        let mut ended = 0;
        for row in rows {
            let Some(id) = row
                .first()
                .and_then(SqlValue::as_text)
                .and_then(|id| SessionId::parse(id).ok())
            else {
                continue;
            };
            let session = match self.load(&id).await {
                Ok(session) => session,
                Err(Error::NotFound { .. }) => continue,
                Err(other) => return Err(other),
            };
            // Releasing again is harmless (each step is idempotent) and ends PostgreSQL's
            // copy of one that Redis had ended before.
            if session.state.is_ended_without_order() {
                self.release_ended(&session).await?;
                ended += 1;
            } else if session.state == State::PaymentConfirmed {
                // Paid, with no order (its webhook's request cut short after the move, and no
                // delivery since): met now, as the next delivery would meet it, so it ends
                // in its order or its refund, never in neither.
                self.resume_confirmed(session).await?;
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// A session Redis shows confirmed whose paid copy PostgreSQL ended FAILED, its refund
    /// owed (the request that refunded it stopped before it moved Redis), is moved there
    /// too, its holds and lock freed. `None`: PostgreSQL has not ended it so.
    async fn fail_if_refunded(&self, session: &Session) -> Result<Option<Session>> {
        let kept = paid::load(&self.app.sql, session.id.as_str()).await?;
        if kept.and_then(|k| k.ended_state).as_deref() != Some(State::Failed.name()) {
            return Ok(None);
        }
        let guard = [("state", State::PaymentConfirmed.name())];
        let (tag, failed, _) = self
            .transition_with(&session.id, State::Failed, None, &[], &guard, &[])
            .await?;
        if matches!(tag.as_str(), "OK" | "SAME") {
            self.release(&failed, false).await?;
        }
        // The refund PostgreSQL owes, named on the session as its webhook would have.
        let Some(intent) = &failed.intent else {
            return Ok(Some(failed));
        };
        let owed = self
            .app
            .sql
            .query(REFUND_OF, &[SqlValue::Text(intent.clone())])
            .await?;
        let Some(reason) = owed.first().and_then(|r| r.first()?.as_text()) else {
            return Ok(Some(failed));
        };
        let key = self.app.keys.checkout_session(&failed.id);
        let flagged = self
            .run(
                &events::FLAG_REFUND,
                &[&key],
                vec![intent.as_str().into(), reason.into()],
            )
            .await?;
        Ok(parse_session_with(&flagged, 0)?.1.or(Some(failed)))
    }

    /// Whether the outbox owes a refund of the session's payment.
    async fn refund_owed(&self, session: &Session) -> Result<bool> {
        let Some(intent) = &session.intent else {
            return Ok(false);
        };
        let rows = self
            .app
            .sql
            .query(REFUND_OF, &[SqlValue::Text(intent.clone())])
            .await?;
        Ok(!rows.is_empty())
    }

    /// Now on the Redis clock, the one clock of every deadline (epoch ms).
    pub(super) async fn redis_now_ms(&self) -> Result<i64> {
        let reply = self.app.redis.execute("TIME", Vec::new()).await?;
        let part = |i: usize| reply.get(i).and_then(RedisReply::as_int);
        match (part(0), part(1)) {
            (Some(seconds), Some(micros)) => Ok(seconds * 1000 + micros / 1000),
            _ => Err(crate::script::unexpected(&reply)),
        }
    }

    /// Releases what a session that ended without an order still holds (or what a late
    /// request took again for one ordered meanwhile): its stock holds and its cart's lock
    /// (owner-checked), and cancels its payment intent at the gateway
    /// (through the outbox) when `cancel_intent`, unless that intent is the one whose
    /// payment is being handled. A paid session is first marked ended in PostgreSQL, so no
    /// reload puts its holds back. Idempotent.
    async fn release(&self, session: &Session, cancel_intent: bool) -> Result<()> {
        let mut known = Vec::new();
        let intent = match &session.intent {
            Some(intent) => Some(intent.clone()),
            None => self.stored_intent_id(&session.id).await?,
        };
        // PostgreSQL's part, unless an earlier release that was cut short did it: each
        // statement is idempotent, but under a slow PostgreSQL a release that ran them all
        // again every time could run past every request's deadline and never finish.
        if let Some(intent) = intent.as_ref().filter(|_| !session.released_in_postgres) {
            paid::end(&self.app.sql, session.id.as_str(), session.state.name()).await?;
            let cancel = cancel_intent && self.paid.as_deref() != Some(intent.as_str());
            if cancel {
                let reason = format!("the checkout is {}", session.state);
                outbox::enqueue_cancel(&self.app.sql, session.id.as_str(), intent, &reason).await?;
            }
            if session.releasing {
                let key = self.app.keys.checkout_session(&session.id);
                self.run(&RELEASED_IN_POSTGRES, &[&key], Vec::new()).await?;
            }
            if cancel {
                self.send_now(intent).await;
            }
        }
        // The variants it froze, besides its holder index (which a partial loss may have
        // taken): a paid session's from Redis or PostgreSQL, another's if they are there.
        let metadata = match session.intent {
            Some(_) => Some(self.metadata(&session.id).await?),
            None => self.metadata(&session.id).await.ok(),
        };
        if let Some(metadata) = metadata {
            known = frozen_demand(&metadata)?.into_iter().map(|(v, _)| v).collect();
        }
        self.inventory()
            .release(&Holder::Checkout(session.id.clone()), &known)
            .await?;
        self.unlock(&self.carts().lock_key(&session.cart), session.id.as_str())
            .await?;
        // Done: recorded in PostgreSQL (for the sweep) and in Redis (for a read) at once.
        let recorded = async {
            if intent.is_some() && session.state.is_ended_without_order() {
                paid::released(&self.app.sql, session.id.as_str()).await?;
            }
            Ok::<(), Error>(())
        };
        let unmarked = async {
            if session.releasing {
                let key = self.app.keys.checkout_session(&session.id);
                self.app
                    .redis
                    .execute("HDEL", vec![key.into(), "releasing".into()])
                    .await?;
            }
            Ok::<(), Error>(())
        };
        futures_util::future::try_join(Box::pin(recorded), Box::pin(unmarked)).await?;
        Ok(())
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
    async fn load(&self, id: &SessionId) -> Result<Session> {
        Ok(self.load_with(id, &[]).await?.0)
    }

    /// [`Self::load`] for a caller that goes on to write the session's order or refund:
    /// PostgreSQL out of reach fails it at once (503) rather than after a second timeout,
    /// the one of the write it would go on to (a request answers within one timeout of the
    /// dependency that failed).
    async fn load_to_write(&self, id: &SessionId) -> Result<Session> {
        Ok(self.read(id, &[], Unreachable::Fails).await?.session)
    }

    /// [`Self::load`], reading in the same round trip the values of `extras`: keys that
    /// carry the session's hash tag (one slot in a Cluster).
    async fn load_with(&self, id: &SessionId, extras: &[&str]) -> Result<(Session, Vec<Option<String>>)> {
        let met = self.read(id, extras, Unreachable::ShowsRedis).await?;
        Ok((met.session, met.values))
    }

    async fn read(&self, id: &SessionId, extras: &[&str], unreachable: Unreachable) -> Result<Met> {
        let key = self.app.keys.checkout_session(id);
        let keys: Vec<&str> = std::iter::once(key.as_str())
            .chain(extras.iter().copied())
            .collect();
        let reply = self.run(&GET, &keys, vec![before_payment()]).await?;
        let (tag, session, values) = match parse_session_with(&reply, extras.len())? {
            (tag, Some(session), values) => (tag, session, values),
            // Redis lost it (or never had it): a session with a payment intent comes back
            // from PostgreSQL's copy (DESIGN §4, invariant 8), and is then read as any other,
            // so it can be shown, cancelled, paid or expired as before the loss.
            (_, None, _) => {
                if !self.restore(id).await? {
                    return Err(checkout_not_found(id));
                }
                let reply = self.run(&GET, &keys, vec![before_payment()]).await?;
                let (tag, session, values) = parse_session_with(&reply, extras.len())?;
                (tag, session.ok_or_else(|| checkout_not_found(id))?, values)
            }
        };
        // A state Redis may remember from before the session's order (Redis older than
        // PostgreSQL): PostgreSQL's order decides. Sessions on their way (before payment,
        // COMPLETED) are not asked about.
        let unfinished = match session.state {
            State::PaymentConfirmed | State::OrderCreated => true,
            State::Expired | State::Cancelled | State::Failed => session.intent.is_some(),
            _ => tag == "EXPIRED_NOW",
        };
        let mut postgres_down = false;
        if unfinished {
            match self.finish_if_ordered(&session).await {
                Ok(Some(finished)) => {
                    return Ok(Met {
                        session: finished,
                        values,
                        postgres_down,
                    });
                }
                Ok(None) => {}
                // PostgreSQL out of reach: a read shows what Redis has, as it did before it
                // asked; the next call asks again. Expiring now needs PostgreSQL anyway.
                Err(Error::Unavailable { .. })
                    if tag != "EXPIRED_NOW" && unreachable == Unreachable::ShowsRedis =>
                {
                    postgres_down = true;
                }
                Err(other) => return Err(other),
            }
        }
        if tag == "EXPIRED_NOW" {
            ended(State::Expired);
            self.release(&session, true).await?;
        } else if session.releasing && session.state.is_ended_without_order() && !postgres_down {
            // Ended by a request cut short before it freed what the session held (or one
            // still at it: each step is idempotent). With PostgreSQL out of reach, a read
            // shows it as it is; the next call releases it.
            match self.release_ended(&session).await {
                Ok(()) => {}
                Err(Error::Unavailable { .. }) if unreachable == Unreachable::ShowsRedis => {
                    postgres_down = true;
                }
                Err(other) => return Err(other),
            }
        }
        Ok(Met {
            session,
            values,
            postgres_down,
        })
    }

    /// Releases an ended session (again: each step is idempotent), as the sweep and a read
    /// of one whose release was cut short do. One whose intent's payment is owed back in
    /// the outbox (a payment that came after its end, or a failed session's) has its intent
    /// paid, not to be cancelled; `refundRequired` alone does not say so, since it may name
    /// the refund of another intent's payment. Any other has its intent cancelled: one paid
    /// whose refund was never written (its request cut short before the refund) is
    /// refunded by the outbox instead, which finds the intent paid (unless it was ordered),
    /// and the cancel is refused.
    async fn release_ended(&self, session: &Session) -> Result<()> {
        // Past PostgreSQL's part, what is owed for its intent was decided then.
        let cancel = !session.released_in_postgres && !self.refund_owed(session).await?;
        self.release(session, cancel).await
    }

    /// A session Redis remembers from before its order was finished, whose order
    /// PostgreSQL has (Redis restored from a copy older than PostgreSQL: a backup, or an
    /// AOF that lost the last second after the webhook was answered) is finished as the
    /// webhook would have finished it: its stock mirrored, its cart emptied, COMPLETED;
    /// nothing is cancelled or refunded. One Redis has before its payment, or ended
    /// (expired, cancelled), is replaced by PostgreSQL's copy ([`Self::restore`], which
    /// finishes it). `None`: PostgreSQL has no order of the session's payment.
    async fn finish_if_ordered(&self, session: &Session) -> Result<Option<Session>> {
        let Some(intent) = &session.intent else {
            return Ok(None);
        };
        let order = match order::find(&self.app.sql, session.id.as_str()).await? {
            Some((order, _, ordered_with)) if &ordered_with == intent => order,
            _ if session.state == State::PaymentConfirmed => return self.fail_if_refunded(session).await,
            _ => return Ok(None),
        };
        let id = &session.id;
        if !matches!(
            session.state,
            State::PaymentConfirmed | State::OrderCreated | State::Completed
        ) {
            let key = self.app.keys.checkout_session(id);
            self.run(&FORGET, &[&key], vec![session.state.name().into()])
                .await?;
            self.restore(id).await?;
            let reply = self.run(&GET, &[&key], vec![before_payment()]).await?;
            return Ok(parse_session_with(&reply, 0)?.1);
        }
        let mut session = session.clone();
        if session.state == State::PaymentConfirmed {
            session = self
                .transition(id, State::OrderCreated, None, &[("order", &order)])
                .await?
                .1;
        }
        if session.state == State::OrderCreated {
            let frozen = FrozenCart::of(&self.metadata(id).await?);
            session = self.finish_order(&session, None, &frozen).await?;
        }
        Ok(Some(session))
    }

    /// Puts a session Redis lost back from PostgreSQL's copy (as the first call that meets
    /// it would, [`Self::restore`]): for `commerce check --repair`.
    pub(crate) async fn put_back(&self, id: &SessionId) -> Result<()> {
        self.load(id).await.map(drop)
    }

    /// Puts back a session Redis does not have from PostgreSQL's copy of a paid session:
    /// in the state it ended in, ORDER_CREATED if its order is written (then finished at
    /// once: COMPLETED), else PAYMENT_PENDING with its cart's lock; past its deadline it expires
    /// at once, releasing its holds and cancelling its intent. `false`: PostgreSQL keeps no
    /// such session.
    async fn restore(&self, id: &SessionId) -> Result<bool> {
        let Some(kept) = paid::load(&self.app.sql, id.as_str()).await? else {
            return Ok(false);
        };
        let state = match (&kept.ended_state, &kept.order) {
            (Some(ended), _) => ended.as_str(),
            (None, Some(_)) => State::OrderCreated.name(),
            (None, None) => State::PaymentPending.name(),
        };
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
                    RedisArg::Int(kept.total.minor),
                    kept.total.currency.as_str().into(),
                    kept.metadata.as_str().into(),
                    kept.intent_id.as_str().into(),
                    kept.intent.as_str().into(),
                    state.into(),
                    before_payment(),
                    kept.order.as_deref().unwrap_or("").into(),
                ],
            )
            .await?;
        let (tag, session) = parse_session(&reply)?;
        match (&session, tag.as_str()) {
            (Some(session), "EXPIRED_NOW") => {
                ended(State::Expired);
                self.release(session, true).await?;
            }
            // Still waiting for its payment: it takes its cart's lock back for as long as
            // the lock lasted (the holds' deadline), unless another session has the cart.
            // A cart built again after the loss is another cart: its lock is left to it.
            (Some(session), "OK") if session.state == State::PaymentPending => {
                let until = kept.deadline_ms + self.grace_ms();
                let frozen = FrozenCart::of_text(&kept.metadata);
                self.take_lock_of(&session.cart, id, until, &frozen).await?;
            }
            // Its order is written (its webhook may have been answered long ago): it is
            // finished now, as the webhook would have.
            (Some(session), "OK") if session.state == State::OrderCreated => {
                let frozen = FrozenCart::of_text(&kept.metadata);
                self.finish_order(session, None, &frozen).await?;
            }
            _ => {}
        }
        Ok(true)
    }

    /// Moves a session to `to` (compare-and-set from the allowed sources), optionally with a
    /// new deadline (epoch ms, Redis clock) and fields. Returns the reply's tag and the
    /// session after it.
    async fn transition(
        &self,
        id: &SessionId,
        to: State,
        deadline_ms: Option<i64>,
        fields: &[(&str, &str)],
    ) -> Result<(String, Session)> {
        let (tag, session, _) = self
            .transition_with(id, to, deadline_ms, fields, &[], &[])
            .await?;
        Ok((tag, session))
    }

    /// [`Self::transition`], refused (tag `GUARD`) unless each of `guards` (field, value)
    /// holds in the session, and reading in the same round trip the values of `extras`:
    /// keys that carry the session's hash tag.
    async fn transition_with(
        &self,
        id: &SessionId,
        to: State,
        deadline_ms: Option<i64>,
        fields: &[(&str, &str)],
        guards: &[(&str, &str)],
        extras: &[&str],
    ) -> Result<(String, Session, Vec<Option<String>>)> {
        let [key, metadata] = self.move_keys(id);
        let args = transition_args(to, deadline_ms, fields, guards);
        let keys: Vec<&str> = [key.as_str(), metadata.as_str()]
            .into_iter()
            .chain(extras.iter().copied())
            .collect();
        let reply = self.run(&TRANSITION, &keys, args).await?;
        let (tag, session, values) = moved_session(&reply, extras.len(), id)?;
        self.app.replicated(&[&key]).await?;
        self.moved(to, &tag, &session).await?;
        Ok((tag, session, values))
    }

    /// The keys every move of the session runs on (`transition.lua`'s first two): its
    /// record and its frozen metadata.
    fn move_keys(&self, id: &SessionId) -> [String; 2] {
        [
            self.app.keys.checkout_session(id),
            self.app.keys.checkout_metadata(id),
        ]
    }

    /// What follows a move to `to` that answered `tag`, the session after it as `session`:
    /// an end is counted, and a session that expired instead lets its holds and lock go.
    async fn moved(&self, to: State, tag: &str, session: &Session) -> Result<()> {
        if tag == "OK" {
            ended(to);
        }
        if tag == "EXPIRED_NOW" {
            ended(State::Expired);
            self.release(session, true).await?;
        }
        Ok(())
    }

    /// Meets a session as a read of it would (`commerce check --repair`): one Redis shows
    /// before its order's end whose order PostgreSQL has is finished. Its state after.
    pub(crate) async fn meet(&self, id: &SessionId) -> Result<State> {
        Ok(self.load(id).await?.state)
    }

    /// The session, with its frozen quote, for a caller the session answers.
    pub async fn get(&self, id: &SessionId, authorization: Option<&str>) -> Result<SessionView> {
        let met = self.read(id, &[], Unreachable::ShowsRedis).await?;
        self.authorize(&met.session, authorization)?;
        self.shown(met).await
    }

    /// A session as read, with its frozen quote (none where it could not be had).
    async fn shown(&self, met: Met) -> Result<SessionView> {
        let mut session = met.session;
        let id = &session.id;
        // PostgreSQL's copy of the frozen cart is not asked for when the read found
        // PostgreSQL out of reach: the view goes without its quote rather than wait again.
        let frozen = match met.postgres_down {
            false => self.frozen(id).await,
            true => self
                .stored_metadata(id)
                .await?
                .and_then(|text| serde_json::from_str(&text).ok())
                .map(Some)
                .ok_or_else(|| Error::Unavailable {
                    dependency: Dependency::Postgres.name(),
                    message: "the frozen cart is not in Redis, and PostgreSQL is out of reach".into(),
                }),
        };
        // One waiting for its payment intent that lost its frozen cart is ended when met,
        // as its payment intent would end it. A read that could not tell shows it as it is.
        if session.state == State::Locked && matches!(frozen, Ok(None)) {
            session = self.cancel_lost(&session).await?;
        }
        let quote = frozen.ok().flatten().map(|m| m["quote"].clone());
        Ok(session.view(quote))
    }

    /// Meets a live session that lost its cart's lock as its own payment intent would
    /// (`commerce check --repair`): the lock is taken back until `until_ms` while the cart
    /// is as the session froze it; a cart changed or ordered since cancels the session (its
    /// holds freed, its intent cancelled); a cart built again after a Redis loss is another
    /// cart, whose lock is left alone; one another session holds stays its.
    pub(crate) async fn relock(&self, id: &SessionId, until_ms: i64) -> Result<Relocked> {
        let session = self.load(id).await?;
        if session.state == State::PaymentPending && self.finish_if_ordered(&session).await?.is_some() {
            return Ok(Relocked::Ordered);
        }
        let frozen = FrozenCart::of(&self.metadata(id).await?);
        Ok(
            match self.take_lock_of(&session.cart, id, until_ms, &frozen).await? {
                LockTaken::Held => Relocked::Taken,
                LockTaken::CartMoved(now) => {
                    let (tag, current) = self.transition(id, State::Cancelled, None, &[]).await?;
                    if !matches!(tag.as_str(), "OK" | "SAME") {
                        return Ok(Relocked::MovedOn(current.state));
                    }
                    self.release(&current, true).await?;
                    Relocked::Cancelled(now)
                }
                LockTaken::ByOther(_) | LockTaken::OtherCart => Relocked::Left,
            },
        )
    }

    /// Cancels a session before payment: holds and lock released, its intent (if any)
    /// cancelled at the gateway. After payment, 409.
    pub async fn cancel(&self, id: &SessionId, authorization: Option<&str>) -> Result<SessionView> {
        // Strictly: a session with an intent is released through PostgreSQL, so one out of
        // reach fails the cancel at once, not after a second timeout.
        let session = self.load_to_write(id).await?;
        self.authorize(&session, authorization)?;
        // One Redis remembers waiting for a payment that PostgreSQL has ordered is paid.
        if session.state == State::PaymentPending
            && let Some(ordered) = self.finish_if_ordered(&session).await?
        {
            return Err(wrong_state(&ordered, "cancel"));
        }
        let (tag, session) = self.transition(id, State::Cancelled, None, &[]).await?;
        match tag.as_str() {
            "OK" | "SAME" => {
                self.release(&session, true).await?;
                Ok(session.view(None))
            }
            _ => Err(wrong_state(&session, "cancel")),
        }
    }
}

/// The states before payment as the session scripts take them (`expire_if_due` in
/// `session.lua`): the state machine says which they are, not the scripts.
fn before_payment() -> RedisArg {
    state::joined(&State::before_payment()).into()
}

/// What `unlock.lua` answered a session taking its cart's lock ([`Checkouts::take_lock_of`]).
fn lock_taken(reply: &[RedisReply]) -> LockTaken {
    let value = reply
        .get(1)
        .and_then(RedisReply::as_text)
        .unwrap_or("")
        .to_owned();
    match tag(reply) {
        "OK" => LockTaken::Held,
        "MOVED" => LockTaken::CartMoved(value),
        "OTHER_CART" => LockTaken::OtherCart,
        _ => LockTaken::ByOther(value),
    }
}

/// A move's reply (`transition.lua`): its tag, the session after it (gone: 404) and the
/// values of its `extras` keys.
fn moved_session(
    reply: &[RedisReply],
    extras: usize,
    id: &SessionId,
) -> Result<(String, Session, Vec<Option<String>>)> {
    let (tag, session, values) = parse_session_with(reply, extras)?;
    Ok((tag, session.ok_or_else(|| checkout_not_found(id))?, values))
}

/// `transition.lua`'s arguments for a move to `to`: [`Checkouts::transition_with`]'s.
fn transition_args(
    to: State,
    deadline_ms: Option<i64>,
    fields: &[(&str, &str)],
    guards: &[(&str, &str)],
) -> Vec<RedisArg> {
    let mut args = vec![
        to.name().into(),
        state::joined(&State::sources(to)).into(),
        deadline_ms.map(|t| t.to_string()).unwrap_or_default().into(),
        RedisArg::Int(KEEP_MS),
        before_payment(),
        RedisArg::Int(guards.len() as i64),
    ];
    for (field, value) in guards.iter().chain(fields) {
        args.push((*field).into());
        args.push((*value).into());
    }
    args
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
