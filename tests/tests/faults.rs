//! The fault suite (issue 8, DESIGN §4): a flash sale never oversells and every paid
//! customer ends with exactly one order or their money back, whatever fails in between.
//!
//! Each scenario runs many concurrent buyers for few units of one variant (60 for 30 in
//! CI, 200 for 100 with `COMMERCE_FAULTS_FULL=1`), injects one fault mid-run, heals it,
//! lets every buyer finish (each retries failed steps with the same Idempotency-Key), and
//! then checks the books: see `commerce_tests::faults::Books`. Each prints a one-line
//! summary (`cargo test --test faults -- --nocapture` shows them).

use std::sync::Arc;
use std::time::Duration;

use commerce_core::ports::Config;
use commerce_native::EnvConfig;
use commerce_tests::faults::{
    Books, BuyerPlan, Buyers, Gate, Persistence, Progress, Proxy, RedisProcess, ServeProcess, addr_of,
};
use commerce_tests::gateway::FakeGateway;
use commerce_tests::host::Host;
use commerce_tests::{Caller, TestApp};

/// The variant on sale.
const VARIANT: &str = "var-1";
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
const DATABASE_TIMEOUT: Duration = Duration::from_millis(1000);
const GATEWAY_TIMEOUT: Duration = Duration::from_millis(2000);
/// What a 503 may take beyond the timeout of the dependency that failed.
const MARGIN: Duration = Duration::from_millis(500);

/// How big a run is: small in CI, the size with `COMMERCE_FAULTS_FULL=1`.
struct Size {
    buyers: usize,
    units: i64,
    /// How long a pause lasts.
    pause: Duration,
    /// How long buyers keep at a failing step.
    patience: Duration,
    /// Over how long the buyers arrive.
    spread: Duration,
}

fn size() -> Size {
    if std::env::var("COMMERCE_FAULTS_FULL").is_ok_and(|v| v == "1") {
        Size {
            buyers: 200,
            units: 100,
            pause: Duration::from_secs(10),
            patience: Duration::from_secs(120),
            spread: Duration::from_secs(5),
        }
    } else {
        Size {
            buyers: 60,
            units: 30,
            pause: Duration::from_secs(3),
            patience: Duration::from_secs(45),
            spread: Duration::from_secs(3),
        }
    }
}

impl Size {
    fn plan(&self) -> BuyerPlan {
        let mut plan = BuyerPlan::new(self.buyers, VARIANT);
        plan.spread = self.spread;
        plan.patience = self.patience;
        plan
    }
}

/// Where the shop's app finds its dependencies.
#[derive(Default)]
struct Wiring<'a> {
    /// A Redis of the test's own instead of the shared one.
    redis_url: Option<String>,
    /// A proxy in front of PostgreSQL.
    database_proxy: Option<&'a Proxy>,
    /// More settings (Spin variable names).
    extra: &'a [(&'a str, &'a str)],
}

/// A shop with small timeouts and `units` of [`VARIANT`] on hand.
async fn shop(units: i64, wiring: Wiring<'_>) -> (TestApp, Arc<FakeGateway>) {
    let configure = |c: EnvConfig| {
        let mut c = c
            .set("redis_timeout_ms", REDIS_TIMEOUT.as_millis().to_string())
            .set("database_timeout_ms", DATABASE_TIMEOUT.as_millis().to_string())
            .set("gateway_timeout_ms", GATEWAY_TIMEOUT.as_millis().to_string());
        if let Some(url) = &wiring.redis_url {
            c = c.set("redis_url", url);
        }
        if let Some(proxy) = wiring.database_proxy {
            let url = c.get("database_url").expect("the test schema's database_url");
            c = c.set("database_url", proxy.url_for(&url));
        }
        for (name, value) in wiring.extra {
            c = c.set(name, *value);
        }
        c
    };
    let (app, gateway) = TestApp::shop(1, configure).await;
    let set = app.set_on_hand(VARIANT, units).await;
    assert_eq!(set.status, 200, "{set:?}");
    (app, Arc::new(gateway))
}

/// The longest a request can run: the sum of its timeouts, and the margin. An
/// idempotency key whose request died keeps its retries waiting no longer than this.
fn lease() -> Duration {
    REDIS_TIMEOUT + DATABASE_TIMEOUT + GATEWAY_TIMEOUT + MARGIN
}

