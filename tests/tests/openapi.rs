//! `openapi.json` against the router: every route the router answers is documented, every
//! documented operation is answered, and `GET /openapi.json` serves the committed file.
//! The router's routes are `commerce_core::routes::ROUTES`, which this test first holds
//! against the running app: each listed (method, path) is routed (neither 404
//! `ROUTE_NOT_FOUND` nor 405), and every other method on those paths is not.

use std::collections::BTreeSet;

use commerce_core::openapi::DOCUMENT;
use commerce_core::routes::{ROUTES, Route};
use commerce_tests::host::Host;
use commerce_tests::{ADMIN_TOKEN, Reply, TestApp};
use serde_json::{Value, json};

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// A concrete path for a template: each `{param}` replaced by a well-formed id.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|segment| match segment {
            "{session}" => "cs_0123456789abcdef0123456789abcdef",
            s if s.starts_with('{') => "x1",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn send(app: &TestApp, method: &str, template: &str) -> Reply {
    let token = format!("Bearer {ADMIN_TOKEN}");
    let body = (method != "GET" && method != "DELETE").then(|| json!({}));
    app.call_with(
        method,
        &concrete(template),
        body,
        &[
            ("authorization", &token),
            ("idempotency-key", "openapi-route-probe"),
        ],
    )
    .await
}

/// Whether `path` is an instance of `template` (a `{param}` matches any one segment).
fn instance_of(path: &str, template: &str) -> bool {
    let (path, template): (Vec<&str>, Vec<&str>) = (path.split('/').collect(), template.split('/').collect());
    path.len() == template.len()
        && path
            .iter()
            .zip(&template)
            .all(|(p, t)| t.starts_with('{') || p == t)
}

fn routed(reply: &Reply) -> bool {
    !(reply.status == 404 && reply.code() == "ROUTE_NOT_FOUND") && reply.status != 405
}

#[tokio::test]
async fn the_route_table_is_what_the_router_answers() {
    let app = TestApp::spawn().await;
    let mut unrouted = Vec::new();
    let mut extra = Vec::new();
    let templates: BTreeSet<&str> = ROUTES.iter().map(|r| r.path).collect();
    for template in &templates {
        for method in METHODS {
            // Routed by another listed route whose template the concrete path also fits
            // (`GET /v1/checkout/payment-webhook` is a session's GET, of a session that
            // does not exist); such a path may also be refused with 405 (`GET
            // /v1/inventory/availability` is not a variant's stock).
            let path = concrete(template);
            let fits_another = ROUTES
                .iter()
                .any(|r| r.method == method && r.path != *template && instance_of(&path, r.path));
            let listed = ROUTES.contains(&Route {
                method,
                path: template,
            });
            let reply = send(&app, method, template).await;
            match (listed, routed(&reply)) {
                (true, false) => unrouted.push(format!("{method} {template}: {reply:?}")),
                (false, true) if !fits_another => extra.push(format!("{method} {template}: {reply:?}")),
                _ => {}
            }
        }
    }
    assert!(unrouted.is_empty(), "listed but not routed: {unrouted:#?}");
    assert!(extra.is_empty(), "routed but not listed: {extra:#?}");
    app.finish().await;
}

#[test]
fn every_route_is_documented_and_every_documented_operation_is_a_route() {
    let doc: Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("a path item").keys() {
            if method != "parameters" {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    let missing: Vec<_> = routes.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&routes).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "documented operations that are no route: {unknown:?}"
    );
}

