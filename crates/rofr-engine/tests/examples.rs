//! The example deals in `examples/deals/` driven through a short story each; the exact
//! event bytes are locked by snapshots, so any change to what is recorded shows up in
//! review.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use rofr_engine::deal::parse_deal;
use rofr_engine::event::DeclineReason;
use rofr_engine::invariants::check_events;
use rofr_engine::types::{Gpus, Sku, Tag, Workload};
use rofr_engine::{Command, Deal, Engine, Event};

fn example(name: &str) -> Arc<Deal> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../examples/deals/{name}.toml"));
    let text = std::fs::read_to_string(&path).unwrap();
    Arc::new(parse_deal(&format!("{name}.toml"), &text).unwrap())
}

fn drive(deal: &Arc<Deal>, commands: Vec<Command>) -> String {
    let mut engine = Engine::new(deal.clone(), start());
    let mut log: Vec<Event> = Vec::new();
    for command in commands {
        let events = engine
            .execute(command.clone())
            .unwrap_or_else(|r| panic!("{command:?}: {r}"));
        log.extend(events);
    }
    check_events(deal, &log).unwrap();
    log.iter()
        .map(|e| String::from_utf8(e.to_json()).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn sized(
    id: &str,
    sku: &str,
    gpus: u32,
    workload: &str,
    hours: u32,
    max: f64,
) -> rofr_engine::need::NeedSpec {
    let mut spec = need(id, gpus);
    spec.sku = Sku::parse(sku).unwrap();
    spec.workload = Workload::parse(workload).unwrap();
    spec.hours = hours;
    spec.max_price_per_gpu_hour = price(max);
    spec
}

#[test]
fn stargate_story() {
    let deal = example("stargate");
    let mut windsurf = sized("windsurf-ft", "H100", 64, "training", 168, 8.0);
    windsurf.tags.insert(Tag::parse("windsurf").unwrap());
    let events = drive(
        &deal,
        vec![
            Command::SubmitNeed {
                need: sized("gpt-train", "H100", 1024, "training", 720, 8.0),
            },
            Command::Accept {
                provider: provider("azure"),
                need: need_id("gpt-train"),
                offer: None,
                gpus: Some(Gpus(512)),
                price: None,
            },
            quote("oracle", "gpt-train", 512, 5.9),
            quote("coreweave", "gpt-train", 256, 6.16),
            Command::SubmitNeed { need: windsurf },
            quote("oracle", "windsurf-ft", 64, 6.0),
            decline_because("coreweave", "windsurf-ft", DeclineReason::NoCapacity),
            confirm("azure", "gpt-train", 1),
            confirm("oracle", "gpt-train", 2),
            confirm("oracle", "windsurf-ft", 1),
            Command::SubmitNeed {
                need: sized("chat-serve", "GB200", 256, "inference", 336, 12.0),
            },
            Command::Tick { now: hours(72) },
            quote("softbank-stargate", "chat-serve", 256, 8.5),
            quote("oracle", "chat-serve", 128, 9.2),
            decline_because("coreweave", "chat-serve", DeclineReason::Price),
        ],
    );
    insta::assert_snapshot!("stargate_events", events);
}

#[test]
fn last_look_story() {
    let deal = example("last-look");
    let events = drive(
        &deal,
        vec![
            Command::SubmitNeed {
                need: sized("b200-train", "B200", 128, "training", 240, 9.0),
            },
            quote("aws", "b200-train", 128, 7.2),
            Command::Tick { now: hours(24) },
            decline_because("gcp", "b200-train", DeclineReason::Price),
        ],
    );
    insta::assert_snapshot!("last_look_events", events);
}

#[test]
fn negotiate_story() {
    let deal = example("negotiate");
    let events = drive(
        &deal,
        vec![
            Command::SubmitNeed {
                need: sized("pretrain", "H100", 256, "training", 720, 7.0),
            },
            Command::Accept {
                provider: provider("coreweave"),
                need: need_id("pretrain"),
                offer: None,
                gpus: Some(Gpus(192)),
                price: Some(price(5.75)),
            },
            quote("lambda", "pretrain", 64, 3.49),
            decline_because("aws", "pretrain", DeclineReason::NoCapacity),
        ],
    );
    insta::assert_snapshot!("negotiate_events", events);
}
