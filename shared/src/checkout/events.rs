//! What a verified gateway event does to its session (`POST /v1/checkout/payment-webhook`):
//! a confirmed payment places the order (PAYMENT_CONFIRMED → ORDER_CREATED → COMPLETED,
//! resuming wherever a crash left it), a payment the session cannot take is refunded
//! through the outbox, a failed payment ends the session.

use serde::Serialize;
use serde_json::Value;

use super::session::{Session, cart_ref_text, wrong_state};
use super::start::frozen_demand;
use super::state::State;
use super::{
    Checkouts, FrozenCart, LockTaken, TRANSITION, ended, gateway, moved_session, order, transition_args,
};
use crate::cart::CartRef;
use crate::error::{Error, Result};
use crate::ids::{Holder, SessionId};
use crate::inventory::{COMMIT, StockChange};

use crate::outbox;
use crate::ports::{Http, Redis, RedisArg, Sql};
use crate::script::{Chain, Script, Step, lua};

static EMPTY_CART: Script = Script::new(lua!("checkout/empty_cart.lua"));
/// An order's last steps in Redis, on a single server: ORDER_CREATED, its stock changes
/// committed, its cart emptied (and the lock let go), COMPLETED ([`Checkouts::record_order`]).
static ORDER_IN_REDIS: Chain = Chain::new(&[&TRANSITION, &COMMIT, &EMPTY_CART, &TRANSITION]);
pub(super) static FLAG_REFUND: Script = Script::new(lua!("checkout/session.lua", "checkout/flag_refund.lua"));

/// The answer to a verified gateway event: what became of it. The fields are in the order
/// of their names, as the answer has always listed them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventOutcome {
    /// Why the event changed nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
    /// The session's order: `Some(None)` (shown as `null`) for a completed session whose
    /// order PostgreSQL does not have.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order_id: Option<Option<String>>,
    /// Always `true`: the event arrived, and the gateway need not send it again.
    pub received: bool,
    /// Why the payment is being refunded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_required: Option<String>,
    /// The session the event is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The variants on-hand stock could not cover, when the order was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shortages: Option<Value>,
    /// The session's state afterwards.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
}

impl EventOutcome {
    /// An event that changed nothing, and why.
    fn ignored(reason: impl Into<String>) -> Self {
        Self {
            ignored: Some(reason.into()),
            ..Self::of(None)
        }
    }

    /// An event about `session` (or none), with nothing else said yet.
    fn of(session: Option<&SessionId>) -> Self {
        Self {
            ignored: None,
            order_id: None,
            received: true,
            refund_required: None,
            session_id: session.map(|s| s.to_string()),
            shortages: None,
            state: None,
        }
    }
}

impl<'a, R: Redis, S: Sql, H: Http> Checkouts<'a, R, S, H> {
    /// Handles a verified gateway event. A confirmed payment places the order (or resumes
    /// placing it); a payment that can no longer become an order is refunded; a failed
    /// payment of the session's own intent ends the session and releases what it held.
    pub async fn handle_event(&self, event: &gateway::WebhookEvent) -> Result<EventOutcome> {
        let Some(id) = event.session_id.as_deref() else {
            return Ok(EventOutcome::ignored("the payment has no checkout session"));
        };
        // Not an id this app makes, so not a payment of its sessions: acknowledged (a 4xx
        // would have the gateway deliver it again for days), as one without a session.
        let Ok(id) = SessionId::parse(id) else {
            return Ok(EventOutcome::ignored(
                "the payment's checkout session is not one of ours",
            ));
        };
        match &event.kind {
            gateway::EventKind::PaymentSucceeded => {
                let paid = Checkouts {
                    app: self.app,
                    paid: Some(event.intent_id.clone()),
                };
                paid.confirm(&id, event).await
            }
            gateway::EventKind::PaymentFailed => self.payment_failed(&id, event).await,
            gateway::EventKind::Other(kind) => Ok(EventOutcome::ignored(kind.as_str())),
        }
    }

