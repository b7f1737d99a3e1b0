//! The payment outbox's promises (DESIGN §4, invariant 6), against real PostgreSQL and
//! Redis and the fake Stripe: money owed back reaches the gateway, once per payment
//! intent, whatever fails on the way and however many drainers run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use commerce_core::checkout::gateway::create_intent;
use commerce_core::outbox::{self, DrainReport, Kind, OutboxState};
use commerce_core::pricing::money::{Currency, Money};
use commerce_native::EnvConfig;
use commerce_tests::gateway::{FakeGateway, FakeRefund};
use commerce_tests::{ADMIN_TOKEN, Caller, GATEWAY_KEY, Paying, Reply, TestApp};
use serde_json::{Value, json};

/// A shop whose drains happen only when a test runs them.
async fn shop(configure: impl FnOnce(EnvConfig) -> EnvConfig) -> (TestApp, FakeGateway) {
    TestApp::shop(3, |c| configure(c.set("outbox_drain_interval_ms", "0"))).await
}

/// Runs `commerce <command>` configured as the app, to completion, while this test's
/// runtime goes on serving the in-process gateway it calls; what it said.
async fn run(app: &TestApp, command: &str) -> String {
    let (status, said) = commerce_tests::faults::run_commerce(app, &[], &[command], Duration::from_secs(60))
        .await
        .unwrap();
    assert!(status.success(), "{said}");
    said
}

/// An intent made at the gateway for `session` outside checkout (a second payment the
/// customer started), paid.
async fn paid_intent(app: &TestApp, gateway: &FakeGateway, session: &str, amount: i64) -> String {
    let intent = create_intent(
        &app.app.http,
        &gateway.base,
        GATEWAY_KEY,
        session,
        Money::new(amount, Currency::parse("EUR").unwrap()),
        &format!("other-{session}-{amount}-{}", gateway.intents().len()),
    )
    .await
    .unwrap();
    assert!(gateway.succeed(&intent.id));
    intent.id
}

/// Delivers the intent's `payment_intent.succeeded` webhook and returns the answer.
async fn pay(app: &TestApp, gateway: &FakeGateway, intent: &str) -> Value {
    let (status, body) = app.intent_paid(gateway, intent).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn drain(app: &TestApp) -> DrainReport {
    outbox::drain(&*app.app, 1000).await.unwrap()
}

async fn admin_list(app: &TestApp, query: &str) -> Reply {
    app.call("GET", &format!("/v1/admin/refunds{query}"), None, Caller::Admin)
        .await
}

/// The listed rows by (kind, intent).
fn by_intent(list: &Reply) -> BTreeMap<(String, String), Value> {
    list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let key = (
                item["kind"].as_str().unwrap().to_owned(),
                item["paymentIntentId"].as_str().unwrap().to_owned(),
            );
            (key, item.clone())
        })
        .collect()
}

