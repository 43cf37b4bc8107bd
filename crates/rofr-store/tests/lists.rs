//! The needs projection listed in both stores: all needs or those of one status, in
//! order of id, a page at a time. The PostgreSQL half reads `ROFR_TEST_DATABASE_URL`
//! and passes without running where it is unset.

use rofr_store::{Batch, Location, NeedRow, ScratchDatabase, Store};

const STATUSES: [&str; 3] = ["active", "waiting", "completed"];

fn row(n: usize) -> NeedRow {
    NeedRow {
        id: format!("n{n:03}"),
        status: STATUSES[n % 7 % 3].into(),
        ..NeedRow::default()
    }
}

/// Every page of `status` (all needs when `None`), `limit` at a time.
fn pages(store: &dyn Store, status: Option<&str>, limit: u32) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_needs(status, after.as_deref(), limit).unwrap();
        assert!(page.len() <= limit as usize);
        for need in &page {
            if let Some(status) = status {
                assert_eq!(need.status, status, "{}", need.id);
            }
        }
        ids.extend(page.iter().map(|n| n.id.clone()));
        match page.last() {
            Some(last) if page.len() == limit as usize => after = Some(last.id.clone()),
            _ => return ids,
        }
    }
}

fn listed_by_status_in_pages(store: &mut dyn Store) {
    // Written out of order of id.
    let rows: Vec<NeedRow> = (0..120).rev().map(row).collect();
    store
        .commit(&Batch {
            needs: rows.clone(),
            ..Batch::default()
        })
        .unwrap();
    let mut all: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    all.sort();
    assert_eq!(pages(store, None, 7), all);
    for status in STATUSES {
        let expected: Vec<String> = all
            .iter()
            .filter(|id| rows.iter().any(|r| &r.id == *id && r.status == status))
            .cloned()
            .collect();
        assert!(expected.len() > 20, "{status}: {}", expected.len());
        assert_eq!(pages(store, Some(status), 9), expected, "{status}");
    }
    assert!(pages(store, Some("cancelled"), 5).is_empty());
    // A page after the last id of a status is empty, whatever follows it in order of id.
    let page = store.list_needs(Some("waiting"), Some("n119"), 10).unwrap();
    assert!(page.is_empty(), "{page:?}");
}

#[test]
fn needs_listed_by_status_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Location::Sqlite(dir.path().join("rofr.db")).open().unwrap();
    listed_by_status_in_pages(store.as_mut());
}

#[test]
fn needs_listed_by_status_on_postgres() {
    let Some(database) = ScratchDatabase::for_test("rofr_store", "needs_listed_by_status") else {
        return;
    };
    let mut store = database.location().open().unwrap();
    listed_by_status_in_pages(store.as_mut());
}
