//! Kill points: the process dies right after each Redis or PostgreSQL call of a checkout
//! step (the call took effect, its answer is lost), then the step is retried. Every run must
//! end in exactly one order and consistent stock in both stores.
//!
//! The wrappers below are the real native adapters with a crash injected after the Nth
//! call; nothing else is faked.

use std::sync::atomic::{AtomicUsize, Ordering};

use commerce_core::App;
use commerce_core::cart::CartRef;
use commerce_core::checkout::Checkouts;
use commerce_core::checkout::gateway::{WebhookEvent, parse_event};
use commerce_core::error::{Dependency, PortError};
use commerce_core::ids::{CartId, SessionId};
use commerce_core::ports::{Redis, RedisArg, RedisReply, Sql, SqlRow, SqlValue};
use commerce_native::{NativePg, NativeRedis};
use commerce_tests::TestApp;
use commerce_tests::gateway::FakeGateway;

/// A port whose `at`-th call takes effect and then "crashes" (reports the dependency lost).
struct CrashAfter<P> {
    inner: P,
    at: usize,
    calls: AtomicUsize,
}

impl<P> CrashAfter<P> {
    fn new(inner: P, at: usize) -> Self {
        Self {
            inner,
            at,
            calls: AtomicUsize::new(0),
        }
    }

    fn crashed<T>(&self, dependency: Dependency, result: Result<T, PortError>) -> Result<T, PortError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            return Err(PortError::unreachable(
                dependency,
                "the process died after this call",
            ));
        }
        result
    }
}

impl Redis for CrashAfter<NativeRedis> {
    async fn execute(&self, command: &str, args: Vec<RedisArg>) -> Result<Vec<RedisReply>, PortError> {
        let result = self.inner.execute(command, args).await;
        self.crashed(Dependency::Redis, result)
    }

    async fn pause(&self, ms: u64) {
        self.inner.pause(ms).await;
    }
}

impl Sql for CrashAfter<NativePg> {
    async fn query(&self, statement: &str, params: &[SqlValue]) -> Result<Vec<SqlRow>, PortError> {
        let result = self.inner.query(statement, params).await;
        self.crashed(Dependency::Postgres, result)
    }

    async fn execute(&self, statement: &str, params: &[SqlValue]) -> Result<u64, PortError> {
        let result = self.inner.execute(statement, params).await;
        self.crashed(Dependency::Postgres, result)
    }
}

async fn shop() -> (TestApp, FakeGateway) {
    TestApp::shop(2, |c| c).await
}

/// A session paying for one unit of `var-1` (its idempotency key `key`), and the gateway's
/// event that its payment succeeded.
async fn paid(app: &TestApp, gateway: &FakeGateway, key: &str) -> (String, WebhookEvent) {
    let paying = app.paying_session(&[("var-1", 1)], key).await;
    let payload = gateway.event("payment_intent.succeeded", &paying.intent);
    (paying.session, parse_event(payload.as_bytes()).unwrap())
}

/// Stock agrees in both stores and nothing is held or locked.
async fn consistent(app: &TestApp, sold: i64) {
    assert_eq!(app.pg_on_hand("var-1").await, 100 - sold);
    assert_eq!(app.check_holds("var-1").await, (100 - sold, 0));
    let orders: i64 = app
        .pg
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, sold);
    let locks = app
        .redis_keys()
        .await
        .into_iter()
        .filter(|k| k.contains(":checkout:lock:"))
        .count();
    assert_eq!(locks, 0);
}

#[tokio::test]
async fn a_crash_after_any_call_of_placing_the_order_still_ends_in_one_order() {
    let (app, gateway) = shop().await;
    let mut sold = 0;
    for (store, at) in (1..=9)
        .map(|n| ("redis", n))
        .chain((1..=3).map(|n| ("postgres", n)))
    {
        let (session, event) = paid(&app, &gateway, &format!("{store}-{at}")).await;

        let a = &app.app;
        let crashed = if store == "redis" {
            let flaky = App::new(
                CrashAfter::new(a.redis.0.clone(), at),
                a.sql.clone(),
                a.http.clone(),
                a.settings.clone(),
            );
            Checkouts::new(&flaky).handle_event(&event).await
        } else {
            let flaky = App::new(
                a.redis.clone(),
                CrashAfter::new(a.sql.0.clone(), at),
                a.http.clone(),
                a.settings.clone(),
            );
            Checkouts::new(&flaky).handle_event(&event).await
        };
        if let Err(e) = &crashed {
            assert_eq!(e.status(), 503, "{store} #{at}: {e}");
        }
        // The gateway delivers again; the retry resumes from the state it finds.
        let retried = Checkouts::new(a).handle_event(&event).await.unwrap();
        assert_eq!(retried.state, Some("COMPLETED"), "{store} #{at}: {retried:?}");
        sold += 1;
        let id = SessionId::parse(&session).unwrap();
        assert_eq!(Checkouts::new(a).get(&id, None).await.unwrap().state, "COMPLETED");
        consistent(&app, sold).await;
    }
    app.finish().await;
}