/// The books of a run selling `units` of [`VARIANT`]: see [`Books`].
fn books<'a>(
    scenario: &'a str,
    app: &'a TestApp,
    base: &str,
    redis: commerce_tests::redis_link::TestRedis,
    gateway: &'a FakeGateway,
    units: i64,
    max_503: Duration,
) -> Books<'a> {
    Books::new(scenario, app, base, redis, gateway, VARIANT, units, max_503).key_in_use_at_most(lease())
}

/// The longest a 503 may take when no dependency is at fault (the app was killed).
fn any_timeout() -> Duration {
    REDIS_TIMEOUT.max(DATABASE_TIMEOUT) + MARGIN
}

/// When a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// Mid-run: a quarter of the units paid for, buyers arriving, checking out and paying
    /// throughout.
    MidRun,
    /// While checkouts are being started: a third of the units in sessions.
    DuringCheckouts,
    /// Every unit in a session waiting for its payment; the buyers wait at a gate, which
    /// opens right after the fault struck, so the webhooks meet the fault.
    PaymentsPending,
    /// Every unit in a session waiting for its payment, the payments made at once, and a
    /// tenth of the webhooks answered: the rest are in flight.
    DuringWebhooks,
}

/// A sale under way: the buyers, and the gate they pay through.
struct Sale {
    buyers: Buyers,
    gate: Gate,
    moment: Moment,
    units: usize,
}

impl Sale {
    /// Starts the buyers of `size` against `base`, held at the pay gate if the fault is
    /// to meet their payments.
    fn start(size: &Size, base: &str, gateway: &Arc<FakeGateway>, moment: Moment) -> Sale {
        let gate = Gate::default();
        let mut plan = size.plan();
        if matches!(moment, Moment::PaymentsPending | Moment::DuringWebhooks) {
            plan.pay_gate = Some(gate.clone());
        }
        Sale {
            buyers: Buyers::start(base, gateway.clone(), plan),
            gate,
            moment,
            units: size.units as usize,
        }
    }

    /// Waits for the moment the fault is to strike (a minute at most).
    async fn moment(&self) {
        let (units, within) = (self.units, Duration::from_secs(60));
        let b = &self.buyers;
        match self.moment {
            Moment::MidRun => {
                b.wait_for("a quarter of the units paid for", within, |p| {
                    Progress::get(&p.settled) >= units / 4
                })
                .await
            }
            Moment::DuringCheckouts => {
                b.wait_for("a third of the units in sessions", within, |p| {
                    Progress::get(&p.sessions) >= units / 3
                })
                .await
            }
            Moment::PaymentsPending => {
                b.wait_for("every unit waiting for its payment", within, |p| {
                    Progress::get(&p.intents) >= units
                })
                .await
            }
            Moment::DuringWebhooks => {
                b.wait_for("every unit waiting for its payment", within, |p| {
                    Progress::get(&p.intents) >= units
                })
                .await;
                self.gate.open();
                b.wait_for("a tenth of the webhooks answered", within, |p| {
                    Progress::get(&p.settled) >= units / 10
                })
                .await
            }
        };
    }

    /// Right after the fault struck: the payments held for it go through.
    fn struck(&self) {
        self.gate.open();
    }
}

/// A shop on a Redis of the test's own, with `persistence`.
async fn shop_on_own_redis(
    size: &Size,
    persistence: Persistence,
) -> (RedisProcess, TestApp, Arc<FakeGateway>) {
    let redis = RedisProcess::start(persistence).await;
    let (app, gateway) = shop(
        size.units,
        Wiring {
            redis_url: Some(redis.url()),
            ..Wiring::default()
        },
    )
    .await;
    (redis, app, gateway)
}

