//! Interoperability: code rofr did not write reads the broker's C2SP tiles. The
//! `tlog_tiles` crate (a port of Go's golang.org/x/mod/sumdb/tlog) fetches hash tiles
//! over HTTP, recomputes the checkpoint's root from them and proves entries; the
//! `signed_note` crate checks the log's signature and, through its `Verifier` trait,
//! the witness's C2SP tlog-cosignature/v1.

mod common;
use common::witnessed::{self, get, submit, witnessing};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::Verifier as _;
use signed_note::{Note, StandardVerifier, Verifier, VerifierList};
use tlog_tiles::{
    check_record, prove_record, record_hash, stored_hash_index, tree_hash, Error, Hash,
    HashReader as _, Tile, TileHashReader, TileReader,
};

/// A C2SP tlog-cosignature/v1 verifier for `signed_note`: the signature is an 8-byte
/// timestamp and an Ed25519 signature over `cosignature/v1\ntime <T>\n` and the note.
struct Cosignature {
    name: String,
    id: u32,
    key: ed25519_dalek::VerifyingKey,
}

impl Cosignature {
    fn new(vkey: &str) -> Cosignature {
        let mut parts = vkey.splitn(3, '+');
        let name = parts.next().unwrap().to_owned();
        let _id = parts.next().unwrap();
        let bytes = B64.decode(parts.next().unwrap()).unwrap();
        assert_eq!(bytes[0], 0x04, "a cosignature/v1 key");
        let id = signed_note::key_id(&name, &bytes);
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes[1..].try_into().unwrap()).unwrap();
        Cosignature { name, id, key }
    }
}

impl Verifier for Cosignature {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_id(&self) -> u32 {
        self.id
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        let Some((time, signature)) = sig.split_first_chunk::<8>() else {
            return false;
        };
        let mut message =
            format!("cosignature/v1\ntime {}\n", u64::from_be_bytes(*time)).into_bytes();
        message.extend_from_slice(msg);
        ed25519_dalek::Signature::from_slice(signature)
            .is_ok_and(|s| self.key.verify(&message, &s).is_ok())
    }
}

/// Reads tiles from the broker over HTTP. `tlog_tiles` names a tile the way Go's tlog
/// does, `tile/8/<L>/<N>` (height 8); C2SP tlog-tiles drops the height.
struct Http {
    url: String,
    token: String,
    runtime: tokio::runtime::Handle,
}

impl TileReader for Http {
    fn height(&self) -> u8 {
        8
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, Error> {
        tiles
            .iter()
            .map(|tile| {
                let path = tile.path().replacen("tile/8/", "tile/", 1);
                let url = format!("{}/tlog/{path}", self.url);
                self.runtime.block_on(async {
                    let answer = reqwest::Client::new()
                        .get(&url)
                        .bearer_auth(&self.token)
                        .send()
                        .await
                        .map_err(|e| Error::InvalidInput(e.to_string()))?;
                    if !answer.status().is_success() {
                        return Err(Error::InvalidInput(format!("{url}: {}", answer.status())));
                    }
                    Ok(answer.bytes().await.unwrap().to_vec())
                })
            })
            .collect()
    }

    fn save_tiles(&self, _tiles: &[Tile], _data: &[Vec<u8>]) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlog_tiles_and_signed_note_verify_the_served_log_and_its_cosignature() {
    let dir = tempfile::tempdir().unwrap();
    let location = rofr_store::Location::Sqlite(dir.path().join("rofr.db"));
    tiles_and_cosignatures_interoperate(dir.path(), location).await;
}

/// The same on PostgreSQL, where the cosignatures are stored on the checkpoints' rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_too() {
    let Some(scratch) = rofr_store::ScratchDatabase::for_test("rofr_tiles", "interop") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    tiles_and_cosignatures_interoperate(dir.path(), scratch.location()).await;
    // The cosigned note is what the database holds.
    let stored = scratch.location().open().unwrap().checkpoints().unwrap();
    let (_, note) = stored.last().unwrap();
    assert!(note.contains("\n\u{2014} witness.azure.test "), "{note}");
}

async fn tiles_and_cosignatures_interoperate(
    dir: &std::path::Path,
    location: rofr_store::Location,
) {
    let app = witnessed::start_on(dir, location).await;
    // Past one full level-0 tile, so that a level-1 tile exists too.
    submit(&app.url, &app.buyer, "t", 200).await;
    let made = reqwest::Client::new()
        .post(format!("{}/v1/ledger/checkpoint", app.url))
        .bearer_auth(&app.buyer)
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 200);
    let mut status = witnessing(&app.url, &app.buyer).await;
    for _ in 0..100 {
        if status["witnessed_size"] == status["checkpoint_size"] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        status = witnessing(&app.url, &app.buyer).await;
    }
    assert_eq!(
        status["witnessed_size"], status["checkpoint_size"],
        "{status}"
    );

