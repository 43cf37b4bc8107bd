//! Period exports and the report read from one, offline.
//!
//! An export (docs/export.md) holds every entry of the needs active in a period, the
//! deal's entries, and one multi-leaf proof against a cosigned checkpoint. The report
//! (docs/report.md) is the period's conduct of the deal, computed from those entries
//! alone: first refusal need by need, the holder's answers, what its refusals cost,
//! concentration against the caps, approvals, deliveries and the deal's versions. Every
//! figure names the entries it came from; `verify` recomputes them all.

pub mod export;
pub mod figures;
pub mod html;

use std::io::BufRead;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rofr_engine::types::{ProviderId, Timestamp};
use rofr_ledger::{CosignerKey, VerifierKey};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use export::ExportError;
pub use figures::Figures;

pub const FORMAT: &str = "rofr-report/1";

/// The checkpoint the export was proved against, and who vouched for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointFacts {
    pub origin: String,
    pub size: u64,
    /// Base64 root hash.
    pub root: String,
    /// The name of the log key whose signature was checked.
    pub signed_by: String,
    /// Each witness whose cosignature was checked, with its time.
    pub cosigned_by: Vec<Cosigner>,
    /// Other signature lines, which no key given could check.
    pub unchecked_signatures: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cosigner {
    pub name: String,
    pub at: String,
}

/// A report: the period, the checkpoint, the export it was read from, the figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub format: String,
    pub from: String,
    pub to: String,
    pub shown_to: Option<String>,
    pub checkpoint: CheckpointFacts,
    /// How many entries the export holds, and the SHA-256 of its bytes.
    pub export_entries: u64,
    pub export_sha256: String,
    #[serde(flatten)]
    pub figures: Figures,
}

/// Reads and verifies an export (named `name` in errors) and computes its report.
pub fn make(
    input: impl BufRead,
    name: &str,
    key: &VerifierKey,
    witnesses: &[CosignerKey],
) -> Result<Report, ExportError> {
    let mut fold: Option<figures::Fold> = None;
    let verified = export::read(input, name, key, witnesses, &mut |header, index, data| {
        if fold.is_none() {
            fold = Some(fold_for(header)?);
        }
        fold.as_mut().expect("made").add(index, data)
    })?;
    let header = &verified.header;
    let fold = match fold {
        Some(fold) => fold,
        // An export of no entry: its header was not seen by an entry.
        None => fold_for(header).map_err(|message| ExportError {
            where_: Some(format!("{name}:1")),
            entry: None,
            message,
        })?,
    };
    let mut figures = fold.finish();
    // Inclusion is proved; completeness is the broker's word.
    let skipped = verified
        .span
        .map_or(0, |(first, last)| last - first + 1 - verified.entries);
    figures.not_verified.push(format!(
        "That nothing was left out: the proof shows each entry is in the log, not that the export holds every entry of the period's needs. Between its first and last entries the log holds {skipped} entries the export does not (entries of needs not active in the period{}).",
        if header.shown_to.is_some() { ", or not shown to this provider" } else { "" }
    ));
    if !verified.unchecked_signatures.is_empty() {
        figures.not_verified.push(format!(
            "The checkpoint carries signatures by {} that no key given could check.",
            verified.unchecked_signatures.join(", ")
        ));
    }
    if verified.cosigned_by.is_empty() {
        figures.not_verified.push(
            "No witness key was given: the checkpoint is vouched for by the log's operator alone."
                .into(),
        );
    }
    Ok(Report {
        format: FORMAT.into(),
        from: header.from.clone(),
        to: header.to.clone(),
        shown_to: header.shown_to.clone(),
        checkpoint: CheckpointFacts {
            origin: verified.checkpoint.origin.clone(),
            size: verified.checkpoint.size,
            root: B64.encode(verified.checkpoint.root),
            signed_by: verified.signed_by.clone(),
            cosigned_by: verified
                .cosigned_by
                .iter()
                .map(|(name, at)| Cosigner {
                    name: name.clone(),
                    at: Timestamp::from_unix_seconds((*at).min(i64::MAX as u64) as i64).to_string(),
                })
                .collect(),
            unchecked_signatures: verified.unchecked_signatures.clone(),
        },
        export_entries: verified.entries,
        export_sha256: verified.sha256,
        figures,
    })
}

