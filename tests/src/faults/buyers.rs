//! Concurrent buyers, each walking a whole purchase over HTTP as a shop's front end and
//! the payment gateway would: a new anonymous cart, one unit added, `POST /v1/checkout`,
//! `POST …/payment-intent`, then the gateway takes the money and delivers the signed
//! `payment_intent.succeeded` webhook until it is answered with a 2xx, as Stripe does.
//!
//! Every failed step (no answer, a 5xx, `409 IDEMPOTENCY_KEY_IN_USE` after its
//! `Retry-After`) is retried with the same `Idempotency-Key`, with back-off, until the
//! buyer's patience runs out. A buyer whose cart or session the shop lost before any money
//! moved starts over with a new cart, as a shopper would; once paid, never.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Reply;
use crate::gateway::FakeGateway;

/// How many times a buyer starts over with a new cart after the shop lost their cart or
/// session, unless [`BuyerPlan::keep_trying`].
const FRESH_STARTS: usize = 5;
/// The most times a buyer sends one step (besides running out of patience).
const MAX_ATTEMPTS: usize = 500;
/// The longest a buyer waits on a `Retry-After`.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the buyers of one run do.
#[derive(Clone)]
pub struct BuyerPlan {
    /// How many buyers.
    pub buyers: usize,
    /// The variant each buys one unit of.
    pub variant: String,
    /// Buyer `i` starts `spread × i / buyers` after the run.
    pub spread: Duration,
    /// Each buyer gives up a step that still fails this long after it started.
    pub patience: Duration,
    /// The longest one request may take before the buyer calls it hung.
    pub request_timeout: Duration,
    /// Buyers with an intent wait here until the test opens it, before paying.
    pub pay_gate: Option<Gate>,
    /// Each buyer pays this long before their session's deadline (the `expiresAt` of the
    /// intent's answer, on the Redis clock of this machine): a fixed offset from this
    /// range, spread evenly over the buyers. Without it, buyers pay at once.
    pub pay_before_deadline: Option<(Duration, Duration)>,
    /// A buyer who met a sold-out variant tries again with a new cart until their
    /// patience runs out (the buyers of a sale that keeps freeing units).
    pub keep_trying: bool,
}

impl BuyerPlan {
    /// `buyers` buyers of one unit of `variant` each, starting over 2 s, patient for 60 s.
    pub fn new(buyers: usize, variant: &str) -> BuyerPlan {
        BuyerPlan {
            buyers,
            variant: variant.to_owned(),
            spread: Duration::from_secs(2),
            patience: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            pay_gate: None,
            pay_before_deadline: None,
            keep_trying: false,
        }
    }
}

/// A gate the buyers wait at before paying; the test opens it.
#[derive(Clone)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Gate(Arc::new(watch::Sender::new(false)))
    }
}

impl Gate {
    /// Lets every buyer waiting (and every later one) through.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    async fn passed(&self) {
        let mut open = self.0.subscribe();
        let _ = open.wait_for(|o| *o).await;
    }
}

/// How far the buyers of a run have got, counted as they go.
#[derive(Debug, Default)]
pub struct Progress {
    /// Checkout sessions started.
    pub sessions: AtomicUsize,
    /// Payment intents received.
    pub intents: AtomicUsize,
    /// Payments the gateway took.
    pub paid: AtomicUsize,
    /// Webhooks answered with a 2xx.
    pub settled: AtomicUsize,
    /// Buyers finished, whatever their outcome.
    pub done: AtomicUsize,
}

impl Progress {
    fn bump(counter: &AtomicUsize) {
        counter.fetch_add(1, Ordering::SeqCst);
    }

    /// A counter's value.
    pub fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

/// One answer a buyer saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// `cart`, `add`, `checkout`, `intent` or `webhook`.
    pub step: &'static str,
    /// The HTTP status; 0 when no answer came (connection refused or reset, or hung).
    pub status: u16,
    /// From sending the request to the end of the answer.
    pub millis: u64,
    /// No answer within [`BuyerPlan::request_timeout`].
    pub hung: bool,
    /// The error code of the answer (`""` if none).
    pub code: String,
    /// Its `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// When the request was sent.
    pub sent: Instant,
}

/// How a buyer's purchase ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Paid, and the webhook was answered with this order.
    Ordered(String),
    /// Paid, and the webhook was answered without an order (the payment is to be
    /// returned); the answer's body.
    PaidWithoutOrder(Value),
    /// Checkout said there was not enough stock.
    SoldOut,
    /// A step was refused for another reason than stock, and starting over did not help.
    TurnedAway {
        /// The step.
        step: &'static str,
        /// Its status.
        status: u16,
        /// Its error code.
        code: String,
    },
    /// A step still failed when the buyer's patience ran out.
    GaveUp {
        /// The step.
        step: &'static str,
        /// The last status seen (0: no answer).
        status: u16,
    },
}

