//! One scenario per mechanic of docs/lifecycle.md. Each is data: a deal, then steps that
//! run commands, advance time, and state exactly which events must follow.

mod common;

use std::sync::Arc;

use common::*;
use rofr_engine::command::RejectionCode;
use rofr_engine::deal::Deal;
use rofr_engine::event::DeclineReason;
use rofr_engine::invariants::check_events;
use rofr_engine::need::NeedSpec;
use rofr_engine::state::State;
use rofr_engine::types::Gpus;
use rofr_engine::{Command, Engine, Event};

enum Step {
    /// The command must be accepted.
    Run(Command),
    /// Time moves to this many hours after the start.
    At(i64),
    /// The command must be refused with this code and change nothing.
    Refused(Command, RejectionCode),
    /// Exactly these events, described by `describe`, since the last `Expect`.
    Expect(&'static [&'static str]),
}
use Step::*;

fn run(deal: Arc<Deal>, steps: Vec<Step>) {
    let mut engine = Engine::new(deal.clone(), start());
    let mut log: Vec<Event> = Vec::new();
    let mut seen = 0;
    for (i, step) in steps.into_iter().enumerate() {
        match step {
            // Appended to the log itself: `execute_into` adds to what the buffer holds.
            Run(command) => engine
                .execute_into(command.clone(), &mut log)
                .unwrap_or_else(|r| panic!("step {i}: {command:?} refused: {r}")),
            At(h) => log.extend(engine.execute(Command::Tick { now: hours(h) }).unwrap()),
            Refused(command, code) => {
                let before = engine.state().clone();
                let rejection = engine
                    .execute(command.clone())
                    .expect_err(&format!("step {i}: {command:?} should be refused"));
                assert_eq!(rejection.code, code, "step {i}: {rejection}");
                assert_eq!(
                    engine.state(),
                    &before,
                    "step {i}: a refusal changed the state"
                );
                let mut buffer = log.clone();
                let again = engine.execute_into(command.clone(), &mut buffer);
                assert_eq!(again.map_err(|r| r.code), Err(code), "step {i}");
                assert_eq!(buffer, log, "step {i}: a refusal left events in the buffer");
            }
            Expect(expected) => {
                let got: Vec<String> = log[seen..].iter().map(describe).collect();
                assert_eq!(got, expected, "step {i}: events differ");
                seen = log.len();
            }
        }
    }
    check_events(&deal, &log).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(&State::from_events(&log), engine.state(), "replay differs");
}

fn submit(need: NeedSpec) -> Command {
    Command::SubmitNeed { need }
}

fn accept(need: &str, gpus: Option<u32>) -> Command {
    Command::Accept {
        provider: provider("holder"),
        need: need_id(need),
        offer: None,
        gpus: gpus.map(Gpus),
        price: None,
    }
}

fn decline(who: &str, need: &str) -> Command {
    decline_because(who, need, DeclineReason::NoCapacity)
}

#[test]
fn holder_accepting_everything_is_awarded_without_sourcing() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
            ]),
            Run(accept("n1", None)),
            Expect(&[
                "+0h offer_accepted holder 64 @6",
                "+0h award_made holder 64 @6",
            ]),
            Run(confirm("holder", "n1", 1)),
            Expect(&["+0h award_confirmed holder", "+0h need_fulfilled"]),
            At(24 * 7 + 100),
            Expect(&["+268h need_completed"]),
        ],
    );
}

/// A confirmed need that waits a week for its run is packed; it reads the same, and its
/// deadline still fires on time.
#[test]
fn a_confirmed_need_is_packed_and_still_completes_on_time() {
    let mut engine = Engine::new(deal("first_offer", true, ""), start());
    let mut twin = Engine::new(deal("first_offer", true, ""), start());
    twin.keep_unpacked();
    for command in [
        submit(need("n1", 64)),
        accept("n1", None),
        confirm("holder", "n1", 1),
    ] {
        engine.execute(command.clone()).unwrap();
        twin.execute(command).unwrap();
    }
    assert_eq!(engine.state().packed_count(), 1);
    assert_eq!(twin.state().packed_count(), 0);
    assert!(engine.state().unpacked("n1").is_none());
    assert_eq!(engine.state().need("n1"), twin.state().need("n1"));
    let tick = Command::Tick {
        now: hours(24 * 7 + 100),
    };
    let done = engine.execute(tick.clone()).unwrap();
    assert_eq!(
        done.iter().map(describe).collect::<Vec<_>>(),
        ["+268h need_completed"]
    );
    assert_eq!(done, twin.execute(tick).unwrap());
    assert!(engine.state() == twin.state(), "the states differ");
    // Closed, it rests with nothing due: packed again.
    assert_eq!(engine.state().packed_count(), 1);
}