/// Redis dies (`kill -9`) at `moment` and comes back a second later on the same port with
/// what `persistence` kept.
async fn redis_killed_and_restarted(scenario: &str, persistence: Persistence, moment: Moment) {
    let size = size();
    let (mut redis, app, gateway) = shop_on_own_redis(&size, persistence).await;
    let sale = Sale::start(&size, &app.base, &gateway, moment);
    sale.moment().await;
    redis.kill9();
    sale.struck();
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart().await;
    let run = sale.buyers.finish().await;
    let redis = redis.connection().await;
    books(
        scenario,
        &app,
        &app.base,
        redis,
        &gateway,
        size.units,
        REDIS_TIMEOUT + MARGIN,
    )
    .assert(&run)
    .await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_and_restarted_from_its_aof_keeps_the_books() {
    redis_killed_and_restarted(
        "redis kill -9 mid-run, restarted with AOF",
        Persistence::Aof,
        Moment::MidRun,
    )
    .await;
}

/// Every unit is in a session waiting for its payment when Redis loses everything: the
/// payments must still become orders, from what PostgreSQL kept of the sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_empty_while_payments_are_pending_keeps_the_books() {
    redis_killed_and_restarted(
        "redis kill -9 with payments pending, restarted empty",
        Persistence::Nothing,
        Moment::PaymentsPending,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushall_during_webhooks_keeps_the_books() {
    let size = size();
    let (redis, app, gateway) = shop_on_own_redis(&size, Persistence::Aof).await;
    let sale = Sale::start(&size, &app.base, &gateway, Moment::DuringWebhooks);
    sale.moment().await;
    redis.flushall().await;
    let run = sale.buyers.finish().await;
    let redis = redis.connection().await;
    books(
        "redis FLUSHALL during webhooks",
        &app,
        &app.base,
        redis,
        &gateway,
        size.units,
        REDIS_TIMEOUT + MARGIN,
    )
    .assert(&run)
    .await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_mid_run_keeps_the_books_and_answers_503_in_time() {
    let size = size();
    let (redis, app, gateway) = shop_on_own_redis(&size, Persistence::Aof).await;
    // The app in a process of its own, so the time of each 503 is the server's, not the
    // test's scheduling of hundreds of buyers on the same two threads.
    let serve = ServeProcess::start(&app, &[]).await;
    let sale = Sale::start(&size, &serve.base, &gateway, Moment::MidRun);
    sale.moment().await;
    redis.stop();
    let paused_at = std::time::Instant::now();
    // An operator's scrape meanwhile: one timeout at most, with Redis reported down.
    let scrape = app
        .http
        .get(format!("{}/metrics", serve.base))
        .send()
        .await
        .expect("a scrape is answered");
    let took = paused_at.elapsed();
    let text = scrape.text().await.expect("the scrape's text");
    assert!(
        text.contains("commerce_dependency_up{dependency=\"redis\"} 0"),
        "the scrape reports Redis down"
    );
    assert!(
        took <= REDIS_TIMEOUT + MARGIN,
        "a scrape with Redis paused took {took:?}"
    );
    tokio::time::sleep(size.pause.saturating_sub(paused_at.elapsed())).await;
    redis.cont();
    let run = sale.buyers.finish().await;
    let scenario = format!("redis paused (SIGSTOP) {:?} mid-run", size.pause);
    let redis = redis.connection().await;
    books(
        &scenario,
        &app,
        &app.base,
        redis,
        &gateway,
        size.units,
        REDIS_TIMEOUT + MARGIN,
    )
    .assert(&run)
    .await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_paused_during_webhooks_keeps_the_books_and_answers_503_in_time() {
    let size = size();
    let database_url = std::env::var("COMMERCE_DATABASE_URL").expect("COMMERCE_DATABASE_URL (scripts/test)");
    let postgres = Proxy::start(addr_of(&database_url)).await;
    let (app, gateway) = shop(
        size.units,
        Wiring {
            database_proxy: Some(&postgres),
            ..Wiring::default()
        },
    )
    .await;
    // The app in a process of its own (see the Redis pause above).
    let serve = ServeProcess::start(&app, &[]).await;
    let sale = Sale::start(&size, &serve.base, &gateway, Moment::PaymentsPending);
    sale.moment().await;
    postgres.pause();
    sale.struck();
    tokio::time::sleep(size.pause).await;
    postgres.resume();
    let run = sale.buyers.finish().await;
    let scenario = format!("postgres paused {:?} during webhooks", size.pause);
    let redis = app.redis.clone();
    books(
        &scenario,
        &app,
        &app.base,
        redis,
        &gateway,
        size.units,
        DATABASE_TIMEOUT + MARGIN,
    )
    .assert(&run)
    .await;
    app.finish().await;
}

/// A delivery of a payment whose session Redis shows PAYMENT_CONFIRMED (an earlier delivery
/// was cut short after its move), met while PostgreSQL is out of reach, answers 503 within
/// one database timeout. It used to ask PostgreSQL for the order, let that read's timeout
/// go (as a read of the session does), then time out again writing the order: 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_to_a_confirmed_session_answers_503_within_one_database_timeout() {
    let (postgres, app, gateway, paying) = paying_behind_a_proxy("redelivered").await;
    app.set_stored_state(&paying.session, "PAYMENT_CONFIRMED").await;
    let (status, body) = within_one_timeout(&postgres, app.intent_paid(&gateway, &paying.intent)).await;
    assert_eq!(status, 503, "{body}");
    let (status, body) = app.intent_paid(&gateway, &paying.intent).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("COMPLETED")),
        "{body}"
    );
    app.finish().await;
}

/// A shop of 5 units behind a PostgreSQL proxy the test pauses, with a session paying for
/// one of them.
async fn paying_behind_a_proxy(key: &str) -> (Proxy, TestApp, Arc<FakeGateway>, commerce_tests::Paying) {
    let database_url = std::env::var("COMMERCE_DATABASE_URL").expect("COMMERCE_DATABASE_URL (scripts/test)");
    let postgres = Proxy::start(addr_of(&database_url)).await;
    let (app, gateway) = shop(
        5,
        Wiring {
            database_proxy: Some(&postgres),
            ..Wiring::default()
        },
    )
    .await;
    let paying = app.paying_session(&[(VARIANT, 1)], key).await;
    (postgres, app, gateway, paying)
}

/// `call` with PostgreSQL paused: its answer, which must come within one database timeout.
async fn within_one_timeout<T: std::fmt::Debug>(postgres: &Proxy, call: impl Future<Output = T>) -> T {
    postgres.pause();
    let started = std::time::Instant::now();
    let reply = call.await;
    let took = started.elapsed();
    postgres.resume();
    assert!(
        took <= DATABASE_TIMEOUT + MARGIN,
        "answered after {took:?}, more than one database timeout ({DATABASE_TIMEOUT:?}) and the margin: {reply:?}"
    );
    reply
}

/// A cancel sent again (a double tap, a retry whose answer was lost) used to let the read's
/// question to PostgreSQL time out, then wait again on the release's: 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cancel_while_postgres_is_paused_answers_503_within_one_database_timeout() {
    let (postgres, app, _gateway, paying) = paying_behind_a_proxy("cancel-twice").await;
    let first = app.cancel(&paying.session, Caller::Anonymous).await;
    assert_eq!(first.status, 200, "{first:?}");
    let again = within_one_timeout(&postgres, app.cancel(&paying.session, Caller::Anonymous)).await;
    assert_eq!(again.status, 503, "{again:?}");
    let again = app.cancel(&paying.session, Caller::Anonymous).await;
    assert_eq!(
        (again.status, again.body["state"].as_str()),
        (200, Some("CANCELLED")),
        "{again:?}"
    );
    app.finish().await;
}

