//! Idempotency keys (DESIGN §4, invariant 5) for every POST that creates something: the
//! same key with the same body gets the same answer; the same key with another body is 422;
//! the same key while the first request is still running is 409 with `Retry-After` (a
//! lease that lasts no longer than a request may run, `request_timeout_ms`); answers are kept
//! `idempotency_ttl_seconds` (24 h).
//!
//! Callers validate a request before calling [`once`], so a malformed request never claims
//! its key; nor, where the route says so ([`Claim`]), does a new attempt refused inside
//! the handler for what it names (an unknown variant, say): its record is dropped. A
//! request that fails in a way worth retrying (5xx) is forgotten, and its retry receives
//! the same resume token: the handler derives its ids from it, so work half done by the
//! failed attempt (a lock taken, a session created) is continued, not repeated.

use serde_json::Value;

use crate::app::App;
use crate::error::{Error, ErrorCode, Result};
use crate::http::{Request, Response};
use crate::ids::random_hex_128;
use crate::ports::{Http, Redis, RedisArg, RedisReply, Sql};
use crate::script::{Script, lua, unexpected};

static BEGIN: Script = Script::new(lua!("idempotency/begin.lua"));
static FINISH: Script = Script::new(lua!("idempotency/finish.lua"));

/// What a route asks of its Idempotency-Key.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    /// Without a key the request is 400 (a checkout start).
    required: bool,
    /// Whether a new attempt refused for what the request names ([`refuses_what_it_names`])
    /// leaves the key unclaimed: true where the handler changes nothing before it can meet
    /// such a refusal.
    refusals_unclaimed: bool,
}

impl Claim {
    /// The key is optional; a refusal of what the request names leaves it unclaimed.
    pub const OPTIONAL: Claim = Claim {
        required: false,
        refusals_unclaimed: true,
    };
    /// The key is required; a refusal of what the request names leaves it unclaimed.
    pub const REQUIRED: Claim = Claim {
        required: true,
        refusals_unclaimed: true,
    };
    /// The key is optional and every answer is kept: the handler has acted (a payment
    /// intent is created at the gateway) before it can meet such a refusal.
    pub const OPTIONAL_KEEPING_EVERY_ANSWER: Claim = Claim {
        required: false,
        refusals_unclaimed: false,
    };
}

/// Whether `error` refuses what the request names or asks (an unknown variant or bundle,
/// choices the bundle does not allow, more than a rule lets one cart or order take): on a
/// new attempt of a route whose handler changed nothing before it, like a request that
/// fails validation before it claims its key.
fn refuses_what_it_names(error: &Error) -> bool {
    matches!(
        error,
        Error::Unprocessable {
            code: ErrorCode::UnknownVariant
                | ErrorCode::UnknownBundle
                | ErrorCode::InvalidBundleChoice
                | ErrorCode::MaxPerOrderExceeded
                | ErrorCode::CartLimit,
            ..
        }
    )
}

