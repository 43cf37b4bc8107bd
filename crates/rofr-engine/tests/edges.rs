//! Commands at the edges of every field's type: counts at zero, at rofr's limits, one
//! past them and at the type's largest; times at the ends of the calendar; prices at
//! zero and at their largest; text at its longest and with control characters. After
//! every command, each event it wrote reads back from its JSON bytes as itself and
//! writes the same bytes again, and the log read back folds into the engine's state
//! (what a restart does). Refused commands change nothing.

mod common;

use common::*;
use proptest::prelude::*;
use rofr_engine::event::DeclineReason;
use rofr_engine::need::{
    NeedSpec, FIRST_DATE, LAST_DATE, MAX_DECISION_DAYS, MAX_GPUS, MAX_HOURS, MAX_TEXT_CHARS,
};
use rofr_engine::state::State;
use rofr_engine::types::{Gpus, NeedId, Price, ProviderId, Timestamp};
use rofr_engine::{Command, Engine, Event};

/// A time relative to the engine's clock, or one of the calendar's edges.
#[derive(Debug, Clone, Copy)]
enum When {
    AfterClock(i64),
    Fixed(Timestamp),
}

impl When {
    fn at(self, clock: Timestamp) -> Timestamp {
        match self {
            When::AfterClock(seconds) => clock.plus_seconds(seconds),
            When::Fixed(at) => at,
        }
    }
}

fn when() -> impl Strategy<Value = When> {
    prop_oneof![
        3 => prop::sample::select(vec![-1i64, 0, 1, 3_600, 86_400, 30 * 86_400, 400 * 86_400])
            .prop_map(When::AfterClock),
        2 => prop::sample::select(vec![
            Timestamp::MIN,
            Timestamp::MAX,
            FIRST_DATE,
            FIRST_DATE.plus_seconds(-1),
            LAST_DATE,
            LAST_DATE.plus_seconds(1),
            LAST_DATE.plus_seconds(-(i64::from(MAX_HOURS) * 3_600)),
        ])
        .prop_map(When::Fixed),
    ]
}

fn count() -> impl Strategy<Value = u32> {
    prop_oneof![
        prop::sample::select(vec![
            0,
            1,
            2,
            7,
            64,
            MAX_GPUS - 1,
            MAX_GPUS,
            MAX_GPUS + 1,
            u32::MAX
        ]),
        any::<u32>(),
    ]
}

fn hours_field() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![
        0,
        1,
        72,
        MAX_HOURS,
        MAX_HOURS + 1,
        u32::MAX - 1,
        u32::MAX,
    ])
}

fn price() -> impl Strategy<Value = Price> {
    prop::sample::select(vec![0u64, 1, 60_000, 80_000, u64::MAX])
        .prop_map(Price::from_ten_thousandths)
}

fn text() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        String::new(),
        "no capacity in the window".to_owned(),
        "é".repeat(MAX_TEXT_CHARS),
        "x".repeat(MAX_TEXT_CHARS + 1),
        "line\nbreak".to_owned(),
        "nul\u{0}byte".to_owned(),
        "\u{202e}right-to-left".to_owned(),
    ])
}

fn provider() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["holder", "alpha", "beta"])
}

#[derive(Debug, Clone)]
struct Spec {
    gpus: u32,
    hours: u32,
    earliest: When,
    latest: When,
    decide_by: When,
    max_price: Price,
    offer_price: Option<Price>,
    launch: Option<String>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        count(),
        hours_field(),
        when(),
        when(),
        when(),
        price(),
        prop::option::of(price()),
        prop::option::of(text()),
    )
        .prop_map(
            |(gpus, hours, earliest, latest, decide_by, max_price, offer_price, launch)| Spec {
                gpus,
                hours,
                earliest,
                latest,
                decide_by,
                max_price,
                offer_price,
                launch,
            },
        )
}

/// One command, the need it names given as a place among those submitted so far.
#[derive(Debug, Clone)]
enum Op {
    Submit(Box<Spec>),
    Tick(When),
    Accept(usize, Option<u32>, Option<Price>),
    Decline(usize, Option<u32>),
    Quote(&'static str, usize, u32, Price),
    Match(usize, Option<u32>),
    Approve(usize, u32),
    Reject(usize, u32, String),
    Confirm(&'static str, usize, u32, String),
    Fail(&'static str, usize, u32, String),
    Cancel(usize, String),
}

fn award() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0, 1, 2, u32::MAX])
}

