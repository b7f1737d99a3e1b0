//! The payment outbox: money that must leave the shop (refunds) and payment intents that
//! must be cancelled, written to PostgreSQL first and sent to the gateway until it gives a
//! final answer (DESIGN §4, invariant 6).
//!
//! Why an outbox: a refund decided inside a request must survive that request failing,
//! the process dying and the gateway being down. So the decision is one row in
//! `payment_outbox`, keyed by (kind, payment intent), written by [`enqueue_refund`] or
//! [`enqueue_cancel`]; sending it is a separate, repeatable step:
//! - [`drain_intent`], by the request that created the need, right away;
//! - [`drain`], by `commerce serve`'s periodic task and by `commerce drain` (Spin has no
//!   background tasks: run it on a schedule there).
//!
//! A drainer claims one due row per statement (`UPDATE … WHERE … FOR UPDATE SKIP
//! LOCKED … RETURNING`), which counts the attempt and moves the row's `next_attempt_at` a
//! lease ahead; then it calls the gateway; then it records the answer. No transaction spans
//! these calls (the Spin host recycles PostgreSQL connections without ROLLBACK). Drainers
//! running at once never claim the same row; a drainer that dies after claiming leaves the
//! row due again when the lease ends, and since every request carries an idempotency key
//! derived from the intent, sending it again moves money at most once. A failure that may
//! pass waits `outbox_retry_base_ms`, doubling per attempt up to `outbox_retry_max_ms`.

mod gateway;
pub mod routes;

use serde::Serialize;

pub use self::gateway::Outcome;
use self::gateway::{Gateway, PaidInstead, RefundRequest};
use crate::app::App;
use crate::clock::rfc3339_millis;
use crate::error::{Error, ErrorCode, Result};
use crate::metrics::{self, Event};
use crate::ports::{Http, Sql, SqlRow, SqlValue};

/// How long a claimed row is left to its drainer before another may take it: twice the
/// gateway timeout (at least a second), so a call that is still running is not sent twice
/// on the way (and if it were, its idempotency key would make that harmless).
fn lease_ms(gateway_timeout_ms: u64) -> i64 {
    i64::try_from(gateway_timeout_ms.saturating_mul(2).max(1_000)).unwrap_or(i64::MAX)
}

/// Rows one [`drain_intent`] call sends at most: an intent has a refund and a
/// cancellation at most; the bound only keeps a bug from looping.
const MAX_PER_INTENT: usize = 4;

/// A refund, unless the session's order was placed with this very payment (never both an
/// order and a refund; the session's unique order is found by its index).
const ENQUEUE_REFUND: &str = "\
INSERT INTO payment_outbox (kind, payment_intent_id, checkout_session_id, amount_minor, currency, reason)
SELECT 'refund', $2, $1, $3, $4, $5
WHERE NOT EXISTS (SELECT 1 FROM orders WHERE checkout_session_id = $1 AND payment_intent_id = $2)
ON CONFLICT (kind, payment_intent_id) DO NOTHING";

/// Ends the paid session `$1` FAILED and owes the refund of its payment, in one statement,
/// unless it has ended already: its order ends it too, in the order's own statement, and
/// whichever takes the session's row first decides (the order's statement needs the row
/// live, and is refused once it is not; this one rechecks the row after the order's).
const FAIL_AND_REFUND: &str = "\
WITH ended AS (
    UPDATE checkout_sessions SET ended_state = 'FAILED', ended_at = now()
    WHERE id = $1 AND ended_at IS NULL
    RETURNING id
)
INSERT INTO payment_outbox (kind, payment_intent_id, checkout_session_id, amount_minor, currency, reason)
SELECT 'refund', $2, $1, $3, $4, $5 FROM ended
ON CONFLICT (kind, payment_intent_id) DO NOTHING";

const ENQUEUE_CANCEL: &str = "\
INSERT INTO payment_outbox (kind, payment_intent_id, checkout_session_id, reason)
VALUES ('cancel_intent', $2, $1, $3)
ON CONFLICT (kind, payment_intent_id) DO NOTHING";

