//! Random command sequences over random deals. After every sequence: I1–I3 hold at
//! every award, replaying the events rebuilds the identical state (I4), every lapse is
//! recorded at its deadline and time never runs backwards (I5), and every refused
//! command left the state untouched (I8).

mod common;

use std::sync::Arc;

use common::*;
use proptest::prelude::*;
use rofr_engine::deal::{parse_deal, Deal};
use rofr_engine::event::DeclineReason;
use rofr_engine::invariants::check_events;
use rofr_engine::state::State;
use rofr_engine::types::{Gpus, Tag, Workload};
use rofr_engine::{Command, Engine, Event, EventKind};

#[derive(Debug, Clone)]
struct DealShape {
    variant: &'static str,
    partial: bool,
    threshold: f64,
    window: &'static str,
    third_party_window: Option<&'static str>,
    cap: Option<(f64, bool, bool)>,
    restrict_holder: bool,
    restrict_alpha: bool,
    approval: Option<bool>,
}

fn deal_shape() -> impl Strategy<Value = DealShape> {
    (
        prop::sample::select(vec!["first_offer", "last_look", "negotiate"]),
        any::<bool>(),
        prop::sample::select(vec![0.0, 0.05, 0.2]),
        prop::sample::select(vec!["0h", "24h", "72h", "2 business days"]),
        prop::option::of(prop::sample::select(vec!["2d", "10d"])),
        prop::option::of((
            prop::sample::select(vec![0.4, 0.6, 0.9]),
            any::<bool>(),
            any::<bool>(),
        )),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(any::<bool>()),
    )
        .prop_map(
            |(variant, partial, threshold, window, tpw, cap, rh, ra, approval)| DealShape {
                variant,
                partial,
                threshold,
                window,
                third_party_window: tpw,
                cap,
                restrict_holder: rh,
                restrict_alpha: ra,
                approval,
            },
        )
}

fn build_deal(shape: &DealShape) -> Arc<Deal> {
    let text = deal_text(shape, Some("holder"));
    Arc::new(parse_deal("random.toml", &text).unwrap_or_else(|e| panic!("{e:?}\n{text}")))
}

/// The deal `shape` describes, its right held by `holder`, or with no right at all.
fn deal_text(shape: &DealShape, holder: Option<&str>) -> String {
    let mut text = format!(
        r#"
[deal]
name = "random"

[sourcing]
quote_window = "12h"
confirm_window = "24h"
retry_after = "24h"

[[provider]]
id = "holder"

[[provider]]
id = "alpha"

[[provider]]
id = "beta"

[[first_refusal]]
holder = "{}"
variant = "{}"
window = "{}"
partial = {}
reoffer_threshold = {}
term = {{ from = 2025-01-01 }}
offer_prices = {{ H100 = 6.0 }}
"#,
        holder.unwrap_or("holder"),
        shape.variant,
        shape.window,
        shape.partial,
        shape.threshold
    );
    if let Some(tpw) = shape.third_party_window {
        text.push_str(&format!("third_party_window = \"{tpw}\"\n"));
    }
    text.push_str("\n[first_refusal.scope]\nworkloads = [\"training\"]\n");
    if holder.is_none() {
        let clause = text.find("[[first_refusal]]").expect("the clause");
        let after = text.find("\n[first_refusal.scope]").expect("its scope");
        let scope_end = after + "\n[first_refusal.scope]\nworkloads = [\"training\"]\n".len();
        text.replace_range(clause..scope_end, "");
    }
    if let Some((share, binds_holder, windowed)) = shape.cap {
        text.push_str(&format!(
            "\n[[concentration_cap]]\nmax_share = {share}\nbinds_holder = {binds_holder}\nbase = {{ holder = 20000, alpha = 5000, beta = 5000 }}\n"
        ));
        if windowed {
            text.push_str("window = \"5d\"\n");
        }
    }
    let mut barred = Vec::new();
    if shape.restrict_holder {
        barred.push("\"holder\"");
    }
    if shape.restrict_alpha {
        barred.push("\"alpha\"");
    }
    if !barred.is_empty() {
        text.push_str(&format!(
            "\n[[placement_restriction]]\ntags = [\"secret\"]\nproviders = [{}]\n",
            barred.join(", ")
        ));
    }
    if let Some(non_holder) = shape.approval {
        text.push_str(&format!(
            "\n[[approval]]\nnon_holder = {non_holder}\nmin_value = 20000\n"
        ));
    }
    text
}