fn op() -> impl Strategy<Value = Op> {
    let place = 0usize..8;
    prop_oneof![
        4 => spec().prop_map(|s| Op::Submit(Box::new(s))),
        3 => when().prop_map(Op::Tick),
        3 => (place.clone(), prop::option::of(count()), prop::option::of(price()))
            .prop_map(|(n, g, p)| Op::Accept(n, g, p)),
        2 => (place.clone(), prop::option::of(prop::sample::select(vec![0u32, 1, u32::MAX])))
            .prop_map(|(n, o)| Op::Decline(n, o)),
        3 => (provider(), place.clone(), count(), price()).prop_map(|(p, n, g, c)| Op::Quote(p, n, g, c)),
        1 => (place.clone(), prop::option::of(count())).prop_map(|(n, g)| Op::Match(n, g)),
        1 => (place.clone(), award()).prop_map(|(n, a)| Op::Approve(n, a)),
        1 => (place.clone(), award(), text()).prop_map(|(n, a, t)| Op::Reject(n, a, t)),
        3 => (provider(), place.clone(), award(), text()).prop_map(|(p, n, a, t)| Op::Confirm(p, n, a, t)),
        1 => (provider(), place.clone(), award(), text()).prop_map(|(p, n, a, t)| Op::Fail(p, n, a, t)),
        1 => (place, text()).prop_map(|(n, t)| Op::Cancel(n, t)),
    ]
}

fn id(needs: &[NeedId], place: usize) -> NeedId {
    needs
        .get(place % needs.len().max(1))
        .cloned()
        .unwrap_or_else(|| NeedId::parse("never-submitted").unwrap())
}

fn who(name: &str) -> ProviderId {
    ProviderId::parse(name).unwrap()
}

fn command(op: &Op, clock: Timestamp, needs: &[NeedId], submitted: usize) -> Command {
    match op.clone() {
        Op::Submit(s) => {
            let mut spec: NeedSpec = need(&format!("edge-{submitted}"), 1);
            spec.gpus = Gpus(s.gpus);
            spec.hours = s.hours;
            spec.earliest_start = s.earliest.at(clock);
            spec.latest_start = s.latest.at(clock);
            spec.decide_by = s.decide_by.at(clock);
            spec.max_price_per_gpu_hour = s.max_price;
            spec.offer_price_per_gpu_hour = s.offer_price;
            spec.launch = s.launch;
            Command::SubmitNeed { need: spec }
        }
        Op::Tick(at) => Command::Tick {
            now: at.at(clock).max(clock),
        },
        Op::Accept(n, gpus, price) => Command::Accept {
            provider: who("holder"),
            need: id(needs, n),
            offer: None,
            gpus: gpus.map(Gpus),
            price,
        },
        Op::Decline(n, offer) => Command::Decline {
            provider: who("holder"),
            need: id(needs, n),
            offer,
            reason: DeclineReason::Price,
        },
        Op::Quote(p, n, gpus, price) => Command::Quote {
            provider: who(p),
            need: id(needs, n),
            gpus: Gpus(gpus),
            price,
        },
        Op::Match(n, gpus) => Command::Match {
            provider: who("holder"),
            need: id(needs, n),
            offer: None,
            gpus: gpus.map(Gpus),
        },
        Op::Approve(n, award) => Command::Approve {
            need: id(needs, n),
            award,
        },
        Op::Reject(n, award, reason) => Command::Reject {
            need: id(needs, n),
            award,
            reason,
        },
        Op::Confirm(p, n, award, reservation) => Command::Confirm {
            provider: who(p),
            need: id(needs, n),
            award,
            reservation,
        },
        Op::Fail(p, n, award, reason) => Command::Fail {
            provider: who(p),
            need: id(needs, n),
            award,
            reason,
        },
        Op::Cancel(n, reason) => Command::CancelNeed {
            need: id(needs, n),
            reason,
        },
    }
}

