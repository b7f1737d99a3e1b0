//! Taking a payment (`POST /v1/checkout/{session}/payment-intent`): the gateway's intent
//! for the frozen total, the holds and the lock extended to the session's lifetime, the
//! paid session kept in PostgreSQL, the session moved to PAYMENT_PENDING.

use serde::Serialize;
use serde_json::{Value, json};

use super::session::{Session, SessionView, cart_ref_text, wrong_state};
use super::start::frozen_demand;
use super::state::State;
use super::{
    Checkouts, FrozenCart, KEEP_MS, LockTaken, TRANSITION, UNLOCK, gateway, lock_taken, moved_session, paid,
    transition_args,
};
use crate::cart::CartRef;
use crate::error::{Error, ErrorCode, Result};
use crate::ids::SessionId;
use crate::ports::{Http, Redis, RedisArg, RedisReply, Sql};
use crate::script::{Chain, Step, unexpected};

/// The cart's lock kept for the payment window, then PAYMENT_PENDING, on a single server
/// ([`Checkouts::lock_and_wait`]).
static LOCK_AND_WAIT: Chain = Chain::new(&[&UNLOCK, &TRANSITION]);

/// The answer of `POST /v1/checkout/{session}/payment-intent`: the session as `GET` shows
/// it (DESIGN §5's checkout shape: `total`, `cartId` or `customerId`, `history`, …), with
/// what the storefront needs to confirm the payment added: `paymentIntentId` (the
/// session's, always set here), `clientSecret`, and `amount` (the frozen total again, in
/// minor units, as the gateway's intent carries it).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PaymentView {
    /// The session, its intent named.
    #[serde(flatten)]
    pub session: SessionView,
    /// The secret the browser confirms the payment with (the intent's `clientSecret`).
    pub client_secret: Value,
    /// The frozen total, minor units of `currency`.
    pub amount: i64,
}