#[tokio::test]
async fn two_mismatched_payments_for_one_session_are_both_refunded() {
    let (app, gateway) = shop(|c| c).await;
    let Paying {
        session,
        intent: own,
        amount: total,
        ..
    } = app.paying_session(&[("var-1", 1)], "k-two").await;
    let other_amount = paid_intent(&app, &gateway, &session, total + 100).await;
    let second_intent = paid_intent(&app, &gateway, &session, total).await;

    for intent in [&other_amount, &second_intent, &other_amount] {
        let answer = pay(&app, &gateway, intent).await;
        assert!(answer["refundRequired"].is_string(), "{answer}");
    }
    assert!(gateway.succeed(&own));
    let order = pay(&app, &gateway, &own).await;
    assert_eq!(order["state"], "COMPLETED", "{order}");

    // Each refund was sent by the webhook request that owed it: nothing is left to drain.
    let report = drain(&app).await;
    assert_eq!((report.sent(), report.retrying()), (0, 0), "{report:?}");
    let mut refunds = gateway.refunds();
    refunds.sort_by(|a, b| a.payment_intent.cmp(&b.payment_intent));
    let mut expected = vec![
        (other_amount.clone(), total + 100),
        (second_intent.clone(), total),
    ];
    expected.sort();
    assert_eq!(
        refunds
            .iter()
            .map(|r| (r.payment_intent.clone(), r.amount))
            .collect::<Vec<_>>(),
        expected
    );
    assert!(drain(&app).await.attempts.is_empty(), "nothing is sent twice");
    assert_eq!(gateway.refund_calls(), 2);

    let listed = by_intent(&admin_list(&app, "").await);
    assert_eq!(listed.len(), 2, "{listed:?}");
    for intent in [&other_amount, &second_intent] {
        let row = &listed[&("refund".to_owned(), intent.clone())];
        assert_eq!(row["state"], "sent");
        assert_eq!(row["checkoutSessionId"], session.as_str());
        assert_eq!(row["currency"], "EUR");
        assert!(row["gatewayId"].as_str().unwrap().starts_with("re_"), "{row}");
        assert!(row["sentAt"].is_string(), "{row}");
    }
    app.finish().await;
}