/// The event as the log's parser reads it back, which must be the event itself and
/// write the same bytes.
fn read_back(event: &Event) -> Result<Event, TestCaseError> {
    let bytes = event.to_json();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let parsed = Event::from_json(&bytes)
        .map_err(|e| TestCaseError::fail(format!("{text} does not read back: {e}")))?;
    prop_assert_eq!(&parsed, event, "{}", text);
    prop_assert_eq!(parsed.to_json(), bytes, "{}", text);
    Ok(parsed)
}

fn run(variant: &str, approval: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let extra = if approval {
        "[[approval]]\nnon_holder = true\n"
    } else {
        ""
    };
    let mut engine = Engine::new(deal(variant, true, extra), start());
    let mut needs: Vec<NeedId> = Vec::new();
    let mut log: Vec<Event> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let command = command(op, engine.clock(), &needs, step);
        let before = engine.state().clone();
        match engine.execute(command.clone()) {
            Ok(events) => {
                if let Command::SubmitNeed { need } = &command {
                    prop_assert!(need.gpus.get() <= MAX_GPUS && need.hours <= MAX_HOURS);
                    prop_assert!(
                        need.decide_by <= LAST_DATE && need.decide_by <= need.latest_start
                    );
                    prop_assert!(
                        need.decide_by <= engine.clock().plus_seconds(MAX_DECISION_DAYS * 86_400)
                    );
                    needs.push(need.id.clone());
                }
                for event in &events {
                    log.push(read_back(event)?);
                }
            }
            Err(rejection) => {
                prop_assert_eq!(
                    &before,
                    engine.state(),
                    "{:?} was refused ({}) but changed the state",
                    command,
                    rejection
                );
            }
        }
    }
    prop_assert_eq!(
        &State::from_events(&log),
        engine.state(),
        "the log read back folds into another state"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, ..ProptestConfig::default() })]

    #[test]
    fn every_event_at_the_edges_reads_back_and_replays_to_the_same_state(
        variant in prop::sample::select(vec!["first_offer", "last_look", "negotiate"]),
        approval in any::<bool>(),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(variant, approval, &ops)?;
    }
}

/// The two inputs that once made a log unreadable or stopped the writer, as fixed
/// cases: a need lasting nearly 2^32 hours, and one whose end falls after 9999.
#[test]
fn needs_that_would_end_beyond_the_calendar_are_refused() {
    let mut engine = Engine::new(deal("first_offer", true, ""), start());
    let mut long = need("long", 8);
    long.hours = u32::MAX - 1;
    let refused = engine
        .execute(Command::SubmitNeed { need: long })
        .unwrap_err();
    assert_eq!(refused.field, Some("hours"));

    let mut late = need("late", 8);
    late.latest_start = Timestamp::parse("9999-12-01T00:00:00Z").unwrap();
    late.decide_by = late.latest_start;
    late.hours = 24 * 60;
    let refused = engine
        .execute(Command::SubmitNeed { need: late })
        .unwrap_err();
    assert_eq!(refused.field, Some("latest_start"));

    // A decision centuries ahead would have the need sourced again each day until
    // then: refused.
    let mut distant = need("distant", 8);
    distant.latest_start = LAST_DATE;
    distant.decide_by = LAST_DATE;
    let refused = engine
        .execute(Command::SubmitNeed { need: distant })
        .unwrap_err();
    assert_eq!(refused.field, Some("decide_by"));

    // At the limits themselves the need is taken, and its events read back.
    let horizon = engine.clock().plus_seconds(MAX_DECISION_DAYS * 86_400);
    let mut edge = need("edge", MAX_GPUS);
    edge.hours = MAX_HOURS;
    edge.latest_start = LAST_DATE;
    edge.decide_by = horizon;
    let mut events = engine.execute(Command::SubmitNeed { need: edge }).unwrap();
    // Left unanswered to the end of the calendar, it is sourced round after round
    // until its decision and then expires: a bounded story, however far the clock
    // jumps.
    events.extend(engine.execute(Command::Tick { now: LAST_DATE }).unwrap());
    for event in &events {
        assert_eq!(&Event::from_json(&event.to_json()).unwrap(), event);
    }
    let rounds = (MAX_DECISION_DAYS + 1) as usize;
    assert!(
        events.len() < 8 * rounds,
        "{} events for one need",
        events.len()
    );
    assert!(engine.state().need("edge").unwrap().closed.is_some());
}

