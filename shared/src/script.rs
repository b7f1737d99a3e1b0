//! Lua scripts run by SHA with a fallback to EVAL when the server does not know the script.
//!
//! A script is sent in full only the first time a Redis server sees it (or after a
//! restart or `SCRIPT FLUSH`); every other call is an `EVALSHA`, one round trip either way
//! in the common case. The missing-script error is recognised by its kind in either of
//! the renderings the adapters hand over as text (DESIGN §2): see [`is_missing_script`].
//!
//! Each script is the shared prelude (`script/prelude.lua`) followed by its store's files
//! (`lua!`), so the SHA, the `EVAL` fallback and a Redis Cluster all see one text per script.
//! The parts are joined when the script is first run, not at compile time: the prelude and
//! the files several scripts share (`cart.lua`, …) are then in the binary once, not once
//! per script (about 48 KB less in each Spin component).

use std::sync::OnceLock;

use crate::error::{Dependency, Error, PortError};
use crate::ports::{Redis, RedisArg, RedisReply};

/// The parts of a script as [`Script::new`] takes them: the shared prelude
/// (`script/prelude.lua`: `now_ms()`, the Redis clock), then the named files in order,
/// named from `src/` (`lua!("inventory/purge.lua", "inventory/reserve.lua")`).
///
/// Every script of the stores is built this way, so a helper written in the prelude is
/// written once, and the prelude is part of the text whose SHA-1 `EVALSHA` sends. The
/// files are compiled in as `build.rs` copies them: their comment lines emptied.
macro_rules! lua {
    ($($file:literal),+ $(,)?) => {
        &[
            include_str!(concat!(env!("OUT_DIR"), "/lua/script/prelude.lua")),
            $(include_str!(concat!(env!("OUT_DIR"), "/lua/", $file))),+
        ]
    };
}
pub(crate) use lua;

/// A Lua script compiled into the binary as the parts of its text, joined and hashed once.
pub struct Script {
    parts: &'static [&'static str],
    source: OnceLock<String>,
    sha: OnceLock<String>,
}

impl Script {
    /// Wraps a script's source, the concatenation of `parts` (the stores' own: [`lua!`]).
    pub const fn new(parts: &'static [&'static str]) -> Self {
        Self {
            parts,
            source: OnceLock::new(),
            sha: OnceLock::new(),
        }
    }

    /// The script's text: its parts, joined.
    pub fn source(&self) -> &str {
        self.source.get_or_init(|| self.parts.concat())
    }

    /// The script's SHA-1, as `SCRIPT LOAD` would answer it.
    pub fn sha(&self) -> &str {
        self.sha
            .get_or_init(|| sha1_smol::Sha1::from(self.source()).digest().to_string())
    }

    /// Sends the script with `keys` and `args` and waits for nothing
    /// ([`Redis::send_detached`]): as `EVAL`, so it runs whether or not the server knows it.
    pub fn send_detached<R: Redis>(&self, redis: &R, keys: &[&str], args: Vec<RedisArg>) {
        redis.send_detached("EVAL", call_args(self.source().into(), keys, &args));
    }

    /// Runs the script with `keys` and `args`: `EVALSHA`, then `EVAL` if the server does
    /// not know it yet.
    pub async fn run<R: Redis>(
        &self,
        redis: &R,
        keys: &[&str],
        args: Vec<RedisArg>,
    ) -> Result<Vec<RedisReply>, PortError> {
        run_text(redis, self.sha(), self.source(), keys, args).await
    }
}

/// `EVALSHA` of `sha`, then `EVAL` of `source` if the server does not know it yet.
async fn run_text<R: Redis>(
    redis: &R,
    sha: &str,
    source: &str,
    keys: &[&str],
    args: Vec<RedisArg>,
) -> Result<Vec<RedisReply>, PortError> {
    let call = |head: RedisArg| call_args(head, keys, &args);
    match redis.execute("EVALSHA", call(sha.into())).await {
        Err(e) if e.server_message().is_some_and(is_missing_script) => {
            redis.execute("EVAL", call(source.into())).await
        }
        other => other,
    }
}

/// Scripts that follow one another run as one script on a single Redis server: one round
/// trip where each would be its own, and nothing seen, or cut short, between them.
///
/// Each step is one of the stores' scripts, unchanged: its files (without the prelude,
/// which the chain has once) become a Lua function of its own `KEYS` and `ARGV`, so the
/// script reads exactly what it would alone. The steps run in order; after each, the
/// chain goes on only if the step's reply's tag is one its [`Step`] names, and otherwise
/// answers the replies so far: the caller then goes on from that reply as it would have
/// after that one script. A chain is for a single server only: its steps' keys are in
/// several slots, so on a Redis Cluster the caller runs the scripts one by one instead.
///
/// A script's error stops the chain where it is, with the steps before it done, as a
/// failure between two calls would; a Lua error names the chain's line, not the file's.
pub struct Chain {
    steps: &'static [&'static Script],
    source: OnceLock<String>,
    sha: OnceLock<String>,
}