#[test]
fn holder_accepting_part_sends_the_rest_to_sourcing() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(accept("n1", Some(40))),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_accepted holder 40 @6",
                "+0h offer_declined holder 24 partial",
                "+0h award_made holder 40 @6",
                "+0h rfq_sent alpha 24",
                "+0h rfq_sent beta 24",
            ]),
            Run(quote("alpha", "n1", 24, 5.5)),
            Run(decline("beta", "n1")),
            Expect(&[
                "+0h quote_received alpha 24 @5.5",
                "+0h rfq_declined beta",
                "+0h sourcing_closed planned=24",
                "+0h award_made alpha 24 @5.5",
            ]),
        ],
    );
}

#[test]
fn partial_acceptance_is_refused_when_the_right_is_all_or_nothing() {
    run(
        deal("first_offer", false, ""),
        vec![
            Run(submit(need("n1", 64))),
            Refused(accept("n1", Some(40)), RejectionCode::InvalidField),
            Run(accept("n1", None)),
        ],
    );
}

#[test]
fn holder_silence_is_a_deemed_refusal_recorded_at_the_deadline() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            At(71),
            At(100),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+72h offer_lapsed holder 64",
                "+72h rfq_sent alpha 64",
                "+72h rfq_sent beta 64",
                "+96h sourcing_closed planned=0",
                "+96h need_waiting 64",
            ]),
            Refused(accept("n1", None), RejectionCode::NotFound),
        ],
    );
}

#[test]
fn cheapest_conforming_quotes_win_after_a_decline() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(decline("holder", "n1")),
            Run(quote("alpha", "n1", 32, 5.5)),
            Run(quote("beta", "n1", 48, 5.0)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_declined holder 64 no_capacity",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h quote_received alpha 32 @5.5",
                "+0h quote_received beta 48 @5",
                "+0h sourcing_closed planned=64",
                "+0h award_made beta 48 @5",
                "+0h award_made alpha 16 @5.5",
            ]),
        ],
    );
}

#[test]
fn a_dearer_third_party_price_beyond_the_threshold_is_offered_to_the_holder_again() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(decline("holder", "n1")),
            Run(decline("beta", "n1")),
            // 6.0 × 1.05 = 6.30, so 7.00 needs a re-offer.
            Run(quote("alpha", "n1", 64, 7.0)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_declined holder 64 no_capacity",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h rfq_declined beta",
                "+0h quote_received alpha 64 @7",
                "+0h sourcing_closed planned=64",
                "+0h offer_sent holder 64 @7 reoffer",
            ]),
            Run(decline("holder", "n1")),
            Expect(&[
                "+0h offer_declined holder 64 no_capacity",
                "+0h award_made alpha 64 @7",
            ]),
        ],
    );
}

#[test]
fn a_third_party_price_within_the_threshold_needs_no_reoffer() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(decline("holder", "n1")),
            Run(decline("beta", "n1")),
            Run(quote("alpha", "n1", 64, 6.3)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_declined holder 64 no_capacity",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h rfq_declined beta",
                "+0h quote_received alpha 64 @6.3",
                "+0h sourcing_closed planned=64",
                "+0h award_made alpha 64 @6.3",
            ]),
        ],
    );
}