#[tokio::test]
async fn a_refund_the_gateway_fails_three_times_is_retried_with_backoff_and_sent_once() {
    let (app, gateway) = shop(|c| {
        c.set("outbox_retry_base_ms", "250")
            .set("outbox_retry_max_ms", "2000")
    })
    .await;
    let Paying {
        session,
        amount: total,
        ..
    } = app.paying_session(&[("var-1", 1)], "k-retry").await;
    let intent = paid_intent(&app, &gateway, &session, total + 1).await;
    gateway.fail_next_refunds(3, 503);

    // The request that owed the refund tries first, fails, and still succeeds itself.
    // Each attempt is bracketed by the instants before and after the call that made it.
    let started = Instant::now();
    let answer = pay(&app, &gateway, &intent).await;
    assert!(answer["refundRequired"].is_string(), "{answer}");
    let mut tried = vec![(started, Instant::now())];
    assert!(
        drain(&app).await.attempts.is_empty(),
        "not due again before its backoff"
    );
    let mut delays = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.refunds().is_empty() {
        assert!(Instant::now() < deadline, "the refund was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = Instant::now();
        for attempt in drain(&app).await.attempts {
            tried.push((before, Instant::now()));
            delays.extend(attempt.retry_in_ms);
        }
    }
    assert_eq!(
        delays,
        [500, 1000],
        "attempts 2 and 3 failed and doubled the wait"
    );
    assert_eq!(tried.len(), 4);
    for (pair, backoff_ms) in tried.windows(2).zip([250, 500, 1000]) {
        // The next attempt ended after the previous one began plus its backoff.
        let ((began, _), (_, next_ended)) = (pair[0], pair[1]);
        assert!(
            next_ended - began >= Duration::from_millis(backoff_ms),
            "tried again within {:?}, before its {backoff_ms} ms backoff",
            next_ended - began
        );
    }
    assert_eq!(
        gateway.refunds(),
        [FakeRefund {
            id: "re_1".into(),
            payment_intent: intent.clone(),
            amount: total + 1,
        }]
    );
    assert_eq!(gateway.refund_calls(), 4);
    let listed = by_intent(&admin_list(&app, "").await);
    let row = &listed[&("refund".to_owned(), intent)];
    assert_eq!(
        (
            &row["state"],
            &row["attempts"],
            &row["lastError"],
            &row["gatewayId"]
        ),
        (&json!("sent"), &json!(4), &Value::Null, &json!("re_1"))
    );
    app.finish().await;
}

#[tokio::test]
async fn five_concurrent_drainers_send_each_refund_once() {
    let (app, gateway) = shop(|c| c).await;
    let mut owed = Vec::new();
    for n in 0..20 {
        let session = format!("cs_concurrent_{n}");
        let intent = paid_intent(&app, &gateway, &session, 1000 + n).await;
        outbox::enqueue_refund(&app.app.sql, &session, &intent, 1000 + n, "EUR", "test")
            .await
            .unwrap();
        owed.push((intent, 1000 + n));
    }
    let drainers: Vec<_> = (0..5)
        .map(|_| {
            let app = app.app.clone();
            tokio::spawn(async move { outbox::drain(&*app, 1000).await.unwrap() })
        })
        .collect();
    let mut taken = 0;
    for drainer in drainers {
        let report = drainer.await.unwrap();
        assert_eq!(report.sent(), report.attempts.len(), "{report:?}");
        taken += report.attempts.len();
    }
    assert_eq!(taken, 20, "each row taken up by exactly one drainer");
    assert_eq!(gateway.refund_calls(), 20, "no refund sent twice");
    let mut refunded: Vec<(String, i64)> = gateway
        .refunds()
        .into_iter()
        .map(|r| (r.payment_intent, r.amount))
        .collect();
    refunded.sort();
    owed.sort();
    assert_eq!(refunded, owed);
    let pending = admin_list(&app, "?state=pending").await;
    assert_eq!(pending.body["items"], json!([]));
    app.finish().await;
}

#[tokio::test]
async fn the_admin_list_shows_each_row_with_its_state_newest_first() {
    let (app, gateway) = shop(|c| c).await;
    let sql = &app.app.sql;
    // Sent: a refund of a paid intent.
    let refunded = paid_intent(&app, &gateway, "cs_list_1", 500).await;
    outbox::enqueue_refund(sql, "cs_list_1", &refunded, 500, "EUR", "the checkout had ended")
        .await
        .unwrap();
    // Refused: more than the payment.
    let too_much = paid_intent(&app, &gateway, "cs_list_2", 500).await;
    outbox::enqueue_refund(sql, "cs_list_2", &too_much, 900, "EUR", "operator typo")
        .await
        .unwrap();
    // Sent: an unpaid intent cancelled.
    let unpaid = create_intent(
        &app.app.http,
        &gateway.base,
        GATEWAY_KEY,
        "cs_list_3",
        Money::new(700, Currency::parse("EUR").unwrap()),
        "list-3",
    )
    .await
    .unwrap()
    .id;
    outbox::enqueue_cancel(sql, "cs_list_3", &unpaid, "cancelled by the customer")
        .await
        .unwrap();
    // Refused, not hidden: the customer paid before the cancellation arrived; that payment
    // is refunded instead, whether or not its webhook ever comes.
    let paid_first = paid_intent(&app, &gateway, "cs_list_4", 800).await;
    outbox::enqueue_cancel(sql, "cs_list_4", &paid_first, "expired")
        .await
        .unwrap();
    // The same intent owed again (a redelivered webhook) is the same row.
    outbox::enqueue_refund(sql, "cs_list_1b", &refunded, 500, "EUR", "duplicate webhook")
        .await
        .unwrap();
    let report = drain(&app).await;
    assert_eq!(
        (report.sent(), report.refused(), report.retrying()),
        (3, 2, 0),
        "{report:?}"
    );
    // Pending: owed, not yet drained.
    let later = paid_intent(&app, &gateway, "cs_list_5", 300).await;
    outbox::enqueue_refund(sql, "cs_list_5", &later, 300, "EUR", "late")
        .await
        .unwrap();

    let list = admin_list(&app, "").await;
    assert_eq!(list.status, 200, "{list:?}");
    let items = list.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 6, "{list:?}");
    assert_eq!(items[0]["paymentIntentId"], later.as_str(), "newest first");
    let rows = by_intent(&list);
    let row = |kind: &str, intent: &str| rows[&(kind.to_owned(), intent.to_owned())].clone();
    let sent = row("refund", &refunded);
    assert_eq!(
        (&sent["state"], &sent["amount"], &sent["attempts"]),
        (&json!("sent"), &json!(500), &json!(1))
    );
    assert_eq!(sent["checkoutSessionId"], "cs_list_1", "the first reason stands");
    assert_eq!(sent["reason"], "the checkout had ended");
    let refused = row("refund", &too_much);
    assert_eq!(refused["state"], "refused");
    assert!(
        refused["lastError"]
            .as_str()
            .unwrap()
            .contains("amount_too_large"),
        "{refused}"
    );
    let cancelled = row("cancel_intent", &unpaid);
    assert_eq!(
        (&cancelled["state"], &cancelled["amount"], &cancelled["currency"]),
        (&json!("sent"), &Value::Null, &Value::Null)
    );
    let not_cancelled = row("cancel_intent", &paid_first);
    assert_eq!(not_cancelled["state"], "refused");
    assert!(
        not_cancelled["lastError"].as_str().unwrap().contains("succeeded"),
        "{not_cancelled}"
    );
    let paid_back = row("refund", &paid_first);
    assert_eq!(
        (
            &paid_back["state"],
            &paid_back["amount"],
            &paid_back["checkoutSessionId"]
        ),
        (&json!("sent"), &json!(800), &json!("cs_list_4"))
    );
    let pending = row("refund", &later);
    assert_eq!(
        (&pending["state"], &pending["attempts"], &pending["sentAt"]),
        (&json!("pending"), &json!(0), &Value::Null)
    );
    assert!(pending["nextAttemptAt"].is_string(), "{pending}");
    assert_eq!(gateway.cancellations(), vec![unpaid.clone()]);
    assert_eq!(gateway.refunds().len(), 2);

    let only_pending = admin_list(&app, "?state=pending").await;
    assert_eq!(by_intent(&only_pending).len(), 1, "{only_pending:?}");
    let refused = admin_list(&app, "?state=refused&limit=1").await;
    assert_eq!(refused.body["items"].as_array().unwrap().len(), 1);
    assert_eq!(refused.body["items"][0]["state"], "refused");
    for bad in [
        "?state=PENDING",
        "?state=",
        "?limit=0",
        "?limit=1001",
        "?limit=ten",
    ] {
        let reply = admin_list(&app, bad).await;
        assert_eq!((reply.status, reply.code()), (400, "INVALID_QUERY"), "{bad}");
    }
    let listed = outbox::list(sql, Some(OutboxState::Sent), 10).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|e| e.state == OutboxState::Sent));
    assert!(listed.iter().any(|e| e.kind == Kind::CancelIntent));
    app.finish().await;
}