/// One step of a [`Chain`]: the script's keys and arguments, and the tags of its reply
/// after which the chain goes on to the next step.
pub struct Step<'a> {
    pub keys: Vec<&'a str>,
    pub args: Vec<RedisArg>,
    pub goes_on: &'static [&'static str],
}

/// The chain's own Lua, after its steps' functions (`steps`): `ARGV` starts with each step's
/// key count, argument count and the tags it goes on after (joined by ','); then come the
/// steps' arguments, in order, as `KEYS` has their keys. The reply: for each step run, the
/// length of its reply, then its values.
const CHAIN_RUN: &str = "
local at_key, at_arg, replies = 1, 3 * #steps + 1, {}
for i, step in ipairs(steps) do
  local keys, args = {}, {}
  for j = 1, tonumber(ARGV[3 * i - 2]) do
    keys[j] = KEYS[at_key]
    at_key = at_key + 1
  end
  for j = 1, tonumber(ARGV[3 * i - 1]) do
    args[j] = ARGV[at_arg]
    at_arg = at_arg + 1
  end
  local reply = step(keys, args)
  replies[#replies + 1] = #reply
  for j = 1, #reply do
    replies[#replies + 1] = reply[j]
  end
  if not string.find(',' .. ARGV[3 * i] .. ',', ',' .. tostring(reply[1]) .. ',', 1, true) then
    break
  end
end
return replies
";

impl Chain {
    /// The chain of `steps`: scripts built by [`lua!`], so each starts with the prelude.
    pub const fn new(steps: &'static [&'static Script]) -> Self {
        Self {
            steps,
            source: OnceLock::new(),
            sha: OnceLock::new(),
        }
    }

    /// The chain's text: the prelude once, each step's files as a function, then the run.
    pub fn source(&self) -> &str {
        self.source.get_or_init(|| {
            let mut text = self.steps[0].parts[0].to_owned();
            for (i, step) in self.steps.iter().enumerate() {
                text.push_str(&format!("\nlocal function step_{i}(KEYS, ARGV)\n"));
                text.push_str(&step.parts[1..].concat());
                text.push_str("\nend\n");
            }
            let names: Vec<String> = (0..self.steps.len()).map(|i| format!("step_{i}")).collect();
            text.push_str(&format!("local steps = {{{}}}\n", names.join(", ")));
            text.push_str(CHAIN_RUN);
            text
        })
    }

    /// The chain's SHA-1, as `SCRIPT LOAD` would answer it.
    pub fn sha(&self) -> &str {
        self.sha
            .get_or_init(|| sha1_smol::Sha1::from(self.source()).digest().to_string())
    }

    /// Runs the steps (one per script of the chain, in its order) as one script, and
    /// returns the reply of each step that ran: all of them, or those up to the first
    /// whose tag its step does not go on after (never none: the first step always runs).
    pub async fn run<R: Redis>(
        &self,
        redis: &R,
        steps: Vec<Step<'_>>,
    ) -> Result<Vec<Vec<RedisReply>>, PortError> {
        debug_assert_eq!(steps.len(), self.steps.len(), "one step per script of the chain");
        let mut keys = Vec::new();
        let mut args = Vec::with_capacity(3 * steps.len());
        for step in &steps {
            args.push(RedisArg::Int(step.keys.len() as i64));
            args.push(RedisArg::Int(step.args.len() as i64));
            args.push(step.goes_on.join(",").into());
        }
        for step in steps {
            keys.extend(step.keys);
            args.extend(step.args);
        }
        let flat = run_text(redis, self.sha(), self.source(), &keys, args).await?;
        let mut replies = Vec::new();
        let mut rest = flat.as_slice();
        while let Some((count, tail)) = rest.split_first() {
            let count = count.as_int().and_then(|n| usize::try_from(n).ok());
            let Some(reply) = count.and_then(|n| tail.get(..n)) else {
                return Err(PortError::server(
                    Dependency::Redis,
                    "a chain of scripts answered a malformed reply",
                ));
            };
            replies.push(reply.to_vec());
            rest = &tail[reply.len()..];
        }
        if replies.is_empty() {
            return Err(PortError::server(
                Dependency::Redis,
                "a chain of scripts answered no step",
            ));
        }
        Ok(replies)
    }
}

/// The arguments of `EVALSHA` or `EVAL`: `head` (the SHA or the source), the number of
/// keys, the keys, then `args`.
fn call_args(head: RedisArg, keys: &[&str], args: &[RedisArg]) -> Vec<RedisArg> {
    let mut all = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(head);
    all.push(RedisArg::Int(keys.len() as i64));
    all.extend(keys.iter().map(|k| RedisArg::from(*k)));
    all.extend(args.iter().cloned());
    all
}

/// Whether a server error says that the server does not know the script (`EVALSHA` of an
/// unloaded SHA), in either rendering an adapter hands over:
/// - `NOSCRIPT No matching script. Please use EVAL.`: the error code Redis sends, first,
///   as the native adapter and older Spin hosts pass it on;
/// - `An error was signalled by the server - NoScriptError: No matching script. Please use
///   EVAL.`: the Spin host's redis-rs 0.32 rendering of that code, kind name in the middle
///   (`spin-adapter/src/redis.rs` tests it against what the real host returned).
///
/// The code must lead (or the kind be named after the host's ` - `), so that a script
/// error that merely mentions NOSCRIPT in its message is not taken for a missing script.
pub fn is_missing_script(message: &str) -> bool {
    message.starts_with("NOSCRIPT") || message.contains(" - NoScriptError:")
}

/// The leading tag of a script's flat reply (`OK`, `MISSING`, …), empty if there is none.
pub fn tag(reply: &[RedisReply]) -> &str {
    reply.first().and_then(RedisReply::as_text).unwrap_or("")
}

/// The error for a script reply of a shape its caller does not know: a bug or a foreign
/// script under the same SHA, never the client's fault (500).
/// Only the reply's tag and length are told: its values may be a session's or a cart's
/// fields, ids (credentials) among them.
pub fn unexpected(reply: &[RedisReply]) -> Error {
    let first = reply
        .first()
        .and_then(RedisReply::as_text)
        .unwrap_or("(not text)");
    let shown: String = first.chars().take(32).collect();
    Error::Internal(format!(
        "unexpected script reply: {} values, the first {shown:?}",
        reply.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::error::Dependency;
    use std::cell::RefCell;

    /// A Redis port that answers `EVALSHA` with `missing` and records each command.
    struct Unloaded {
        missing: &'static str,
        commands: RefCell<Vec<String>>,
    }

    impl Redis for Unloaded {
        async fn execute(&self, command: &str, _: Vec<RedisArg>) -> Result<Vec<RedisReply>, PortError> {
            self.commands.borrow_mut().push(command.to_owned());
            match command {
                "EVALSHA" => Err(PortError::server(Dependency::Redis, self.missing)),
                _ => Ok(vec![RedisReply::Int(1)]),
            }
        }

        async fn pause(&self, _: u64) {}
    }

    fn run_on(missing: &'static str) -> (Result<Vec<RedisReply>, PortError>, Vec<String>) {
        let redis = Unloaded {
            missing,
            commands: RefCell::new(Vec::new()),
        };
        let script = Script::new(&["return 1"]);
        let mut run = std::pin::pin!(script.run(&redis, &["k"], Vec::new()));
        let waker = std::task::Waker::noop();
        let std::task::Poll::Ready(reply) = run.as_mut().poll(&mut std::task::Context::from_waker(waker))
        else {
            panic!("the fake port answers at once");
        };
        let commands = redis.commands.borrow().clone();
        (reply, commands)
    }

    #[test]
    fn a_missing_script_is_sent_with_eval_in_either_rendering() {
        for missing in [
            "NOSCRIPT No matching script. Please use EVAL.",
            "An error was signalled by the server - NoScriptError: No matching script. Please use EVAL.",
        ] {
            let (reply, commands) = run_on(missing);
            assert_eq!(reply.unwrap(), [RedisReply::Int(1)], "{missing}");
            assert_eq!(commands, ["EVALSHA", "EVAL"], "{missing}");
        }
    }

    #[test]
    fn other_server_errors_are_not_retried_with_eval() {
        for error in [
            "An error was signalled by the server - ResponseError: Error running script (call to f_x): @user_script:1: user_script:1: NOSCRIPT is a word here",
            "ERR Error running script: NOSCRIPT in a message",
            "WRONGTYPE: Operation against a key holding the wrong kind of value",
        ] {
            let (reply, commands) = run_on(error);
            assert!(matches!(reply, Err(e) if e.server_message().is_some()), "{error}");
            assert_eq!(commands, ["EVALSHA"], "{error}");
        }
    }

    #[test]
    fn sha_matches_redis_script_load() {
        // `redis-cli SCRIPT LOAD "return 1"` answers this digest.
        let script = Script::new(&["return 1"]);
        assert_eq!(script.sha(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
        // Parts hash as the text they join into.
        assert_eq!(Script::new(&["return", " 1"]).sha(), script.sha());
    }
}