#[test]
fn the_holder_may_take_a_reoffer_at_the_third_party_price() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(decline("holder", "n1")),
            Run(decline("beta", "n1")),
            Run(quote("alpha", "n1", 64, 7.0)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_declined holder 64 no_capacity",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h rfq_declined beta",
                "+0h quote_received alpha 64 @7",
                "+0h sourcing_closed planned=64",
                "+0h offer_sent holder 64 @7 reoffer",
            ]),
            Run(accept("n1", Some(16))),
            Expect(&[
                "+0h offer_accepted holder 16 @7",
                "+0h offer_declined holder 48 partial",
                "+0h award_made holder 16 @7",
                "+0h award_made alpha 48 @7",
            ]),
        ],
    );
}

#[test]
fn last_look_gathers_quotes_first_and_a_match_wins() {
    run(
        deal("last_look", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(quote("alpha", "n1", 64, 5.0)),
            Run(quote("beta", "n1", 64, 5.5)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h quote_received alpha 64 @5",
                "+0h quote_received beta 64 @5.5",
                "+0h sourcing_closed planned=64",
                "+0h match_offered holder 64 @5",
            ]),
            Run(Command::Match {
                provider: provider("holder"),
                need: need_id("n1"),
                offer: None,
                gpus: None,
            }),
            Expect(&[
                "+0h match_accepted holder 64 @5",
                "+0h award_made holder 64 @5",
            ]),
        ],
    );
}

#[test]
fn last_look_awards_the_third_party_on_the_declined_terms() {
    run(
        deal("last_look", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(quote("alpha", "n1", 64, 5.0)),
            Run(decline("beta", "n1")),
            At(72),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h quote_received alpha 64 @5",
                "+0h rfq_declined beta",
                "+0h sourcing_closed planned=64",
                "+0h match_offered holder 64 @5",
                "+72h match_lapsed holder 64",
                "+72h award_made alpha 64 @5",
            ]),
        ],
    );
}

#[test]
fn negotiate_ends_in_a_lapse_and_then_the_buyer_is_free() {
    run(
        deal("negotiate", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            At(72),
            Run(decline("beta", "n1")),
            Run(quote("alpha", "n1", 64, 7.5)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+72h offer_lapsed holder 64",
                "+72h rfq_sent alpha 64",
                "+72h rfq_sent beta 64",
                "+72h rfq_declined beta",
                "+72h quote_received alpha 64 @7.5",
                "+72h sourcing_closed planned=64",
                "+72h award_made alpha 64 @7.5",
            ]),
        ],
    );
}

#[test]
fn negotiate_lets_holder_and_buyer_agree_a_price() {
    run(
        deal("negotiate", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(Command::Accept {
                provider: provider("holder"),
                need: need_id("n1"),
                offer: None,
                gpus: None,
                price: Some(price(6.5)),
            }),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_accepted holder 64 @6.5",
                "+0h award_made holder 64 @6.5",
            ]),
        ],
    );
}

#[test]
fn only_negotiate_may_change_the_price() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Refused(
                Command::Accept {
                    provider: provider("holder"),
                    need: need_id("n1"),
                    offer: None,
                    gpus: None,
                    price: Some(price(6.5)),
                },
                RejectionCode::InvalidField,
            ),
        ],
    );
}

#[test]
fn the_right_revives_when_the_third_party_window_passes_without_an_award() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(decline("holder", "n1")),
            Run(decline("alpha", "n1")),
            Run(decline("beta", "n1")),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_declined holder 64 no_capacity",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h rfq_declined alpha",
                "+0h rfq_declined beta",
                "+0h sourcing_closed planned=0",
                "+0h need_waiting 64",
            ]),
            At(24),
            Run(decline("alpha", "n1")),
            Run(decline("beta", "n1")),
            // Retries continue daily until day ten, when the right revives.
            At(240),
            Expect(&[
                "+24h rfq_sent alpha 64",
                "+24h rfq_sent beta 64",
                "+24h rfq_declined alpha",
                "+24h rfq_declined beta",
                "+24h sourcing_closed planned=0",
                "+24h need_waiting 64",
                "+48h rfq_sent alpha 64",
                "+48h rfq_sent beta 64",
                "+72h sourcing_closed planned=0",
                "+72h need_waiting 64",
                "+96h rfq_sent alpha 64",
                "+96h rfq_sent beta 64",
                "+120h sourcing_closed planned=0",
                "+120h need_waiting 64",
                "+144h rfq_sent alpha 64",
                "+144h rfq_sent beta 64",
                "+168h sourcing_closed planned=0",
                "+168h need_waiting 64",
                "+192h rfq_sent alpha 64",
                "+192h rfq_sent beta 64",
                "+216h sourcing_closed planned=0",
                "+216h need_waiting 64",
                "+240h right_revived holder 64",
                "+240h offer_sent holder 64 @6",
            ]),
        ],
    );
}