/// Claims the oldest due row (of one intent, if `$2` names it): counts the attempt and
/// leases the row for `$1` ms. The row is picked by a scalar subquery, which runs once
/// (a join with a `LIMIT 1` subquery may be rescanned per row and claim every row); SKIP
/// LOCKED lets concurrent drainers pass each other; the outer WHERE re-checks that the
/// row is still due.
const CLAIM: &str = "\
UPDATE payment_outbox o
SET attempts = o.attempts + 1,
    next_attempt_at = now() + $1::bigint * interval '1 millisecond'
WHERE (o.kind, o.payment_intent_id) = (
        SELECT kind, payment_intent_id FROM payment_outbox
        WHERE state = 'pending' AND next_attempt_at <= now()
          AND ($2::text IS NULL OR payment_intent_id = $2::text)
        ORDER BY created_at, kind, payment_intent_id
        LIMIT 1
        FOR UPDATE SKIP LOCKED)
  AND o.state = 'pending' AND o.next_attempt_at <= now()
RETURNING o.kind, o.payment_intent_id, o.checkout_session_id, o.amount_minor, o.reason, o.attempts";

const MARK_SENT: &str = "\
UPDATE payment_outbox
SET state = 'sent', sent_at = now(), gateway_object_id = $3, last_error = NULL
WHERE kind = $1 AND payment_intent_id = $2 AND state = 'pending'";

const MARK_REFUSED: &str = "\
UPDATE payment_outbox
SET state = 'refused', sent_at = now(), last_error = $3
WHERE kind = $1 AND payment_intent_id = $2 AND state = 'pending'";

/// Only the drainer of the latest claim (`attempts = $5`) reschedules, so a drainer whose
/// lease ran out cannot push back the row that another one holds now.
const MARK_RETRY: &str = "\
UPDATE payment_outbox
SET next_attempt_at = now() + $4::bigint * interval '1 millisecond', last_error = $3
WHERE kind = $1 AND payment_intent_id = $2 AND state = 'pending' AND attempts = $5";

const LIST: &str = "\
SELECT kind, payment_intent_id, checkout_session_id, amount_minor, currency, reason, state,
       attempts, last_error, gateway_object_id,
       (extract(epoch FROM created_at) * 1000)::bigint,
       (extract(epoch FROM sent_at) * 1000)::bigint,
       CASE WHEN state = 'pending' THEN (extract(epoch FROM next_attempt_at) * 1000)::bigint END
FROM payment_outbox
WHERE ($1::text IS NULL OR state = $1::text)
ORDER BY created_at DESC, kind, payment_intent_id
LIMIT $2";

/// What an outbox row asks of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Give a payment back: `POST /v1/refunds`.
    Refund,
    /// Cancel a payment intent that must not be paid: `POST /v1/payment_intents/{id}/cancel`.
    CancelIntent,
}

impl Kind {
    /// The name in the table and the API: `refund`, `cancel_intent`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Refund => "refund",
            Kind::CancelIntent => "cancel_intent",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        [Kind::Refund, Kind::CancelIntent]
            .into_iter()
            .find(|k| k.name() == text)
    }
}

/// Where an outbox row stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Owed: sent when its next attempt is due.
    Pending,
    /// The gateway accepted it, or had already done it.
    Sent,
    /// The gateway said no for good (the reason is in `last_error`); listed for a person.
    Refused,
}

impl OutboxState {
    /// The name in the table and the API: `pending`, `sent`, `refused`.
    pub fn name(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Sent => "sent",
            OutboxState::Refused => "refused",
        }
    }

    /// Reads a state name; anything else is 400 `INVALID_QUERY`.
    pub fn parse(text: &str) -> Result<OutboxState> {
        [OutboxState::Pending, OutboxState::Sent, OutboxState::Refused]
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| {
                Error::bad_request(
                    ErrorCode::InvalidQuery,
                    format!("state must be pending, sent or refused, got {text:?}"),
                )
            })
    }
}

