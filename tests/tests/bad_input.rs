//! Bad input on every inventory route gets a 4xx with the error body and writes nothing.

use commerce_tests::{ADMIN_TOKEN, Caller, TestApp};
use serde_json::json;

/// Ids that must never reach a key: separators, glob and hash-tag characters, spaces,
/// newlines, and one character too many. Percent-encoded where they sit in a path.
const BAD_PATH_IDS: &[&str] = &["a:b", "a%7Bb", "a%7Db", "a*", "a%20b", "a%0Ab", "caf%C3%A9"];

fn too_long() -> String {
    "x".repeat(65)
}

#[tokio::test]
async fn bad_input_on_every_route_is_refused_and_writes_nothing() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    app.call(
        "POST",
        "/v1/inventory/reservations",
        Some(json!({"cartId": "c", "items": [{"variantId": "var-1", "quantity": 1}]})),
        Caller::Admin,
    )
    .await;
    let redis_before = app.redis_snapshot().await;
    let pg_before = app.pg_on_hand("var-1").await;

    let mut cases: Vec<(String, String, Option<String>, &str, u16)> = Vec::new();
    let mut case =
        |method: &str, path: String, body: Option<String>, content_type: &'static str, status: u16| {
            cases.push((method.into(), path, body, content_type, status));
        };
    let long = too_long();
    for id in BAD_PATH_IDS.iter().copied().chain([long.as_str()]) {
        case("GET", format!("/v1/inventory/{id}"), None, "", 400);
        case(
            "DELETE",
            format!("/v1/inventory/reservations/{id}"),
            None,
            "",
            400,
        );
        case(
            "PUT",
            format!("/v1/admin/inventory/{id}"),
            Some(r#"{"onHand":1}"#.into()),
            "application/json",
            400,
        );
    }
    let bad_body_ids = ["a:b", "a{b", "a}b", "a*", "a b", "a\nb", "", long.as_str()];
    for id in bad_body_ids {
        let reserve = json!({"cartId": "c2", "items": [{"variantId": id, "quantity": 1}]}).to_string();
        case(
            "POST",
            "/v1/inventory/reservations".into(),
            Some(reserve),
            "application/json",
            400,
        );
        let cart = json!({"cartId": id, "items": [{"variantId": "var-1", "quantity": 1}]}).to_string();
        case(
            "POST",
            "/v1/inventory/reservations".into(),
            Some(cart),
            "application/json",
            400,
        );
        let ids = json!({"variantIds": ["var-1", id]}).to_string();
        case(
            "POST",
            "/v1/inventory/availability".into(),
            Some(ids),
            "application/json",
            400,
        );
    }
    for quantity in [
        "0",
        "-1",
        "1.5",
        "\"2\"",
        "100001",
        "1e30",
        "99999999999999999999",
        "null",
    ] {
        let body = format!(r#"{{"cartId":"c2","items":[{{"variantId":"var-1","quantity":{quantity}}}]}}"#);
        case(
            "POST",
            "/v1/inventory/reservations".into(),
            Some(body),
            "application/json",
            400,
        );
    }
    for on_hand in ["-1", "1.5", "\"5\"", "null", "1000000000000"] {
        let body = format!(r#"{{"onHand":{on_hand}}}"#);
        case(
            "PUT",
            "/v1/admin/inventory/var-1".into(),
            Some(body),
            "application/json",
            400,
        );
    }
    for ttl in ["0", "-5", "1.5", "86401", "\"60\""] {
        let body =
            format!(r#"{{"cartId":"c2","items":[{{"variantId":"var-1","quantity":1}}],"ttlSeconds":{ttl}}}"#);
        case(
            "POST",
            "/v1/inventory/reservations".into(),
            Some(body),
            "application/json",
            400,
        );
    }
    let json_routes = [
        ("POST", "/v1/inventory/reservations"),
        ("POST", "/v1/inventory/availability"),
        ("PUT", "/v1/admin/inventory/var-1"),
    ];
    let huge = format!(r#"{{"variantIds":["{}"]}}"#, "v".repeat(70 * 1024));
    for (method, path) in json_routes {
        for body in ["{", "not json", "[1,2", "{\"cartId\":}", "[]", "42", "{}"] {
            case(method, path.into(), Some(body.into()), "application/json", 400);
        }
        // A name given twice: a proxy reading the first and this server the last would
        // judge two different requests.
        for body in [
            r#"{"cartId":"c3","cartId":"c4","items":[{"variantId":"var-1","quantity":1}]}"#,
            r#"{"cartId":"c3","items":[{"variantId":"var-1","quantity":1,"quantity":2}]}"#,
            r#"{"variantIds":["var-1"],"variantIds":["var-2"]}"#,
            r#"{"onHand":5,"onHand":6}"#,
        ] {
            case(method, path.into(), Some(body.into()), "application/json", 400);
        }
        case(method, path.into(), Some("{}".into()), "text/plain", 415);
        case(method, path.into(), Some("{}".into()), "", 415);
        case(method, path.into(), Some(huge.clone()), "application/json", 413);
    }
    case(
        "POST",
        "/v1/inventory/availability".into(),
        Some(r#"{"variantIds":[]}"#.into()),
        "application/json",
        400,
    );
    let many: Vec<String> = (0..501).map(|i| format!("v{i}")).collect();
    case(
        "POST",
        "/v1/inventory/availability".into(),
        Some(json!({ "variantIds": many }).to_string()),
        "application/json",
        400,
    );
    case("POST", "/v1/inventory/var-1".into(), None, "", 405);
    case("GET", "/v1/inventory/reservations".into(), None, "", 405);
    case("GET", "/v1/nothing-here".into(), None, "", 404);

    for (method, path, body, content_type, status) in &cases {
        let mut req = app
            .http
            .request(method.parse().unwrap(), format!("{}{path}", app.base))
            .header("authorization", format!("Bearer {ADMIN_TOKEN}"));
        if !content_type.is_empty() {
            req = req.header("content-type", *content_type);
        }
        if let Some(body) = body {
            req = req.body(body.clone());
        }
        let reply = TestApp::reply(req).await;
        let shown = body.as_deref().map(|b| &b[..b.len().min(120)]);
        assert_eq!(
            reply.status, *status,
            "{method} {path} {shown:?}: {:?}",
            reply.body
        );
        assert!(
            reply.code().chars().all(|c| c.is_ascii_uppercase() || c == '_') && !reply.code().is_empty(),
            "{method} {path}: no error body: {:?}",
            reply.body
        );
        assert!(reply.body["error"]["message"].is_string());
    }
    assert!(cases.len() > 100);
    assert_eq!(
        app.redis_snapshot().await,
        redis_before,
        "bad input wrote to Redis"
    );
    assert_eq!(
        app.pg_on_hand("var-1").await,
        pg_before,
        "bad input wrote to PostgreSQL"
    );
    app.finish().await;
}

#[tokio::test]
async fn bad_input_on_every_cart_and_bundle_route_is_refused_and_writes_nothing() {
    let app = TestApp::spawn().await;
    app.seed(20).await;
    let cart = app.new_cart().await;
    let added = app
        .post(
            &format!("/v1/carts/{cart}/items"),
            json!({"variantId": "var-1", "quantity": 1}),
        )
        .await;
    let line = added.body["lines"][0]["lineId"].as_str().unwrap().to_owned();
    let token = format!("Bearer {}", commerce_tests::customer_token("erin"));
    let before = app.redis_snapshot_of(":cart:").await;
    let bundles_before = app.redis_snapshot_of(":bundle:").await;

    let long = too_long();
    let mut cases: Vec<(String, String, Option<String>, u16)> = Vec::new();
    let mut case = |method: &str, path: String, body: Option<String>, status: u16| {
        cases.push((method.into(), path, body, status));
    };
    let add = |body: &str| Some(body.to_owned());
    for id in BAD_PATH_IDS.iter().copied().chain([long.as_str()]) {
        case("GET", format!("/v1/carts/{id}"), None, 400);
        case(
            "POST",
            format!("/v1/carts/{id}/items"),
            add(r#"{"variantId":"var-1","quantity":1}"#),
            400,
        );
        case(
            "PATCH",
            format!("/v1/carts/{cart}/items/{id}"),
            add(r#"{"quantity":1}"#),
            400,
        );
        case("DELETE", format!("/v1/carts/{cart}/items/{id}"), None, 400);
        case("GET", format!("/v1/customers/{id}/cart"), None, 400);
        case("GET", format!("/v1/bundles/{id}"), None, 400);
        case("POST", format!("/v1/admin/bundles/{id}/invalidate"), None, 400);
    }
    let items = format!("/v1/carts/{cart}/items");
    let customer_items = "/v1/customers/erin/cart/items".to_owned();
    for target in [&items, &customer_items] {
        for quantity in ["0", "-1", "1.5", "\"2\"", "100001", "1e30", "null"] {
            case(
                "POST",
                target.clone(),
                Some(format!(r#"{{"variantId":"var-1","quantity":{quantity}}}"#)),
                400,
            );
        }
        for body in [
            r#"{"quantity":1}"#,
            r#"{"variantId":"var-1","bundleId":"bundle-1","quantity":1}"#,
            r#"{"variantId":"a:b","quantity":1}"#,
            r#"{"variantId":7,"quantity":1}"#,
            r#"{"bundleId":"bundle-1","quantity":1}"#,
            r#"{"bundleId":"bundle-1","choices":[],"quantity":1}"#,
            r#"{"bundleId":"bundle-1","choices":{},"quantity":1}"#,
            r#"{"bundleId":"bundle-1","choices":{"tops":"var-1"},"quantity":1}"#,
            r#"{"bundleId":"bundle-1","choices":{"tops":[]},"quantity":1}"#,
            r#"{"bundleId":"bundle-1","choices":{"a*b":["var-1"]},"quantity":1}"#,
            r#"{"bundleId":"bundle-1","choices":{"tops":["var-1",2]},"quantity":1}"#,
            r#"{"bundleId":"b{1}","choices":{"tops":["var-1"]},"quantity":1}"#,
            "{",
            "[]",
            "not json",
        ] {
            case("POST", target.clone(), add(body), 400);
        }
    }
    for body in [
        r#"{"quantity":-1}"#,
        r#"{"quantity":1.5}"#,
        r#"{}"#,
        "{",
        r#"{"quantity":"1"}"#,
    ] {
        case("PATCH", format!("{items}/{line}"), add(body), 400);
    }
    for body in [
        r#"{"currency":"eur"}"#,
        r#"{"currency":"EURO"}"#,
        r#"{"currency":"ZZZ"}"#,
        r#"{"currency":"XXX"}"#,
        r#"{"currency":5}"#,
        "[1]",
        "{",
    ] {
        case("POST", "/v1/carts".into(), add(body), 400);
    }
    for body in [r#"{}"#, r#"{"cartId":"a:b"}"#, r#"{"cartId":5}"#, "{"] {
        case("POST", "/v1/customers/erin/cart/merge".into(), add(body), 400);
    }
    case("PUT", format!("/v1/carts/{cart}"), None, 405);
    case("GET", items.clone(), None, 405);
    case("POST", format!("{items}/{line}"), add("{}"), 405);

    let admin = format!("Bearer {ADMIN_TOKEN}");
    for (method, path, body, status) in &cases {
        let auth = if path.contains("/admin/") {
            admin.as_str()
        } else {
            token.as_str()
        };
        let mut req = app
            .http
            .request(method.parse().unwrap(), format!("{}{path}", app.base))
            .header("authorization", auth);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body.clone());
        }
        let reply = TestApp::reply(req).await;
        assert_eq!(
            reply.status, *status,
            "{method} {path} {body:?}: {:?}",
            reply.body
        );
        assert!(!reply.code().is_empty(), "{method} {path}: no error body");
    }
    // Wrong content type and oversized bodies.
    for path in [items.as_str(), "/v1/carts", "/v1/customers/erin/cart/merge"] {
        let req = app
            .http
            .post(format!("{}{path}", app.base))
            .header("authorization", &token)
            .header("content-type", "text/plain")
            .body("{}");
        assert_eq!(TestApp::reply(req).await.status, 415, "{path}");
        // Several times: a server that answers 413 and closes the connection with the
        // body unread resets it, and the client then loses the 413 now and then (seen on
        // Spin until the adapter read such bodies to the end).
        let huge = format!(r#"{{"variantId":"{}","quantity":1}}"#, "v".repeat(70 * 1024));
        for _ in 0..10 {
            let req = app
                .http
                .post(format!("{}{path}", app.base))
                .header("authorization", &token)
                .header("content-type", "application/json")
                .body(huge.clone());
            assert_eq!(TestApp::reply(req).await.status, 413, "{path}");
        }
    }
    let bad_if_match = app
        .call_with(
            "POST",
            &items,
            Some(json!({"variantId": "var-1", "quantity": 1})),
            &[("if-match", "soon")],
        )
        .await;
    assert_eq!(bad_if_match.status, 400);

    assert_eq!(
        app.redis_snapshot_of(":cart:").await,
        before,
        "bad input wrote to a cart"
    );
    assert_eq!(
        app.redis_snapshot_of(":bundle:").await,
        bundles_before,
        "bad input wrote to the bundle cache"
    );
    app.finish().await;
}

/// Where a route meets its neighbours: the webhook's path is not a session's (another
/// method on it is a 405), an anonymous cart that is not there is a 404 at checkout as on
/// every cart route, the `Bearer` scheme is named in any case (RFC 7235), and invalidating
/// a bundle id that names no bundle leaves nothing behind for good.
#[tokio::test]
async fn routes_answer_at_their_edges_as_the_contract_says() {
    let app = TestApp::spawn().await;
    app.seed(3).await;

    let webhook = app.get("/v1/checkout/payment-webhook").await;
    assert_eq!(
        (webhook.status, webhook.code()),
        (405, "METHOD_NOT_ALLOWED"),
        "{webhook:?}"
    );

    let unknown_cart = "0".repeat(32);
    // The idempotency record keeps the answer, as for any checked request; nothing else.
    let snapshot = || async {
        let mut keys = app.redis_snapshot().await;
        keys.retain(|(key, _)| !key.contains(":idempotency:"));
        keys
    };
    let before = snapshot().await;
    let started = app.start_checkout(&unknown_cart, "edge-1").await;
    assert_eq!(
        (started.status, started.code()),
        (404, "CART_NOT_FOUND"),
        "{started:?}"
    );
    assert_eq!(snapshot().await, before, "a refused checkout wrote to Redis");

    // Method names are case-sensitive (RFC 9110 §9.1): `get` and `post` are no GET and POST,
    // on either host, and a lower-case POST creates nothing. A HEAD where there is no GET is
    // refused as any other method.
    for (method, path, allow) in [
        ("get", "/v1/inventory/var-1", "GET, HEAD"),
        ("post", "/v1/carts", "POST"),
        ("HEAD", "/v1/carts", "POST"),
    ] {
        let before = app.redis_snapshot().await;
        let reply = app
            .http
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("{}{path}", app.base),
            )
            .send()
            .await
            .unwrap();
        let allowed = reply
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(
            (reply.status().as_u16(), allowed.as_deref()),
            (405, Some(allow)),
            "{method} {path}"
        );
        assert_eq!(
            app.redis_snapshot().await,
            before,
            "{method} {path} wrote to Redis"
        );
    }

    // HEAD is GET without the body (RFC 9110 §9.3.2): the same status and headers. (Paths
    // whose answer is the same twice: `/health`'s carries the probes' latencies.)
    for path in [
        "/v1/inventory/var-1",
        "/health/live",
        "/v1/inventory/no-such-variant",
    ] {
        let get = app.http.get(format!("{}{path}", app.base)).send().await.unwrap();
        let head = app.http.head(format!("{}{path}", app.base)).send().await.unwrap();
        assert_eq!(head.status(), get.status(), "HEAD {path}");
        for header in ["content-type", "content-length"] {
            assert_eq!(
                head.headers().get(header),
                get.headers().get(header),
                "HEAD {path}: {header}"
            );
        }
        assert!(!get.bytes().await.unwrap().is_empty(), "GET {path}");
        assert!(head.bytes().await.unwrap().is_empty(), "HEAD {path} has a body");
    }
    // Nothing of the body goes on the wire: the next answer on the connection follows the
    // head at once.
    let mut wire = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut wire,
        b"HEAD /health HTTP/1.1\r\nHost: t\r\n\r\nGET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answers = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_string(&mut wire, &mut answers),
    )
    .await
    .expect("both answers within 10 s")
    .unwrap();
    let (head, rest) = answers.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{answers}");
    assert!(
        rest.starts_with("HTTP/1.1 200"),
        "the HEAD answer had a body: {answers}"
    );

    // A 401 says which scheme would do (RFC 7235): every credential here is a bearer token.
    let unauthorized = app
        .http
        .get(format!("{}/v1/admin/refunds", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(unauthorized.headers().get("www-authenticate").unwrap(), "Bearer");

    // Liveness carries its request id on both hosts, as every answer does.
    let live = app
        .http
        .get(format!("{}/health/live", app.base))
        .header("x-request-id", "probe-1")
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    assert_eq!(live.headers().get("x-request-id").unwrap(), "probe-1");

    for scheme in ["bearer", "BEARER", "Bearer  "] {
        let token = format!("{scheme} {ADMIN_TOKEN}");
        let refunds = app
            .call_with("GET", "/v1/admin/refunds", None, &[("authorization", &token)])
            .await;
        assert_eq!(refunds.status, 200, "{scheme}: {refunds:?}");
    }

    let invalidated = app
        .call(
            "POST",
            "/v1/admin/bundles/bundle-99999/invalidate",
            None,
            Caller::Admin,
        )
        .await;
    assert_eq!(invalidated.status, 200, "{invalidated:?}");
    let mut redis = app.redis.clone();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(app.key("bundle:{bundle-99999}:generation"))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        ttl > 0,
        "the generation of an unknown bundle has no expiry: {ttl}"
    );
    app.finish().await;
}

/// A header meant once, given twice, is refused before anything is done: a proxy reading
/// one and this server the other would judge two requests (two tokens, two keys). And a
/// path's percent-encoded unreserved characters are the characters themselves (RFC 3986
/// §6.2.2.2), while any other escape still fails the id check.
#[tokio::test]
async fn a_header_given_twice_is_refused_and_an_escaped_unreserved_character_is_itself() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    let redis_before = app.redis_snapshot().await;
    let reserve = json!({"cartId": "twice", "items": [{"variantId": "var-1", "quantity": 1}]});
    let admin = format!("Bearer {ADMIN_TOKEN}");
    for (headers, status, code) in [
        (
            vec![
                ("authorization", admin.as_str()),
                ("authorization", "Bearer wrong"),
            ],
            401,
            "UNAUTHORIZED",
        ),
        (
            vec![
                ("authorization", "Bearer wrong"),
                ("authorization", admin.as_str()),
            ],
            401,
            "UNAUTHORIZED",
        ),
        (
            vec![
                ("authorization", admin.as_str()),
                ("idempotency-key", "k-1"),
                ("idempotency-key", "k-2"),
            ],
            400,
            "INVALID_IDEMPOTENCY_KEY",
        ),
    ] {
        let reply = app
            .call_with(
                "POST",
                "/v1/inventory/reservations",
                Some(reserve.clone()),
                &headers,
            )
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (status, code),
            "{headers:?}: {reply:?}"
        );
    }
    assert_eq!(
        app.redis_snapshot().await,
        redis_before,
        "a refused request wrote"
    );

    let escaped = app.get("/v1/inventory/var%2D1").await;
    assert_eq!(escaped.status, 200, "{escaped:?}");
    assert_eq!(escaped.body["variantId"], "var-1");
    for path in [
        "/v1/inventory/var%2F1",
        "/v1/inventory/var%3A1",
        "/v1/inventory/var%zz",
        "/v1/inventory/var%",
    ] {
        assert_eq!(app.get(path).await.status, 400, "{path}");
    }
    app.finish().await;
}

/// A request head past the limits (`commerce_core::http`: the target's bytes, the header
/// fields' number and bytes) is refused before any route, with the JSON error body, and
/// writes nothing; one within them is answered.
#[tokio::test]
async fn a_head_past_its_limits_is_refused_with_414_or_431_and_writes_nothing() {
    use commerce_core::http::{MAX_HEADER_BYTES, MAX_HEADER_FIELDS, MAX_TARGET_BYTES};
    let app = TestApp::spawn().await;
    app.seed(1).await;
    let redis_before = app.redis_snapshot().await;
    let pg_before = app.pg_on_hand("var-1").await;

    // The target: `/v1/inventory/var-1?pad=…`, at the limit and one byte past it.
    let path = "/v1/inventory/var-1?pad=";
    let at_limit = format!("{path}{}", "a".repeat(MAX_TARGET_BYTES - path.len()));
    assert_eq!(app.get(&at_limit).await.status, 200);
    let past = app.get(&format!("{at_limit}a")).await;
    assert_eq!((past.status, past.code()), (414, "URI_TOO_LONG"), "{past:?}");

    // The fields: exactly at the limit (reqwest adds `accept` and `host` to a GET; a Spin
    // host adds fields of its own, which are not counted), then past it, on a write, which
    // must not happen.
    let names: Vec<String> = (0..=MAX_HEADER_FIELDS).map(|i| format!("x-field-{i}")).collect();
    let fields =
        |n: usize| -> Vec<(&str, &str)> { names[..n].iter().map(|name| (name.as_str(), "1")).collect() };
    let within = app
        .call_with("GET", "/v1/inventory/var-1", None, &fields(MAX_HEADER_FIELDS - 2))
        .await;
    assert_eq!(within.status, 200, "{within:?}");
    let cart = json!({"currency": "EUR"});
    let many = app
        .call_with(
            "POST",
            "/v1/carts",
            Some(cart.clone()),
            &fields(MAX_HEADER_FIELDS + 1),
        )
        .await;
    assert_eq!(many.status, 431, "{many:?}");
    // On Spin the host counts the fields first (hyper's limit, 100) and refuses past it
    // with an empty body; natively the router's answer is the one that arrives.
    if TestApp::host() == commerce_tests::host::Host::Native {
        assert_eq!(many.code(), "HEADERS_TOO_LARGE", "{many:?}");
    }

    // The bytes: one large field within the limit, then one past it.
    let large = "t".repeat(MAX_HEADER_BYTES - 1024);
    let within = app
        .call_with("GET", "/v1/inventory/var-1", None, &[("x-large", &large)])
        .await;
    assert_eq!(within.status, 200, "{within:?}");
    let larger = "t".repeat(MAX_HEADER_BYTES + 1);
    let refused = app
        .call_with("POST", "/v1/carts", Some(cart), &[("x-large", &larger)])
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (431, "HEADERS_TOO_LARGE"),
        "{refused:?}"
    );

    assert_eq!(
        app.redis_snapshot().await,
        redis_before,
        "a refused request wrote"
    );
    assert_eq!(app.pg_on_hand("var-1").await, pg_before);
    app.finish().await;
}

/// A route that reads no body takes none, or a JSON one it ignores; a broken body (not
/// JSON, or another content type) is refused as on any route, before anything is done.
#[tokio::test]
async fn a_broken_body_on_a_route_that_reads_none_is_refused_and_changes_nothing() {
    let app = TestApp::spawn().await;
    app.seed(2).await;
    app.publish_rulesets().await;
    let cart = app.cart_with(&[("var-1", 1)]).await;
    let session = app.checkout(&cart, "no-body").await;
    let line = app.get(&format!("/v1/carts/{cart}")).await.body["lines"][0]["lineId"]
        .as_str()
        .unwrap()
        .to_owned();
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let routes = [
        ("POST", "/v1/admin/pricing/publish".to_owned()),
        ("POST", "/v1/admin/discounts/publish".to_owned()),
        ("POST", "/v1/admin/inventory/reconcile".to_owned()),
        ("POST", "/v1/admin/check/repair".to_owned()),
        ("POST", "/v1/admin/bundles/bundle-1/invalidate".to_owned()),
        ("DELETE", "/v1/inventory/reservations/nobody".to_owned()),
        ("DELETE", format!("/v1/carts/{cart}/items/{line}")),
        ("POST", format!("/v1/checkout/{session}/payment-intent")),
        ("POST", format!("/v1/checkout/{session}/cancel")),
    ];
    let redis_before = app.redis_snapshot().await;
    let versions = "SELECT string_agg(kind || '=' || version, ',' ORDER BY kind) FROM ruleset_versions";
    let versions_before: Option<String> = app.pg.query_one(versions, &[]).await.unwrap().get(0);
    for (method, path) in &routes {
        for (content_type, body, status, code) in [
            ("application/json", "{broken", 400, "MALFORMED_JSON"),
            ("application/json", r#"{"a":1,"a":2}"#, 400, "MALFORMED_JSON"),
            ("text/plain", "hello", 415, "UNSUPPORTED_MEDIA_TYPE"),
        ] {
            let reply = TestApp::reply(
                app.request(
                    method,
                    path,
                    None,
                    &[("authorization", &admin), ("content-type", content_type)],
                )
                .body(body),
            )
            .await;
            assert_eq!(
                (reply.status, reply.code()),
                (status, code),
                "{method} {path} {body}: {reply:?}"
            );
        }
    }
    assert_eq!(
        app.redis_snapshot().await,
        redis_before,
        "a refused request wrote"
    );
    let versions_after: Option<String> = app.pg.query_one(versions, &[]).await.unwrap().get(0);
    assert_eq!(versions_after, versions_before);
    // A JSON body, or none, is taken and not read.
    let published = app
        .call_with(
            "POST",
            "/v1/admin/pricing/publish",
            Some(json!({})),
            &[("authorization", &admin)],
        )
        .await;
    assert_eq!(published.status, 200, "{published:?}");
    let cancelled = app
        .call(
            "POST",
            &format!("/v1/checkout/{session}/cancel"),
            None,
            Caller::Anonymous,
        )
        .await;
    assert_eq!(cancelled.body["state"], "CANCELLED", "{cancelled:?}");
    app.finish().await;
}