#[test]
fn a_placement_restriction_keeps_tagged_needs_from_the_holder_and_others() {
    let deal = deal(
        "first_offer",
        true,
        r#"
[[placement_restriction]]
tags = ["windsurf"]
providers = ["holder", "alpha"]
"#,
    );
    let mut tagged = need("n1", 64);
    tagged
        .tags
        .insert(rofr_engine::types::Tag::parse("windsurf").unwrap());
    run(
        deal,
        vec![
            Run(submit(tagged)),
            Run(quote("beta", "n1", 64, 5.0)),
            Expect(&[
                "+0h need_submitted holder=-",
                "+0h rfq_sent beta 64",
                "+0h quote_received beta 64 @5",
                "+0h sourcing_closed planned=64",
                "+0h award_made beta 64 @5",
            ]),
            Refused(quote("alpha", "n1", 64, 4.0), RejectionCode::NotFound),
        ],
    );
}

#[test]
fn a_concentration_cap_limits_what_one_provider_is_awarded() {
    // Nobody may hold more than half. With a base of 6,400 GPU-hours at the holder and
    // 3,200 at beta, alpha's x·100 ≤ 0.5·(9,600 + x·100) gives x ≤ 96 at first. The
    // least-cost answer keeping the cap on the totals is alpha 148 (14,800 of 29,600,
    // exactly half) and beta 52. Awards are judged one by one, so they are made in an
    // order that keeps the cap at each: alpha 96, then beta 52, whose GPU-hours give
    // alpha room for its other 52. Cheaper by $2,600 than alpha 96 and beta 104.
    let deal = deal(
        "first_offer",
        true,
        r#"
[[concentration_cap]]
max_share = 0.5
binds_holder = false
base = { holder = 6400, beta = 3200 }
"#,
    );
    run(
        deal,
        vec![
            Run(submit(need("n1", 200))),
            Run(decline("holder", "n1")),
            Run(quote("alpha", "n1", 200, 5.0)),
            Run(quote("beta", "n1", 200, 5.5)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 200 @6",
                "+0h offer_declined holder 200 no_capacity",
                "+0h rfq_sent alpha 200",
                "+0h rfq_sent beta 200",
                "+0h quote_received alpha 200 @5",
                "+0h quote_received beta 200 @5.5",
                "+0h sourcing_closed planned=200",
                "+0h award_made alpha 96 @5",
                "+0h award_made beta 52 @5.5",
                "+0h award_made alpha 52 @5",
            ]),
        ],
    );
}

#[test]
fn a_cap_that_binds_the_holder_keeps_part_of_the_need_from_it() {
    let deal = deal(
        "first_offer",
        true,
        r#"
[[concentration_cap]]
max_share = 0.5
binds_holder = true
base = { holder = 6400, alpha = 12800 }
"#,
    );
    run(
        deal,
        vec![
            Run(submit(need("n1", 100))),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h holder_capped holder 36",
                "+0h offer_sent holder 64 @6",
                // alpha already holds two thirds of the base, above the cap.
                "+0h rfq_sent beta 36",
            ]),
        ],
    );
}

#[test]
fn approval_gates_large_third_party_awards() {
    let deal = deal(
        "first_offer",
        true,
        r#"
[[approval]]
non_holder = true
min_value = 10000
"#,
    );
    run(
        deal,
        vec![
            Run(submit(need("n1", 64))),
            Run(decline("holder", "n1")),
            Run(decline("beta", "n1")),
            Run(quote("alpha", "n1", 64, 5.0)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_declined holder 64 no_capacity",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h rfq_declined beta",
                "+0h quote_received alpha 64 @5",
                "+0h sourcing_closed planned=64",
                "+0h approval_requested alpha 64 @5",
            ]),
            Refused(confirm("alpha", "n1", 1), RejectionCode::Conflict),
            Run(Command::Approve {
                need: need_id("n1"),
                award: 1,
            }),
            Expect(&["+0h award_made alpha 64 @5"]),
        ],
    );
}