#[derive(Debug, Clone)]
enum Op {
    Submit {
        need: u8,
        gpus: u32,
        tagged: bool,
        inference: bool,
        decide_h: i64,
        max: f64,
    },
    Accept {
        who: u8,
        need: u8,
        offer: Option<u32>,
        gpus: Option<u32>,
        price: Option<f64>,
    },
    Decline {
        who: u8,
        need: u8,
        offer: Option<u32>,
        reason: u8,
    },
    Quote {
        who: u8,
        need: u8,
        gpus: u32,
        price: f64,
    },
    Match {
        need: u8,
        offer: Option<u32>,
        gpus: Option<u32>,
    },
    Approve {
        need: u8,
        award: u32,
    },
    Reject {
        need: u8,
        award: u32,
    },
    Confirm {
        who: u8,
        need: u8,
        award: u32,
    },
    Fail {
        who: u8,
        need: u8,
        award: u32,
    },
    Cancel {
        need: u8,
    },
    Tick {
        hours: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let need = 0u8..5;
    let who = prop::sample::select(vec![0u8, 0, 1, 2]);
    let offer = prop::option::weighted(0.3, 1u32..4);
    let gpus = prop::option::weighted(0.4, 1u32..80);
    prop_oneof![
        3 => (need.clone(), 1u32..80, prop::bool::weighted(0.2), prop::bool::weighted(0.2), 1i64..400, 4.0f64..9.0)
            .prop_map(|(need, gpus, tagged, inference, decide_h, max)| Op::Submit { need, gpus, tagged, inference, decide_h, max }),
        3 => (who.clone(), need.clone(), offer.clone(), gpus.clone(), prop::option::weighted(0.2, 4.0f64..9.0))
            .prop_map(|(who, need, offer, gpus, price)| Op::Accept { who, need, offer, gpus, price }),
        3 => (who.clone(), need.clone(), offer.clone(), 0u8..6)
            .prop_map(|(who, need, offer, reason)| Op::Decline { who, need, offer, reason }),
        4 => (1u8..3, need.clone(), 0u32..80, 3.0f64..10.0)
            .prop_map(|(who, need, gpus, price)| Op::Quote { who, need, gpus, price }),
        2 => (need.clone(), offer, gpus).prop_map(|(need, offer, gpus)| Op::Match { need, offer, gpus }),
        1 => (need.clone(), 1u32..4).prop_map(|(need, award)| Op::Approve { need, award }),
        1 => (need.clone(), 1u32..4).prop_map(|(need, award)| Op::Reject { need, award }),
        2 => (who.clone(), need.clone(), 1u32..4).prop_map(|(who, need, award)| Op::Confirm { who, need, award }),
        1 => (who, need.clone(), 1u32..4).prop_map(|(who, need, award)| Op::Fail { who, need, award }),
        1 => need.prop_map(|need| Op::Cancel { need }),
        3 => prop_oneof![0i64..6, 6i64..100, 100i64..600].prop_map(|hours| Op::Tick { hours }),
    ]
}

const WHO: [&str; 3] = ["holder", "alpha", "beta"];
const REASONS: [DeclineReason; 6] = [
    DeclineReason::NoCapacity,
    DeclineReason::Price,
    DeclineReason::Timing,
    DeclineReason::Other,
    DeclineReason::Partial,
    DeclineReason::DeliveryFailed,
];

/// Most answers aim at something open right now, so sequences go deep; the rest are
/// blind (random need, provider and number) and mostly test refusals.
fn aimed(op: &Op, engine: &Engine, aim: usize) -> Option<Command> {
    use rofr_engine::state::{AwardStatus, OfferKind, OfferStatus, RfqStatus};
    let state = engine.state();
    let offers = |kinds: &[OfferKind]| -> Vec<(
        rofr_engine::types::NeedId,
        u32,
        rofr_engine::types::ProviderId,
        u32,
    )> {
        let mut offers = Vec::new();
        for n in state.needs().filter(|n| n.closed.is_none()) {
            offers.extend(
                n.offers
                    .iter()
                    .filter(|o| o.status == OfferStatus::Open && kinds.contains(&o.kind))
                    .map(|o| (n.spec.id.clone(), o.seq, o.provider.clone(), o.gpus.get())),
            );
        }
        offers
    };
    let mut rfqs = Vec::new();
    for n in state
        .needs()
        .filter(|n| n.sourcing_open && n.closed.is_none())
    {
        rfqs.extend(
            n.rfqs
                .iter()
                .filter(|r| r.status == RfqStatus::Open)
                .map(|r| (n.spec.id.clone(), r.provider.clone(), r.gpus.get())),
        );
    }
    let awards = |statuses: &[AwardStatus]| -> Vec<(
        rofr_engine::types::NeedId,
        u32,
        rofr_engine::types::ProviderId,
    )> {
        let mut awards = Vec::new();
        for n in state.needs().filter(|n| n.closed.is_none()) {
            awards.extend(
                n.awards
                    .iter()
                    .filter(|a| statuses.contains(&a.status))
                    .map(|a| (n.spec.id.clone(), a.seq, a.provider.clone())),
            );
        }
        awards
    };
    fn pick<T: Clone>(list: &[T], aim: usize) -> Option<T> {
        (!list.is_empty()).then(|| list[aim % list.len()].clone())
    }
    let part = |gpus: &Option<u32>, most: u32| gpus.map(|g| Gpus(1 + g % most));
    Some(match op {
        Op::Accept { gpus, .. } => {
            let (need, seq, provider, most) =
                pick(&offers(&[OfferKind::First, OfferKind::Reoffer]), aim)?;
            Command::Accept {
                provider,
                need,
                offer: Some(seq),
                gpus: part(gpus, most),
                price: None,
            }
        }
        Op::Decline { reason, .. } => {
            let reason = REASONS[*reason as usize % 4];
            if aim % 2 == 0 {
                let (need, seq, provider, _) = pick(
                    &offers(&[OfferKind::First, OfferKind::Reoffer, OfferKind::Match]),
                    aim / 2,
                )?;
                Command::Decline {
                    provider,
                    need,
                    offer: Some(seq),
                    reason,
                }
            } else {
                let (need, provider, _) = pick(&rfqs, aim / 2)?;
                Command::Decline {
                    provider,
                    need,
                    offer: None,
                    reason,
                }
            }
        }
        Op::Quote { gpus, price: p, .. } => {
            let (need, provider, most) = pick(&rfqs, aim)?;
            Command::Quote {
                provider,
                need,
                gpus: Gpus(1 + gpus % most),
                price: price((p * 100.0).round() / 100.0),
            }
        }
        Op::Match { gpus, .. } => {
            let (need, seq, provider, most) = pick(&offers(&[OfferKind::Match]), aim)?;
            Command::Match {
                provider,
                need,
                offer: Some(seq),
                gpus: part(gpus, most),
            }
        }
        Op::Approve { .. } | Op::Reject { .. } => {
            let (need, award, _) = pick(&awards(&[AwardStatus::PendingApproval]), aim)?;
            if matches!(op, Op::Approve { .. }) {
                Command::Approve { need, award }
            } else {
                Command::Reject {
                    need,
                    award,
                    reason: "no".into(),
                }
            }
        }
        Op::Confirm { .. } => {
            let (need, award, provider) = pick(&awards(&[AwardStatus::Made]), aim)?;
            Command::Confirm {
                provider,
                need,
                award,
                reservation: "r-1".into(),
            }
        }
        Op::Fail { .. } => {
            let (need, award, provider) =
                pick(&awards(&[AwardStatus::Made, AwardStatus::Confirmed]), aim)?;
            Command::Fail {
                provider,
                need,
                award,
                reason: "fault".into(),
            }
        }
        _ => return None,
    })
}

fn to_command(op: &Op, clock: rofr_engine::types::Timestamp) -> Command {
    let id = |n: &u8| need_id(&format!("n{n}"));
    match op {
        Op::Submit {
            need: n,
            gpus,
            tagged,
            inference,
            decide_h,
            max,
        } => {
            let mut spec = need(&format!("n{n}"), *gpus);
            spec.earliest_start = clock;
            spec.latest_start = clock.plus_seconds(24 * 3600 * 30);
            spec.decide_by = clock.plus_seconds(decide_h * 3600);
            spec.max_price_per_gpu_hour = price((max * 100.0).round() / 100.0);
            if *tagged {
                spec.tags.insert(Tag::parse("secret").unwrap());
            }
            if *inference {
                spec.workload = Workload::parse("inference").unwrap();
            }
            Command::SubmitNeed { need: spec }
        }
        Op::Accept {
            who,
            need,
            offer,
            gpus,
            price: p,
        } => Command::Accept {
            provider: provider(WHO[*who as usize]),
            need: id(need),
            offer: *offer,
            gpus: gpus.map(Gpus),
            price: p.map(|p| price((p * 100.0).round() / 100.0)),
        },
        Op::Decline {
            who,
            need,
            offer,
            reason,
        } => Command::Decline {
            provider: provider(WHO[*who as usize]),
            need: id(need),
            offer: *offer,
            reason: REASONS[*reason as usize],
        },
        Op::Quote {
            who,
            need,
            gpus,
            price: p,
        } => Command::Quote {
            provider: provider(WHO[*who as usize]),
            need: id(need),
            gpus: Gpus(*gpus),
            price: price((p * 100.0).round() / 100.0),
        },
        Op::Match { need, offer, gpus } => Command::Match {
            provider: provider("holder"),
            need: id(need),
            offer: *offer,
            gpus: gpus.map(Gpus),
        },
        Op::Approve { need, award } => Command::Approve {
            need: id(need),
            award: *award,
        },
        Op::Reject { need, award } => Command::Reject {
            need: id(need),
            award: *award,
            reason: "no".into(),
        },
        Op::Confirm { who, need, award } => Command::Confirm {
            provider: provider(WHO[*who as usize]),
            need: id(need),
            award: *award,
            reservation: "r-1".into(),
        },
        Op::Fail { who, need, award } => Command::Fail {
            provider: provider(WHO[*who as usize]),
            need: id(need),
            award: *award,
            reason: "fault".into(),
        },
        Op::Cancel { need } => Command::CancelNeed {
            need: id(need),
            reason: "changed".into(),
        },
        Op::Tick { hours } => Command::Tick {
            now: clock.plus_seconds(hours * 3600),
        },
    }
}

/// Every lapse is recorded exactly at the deadline of what lapsed, and the log's times
/// never go backwards.
fn check_time(events: &[Event]) -> Result<(), String> {
    for pair in events.windows(2) {
        if pair[1].at < pair[0].at {
            return Err(format!("time went back: {:?} then {:?}", pair[0], pair[1]));
        }
    }
    for (i, event) in events.iter().enumerate() {
        let lapsed_offer = match &event.kind {
            EventKind::OfferLapsed { offer, .. } | EventKind::MatchLapsed { offer, .. } => *offer,
            _ => continue,
        };
        let deadline = events[..i].iter().find_map(|e| match &e.kind {
            EventKind::OfferSent {
                offer, deadline, ..
            }
            | EventKind::MatchOffered {
                offer, deadline, ..
            } if e.need == event.need && *offer == lapsed_offer => Some(*deadline),
            _ => None,
        });
        if deadline != Some(event.at) {
            return Err(format!("lapse {event:?} not at its deadline {deadline:?}"));
        }
    }
    Ok(())
}

/// Runs the operations, then lets every outstanding deadline fire. Fails if a refused
/// command changed the state, if replaying the log so far does not rebuild the
/// engine's state after any step, or if a twin engine that keeps every need unpacked
/// answers any command otherwise.
fn run_ops(
    deal: &Arc<Deal>,
    ops: &[(Op, Option<usize>)],
) -> Result<(Engine, Vec<Event>), TestCaseError> {
    let mut engine = Engine::new(deal.clone(), start());
    let mut twin = Engine::new(deal.clone(), start());
    twin.keep_unpacked();
    let mut log: Vec<Event> = Vec::new();
    drive(&mut engine, &mut twin, &mut log, ops)?;
    finish(&mut engine, &mut twin, &mut log)?;
    Ok((engine, log))
}

/// Runs the operations on the engine and its twin, adding what they emit to `log`.
fn drive(
    engine: &mut Engine,
    twin: &mut Engine,
    log: &mut Vec<Event>,
    ops: &[(Op, Option<usize>)],
) -> Result<(), TestCaseError> {
    for (op, aim) in ops {
        let command = aim
            .and_then(|aim| aimed(op, engine, aim))
            .unwrap_or_else(|| to_command(op, engine.clock()));
        let before = engine.state().clone();
        let answer = engine.execute(command.clone());
        prop_assert_eq!(
            &answer,
            &twin.execute(command),
            "packing needs changed an answer"
        );
        match answer {
            Ok(events) => log.extend(events),
            Err(_) => prop_assert_eq!(
                engine.state(),
                &before,
                "a refused command changed the state"
            ),
        }
        prop_assert_eq!(
            &State::from_events(log.iter()),
            engine.state(),
            "replay differs after a step"
        );
        // The twin's packed tally is empty: its figures are counted from every need.
        prop_assert_eq!(
            engine.state().figures(),
            twin.state().figures(),
            "the running figures differ from a count over every need"
        );
    }
    Ok(())
}

/// Lets every outstanding deadline fire, 400 days on.
fn finish(
    engine: &mut Engine,
    twin: &mut Engine,
    log: &mut Vec<Event>,
) -> Result<(), TestCaseError> {
    let later = engine.clock().plus_seconds(3600 * 24 * 400);
    let last = engine.execute(Command::Tick { now: later }).unwrap();
    prop_assert_eq!(
        &last,
        &twin.execute(Command::Tick { now: later }).unwrap(),
        "packing needs changed what deadlines did"
    );
    prop_assert_eq!(engine.state(), twin.state());
    prop_assert_eq!(engine.state().figures(), twin.state().figures());
    log.extend(last);
    Ok(())
}

/// Guards the property test against testing little: the generator must reach every
/// kind of event within a few hundred sequences.
#[test]
fn random_sequences_reach_every_kind_of_event() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..400 {
        let shape = deal_shape().new_tree(&mut runner).unwrap().current();
        let ops = prop::collection::vec((op(), prop::option::weighted(0.8, any::<usize>())), 1..70)
            .new_tree(&mut runner)
            .unwrap()
            .current();
        let (_, log) = run_ops(&build_deal(&shape), &ops).unwrap();
        seen.extend(log.iter().map(|e| e.kind.type_name()));
    }
    let all = [
        "need_submitted",
        "offer_sent",
        "offer_accepted",
        "offer_declined",
        "offer_lapsed",
        "holder_capped",
        "rfq_sent",
        "rfq_declined",
        "quote_received",
        "sourcing_closed",
        "match_offered",
        "match_accepted",
        "match_declined",
        "match_lapsed",
        "approval_requested",
        "approval_rejected",
        "award_made",
        "award_confirmed",
        "award_failed",
        "right_revived",
        "need_waiting",
        "need_fulfilled",
        "need_completed",
        "need_expired",
        "need_cancelled",
    ];
    let missing: Vec<&str> = all.iter().copied().filter(|t| !seen.contains(t)).collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_invariant_holds_after_every_random_command_sequence(
        shape in deal_shape(),
        ops in prop::collection::vec((op(), prop::option::weighted(0.8, any::<usize>())), 1..70),
    ) {
        let deal = build_deal(&shape);
        let (engine, log) = run_ops(&deal, &ops)?;

        if let Err(violation) = check_events(&deal, &log) {
            return Err(TestCaseError::fail(format!("{violation}\n{:#?}", log.iter().map(describe).collect::<Vec<_>>())));
        }
        prop_assert_eq!(&State::from_events(&log), engine.state(), "replay differs");
        if let Err(message) = check_time(&log) {
            return Err(TestCaseError::fail(message));
        }
        for event in &log {
            let bytes = event.to_json();
            prop_assert_eq!(&Event::from_json(&bytes).unwrap(), event, "JSON round trip");
        }
        prop_assert!(engine.state().agenda.is_empty(), "deadlines left after 400 days: {:?}", engine.state().agenda);
    }
}