#[tokio::test]
async fn the_refund_list_needs_the_admin_token() {
    let (app, _gateway) = shop(|c| c).await;
    let anonymous = app.get("/v1/admin/refunds").await;
    assert_eq!(anonymous.status, 401, "{anonymous:?}");
    let wrong = app
        .call_with(
            "GET",
            "/v1/admin/refunds?state=pending",
            None,
            &[("authorization", "Bearer not-the-token")],
        )
        .await;
    assert_eq!(wrong.status, 403, "{wrong:?}");
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let admin = app
        .call_with("GET", "/v1/admin/refunds", None, &[("authorization", &bearer)])
        .await;
    assert_eq!((admin.status, &admin.body), (200, &json!({"items": []})));
    let post = app.call("POST", "/v1/admin/refunds", None, Caller::Admin).await;
    assert_eq!(post.status, 405);
    app.finish().await;
}

#[tokio::test]
async fn an_unreachable_gateway_leaves_the_refund_pending_with_the_reason() {
    let (app, _gateway) = shop(|c| c.set("payment_gateway_url", "http://127.0.0.1:1")).await;
    outbox::enqueue_refund(&app.app.sql, "cs_down", "pi_down", 100, "EUR", "test")
        .await
        .unwrap();
    outbox::drain_intent(&*app.app, "pi_down").await.unwrap();
    let pending = admin_list(&app, "?state=pending").await;
    let row = &pending.body["items"][0];
    assert_eq!(
        (&row["paymentIntentId"], &row["attempts"]),
        (&json!("pi_down"), &json!(1))
    );
    assert!(
        row["lastError"]
            .as_str()
            .unwrap()
            .contains("could not be reached"),
        "{row}"
    );
    app.finish().await;
}