/// A payment intent asked again after the cart's lock was lost and the cart changed would
/// cancel its session. With PostgreSQL paused it used to wait two timeouts and leave the
/// session CANCELLED with its holds kept and its intent open; now it answers 503 at once,
/// cancels nothing, and the next call cancels it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_intent_that_would_cancel_its_session_while_postgres_is_paused_cancels_nothing() {
    let (postgres, app, _gateway, paying) = paying_behind_a_proxy("lock-lost").await;
    let mut redis = app.redis.clone();
    let _: () = redis::AsyncCommands::del(&mut redis, app.cart_lock_key(&paying.cart))
        .await
        .unwrap();
    let changed = app
        .post(
            &format!("/v1/carts/{}/items", paying.cart),
            serde_json::json!({ "variantId": VARIANT, "quantity": 1 }),
        )
        .await;
    assert_eq!(changed.status, 200, "{changed:?}");
    let reply = within_one_timeout(&postgres, app.payment_intent(&paying.session, Caller::Anonymous)).await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(
        app.stored_state(&paying.session).await.as_deref(),
        Some("PAYMENT_PENDING")
    );
    let reply = app.payment_intent(&paying.session, Caller::Anonymous).await;
    assert_eq!(
        (reply.status, reply.body["error"]["code"].as_str()),
        (409, Some("CHECKOUT_STATE")),
        "{reply:?}"
    );
    assert_eq!(
        app.stored_state(&paying.session).await.as_deref(),
        Some("CANCELLED")
    );
    assert_eq!(app.sellable(VARIANT).await, 5, "its hold is freed");
    let cancels: i64 = app
        .pg
        .query_one(
            "SELECT count(*) FROM payment_outbox WHERE kind = 'cancel_intent' AND payment_intent_id = $1",
            &[&paying.intent],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cancels, 1, "the intent's cancel is owed");
    app.finish().await;
}