/// One outbox row, as `GET /v1/admin/refunds` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEntry {
    /// Refund or intent cancellation.
    pub kind: Kind,
    /// The payment intent, `pi_…`.
    pub payment_intent_id: String,
    /// The checkout session it belongs to.
    pub checkout_session_id: String,
    /// What goes back, in minor units (refunds only).
    pub amount: Option<i64>,
    /// The amount's ISO 4217 code (refunds only).
    pub currency: Option<String>,
    /// Why the shop owes it.
    pub reason: String,
    /// Where it stands.
    pub state: OutboxState,
    /// How many times a drainer took it up.
    pub attempts: i64,
    /// The last failure, or the refusal's reason.
    pub last_error: Option<String>,
    /// When it was owed (RFC 3339).
    pub created_at: String,
    /// When the gateway gave its final answer (RFC 3339).
    pub sent_at: Option<String>,
    /// When a pending row is next tried (RFC 3339).
    pub next_attempt_at: Option<String>,
    /// The gateway's id of what it did (the refund `re_…`), when it named one.
    pub gateway_id: Option<String>,
}

/// One row a drainer took up, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Refund or intent cancellation.
    pub kind: Kind,
    /// The payment intent.
    pub payment_intent_id: String,
    /// Which attempt this was (1 for the first).
    pub attempt: i64,
    /// What the gateway's answer meant.
    pub outcome: Outcome,
    /// For a retry: how long until the next attempt, in ms.
    pub retry_in_ms: Option<i64>,
}

/// One line for logs and `commerce drain`: `refund pi_1 (attempt 1): sent, re_1`.
impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (attempt {}): ",
            self.kind.name(),
            self.payment_intent_id,
            self.attempt
        )?;
        match &self.outcome {
            Outcome::Sent { gateway_id: Some(id) } => write!(f, "sent, {id}"),
            Outcome::Sent { gateway_id: None } => write!(f, "sent"),
            Outcome::Refused { reason } => write!(f, "refused: {reason}"),
            Outcome::Retry { error } => match self.retry_in_ms {
                Some(ms) => write!(f, "failed, next attempt in {ms} ms: {error}"),
                None => write!(f, "failed: {error}"),
            },
        }
    }
}

/// What one drain did, row by row, in the order it took them up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Every row taken up.
    pub attempts: Vec<Attempt>,
}

impl DrainReport {
    /// Rows the gateway accepted (or had already done).
    pub fn sent(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Sent { .. }))
    }

    /// Rows the gateway refused for good.
    pub fn refused(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Refused { .. }))
    }

    /// Rows left pending for a later attempt.
    pub fn retrying(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Retry { .. }))
    }

    fn count(&self, what: impl Fn(&Outcome) -> bool) -> usize {
        self.attempts.iter().filter(|a| what(&a.outcome)).count()
    }
}

/// Owes the payment of `intent` back: `amount` minor units of `currency`, for `session`,
/// because of `reason`, unless the session's order was placed with that payment.
/// Idempotent per intent: a second call for the same intent changes nothing (the first
/// amount and reason stand); another intent of the same session is another refund.
/// Nothing is sent here: call [`drain_intent`] after it.
pub async fn enqueue_refund(
    sql: &impl Sql,
    session: &str,
    intent: &str,
    amount: i64,
    currency: &str,
    reason: &str,
) -> Result<()> {
    owe_refund(sql, ENQUEUE_REFUND, session, intent, amount, currency, reason).await?;
    Ok(())
}

/// Runs a statement that owes a refund (`$1` session, `$2` intent, `$3` amount, `$4`
/// currency, `$5` reason), counting it; whether it wrote one.
async fn owe_refund(
    sql: &impl Sql,
    statement: &str,
    session: &str,
    intent: &str,
    amount: i64,
    currency: &str,
    reason: &str,
) -> Result<bool> {
    let params = [
        SqlValue::Text(session.to_owned()),
        SqlValue::Text(intent.to_owned()),
        SqlValue::Int(amount),
        SqlValue::Text(currency.to_owned()),
        SqlValue::Text(reason.to_owned()),
    ];
    let written = sql.execute(statement, &params).await?;
    if written > 0 {
        metrics::event(Event::RefundEnqueued);
    }
    Ok(written > 0)
}