/// Everything one buyer did and saw.
#[derive(Debug, Clone)]
pub struct BuyerRecord {
    /// The buyer's number.
    pub buyer: usize,
    /// How it ended.
    pub outcome: Outcome,
    /// Every answer, in order.
    pub seen: Vec<Seen>,
    /// The payment intent of the session the buyer paid for (or last got).
    pub intent: Option<String>,
    /// Whether the gateway took the buyer's money (for [`BuyerRecord::intent`]).
    pub paid: bool,
}

/// The buyers of a run, under way.
pub struct Buyers {
    /// How far they have got.
    pub progress: Arc<Progress>,
    handles: Vec<JoinHandle<BuyerRecord>>,
    started: Instant,
}

/// A finished run.
pub struct Run {
    /// One record per buyer.
    pub records: Vec<BuyerRecord>,
    /// From the first buyer's start to the last one's end.
    pub elapsed: Duration,
}

impl Buyers {
    /// Starts `plan.buyers` buyers against the app at `base`, paid through `gateway`.
    pub fn start(base: &str, gateway: Arc<FakeGateway>, plan: BuyerPlan) -> Buyers {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("an HTTP client");
        let progress = Arc::new(Progress::default());
        let started = Instant::now();
        let plan = Arc::new(plan);
        let handles = (0..plan.buyers)
            .map(|i| {
                let buyer = Buyer {
                    i,
                    base: base.trim_end_matches('/').to_owned(),
                    http: http.clone(),
                    gateway: gateway.clone(),
                    plan: plan.clone(),
                    progress: progress.clone(),
                    deadline: Instant::now() + plan.patience,
                    seen: Vec::new(),
                    intent: None,
                    paid: false,
                };
                tokio::spawn(buyer.buy())
            })
            .collect();
        Buyers {
            progress,
            handles,
            started,
        }
    }

    /// Waits until `reached(progress)` or `within` has passed; says which on stderr.
    pub async fn wait_for(&self, what: &str, within: Duration, reached: impl Fn(&Progress) -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if reached(&self.progress) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("the buyers did not reach \"{what}\" within {within:?}; going on");
        false
    }

