//! The `Config` port over Spin variables.

use std::cell::RefCell;

use commerce_core::error::Error;
use commerce_core::ports::Config;
use spin_sdk::variables;

/// The [`Config`] port over Spin variables (`fermyon:spin/variables@2.0.0`).
///
/// Guarantees: a variable the component does not define reads as unset, so the
/// setting's default applies. Any other failure (the variables provider, e.g. Vault, is
/// down) also reads as unset but is remembered, and [`SpinConfig::take_failure`] reports it
/// so that a default is never used in place of a value that exists but could not be read.
#[derive(Default)]
pub struct SpinConfig {
    failure: RefCell<Option<Error>>,
}

impl SpinConfig {
    /// A reader of this component's Spin variables.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the first failure to read a variable, other than the variable being
    /// undefined: a provider failure is a 503, anything else (a name Spin refuses) a 500.
    pub fn take_failure(&self) -> Option<Error> {
        self.failure.borrow_mut().take()
    }
}

impl Config for SpinConfig {
    fn get(&self, name: &str) -> Option<String> {
        let failure = match variables::get(name) {
            Ok(value) => return Some(value),
            Err(variables::Error::Undefined(_)) => return None,
            Err(variables::Error::Provider(message)) => Error::Unavailable {
                dependency: "variables",
                message: format!("reading variable {name:?}: {message}"),
            },
            Err(variables::Error::InvalidName(message) | variables::Error::Other(message)) => {
                Error::Configuration(format!("reading variable {name:?}: {message}"))
            }
        };
        self.failure.borrow_mut().get_or_insert(failure);
        None
    }
}
