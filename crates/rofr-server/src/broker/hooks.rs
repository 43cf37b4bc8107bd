//! Webhook registration: where a provider's events are announced.

use std::sync::atomic::Ordering;

use rofr_engine::types::ProviderId;
use rofr_engine::Rejection;

use crate::clock::Clock;

use super::{Broker, BrokerError};

impl Broker {
    /// Lets providers register webhooks at loopback, link-local and private
    /// addresses, and deliveries reach them (tests, demos, a receiver inside one's own
    /// network). Set before serving.
    pub fn allow_private_webhooks(&self, allow: bool) {
        self.inner.private_webhooks.store(allow, Ordering::Release);
    }

    pub fn private_webhooks_allowed(&self) -> bool {
        self.inner.private_webhooks.load(Ordering::Acquire)
    }

    /// Registers (or replaces) a provider's webhook; returns the new signing secret.
    /// The URL is checked by [`crate::webhook::check_url`].
    pub fn set_webhook(&self, provider: &ProviderId, url: &str) -> Result<String, BrokerError> {
        crate::webhook::check_url(url, self.private_webhooks_allowed())
            .map_err(|message| Rejection::invalid("url", message))?;
        let secret = crate::webhook::new_secret();
        let now = Clock::System.now().to_string();
        let mut store = self.inner.reader.lock().expect("store lock poisoned");
        store.set_webhook(provider.as_str(), url, &secret, &now)?;
        drop(store);
        self.inner
            .webhooks
            .write()
            .expect("webhook lock")
            .insert(provider.to_string());
        Ok(secret)
    }
}