#[test]
fn every_operation_documents_its_errors_and_every_reference_resolves() {
    let doc: Value = serde_json::from_str(DOCUMENT).unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path} documents no success"
            );
            // Every route but the liveness probe and the document itself reads a
            // dependency or a setting, so every one may answer 503.
            if !["/health/live", "/openapi.json"].contains(&path.as_str()) {
                assert!(responses.contains_key("503"), "{method} {path} documents no 503");
            }
            // And every request may meet what is checked before or around any route: a
            // header given twice, the body's size and time, the head's size, a fault.
            for status in ["400", "401", "408", "413", "414", "431", "500"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} documents no {status}"
                );
            }
        }
    }
    // Every link names an operation, and only parameters that operation has (Schemathesis's
    // stateful phase, `scripts/api-fuzz --full`, refuses to run otherwise).
    let mut operations = std::collections::BTreeMap::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let names: BTreeSet<String> = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect();
            operations.insert(op["operationId"].as_str().unwrap().to_owned(), names);
        }
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for response in op["responses"].as_object().unwrap().values() {
                for (name, link) in response["links"].as_object().into_iter().flatten() {
                    let target = link["operationId"].as_str().unwrap();
                    let known = operations
                        .get(target)
                        .unwrap_or_else(|| panic!("{method} {path}: link {name} to unknown {target}"));
                    for parameter in link["parameters"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k)
                    {
                        assert!(
                            known.contains(parameter),
                            "{method} {path}: link {name} names `{parameter}`, which {target} does not take"
                        );
                    }
                }
            }
        }
    }
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    for reference in refs {
        let pointer = reference.trim_start_matches('#');
        assert!(doc.pointer(pointer).is_some(), "{reference} resolves to nothing");
    }
}

fn collect_refs(value: &Value, into: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("$ref", Value::String(r)) => into.push(r.clone()),
                    _ => collect_refs(value, into),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, into)),
        _ => {}
    }
}

#[tokio::test]
async fn the_document_is_served_as_committed() {
    let app = TestApp::spawn().await;
    let served = app.get("/openapi.json").await;
    assert_eq!(served.status, 200);
    let committed: Value = serde_json::from_str(DOCUMENT).unwrap();
    assert_eq!(served.body, committed);
    // The same JSON as the file (compiled in without its indentation).
    let file = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi.json")).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&file).unwrap(), committed);
    app.finish().await;
}

/// What Schemathesis found (scripts/api-fuzz), fixed, and kept fixed.
#[tokio::test]
async fn the_fuzzers_findings_stay_fixed() {
    let app = TestApp::spawn().await;
    let send = |method: &str, path: &str| {
        app.http
            .request(method.parse().unwrap(), format!("{}{path}", app.base))
    };

    // A 405 names the methods the route answers (RFC 9110), those of the most specific route.
    for (method, path, allow) in [
        ("TRACE", "/health", "GET, HEAD"),
        ("PUT", "/v1/inventory/availability", "POST"),
        ("GET", "/v1/admin/inventory/reconcile", "POST"),
        ("POST", "/v1/carts/c1/items/l1", "DELETE, PATCH"),
        ("PUT", "/v1/customers/alice/cart", "GET, HEAD"),
    ] {
        let response = send(method, path).send().await.unwrap();
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(response.headers()["allow"], allow, "{method} {path}");
    }

    // A replayed answer keeps the first one's headers: a cart's ETag.
    let mut etags = Vec::new();
    for _ in 0..2 {
        let response = send("POST", "/v1/carts")
            .header("idempotency-key", "fuzz-etag")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        etags.push(response.headers().get("etag").cloned());
    }
    assert!(etags[0].is_some(), "{etags:?}");
    assert_eq!(etags[0], etags[1]);

    // A header value that is not text is refused, not taken as absent. Spin's host refuses
    // it itself, before the component runs ("incomplete utf-8 byte sequence", an empty 500:
    // README, What differs between the hosts).
    let latin1 = reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap();
    let response = send("POST", "/v1/carts")
        .header("idempotency-key", latin1)
        .send()
        .await
        .unwrap();
    let expected = match TestApp::host() {
        Host::Native => 400,
        Host::Spin => 500,
    };
    assert_eq!(response.status(), expected);

    // If-Match is a version as documented: digits, quoted or not, nothing else.
    let cart = app.new_cart().await;
    for bad in ["-1", "+0", "\"\"0", "0x1", ""] {
        let reply = app
            .call_with(
                "POST",
                &format!("/v1/carts/{cart}/items"),
                Some(json!({"variantId": "var-1", "quantity": 1})),
                &[("if-match", bad)],
            )
            .await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "INVALID_IF_MATCH"),
            "{bad:?}: {reply:?}"
        );
    }
    app.finish().await;
}