impl<'a, R: Redis, S: Sql, H: Http> Checkouts<'a, R, S, H> {
    /// Creates the payment intent for the frozen total with the gateway (idempotent: the
    /// gateway sees the same idempotency key for the session every time), extends the holds
    /// and the lock to the session's lifetime, keeps the paid session in PostgreSQL, and
    /// moves the session to PAYMENT_PENDING.
    pub async fn payment_intent(&self, id: &SessionId, authorization: Option<&str>) -> Result<PaymentView> {
        // One round trip for the session, its stored intent and its frozen metadata (the
        // move to PAYMENT_PENDING needs it on the hot path, the first call): all three keys
        // carry the session's hash tag, so a Cluster serves them from one slot.
        let intent_key = self.app.keys.payment_intent(id);
        let metadata_key = self.app.keys.checkout_metadata(id);
        let (session, stored) = self.load_with(id, &[&intent_key, &metadata_key]).await?;
        self.authorize(&session, authorization)?;
        match session.state {
            State::Locked | State::PaymentPending => {}
            _ if session.intent.is_some() && !session.state.is_terminal() => {}
            _ => return Err(wrong_state(&session, "take a payment")),
        }
        let frozen = stored.get(1).and_then(Option::as_deref);
        // What a LOCKED session froze at its start, before any intent is asked for: a
        // session that lost it (a partial Redis loss) can take no payment, and is cancelled
        // so that its cart and stock are free for a new checkout.
        let metadata = match session.state {
            State::Locked => Some(self.frozen_or_cancel(&session, frozen).await?),
            _ => None,
        };
        let intent: Value = match stored.first().and_then(Option::as_deref) {
            Some(text) => {
                serde_json::from_str(text).map_err(|_| Error::Internal("malformed stored intent".into()))?
            }
            None => {
                let created = gateway::create_intent(
                    &self.app.http,
                    &self.app.settings.payment_gateway_url,
                    &self.app.settings.payment_gateway_key,
                    id.as_str(),
                    session.total,
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
                            RedisArg::Int(self.intent_ttl_ms()),
                        ],
                    )
                    .await?;
                intent
            }
        };
        let intent_id = intent["id"].as_str().unwrap_or_default().to_owned();
        let mut session = session;
        if session.state == State::Locked {
            // Hold stock and cart for the whole payment window: the holds first (their
            // deadline, less the grace, is the session's), then PostgreSQL's copy, then the
            // session, so at every moment the holds outlive the session.
            let metadata = match metadata {
                Some(metadata) => metadata,
                None => self.metadata_from(id, frozen).await?,
            };
            let demand = frozen_demand(&metadata)?;
            let deadline = self.hold(id, &demand, self.session_ttl_ms()).await?;
            let cart_ref = cart_ref_text(&session.cart);
            let customer = match &session.cart {
                CartRef::Customer(c) => Some(c.as_str()),
                CartRef::Session(_) => None,
            };
            let saved = paid::save(
                &self.app.sql,
                &paid::PaidSession {
                    id: id.as_str(),
                    cart_ref: &cart_ref,
                    customer,
                    total: session.total,
                    intent_id: &intent_id,
                    intent: &intent,
                    deadline_ms: deadline,
                    holds_deadline_ms: deadline + self.grace_ms(),
                    metadata: &metadata,
                    demand: &demand,
                },
            )
            .await;
            if let Err(refused) = saved {
                return Err(self.cancel_for_gone_variants(&session, refused).await?);
            }
            // The cart's lock for as long as the holds (taken back if lost, while the cart is
            // still the one this session froze), then PAYMENT_PENDING.
            let frozen = FrozenCart::of(&metadata);
            let (tag, moved) = self
                .lock_and_wait(&session, deadline, &frozen, &intent_id)
                .await?;
            if !matches!(tag.as_str(), "OK" | "SAME") && moved.state != State::PaymentPending {
                self.give_back(&moved).await?;
                return Err(wrong_state(&moved, "take a payment"));
            }
            session = moved;
        } else if session.state == State::PaymentPending {
            // One PostgreSQL has ordered that Redis remembers waiting (a Redis older than
            // PostgreSQL) is finished, and takes no payment. With PostgreSQL out of reach the
            // call goes on as before it asked (it needs nothing else of PostgreSQL), unless
            // it would cancel the session (below).
            let postgres_down = match self.finish_if_ordered(&session).await {
                Ok(Some(ordered)) => return Err(wrong_state(&ordered, "take a payment")),
                Ok(None) => None,
                Err(down @ Error::Unavailable { .. }) => Some(down),
                Err(other) => return Err(other),
            };
            // Asked again while waiting for the payment: the lock lasts until the holds' end
            // (taken back, if lost, only while the cart is as the session froze it). A lost
            // lock that cancels the session needs PostgreSQL, which could not say either
            // whether the session was ordered: then the answer is its 503, and the next
            // call decides.
            let frozen = frozen.map(FrozenCart::of_text).unwrap_or_default();
            let until = session.deadline_ms + self.grace_ms();
            self.keep_lock(&session, until, &frozen, postgres_down).await?;
        }
        let mut view = session.view(None);
        view.payment_intent_id = Some(intent_id);
        Ok(PaymentView {
            session: view,
            client_secret: intent["clientSecret"].clone(),
            amount: session.total.minor,
        })
    }

    /// How long the stored payment intent is kept: at least as long as the session's own
    /// record (its payment window, the grace, then [`KEEP_MS`]), so a session never waits
    /// for a payment whose intent Redis has forgotten, whatever `checkout_session_ttl_seconds`
    /// (up to 7 days; the seed's `PAYMENT_INTENT` kept a day).
    fn intent_ttl_ms(&self) -> i64 {
        self.session_ttl_ms() + self.grace_ms() + KEEP_MS
    }

    /// The LOCKED session's frozen metadata; if it is lost (in neither Redis nor
    /// PostgreSQL, or unreadable), the session is cancelled (what it holds freed) and the
    /// answer is 409 `CHECKOUT_STATE`: its buyer checks the cart out again.
    async fn frozen_or_cancel(&self, session: &Session, frozen: Option<&str>) -> Result<Value> {
        if let Some(metadata) = self.frozen_of(&session.id, frozen).await? {
            return Ok(metadata);
        }
        let current = self.cancel_lost(session).await?;
        if current.state != State::Cancelled {
            return Err(wrong_state(&current, "take a payment"));
        }
        Err(Error::Conflict {
            code: ErrorCode::CheckoutState,
            message: "the checkout's frozen cart was lost, so it is cancelled: check the cart out again"
                .into(),
            details: json!({ "sessionId": session.id.as_str(), "state": State::Cancelled.name() }),
        })
    }

    /// A LOCKED session that froze a variant the catalog has since deleted can never be
    /// paid for (PostgreSQL keeps no line naming it): it is cancelled (holds and lock
    /// freed, the intent just created cancelled at the gateway) and the answer is 422
    /// `UNKNOWN_VARIANT` naming what is gone. Any other failure is answered as it is.
    async fn cancel_for_gone_variants(&self, session: &Session, refused: Error) -> Result<Error> {
        let Error::Unprocessable {
            code: ErrorCode::UnknownVariant,
            message,
            details,
        } = refused
        else {
            return Ok(refused);
        };
        let current = self.cancel_lost(session).await?;
        if current.state != State::Cancelled {
            return Ok(wrong_state(&current, "take a payment"));
        }
        let mut details = details;
        details["sessionId"] = json!(session.id.as_str());
        details["state"] = json!(State::Cancelled.name());
        Ok(Error::Unprocessable {
            code: ErrorCode::UnknownVariant,
            message: format!(
                "{message}: deleted from the catalog since the checkout began, so it is cancelled"
            ),
            details,
        })
    }

    /// Gives back what this call took (holds, lock) for a session that moved on while it
    /// took them, after that move released what it found.
    async fn give_back(&self, moved: &Session) -> Result<()> {
        match moved.state {
            // Ended (a cancel, its deadline): the session keeps none of them, and its intent
            // is cancelled.
            State::Cancelled | State::Expired | State::Failed => self.release(moved, true).await,
            // Paid and ordered meanwhile (another payment-intent call of the session won, and
            // its payment came): the order's stock commit and cart step may have run before
            // this call held and locked again (a commit still to come finds nothing to drop;
            // PostgreSQL's copy ended with the order, the intent was paid).
            State::OrderCreated | State::Completed => self.release(moved, false).await,
            // PAYMENT_CONFIRMED: its order's commit and cart step are still to come, and
            // clear both.
            _ => Ok(()),
        }
    }

    /// Keeps the session's cart lock until `until_ms` ([`Self::take_lock_of`]; with the
    /// cart as the session froze it, a lost lock is taken back only while the cart is as
    /// the session locked it, and a cart built again after a Redis loss is left alone). A cart has one live checkout: if another session holds the lock now, this
    /// one is cancelled (its holds freed, its intent cancelled) and the answer is 409 naming
    /// it; so it is, 409 `CHECKOUT_STATE`, if the cart changed or was ordered meanwhile; one
    /// that moved on meanwhile (paid, ordered, ended) gives back what this call took and is
    /// answered as it stands (409 `CHECKOUT_STATE`). `postgres_down`: the error of this
    /// call's question to PostgreSQL, if it was out of reach; a cancel needs PostgreSQL (and
    /// could not first ask whether the session was ordered), so that error is the answer
    /// instead, and the next call decides.
    async fn keep_lock(
        &self,
        session: &Session,
        until_ms: i64,
        frozen: &FrozenCart,
        postgres_down: Option<Error>,
    ) -> Result<()> {
        let taken = self
            .take_lock_of(&session.cart, &session.id, until_ms, frozen)
            .await?;
        self.lock_kept(session, taken, postgres_down).await
    }

    /// [`Self::keep_lock`] once the lock answered `taken`: the session goes on with the
    /// lock it holds (or with a cart that is another life of its key), and is cancelled
    /// with the refusal as its answer otherwise.
    async fn lock_kept(
        &self,
        session: &Session,
        taken: LockTaken,
        postgres_down: Option<Error>,
    ) -> Result<()> {
        let id = &session.id;
        let refusal = match taken {
            LockTaken::Held | LockTaken::OtherCart => return Ok(()),
            LockTaken::ByOther(other) => Error::Conflict {
                code: ErrorCode::CheckoutInProgress,
                message: format!(
                    "the cart is being checked out by session {other}, so this session is cancelled"
                ),
                details: json!({ "sessionId": other }),
            },
            LockTaken::CartMoved(version) => Error::Conflict {
                code: ErrorCode::CheckoutState,
                message: format!(
                    "the cart changed since this checkout locked it (now at version {version}), so this session is cancelled"
                ),
                details: json!({ "sessionId": id.as_str(), "state": State::Cancelled.name() }),
            },
        };
        if let Some(down) = postgres_down {
            return Err(down);
        }
        let (moved, current) = self.transition(id, State::Cancelled, None, &[]).await?;
        if !matches!(moved.as_str(), "OK" | "SAME") {
            self.give_back(&current).await?;
            return Err(wrong_state(&current, "take a payment"));
        }
        self.release(&current, true).await?;
        Err(refusal)
    }

    /// [`Self::keep_lock`] until the holds' end (the session's `deadline` and the grace),
    /// then the move to PAYMENT_PENDING with that deadline and the session's intent. On a
    /// single Redis server both are one script ([`LOCK_AND_WAIT`]), which moves the session
    /// only once the lock is its own (or the cart another life of its key); on a Redis
    /// Cluster the lock and the session are in two slots, so two calls. Returns the move's
    /// tag and the session after it.
    async fn lock_and_wait(
        &self,
        session: &Session,
        deadline: i64,
        frozen: &FrozenCart,
        intent_id: &str,
    ) -> Result<(String, Session)> {
        let (id, until, intent) = (&session.id, deadline + self.grace_ms(), [("intent", intent_id)]);
        if self.app.redis.is_cluster() {
            self.keep_lock(session, until, frozen, None).await?;
            return self
                .transition(id, State::PaymentPending, Some(deadline), &intent)
                .await;
        }
        let (lock_keys, lock_args) = self.take_lock_call(&session.cart, id, until, frozen);
        let [key, metadata] = self.move_keys(id);
        let steps = vec![
            Step {
                keys: lock_keys.iter().map(String::as_str).collect(),
                args: lock_args,
                goes_on: &["OK", "OTHER_CART"],
            },
            Step {
                keys: vec![&key, &metadata],
                args: transition_args(State::PaymentPending, Some(deadline), &intent, &[]),
                goes_on: &[],
            },
        ];
        let replies = LOCK_AND_WAIT.run(&self.app.redis, steps).await?;
        let Some(reply) = replies.get(1) else {
            // The lock was refused (the chain goes on from the others): cancelled, and
            // answered so.
            self.lock_kept(session, lock_taken(&replies[0]), None).await?;
            return Err(unexpected(&replies[0]));
        };
        let (tag, moved, _) = moved_session(reply, 0, id)?;
        self.app.replicated(&[&key]).await?;
        self.moved(State::PaymentPending, &tag, &moved).await?;
        Ok((tag, moved))
    }

    /// The id of the intent created for the session, if any.
    pub(super) async fn stored_intent_id(&self, id: &SessionId) -> Result<Option<String>> {
        let stored = self
            .app
            .redis
            .execute("GET", vec![self.app.keys.payment_intent(id).into()])
            .await?;
        Ok(stored
            .first()
            .and_then(RedisReply::as_text)
            .and_then(|t| serde_json::from_str::<Value>(t).ok())
            .and_then(|v| v["id"].as_str().map(str::to_owned)))
    }
}