    async fn payment_failed(&self, id: &SessionId, event: &gateway::WebhookEvent) -> Result<EventOutcome> {
        let session = match self.load(id).await {
            Ok(session) => session,
            Err(Error::NotFound { .. }) => {
                return Ok(EventOutcome::ignored("unknown session"));
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
        // Nor does it to one PostgreSQL has ordered that Redis remembers still waiting (a
        // Redis older than PostgreSQL): it is finished instead.
        let ordered = match session.state {
            State::PaymentPending => self.finish_if_ordered(&session).await?,
            _ => None,
        };
        if let Some(ordered) = ordered {
            return Ok(EventOutcome {
                state: Some(ordered.state.name()),
                ignored: Some("the session's payment was ordered".into()),
                ..EventOutcome::of(Some(id))
            });
        }
        if own != event.intent_id || !session.state.is_before_payment() {
            return Ok(EventOutcome {
                state: Some(session.state.name()),
                ignored: Some("the failure is not of this session's pending intent".into()),
                ..EventOutcome::of(Some(id))
            });
        }
        // Only from the state read: the success event of the same intent may confirm the
        // session meanwhile (events arrive out of order, and close together), and then its
        // order decides, never this failure.
        let read = session.state.name();
        let (tag, session, _) = self
            .transition_with(id, State::Failed, None, &[], &[("state", read)], &[])
            .await?;
        if matches!(tag.as_str(), "OK" | "SAME") {
            self.release(&session, true).await?;
        }
        Ok(EventOutcome {
            state: Some(session.state.name()),
            ignored: (tag == "GUARD").then(|| "the session moved on meanwhile".into()),
            ..EventOutcome::of(Some(id))
        })
    }

    async fn confirm(&self, id: &SessionId, event: &gateway::WebhookEvent) -> Result<EventOutcome> {
        // The hot path, one round trip: a session waiting for exactly this payment (its
        // intent, amount and currency) and not past its deadline moves to
        // PAYMENT_CONFIRMED, and its frozen metadata comes back with it. Anything else
        // (another state, another payment, expired, gone) takes the path below, which reads
        // the session first and decides.
        let metadata_key = self.app.keys.checkout_metadata(id);
        let amount = event.amount.to_string();
        let guards = [
            ("intent", event.intent_id.as_str()),
            ("total", amount.as_str()),
            ("currency", event.currency.as_str()),
        ];
        match self
            .transition_with(id, State::PaymentConfirmed, None, &[], &guards, &[&metadata_key])
            .await
        {
            Ok((tag, session, stored)) if tag == "OK" => {
                let metadata = self.metadata_from(id, stored[0].as_deref()).await?;
                return self
                    .place_order(session, Some(metadata), &event.intent_id, event)
                    .await;
            }
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(other) => return Err(other),
        }
        // Redis first: the session is usually there, and nothing else is asked before its
        // deadline is checked.
        match self.load_to_write(id).await {
            Ok(session) => self.confirm_session(session, event).await,
            Err(Error::NotFound { .. }) => self.confirm_forgotten(id, event).await,
            Err(other) => Err(other),
        }
    }

    /// A payment for a session neither Redis nor PostgreSQL's paid sessions know: an order
    /// that exists answers for its own payment; any other payment goes back.
    async fn confirm_forgotten(&self, id: &SessionId, event: &gateway::WebhookEvent) -> Result<EventOutcome> {
        if let Some((order_id, _, intent)) = order::find(&self.app.sql, id.as_str()).await? {
            if intent == event.intent_id {
                // Redis may have lost the session before the order's stock change reached
                // it: mirror it now (each change applies once, so a repeat changes nothing).
                let changes = order::changes_of(&self.app.sql, id.as_str()).await?;
                self.inventory()
                    .commit(&Holder::Checkout(id.clone()), &changes)
                    .await?;
                return Ok(EventOutcome {
                    order_id: Some(Some(order_id)),
                    ..EventOutcome::of(Some(id))
                });
            }
            let mut answer = self
                .refund_unknown(id, event, "the checkout was already paid by another payment")
                .await?;
            answer.order_id = Some(Some(order_id));
            return Ok(answer);
        }
        // Neither Redis nor PostgreSQL knows a session of this id (`load` put back any
        // that PostgreSQL keeps).
        self.refund_unknown(id, event, "unknown session").await
    }

    async fn confirm_session(&self, session: Session, event: &gateway::WebhookEvent) -> Result<EventOutcome> {
        let id = session.id.clone();
        let matches = event.amount == session.total.minor
            && event.currency == session.total.currency.as_str()
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
        let entered_confirmed = session.state == State::PaymentConfirmed;
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
        if entered_confirmed {
            return self.place_confirmed(session, event).await;
        }
        self.place_order(session, None, &event.intent_id, event).await
    }

    /// Places the order of a session met already PAYMENT_CONFIRMED (a later delivery of its
    /// event, or the sweep meeting one whose webhook was cut short), unless its holds have
    /// ended (its deadline and the grace passed, on the Redis clock): their units may have
    /// been held or sold again since, so its payment goes back instead of becoming an order
    /// (README "One deadline"), unless PostgreSQL has its order already. A delivery still
    /// writing its order meanwhile is no matter: PostgreSQL takes the order or the refund,
    /// never both ([`Self::fail_paid`]).
    async fn place_confirmed(&self, session: Session, event: &gateway::WebhookEvent) -> Result<EventOutcome> {
        let holds_ended = session.deadline_ms.saturating_add(self.grace_ms());
        if self.redis_now_ms().await? >= holds_ended {
            let ordered = order::find(&self.app.sql, session.id.as_str()).await?;
            if ordered.is_none_or(|(_, _, intent)| intent != event.intent_id) {
                let reason =
                    "its holds ended before its order was placed, so its units may have been sold again";
                return self.fail_paid(&session.id, event, reason).await;
            }
        }
        self.place_order(session, None, &event.intent_id, event).await
    }

    /// Refunds a payment the session cannot take (through the outbox, keyed by intent) —
    /// unless PostgreSQL has the order of this very payment, which stands whatever Redis
    /// remembers (a Redis restored from an older copy).
    async fn refund(
        &self,
        session: &Session,
        event: &gateway::WebhookEvent,
        reason: &str,
    ) -> Result<EventOutcome> {
        if let Some((order_id, _, intent)) = order::find(&self.app.sql, session.id.as_str()).await?
            && intent == event.intent_id
        {
            return Ok(EventOutcome {
                order_id: Some(Some(order_id)),
                ..EventOutcome::of(Some(&session.id))
            });
        }
        self.send_refund(&session.id, event, reason).await?;
        self.flag_refund(session, event, reason).await
    }

    /// Names on the session the refund owed for its payment (`refundRequired`), and answers
    /// so.
    async fn flag_refund(
        &self,
        session: &Session,
        event: &gateway::WebhookEvent,
        reason: &str,
    ) -> Result<EventOutcome> {
        let key = self.app.keys.checkout_session(&session.id);
        self.run(
            &FLAG_REFUND,
            &[&key],
            vec![event.intent_id.as_str().into(), reason.into()],
        )
        .await?;
        Ok(EventOutcome {
            state: Some(session.state.name()),
            refund_required: Some(reason.into()),
            ..EventOutcome::of(Some(&session.id))
        })
    }

    /// Refunds a payment for a session that neither Redis nor PostgreSQL can sell to.
    async fn refund_unknown(
        &self,
        id: &SessionId,
        event: &gateway::WebhookEvent,
        reason: &str,
    ) -> Result<EventOutcome> {
        self.send_refund(id, event, reason).await?;
        Ok(EventOutcome {
            refund_required: Some(reason.into()),
            ..EventOutcome::of(Some(id))
        })
    }

    /// Owes the payment back through the outbox (keyed by intent) and sends it now.
    async fn send_refund(&self, id: &SessionId, event: &gateway::WebhookEvent, reason: &str) -> Result<()> {
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

    /// Ends a paid session that cannot have its order FAILED: its payment goes back (the
    /// refund through the outbox) and its holds are freed. An order of the payment written
    /// meanwhile (another delivery of it) stands instead.
    async fn fail_paid(
        &self,
        id: &SessionId,
        event: &gateway::WebhookEvent,
        reason: &str,
    ) -> Result<EventOutcome> {
        // PostgreSQL decides between the order and the refund: the paid session's row is
        // ended with the refund owed in one statement, after which no order of it can be
        // written; an order written first has ended it, and stands.
        let owed = outbox::fail_and_refund(
            &self.app.sql,
            id.as_str(),
            &event.intent_id,
            event.amount,
            &event.currency,
            reason,
        )
        .await?;
        if !owed
            && let Some((order_id, _, intent)) = order::find(&self.app.sql, id.as_str()).await?
            && intent == event.intent_id
        {
            // Ordered meanwhile (another delivery of this payment): finished as a read would.
            let session = self.load(id).await?;
            return Ok(EventOutcome {
                order_id: Some(Some(order_id)),
                state: Some(session.state.name()),
                ..EventOutcome::of(Some(id))
            });
        }
        let (_, failed) = self.transition(id, State::Failed, None, &[]).await?;
        // Not ordered (asked above, or PostgreSQL's row ended with the refund owed): owed
        // now if it was not (a session without a paid copy, or ended before), then sent.
        if owed {
            self.send_now(&event.intent_id).await;
        } else {
            self.send_refund(id, event, reason).await?;
        }
        let answer = self.flag_refund(&failed, event, reason).await?;
        self.release(&failed, false).await?;
        Ok(answer)
    }

    /// From ORDER_CREATED to COMPLETED: mirrors the order's stock changes into Redis
    /// (`changes`, or PostgreSQL's record of them), empties the cart as the session froze it
    /// (its `version` and `generation`) and lets its lock go. Returns the session after it.
    pub(super) async fn finish_order(
        &self,
        session: &Session,
        changes: Option<Vec<StockChange>>,
        frozen: &FrozenCart,
    ) -> Result<Session> {
        let changes = match changes {
            Some(c) => c,
            None => order::changes_of(&self.app.sql, session.id.as_str()).await?,
        };
        self.inventory()
            .commit(&Holder::Checkout(session.id.clone()), &changes)
            .await?;
        self.empty_cart(session, frozen).await?;
        Ok(self.transition(&session.id, State::Completed, None, &[]).await?.1)
    }

    /// Empties the session's cart of what it ordered and lets its lock go (`empty_cart.lua`):
    /// only the cart as the session locked it (`frozen`: its version, generation and when
    /// that version was written; what sessions from before did not keep is not compared).
    async fn empty_cart(&self, session: &Session, frozen: &FrozenCart) -> Result<()> {
        let (keys, args) = self.empty_cart_call(session, frozen);
        self.run(&EMPTY_CART, &[&keys[0], &keys[1]], args).await?;
        Ok(())
    }

    /// `empty_cart.lua`'s keys (the cart, its lock) and arguments.
    fn empty_cart_call(&self, session: &Session, frozen: &FrozenCart) -> ([String; 2], Vec<RedisArg>) {
        let carts = self.carts();
        let mut args = vec![session.id.as_str().into()];
        args.extend(frozen.args());
        args.push(RedisArg::Int(carts.ttl_ms()));
        ([carts.key(&session.cart), carts.lock_key(&session.cart)], args)
    }

    /// Moves the PAYMENT_CONFIRMED `session`, whose order PostgreSQL has written as
    /// `order_id` with its stock `changes`, to ORDER_CREATED; on a single Redis server, in
    /// the same script ([`ORDER_IN_REDIS`]), it also commits the changes, empties the cart as
    /// `frozen` (letting the lock go) and moves the session to COMPLETED: one round trip
    /// for what [`Self::finish_order`] does in three more. The chain stops at the first
    /// step off that path (the session moved meanwhile, stock Redis lost), and the caller
    /// goes on from the session as that step left it, as after the one script. Returns the
    /// session after the last step that ran, and whether the chain emptied the cart.
    async fn record_order(
        &self,
        session: &Session,
        order_id: &str,
        changes: Option<&[StockChange]>,
        frozen: &FrozenCart,
    ) -> Result<(Session, bool)> {
        let created = [("order", order_id)];
        let (id, redis) = (&session.id, &self.app.redis);
        let Some(changes) = changes.filter(|_| !redis.is_cluster()) else {
            let (_, moved) = self.transition(id, State::OrderCreated, None, &created).await?;
            return Ok((moved, false));
        };
        let [key, metadata] = self.move_keys(id);
        let holder = Holder::Checkout(id.clone());
        let inventory = self.inventory();
        let (commit_keys, commit_args) = inventory.commit_step(&holder, changes);
        let (cart_keys, empty_args) = self.empty_cart_call(session, frozen);
        let steps = vec![
            Step {
                keys: vec![&key, &metadata],
                args: transition_args(State::OrderCreated, None, &created, &[]),
                goes_on: &["OK"],
            },
            Step {
                keys: commit_keys.iter().map(String::as_str).collect(),
                args: commit_args,
                goes_on: &["OK"],
            },
            Step {
                keys: vec![&cart_keys[0], &cart_keys[1]],
                args: empty_args,
                goes_on: &["OK"],
            },
            Step {
                keys: vec![&key, &metadata],
                args: transition_args(State::Completed, None, &[], &[]),
                goes_on: &[],
            },
        ];
        let replies = ORDER_IN_REDIS.run(redis, steps).await?;
        // Past its payment a session no longer expires (EXPIRED_NOW), so all that follows
        // these moves is the count of a completed session.
        let (_, created, _) = moved_session(&replies[0], 0, id)?;
        self.app.replicated(&[&key]).await?;
        let committed = replies
            .get(1)
            .is_some_and(|reply| inventory.chain_committed(reply));
        let Some(last) = replies.get(3).filter(|_| committed) else {
            return Ok((created, false));
        };
        let (tag, completed, _) = moved_session(last, 0, id)?;
        if tag == "OK" {
            ended(State::Completed);
        }
        Ok((completed, true))
    }

    /// From PAYMENT_CONFIRMED (or wherever a crash left it) to COMPLETED; or, when on-hand
    /// cannot cover the order or its cart is another checkout's (that one holds its lock,
    /// or the same frozen cart was ordered by it), to FAILED with the payment refunded. `metadata`: the frozen
    /// metadata where the caller already read it (the hot path of `confirm`).
    /// Meets a session whose payment was confirmed but whose order was never written (the
    /// webhook's request was cut short after its move to PAYMENT_CONFIRMED, and no delivery
    /// of the event came since) as the next delivery of its event would: ordered, or FAILED
    /// and refunded if its holds have ended ([`Self::place_confirmed`]) or PostgreSQL's
    /// on-hand cannot cover it now.
    pub(super) async fn resume_confirmed(&self, session: Session) -> Result<()> {
        let Some(intent) = session.intent.clone() else {
            return Ok(());
        };
        let event = gateway::WebhookEvent {
            id: format!("resumed:{}", session.id),
            kind: gateway::EventKind::PaymentSucceeded,
            intent_id: intent.clone(),
            session_id: Some(session.id.to_string()),
            amount: session.total.minor,
            currency: session.total.currency.to_string(),
        };
        self.place_confirmed(session, &event).await?;
        Ok(())
    }

    async fn place_order(
        &self,
        mut session: Session,
        metadata: Option<Value>,
        intent: &str,
        event: &gateway::WebhookEvent,
    ) -> Result<EventOutcome> {
        let mut order_id = order::id_of(session.id.as_str());
        // The frozen metadata, read once for the steps below (unless the caller had it).
        let metadata = match metadata {
            Some(metadata) => metadata,
            None if matches!(session.state, State::PaymentConfirmed | State::OrderCreated) => {
                self.metadata(&session.id).await?
            }
            None => Value::Null,
        };
        // The cart as this session locked it: which life of its key and its version then
        // (`None`: not kept by sessions from before).
        let frozen = FrozenCart::of(&metadata);
        let mut changes = None;
        // Whether this call holds the cart's lock for the session (kept or taken back below)
        // and has not yet let it go with the emptied cart.
        let mut holds_lock = false;
        if session.state == State::PaymentConfirmed {
            // A cart has one live checkout: a session whose cart lock was lost (deleted, a
            // Redis restored without it) and taken by another checkout of the cart since
            // does not become a second order of it; its payment goes back. A cart built
            // again under the same key after a Redis loss is another cart, whose lock is
            // not this session's to take or to yield to.
            let until = session.deadline_ms + self.grace_ms();
            match self
                .take_lock_of(&session.cart, &session.id, until, &frozen.any_version())
                .await?
            {
                LockTaken::Held => holds_lock = true,
                LockTaken::ByOther(other) => {
                    let reason = format!("another checkout of the cart ({other}) holds it");
                    return self.fail_paid(&session.id, event, &reason).await;
                }
                LockTaken::OtherCart | LockTaken::CartMoved(_) => {}
            }
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
                    cart: frozen.generation.zip(frozen.version),
                },
            )
            .await?;
            match written {
                order::Written::Placed(id, written) => {
                    // Written by an earlier attempt: its id as PostgreSQL keeps it.
                    order_id = id;
                    changes = Some(written);
                }
                order::Written::Refused(shortages) => {
                    let reason = "on-hand stock could not cover the order";
                    let mut answer = self.fail_paid(&session.id, event, reason).await?;
                    answer.shortages = Some(shortages);
                    return Ok(answer);
                }
                order::Written::Lapsed => {
                    let reason =
                        "its holds ended before its order was written, so its units may have been sold again";
                    return self.fail_paid(&session.id, event, reason).await;
                }
                order::Written::CartOrdered(other) => {
                    // That order emptied the cart; a cart that is still as frozen (a backup
                    // restored it) is emptied now, or every later checkout of it would be
                    // paid and refunded in turn.
                    self.empty_cart(&session, &frozen).await?;
                    let reason = format!("the same cart was ordered by another checkout ({other})");
                    return self.fail_paid(&session.id, event, &reason).await;
                }
            }
            let emptied;
            (session, emptied) = self
                .record_order(&session, &order_id, changes.as_deref(), &frozen)
                .await?;
            holds_lock &= !emptied;
        }
        if session.state == State::OrderCreated {
            session = self.finish_order(&session, changes, &frozen).await?;
            holds_lock = false;
        }
        if session.state != State::Completed {
            return Err(wrong_state(&session, "place the order"));
        }
        if holds_lock {
            // A delivery of the same payment finished the session (emptied the cart, let
            // the lock go) while this one took the lock back: it goes again, owner-checked.
            self.unlock(&self.carts().lock_key(&session.cart), session.id.as_str())
                .await?;
        }
        // The session names its order (set with ORDER_CREATED); PostgreSQL is asked only for
        // a session that somehow lacks it.
        let order = match session.order.clone() {
            Some(order) => Some(order),
            None => order::find(&self.app.sql, session.id.as_str())
                .await?
                .map(|(id, _, _)| id),
        };
        Ok(EventOutcome {
            state: Some(session.state.name()),
            order_id: Some(order),
            ..EventOutcome::of(Some(&session.id))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_outcome_reads_as_the_answer_always_did_byte_for_byte() {
        let session = SessionId::parse("cs_1").unwrap();
        let cases = [
            (
                EventOutcome::ignored("unknown session"),
                json!({ "received": true, "ignored": "unknown session" }),
            ),
            (
                EventOutcome {
                    state: Some("COMPLETED"),
                    order_id: Some(None),
                    ..EventOutcome::of(Some(&session))
                },
                json!({ "received": true, "sessionId": "cs_1", "state": "COMPLETED", "orderId": null }),
            ),
            (
                EventOutcome {
                    state: Some("FAILED"),
                    refund_required: Some("r".into()),
                    shortages: Some(json!([{"variantId": "v"}])),
                    order_id: Some(Some("ord_1".into())),
                    ..EventOutcome::of(Some(&session))
                },
                json!({ "received": true, "sessionId": "cs_1", "state": "FAILED", "refundRequired": "r",
                    "shortages": [{"variantId": "v"}], "orderId": "ord_1" }),
            ),
        ];
        for (outcome, before) in cases {
            assert_eq!(serde_json::to_string(&outcome).unwrap(), before.to_string());
        }
    }
}