/// Inputs the engine once wrote to the signed log: each is refused naming its field,
/// and nothing changes.
#[test]
fn out_of_bounds_input_is_refused_naming_the_field() {
    let text = r#"
[deal]
name = "strict"

[[provider]]
id = "holder"
skus = ["H100"]
regions = ["us-east"]

[[provider]]
id = "alpha"
skus = ["H100", "GB200"]
regions = ["us-west"]

[[first_refusal]]
holder = "holder"
variant = "first_offer"
window = "72h"
term = { from = 2025-01-01 }
offer_prices = { H100 = 6.0 }
"#;
    let deal = std::sync::Arc::new(rofr_engine::deal::parse_deal("strict.toml", text).unwrap());
    let mut engine = Engine::new(deal, start());
    engine
        .execute(Command::SubmitNeed {
            need: need("n1", 8),
        })
        .unwrap();
    let mut cases: Vec<(Command, &str)> = Vec::new();
    let mut spec = need("n2", 8);
    spec.sku = rofr_engine::types::Sku::parse("MI300X").unwrap();
    cases.push((Command::SubmitNeed { need: spec }, "sku"));
    let mut spec = need("n2", 8);
    spec.sku = rofr_engine::types::Sku::parse("GB200").unwrap();
    spec.regions = [rofr_engine::types::Region::parse("us-east").unwrap()].into();
    cases.push((Command::SubmitNeed { need: spec }, "regions"));
    cases.push((
        Command::SubmitNeed {
            need: need("n2", 4_000_000_000),
        },
        "gpus",
    ));
    let mut spec = need("n2", 8);
    spec.decide_by = spec.latest_start.plus_seconds(1);
    cases.push((Command::SubmitNeed { need: spec }, "decide_by"));
    let reason = format!("{}\u{7}", "x".repeat(60_000));
    cases.push((
        Command::CancelNeed {
            need: NeedId::parse("n1").unwrap(),
            reason: reason.clone(),
        },
        "reason",
    ));
    cases.push((
        Command::CancelNeed {
            need: NeedId::parse("n1").unwrap(),
            reason: "stop\u{0}".into(),
        },
        "reason",
    ));
    for (command, field) in cases {
        let before = engine.state().clone();
        let refused = engine.execute(command.clone()).unwrap_err();
        assert_eq!(refused.field, Some(field), "{command:?}: {refused}");
        assert_eq!(&before, engine.state(), "{command:?} changed the state");
    }
}

/// A provider learns nothing about a need that is not its business: it gets the
/// answer a missing need gets, word for word but the id.
#[test]
fn a_provider_gets_one_answer_for_a_missing_need_and_anothers() {
    let mut engine = Engine::new(deal("first_offer", true, ""), start());
    engine
        .execute(Command::SubmitNeed {
            need: need("n1", 8),
        })
        .unwrap();
    let alpha = ProviderId::parse("alpha").unwrap();
    let ask = |need: &str| -> Vec<Command> {
        let need = NeedId::parse(need).unwrap();
        let provider = alpha.clone();
        vec![
            Command::Accept {
                provider: provider.clone(),
                need: need.clone(),
                offer: None,
                gpus: None,
                price: None,
            },
            Command::Decline {
                provider: provider.clone(),
                need: need.clone(),
                offer: None,
                reason: DeclineReason::Price,
            },
            Command::Match {
                provider: provider.clone(),
                need: need.clone(),
                offer: None,
                gpus: None,
            },
            Command::Quote {
                provider: provider.clone(),
                need: need.clone(),
                gpus: Gpus(8),
                price: Price::from_dollars(5.0).unwrap(),
            },
            Command::Confirm {
                provider: provider.clone(),
                need: need.clone(),
                award: 1,
                reservation: "r".into(),
            },
            Command::Fail {
                provider,
                need,
                award: 1,
                reason: "x".into(),
            },
        ]
    };
    for (theirs, missing) in ask("n1").into_iter().zip(ask("zz")) {
        let theirs = engine.execute(theirs.clone()).unwrap_err();
        let missing = engine.execute(missing).unwrap_err();
        assert_eq!(theirs.code, missing.code);
        assert_eq!(theirs.message.replace("n1", "zz"), missing.message);
    }
}