/// Ends the live paid session `session` FAILED in PostgreSQL and owes the refund of its
/// payment, atomically: `false` if the session had ended already (by its order, or before)
/// or has no paid copy, and nothing was done.
pub async fn fail_and_refund(
    sql: &impl Sql,
    session: &str,
    intent: &str,
    amount: i64,
    currency: &str,
    reason: &str,
) -> Result<bool> {
    owe_refund(sql, FAIL_AND_REFUND, session, intent, amount, currency, reason).await
}

/// Owes the cancellation of `intent` (of `session`, because of `reason`) at the gateway,
/// so that it can no longer be paid. Idempotent per intent. Nothing is sent here: call
/// [`drain_intent`] after it. If the customer paid first, the gateway refuses and the row
/// ends `refused`, and the drainer owes that payment back (its refund row, as its webhook
/// would write).
pub async fn enqueue_cancel(sql: &impl Sql, session: &str, intent: &str, reason: &str) -> Result<()> {
    let params = [
        SqlValue::Text(session.to_owned()),
        SqlValue::Text(intent.to_owned()),
        SqlValue::Text(reason.to_owned()),
    ];
    let written = sql.execute(ENQUEUE_CANCEL, &params).await?;
    if written > 0 {
        metrics::event(Event::CancelEnqueued);
    }
    Ok(())
}

/// Sends what is due for `intent` now (its refund and its cancellation, if owed and not in
/// backoff), for the request that created the need.
///
/// A gateway failure is recorded on the row (which stays pending, for [`drain`]) and is
/// not an error: the caller's request has done its part once the row is written. `Err`
/// only when PostgreSQL cannot be reached to claim or record, which changes nothing that
/// a later drain does not repair; a caller that has already answered for the money
/// should log it and carry on.
pub async fn drain_intent<R, S: Sql, H: Http>(app: &App<R, S, H>, intent: &str) -> Result<()> {
    for _ in 0..MAX_PER_INTENT {
        if send_next(app, Some(intent)).await?.is_none() {
            break;
        }
    }
    Ok(())
}

/// Sends every due row, oldest first, up to `limit` of them, and says what became of each.
/// Safe with any number of drainers at once (each row is claimed by one). Gateway failures
/// are in the report, not errors; `Err` only when PostgreSQL cannot be reached.
pub async fn drain<R, S: Sql, H: Http>(app: &App<R, S, H>, limit: usize) -> Result<DrainReport> {
    let mut report = DrainReport::default();
    while report.attempts.len() < limit {
        match send_next(app, None).await? {
            Some(attempt) => report.attempts.push(attempt),
            None => break,
        }
    }
    Ok(report)
}

/// The newest `limit` rows, in `state` if given, newest first.
pub async fn list(sql: &impl Sql, state: Option<OutboxState>, limit: u32) -> Result<Vec<OutboxEntry>> {
    let params = [
        state.map_or(SqlValue::Null, |s| SqlValue::Text(s.name().to_owned())),
        SqlValue::Int(limit.into()),
    ];
    let rows = sql.query(LIST, &params).await?;
    rows.iter().map(parse_entry).collect()
}

/// How long to wait after the `attempts`-th attempt failed: the base, doubled per
/// further attempt, at most the cap.
pub fn retry_delay_ms(base_ms: u64, max_ms: u64, attempts: i64) -> i64 {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 62)).unwrap_or(62);
    let delay = base_ms.saturating_mul(1u64.checked_shl(doublings).unwrap_or(u64::MAX));
    i64::try_from(delay.min(max_ms)).unwrap_or(i64::MAX)
}