/// The fold for the period and view a header names.
fn fold_for(header: &export::Header) -> Result<figures::Fold, String> {
    let parse = |field: &str, text: &str| {
        Timestamp::parse(text).map_err(|e| format!("the header's `{field}`: {e}"))
    };
    let viewer = header
        .shown_to
        .as_deref()
        .map(|p| ProviderId::parse(p).map_err(|e| format!("the header's `shown_to`: {e}")))
        .transpose()?;
    Ok(figures::Fold::new(
        parse("from", &header.from)?,
        parse("to", &header.to)?,
        viewer,
    ))
}

/// Why a report did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("{0}")]
    Export(#[from] ExportError),
    #[error("the report is not rofr report JSON: {0}")]
    Unreadable(String),
    #[error("figure `{figure}` differs: the report says {stated}, the export gives {computed}")]
    Figure {
        figure: String,
        stated: String,
        computed: String,
    },
}

/// Recomputes every figure of `report_json` from the export and names the first that
/// differs. The witnesses are those the report says cosigned, where their keys are
/// given.
pub fn verify(
    report_json: &[u8],
    input: impl BufRead,
    name: &str,
    key: &VerifierKey,
    witnesses: &[CosignerKey],
) -> Result<Report, Mismatch> {
    let stated: &RawValue =
        serde_json::from_slice(report_json).map_err(|e| Mismatch::Unreadable(e.to_string()))?;
    let computed = make(input, name, key, witnesses)?;
    let text = serde_json::to_string(&computed).expect("a report serializes");
    let made: &RawValue = serde_json::from_str(&text).expect("just written");
    if let Some((figure, a, b)) = first_raw_difference("", stated, made)? {
        return Err(Mismatch::Figure {
            figure,
            stated: a,
            computed: b,
        });
    }
    Ok(computed)
}

/// Parts of a report larger than this are compared part by part, so that a large
/// report is never held as a tree of values whole.
const WHOLE: usize = 1 << 16;

/// [`first_difference`] over unparsed JSON: large objects and arrays are opened one
/// level and their members compared in turn.
fn first_raw_difference(
    path: &str,
    a: &RawValue,
    b: &RawValue,
) -> Result<Option<(String, String, String)>, Mismatch> {
    use std::collections::BTreeMap;
    let unreadable = |e: serde_json::Error| Mismatch::Unreadable(format!("{path}: {e}"));
    let (x, y) = (a.get().trim_start(), b.get().trim_start());
    let large = x.len().max(y.len()) > WHOLE;
    if large && x.starts_with('{') && y.starts_with('{') {
        let x: BTreeMap<String, &RawValue> = serde_json::from_str(x).map_err(unreadable)?;
        let y: BTreeMap<String, &RawValue> = serde_json::from_str(y).map_err(unreadable)?;
        for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
            let p = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match (x.get(key), y.get(key)) {
                (Some(u), Some(v)) => {
                    if let Some(d) = first_raw_difference(&p, u, v)? {
                        return Ok(Some(d));
                    }
                }
                (u, v) => {
                    let show = |r: Option<&&RawValue>| {
                        r.map_or("nothing".to_owned(), |r| shorten(r.get()))
                    };
                    return Ok(Some((p, show(u), show(v))));
                }
            }
        }
        return Ok(None);
    }
    if large && x.starts_with('[') && y.starts_with('[') {
        let x: Vec<&RawValue> = serde_json::from_str(x).map_err(unreadable)?;
        let y: Vec<&RawValue> = serde_json::from_str(y).map_err(unreadable)?;
        for (i, (u, v)) in x.iter().zip(&y).enumerate() {
            if let Some(d) = first_raw_difference(&format!("{path}[{i}]"), u, v)? {
                return Ok(Some(d));
            }
        }
        return Ok((x.len() != y.len()).then(|| {
            (
                format!("{path} (length)"),
                x.len().to_string(),
                y.len().to_string(),
            )
        }));
    }
    let x: serde_json::Value = serde_json::from_str(x).map_err(unreadable)?;
    let y: serde_json::Value = serde_json::from_str(y).map_err(unreadable)?;
    Ok(first_difference(path, &x, &y))
}