#[test]
fn a_rejected_approval_waits_and_then_sources_again() {
    let deal = deal("first_offer", true, "[[approval]]\nnon_holder = true\n");
    run(
        deal,
        vec![
            Run(submit(need("n1", 64))),
            Run(decline("holder", "n1")),
            Run(decline("beta", "n1")),
            Run(quote("alpha", "n1", 64, 5.0)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_declined holder 64 no_capacity",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h rfq_declined beta",
                "+0h quote_received alpha 64 @5",
                "+0h sourcing_closed planned=64",
                "+0h approval_requested alpha 64 @5",
            ]),
            Run(Command::Reject {
                need: need_id("n1"),
                award: 1,
                reason: "prefer another site".into(),
            }),
            At(24),
            Expect(&[
                "+0h approval_rejected alpha",
                "+0h need_waiting 64",
                "+24h rfq_sent alpha 64",
                "+24h rfq_sent beta 64",
            ]),
        ],
    );
}

#[test]
fn a_third_party_that_fails_to_deliver_sends_the_need_back_to_the_holder_first() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(decline("holder", "n1")),
            Run(decline("beta", "n1")),
            Run(quote("alpha", "n1", 64, 5.0)),
            Run(confirm("alpha", "n1", 1)),
            Run(fail("alpha", "n1", 1)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_declined holder 64 no_capacity",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h rfq_declined beta",
                "+0h quote_received alpha 64 @5",
                "+0h sourcing_closed planned=64",
                "+0h award_made alpha 64 @5",
                "+0h award_confirmed alpha",
                "+0h need_fulfilled",
                "+0h award_failed alpha 64",
                "+0h right_revived holder 64",
                "+0h offer_sent holder 64 @6",
            ]),
        ],
    );
}

#[test]
fn a_holder_that_fails_to_deliver_has_refused_that_quantity() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(accept("n1", None)),
            Run(fail("holder", "n1", 1)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_accepted holder 64 @6",
                "+0h award_made holder 64 @6",
                "+0h award_failed holder 64",
                "+0h offer_declined holder 64 delivery_failed",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
            ]),
        ],
    );
}

#[test]
fn an_award_not_confirmed_in_time_fails_at_its_deadline() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(accept("n1", None)),
            At(60),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_accepted holder 64 @6",
                "+0h award_made holder 64 @6",
                "+48h award_failed holder 64",
                "+48h offer_declined holder 64 delivery_failed",
                "+48h rfq_sent alpha 64",
                "+48h rfq_sent beta 64",
            ]),
        ],
    );
}

#[test]
fn a_need_expires_at_its_decision_date_with_what_is_unmet() {
    let mut short = need("n1", 64);
    short.decide_by = hours(48);
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(short)),
            At(100),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+48h need_expired 64",
            ]),
            Refused(accept("n1", None), RejectionCode::Conflict),
        ],
    );
}

#[test]
fn a_need_outside_the_scope_goes_straight_to_sourcing_with_the_holder_as_a_bidder() {
    let mut inference = need("n1", 64);
    inference.workload = rofr_engine::types::Workload::parse("inference").unwrap();
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(inference)),
            Run(quote("holder", "n1", 64, 5.0)),
            Expect(&[
                "+0h need_submitted holder=-",
                "+0h rfq_sent holder 64",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h quote_received holder 64 @5",
            ]),
        ],
    );
}

#[test]
fn a_need_can_be_cancelled_until_something_is_awarded() {
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Run(submit(need("n2", 64))),
            Run(accept("n2", None)),
            Refused(
                Command::CancelNeed {
                    need: need_id("n2"),
                    reason: "plans changed".into(),
                },
                RejectionCode::Conflict,
            ),
            Run(Command::CancelNeed {
                need: need_id("n1"),
                reason: "plans changed".into(),
            }),
            Refused(accept("n1", None), RejectionCode::Conflict),
        ],
    );
}