#[tokio::test]
async fn commerce_serve_drains_the_outbox_on_its_own() {
    let (app, gateway) = TestApp::shop(3, |c| c.set("outbox_drain_interval_ms", "50")).await;
    let intent = paid_intent(&app, &gateway, "cs_periodic", 1234).await;
    outbox::enqueue_refund(&app.app.sql, "cs_periodic", &intent, 1234, "EUR", "test")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while gateway.refunds().is_empty() {
        assert!(Instant::now() < deadline, "the periodic drain never sent it");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(gateway.refunds()[0].amount, 1234);
    app.finish().await;
}

/// A session waiting for its payment that no call meets after its deadline (the shopper
/// never came back) is ended all the same by `commerce sweep`, the cron of a deployment
/// without `commerce serve`: EXPIRED, its holds and lock freed, PostgreSQL's copy ended,
/// its intent cancelled at the gateway (so it can no longer be paid).
#[tokio::test]
async fn a_session_nobody_meets_after_its_deadline_is_ended_by_the_sweep() {
    let (app, gateway) = shop(|c| c.set("checkout_session_ttl_seconds", "1")).await;
    let paying = app.paying_session(&[("var-1", 2)], "k-abandoned").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let said = run(&app, "sweep").await;
    assert!(said.contains("1 overdue checkout session(s) ended"), "{said}");
    assert_abandoned_session_ended(&app, &gateway, &paying).await;
    let said = run(&app, "sweep").await;
    assert!(said.contains("0 overdue checkout session(s) ended"), "{said}");
    assert_eq!(gateway.cancellations().len(), 1);
    app.finish().await;
}

/// A session whose payment was confirmed but whose order was never written (the webhook's
/// request cut short right after its move to PAYMENT_CONFIRMED, as on a Spin host whose
/// Redis answered late; no delivery of the event since) is not left paid with neither an
/// order nor a refund: once past its deadline, the sweep places its order.
#[tokio::test]
async fn a_paid_session_whose_order_was_cut_short_is_ordered_by_the_sweep() {
    use redis::AsyncCommands;
    let (app, gateway) = shop(|c| c.set("checkout_session_ttl_seconds", "1")).await;
    let on_hand = app.pg_on_hand("var-1").await;
    let paying = app.paying_session(&[("var-1", 2)], "k-cut-short").await;
    assert!(gateway.succeed(&paying.intent));
    let mut redis = app.redis.clone();
    app.set_stored_state(&paying.session, "PAYMENT_CONFIRMED").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    run(&app, "sweep").await;
    assert_eq!(
        app.stored_state(&paying.session).await.as_deref(),
        Some("COMPLETED")
    );
    let orders = app
        .pg
        .query_one(
            "SELECT count(*) FROM orders WHERE payment_intent_id = $1",
            &[&paying.intent],
        )
        .await
        .unwrap();
    assert_eq!(orders.get::<_, i64>(0), 1);
    assert_eq!(app.pg_on_hand("var-1").await, on_hand - 2);
    assert!(gateway.refunds().is_empty(), "{:?}", gateway.refunds());
    assert!(gateway.cancellations().is_empty());
    let lock: Option<String> = redis.get(app.cart_lock_key(&paying.cart)).await.unwrap();
    assert_eq!(lock, None, "its cart is free");
    app.finish().await;
}

/// The same once its holds have ended (its deadline and the grace passed): its unit may
/// have been held again since (here by another shopper),
/// so its payment goes back instead of becoming an order over that hold.
#[tokio::test]
async fn a_paid_session_met_after_its_holds_ended_is_refunded_not_ordered() {
    use redis::AsyncCommands;
    let (app, gateway) = shop(|c| {
        c.set("checkout_session_ttl_seconds", "1")
            .set("hold_grace_seconds", "1")
    })
    .await;
    assert_eq!(app.set_on_hand("var-1", 1).await.status, 200);
    let first = app.paying_session(&[("var-1", 1)], "k-late-1").await;
    assert!(gateway.succeed(&first.intent));
    let mut redis = app.redis.clone();
    app.set_stored_state(&first.session, "PAYMENT_CONFIRMED").await;
    // Past its deadline (1 s) and the grace (1 s).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // Its unit is sellable again, and another buyer holds it: an outside holder, whose
    // hold outlives this test however slow the machine (a second checkout session of the
    // same 1-second life could end before the last look at its hold, under load).
    let second = app
        .reserve(json!({"cartId": "second-shopper", "items": [{"variantId": "var-1", "quantity": 1}], "ttlSeconds": 600}))
        .await;
    assert_eq!(second.status, 201, "{second:?}");
    run(&app, "sweep").await;
    assert_eq!(app.stored_state(&first.session).await.as_deref(), Some("FAILED"));
    let refunded: Vec<String> = gateway.refunds().into_iter().map(|r| r.payment_intent).collect();
    assert_eq!(refunded, std::slice::from_ref(&first.intent));
    assert_eq!(app.pg_on_hand("var-1").await, 1, "not ordered");
    let held: Option<i64> = redis
        .hget(app.variant_keys("var-1").hold_qty, "external:second-shopper")
        .await
        .unwrap();
    assert_eq!(held, Some(1), "the second shopper's hold stands");
    app.finish().await;
}

/// Two deliveries of one payment deciding differently at once: a redelivery that met the
/// confirmed session while its holds stood places its order (slowed here by a row lock on
/// the variant's stock), and the sweep, meeting it after its holds ended, refunds it.
/// PostgreSQL takes one of the two, never both: the payment ends in one order or one
/// refund.
#[tokio::test]
async fn an_order_and_a_refund_of_one_payment_deciding_at_once_end_in_one() {
    let (app, gateway) = shop(|c| {
        c.set("checkout_session_ttl_seconds", "1")
            .set("hold_grace_seconds", "1")
    })
    .await;
    let paying = app.paying_session(&[("var-1", 1)], "k-one-of-two").await;
    assert!(gateway.succeed(&paying.intent));
    app.set_stored_state(&paying.session, "PAYMENT_CONFIRMED").await;
    let event = gateway.event("payment_intent.succeeded", &paying.intent);
    let locker = app.pg.batch_execute(
        "BEGIN; SELECT 1 FROM inventory_levels WHERE variant_id = 'var-1' FOR UPDATE;
         SELECT pg_sleep(2.8); COMMIT;",
    );
    let redelivered = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gateway.deliver(&app.base, &event).await
    };
    let swept = async {
        tokio::time::sleep(Duration::from_millis(2300)).await;
        run(&app, "sweep").await
    };
    let (locked, (status, answer), _) = tokio::join!(locker, redelivered, swept);
    locked.unwrap();
    assert_eq!(status, 200, "{answer}");
    run(&app, "drain").await;
    let orders = app
        .pg
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get::<_, i64>(0);
    let refunds = gateway.refunds().len();
    assert_eq!(
        (orders, refunds).0 + refunds as i64,
        1,
        "orders {orders}, refunds {refunds}"
    );
    let expected = if orders == 1 { "COMPLETED" } else { "FAILED" };
    let shown = app.get(&format!("/v1/checkout/{}", paying.session)).await;
    assert_eq!(shown.body["state"], expected, "{shown:?}");
    app.finish().await;
}

