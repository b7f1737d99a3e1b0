//! The test harness's own promises (`tests/src/lib.rs`): a test leaves nothing behind in
//! the shared Redis and PostgreSQL, whether it ends with `finish()`, returns early or
//! panics.

use commerce_tests::{TestApp, admin_redis_url};
use redis::AsyncCommands;

/// Keys left under `key_prefix` on the shared Redis.
async fn keys_left(key_prefix: &str) -> Vec<String> {
    let redis = commerce_tests::redis_link::TestRedis::connect(&admin_redis_url())
        .await
        .unwrap();
    redis.scan(&format!("{key_prefix}:*")).await
}

/// Whether the PostgreSQL schema `namespace` is still there.
async fn schema_left(app_pg: &tokio_postgres::Client, namespace: &str) -> bool {
    app_pg
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&namespace])
        .await
        .unwrap()
        .is_some()
}

/// A connection to the shared PostgreSQL outside any test schema.
async fn postgres() -> tokio_postgres::Client {
    let url = std::env::var("COMMERCE_DATABASE_URL").expect("COMMERCE_DATABASE_URL");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test]
async fn a_test_that_panics_leaves_no_keys_and_no_schema() {
    let (names, named) = tokio::sync::oneshot::channel();
    let test = tokio::spawn(async move {
        let app = TestApp::spawn().await;
        app.seed(2).await;
        let mut redis = app.redis.clone();
        let _: () = redis.set(app.key("left-by-a-panic"), 1).await.unwrap();
        names
            .send((app.namespace.clone(), app.key_prefix.clone()))
            .unwrap();
        assert!(app.redis_keys().await.len() > 1);
        panic!("the test fails here, before finish()");
    });
    assert!(test.await.unwrap_err().is_panic());
    let (namespace, key_prefix) = named.await.unwrap();
    assert_eq!(keys_left(&key_prefix).await, Vec::<String>::new());
    assert!(!schema_left(&postgres().await, &namespace).await);
}

#[tokio::test]
async fn finish_and_drop_each_clean_up_once() {
    let pg = postgres().await;
    for finished in [true, false] {
        let app = TestApp::spawn().await;
        app.seed(2).await;
        let (namespace, key_prefix) = (app.namespace.clone(), app.key_prefix.clone());
        assert!(!keys_left(&key_prefix).await.is_empty());
        assert!(schema_left(&pg, &namespace).await);
        if finished {
            app.finish().await;
        } else {
            drop(app);
        }
        assert_eq!(
            keys_left(&key_prefix).await,
            Vec::<String>::new(),
            "finished: {finished}"
        );
        assert!(!schema_left(&pg, &namespace).await, "finished: {finished}");
    }
}
