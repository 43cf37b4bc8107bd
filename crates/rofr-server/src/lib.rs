//! The broker service: the engine behind a durable, group-committing command loop, and
//! an HTTP API for buyers, providers and auditors.
//!
//! Only this crate knows HTTP and the JSON shapes of the API; it never decides a rule
//! itself (the engine does) and never writes SQL (the store does).
//!
//! What it offers:
//!
//! - [`Broker`]: open a database with a deal, execute commands as a [`Party`], read the
//!   engine's state once it is on disk, evidence, tokens and webhooks.
//! - [`serve`]: the HTTP API (and its OpenAPI document) and webhook deliveries.
//! - [`ledger`]: the signing key's place, checkpoint policy and the offline audit.
//! - [`views`]: what each party may see of the state.
//! - [`webhook`]: how a receiver checks a delivery's signature.
//! - [`Clock`]: wall-clock or scaled model time.

mod api;
pub mod broker;
mod clock;
mod dashboard;
mod input;
pub mod ledger;
mod metrics;
mod openapi;
pub mod views;
pub mod webhook;
pub mod witness;

pub use broker::{Broker, BrokerError, FaultHook, Party};
pub use clock::Clock;

/// Serves the API on `listener`, posts webhook deliveries and gathers witnesses'
/// cosignatures, until the future
/// `shutdown` completes.
pub async fn serve(
    broker: Broker,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let deliveries = tokio::spawn(webhook::deliver(
        broker.location().clone(),
        broker.private_webhooks_allowed(),
        stopped,
    ));
    let cosignatures = tokio::spawn(broker.clone().gather_cosignatures(stop.subscribe()));
    let served = axum::serve(listener, api::router(broker))
        .with_graceful_shutdown(shutdown)
        .await;
    let _ = stop.send(true);
    let _ = deliveries.await;
    let _ = cosignatures.await;
    served
}