    // Any party with a token reads the checkpoint and the hash tiles.
    let azure = rofr_server::Broker::create_token(
        &app.location,
        &rofr_server::Party::Provider(rofr_engine::types::ProviderId::parse("azure").unwrap()),
        "azure",
    )
    .unwrap();
    let served = get(&app.url, &azure, "/tlog/checkpoint").await;
    let note = Note::from_bytes(served.as_bytes()).unwrap();
    let known = VerifierList::new(vec![
        Box::new(StandardVerifier::new(&app.log_key).unwrap()),
        Box::new(Cosignature::new(&app.witness_key)),
    ]);
    let (verified, _) = note.verify(&known).unwrap();
    let names: Vec<&str> = verified.iter().map(|s| s.name()).collect();
    assert!(names.contains(&"witness.azure.test"), "{names:?}");
    assert_eq!(verified.len(), 2, "the log's signature and the cosignature");
    let checkpoint = tlog_tiles::Checkpoint::from_bytes(note.text()).unwrap();
    let size = checkpoint.size();
    assert!(size > 256, "{size} entries");
    let root = *checkpoint.hash();

    let runtime = tokio::runtime::Handle::current();
    let (url, buyer) = (app.url.clone(), app.buyer.clone());
    tokio::task::spawn_blocking(move || {
        let reader = Http {
            url: url.clone(),
            token: azure,
            runtime: runtime.clone(),
        };
        let hashes = TileHashReader::new(size, root, &reader);
        // The root, recomputed from the served tiles alone.
        assert_eq!(tree_hash(size, &hashes).unwrap(), root);
        // Entry bundles go to the buyer: their entries hash to the leaves the tiles hold.
        let bundle = runtime.block_on(async {
            let answer = reqwest::Client::new()
                .get(format!("{url}/tlog/tile/entries/000"))
                .bearer_auth(&buyer)
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200);
            answer.bytes().await.unwrap().to_vec()
        });
        let mut entries = Vec::new();
        let mut rest = &bundle[..];
        while let [a, b, tail @ ..] = rest {
            let length = usize::from(u16::from_be_bytes([*a, *b]));
            entries.push(&tail[..length]);
            rest = &tail[length..];
        }
        assert_eq!(entries.len(), 256);
        for (n, entry) in entries.iter().enumerate().step_by(37) {
            let n = n as u64;
            let leaf: Hash = record_hash(entry);
            let stored = hashes.read_hashes(&[stored_hash_index(0, n)]).unwrap();
            assert_eq!(stored[0], leaf, "entry {n}");
            let proof = prove_record(size, n, &hashes).unwrap();
            check_record(&proof, size, root, n, leaf).unwrap();
        }
    })
    .await
    .unwrap();

    // Entry bundles carry confidential terms: a provider may not read them.
    let refused = reqwest::Client::new()
        .get(format!("{}/tlog/tile/entries/000", app.url))
        .bearer_auth(
            rofr_server::Broker::create_token(
                &app.location,
                &rofr_server::Party::Provider(
                    rofr_engine::types::ProviderId::parse("oracle").unwrap(),
                ),
                "oracle",
            )
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    // A tile beyond the checkpoint, and a path that is not a tile: 404.
    for path in ["tile/0/x999/999", "tile/0/5", "tile/entries/001.p/255"] {
        let answer = reqwest::Client::new()
            .get(format!("{}/tlog/{path}", app.url))
            .bearer_auth(&app.buyer)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 404, "{path}");
    }
    app.broker.shutdown();
}
