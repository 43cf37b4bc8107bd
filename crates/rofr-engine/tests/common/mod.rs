//! Helpers shared by the engine's test binaries: a small deal built from parts, needs
//! with sensible defaults, and a compact one-line description of each event.

#![allow(dead_code)]

use std::sync::Arc;

use rofr_engine::deal::{parse_deal, Deal};
use rofr_engine::event::DeclineReason;
use rofr_engine::need::NeedSpec;
use rofr_engine::types::{Gpus, NeedId, Price, ProviderId, Sku, Timestamp, Workload};
use rofr_engine::{Command, Event, EventKind};

/// Monday 3 February 2025, midnight UTC: every test starts here.
pub fn start() -> Timestamp {
    Timestamp::parse("2025-02-03T00:00:00Z").unwrap()
}

pub fn hours(n: i64) -> Timestamp {
    start().plus_seconds(n * 3600)
}

/// A deal with a holder and two alternates, a first-refusal clause of the given
/// variant, and any extra clauses appended as TOML.
pub fn deal(variant: &str, partial: bool, extra: &str) -> Arc<Deal> {
    let text = format!(
        r#"
[deal]
name = "test"

[sourcing]
quote_window = "24h"
confirm_window = "48h"
retry_after = "24h"

[[provider]]
id = "holder"

[[provider]]
id = "alpha"

[[provider]]
id = "beta"

[[first_refusal]]
holder = "holder"
variant = "{variant}"
window = "72h"
partial = {partial}
reoffer_threshold = 0.05
third_party_window = "10d"
term = {{ from = 2025-01-01 }}
offer_prices = {{ H100 = 6.0 }}

[first_refusal.scope]
workloads = ["training"]
{extra}
"#
    );
    Arc::new(parse_deal("test.toml", &text).unwrap_or_else(|e| panic!("{e:?}")))
}

pub fn need(id: &str, gpus: u32) -> NeedSpec {
    NeedSpec {
        id: NeedId::parse(id).unwrap(),
        sku: Sku::parse("H100").unwrap(),
        gpus: Gpus(gpus),
        regions: Default::default(),
        earliest_start: hours(24 * 7),
        latest_start: hours(24 * 60),
        hours: 100,
        workload: Workload::parse("training").unwrap(),
        tags: Default::default(),
        max_price_per_gpu_hour: price(8.0),
        offer_price_per_gpu_hour: None,
        priority: 0,
        launch: None,
        decide_by: hours(24 * 60),
    }
}

pub fn price(dollars: f64) -> Price {
    Price::from_dollars(dollars).unwrap()
}

pub fn provider(id: &str) -> ProviderId {
    ProviderId::parse(id).unwrap()
}

pub fn need_id(id: &str) -> NeedId {
    NeedId::parse(id).unwrap()
}

/// One line per event: its type, then the figures that tell the story.
pub fn describe(event: &Event) -> String {
    let at = (event.at.unix_seconds() - start().unix_seconds()) / 3600;
    let body = match &event.kind {
        EventKind::NeedSubmitted(submitted) => {
            let holder = &submitted.holder;
            format!("holder={}", holder.as_ref().map_or("-", |h| h.as_str()))
        }
        EventKind::TermsChanged {
            version, holder, ..
        } => format!(
            "v{version} holder={}",
            holder.as_ref().map_or("-", |h| h.as_str())
        ),
        EventKind::OfferWithdrawn { provider, gpus, .. } => format!("{provider} {gpus}"),
        EventKind::OfferSent {
            provider,
            gpus,
            price_per_gpu_hour,
            reoffer,
            ..
        } => format!(
            "{provider} {gpus} @{}{}",
            price_per_gpu_hour.dollars(),
            if *reoffer { " reoffer" } else { "" }
        ),
        EventKind::OfferAccepted {
            provider,
            gpus,
            price_per_gpu_hour,
            ..
        }
        | EventKind::QuoteReceived {
            provider,
            gpus,
            price_per_gpu_hour,
            ..
        }
        | EventKind::MatchOffered {
            provider,
            gpus,
            price_per_gpu_hour,
            ..
        }
        | EventKind::MatchAccepted {
            provider,
            gpus,
            price_per_gpu_hour,
            ..
        }
        | EventKind::ApprovalRequested {
            provider,
            gpus,
            price_per_gpu_hour,
            ..
        }
        | EventKind::AwardMade {
            provider,
            gpus,
            price_per_gpu_hour,
            ..
        } => format!("{provider} {gpus} @{}", price_per_gpu_hour.dollars()),
        EventKind::OfferDeclined {
            provider,
            gpus,
            reason,
            ..
        } => format!("{provider} {gpus} {}", reason.as_str()),
        EventKind::OfferLapsed { provider, gpus, .. }
        | EventKind::MatchDeclined { provider, gpus, .. }
        | EventKind::MatchLapsed { provider, gpus, .. }
        | EventKind::HolderCapped { provider, gpus, .. }
        | EventKind::RfqSent { provider, gpus, .. }
        | EventKind::RightRevived { provider, gpus }
        | EventKind::AwardFailed { provider, gpus, .. } => format!("{provider} {gpus}"),
        EventKind::RfqDeclined { provider, .. }
        | EventKind::AwardConfirmed { provider, .. }
        | EventKind::ApprovalRejected { provider, .. } => provider.to_string(),
        EventKind::SourcingClosed { planned_gpus, .. } => format!("planned={planned_gpus}"),
        EventKind::NeedWaiting { gpus, .. } | EventKind::NeedExpired { gpus } => gpus.to_string(),
        EventKind::NeedFulfilled { .. }
        | EventKind::NeedCompleted {}
        | EventKind::NeedCancelled { .. } => String::new(),
    };
    format!("+{at}h {} {body}", event.kind.type_name())
        .trim_end()
        .to_owned()
}

pub fn quote(who: &str, need: &str, gpus: u32, dollars: f64) -> Command {
    Command::Quote {
        provider: provider(who),
        need: need_id(need),
        gpus: Gpus(gpus),
        price: price(dollars),
    }
}

pub fn decline_because(who: &str, need: &str, reason: DeclineReason) -> Command {
    Command::Decline {
        provider: provider(who),
        need: need_id(need),
        offer: None,
        reason,
    }
}

pub fn confirm(who: &str, need: &str, award: u32) -> Command {
    Command::Confirm {
        provider: provider(who),
        need: need_id(need),
        award,
        reservation: format!("{who}-{need}-{award}"),
    }
}

pub fn fail(who: &str, need: &str, award: u32) -> Command {
    Command::Fail {
        provider: provider(who),
        need: need_id(need),
        award,
        reason: "hardware fault".into(),
    }
}
