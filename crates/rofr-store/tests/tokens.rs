//! Tokens in both stores: made, found, listed oldest first with when they were made,
//! and deleted. The PostgreSQL half reads `ROFR_TEST_DATABASE_URL` and passes without
//! running where it is unset.

use rofr_store::{Location, ScratchDatabase, Store, TokenRow};

fn row(party: &str, provider: Option<&str>, label: &str) -> TokenRow {
    TokenRow {
        party: party.into(),
        provider: provider.map(str::to_owned),
        label: label.into(),
    }
}

fn made_found_listed_and_deleted(store: &mut dyn Store) {
    let azure = row("provider", Some("azure"), "az");
    store
        .create_token("bb22", &azure, "2025-01-02T00:00:00Z")
        .unwrap();
    store
        .create_token("aa11", &row("buyer", None, "lab"), "2025-01-01T00:00:00Z")
        .unwrap();
    assert_eq!(store.token("bb22").unwrap(), Some(azure.clone()));
    let listed = store.tokens().unwrap();
    let hashes: Vec<&str> = listed.iter().map(|t| t.hash.as_str()).collect();
    assert_eq!(hashes, ["aa11", "bb22"], "oldest first");
    assert_eq!(listed[1].row, azure);
    assert_eq!(listed[1].created_at, "2025-01-02T00:00:00Z");
    assert!(store.delete_token("aa11").unwrap());
    assert!(!store.delete_token("aa11").unwrap(), "already gone");
    assert_eq!(store.token("aa11").unwrap(), None);
    assert_eq!(store.tokens().unwrap().len(), 1);
}

#[test]
fn tokens_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Location::Sqlite(dir.path().join("rofr.db")).open().unwrap();
    made_found_listed_and_deleted(store.as_mut());
}

#[test]
fn tokens_on_postgres() {
    let Some(database) = ScratchDatabase::for_test("rofr_store", "tokens_on_postgres") else {
        return;
    };
    let mut store = database.location().open().unwrap();
    made_found_listed_and_deleted(store.as_mut());
}