/// Three ways an amendment may change the right: end it, give it to another
/// provider, or keep its holder under other terms.
fn amended_holder() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(vec![None, Some("beta"), Some("holder")])
}

/// An amendment to a random deal: the new version's shape and holder, whether open
/// needs move to it, and how many hours after it is written it takes effect.
#[derive(Debug, Clone)]
struct Amendment {
    second: DealShape,
    holder: Option<&'static str>,
    moves: bool,
    after_hours: i64,
}

fn amendment() -> impl Strategy<Value = Amendment> {
    (
        deal_shape(),
        amended_holder(),
        any::<bool>(),
        prop_oneof![0i64..1, 1i64..300],
    )
        .prop_map(|(second, holder, moves, after_hours)| Amendment {
            second,
            holder,
            moves,
            after_hours,
        })
}

/// Runs `before`, writes the amendment, runs `after` and lets every deadline fire,
/// then checks the log: replaying its entries (the amendment among them) rebuilds the
/// same state and version in force; I1–I3 hold at every award under the version
/// governing its need; needs name the version in force when they were submitted;
/// under `keep` no need changes version, while under `move` every need open at the
/// effective time moves, and none is offered to a holder the new version does not
/// give the right. Gives the log and the effective time.
fn run_amended(
    first: &DealShape,
    amendment: &Amendment,
    before: &[(Op, Option<usize>)],
    after: &[(Op, Option<usize>)],
) -> Result<(Vec<Event>, rofr_engine::types::Timestamp), TestCaseError> {
    use rofr_engine::invariants::check_under;
    use rofr_engine::log::{DealAmended, Entry, OpenNeeds};
    let v1 = build_deal(first);
    let Amendment {
        second,
        holder,
        moves,
        after_hours,
    } = amendment;
    let text = deal_text(second, *holder);
    let v2 = Arc::new(parse_deal("random-2.toml", &text).unwrap());
    let rule = if *moves {
        OpenNeeds::Move
    } else {
        OpenNeeds::Keep
    };
    let mut engine = Engine::new(v1.clone(), start());
    let mut twin = Engine::new(v1.clone(), start());
    twin.keep_unpacked();
    let mut log = Vec::new();
    drive(&mut engine, &mut twin, &mut log, before)?;
    let at = engine.clock();
    let effective = at.plus_seconds(after_hours * 3600);
    let entry = DealAmended::new("random", 2, "random-2.toml", &text, effective, rule, at);
    let amended_at = log.len();
    let moved = engine.amend(v2.clone(), &entry).unwrap();
    prop_assert_eq!(&moved, &twin.amend(v2.clone(), &entry).unwrap());
    log.extend(moved);
    drive(&mut engine, &mut twin, &mut log, after)?;
    finish(&mut engine, &mut twin, &mut log)?;
    prop_assert_eq!(
        engine.deal_version(),
        2,
        "the amendment is in force 400 days on"
    );

    let mut entries: Vec<Entry> = log[..amended_at]
        .iter()
        .cloned()
        .map(Entry::Event)
        .collect();
    entries.push(Entry::from_json(&entry.to_json()).unwrap());
    prop_assert_eq!(
        entries.last(),
        Some(&Entry::Amended(entry.clone())),
        "the entry reads back"
    );
    entries.extend(log[amended_at..].iter().cloned().map(Entry::Event));
    let mut replayed = Engine::new(v1.clone(), start());
    for entry in &entries {
        replayed.apply_entry(entry).unwrap();
    }
    prop_assert_eq!(
        replayed.state(),
        engine.state(),
        "replaying the entries differs"
    );
    // The log does not record the last tick: brought to the same time, the replica
    // decides nothing the log lacks, and has the same version in force.
    let caught_up = replayed
        .execute(Command::Tick {
            now: engine.clock(),
        })
        .unwrap();
    prop_assert_eq!(caught_up, vec![], "a replica caught up decides again");
    prop_assert_eq!(replayed.deal_version(), engine.deal_version());

    if let Err(violation) = check_under(&[&v1, &v2], &log) {
        return Err(TestCaseError::fail(format!(
            "{violation}\n{:#?}",
            log.iter().map(describe).collect::<Vec<_>>()
        )));
    }
    if let Err(message) = check_time(&log) {
        return Err(TestCaseError::fail(message));
    }
    let mut version_of = std::collections::HashMap::new();
    for (i, event) in log.iter().enumerate() {
        match &event.kind {
            EventKind::NeedSubmitted(submitted) => {
                // Before the amendment was written, or before it took effect.
                let expected = if i >= amended_at && event.at >= effective {
                    2
                } else {
                    1
                };
                prop_assert_eq!(
                    submitted.deal_version,
                    Some(expected),
                    "{} submitted at {}",
                    event.need,
                    event.at
                );
                version_of.insert(event.need.clone(), expected);
            }
            EventKind::TermsChanged { version, .. } => {
                prop_assert!(*moves, "a need moved under `keep`");
                prop_assert_eq!(*version, 2);
                prop_assert_eq!(event.at, effective, "moved at the effective time");
                prop_assert_eq!(
                    version_of.insert(event.need.clone(), 2),
                    Some(1),
                    "moved once, from version 1"
                );
            }
            EventKind::OfferSent { provider, .. }
                if event.at > effective && version_of[&event.need] == 2 =>
            {
                prop_assert_eq!(
                    Some(provider.as_str()),
                    *holder,
                    "offered to a provider version 2 gives no right"
                );
            }
            _ => {}
        }
    }
    if *moves {
        for need in engine.state().needs() {
            let was_open_then = log
                .iter()
                .any(|e| e.need == need.spec.id && e.at >= effective)
                && need.submitted_at < effective;
            if was_open_then && need.deal_version == 1 {
                // Not moved: it was closed or fulfilled before the effective time.
                let settled = log.iter().any(|e| {
                    e.need == need.spec.id
                        && e.at <= effective
                        && matches!(
                            e.kind,
                            EventKind::NeedFulfilled { .. }
                                | EventKind::NeedExpired { .. }
                                | EventKind::NeedCancelled { .. }
                        )
                });
                prop_assert!(
                    settled,
                    "need {} stayed on version 1 under `move`",
                    need.spec.id
                );
            }
        }
    }
    Ok((log, effective))
}