/// What a claimed row asks the gateway to do.
enum Job {
    /// Give back `amount_minor` of the intent's payment.
    Refund { amount_minor: i64 },
    /// Cancel the intent.
    CancelIntent,
}

/// A row a drainer holds.
struct Claimed {
    job: Job,
    intent: String,
    session: String,
    reason: String,
    attempts: i64,
}

impl Claimed {
    fn kind(&self) -> Kind {
        match self.job {
            Job::Refund { .. } => Kind::Refund,
            Job::CancelIntent => Kind::CancelIntent,
        }
    }
}

/// Claims, sends and records one due row (of `intent`, if given); `None` if none is due.
async fn send_next<R, S: Sql, H: Http>(app: &App<R, S, H>, intent: Option<&str>) -> Result<Option<Attempt>> {
    let params = [
        SqlValue::Int(lease_ms(app.settings.gateway_timeout_ms)),
        intent.map_or(SqlValue::Null, |i| SqlValue::Text(i.to_owned())),
    ];
    let rows = app.sql.query(CLAIM, &params).await?;
    let claimed = match &rows[..] {
        [] => return Ok(None),
        [row] => parse_claim(row)?,
        more => {
            return Err(Error::Internal(format!(
                "an outbox claim took {} rows instead of one",
                more.len()
            )));
        }
    };
    let gateway = Gateway {
        http: &app.http,
        base_url: &app.settings.payment_gateway_url,
        api_key: &app.settings.payment_gateway_key,
    };
    let (outcome, paid_instead) = match claimed.job {
        Job::Refund { amount_minor } => {
            let refund = RefundRequest {
                intent: &claimed.intent,
                session: &claimed.session,
                amount_minor,
                reason: &claimed.reason,
            };
            (gateway.refund(&refund).await, None)
        }
        Job::CancelIntent => gateway.cancel(&claimed.intent).await,
    };
    if let Some(paid) = paid_instead {
        owe_back(&app.sql, &claimed, &paid).await?;
    }
    let kind = claimed.kind();
    let key = [
        SqlValue::Text(kind.name().to_owned()),
        SqlValue::Text(claimed.intent.clone()),
    ];
    let mut retry_in_ms = None;
    let (statement, extra) = match &outcome {
        Outcome::Sent { gateway_id } => (
            MARK_SENT,
            vec![gateway_id.clone().map_or(SqlValue::Null, SqlValue::Text)],
        ),
        Outcome::Refused { reason } => (MARK_REFUSED, vec![SqlValue::Text(reason.clone())]),
        Outcome::Retry { error } => {
            let delay = retry_delay_ms(
                app.settings.outbox_retry_base_ms,
                app.settings.outbox_retry_max_ms,
                claimed.attempts,
            );
            retry_in_ms = Some(delay);
            (
                MARK_RETRY,
                vec![
                    SqlValue::Text(error.clone()),
                    SqlValue::Int(delay),
                    SqlValue::Int(claimed.attempts),
                ],
            )
        }
    };
    let params: Vec<SqlValue> = key.into_iter().chain(extra).collect();
    app.sql.execute(statement, &params).await?;
    Ok(Some(Attempt {
        kind,
        payment_intent_id: claimed.intent,
        attempt: claimed.attempts,
        outcome,
        retry_in_ms,
    }))
}

/// An intent is cancelled only for a session that ended without an order; the gateway says
/// the customer paid it meanwhile, so that payment goes back (DESIGN §4, invariant 6),
/// whether or not its webhook ever arrives: the refund row its webhook would write (keyed
/// by intent).
async fn owe_back(sql: &impl Sql, claimed: &Claimed, paid: &PaidInstead) -> Result<()> {
    enqueue_refund(
        sql,
        &claimed.session,
        &claimed.intent,
        paid.amount_minor,
        &paid.currency,
        "the payment succeeded after its checkout had ended",
    )
    .await
}

fn text_at(row: &SqlRow, i: usize) -> Option<String> {
    row.get(i).and_then(SqlValue::as_text).map(str::to_owned)
}

