//! A connection opened on a request's first call and kept for the rest of it.

use std::cell::OnceCell;

use commerce_core::error::{Failure, PortError};

/// The connection of one request to one address, opened on first use. Spin keeps no state
/// between requests, so this is as long as a connection lives.
pub(crate) struct OnFirstUse<C> {
    address: String,
    connection: OnceCell<C>,
}

impl<C> OnFirstUse<C> {
    /// Nothing is opened yet.
    pub(crate) fn new(address: &str) -> Self {
        Self {
            address: address.to_owned(),
            connection: OnceCell::new(),
        }
    }

    /// The connection, opened with `open(address)` on the first call; a failed open is
    /// tried again by the next call. Whatever stops the open is
    /// [`Failure::Unreachable`](commerce_core::error::Failure::Unreachable): the caller can only retry later.
    pub(crate) fn get(&self, open: impl FnOnce(&str) -> Result<C, PortError>) -> Result<&C, PortError> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection);
        }
        let opened = open(&self.address).map_err(|e| match e.failure {
            Failure::Server(message) => PortError::unreachable(e.dependency, message),
            Failure::Unreachable(_) => e,
        })?;
        Ok(self.connection.get_or_init(|| opened))
    }
}
