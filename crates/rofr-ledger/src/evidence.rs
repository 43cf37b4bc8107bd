//! Evidence bundles (docs/evidence.md): every entry of one need with its inclusion proof
//! against a signed checkpoint, and their offline verification — the signature, every
//! proof, and the first-refusal story told in plain words.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rofr_engine::invariants::refusals_cover;
use rofr_engine::log::Entry as LogEntry;
use rofr_engine::state::State;
use rofr_engine::types::{Gpus, Price};
use rofr_engine::{Event, EventKind};
use serde::{Deserialize, Serialize};

use crate::note::{Checkpoint, CosignerKey, NoteError, VerifierKey};
use crate::tree::{leaf_hash, verify_inclusion, Hash, LeafSource, MerkleTree, Unreadable};

pub const FORMAT: &str = "rofr-evidence/1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    pub format: String,
    pub verifier_key: String,
    pub checkpoint: String,
    pub holder: Option<String>,
    /// Set where the bundle was made for one provider and holds only what it may see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown_to: Option<View>,
    pub entries: Vec<Entry>,
}

/// Whom a partial bundle was made for, and how much of the need it leaves out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    /// The provider the bundle was made for.
    pub provider: String,
    /// How many entries of the need are not in the bundle.
    pub withheld: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub index: u64,
    /// Base64 of the leaf bytes (the event's JSON exactly as logged).
    pub data: String,
    /// Base64 hashes of the inclusion proof against the checkpoint's tree.
    pub proof: Vec<String>,
}

/// Builds a bundle for entries (index, bytes) of one need, proved against the tree of
/// the checkpoint's size; `source` reads back what a forgetful tree left out. `None`
/// when an entry lies beyond the checkpoint. The caller names the holder, and the
/// provider the bundle is for where it is partial.
pub fn build(
    tree: &MerkleTree,
    source: &mut LeafSource,
    checkpoint: &Checkpoint,
    signed_checkpoint: String,
    verifier_key: String,
    entries: &[(u64, Vec<u8>)],
) -> Result<Option<Bundle>, Unreadable> {
    let mut proved = Vec::with_capacity(entries.len());
    for (index, data) in entries {
        let Some(proof) = tree.inclusion_proof_from(*index, checkpoint.size, source)? else {
            return Ok(None);
        };
        proved.push(Entry {
            index: *index,
            data: B64.encode(data),
            proof: proof.iter().map(|h| B64.encode(h)).collect(),
        });
    }
    Ok(Some(Bundle {
        format: FORMAT.into(),
        verifier_key,
        checkpoint: signed_checkpoint,
        holder: None,
        shown_to: None,
        entries: proved,
    }))
}

/// Why a bundle does not verify, and the entry at fault where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{reason}", entry.map(|e| format!("entry {e}: ")).unwrap_or_default())]
pub struct Failure {
    pub entry: Option<u64>,
    pub reason: String,
}

fn fail(entry: Option<u64>, reason: impl Into<String>) -> Failure {
    Failure {
        entry,
        reason: reason.into(),
    }
}

/// What a verified bundle shows.
#[derive(Debug, Clone)]
pub struct Report {
    pub need: String,
    pub checkpoint: Checkpoint,
    /// The story, one line per entry that matters, then the verdict.
    pub lines: Vec<String>,
}

fn dollars(price: Price) -> String {
    format!("${}/GPU-h", price.dollars())
}

/// Verifies a bundle offline with the verifier key the user trusts.
pub fn verify(bundle_json: &[u8], key: &VerifierKey) -> Result<Report, Failure> {
    verify_witnessed(bundle_json, key, &[])
}

