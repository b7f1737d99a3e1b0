//! The README's `sh` blocks, extracted from README.md and run in order, each with bash in a
//! fresh shell (`set -euo pipefail`), against a live app and the local payment gateway
//! (`commerce_native::gateway`, what `commerce gateway` serves), configured as
//! `scripts/run` configures them (admin token, JWT secret, gateway key and webhook secret)
//! and seeded by the `commerce seed` binary with the same 1000 demo variants. Only the
//! addresses differ: `localhost:3000` becomes this test's app, `localhost:4242` its gateway,
//! and `target/release/commerce` the binary of this build.
//!
//! Each block must exit 0, and where the README shows an answer (a `# {…}` line after a
//! command, continued on `#  ` lines), every field name and every upper-case code or state
//! it shows must be in what the block printed.

use std::process::Command;

use commerce_native::gateway::Gateway;
use commerce_tests::{TestApp, commerce_binary};

const README: &str = include_str!("../../README.md");

/// The README's runnable blocks: the bodies of its ```` ```sh ```` fences, in order.
fn sh_blocks(readme: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), line) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

/// The answer a line shows, if it is one: `# {…}`, or `# 201 {…}` with its status.
fn shown_answer(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("# ")?;
    let rest = match rest.split_once(' ') {
        Some((status, body)) if status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()) => body,
        _ => rest,
    };
    rest.starts_with('{').then_some(rest)
}

/// The answers a block shows: each answer line with its `#  ` continuation lines.
fn shown_answers(block: &str) -> Vec<String> {
    let mut answers: Vec<String> = Vec::new();
    let mut open = false;
    for line in block.lines() {
        if let Some(answer) = shown_answer(line) {
            answers.push(answer.to_owned());
            open = true;
        } else if let (true, Some(more), Some(last)) = (open, line.strip_prefix("#  "), answers.last_mut()) {
            last.push_str(more);
        } else {
            open = false;
        }
    }
    answers
}

/// Field names (`"name":`) and upper-case codes or states (`"INSUFFICIENT_INVENTORY"`) of
/// a shown answer.
fn landmarks(answer: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = answer;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        let word = &after[..end];
        let tail = &after[end + 1..];
        let is_name = !word.is_empty()
            && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && tail.starts_with(':');
        let is_code = word.len() >= 3
            && word.starts_with(|c: char| c.is_ascii_uppercase())
            && word.chars().all(|c| c.is_ascii_uppercase() || c == '_');
        if is_name {
            found.push(format!("\"{word}\":"));
        } else if is_code {
            found.push(format!("\"{word}\""));
        }
        rest = tail;
    }
    found
}

#[test]
fn the_readme_shows_runnable_blocks_and_their_answers() {
    let blocks = sh_blocks(README);
    assert!(blocks.len() >= 6, "{} sh blocks", blocks.len());
    let answers: Vec<String> = blocks.iter().flat_map(|b| shown_answers(b)).collect();
    assert!(answers.len() >= 20, "{answers:#?}");
    assert_eq!(
        landmarks(r#"{"error":{"code":"CART_NOT_FOUND",…},"items":[{"x_1":2}]}"#),
        [
            "\"error\":",
            "\"code\":",
            "\"CART_NOT_FOUND\"",
            "\"items\":",
            "\"x_1\":"
        ]
    );
    // Every section stands alone: it names what it uses.
    for block in &blocks {
        for (variable, definition) in [
            ("$H", "H="),
            ("$ADMIN", "ADMIN="),
            ("$CART", "CART="),
            ("$TOKEN", "TOKEN="),
            ("$LINE", "LINE="),
            ("$S", "S="),
        ] {
            let uses = block.match_indices(variable).any(|(i, _)| {
                !block[i + variable.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            });
            assert!(
                !uses || block.contains(definition),
                "a block uses {variable} without defining it:\n{block}"
            );
        }
    }
}

/// Runs `command` to its end off the runtime's thread, so the app this test serves
/// in-process keeps answering it.
async fn run(mut command: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || command.output().expect("run a command"))
        .await
        .expect("the command's thread")
}

#[tokio::test]
async fn every_readme_block_runs_as_pasted_against_a_live_server() {
    const KEY: &str = "sk_test_local";
    const SECRET: &str = "whsec_local";
    let gateway = Gateway::start(KEY, SECRET).await;
    let gateway_base = gateway.base.clone();
    let app = TestApp::spawn_with(|c| {
        c.set("admin_token", "dev-admin-token")
            .set("jwt_secret", "dev-jwt-secret")
            .set("payment_gateway_url", &gateway_base)
            .set("payment_gateway_key", KEY)
            .set("webhook_secret", SECRET)
    })
    .await;
    gateway.set_webhook_url(Some(format!("{}/v1/checkout/payment-webhook", app.base)));

    // The demo data, as scripts/run writes it: the binary, in this test's namespace. Its
    // progress goes to a log here (not a terminal): plain lines, no carriage returns.
    let binary = commerce_binary();
    let mut seed = Command::new(&binary);
    seed.args(["seed", "--variants", "1000"])
        .env("COMMERCE_DATABASE_URL", app.database_url())
        .env("COMMERCE_KEY_PREFIX", &app.key_prefix);
    let seeded = run(seed).await;
    let log = String::from_utf8_lossy(&seeded.stderr);
    assert!(seeded.status.success(), "{log}");
    assert!(!log.contains('\r'), "{log:?}");
    assert!(
        log.contains("commerce: 1000/1000 variants seeded (100%)"),
        "{log}"
    );

    let app_address = app.base.trim_start_matches("http://");
    let gateway_address = gateway.base.trim_start_matches("http://");
    let binary = binary.display().to_string();
    for (n, block) in sh_blocks(README).iter().enumerate() {
        let script = block
            .replace("localhost:3000", app_address)
            .replace("localhost:4242", gateway_address)
            .replace("target/release/commerce", &binary);
        let mut bash = Command::new("bash");
        bash.args(["-euo", "pipefail", "-c", &script])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdin(std::process::Stdio::null());
        let run = run(bash).await;
        let stdout = String::from_utf8_lossy(&run.stdout);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            run.status.success(),
            "README block {n} failed ({}):\n{block}\nstdout: {stdout}\nstderr: {stderr}",
            run.status
        );
        for answer in shown_answers(block) {
            for landmark in landmarks(&answer) {
                assert!(
                    stdout.contains(&landmark),
                    "README block {n} shows {landmark} in {answer}, but the server answered:\n{stdout}"
                );
            }
        }
    }
    app.finish().await;
}
