//! A need: compute the buyer wants placed (docs/lifecycle.md).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::deal::NeedProfile;
use crate::types::{Gpus, NeedId, Price, Region, Sku, Tag, Timestamp, Workload};

/// What the buyer submits. Field checks that need no context (positive GPUs, ordered
/// dates) happen in [`NeedSpec::validate`]; the engine adds those that need the clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NeedSpec {
    pub id: NeedId,
    pub sku: Sku,
    pub gpus: Gpus,
    /// Regions the need may be placed in; empty means any.
    #[serde(default)]
    pub regions: BTreeSet<Region>,
    pub earliest_start: Timestamp,
    pub latest_start: Timestamp,
    /// How long the GPUs are needed, in hours.
    pub hours: u32,
    pub workload: Workload,
    #[serde(default)]
    pub tags: BTreeSet<Tag>,
    /// The most the buyer will pay anyone, per GPU-hour.
    pub max_price_per_gpu_hour: Price,
    /// The price offered to the first-refusal holder, where it differs from the deal's
    /// price list (and from the maximum, used where neither sets one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_price_per_gpu_hour: Option<Price>,
    #[serde(default)]
    pub priority: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<String>,
    /// The need must be placed by then, or it expires with what is left unmet.
    pub decide_by: Timestamp,
}

/// A field of a need that cannot be accepted, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

/// The most GPUs one need may ask for: more than twice the largest single site
/// reported (some 400,000 GB200s at Abilene).
pub const MAX_GPUS: u32 = 1_000_000;
/// The longest a need may last: ten years of hours.
pub const MAX_HOURS: u32 = 87_600;
/// The first and last moments a need's dates may name. The end of a need, its
/// deadlines and its windows all fall within a few decades after these, far inside
/// the years a [`Timestamp`] can hold.
pub const FIRST_DATE: Timestamp = Timestamp::from_unix_seconds_const(0);
pub const LAST_DATE: Timestamp = Timestamp::from_unix_seconds_const(32_503_680_000 - 1);
/// How far ahead of its submission a need's decision may lie, in days. Until then an
/// unplaced need is sourced again round after round (each quote window, or each retry),
/// so a decision centuries away would fill the log without end; two years is longer
/// than any compute buyer plans a single placement.
pub const MAX_DECISION_DAYS: i64 = 730;
/// The most regions, or tags, one need may list.
pub const MAX_LIST_ITEMS: usize = 64;
/// The longest reservation id, in characters.
pub const MAX_SHORT_TEXT: usize = 200;
/// The longest free text (a launch name, a reason, a reservation id), in characters.
pub const MAX_TEXT_CHARS: usize = 500;

/// Checks free text a party sends: at most `max_chars` characters, none of them a
/// control character (the log is read by people and by other tools).
pub fn check_text(field: &'static str, text: &str, max_chars: usize) -> Result<(), FieldError> {
    if text.chars().count() > max_chars {
        return Err(FieldError {
            field,
            message: format!("{field} is longer than {max_chars} characters"),
        });
    }
    if text.chars().any(char::is_control) {
        return Err(FieldError {
            field,
            message: format!("{field} holds a control character (a line break, a tab or another); send plain text"),
        });
    }
    Ok(())
}

impl NeedSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        let fail = |field, message: String| Err(FieldError { field, message });
        if self.gpus == Gpus::ZERO {
            return fail("gpus", "a need asks for at least one GPU".into());
        }
        if self.gpus.get() > MAX_GPUS {
            return fail("gpus", format!("a need asks for at most {MAX_GPUS} GPUs"));
        }
        if self.hours == 0 {
            return fail("hours", "a need lasts at least one hour".into());
        }
        if self.hours > MAX_HOURS {
            return fail(
                "hours",
                format!("a need lasts at most {MAX_HOURS} hours (ten years)"),
            );
        }
        for (field, at) in [
            ("earliest_start", self.earliest_start),
            ("latest_start", self.latest_start),
            ("decide_by", self.decide_by),
        ] {
            if !(FIRST_DATE..=LAST_DATE).contains(&at) {
                return fail(
                    field,
                    format!("{field} {at} is outside {FIRST_DATE} to {LAST_DATE}"),
                );
            }
        }
        if self.latest_start < self.earliest_start {
            return fail(
                "latest_start",
                "latest_start is before earliest_start".into(),
            );
        }
        if self.decide_by > self.latest_start {
            return fail(
                "decide_by",
                format!(
                    "decide_by {} is after latest_start {}: a need must be placed before it can start",
                    self.decide_by, self.latest_start
                ),
            );
        }
        if self.max_price_per_gpu_hour == Price::default() {
            return fail(
                "max_price_per_gpu_hour",
                "a maximum price of zero admits no quote; give the most you will pay per GPU-hour"
                    .into(),
            );
        }
        if self
            .offer_price_per_gpu_hour
            .is_some_and(|p| p > self.max_price_per_gpu_hour)
        {
            return fail(
                "offer_price_per_gpu_hour",
                "the price offered to the holder is above the need's maximum price".into(),
            );
        }
        for (field, count) in [("regions", self.regions.len()), ("tags", self.tags.len())] {
            if count > MAX_LIST_ITEMS {
                return fail(
                    field,
                    format!("a need lists at most {MAX_LIST_ITEMS} {field}"),
                );
            }
        }
        if let Some(launch) = &self.launch {
            check_text("launch", launch, MAX_SHORT_TEXT)?;
        }
        Ok(())
    }

    pub fn profile(&self) -> NeedProfile<'_> {
        NeedProfile {
            sku: &self.sku,
            regions: &self.regions,
            workload: &self.workload,
            tags: &self.tags,
            gpus: self.gpus,
        }
    }

    pub fn gpu_hours(&self, gpus: Gpus) -> f64 {
        f64::from(gpus.get()) * f64::from(self.hours)
    }
}