/// [`verify`], also requiring a valid cosignature on the checkpoint by every witness in
/// `witnesses` (C2SP `tlog-cosignature/v1`).
pub fn verify_witnessed(
    bundle_json: &[u8],
    key: &VerifierKey,
    witnesses: &[CosignerKey],
) -> Result<Report, Failure> {
    let bundle: Bundle = serde_json::from_slice(bundle_json)
        .map_err(|e| fail(None, format!("the bundle is not rofr evidence JSON: {e}")))?;
    if bundle.format != FORMAT {
        return Err(fail(
            None,
            format!("unknown format `{}`; expected `{FORMAT}`", bundle.format),
        ));
    }
    let body = key
        .open(&bundle.checkpoint)
        .map_err(|e| fail(None, format!("the checkpoint: {e}")))?;
    let checkpoint =
        Checkpoint::parse(body).map_err(|e| fail(None, format!("the checkpoint: {e}")))?;
    let mut lines = vec![format!(
        "Checkpoint signed by {} over the first {} entries of log \"{}\".",
        key.name(),
        checkpoint.size,
        checkpoint.origin
    )];
    for witness in witnesses {
        match witness.check(&bundle.checkpoint) {
            Ok(at) => lines.push(format!(
                "Cosigned by witness {} at {}: it saw this log grow to {} entries with no other history.",
                witness.name(),
                rofr_engine::types::Timestamp::from_unix_seconds(at.min(i64::MAX as u64) as i64),
                checkpoint.size
            )),
            Err(NoteError::NoSignature(_)) => {
                return Err(fail(
                    None,
                    format!(
                        "the checkpoint carries no cosignature by witness `{}`: no witness you require vouched that this is the history it saw (the log may have been rewritten, or the witness has not cosigned it yet)",
                        witness.name()
                    ),
                ))
            }
            Err(e) => {
                return Err(fail(
                    None,
                    format!("the cosignature by witness `{}`: {e}", witness.name()),
                ))
            }
        }
    }

    let mut events: Vec<(u64, Event)> = Vec::new();
    let mut deals: Vec<(u64, LogEntry)> = Vec::new();
    let mut last_index: Option<u64> = None;
    for entry in &bundle.entries {
        let at = Some(entry.index);
        if last_index.is_some_and(|last| entry.index <= last) {
            return Err(fail(at, "entries are not in increasing index order"));
        }
        last_index = Some(entry.index);
        let data = B64
            .decode(&entry.data)
            .map_err(|e| fail(at, format!("data is not base64: {e}")))?;
        let proof: Vec<Hash> = entry
            .proof
            .iter()
            .map(|p| B64.decode(p).ok().and_then(|h| <Hash>::try_from(h).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| fail(at, "a proof hash is not the base64 of 32 bytes"))?;
        if !verify_inclusion(
            entry.index,
            checkpoint.size,
            &leaf_hash(&data),
            &proof,
            &checkpoint.root,
        ) {
            return Err(fail(
                at,
                "its inclusion proof does not lead to the checkpoint's root: the entry was altered, or is not in the log",
            ));
        }
        match LogEntry::from_json(&data) {
            Ok(LogEntry::Event(event)) => events.push((entry.index, event)),
            Ok(deal @ (LogEntry::Deal(_) | LogEntry::Amended(_))) => {
                deals.push((entry.index, deal));
            }
            Err(e) => return Err(fail(at, format!("not a rofr event: {e}"))),
        }
    }
    lines.push(format!(
        "All {} entries are in the log at the indexes given.",
        bundle.entries.len()
    ));
    // Every entry is of one need, the first one's.
    if let Some((_, first)) = events.first() {
        if let Some((index, stray)) = events.iter().find(|(_, e)| e.need != first.need) {
            return Err(fail(
                Some(*index),
                format!("belongs to need `{}`, not `{}`", stray.need, first.need),
            ));
        }
    }
    let partial = bundle
        .shown_to
        .as_ref()
        .filter(|view| bundle.holder.as_ref() != Some(&view.provider));
    if let Some(view) = partial {
        // A provider's bundle without the need's submission: what it shows is checked,
        // and what it cannot show is said.
        let need = provider_story(view, &events, &mut lines)?;
        return Ok(Report {
            need,
            checkpoint,
            lines,
        });
    }
    let need = match events.first() {
        Some((_, e)) if matches!(e.kind, EventKind::NeedSubmitted(_)) => e.need.to_string(),
        Some((index, _)) => {
            return Err(fail(
                Some(*index),
                "the first entry is not the need's submission",
            ))
        }
        None => return Err(fail(None, "the bundle holds no entries")),
    };
    governing_terms(&deals, &events, &mut lines)?;
    story(&need, &bundle.holder, &events, &mut lines)?;
    if let Some(view) = &bundle.shown_to {
        lines.push(format!(
            "This is {}'s view of the need: {} of its entries are not shown to this party (other providers' requests for quotes, quotes and reservations).",
            view.provider, view.withheld
        ));
    }
    Ok(Report {
        need,
        checkpoint,
        lines,
    })
}

/// Checks the deal entries a bundle holds against the need's submission (and any
/// move to another version), and says which terms governed the need: each version's
/// number and hash, and the first-refusal clause it gives, whose threshold the story
/// then judges I1 by.
fn governing_terms(
    deals: &[(u64, LogEntry)],
    events: &[(u64, Event)],
    lines: &mut Vec<String>,
) -> Result<(), Failure> {
    for (index, deal) in deals {
        if !deal.is_intact() {
            return Err(fail(
                Some(*index),
                "the deal's text does not match its SHA-256: the entry was altered",
            ));
        }
    }
    for (at, event) in events {
        let (version, holder, variant, clause, threshold) = match &event.kind {
            EventKind::NeedSubmitted(s) => match s.deal_version {
                Some(v) => (
                    v,
                    &s.holder,
                    s.variant,
                    s.first_refusal,
                    s.reoffer_threshold,
                ),
                None => continue,
            },
            EventKind::TermsChanged {
                version,
                holder,
                variant,
                first_refusal,
                reoffer_threshold,
                ..
            } => (
                *version,
                holder,
                *variant,
                *first_refusal,
                *reoffer_threshold,
            ),
            _ => continue,
        };
        let found = deals.iter().find_map(|(index, d)| {
            d.version()
                .filter(|v| v.version == version)
                .map(|v| (*index, v))
        });
        let Some((index, deal)) = found else {
            lines.push(format!(
                "The need names deal version {version}; the bundle holds no entry of it, so its terms are those the entry #{at} copied."
            ));
            continue;
        };
        let parsed = rofr_engine::deal::parse_deal(deal.file, deal.text).map_err(|errors| {
            let first = errors
                .first()
                .map(|e| e.message.clone())
                .unwrap_or_default();
            fail(
                Some(index),
                format!("the deal's text does not parse: {first}"),
            )
        })?;
        let since = match deal.open_needs {
            Some(rule) => format!(
                ", an amendment effective {} (open needs {})",
                deal.effective,
                rule.as_str()
            ),
            None => String::new(),
        };
        let how = if matches!(event.kind, EventKind::TermsChanged { .. }) {
            format!("From #{at} governed")
        } else {
            "Governed".to_owned()
        };
        lines.push(format!(
            "{how} by deal \"{}\" version {version} (#{index}, {} with SHA-256 {}{since}).",
            deal.deal, deal.file, deal.sha256
        ));
        let Some(clause) = clause else {
            if holder.is_some() {
                return Err(fail(
                    Some(*at),
                    "names a holder but no first-refusal clause",
                ));
            }
            lines.push(format!(
                "Version {version} gives no first-refusal right over the need."
            ));
            continue;
        };
        let Some(right) = parsed.first_refusals.get(clause) else {
            return Err(fail(
                Some(*at),
                format!("names first_refusal[{clause}], which version {version} lacks"),
            ));
        };
        let agrees = holder.as_ref() == Some(&right.holder)
            && variant == Some(right.variant)
            && threshold == Some(right.reoffer_threshold);
        if !agrees {
            return Err(fail(
                Some(*at),
                format!(
                    "its holder, variant or threshold differ from {} of version {version}",
                    right.clause
                ),
            ));
        }
        lines.push(format!(
            "{}: {}. First refusal is judged under these terms.",
            right.clause,
            clause_terms(right).join("; ")
        ));
    }
    Ok(())
}

/// A first-refusal clause's terms, in words.
fn clause_terms(right: &rofr_engine::deal::FirstRefusal) -> Vec<String> {
    let mut terms = vec![
        format!("{} holds a {} right", right.holder, right.variant.as_str()),
        format!("window {}", right.window),
        format!(
            "partial acceptance {}",
            if right.partial {
                "allowed"
            } else {
                "not allowed"
            }
        ),
        format!("re-offer threshold {}%", right.reoffer_threshold * 100.0),
    ];
    if let Some(window) = right.third_party_window {
        terms.push(format!("third-party window {window}"));
    }
    if !right.offer_prices.is_empty() {
        let prices: Vec<String> = right
            .offer_prices
            .iter()
            .map(|(sku, price)| format!("{sku} {}", dollars(*price)))
            .collect();
        terms.push(format!("offer prices {}", prices.join(", ")));
    }
    let until = right
        .term
        .until
        .map_or("open-ended".to_owned(), |u| format!("until {u}"));
    terms.push(format!("term from {} {until}", right.term.from));
    terms
}

/// The entries of a provider's bundle that is not the holder's: each must be of one
/// need and name that provider; they are told as they stand. Returns the need's id.
fn provider_story(
    view: &View,
    events: &[(u64, Event)],
    lines: &mut Vec<String>,
) -> Result<String, Failure> {
    let Some((_, first)) = events.first() else {
        return Err(fail(None, "the bundle holds no entries"));
    };
    let need = first.need.to_string();
    for (index, event) in events {
        let at = Some(*index);
        if event.kind.provider().map(|p| p.as_str()) != Some(view.provider.as_str()) {
            return Err(fail(
                at,
                format!(
                    "a {} that is not about {}, in a bundle made for it",
                    event.kind.type_name(),
                    view.provider
                ),
            ));
        }
        lines.push(format!(
            "#{index} {}: {} for {}{}.",
            event.at,
            event.kind.type_name(),
            view.provider,
            terms(&event.kind)
        ));
    }
    lines.push(format!(
        "This is {}'s view of need {need}: the {} entries about it are in the log; {} entries of the need are not shown to this party. Whether first refusal was kept is shown by the holder's or the auditor's bundle.",
        view.provider,
        events.len(),
        view.withheld
    ));
    Ok(need)
}

/// The GPUs and price an event names, as words.
fn terms(kind: &EventKind) -> String {
    let json = serde_json::to_value(kind).unwrap_or_default();
    let mut words = String::new();
    if let Some(gpus) = json.get("gpus").and_then(|g| g.as_u64()) {
        words.push_str(&format!(", {gpus} GPUs"));
    }
    if let Some(price) = json.get("price_per_gpu_hour").and_then(|p| p.as_f64()) {
        words.push_str(&format!(" at ${price}/GPU-h"));
    }
    words
}

/// Replays the need's events and checks I1 at every award to someone other than the
/// holder, telling what happened along the way.
fn story(
    need: &str,
    holder: &Option<String>,
    events: &[(u64, Event)],
    lines: &mut Vec<String>,
) -> Result<(), Failure> {
    let mut state = State::default();
    let mut third_party_gpus = Gpus::ZERO;
    // Where the need moved to another version, and to which.
    let mut moved: Option<(u64, u32)> = None;
    for (index, event) in events {
        let at = Some(*index);
        state.apply(event);
        let n = state.need(need).expect("the need the events are about");
        let when = event.at;
        let line = match &event.kind {
            EventKind::NeedSubmitted(submitted) => {
                let rofr_engine::event::NeedSubmitted { sku, gpus, hours, holder: logged, variant, .. } = &**submitted;
                let right = match (logged, variant) {
                    (Some(h), Some(v)) => format!(
                        "{h} holds a {} right (re-offer threshold {}%)",
                        v.as_str(),
                        n.reoffer_threshold * 100.0
                    ),
                    _ => "no first-refusal right covers it".to_owned(),
                };
                Some(format!("need {need}: {gpus} {sku} for {hours} h, submitted {when}; {right}."))
            }
            EventKind::OfferSent { provider, gpus, price_per_gpu_hour, deadline, reoffer, .. } => Some(format!(
                "#{index} {when}: {}offered {gpus} GPUs to {provider} at {}, answer due {deadline}.",
                if *reoffer { "re-" } else { "" },
                dollars(*price_per_gpu_hour)
            )),
            EventKind::OfferAccepted { provider, gpus, price_per_gpu_hour, .. } => {
                Some(format!("#{index} {when}: {provider} accepted {gpus} GPUs at {}.", dollars(*price_per_gpu_hour)))
            }
            EventKind::OfferDeclined { provider, gpus, reason, price_per_gpu_hour, .. } => Some(format!(
                "#{index} {when}: {provider} refused {gpus} GPUs at {} ({}).",
                dollars(*price_per_gpu_hour),
                reason.as_str()
            )),
            EventKind::OfferLapsed { provider, gpus, price_per_gpu_hour, .. } => Some(format!(
                "#{index} {when}: {provider} let the offer of {gpus} GPUs at {} lapse: a deemed refusal.",
                dollars(*price_per_gpu_hour)
            )),
            EventKind::MatchOffered { provider, gpus, price_per_gpu_hour, against, .. } => Some(format!(
                "#{index} {when}: {provider} may match {against}'s terms for {gpus} GPUs at {}.",
                dollars(*price_per_gpu_hour)
            )),
            EventKind::MatchAccepted { provider, gpus, .. } => Some(format!("#{index} {when}: {provider} matched for {gpus} GPUs.")),
            EventKind::MatchDeclined { provider, gpus, .. } => Some(format!("#{index} {when}: {provider} declined to match for {gpus} GPUs.")),
            EventKind::MatchLapsed { provider, gpus, .. } => Some(format!("#{index} {when}: {provider} let the match of {gpus} GPUs lapse.")),
            EventKind::HolderCapped { provider, gpus, .. } => Some(format!("#{index} {when}: a cap kept {gpus} GPUs from {provider}.")),
            EventKind::AwardMade { provider, gpus, price_per_gpu_hour, .. }
            | EventKind::ApprovalRequested { provider, gpus, price_per_gpu_hour, .. } => {
                let verb = if matches!(event.kind, EventKind::AwardMade { .. }) { "awarded" } else { "proposed for approval" };
                let third_party = n.holder.as_ref().is_some_and(|h| h != provider);
                if third_party {
                    let awards: Vec<(Gpus, Price)> = n.third_party_awards().map(|a| (a.gpus, a.price)).collect();
                    if !refusals_cover(&n.refusals, &awards, n.reoffer_threshold) {
                        return Err(fail(at, format!(
                            "{gpus} GPUs {verb} to {provider} at {} without the holder having refused them on terms at least as good: first refusal (I1) broken",
                            dollars(*price_per_gpu_hour)
                        )));
                    }
                    third_party_gpus = awards.iter().map(|(g, _)| *g).sum();
                    Some(format!(
                        "#{index} {when}: {verb} {gpus} GPUs to {provider} at {}; covered by the holder's refusals.",
                        dollars(*price_per_gpu_hour)
                    ))
                } else {
                    Some(format!("#{index} {when}: {verb} {gpus} GPUs to {provider} at {}.", dollars(*price_per_gpu_hour)))
                }
            }
            EventKind::AwardFailed { provider, gpus, .. } => Some(format!("#{index} {when}: {provider} failed to deliver {gpus} GPUs.")),
            EventKind::SourcingClosed { round, planned_gpus, proof: Some(proof), .. } => Some(match proof.status {
                rofr_engine::ProofStatus::Optimal => format!(
                    "#{index} {when}: round {round} closed with {planned_gpus} GPUs placed at a cost proven least (${:.2}) among every placement of the quotes of {} need(s) under the caps.",
                    proof.cost, proof.needs
                ),
                rofr_engine::ProofStatus::Bounded => format!(
                    "#{index} {when}: round {round} closed with {planned_gpus} GPUs placed at ${:.2}; the solver's work limit stopped the proof at a bound of ${:.2}, so the placement is at most {:.4}% above the least cost.",
                    proof.cost, proof.bound, proof.gap() * 100.0
                ),
            }),
            EventKind::RightRevived { provider, gpus } => Some(format!("#{index} {when}: {provider}'s right revived for {gpus} GPUs.")),
            EventKind::NeedExpired { gpus } => Some(format!("#{index} {when}: the need expired with {gpus} GPUs unplaced.")),
            EventKind::NeedCancelled { .. } => Some(format!("#{index} {when}: the buyer cancelled the need.")),
            EventKind::OfferWithdrawn { provider, gpus, version, .. } => Some(format!(
                "#{index} {when}: the offer of {gpus} GPUs to {provider} was withdrawn: version {version} of the deal ended the right it was made under."
            )),
            EventKind::TermsChanged { version, holder: now, .. } => {
                moved = Some((*index, *version));
                Some(match now {
                    Some(h) => format!("#{index} {when}: the need moved to version {version} of the deal; {h} holds the right over it from here."),
                    None => format!("#{index} {when}: the need moved to version {version} of the deal, which gives no first-refusal right over it."),
                })
            }
            _ => None,
        };
        lines.extend(line);
    }
    let n = state.need(need).expect("the need the events are about");
    // The bundle names the holder as the need stands now, after any move.
    if n.holder.as_ref().map(|h| h.to_string()) != *holder {
        return Err(fail(
            None,
            format!(
                "the bundle names holder {holder:?}, but the log says {:?}",
                n.holder.as_ref().map(|h| h.as_str())
            ),
        ));
    }
    if let (Some((index, version)), None) = (moved, &n.holder) {
        lines.push(format!(
            "The evidence shows: until #{index} the need was offered under the terms it was submitted under; from #{index} version {version} of the deal gave no holder a claim on it."
        ));
        return Ok(());
    }
    lines.push(match &n.holder {
        Some(h) => format!(
            "The evidence shows: {h} was offered this need first, and every GPU awarded to another provider ({third_party_gpus} in all) was refused by {h} on terms at least as good, within the {}% threshold.",
            n.reoffer_threshold * 100.0
        ),
        None => "The evidence shows: no first-refusal holder had a claim on this need.".to_owned(),
    });
    Ok(())
}