/// Guards the amendment property against testing little: withdrawals, moves, and
/// offers made under the old terms after the new came into force all happen.
#[test]
fn random_amendments_withdraw_move_and_keep() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    let ops = || prop::collection::vec((op(), prop::option::weighted(0.8, any::<usize>())), 1..40);
    for _ in 0..300 {
        let first = deal_shape().new_tree(&mut runner).unwrap().current();
        let amendment = amendment().new_tree(&mut runner).unwrap().current();
        let before = ops().new_tree(&mut runner).unwrap().current();
        let after = ops().new_tree(&mut runner).unwrap().current();
        let (log, effective) = run_amended(&first, &amendment, &before, &after).unwrap();
        seen.extend(log.iter().map(|e| e.kind.type_name()));
        let moved = |need: &rofr_engine::types::NeedId| {
            log.iter()
                .any(|e| e.need == *need && matches!(e.kind, EventKind::TermsChanged { .. }))
        };
        if log.iter().any(|e| {
            e.at > effective && moved(&e.need) && matches!(e.kind, EventKind::AwardMade { .. })
        }) {
            seen.insert("award after a move");
        }
        if !amendment.moves {
            let late_offer = log.iter().any(|e| {
                matches!(e.kind, EventKind::OfferSent { .. })
                    && log.iter().any(|s| {
                        s.need == e.need
                            && matches!(&s.kind, EventKind::NeedSubmitted(n) if n.deal_version == Some(1))
                    })
                    && amendment.holder.is_none()
                    && e.at > effective
            });
            if late_offer {
                seen.insert("old terms kept after the right ended");
            }
        }
    }
    for kind in [
        "terms_changed",
        "offer_withdrawn",
        "award after a move",
        "old terms kept after the right ended",
    ] {
        assert!(seen.contains(kind), "never generated: {kind}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_log_with_an_amendment_replays_to_the_same_state_and_keeps_i1_under_each_version(
        first in deal_shape(),
        amendment in amendment(),
        before in prop::collection::vec((op(), prop::option::weighted(0.8, any::<usize>())), 1..40),
        after in prop::collection::vec((op(), prop::option::weighted(0.8, any::<usize>())), 0..40),
    ) {
        run_amended(&first, &amendment, &before, &after)?;
    }
}