/// An order whose statement runs after its session's holds ended (here PostgreSQL's copy
/// says they ended a second ago) is not written: the session ends FAILED and its payment is
/// refunded, with its own reason, and no on-hand refusal is recorded.
#[tokio::test]
async fn an_order_written_after_its_holds_ended_is_refunded_not_recorded_as_short() {
    let (app, gateway) = shop(|c| c).await;
    let paying = app.paying_session(&[("var-1", 1)], "k-lapsed").await;
    assert!(gateway.succeed(&paying.intent));
    app.pg
        .execute(
            "UPDATE checkout_sessions
             SET deadline_ms = (extract(epoch FROM now()) * 1000)::bigint - 1000,
                 holds_deadline_ms = (extract(epoch FROM now()) * 1000)::bigint - 1000
             WHERE id = $1",
            &[&paying.session],
        )
        .await
        .unwrap();
    let (status, answer) = app.intent_paid(&gateway, &paying.intent).await;
    assert_eq!(
        (status, answer["state"].as_str()),
        (200, Some("FAILED")),
        "{answer}"
    );
    let reason = answer["refundRequired"].as_str().unwrap_or_default();
    assert!(reason.contains("holds ended"), "{answer}");
    for table in ["orders", "orders_refused"] {
        let rows = app
            .pg
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap();
        assert_eq!(rows.get::<_, i64>(0), 0, "{table}");
    }
    run(&app, "drain").await;
    let refunded: Vec<String> = gateway.refunds().into_iter().map(|r| r.payment_intent).collect();
    assert_eq!(refunded, std::slice::from_ref(&paying.intent));
    app.finish().await;
}