fn int_at(row: &SqlRow, i: usize) -> Option<i64> {
    row.get(i).and_then(SqlValue::as_int)
}

fn parse_claim(row: &SqlRow) -> Result<Claimed> {
    let parsed = (|| {
        let job = match Kind::parse(row.first()?.as_text()?)? {
            // The table's CHECK gives every refund an amount.
            Kind::Refund => Job::Refund {
                amount_minor: int_at(row, 3)?,
            },
            Kind::CancelIntent => Job::CancelIntent,
        };
        Some(Claimed {
            job,
            intent: text_at(row, 1)?,
            session: text_at(row, 2)?,
            reason: text_at(row, 4)?,
            attempts: int_at(row, 5)?,
        })
    })();
    parsed.ok_or_else(|| Error::Internal(format!("unexpected outbox claim row: {row:?}")))
}

fn parse_entry(row: &SqlRow) -> Result<OutboxEntry> {
    let parsed = (|| {
        let state = text_at(row, 6)?;
        Some(OutboxEntry {
            kind: Kind::parse(row.first()?.as_text()?)?,
            payment_intent_id: text_at(row, 1)?,
            checkout_session_id: text_at(row, 2)?,
            amount: int_at(row, 3),
            currency: text_at(row, 4),
            reason: text_at(row, 5)?,
            state: OutboxState::parse(&state).ok()?,
            attempts: int_at(row, 7)?,
            last_error: text_at(row, 8),
            gateway_id: text_at(row, 9),
            created_at: rfc3339_millis(int_at(row, 10)?),
            sent_at: int_at(row, 11).map(rfc3339_millis),
            next_attempt_at: int_at(row, 12).map(rfc3339_millis),
        })
    })();
    parsed.ok_or_else(|| Error::Internal(format!("unexpected outbox row: {row:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let delays: Vec<i64> = (1..=12).map(|n| retry_delay_ms(1_000, 300_000, n)).collect();
        assert_eq!(
            delays,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000, 300_000,
                300_000
            ]
        );
        assert_eq!(retry_delay_ms(1_000, 300_000, 0), 1_000);
        assert_eq!(retry_delay_ms(1_000, 300_000, i64::MAX), 300_000);
        assert_eq!(retry_delay_ms(u64::MAX, u64::MAX, 70), i64::MAX);
    }

    #[test]
    fn the_lease_outlasts_a_gateway_call() {
        assert_eq!(lease_ms(10_000), 20_000);
        assert_eq!(lease_ms(0), 1_000);
        assert_eq!(lease_ms(u64::MAX), i64::MAX);
    }

    #[test]
    fn an_attempt_reads_as_one_line() {
        let attempt = |outcome, retry_in_ms| Attempt {
            kind: Kind::Refund,
            payment_intent_id: "pi_1".into(),
            attempt: 2,
            outcome,
            retry_in_ms,
        };
        let sent = attempt(
            Outcome::Sent {
                gateway_id: Some("re_1".into()),
            },
            None,
        );
        assert_eq!(sent.to_string(), "refund pi_1 (attempt 2): sent, re_1");
        let retry = attempt(
            Outcome::Retry {
                error: "HTTP 503".into(),
            },
            Some(2_000),
        );
        assert_eq!(
            retry.to_string(),
            "refund pi_1 (attempt 2): failed, next attempt in 2000 ms: HTTP 503"
        );
    }

    #[test]
    fn kinds_and_states_read_back_their_names() {
        for kind in [Kind::Refund, Kind::CancelIntent] {
            assert_eq!(Kind::parse(kind.name()), Some(kind));
        }
        for state in [OutboxState::Pending, OutboxState::Sent, OutboxState::Refused] {
            assert_eq!(OutboxState::parse(state.name()).unwrap(), state);
        }
        let e = OutboxState::parse("Pending").unwrap_err();
        assert_eq!((e.status(), e.code()), (400, "INVALID_QUERY"));
        assert_eq!(Kind::parse("cancel"), None);
    }
}