/// A paid session whose frozen cart Redis lost is shown from Redis alone when PostgreSQL is
/// out of reach: it used to ask PostgreSQL for its order, then for its frozen cart, each
/// waiting a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_session_without_its_frozen_cart_is_shown_within_one_database_timeout() {
    let (postgres, app, _gateway, paying) = paying_behind_a_proxy("frozen-lost").await;
    app.set_stored_state(&paying.session, "PAYMENT_CONFIRMED").await;
    let mut redis = app.redis.clone();
    let _: () = redis::AsyncCommands::del(&mut redis, app.metadata_key(&paying.session))
        .await
        .unwrap();
    let shown = within_one_timeout(&postgres, app.get(&format!("/v1/checkout/{}", paying.session))).await;
    assert_eq!(
        (shown.status, shown.body["state"].as_str()),
        (200, Some("PAYMENT_CONFIRMED")),
        "{shown:?}"
    );
    app.finish().await;
}

/// A read that expires an overdue session while PostgreSQL is paused answers 503 and frees
/// nothing; the next read frees what it held (it used to wait for the sweep).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_a_read_expired_without_its_release_is_released_by_the_next_read() {
    let (postgres, app, _gateway, paying) = paying_behind_a_proxy("expired-cut").await;
    assert_eq!(app.sellable(VARIANT).await, 4);
    let mut redis = app.redis.clone();
    let _: () = redis::AsyncCommands::hset(&mut redis, app.session_key(&paying.session), "deadline", 1000)
        .await
        .unwrap();
    let read = within_one_timeout(&postgres, app.get(&format!("/v1/checkout/{}", paying.session))).await;
    assert_eq!(read.status, 503, "{read:?}");
    assert_eq!(
        app.stored_state(&paying.session).await.as_deref(),
        Some("EXPIRED")
    );
    read_releases(&app, &paying, "EXPIRED").await;
    app.finish().await;
}

/// The next read of `paying`'s session answers it `state` and frees what it held: its
/// hold (the shop's 5 units all sellable again) and its cart's lock.
async fn read_releases(app: &TestApp, paying: &commerce_tests::Paying, state: &str) {
    let read = app.get(&format!("/v1/checkout/{}", paying.session)).await;
    assert_eq!(
        (read.status, read.body["state"].as_str()),
        (200, Some(state)),
        "{read:?}"
    );
    assert_eq!(app.sellable(VARIANT).await, 5, "its hold is freed");
    let mut redis = app.redis.clone();
    let locked: bool = redis::AsyncCommands::exists(&mut redis, app.cart_lock_key(&paying.cart))
        .await
        .unwrap();
    assert!(!locked, "its cart's lock is freed");
}