fn shorten(text: &str) -> String {
    if text.len() > 80 {
        format!("{}…", &text[..text.floor_char_boundary_compat(80)])
    } else {
        text.to_owned()
    }
}

/// The path of the first place two JSON values differ, and each side there.
fn first_difference(
    path: &str,
    a: &serde_json::Value,
    b: &serde_json::Value,
) -> Option<(String, String, String)> {
    use serde_json::Value;
    let at = |p: &str| {
        if p.is_empty() {
            "(the whole report)".to_owned()
        } else {
            p.to_owned()
        }
    };
    let show = |v: Option<&Value>| v.map_or("nothing".to_owned(), |v| shorten(&v.to_string()));
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = first_difference(&p, u, v) {
                            return Some(d);
                        }
                    }
                    (u, v) => return Some((p, show(u), show(v))),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                if let Some(d) = first_difference(&format!("{path}[{i}]"), u, v) {
                    return Some(d);
                }
            }
            (x.len() != y.len()).then(|| {
                (
                    format!("{} (length)", at(path)),
                    x.len().to_string(),
                    y.len().to_string(),
                )
            })
        }
        _ => (a != b).then(|| (at(path), show(Some(a)), show(Some(b)))),
    }
}

trait FloorBoundary {
    fn floor_char_boundary_compat(&self, at: usize) -> usize;
}

impl FloorBoundary for str {
    fn floor_char_boundary_compat(&self, at: usize) -> usize {
        (0..=at.min(self.len()))
            .rev()
            .find(|&i| self.is_char_boundary(i))
            .unwrap_or(0)
    }
}

/// A period's bound as given: a date (`2025-10-01`, its midnight UTC) or an RFC 3339
/// time. The error names `field`.
pub fn parse_bound(field: &str, text: &str) -> Result<Timestamp, String> {
    let full = if text.len() == 10 && text.as_bytes().get(4) == Some(&b'-') {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    Timestamp::parse(&full).map_err(|e| {
        format!("`{field}`: `{text}` is neither a date (YYYY-MM-DD) nor an RFC 3339 time: {e}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_difference_deep_in_a_large_report_is_named_by_its_path() {
        let rows: Vec<String> = (0..3000)
            .map(|i| {
                format!(
                    r#"{{"need":"n-{i}","i1":"kept","entries":[{i},{}]}}"#,
                    i + 1
                )
            })
            .collect();
        let honest = format!(
            r#"{{"format":"rofr-report/1","first_refusal":{{"needs":[{}],"in_scope":{{"value":3000.0,"entries":[]}}}}}}"#,
            rows.join(",")
        );
        assert!(honest.len() > WHOLE);
        // Pretty-printed, with floats written as integers: the same figures.
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&honest).unwrap(),
        )
        .unwrap();
        assert_eq!(
            first_raw_difference("", raw(&pretty), raw(&honest)).unwrap(),
            None
        );
        let changed = honest.replace(
            r#""need":"n-2718","i1":"kept""#,
            r#""need":"n-2718","i1":"broken""#,
        );
        let (figure, stated, computed) = first_raw_difference("", raw(&changed), raw(&honest))
            .unwrap()
            .unwrap();
        assert_eq!(figure, "first_refusal.needs[2718].i1");
        assert_eq!(
            (stated.as_str(), computed.as_str()),
            (r#""broken""#, r#""kept""#)
        );
        // A figure the broker never made is named too.
        let extra = honest.replacen('{', r#"{"made_up":{"value":1.0},"#, 1);
        let (figure, _, computed) = first_raw_difference("", raw(&extra), raw(&honest))
            .unwrap()
            .unwrap();
        assert_eq!((figure.as_str(), computed.as_str()), ("made_up", "nothing"));
        // A row dropped: the length.
        let dropped = honest.replacen(&format!("{},", rows[5]), "", 1);
        let (figure, _, _) = first_raw_difference("", raw(&dropped), raw(&honest))
            .unwrap()
            .unwrap();
        assert_eq!(figure, "first_refusal.needs[5].entries[0]");
    }
}
