//! Amending the deal: what an amendment would change, checked before it is written.

use rofr_engine::deal::{changes, parse_deal, renamed, Change};
use rofr_engine::diagnostic::{Diagnostic, Severity};
use rofr_engine::engine::Impact;
use rofr_engine::lint::lint;
use rofr_engine::log::OpenNeeds;
use rofr_engine::types::Timestamp;

use super::Broker;

/// Why an amendment is refused: errors in its file, or its effective time.
#[derive(Debug)]
pub enum Refusal {
    /// Each names its file:line:column.
    Text(Vec<Diagnostic>),
    /// The effective time is before the last entry's time (named).
    Effective(String),
}

/// What an amendment would do (`POST /v1/deal/amendments` with `dry_run`, and what
/// `rofr deal amend` shows before it writes).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AmendmentPlan {
    /// The version it would become.
    pub version: u32,
    /// The version in force it is compared with, and its file.
    pub against: u32,
    pub against_file: String,
    /// Every key added, removed or written differently.
    #[schema(value_type = Vec<Object>)]
    pub changes: Vec<Change>,
    /// The linter's warnings on the new version (an error refuses it).
    #[schema(value_type = Vec<Object>)]
    pub warnings: Vec<Diagnostic>,
    /// What becomes of the needs open now.
    #[schema(value_type = Object)]
    pub impact: Impact,
}

impl Broker {
    /// The file and text of the version of the deal in force.
    pub fn text_in_force(&self) -> (u32, String, String) {
        let version = self.read(|e| e.deal_version());
        let entries = self.inner.deal_entries.read().expect("deal entries lock");
        match entries.iter().find(|e| e.version().version == version) {
            Some(kept) => {
                let v = kept.version();
                (version, v.file.to_owned(), v.text.to_owned())
            }
            None => (
                version,
                self.deal().file.clone(),
                self.deal_text().to_owned(),
            ),
        }
    }

    /// Checks `text` as the next version of the deal, in force from `effective`: it
    /// must parse, lint without errors as of now, keep the deal's name and take effect
    /// no earlier than the broker's clock (`None`: now). Gives what it would change, or every error
    /// found, each naming its file:line:column.
    pub fn plan_amendment(
        &self,
        file: &str,
        text: &str,
        effective: Option<Timestamp>,
        open_needs: OpenNeeds,
    ) -> Result<AmendmentPlan, Refusal> {
        let deal = parse_deal(file, text).map_err(Refusal::Text)?;
        let (clock, versions, last) = self.read(|e| {
            let last = e.effective(e.versions()).unwrap_or_else(|| e.clock());
            (e.clock(), e.versions(), last)
        });
        let now = clock.max(self.clock().now());
        // `None`: the moment the amendment is written, after this check.
        let effective = effective.unwrap_or(now);
        if effective < clock.max(last) {
            return Err(Refusal::Effective(format!(
                "effective {effective} is before the last entry's time {}",
                clock.max(last)
            )));
        }
        let mut findings = lint(&deal, now);
        let (against, against_file, against_text) = self.text_in_force();
        let changed =
            changes((&against_file, &against_text), (file, text)).map_err(Refusal::Text)?;
        findings.extend(renamed(&against_file, &changed));
        let (errors, warnings): (Vec<Diagnostic>, Vec<Diagnostic>) = findings
            .into_iter()
            .partition(|d| d.severity == Severity::Error);
        if !errors.is_empty() {
            return Err(Refusal::Text(errors));
        }
        let impact = self.read(|e| e.impact(&deal, effective.max(now), open_needs));
        Ok(AmendmentPlan {
            version: versions + 1,
            against,
            against_file,
            changes: changed,
            warnings,
            impact,
        })
    }
}
