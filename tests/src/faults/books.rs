//! The books check of a fault run, in the manner of Jepsen's bank test: once the fault
//! has healed and the refund outbox is drained, the stock adds up in PostgreSQL, Redis
//! agrees with it after `commerce check --repair`, every payment taken ended in exactly one
//! order or exactly one refund, and no one was answered with anything worse than a timely
//! 503.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use serde_json::Value;

use super::buyers::{Outcome, Run};
use super::serve::run_commerce;
use crate::gateway::FakeGateway;
use crate::{ADMIN_TOKEN, TestApp};

/// How long the refund outbox may take to drain once the fault has healed.
const DRAIN_WITHIN: Duration = Duration::from_secs(30);
/// How many examples a violation lists.
const EXAMPLES: usize = 5;

/// What to check a run against.
pub struct Books<'a> {
    scenario: &'a str,
    app: &'a TestApp,
    base: String,
    redis: crate::redis_link::TestRedis,
    gateway: &'a FakeGateway,
    variant: &'a str,
    initial: i64,
    max_503: Duration,
    max_key_in_use: Option<Duration>,
    no_refused_orders: bool,
}

fn examples<T: std::fmt::Debug>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(EXAMPLES).map(|i| format!("{i:?}")).collect();
    let more = items.len().saturating_sub(EXAMPLES);
    if more > 0 {
        format!("{} … and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// What the first [`EXAMPLES`] buyers whose outcome `matches` saw, one line each: every
/// answer as `step status code @ms+ms` (sent that long after the buyer's first request,
/// answered that long after), so a violation says where the time went.
fn timelines(run: &Run, matches: impl Fn(&Outcome) -> bool) -> String {
    let lines: Vec<String> = run
        .records
        .iter()
        .filter(|record| matches(&record.outcome))
        .take(EXAMPLES)
        .map(|record| {
            let Some(first) = record.seen.first().map(|s| s.sent) else {
                return format!("\n    buyer {}: sent nothing", record.buyer);
            };
            let seen: Vec<String> = record
                .seen
                .iter()
                .map(|s| {
                    let at = s.sent.duration_since(first).as_millis();
                    format!("{} {} {} @{at}+{}", s.step, s.status, s.code, s.millis)
                })
                .collect();
            format!("\n    buyer {}: {}", record.buyer, seen.join(", "))
        })
        .collect();
    lines.concat()
}

fn short(body: &Value) -> String {
    let text = body.to_string();
    if text.len() > 600 {
        format!("{}…", &text[..600])
    } else {
        text
    }
}

impl<'a> Books<'a> {
    /// The books of `scenario`: `initial` units of `variant` were on hand; `app` holds the
    /// PostgreSQL schema, `base` serves the admin routes, `redis` is the Redis the app
    /// uses; every 503 must come within `max_503`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scenario: &'a str,
        app: &'a TestApp,
        base: &str,
        redis: crate::redis_link::TestRedis,
        gateway: &'a FakeGateway,
        variant: &'a str,
        initial: i64,
        max_503: Duration,
    ) -> Books<'a> {
        Books {
            scenario,
            app,
            base: base.trim_end_matches('/').to_owned(),
            redis,
            gateway,
            variant,
            initial,
            max_503,
            max_key_in_use: None,
            no_refused_orders: false,
        }
    }

    /// Also requires that no retry met `409 IDEMPOTENCY_KEY_IN_USE` for one key for longer
    /// than `lease` (the longest a request can run), and that each such 409 said when to
    /// come back (`Retry-After`).
    pub fn key_in_use_at_most(mut self, lease: Duration) -> Self {
        self.max_key_in_use = Some(lease);
        self
    }

    /// Also requires `commerce_orders_refused_total` in `/metrics` to be 0: no order was
    /// ever refused for want of stock, because no payment outlived its holds.
    pub fn no_refused_orders(mut self) -> Self {
        self.no_refused_orders = true;
        self
    }

    /// Checks the books, prints the run's one-line summary, and panics listing every
    /// violation found.
    pub async fn assert(&self, run: &Run) {
        let violations = self.check(run).await;
        assert!(
            violations.is_empty(),
            "{}: {} violation(s):\n  - {}",
            self.scenario,
            violations.len(),
            violations.join("\n  - ")
        );
    }

    /// Every violation of the books, after printing the run's summary.
    pub async fn check(&self, run: &Run) -> Vec<String> {
        let mut violations = Vec::new();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("an HTTP client");
        self.drain(&http, &mut violations).await;
        let orders = self.stock(&mut violations).await;
        let refunds = self.money(run, &orders, &mut violations);
        self.repaired(&http, &mut violations).await;
        self.answers(run, &mut violations);
        if self.no_refused_orders {
            self.refused_orders(&http, &mut violations).await;
        }
        self.summary(run, orders.len(), refunds);
        violations
    }

    async fn admin(&self, http: &reqwest::Client, method: &str, path: &str) -> Result<(u16, Value), String> {
        let res = http
            .request(
                method.parse().expect("an HTTP method"),
                format!("{}{path}", self.base),
            )
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await.map_err(|e| format!("{method} {path}: {e}"))?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
    }

    /// Waits until `GET /v1/admin/refunds` lists nothing `pending`, running `commerce
    /// drain` (what a Spin deployment runs) now and then in case the server's own
    /// periodic drain is not there.
    async fn drain(&self, http: &reqwest::Client, violations: &mut Vec<String>) {
        let deadline = Instant::now() + DRAIN_WITHIN;
        let mut next_drain = Instant::now() + Duration::from_secs(3);
        loop {
            let pending = match self.admin(http, "GET", "/v1/admin/refunds").await {
                Ok((200, body)) => body["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|i| i["state"] == "pending")
                    .cloned()
                    .collect::<Vec<Value>>(),
                Ok((status, body)) => {
                    violations.push(format!(
                        "the refund outbox cannot be read: GET /v1/admin/refunds answered {status} {}",
                        short(&body)
                    ));
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("{e}; asking again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(e) => {
                    violations.push(format!("the refund outbox cannot be read: {e}"));
                    return;
                }
            };
            if pending.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                violations.push(format!(
                    "{} refunds or intent cancellations still pending {DRAIN_WITHIN:?} after the fault healed: {}",
                    pending.len(),
                    examples(&pending)
                ));
                return;
            }
            if Instant::now() >= next_drain {
                next_drain = Instant::now() + Duration::from_secs(3);
                match run_commerce(self.app, &[], &["drain"], Duration::from_secs(20)).await {
                    Ok((status, _)) if status.success() => {}
                    Ok((status, stderr)) => eprintln!("commerce drain failed ({status}): {stderr}"),
                    Err(e) => eprintln!("commerce drain could not run: {e}"),
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The stock adds up in PostgreSQL; returns every order as (id, payment intent).
    async fn stock(&self, violations: &mut Vec<String>) -> Vec<(String, String)> {
        let pg = &self.app.pg;
        let on_hand: i64 = pg
            .query_one(
                "SELECT on_hand FROM inventory_levels WHERE variant_id = $1",
                &[&self.variant],
            )
            .await
            .expect("on-hand")
            .get(0);
        let sold: i64 = pg
            .query_one(
                "SELECT COALESCE(SUM(quantity), 0)::bigint FROM order_lines WHERE variant_id = $1",
                &[&self.variant],
            )
            .await
            .expect("units sold")
            .get(0);
        let orders: Vec<(String, String)> = pg
            .query("SELECT id, payment_intent_id FROM orders ORDER BY id", &[])
            .await
            .expect("orders")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let initial = self.initial;
        if sold > initial {
            violations.push(format!("oversold: {sold} units sold of {initial}"));
        }
        if on_hand < 0 {
            violations.push(format!("on-hand is negative: {on_hand}"));
        }
        if on_hand + sold != initial {
            violations.push(format!(
                "on-hand {on_hand} + units in orders {sold} = {} ≠ the initial {initial}",
                on_hand + sold
            ));
        }
        let mut redis = self.redis.clone();
        let key = self.app.variant_keys(self.variant).stock;
        let stock: Result<Option<i64>, _> = redis.get(&key).await;
        match stock {
            Ok(Some(stock)) if stock == on_hand => {}
            Ok(stock) => violations.push(format!(
                "after the repair Redis has stock {stock:?} for {} and PostgreSQL on-hand {on_hand}",
                self.variant
            )),
            Err(e) => violations.push(format!("Redis stock of {} cannot be read: {e}", self.variant)),
        }
        orders
    }

    /// Every payment taken ended in exactly one order or exactly one full refund sent to
    /// the gateway; every order was paid; every order a buyer was told of exists. Returns
    /// how many refunds the gateway received.
    fn money(&self, run: &Run, orders: &[(String, String)], violations: &mut Vec<String>) -> usize {
        let paid: BTreeSet<&str> = run
            .records
            .iter()
            .filter(|r| r.paid)
            .filter_map(|r| r.intent.as_deref())
            .collect();
        let amounts: BTreeMap<String, i64> = self
            .gateway
            .intents()
            .into_iter()
            .map(|i| (i.id, i.amount))
            .collect();
        let refunds = self.gateway.refunds();
        let mut per_intent: BTreeMap<&str, (usize, usize, i64)> = BTreeMap::new();
        for (_, intent) in orders {
            per_intent.entry(intent).or_default().0 += 1;
        }
        for refund in &refunds {
            let entry = per_intent.entry(&refund.payment_intent).or_default();
            entry.1 += 1;
            entry.2 += refund.amount;
        }
        let (mut both, mut neither, mut two_orders, mut two_refunds, mut partial, mut unpaid) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for intent in &paid {
            let (o, r, amount) = per_intent.get(intent).copied().unwrap_or_default();
            match (o, r) {
                (1, 0) => {}
                (0, 1) if Some(&amount) == amounts.get(*intent) => {}
                (0, 1) => partial.push(format!("{intent}: {amount} of {:?}", amounts.get(*intent))),
                (0, 0) => neither.push(*intent),
                (o, r) if o >= 1 && r >= 1 => both.push(*intent),
                (o, _) if o > 1 => two_orders.push(*intent),
                _ => two_refunds.push(*intent),
            }
        }
        for (intent, (o, r, _)) in &per_intent {
            if !paid.contains(intent) && (*o > 0 || *r > 0) {
                unpaid.push(format!("{intent}: {o} order(s), {r} refund(s)"));
            }
        }
        let found: BTreeSet<&str> = orders.iter().map(|(id, _)| id.as_str()).collect();
        let missing: Vec<&str> = run
            .records
            .iter()
            .filter_map(|r| match &r.outcome {
                Outcome::Ordered(order) if !found.contains(order.as_str()) => Some(order.as_str()),
                _ => None,
            })
            .collect();
        for (what, list) in [
            ("payments ended in both an order and a refund", &both),
            ("payments ended in neither an order nor a refund", &neither),
            ("payments made more than one order", &two_orders),
            ("payments were refunded more than once", &two_refunds),
            ("orders the buyer was told of are not in PostgreSQL", &missing),
        ] {
            if !list.is_empty() {
                violations.push(format!("{} {what}: {}", list.len(), examples(list)));
            }
        }
        if !partial.is_empty() {
            violations.push(format!(
                "{} refunds returned another amount than was paid: {}",
                partial.len(),
                examples(&partial)
            ));
        }
        if !unpaid.is_empty() {
            violations.push(format!(
                "{} orders or refunds for payments never taken: {}",
                unpaid.len(),
                examples(&unpaid)
            ));
        }
        refunds.len()
    }

    /// `POST /v1/admin/check/repair`, then `GET /v1/admin/check` finds no drift.
    async fn repaired(&self, http: &reqwest::Client, violations: &mut Vec<String>) {
        let started = Instant::now();
        let repair = self.admin(http, "POST", "/v1/admin/check/repair").await;
        let repaired = match &repair {
            Ok((_, body)) => body["repaired"].as_array().map_or(0, Vec::len),
            Err(_) => 0,
        };
        eprintln!(
            "faults: the repair took {} ms ({repaired} drifts repaired)",
            started.elapsed().as_millis()
        );
        match repair {
            Ok((200, _)) => {}
            Ok((status, body)) => violations.push(format!(
                "POST /v1/admin/check/repair answered {status} {}",
                short(&body)
            )),
            Err(e) => violations.push(e),
        }
        match self.admin(http, "GET", "/v1/admin/check").await {
            Ok((200, body)) if body["ok"] == true => {}
            Ok((status, body)) => violations.push(format!(
                "after the repair GET /v1/admin/check answered {status} {}",
                short(&body)
            )),
            Err(e) => violations.push(e),
        }
    }

    /// No 5xx but 503, every 503 within its timeout, nothing hung, every buyer served.
    fn answers(&self, run: &Run, violations: &mut Vec<String>) {
        let seen = || run.records.iter().flat_map(|r| r.seen.iter());
        let mut other_5xx: BTreeMap<(&str, u16), usize> = BTreeMap::new();
        for s in seen().filter(|s| s.status >= 500 && s.status != 503) {
            *other_5xx.entry((s.step, s.status)).or_default() += 1;
        }
        if !other_5xx.is_empty() {
            violations.push(format!("answers were 5xx other than 503: {other_5xx:?}"));
        }
        let late: Vec<u64> = seen()
            .filter(|s| s.status == 503 && s.millis > self.max_503.as_millis() as u64)
            .map(|s| s.millis)
            .collect();
        if !late.is_empty() {
            violations.push(format!(
                "{} answers of 503 took longer than {:?} (slowest {} ms)",
                late.len(),
                self.max_503,
                late.iter().max().copied().unwrap_or(0)
            ));
        }
        let hung: Vec<&str> = seen().filter(|s| s.hung).map(|s| s.step).collect();
        if !hung.is_empty() {
            violations.push(format!(
                "{} requests hung without an answer: {}",
                hung.len(),
                examples(&hung)
            ));
        }
        if let Some(lease) = self.max_key_in_use {
            self.leases(run, lease, violations);
        }
        let mut turned_away: BTreeMap<String, usize> = BTreeMap::new();
        let mut gave_up: BTreeMap<String, usize> = BTreeMap::new();
        for record in &run.records {
            match &record.outcome {
                Outcome::TurnedAway { step, status, code } => {
                    *turned_away.entry(format!("{step} {status} {code}")).or_default() += 1;
                }
                Outcome::GaveUp { step, status } => {
                    *gave_up.entry(format!("{step} {status}")).or_default() += 1;
                }
                _ => {}
            }
        }
        if !turned_away.is_empty() {
            violations.push(format!(
                "buyers were turned away for another reason than stock: {turned_away:?}"
            ));
        }
        if !gave_up.is_empty() {
            violations.push(format!(
                "buyers still failed when their patience ran out (step, last status): {gave_up:?}{}",
                timelines(run, |outcome| matches!(outcome, Outcome::GaveUp { .. }))
            ));
        }
    }

    /// A key's retries wait on `409 IDEMPOTENCY_KEY_IN_USE` no longer than `lease`, and
    /// each such 409 carries `Retry-After`.
    ///
    /// Keys are one per step of one buyer, and a buyer sends one attempt at a time, so the
    /// lease a 409 meets was taken by one of that step's earlier attempts that did not
    /// meet a 409 (one answered 503 after taking it, or went unanswered). The latest of
    /// those is the latest the lease can have been taken: a 409 more than `lease` after it
    /// met a lease that outlived its request. (Measured from the first 409 instead, two
    /// leases in a row, each within its limit, would add up: a 503 that took the key
    /// when the first ran out may leave a second.)
    fn leases(&self, run: &Run, lease: Duration, violations: &mut Vec<String>) {
        let in_use = |s: &super::Seen| s.status == 409 && s.code == "IDEMPOTENCY_KEY_IN_USE";
        let mut waits: Vec<(usize, &str, u128)> = Vec::new();
        let mut without_retry_after = 0;
        for record in &run.records {
            let mut taker: Option<&super::Seen> = None;
            let mut worst: Option<(&str, u128)> = None;
            for seen in &record.seen {
                if taker.is_some_and(|t| t.step != seen.step) {
                    taker = None;
                }
                if !in_use(seen) {
                    taker = Some(seen);
                    continue;
                }
                if seen.retry_after.is_none() {
                    without_retry_after += 1;
                }
                let waited = taker.map_or(Duration::MAX, |t| seen.sent.duration_since(t.sent));
                if waited > lease && worst.is_none_or(|(_, ms)| waited.as_millis() > ms) {
                    worst = Some((seen.step, waited.as_millis()));
                }
            }
            if let Some((step, ms)) = worst {
                waits.push((record.buyer, step, ms));
            }
        }
        if !waits.is_empty() {
            waits.sort_by_key(|w| std::cmp::Reverse(w.2));
            violations.push(format!(
                "{} retries met IDEMPOTENCY_KEY_IN_USE for longer than the {lease:?} a request can run \
                 (buyer, step, ms): {}",
                waits.len(),
                examples(&waits)
            ));
        }
        if without_retry_after > 0 {
            violations.push(format!(
                "{without_retry_after} answers of 409 IDEMPOTENCY_KEY_IN_USE had no Retry-After"
            ));
        }
    }

    /// `commerce_orders_refused_total` is in `/metrics` and is 0.
    async fn refused_orders(&self, http: &reqwest::Client, violations: &mut Vec<String>) {
        let text = match http.get(format!("{}/metrics", self.base)).send().await {
            Ok(res) => res.text().await.unwrap_or_default(),
            Err(e) => {
                violations.push(format!("GET /metrics: {e}"));
                return;
            }
        };
        let counts: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("commerce_orders_refused_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        if counts.is_empty() {
            violations.push("GET /metrics has no commerce_orders_refused_total".into());
        } else if counts.iter().sum::<f64>() != 0.0 {
            violations.push(format!(
                "orders were refused for want of stock (commerce_orders_refused_total = {}): a payment outlived its holds",
                counts.iter().sum::<f64>()
            ));
        }
    }

    fn summary(&self, run: &Run, orders: usize, refunds: usize) {
        let seen = || run.records.iter().flat_map(|r| r.seen.iter());
        let count = |f: fn(&Outcome) -> bool| run.records.iter().filter(|r| f(&r.outcome)).count();
        let n503 = seen().filter(|s| s.status == 503).count();
        let max_503 = seen()
            .filter(|s| s.status == 503)
            .map(|s| s.millis)
            .max()
            .unwrap_or(0);
        println!(
            "faults {}: {} buyers for {} units: {orders} orders, {refunds} refunds, {} paid, {} sold out, \
             {} turned away, {} gave up; {n503} × 503 (slowest {max_503} ms, limit {} ms), {} other 5xx, \
             {} without answer; {:.1} s",
            self.scenario,
            run.records.len(),
            self.initial,
            run.records.iter().filter(|r| r.paid).count(),
            count(|o| matches!(o, Outcome::SoldOut)),
            count(|o| matches!(o, Outcome::TurnedAway { .. })),
            count(|o| matches!(o, Outcome::GaveUp { .. })),
            self.max_503.as_millis(),
            seen().filter(|s| s.status >= 500 && s.status != 503).count(),
            seen().filter(|s| s.status == 0).count(),
            run.elapsed.as_secs_f64(),
        );
    }
}
