//! Starting a checkout (`POST /v1/checkout`): lock the cart, freeze its quote, hold
//! the units it takes, create the session in LOCKED.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::session::{SessionView, cart_ref_text, parse_session};
use super::{Checkouts, KEEP_MS, LockHolder, Unreachable};
use crate::bundle::Bundles;
use crate::cart::{self, CartLine, CartRef, LineItem};
use crate::error::{Error, ErrorCode, Result};
use crate::ids::{Holder, Quantity, SessionId, VariantId};
use crate::inventory;
use crate::ports::{Http, Redis, RedisArg, RedisReply, Sql};
use crate::pricing::quote::{cart_quote_lines, price_lines};
use crate::script::{Script, lua, tag, unexpected};

static LOCK: Script = Script::new(lua!("cart/cart.lua", "checkout/lock.lua"));
static CREATE: Script = Script::new(lua!("checkout/session.lua", "checkout/create.lua"));

/// Units per variant that a cart's lines take from stock: direct lines and bundle parts
/// summed per variant, so a variant wanted twice is checked against stock once, in full.
pub fn demand(lines: &[CartLine]) -> Result<Vec<(VariantId, Quantity)>> {
    let mut units: BTreeMap<VariantId, i64> = BTreeMap::new();
    for line in lines {
        for part in line.item.variants() {
            *units.entry(part.clone()).or_default() += i64::from(line.quantity);
        }
    }
    units
        .into_iter()
        .map(|(variant, n)| {
            let quantity = Quantity::new(n).map_err(|_| Error::Unprocessable {
                code: ErrorCode::CartLimit,
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

/// A bundle line's refusal, naming the line of the cart it is about.
fn in_line(error: Error, line: &CartLine) -> Error {
    match error {
        Error::Unprocessable {
            code,
            message,
            mut details,
        } => {
            if let Some(details) = details.as_object_mut() {
                details.insert("lineId".into(), json!(line.line_id.as_str()));
            }
            Error::Unprocessable {
                code,
                message: format!("cart line {}: {message}", line.line_id.as_str()),
                details,
            }
        }
        other => other,
    }
}

impl<'a, R: Redis, S: Sql, H: Http> Checkouts<'a, R, S, H> {
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
        let session = SessionId::parse(&format!("cs_{token}"))?;
        let carts = self.carts();
        let (cart_key, lock_key) = (carts.key(cart), carts.lock_key(cart));
        let mut taken_over = false;
        let locked = loop {
            let locked = self
                .run(
                    &LOCK,
                    &[&cart_key, &lock_key],
                    vec![session.as_str().into(), RedisArg::Int(self.lock_life_ms())],
                )
                .await?;
            let holder = locked.get(1).and_then(RedisReply::as_text).unwrap_or("");
            if tag(&locked) == "HELD" && !taken_over {
                // A holder past its deadline expires now and frees the cart; one that is
                // gone for good gives it up (owner-checked: a holder that came back
                // meanwhile keeps its lock). Either way the lock is tried once more.
                let freed = match self.meet_lock_holder(holder).await? {
                    LockHolder::Ended => true,
                    LockHolder::Unknown if self.no_request_can_hold(&lock_key).await? => {
                        self.unlock(&lock_key, holder).await?;
                        true
                    }
                    _ => false,
                };
                if freed {
                    taken_over = true;
                    continue;
                }
            }
            break locked;
        };
        match (tag(&locked), cart) {
            ("OK", _) => {}
            ("HELD", _) => {
                let holder = locked
                    .get(1)
                    .and_then(RedisReply::as_text)
                    .unwrap_or("")
                    .to_owned();
                return Err(Error::Conflict {
                    code: ErrorCode::CheckoutInProgress,
                    message: format!("the cart is already being checked out by session {holder}"),
                    details: json!({ "sessionId": holder }),
                });
            }
            // An anonymous cart that is not there is unknown, as on every cart route; a
            // customer always has a cart, empty until something is added.
            ("NO_CART", CartRef::Session(id)) => return Err(cart::cart_not_found(id)),
            ("NO_CART" | "EMPTY", _) => {
                return Err(Error::Conflict {
                    code: ErrorCode::CartEmpty,
                    message: "there is nothing in the cart to check out".into(),
                    details: Value::Null,
                });
            }
            ("MERGED", _) => return Err(cart::cart_merged()),
            _ => return Err(unexpected(&locked)),
        }
        match self
            .freeze_and_hold(cart, &session, &locked, customer_group)
            .await
        {
            Ok(view) => Ok(view),
            Err(error) => {
                // A retry whose first attempt began the session and was cut short before
                // it answered: that session stands, with the cart it froze, as CREATE
                // answers a retry that gets that far. A refusal now (a bundle changed
                // since, say) would free the cart under it and leave it LOCKED, holding
                // its units until its deadline. Where that cannot be read, the refusal
                // goes on as below.
                if !matches!(error, Error::Unavailable { .. })
                    && let Ok(Some(view)) = self.begun_earlier(&session).await
                {
                    return Ok(view);
                }
                // Refused (short stock, prices), or failed on its own (a reply we cannot
                // read): nothing may stay held for this session, nor the cart locked by it.
                // A dependency failure keeps the lock for the retry that resumes the session,
                // once the session holds something to resume; before that (rulesets that
                // cannot be rebuilt, say) the cart is left free.
                let resumable = matches!(error, Error::Unavailable { .. })
                    && self.holds_any(&session).await.unwrap_or(true);
                if !resumable {
                    self.unlock(&lock_key, session.as_str()).await?;
                }
                Err(error)
            }
        }
    }

    /// The session a first attempt under the same token began, while it is still under
    /// way, as a read of it shows it; `None` when there is none (one Redis round trip), or
    /// it has ended, or it lost its frozen cart (a LOCKED one is then cancelled).
    async fn begun_earlier(&self, session: &SessionId) -> Result<Option<SessionView>> {
        if !self.exists(self.app.keys.checkout_session(session)).await? {
            return Ok(None);
        }
        let met = match self.read(session, &[], Unreachable::ShowsRedis).await {
            Ok(met) => met,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(other) => return Err(other),
        };
        if met.session.state.is_terminal() {
            return Ok(None);
        }
        let view = self.shown(met).await?;
        Ok(view.quote.is_some().then_some(view))
    }

    /// Whether the session holds stock (its holder index is there).
    async fn holds_any(&self, session: &SessionId) -> Result<bool> {
        self.exists(self.app.keys.holder_holds(&Holder::Checkout(session.clone())))
            .await
    }

    async fn exists(&self, key: String) -> Result<bool> {
        let reply = self.app.redis.execute("EXISTS", vec![key.into()]).await?;
        Ok(reply.first().and_then(RedisReply::as_int) == Some(1))
    }

    /// Whether a cart's lock whose session neither Redis nor PostgreSQL knows is gone for
    /// good, so that the cart would otherwise stay locked until the lock's time to live
    /// ends: the lock is older than any request may run, so no start that took it can
    /// still be creating its session.
    async fn no_request_can_hold(&self, lock_key: &str) -> Result<bool> {
        let ttl = self.app.redis.execute("PTTL", vec![lock_key.into()]).await?;
        let left = ttl.first().and_then(RedisReply::as_int).unwrap_or(-2);
        let age = self.lock_life_ms() - left;
        let request_timeout = i64::try_from(self.app.settings.request_timeout_ms).unwrap_or(i64::MAX);
        Ok(left >= 0 && age > request_timeout)
    }

    async fn freeze_and_hold(
        &self,
        cart: &CartRef,
        session: &SessionId,
        locked: &[RedisReply],
        customer_group: Option<String>,
    ) -> Result<SessionView> {
        let cart::CartView {
            currency,
            lines,
            version: cart_version,
            ..
        } = cart::decode(cart, locked)?;
        // A bundle line's choices were checked when it was added; the bundle may have
        // changed since (sets, eligible variants): what is sold must fit it now.
        for line in &lines {
            if let LineItem::Bundle(bundle, choices) = &line.item {
                Bundles::of(self.app)
                    .check(bundle, choices)
                    .await
                    .map_err(|e| in_line(e, line))?;
            }
        }
        let priced = price_lines(self.app, &cart_quote_lines(&lines), currency, customer_group).await?;
        if priced.quote.total_minor < 1 {
            // A gateway takes no payment of nothing, so such a session could never end in an
            // order: refused here, before anything is held.
            return Err(Error::Unprocessable {
                code: ErrorCode::NothingToPay,
                message: format!(
                    "the cart's total is {} {currency}: there is no payment to take, so it cannot be checked out",
                    priced.quote.total_minor
                ),
                details: json!({ "total": priced.quote.total_minor, "currency": currency.as_str() }),
            });
        }
        let demand = demand(&lines)?;
        let held = self.hold(session, &demand, self.lock_ttl_ms()).await;
        inventory::count_request(&held);
        let deadline = held?;
        let definitions: BTreeMap<&str, &LineItem> =
            lines.iter().map(|l| (l.line_id.as_str(), &l.item)).collect();
        let quote = serde_json::to_value(&priced).map_err(|e| Error::Internal(e.to_string()))?;
        // The cart's version as locked, and when it was written: the order empties the cart
        // only while it is still this one (a replayed webhook, days later, leaves a cart
        // filled again alone, as does one whose version number a rolled-back Redis gave
        // again to other lines). Its generation: which life of the cart's key it is.
        let (generation, written) = cart::generation_and_written(locked)?;
        let metadata = json!({
            "quote": quote,
            "cartVersion": cart_version,
            "cartGeneration": generation,
            "cartWritten": written,
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
}