    /// Waits for every buyer to finish.
    pub async fn finish(self) -> Run {
        let mut records = Vec::with_capacity(self.handles.len());
        for handle in self.handles {
            match handle.await {
                Ok(record) => records.push(record),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        Run {
            records,
            elapsed: self.started.elapsed(),
        }
    }
}

/// What ends one walk through the purchase.
enum Walk {
    /// The purchase is over.
    Done(Outcome),
    /// The shop lost the cart or session before any money moved (or the variant was sold
    /// out and the buyer keeps trying): start over with a new cart, or end with this.
    StartOver(Outcome),
}

struct Buyer {
    i: usize,
    base: String,
    http: reqwest::Client,
    gateway: Arc<FakeGateway>,
    plan: Arc<BuyerPlan>,
    progress: Arc<Progress>,
    deadline: Instant,
    seen: Vec<Seen>,
    intent: Option<String>,
    paid: bool,
}

fn code(reply: &Reply) -> String {
    reply.body["error"]["code"].as_str().unwrap_or("").to_owned()
}

fn turned_away(step: &'static str, reply: &Reply) -> Outcome {
    Outcome::TurnedAway {
        step,
        status: reply.status,
        code: code(reply),
    }
}

/// Milliseconds since the Unix epoch now, on this machine's clock.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time with milliseconds, as the
/// API writes them (`2025-01-31T12:00:00.000Z`); H. Hinnant's `days_from_civil`.
fn epoch_ms(text: &str) -> Option<i64> {
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    if text.len() != 24 || !text.ends_with('Z') {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, millis) = (number(11..13)?, number(14..16)?, number(17..19)?, number(20..23)?);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

impl Buyer {
    async fn buy(mut self) -> BuyerRecord {
        let offset = self
            .plan
            .spread
            .mul_f64(self.i as f64 / self.plan.buyers.max(1) as f64);
        tokio::time::sleep(offset).await;
        self.deadline = Instant::now() + self.plan.patience;
        let mut round = 0;
        let outcome = loop {
            round += 1;
            match self.walk(round).await {
                Walk::Done(outcome) => break outcome,
                Walk::StartOver(outcome) => {
                    let out_of_time = Instant::now() + Duration::from_millis(300) >= self.deadline;
                    if out_of_time || (!self.plan.keep_trying && round >= FRESH_STARTS) {
                        break outcome;
                    }
                    tokio::time::sleep(Duration::from_millis(100 + (self.i as u64 * 37) % 200)).await;
                }
            }
        };
        Progress::bump(&self.progress.done);
        BuyerRecord {
            buyer: self.i,
            outcome,
            seen: self.seen,
            intent: self.intent,
            paid: self.paid,
        }
    }

    async fn walk(&mut self, round: usize) -> Walk {
        let (i, variant) = (self.i, self.plan.variant.clone());
        let cart = match self.send("cart", Method::POST, "/v1/carts", None, None).await {
            Ok(r) if (200..300).contains(&r.status) => match r.body["cartId"].as_str() {
                Some(cart) => cart.to_owned(),
                None => return Walk::Done(turned_away("cart", &r)),
            },
            Ok(r) => return Walk::Done(turned_away("cart", &r)),
            Err(gave_up) => return Walk::Done(gave_up),
        };
        let add_key = format!("buyer-{i}-{round}-add");
        let line = json!({ "variantId": variant, "quantity": 1 });
        let path = format!("/v1/carts/{cart}/items");
        match self
            .send("add", Method::POST, &path, Some(&line), Some(&add_key))
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => {}
            Ok(r) if r.status == 404 => return Walk::StartOver(turned_away("add", &r)),
            Ok(r) => return Walk::Done(turned_away("add", &r)),
            Err(gave_up) => return Walk::Done(gave_up),
        }
        let checkout_key = format!("buyer-{i}-{round}-checkout");
        let start = json!({ "cartId": cart });
        let session = match self
            .send(
                "checkout",
                Method::POST,
                "/v1/checkout",
                Some(&start),
                Some(&checkout_key),
            )
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => r.body["sessionId"].as_str().map(str::to_owned),
            Ok(r) => match (r.status, code(&r).as_str()) {
                (409, "INSUFFICIENT_INVENTORY") if self.plan.keep_trying => {
                    return Walk::StartOver(Outcome::SoldOut);
                }
                (409, "INSUFFICIENT_INVENTORY") => return Walk::Done(Outcome::SoldOut),
                // The idempotency record was lost but not the lock: the session stands.
                (409, "CHECKOUT_IN_PROGRESS") => r.body["error"]["details"]["sessionId"]
                    .as_str()
                    .map(str::to_owned),
                (404, _) | (409, "CART_EMPTY") => return Walk::StartOver(turned_away("checkout", &r)),
                _ => return Walk::Done(turned_away("checkout", &r)),
            },
            Err(gave_up) => return Walk::Done(gave_up),
        };
        let Some(session) = session else {
            return Walk::Done(Outcome::TurnedAway {
                step: "checkout",
                status: 0,
                code: "NO_SESSION_ID".into(),
            });
        };
        Progress::bump(&self.progress.sessions);
        let intent_key = format!("buyer-{i}-{round}-intent");
        let path = format!("/v1/checkout/{session}/payment-intent");
        let (intent, deadline) = match self
            .send("intent", Method::POST, &path, None, Some(&intent_key))
            .await
        {
            Ok(r) if (200..300).contains(&r.status) => match r.body["paymentIntentId"].as_str() {
                Some(intent) => (intent.to_owned(), r.body["expiresAt"].as_str().and_then(epoch_ms)),
                None => return Walk::Done(turned_away("intent", &r)),
            },
            // The holds were gone when the session went to take its payment.
            Ok(r) if code(&r) == "INSUFFICIENT_INVENTORY" && self.plan.keep_trying => {
                return Walk::StartOver(Outcome::SoldOut);
            }
            Ok(r) if code(&r) == "INSUFFICIENT_INVENTORY" => return Walk::Done(Outcome::SoldOut),
            // The session was lost or ended before anyone paid: start over.
            Ok(r) if r.status == 404 || code(&r) == "CHECKOUT_STATE" => {
                return Walk::StartOver(turned_away("intent", &r));
            }
            Ok(r) => return Walk::Done(turned_away("intent", &r)),
            Err(gave_up) => return Walk::Done(gave_up),
        };
        self.intent = Some(intent.clone());
        Progress::bump(&self.progress.intents);
        if let Some(gate) = self.plan.pay_gate.clone() {
            if tokio::time::timeout_at(self.deadline.into(), gate.passed())
                .await
                .is_err()
            {
                return Walk::Done(Outcome::GaveUp {
                    step: "pay",
                    status: 0,
                });
            }
        }
        if let (Some((low, high)), Some(deadline)) = (self.plan.pay_before_deadline, deadline) {
            let share = ((self.i as u64 * 7919) % 1000) as f64 / 1000.0;
            let before = low + high.saturating_sub(low).mul_f64(share);
            let pay_at = deadline - before.as_millis() as i64;
            let wait = pay_at - now_ms();
            if wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
            }
        }
        self.gateway.succeed(&intent);
        self.paid = true;
        Progress::bump(&self.progress.paid);
        let event = self.gateway.event("payment_intent.succeeded", &intent);
        match self.deliver(&event).await {
            Ok(r) => {
                Progress::bump(&self.progress.settled);
                Walk::Done(match r.body["orderId"].as_str() {
                    Some(order) => Outcome::Ordered(order.to_owned()),
                    None => Outcome::PaidWithoutOrder(r.body),
                })
            }
            Err(gave_up) => Walk::Done(gave_up),
        }
    }

