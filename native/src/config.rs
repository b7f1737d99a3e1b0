//! Configuration natively: the Spin variable names upper-cased behind `COMMERCE_`
//! (`redis_url` → `COMMERCE_REDIS_URL`), with command-line overrides on top.

use std::collections::HashMap;

use commerce_core::ports::Config;

/// Environment variables plus explicit overrides.
#[derive(Debug, Clone, Default)]
pub struct EnvConfig {
    overrides: HashMap<String, String>,
}

impl EnvConfig {
    /// Reads `COMMERCE_*` from the environment; `set` values win.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides one setting (by its Spin variable name).
    pub fn set(mut self, name: &str, value: impl Into<String>) -> Self {
        self.overrides.insert(name.to_owned(), value.into());
        self
    }
}

impl Config for EnvConfig {
    fn get(&self, name: &str) -> Option<String> {
        self.overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(format!("COMMERCE_{}", name.to_ascii_uppercase())).ok())
    }
}
