//! Pages of awards, read from an engine holding the benchmark's needs.

use std::sync::Arc;

use rofr_engine::types::{ProviderId, Timestamp};
use rofr_engine::{Command, Engine};
use rofr_server::views::{awards_page, AwardState, AwardView};

/// Ten needs, the holder taking the even-numbered ones and confirming the first.
fn engine() -> (Engine, ProviderId) {
    let deal = rofr_engine::deal::parse_deal("bench.toml", rofr_tools::bench::BENCH_DEAL)
        .expect("the bench deal parses");
    let now = Timestamp::parse("2025-02-03T00:00:00Z").unwrap();
    let mut engine = Engine::new(Arc::new(deal), now);
    let holder = ProviderId::parse("holder").unwrap();
    for i in 0..10 {
        let need = rofr_tools::bench::spec(i, now);
        let id = need.id.clone();
        engine.execute(Command::SubmitNeed { need }).unwrap();
        if i % 2 == 0 {
            engine
                .execute(Command::Accept {
                    provider: holder.clone(),
                    need: id.clone(),
                    offer: None,
                    gpus: None,
                    price: None,
                })
                .unwrap();
        }
        if i == 0 {
            engine
                .execute(Command::Confirm {
                    provider: holder.clone(),
                    need: id,
                    award: 1,
                    reservation: "r".into(),
                })
                .unwrap();
        }
    }
    (engine, holder)
}

fn needs(awards: &[AwardView]) -> Vec<&str> {
    awards.iter().map(|a| a.need.as_str()).collect()
}

#[test]
fn a_page_of_awards_ends_at_its_limit_or_after_so_many_needs_read() {
    let cursor = |next: &Option<String>| next.as_deref().map(|n| n.parse::<u32>().unwrap());
    let (engine, holder) = engine();
    let (awards, next) = awards_page(&engine, &holder, None, None, 2, 100);
    assert_eq!(needs(&awards), ["b00000000", "b00000002"]);
    assert_eq!(
        next.as_deref(),
        Some("2"),
        "the cursor is the need's number"
    );
    let (awards, next) = awards_page(&engine, &holder, None, cursor(&next), 100, 100);
    assert_eq!(needs(&awards), ["b00000004", "b00000006", "b00000008"]);
    assert_eq!(next, None);

    // Three needs read a page: one of them may hold no award of the holder's.
    let (awards, next) = awards_page(&engine, &holder, None, Some(0), 100, 3);
    assert_eq!(needs(&awards), ["b00000002"]);
    assert_eq!(next.as_deref(), Some("3"));
    let (mut all, mut after) = (Vec::new(), None);
    loop {
        let (awards, next) = awards_page(&engine, &holder, None, cursor(&after), 100, 3);
        all.extend(awards);
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(all.len(), 5, "following the pages reaches every award");

    let made = awards_page(&engine, &holder, Some(&[AwardState::Made]), None, 100, 100);
    assert_eq!(made.0.len(), 4);
    assert!(made.0.iter().all(|a| a.status == "made"));
    let confirmed = awards_page(
        &engine,
        &holder,
        Some(&[AwardState::Confirmed]),
        None,
        100,
        100,
    );
    assert_eq!(needs(&confirmed.0), ["b00000000"]);

    let alt = ProviderId::parse("alt").unwrap();
    assert!(awards_page(&engine, &alt, None, None, 100, 100)
        .0
        .is_empty());
    // A cursor past the last need ends the listing.
    assert_eq!(
        awards_page(&engine, &holder, None, Some(u32::MAX), 100, 100)
            .0
            .len(),
        0
    );
}