    /// Sends a request until it is answered with neither a 5xx nor `409
    /// IDEMPOTENCY_KEY_IN_USE`, with the same `key` every time.
    async fn send(
        &mut self,
        step: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Result<Reply, Outcome> {
        let url = format!("{}{path}", self.base);
        let http = self.http.clone();
        let request = || {
            let mut req = http.request(method.clone(), &url);
            if let Some(body) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            if let Some(key) = key {
                req = req.header("idempotency-key", key);
            }
            req
        };
        self.retry(step, request, false).await
    }

    /// Delivers the webhook `payload`, signed afresh each time, until a 2xx.
    async fn deliver(&mut self, payload: &str) -> Result<Reply, Outcome> {
        let url = format!("{}/v1/checkout/payment-webhook", self.base);
        let (http, gateway) = (self.http.clone(), self.gateway.clone());
        let request = || {
            http.post(&url)
                .header("content-type", "application/json")
                .header("stripe-signature", gateway.signature(payload))
                .body(payload.to_owned())
        };
        self.retry("webhook", request, true).await
    }

    async fn retry(
        &mut self,
        step: &'static str,
        request: impl Fn() -> RequestBuilder,
        until_2xx: bool,
    ) -> Result<Reply, Outcome> {
        let mut backoff = Duration::from_millis(100);
        let mut last = 0;
        for attempt in 0..MAX_ATTEMPTS {
            // The first attempt always goes out; only retries are bounded by patience.
            if attempt > 0 && Instant::now() >= self.deadline {
                break;
            }
            let sent = Instant::now();
            let answer = async {
                let res = request().timeout(self.plan.request_timeout).send().await?;
                let status = res.status().as_u16();
                let retry_after = res
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let bytes = res.bytes().await?;
                Ok::<_, reqwest::Error>((status, retry_after, bytes))
            }
            .await;
            let millis = sent.elapsed().as_millis() as u64;
            match answer {
                Err(e) => {
                    last = 0;
                    self.seen.push(Seen {
                        step,
                        status: 0,
                        millis,
                        hung: e.is_timeout(),
                        code: String::new(),
                        retry_after: None,
                        sent,
                    });
                }
                Ok((status, retry_after, bytes)) => {
                    last = status;
                    let reply = Reply {
                        status,
                        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                    };
                    self.seen.push(Seen {
                        step,
                        status,
                        millis,
                        hung: false,
                        code: code(&reply),
                        retry_after,
                        sent,
                    });
                    if status >= 500 && status != 503 {
                        // A bug, never a fault's fair answer: say what it was.
                        eprintln!("faults: {step} answered {status}: {}", reply.body);
                    }
                    if status == 409 && code(&reply) == "IDEMPOTENCY_KEY_IN_USE" {
                        self.nap(retry_after.unwrap_or(Duration::from_secs(1)).min(MAX_RETRY_AFTER))
                            .await;
                        continue;
                    }
                    let done = if until_2xx {
                        (200..300).contains(&status)
                    } else {
                        status < 500
                    };
                    if done {
                        return Ok(reply);
                    }
                }
            }
            self.nap(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
        Err(Outcome::GaveUp { step, status: last })
    }

    /// Sleeps `wait`, or less if the buyer's patience runs out first.
    async fn nap(&self, wait: Duration) {
        let left = self.deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(wait.min(left)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_api_s_times_are_read_back_to_the_millisecond() {
        for ms in [
            0,
            951_782_400_123,
            1_735_689_599_999,
            1_740_787_200_000,
            4_102_444_800_001,
        ] {
            assert_eq!(
                super::epoch_ms(&commerce_core::clock::rfc3339_millis(ms)),
                Some(ms)
            );
        }
        assert_eq!(super::epoch_ms("2025-01-31T12:00:00Z"), None);
    }
}