/// What PostgreSQL records of `session`'s end: its state, whether its release is recorded,
/// and how many cancels of its intent the outbox owes.
async fn ended(app: &TestApp, session: &str) -> (Option<String>, bool, i64) {
    let row = app
        .pg
        .query_one(
            "SELECT ended_state, released_at IS NOT NULL, \
             (SELECT count(*) FROM payment_outbox WHERE kind = 'cancel_intent' AND checkout_session_id = $1) \
             FROM checkout_sessions WHERE id = $1",
            &[&session],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// A release cut short after PostgreSQL's part (the session's end recorded there, its
/// intent's cancel owed in the outbox) says so in Redis, and the next read finishes it from
/// the holds on without that part. A release that ran every statement again on each read
/// could, under a slow PostgreSQL, outrun every request's deadline and never finish: in
/// the deadline race above, a buyer's payment intent met its expired session's release
/// and answered 503 for 18 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_cut_short_after_postgres_s_part_is_finished_by_the_next_read() {
    let (app, gateway) = shop(
        5,
        Wiring {
            extra: &[("request_timeout_ms", "1000")],
            ..Wiring::default()
        },
    )
    .await;
    let paying = app.paying_session(&[(VARIANT, 1)], "cut-after-postgres").await;
    assert_eq!(app.sellable(VARIANT).await, 4);
    // The cancel's request ends while it sends the intent's cancel to the gateway.
    gateway.delay_next_cancel(Duration::from_secs(3));
    let cancel = app.cancel(&paying.session, Caller::Anonymous).await;
    assert_eq!(cancel.status, 503, "{cancel:?}");
    assert_eq!(
        app.stored_field(&paying.session, "releasing").await.as_deref(),
        Some("postgres"),
        "PostgreSQL's part is done"
    );
    assert_eq!(app.sellable(VARIANT).await, 4, "the hold is not freed yet");
    assert_eq!(
        ended(&app, &paying.session).await,
        (Some("CANCELLED".into()), false, 1)
    );

    read_releases(&app, &paying, "CANCELLED").await;
    assert_eq!(
        app.stored_field(&paying.session, "releasing").await,
        None,
        "the release is finished"
    );
    assert_eq!(
        ended(&app, &paying.session).await,
        (Some("CANCELLED".into()), true, 1),
        "recorded released in PostgreSQL, its intent's cancel owed once"
    );
    app.finish().await;
}

/// `commerce serve` dies (`kill -9`) at `moment` and is started again a second later.
async fn the_app_killed(scenario: &str, moment: Moment) {
    let size = size();
    let (app, gateway) = shop(size.units, Wiring::default()).await;
    let mut serve = ServeProcess::start(&app, &[]).await;
    let sale = Sale::start(&size, &serve.base, &gateway, moment);
    sale.moment().await;
    serve.kill9();
    sale.struck();
    tokio::time::sleep(Duration::from_secs(1)).await;
    serve.restart().await;
    let run = sale.buyers.finish().await;
    let redis = app.redis.clone();
    books(
        scenario,
        &app,
        &serve.base,
        redis,
        &gateway,
        size.units,
        any_timeout(),
    )
    .assert(&run)
    .await;
    app.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_killed_during_checkouts_keeps_the_books() {
    the_app_killed("app kill -9 during checkouts", Moment::DuringCheckouts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_killed_during_webhooks_keeps_the_books() {
    the_app_killed("app kill -9 during webhooks", Moment::DuringWebhooks).await;
}

/// The old gap: a session's holds got their deadline round trips before the session did,
/// so under Redis latency a payment could arrive when the holds had died (and their units
/// been taken by another buyer) but the session still took payments. With 120 ms per
/// Redis round trip the gap was about 500 ms; buyers pay 250 to 500 ms before their
/// session's deadline, the buyers of sold-out units keep trying to take whatever is freed,
/// and 400 ms of PostgreSQL latency on the order write gives the buyer who took a unit
/// time to pay for it too (before the fix: 40 to 44 orders for 30 units).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_racing_their_deadline_under_redis_latency_never_outlive_their_holds() {
    let size = size();
    let redis = RedisProcess::start(Persistence::Nothing).await;
    let slow = Proxy::start(redis.addr()).await;
    let database_url = std::env::var("COMMERCE_DATABASE_URL").expect("COMMERCE_DATABASE_URL (scripts/test)");
    let postgres = Proxy::start(addr_of(&database_url)).await;
    let (app, gateway) = shop(
        size.units,
        Wiring {
            redis_url: Some(slow.url_for(&redis.url())),
            database_proxy: Some(&postgres),
            extra: &[
                ("checkout_lock_ttl_seconds", "3"),
                ("checkout_session_ttl_seconds", "3"),
                ("request_timeout_ms", "3000"),
            ],
        },
    )
    .await;
    slow.set_latency(Duration::from_millis(120));
    postgres.set_latency(Duration::from_millis(400));
    let mut plan = size.plan();
    plan.keep_trying = true;
    plan.pay_before_deadline = Some((Duration::from_millis(250), Duration::from_millis(500)));
    plan.patience = size
        .patience
        .min(Duration::from_secs(if size.buyers > 100 { 40 } else { 20 }));
    let buyers = Buyers::start(&app.base, gateway.clone(), plan);
    let run = buyers.finish().await;
    slow.set_latency(Duration::ZERO);
    postgres.set_latency(Duration::ZERO);
    books(
        "deadline race, 120 ms Redis latency",
        &app,
        &app.base,
        redis.connection().await,
        &gateway,
        size.units,
        // Nothing is down here, only slow: a request that meets a timeout after several
        // slow calls is bounded by its deadline (request_timeout_ms), not by one call's.
        Duration::from_millis(3000) + MARGIN,
    )
    .no_refused_orders()
    .assert(&run)
    .await;
    app.finish().await;
}

/// The request that sends a call into a paused Redis answers 503 within the Redis timeout,
/// long before Redis runs that call. Whether the call was its Idempotency-Key's begin
/// (which would take a lease when Redis resumes) or a later step (the lease already taken),
/// a retry with the same key goes through as soon as Redis is back, not after the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_redis_pause_goes_through_as_soon_as_redis_is_back() {
    let size = size();
    let (redis, app, _gateway) = shop_on_own_redis(&size, Persistence::Aof).await;
    let serve = ServeProcess::start(&app, &[]).await;
    let http = &app.http;
    let post = |path: String, key: &'static str, body: serde_json::Value| {
        http.post(format!("{}{path}", serve.base))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let cart = |key| async move {
        let made = post("/v1/carts".into(), key, serde_json::json!({}))
            .await
            .unwrap();
        assert_eq!(made.status(), 201);
        let cart = made.json::<serde_json::Value>().await.unwrap()["cartId"]
            .as_str()
            .unwrap()
            .to_owned();
        let line = serde_json::json!({ "variantId": VARIANT, "quantity": 1 });
        let added = post(format!("/v1/carts/{cart}/items"), key, line).await.unwrap();
        assert_eq!(added.status(), 200);
        cart
    };
    let carts = [cart("pause-cart-1").await, cart("pause-cart-2").await];

    redis.stop();
    let mut refused = Vec::new();
    for (i, cart) in carts.iter().enumerate() {
        let key = ["pause-checkout-1", "pause-checkout-2"][i];
        let started = std::time::Instant::now();
        let reply = post("/v1/checkout".into(), key, serde_json::json!({ "cartId": cart }))
            .await
            .unwrap();
        assert_eq!(reply.status(), 503, "Redis is paused");
        assert!(
            started.elapsed() <= REDIS_TIMEOUT + MARGIN,
            "{:?}",
            started.elapsed()
        );
        refused.push((key, cart.clone()));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.cont();
    let back = std::time::Instant::now();

    for (key, cart) in refused {
        let status = loop {
            let reply = post("/v1/checkout".into(), key, serde_json::json!({ "cartId": cart }))
                .await
                .unwrap();
            let status = reply.status().as_u16();
            assert_ne!(
                status, 409,
                "{key}: held back by the lease of an attempt that answered 503"
            );
            if status != 503 || back.elapsed() > lease() {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(status, 201, "{key}");
    }
    assert!(
        back.elapsed() < lease(),
        "the retries went through {:?} after Redis came back",
        back.elapsed()
    );
    app.finish().await;
}

/// A Redis that starts asking for a password (a rotated secret not yet deployed) cannot
/// serve the app: every route answers 503, also for the long commands Redis refuses with
/// `ERR Protocol error: unauthenticated multibulk length` rather than `NOAUTH`.
#[tokio::test]
async fn a_redis_that_refuses_the_app_is_a_503_on_every_route() {
    let size = size();
    let (redis, app, _gateway) = shop_on_own_redis(&size, Persistence::Nothing).await;
    let mut admin = redis.connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("rotated")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: redis::RedisResult<()> = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut admin)
        .await;
    let many: Vec<String> = (1..=12).map(|i| format!("var-{i}")).collect();
    let quote = json_lines(&many);
    for _ in 0..3 {
        for (path, body) in [
            (
                "/v1/inventory/availability",
                serde_json::json!({ "variantIds": many }),
            ),
            ("/v1/pricing/quote", quote.clone()),
        ] {
            let reply = app.post(path, body).await;
            assert_eq!(
                (reply.status, reply.code()),
                (503, "SERVICE_UNAVAILABLE"),
                "{path}: {reply:?}"
            );
        }
        assert_eq!(app.get("/v1/inventory/var-1").await.status, 503);
    }
    app.finish().await;
}

/// A password Redis refuses for a while (rotated, the user switched off, a restart without
/// the user list) is a 503 on every call, and the app serves again as soon as Redis takes
/// it, without a restart: a refused authentication is not kept as the connection's state.
#[tokio::test]
async fn a_refused_password_is_a_503_until_redis_takes_it_again() {
    let size = size();
    let redis = RedisProcess::start(Persistence::Nothing).await;
    let mut admin = redis.connection().await;
    let acl = |password: &str| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg("app")
            .arg("on")
            .arg("resetpass")
            .arg(format!(">{password}"));
        cmd.arg("~*").arg("&*").arg("+@all");
        cmd
    };
    let _: () = acl("first").query_async(&mut admin).await.unwrap();
    let (app, _gateway) = shop(
        size.units,
        Wiring {
            redis_url: Some(redis.url().replacen("redis://", "redis://app:first@", 1)),
            ..Wiring::default()
        },
    )
    .await;
    assert_eq!(app.get("/v1/inventory/var-1").await.status, 200);

    let _: () = acl("rotated").query_async(&mut admin).await.unwrap();
    let _: redis::RedisResult<()> = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("app")
        .query_async(&mut admin)
        .await;
    for _ in 0..3 {
        let reply = app.get("/v1/inventory/var-1").await;
        assert_eq!(
            (reply.status, reply.code()),
            (503, "SERVICE_UNAVAILABLE"),
            "{reply:?}"
        );
        let reply = app.post("/v1/carts", serde_json::json!({})).await;
        assert_eq!(reply.status, 503, "{reply:?}");
    }

    let _: () = acl("first").query_async(&mut admin).await.unwrap();
    let mut status = 0;
    for _ in 0..50 {
        status = app.get("/v1/inventory/var-1").await.status;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        status, 200,
        "the app did not serve again once the password was taken"
    );
    app.finish().await;
}

/// A Redis that closes idle clients (its `timeout`), or drops the app's connection while
/// the app is idle (`CLIENT KILL`, as a restart would), costs no request a 503: the
/// connection is kept in use, and a dropped one is found and replaced before a request
/// needs it.
#[tokio::test]
async fn a_connection_redis_drops_while_the_app_is_idle_costs_no_request() {
    let size = size();
    let (redis, app, _gateway) = shop_on_own_redis(&size, Persistence::Nothing).await;
    let mut admin = redis.connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("timeout")
        .arg(2)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(app.get("/v1/inventory/var-1").await.status, 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reply = app.get("/v1/inventory/var-1").await;
    assert_eq!(reply.status, 200, "after the idle timeout: {reply:?}");

    // Drops every client but the caller, on a connection of its own each time (Redis's
    // `timeout` closes an idle one); natively the server keeps its connection, which must
    // be among them (each request on Spin opens its own).
    let keeps_a_connection = TestApp::host() == Host::Native;
    let own = &redis;
    let client_kill = |when: String| async move {
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut own.connection().await)
            .await
            .unwrap();
        assert!(
            killed > 0 || !keeps_a_connection,
            "{when}: CLIENT KILL closed no connection"
        );
    };
    client_kill("after the idle timeout".into()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reply = app.get("/v1/inventory/var-1").await;
    assert_eq!(reply.status, 200, "after CLIENT KILL: {reply:?}");

    // A request right after the drop, before any keep-alive PING has met it: the call
    // finds the connection closed before it is sent, and goes on a new one.
    for round in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        client_kill(format!("round {round}")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let reply = app.get("/v1/inventory/var-1").await;
        assert_eq!(
            reply.status, 200,
            "round {round}, 20 ms after CLIENT KILL: {reply:?}"
        );
    }
    app.finish().await;
}

fn json_lines(variants: &[String]) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = variants
        .iter()
        .map(|v| serde_json::json!({ "variantId": v, "quantity": 1 }))
        .collect();
    serde_json::json!({ "lines": lines })
}