/// A paid session left FAILED before its refund was written (its request cut short between
/// the two) is not ended with neither an order nor a refund: the sweep cancels its intent,
/// and the outbox, finding it paid, refunds it instead.
#[tokio::test]
async fn a_paid_session_failed_without_its_refund_is_refunded_by_the_sweep() {
    let (app, gateway) = shop(|c| c.set("checkout_session_ttl_seconds", "1")).await;
    let paying = app.paying_session(&[("var-1", 2)], "k-failed-short").await;
    assert!(gateway.succeed(&paying.intent));
    app.set_stored_state(&paying.session, "FAILED").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    run(&app, "sweep").await;
    run(&app, "drain").await;
    let refunded: Vec<(String, i64)> = gateway
        .refunds()
        .into_iter()
        .map(|r| (r.payment_intent, r.amount))
        .collect();
    assert_eq!(refunded, [(paying.intent.clone(), paying.amount)]);
    let orders = app
        .pg
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap();
    assert_eq!(orders.get::<_, i64>(0), 0);
    app.finish().await;
}

/// The same without any command: `commerce serve` ends overdue sessions with each periodic
/// outbox pass.
#[tokio::test]
async fn commerce_serve_ends_overdue_sessions_on_its_own() {
    let (app, gateway) = TestApp::shop(3, |c| {
        c.set("outbox_drain_interval_ms", "100")
            .set("checkout_session_ttl_seconds", "1")
    })
    .await;
    let paying = app.paying_session(&[("var-1", 2)], "k-abandoned").await;
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut redis = app.redis.clone();
    // Ended once its cart's lock, the last thing it gives back, is gone.
    loop {
        let lock: Option<String> = redis::AsyncCommands::get(&mut redis, app.cart_lock_key(&paying.cart))
            .await
            .unwrap();
        if lock.is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the session was never ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_abandoned_session_ended(&app, &gateway, &paying).await;
    app.finish().await;
}

/// What ending an abandoned session leaves, read without meeting it through the API (a
/// read would expire it itself).
async fn assert_abandoned_session_ended(app: &TestApp, gateway: &FakeGateway, paying: &Paying) {
    use redis::AsyncCommands;
    let mut redis = app.redis.clone();
    assert_eq!(
        app.stored_state(&paying.session).await.as_deref(),
        Some("EXPIRED")
    );
    let held: Option<i64> = redis
        .hget(
            app.variant_keys("var-1").hold_qty,
            app.session_holder(&paying.session),
        )
        .await
        .unwrap();
    assert_eq!(held, None, "its holds are freed");
    let lock: Option<String> = redis.get(app.cart_lock_key(&paying.cart)).await.unwrap();
    assert_eq!(lock, None, "its cart is free");
    let row = app
        .pg
        .query_one(
            "SELECT ended_state FROM checkout_sessions WHERE id = $1 AND ended_at IS NOT NULL",
            &[&paying.session],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("EXPIRED"));
    assert_eq!(gateway.cancellations(), vec![paying.intent.clone()]);
    assert!(
        !gateway.succeed(&paying.intent),
        "a cancelled intent cannot be paid"
    );
}

#[tokio::test]
async fn cancelling_a_session_cancels_its_payment_intent_at_the_gateway() {
    let (app, gateway) = shop(|c| c).await;
    let Paying { session, intent, .. } = app.paying_session(&[("var-1", 1)], "k-cancel").await;
    let cancelled = app.cancel(&session, Caller::Anonymous).await;
    assert_eq!(cancelled.status, 200, "{cancelled:?}");
    // Sent by the cancelling request itself, not by a later drain.
    assert_eq!(gateway.cancellations(), vec![intent.clone()]);
    assert!(!gateway.succeed(&intent), "a cancelled intent cannot be paid");
    let listed = by_intent(&admin_list(&app, "").await);
    let row = &listed[&("cancel_intent".to_owned(), intent)];
    assert_eq!(
        (&row["state"], &row["checkoutSessionId"]),
        (&json!("sent"), &json!(session))
    );
    app.finish().await;
}

/// A cancel cut short after PostgreSQL's end of the session was written (a crash, a
/// `kill -9`) left it CANCELLED with its holds, its cart's lock and its open intent, and
/// the sweep passed it by: it met only sessions PostgreSQL showed live. Now the sweep
/// finishes such a release once no request can still be running it, and records it done.
#[tokio::test]
async fn a_release_cut_short_after_postgres_ended_the_session_is_finished_by_the_sweep() {
    let (app, gateway) = shop(|c| c).await;
    let before = app.sellable("var-1").await;
    let paying = app.paying_session(&[("var-1", 2)], "k-release-cut").await;
    // What the cancel leaves when cut short right after its first PostgreSQL statement.
    let mut redis = app.redis.clone();
    let _: () = redis::AsyncCommands::hset_multiple(
        &mut redis,
        app.session_key(&paying.session),
        &[("state", "CANCELLED"), ("releasing", "1")],
    )
    .await
    .unwrap();
    app.pg
        .execute(
            "UPDATE checkout_sessions SET ended_state = 'CANCELLED', ended_at = now() - interval '1 hour' WHERE id = $1",
            &[&paying.session],
        )
        .await
        .unwrap();
    assert_eq!(app.sellable("var-1").await, before - 2);
    run(&app, "sweep").await;
    run(&app, "drain").await;
    assert_eq!(app.sellable("var-1").await, before, "its holds freed");
    let lock: Option<String> = redis::AsyncCommands::get(&mut redis, app.cart_lock_key(&paying.cart))
        .await
        .unwrap();
    assert_eq!(lock, None, "its cart unlocked");
    assert_eq!(
        gateway.cancellations(),
        std::slice::from_ref(&paying.intent),
        "its intent cancelled"
    );
    let released = app
        .pg
        .query_one(
            "SELECT released_at IS NOT NULL FROM checkout_sessions WHERE id = $1",
            &[&paying.session],
        )
        .await
        .unwrap();
    assert!(released.get::<_, bool>(0), "recorded as released");
    app.finish().await;
}