#[test]
fn bad_commands_are_refused_and_change_nothing() {
    let mut zero = need("n2", 0);
    zero.id = need_id("n2");
    let mut late = need("n3", 8);
    late.decide_by = hours(-1);
    let mut dear = need("n4", 8);
    dear.offer_price_per_gpu_hour = Some(price(9.0));
    run(
        deal("first_offer", true, ""),
        vec![
            Run(submit(need("n1", 64))),
            Refused(submit(need("n1", 8)), RejectionCode::Conflict),
            Refused(submit(zero), RejectionCode::InvalidField),
            Refused(submit(late), RejectionCode::InvalidField),
            Refused(submit(dear), RejectionCode::InvalidField),
            Refused(accept("nope", None), RejectionCode::NotFound),
            // Another provider cannot answer the holder's offer: it is not found for them.
            Refused(
                Command::Accept {
                    provider: provider("alpha"),
                    need: need_id("n1"),
                    offer: None,
                    gpus: None,
                    price: None,
                },
                RejectionCode::NotFound,
            ),
            Refused(quote("alpha", "n1", 8, 5.0), RejectionCode::NotFound),
            Refused(accept("n1", Some(65)), RejectionCode::InvalidField),
            Run(decline("holder", "n1")),
            Refused(quote("alpha", "n1", 8, 9.0), RejectionCode::InvalidField),
            Refused(quote("alpha", "n1", 0, 5.0), RejectionCode::InvalidField),
            At(10),
            Refused(
                Command::Tick { now: hours(5) },
                RejectionCode::ClockBackwards,
            ),
        ],
    );
}

#[test]
fn unknown_or_malformed_commands_do_not_parse() {
    let cases = [
        r#"{"command":"launch_rocket"}"#,
        r#"{"command":"quote","provider":"alpha","need":"n1","gpus":-4,"price":5.0}"#,
        r#"{"command":"quote","provider":"alpha","need":"n1","gpus":4,"price":5.0,"discount":1}"#,
        r#"{"command":"tick","now":"yesterday"}"#,
        r#"{"command":"confirm","provider":"al pha","need":"n1","award":1,"reservation":"r"}"#,
    ];
    for case in cases {
        assert!(
            serde_json::from_str::<Command>(case).is_err(),
            "{case} parsed"
        );
    }
    let good = r#"{"command":"quote","provider":"alpha","need":"n1","gpus":4,"price":5.0}"#;
    assert!(serde_json::from_str::<Command>(good).is_ok());
}

#[test]
fn needs_whose_rounds_close_together_share_a_cap_at_least_cost() {
    // alpha is the cheaper for both needs but may hold at most half: 150 of the 200
    // GPUs once both are placed. One need at a time would give n1 all 100 of alpha
    // and leave n2 to beta at 7.5 ($112,500); decided together, alpha's room goes
    // where the alternative is dearer: n2 all 100, n1 50 + beta's 50 at 6 ($105,000).
    let deal = deal(
        "first_offer",
        true,
        r#"
[[provider]]
id = "gamma"

[[concentration_cap]]
max_share = 0.5
binds_holder = false
base = { holder = 10000 }
"#,
    );
    run(
        deal,
        vec![
            Run(submit(need("n1", 100))),
            Run(submit(need("n2", 100))),
            Run(decline("holder", "n1")),
            Run(decline("holder", "n2")),
            Run(quote("alpha", "n1", 100, 5.0)),
            Run(quote("beta", "n1", 100, 6.0)),
            Run(quote("alpha", "n2", 100, 5.0)),
            Run(quote("beta", "n2", 100, 7.5)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 100 @6",
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 100 @6",
                "+0h offer_declined holder 100 no_capacity",
                "+0h rfq_sent alpha 100",
                "+0h rfq_sent beta 100",
                "+0h rfq_sent gamma 100",
                "+0h offer_declined holder 100 no_capacity",
                "+0h rfq_sent alpha 100",
                "+0h rfq_sent beta 100",
                "+0h rfq_sent gamma 100",
                "+0h quote_received alpha 100 @5",
                "+0h quote_received beta 100 @6",
                "+0h quote_received alpha 100 @5",
                "+0h quote_received beta 100 @7.5",
            ]),
            // gamma stays silent; both rounds close at the quote deadline, and every
            // provider is capped, so the awards follow both closes.
            At(24),
            Expect(&[
                "+24h sourcing_closed planned=100",
                "+24h sourcing_closed planned=100",
                "+24h award_made alpha 50 @5",
                "+24h award_made beta 50 @6",
                "+24h award_made alpha 100 @5",
            ]),
        ],
    );
}

