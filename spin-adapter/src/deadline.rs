//! The timeouts of the calls one request makes to Redis or PostgreSQL.

use std::cell::Cell;
use std::time::{Duration, Instant};

use commerce_core::error::{Dependency, PortError};

/// The calls one request makes to one dependency, timed against that dependency's native
/// timeout and the request's own deadline. Spin cannot interrupt a host call, so a call
/// runs until the dependency answers; one that took longer than `timeout` is then
/// answered as the native adapter answers a timeout (a 503: its effect may or may not
/// have happened, which every operation already allows for), and no further call is
/// started in the request. Nor is one started past the request's deadline
/// (`request_timeout_ms`), where the native server stops a request.
pub struct Deadline {
    dependency: Dependency,
    setting: &'static str,
    timeout: Duration,
    request_ends: Instant,
    overrun: Cell<Option<Duration>>,
}

impl Deadline {
    /// A deadline for calls to `dependency`, each allowed `timeout_ms` (the value of
    /// `setting`), none started after `request_ends`.
    pub fn new(
        dependency: Dependency,
        setting: &'static str,
        timeout_ms: u64,
        request_ends: Instant,
    ) -> Self {
        Self {
            dependency,
            setting,
            timeout: Duration::from_millis(timeout_ms),
            request_ends,
            overrun: Cell::new(None),
        }
    }

    /// Runs one host call under the deadline.
    pub(crate) fn call<T>(&self, host_call: impl FnOnce() -> Result<T, PortError>) -> Result<T, PortError> {
        if Instant::now() >= self.request_ends {
            return Err(PortError::unreachable(
                self.dependency,
                format!(
                    "not called: the request has run past request_timeout_ms, {} not reached",
                    self.dependency.name()
                ),
            ));
        }
        if let Some(took) = self.overrun.get() {
            return Err(PortError::unreachable(
                self.dependency,
                format!(
                    "not called: an earlier {} call of this request took {} ms, more than {} ({} ms)",
                    self.dependency.name(),
                    took.as_millis(),
                    self.setting,
                    self.timeout.as_millis()
                ),
            ));
        }
        let started = Instant::now();
        let result = host_call();
        let took = started.elapsed();
        if took > self.timeout {
            self.overrun.set(Some(took));
            return Err(PortError::unreachable(
                self.dependency,
                format!(
                    "{} answered after {} ms, more than {} ({} ms)",
                    self.dependency.name(),
                    took.as_millis(),
                    self.setting,
                    self.timeout.as_millis()
                ),
            ));
        }
        result
    }
}
