//! `/metrics` in the Prometheus text format, encoded by `prometheus-client` from the
//! broker's counters and the needs it holds.

use std::sync::atomic::Ordering;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::broker::Broker;

pub fn render(broker: &Broker) -> String {
    let mut registry = Registry::with_prefix("rofr");
    let counters = broker.counters();
    let counter = |value: u64| {
        let c: Counter = Counter::default();
        c.inc_by(value);
        c
    };
    registry.register(
        "commands_accepted",
        "Commands the engine accepted",
        counter(counters.commands_accepted.load(Ordering::Relaxed)),
    );
    registry.register(
        "commands_rejected",
        "Commands the engine refused",
        counter(counters.commands_rejected.load(Ordering::Relaxed)),
    );
    registry.register(
        "idempotent_replays",
        "Retries answered from a stored Idempotency-Key",
        counter(counters.idempotent_replays.load(Ordering::Relaxed)),
    );
    registry.register(
        "events_appended",
        "Events committed to the log",
        counter(counters.events_appended.load(Ordering::Relaxed)),
    );
    registry.register(
        "events_caught_up",
        "Events other replicas appended, folded into this one",
        counter(counters.events_caught_up.load(Ordering::Relaxed)),
    );
    registry.register(
        "commits",
        "Group commits written",
        counter(counters.commits.load(Ordering::Relaxed)),
    );
    let needs = Family::<Vec<(String, String)>, Gauge>::default();
    let by_status = broker.read(|engine| engine.state().figures().by_status);
    for (status, count) in by_status {
        needs
            .get_or_create(&vec![("status".to_owned(), status.as_str().to_owned())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register("needs", "Needs by status", needs);
    let w = broker.witnessing();
    let gauge = |value: u64| {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        g
    };
    registry.register("ledger_entries", "Entries in the ledger", gauge(w.log_size));
    registry.register(
        "ledger_checkpoint_size",
        "Entries under the latest signed checkpoint",
        gauge(w.checkpoint_size),
    );
    registry.register(
        "ledger_witnessed_size",
        "Entries under the latest checkpoint every required witness cosigned",
        gauge(w.witnessed_size),
    );
    registry.register(
        "ledger_witness_lag_entries",
        "Entries not yet under a witnessed checkpoint (0 where no witness is required)",
        gauge(w.lag_entries),
    );
    let lag: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    lag.set(w.lag_seconds);
    registry.register(
        "ledger_witness_lag_seconds",
        "Seconds since the oldest checkpoint not yet witnessed was signed",
        lag,
    );
    let cosigned = Family::<Vec<(String, String)>, Gauge>::default();
    for status in &w.witnesses {
        cosigned
            .get_or_create(&vec![("witness".to_owned(), status.name.clone())])
            .set(
                status
                    .cosigned_size
                    .map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX)),
            );
    }
    registry.register(
        "witness_cosigned_size",
        "The largest checkpoint each witness the deal names has cosigned (-1: none yet)",
        cosigned,
    );
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}