#[test]
fn a_commitment_is_preferred_where_it_costs_nothing() {
    // alpha and beta quote the same price; beta has a commitment in its period, so
    // beta is awarded (ids alone would pick alpha).
    let deal = deal(
        "first_offer",
        true,
        r#"
[[commitment]]
provider = "beta"
min_gpu_hours = 1000000
period = { from = 2025-01-01, until = 2026-01-01 }
"#,
    );
    run(
        deal,
        vec![
            Run(submit(need("n1", 64))),
            Run(decline("holder", "n1")),
            Run(quote("alpha", "n1", 64, 5.0)),
            Run(quote("beta", "n1", 64, 5.0)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_declined holder 64 no_capacity",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h quote_received alpha 64 @5",
                "+0h quote_received beta 64 @5",
                "+0h sourcing_closed planned=64",
                "+0h award_made beta 64 @5",
            ]),
        ],
    );
}

#[test]
fn ordered_allocation_takes_providers_in_the_deals_order() {
    // The failover baseline: alpha comes before beta in the deal, so alpha gives all
    // it quoted although beta is cheaper; beta gives the rest.
    let mut deal = (*deal("first_offer", true, "")).clone();
    deal.sourcing.allocation = rofr_engine::deal::Allocation::Ordered;
    run(
        Arc::new(deal),
        vec![
            Run(submit(need("n1", 64))),
            Run(decline("holder", "n1")),
            Run(quote("alpha", "n1", 40, 5.5)),
            Run(quote("beta", "n1", 64, 5.0)),
            Expect(&[
                "+0h need_submitted holder=holder",
                "+0h offer_sent holder 64 @6",
                "+0h offer_declined holder 64 no_capacity",
                "+0h rfq_sent alpha 64",
                "+0h rfq_sent beta 64",
                "+0h quote_received alpha 40 @5.5",
                "+0h quote_received beta 64 @5",
                "+0h sourcing_closed planned=64",
                "+0h award_made alpha 40 @5.5",
                "+0h award_made beta 24 @5",
            ]),
        ],
    );
}

#[test]
fn needs_share_one_copy_of_each_sku_workload_region_and_tag() {
    let mut engine = Engine::new(deal("first_offer", true, ""), start());
    for id in ["n1", "n2"] {
        // Each spec parses its own copies of the texts.
        let mut spec = need(id, 8);
        spec.regions = [rofr_engine::types::Region::parse("us-east").unwrap()].into();
        spec.tags = [rofr_engine::types::Tag::parse("frontier").unwrap()].into();
        engine.execute(submit(spec)).unwrap();
    }
    let [a, b] = ["n1", "n2"].map(|id| engine.state().need(id).unwrap().into_owned().spec);
    assert_eq!((&a.sku, &a.workload), (&b.sku, &b.workload));
    assert!(a.sku.shares_text_with(&b.sku));
    assert!(a.workload.shares_text_with(&b.workload));
    let first = |s: &NeedSpec| {
        (
            s.regions.first().unwrap().clone(),
            s.tags.first().unwrap().clone(),
        )
    };
    let ((ra, ta), (rb, tb)) = (first(&a), first(&b));
    assert!(ra.shares_text_with(&rb) && ta.shares_text_with(&tb));
    // Text parsed apart is two copies: the sharing above is the state's doing.
    assert!(!need("n3", 8).sku.shares_text_with(&a.sku));
}