#[tokio::test]
async fn a_crash_after_any_call_of_starting_a_checkout_is_resumed_by_its_retry() {
    let (app, _gateway) = shop().await;
    for at in 1..=6 {
        let cart = app.cart_with(&[("var-1", 1)]).await;
        let cart_ref = CartRef::Session(CartId::parse(&cart).unwrap());
        let token = format!("{at:032x}");
        let a = &app.app;
        let flaky = App::new(
            CrashAfter::new(a.redis.0.clone(), at),
            a.sql.clone(),
            a.http.clone(),
            a.settings.clone(),
        );
        let crashed = Checkouts::new(&flaky).start(&cart_ref, &token, None).await;
        if let Err(e) = &crashed {
            assert_eq!(e.status(), 503, "#{at}: {e}");
        }
        let resumed = Checkouts::new(a).start(&cart_ref, &token, None).await.unwrap();
        assert_eq!(resumed.session_id, format!("cs_{token}"));
        assert_eq!(resumed.state, "LOCKED");
        let id = SessionId::parse(&resumed.session_id).unwrap();
        Checkouts::new(a).cancel(&id, None).await.unwrap();
        consistent(&app, 0).await;
    }
    app.finish().await;
}

/// A Redis port that loses `stock_key` (as an eviction or a partial flush would) right
/// before the first script call whose keys name it among more than `more_than` keys.
struct LosesStockBefore {
    inner: NativeRedis,
    stock_key: String,
    more_than: i64,
    lost: std::sync::atomic::AtomicBool,
}

impl Redis for LosesStockBefore {
    async fn execute(&self, command: &str, args: Vec<RedisArg>) -> Result<Vec<RedisReply>, PortError> {
        let keys = match args.get(1) {
            Some(RedisArg::Int(n)) => *n,
            _ => 0,
        };
        let names = |arg: &RedisArg| matches!(arg, RedisArg::Bytes(b) if *b == self.stock_key.as_bytes());
        if command == "EVALSHA"
            && keys > self.more_than
            && args.iter().any(names)
            && !self.lost.swap(true, Ordering::SeqCst)
        {
            self.inner
                .execute("DEL", vec![self.stock_key.as_str().into()])
                .await?;
        }
        self.inner.execute(command, args).await
    }

    async fn pause(&self, ms: u64) {
        self.inner.pause(ms).await;
    }
}

#[tokio::test]
async fn an_order_whose_stock_redis_lost_before_its_last_steps_is_finished_step_by_step() {
    // On one Redis server an order's last steps (ORDER_CREATED, the stock committed, the
    // cart emptied, COMPLETED) are one script; it stops where the commit finds the stock
    // gone, and the steps one by one load it from PostgreSQL and finish the order.
    let (app, gateway) = shop().await;
    let (session, event) = paid(&app, &gateway, "stock-lost").await;
    let a = &app.app;
    let variant = commerce_core::ids::VariantId::parse("var-1").unwrap();
    let losing = App::new(
        LosesStockBefore {
            inner: a.redis.0.clone(),
            stock_key: a.keys.variant(&variant).stock,
            // The chain names 12 keys; no earlier call of the webhook names as many.
            more_than: 8,
            lost: std::sync::atomic::AtomicBool::new(false),
        },
        a.sql.clone(),
        a.http.clone(),
        a.settings.clone(),
    );
    let outcome = Checkouts::new(&losing).handle_event(&event).await.unwrap();
    assert!(
        losing.redis.lost.load(Ordering::SeqCst),
        "the stock was lost before the chain"
    );
    assert_eq!(outcome.state, Some("COMPLETED"), "{outcome:?}");
    let id = SessionId::parse(&session).unwrap();
    assert_eq!(Checkouts::new(a).get(&id, None).await.unwrap().state, "COMPLETED");
    consistent(&app, 1).await;
    app.finish().await;
}