/// The `Idempotency-Key` header: 1–255 printable ASCII characters.
fn key_of(req: &Request) -> Result<Option<String>> {
    let Some(key) = req.header("idempotency-key") else {
        return Ok(None);
    };
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::bad_request(
            ErrorCode::InvalidIdempotencyKey,
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// Who calls, for an idempotency scope: `customer:<sub>` for a valid customer token,
/// `admin` or `service` for those tokens (a session answers the admin's, not the
/// service's), `anonymous` without a token, `unverified` for any other (refused by
/// whatever it asks, and such an answer is never kept).
pub fn caller<R: Redis, S: Sql, H: Http>(app: &App<R, S, H>, req: &Request) -> String {
    let authorization = req.header("authorization");
    let settings = &app.settings;
    if authorization.is_none() {
        return "anonymous".into();
    }
    if settings.authorize_admin(authorization).is_ok() {
        return "admin".into();
    }
    if settings.authorize_trusted(authorization).is_ok() {
        return "service".into();
    }
    match crate::auth::verify(authorization, &settings.jwt_secret, settings.token_time()) {
        Ok(customer) => format!("customer:{}", customer.id),
        Err(_) => "unverified".into(),
    }
}

/// Runs `handler` once per idempotency key of `scope` (e.g. `checkout`), replaying the
/// kept answer to retries. Without a key the handler runs as is, unless `required`, when
/// it is a 400. The handler receives the resume token: a fresh random id for a new key,
/// the same one again for a retry that takes over unfinished work.
pub async fn once<R, S, H, F, Fut>(
    app: &App<R, S, H>,
    req: &Request,
    scope: &str,
    claim: Claim,
    handler: F,
) -> Result<Response>
where
    R: Redis,
    S: Sql,
    H: Http,
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<Response>>,
{
    let Some(key) = key_of(req)? else {
        if claim.required {
            return Err(Error::bad_request(
                ErrorCode::IdempotencyKeyRequired,
                "this request needs an Idempotency-Key header",
            ));
        }
        return handler(random_hex_128()?).await;
    };
    // The key's digest is the hash tag, so records spread over a Cluster's slots.
    let record = format!(
        "{}idempotency:{scope}:{{{}}}",
        app.keys.prefix(),
        digest(key.as_bytes())
    );
    let fingerprint = digest(
        &[
            req.method.as_bytes(),
            b" ",
            req.path.as_bytes(),
            b"\n",
            &body_of(&req.body),
        ]
        .concat(),
    );
    let attempt = random_hex_128()?;
    let keys = [record.as_str()];
    let begin = |not_after_ms: i64| {
        BEGIN.run(
            &app.redis,
            &keys,
            vec![
                fingerprint.as_str().into(),
                attempt.as_str().into(),
                // The request's own deadline: it started before this call, so it has been
                // cut (natively; on Spin by the platform's handler timeout) by the time the
                // lease ends, and a retry may take over.
                RedisArg::Int(app.settings.request_timeout_ms as i64),
                RedisArg::Int(not_after_ms),
            ],
        )
    };
    // Past the Redis timeout this request no longer waits for the reply: a call that
    // reaches Redis later (it sat in a paused server) takes no lease.
    let not_after_ms = crate::clock::wall_clock_ms() + app.settings.redis_timeout_ms as i64;
    let begun = match begin(not_after_ms).await {
        // Our clock runs behind Redis's, or Redis was slow within its timeout: we are here
        // to take the lease, so ask again without the limit.
        Ok(reply) if reply.first().and_then(RedisReply::as_text) == Some("LATE") => begin(0).await?,
        Ok(reply) => reply,
        Err(error) => {
            // The call may still run when Redis comes back: end its lease right after it.
            forget_later(app, &record, &attempt);
            return Err(error.into());
        }
    };
    let text = |i: usize| begun.get(i).and_then(RedisReply::as_text).map(str::to_owned);
    let token = match text(0).as_deref() {
        Some("NEW" | "RESUME") => text(1).ok_or_else(|| unexpected(&begun))?,
        Some("DONE") => {
            let status = begun
                .get(1)
                .and_then(RedisReply::as_int)
                .ok_or_else(|| unexpected(&begun))?;
            let body = text(2).unwrap_or_default().into_bytes();
            // The first answer's headers (its content type, a cart's ETag, …); a record
            // kept before headers were kept has none: JSON.
            let mut headers: Vec<(String, String)> = text(3)
                .unwrap_or_default()
                .lines()
                .filter_map(|line| line.split_once(": "))
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect();
            if headers.is_empty() {
                headers.push(("content-type".into(), "application/json".into()));
            }
            headers.push(("idempotent-replayed".into(), "true".into()));
            return Ok(Response {
                status: status as u16,
                headers,
                body,
                fault: None,
            });
        }
        Some("IN_FLIGHT") => {
            let left_ms = begun.get(1).and_then(RedisReply::as_int).unwrap_or(1000).max(1);
            return Err(Error::KeyInUse {
                retry_after_s: (left_ms as u64).div_ceil(1000),
            });
        }
        Some("MISMATCH") => {
            return Err(Error::Unprocessable {
                code: ErrorCode::IdempotencyKeyReused,
                message: "this Idempotency-Key was used with a different request".into(),
                details: Value::Null,
            });
        }
        _ => return Err(unexpected(&begun)),
    };
    let outcome = handler(token.clone()).await;
    let response = match &outcome {
        Ok(response) => response.clone(),
        Err(error) => Response::error(error),
    };
    // A failure worth retrying (5xx) is not an answer to keep (its attempt is forgotten, its
    // token kept for the retry); nor is a refused credential (401, 403): it is the
    // caller's, not the request's, so nothing of it stays under the key, which the next
    // caller uses as if new. Nor is a new attempt refused for what it names or asks, where
    // the route changed nothing (`Claim`): as a malformed request claims no key, its
    // corrected retry may use it. A retry that resumed work begun under the key (its
    // token is an earlier attempt's: a session created, say) keeps the answer, so the key
    // never starts that work a second time.
    let new_attempt = token == attempt;
    let finish = match response.status {
        401 | 403 => "drop",
        status if status >= 500 => "forget",
        _ if claim.refusals_unclaimed
            && new_attempt
            && outcome.as_ref().is_err_and(refuses_what_it_names) =>
        {
            "drop"
        }
        _ => "keep",
    };
    // Redis just failed to answer within its timeout: waiting for it to forget the attempt
    // would only double the wait for the 503. The forget is sent without waiting, to run
    // when Redis is back (natively; elsewhere the lease ends with the request's deadline).
    if matches!(
        &outcome,
        Err(Error::Unavailable {
            dependency: "redis",
            ..
        })
    ) {
        forget_later(app, &record, &attempt);
        return outcome;
    }
    let body = String::from_utf8_lossy(&response.body).into_owned();
    let headers: String = response
        .headers
        .iter()
        .filter(|(name, _)| name != "retry-after")
        .map(|(name, value)| format!("{name}: {value}\n"))
        .collect();
    FINISH
        .run(
            &app.redis,
            &[&record],
            vec![
                token.into(),
                finish.into(),
                RedisArg::Int(response.status.into()),
                body.into(),
                RedisArg::Int(i64::from(app.settings.idempotency_ttl_seconds) * 1000),
                headers.into(),
                attempt.as_str().into(),
            ],
        )
        .await?;
    outcome
}

/// Ends this attempt's lease once Redis runs the command, without waiting for it
/// ([`Script::send_detached`]): after a call that timed out, so a retry need not wait out
/// the lease of an attempt that already answered 503.
fn forget_later<R: Redis, S, H>(app: &App<R, S, H>, record: &str, attempt: &str) {
    let args = vec![
        "".into(),
        "forget".into(),
        RedisArg::Int(0),
        "".into(),
        RedisArg::Int(0),
        "".into(),
        attempt.into(),
    ];
    FINISH.send_detached(&app.redis, &[record], args);
}

/// What "the same body" means for a key: a JSON body as its value (written again with
/// its object keys sorted and no spaces, so the same JSON in another order or spacing is
/// the same request), any other body as its bytes.
fn body_of(body: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => serde_json::to_vec(&sorted(value)).map_or(body.into(), Into::into),
        Err(_) => body.into(),
    }
}

/// `value` with every object's keys in order (whichever map serde_json was built with).
fn sorted(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

fn digest(bytes: &[u8]) -> String {
    sha1_smol::Sha1::from(bytes).digest().to_string()
}
