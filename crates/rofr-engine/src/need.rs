//! A need: compute the buyer wants placed (PRODUCT.md §4).

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

impl NeedSpec {
    pub fn validate(&self) -> Result<(), FieldError> {
        let fail = |field, message: &str| {
            Err(FieldError {
                field,
                message: message.to_owned(),
            })
        };
        if self.gpus == Gpus::ZERO {
            return fail("gpus", "a need asks for at least one GPU");
        }
        if self.hours == 0 {
            return fail("hours", "a need lasts at least one hour");
        }
        if self.latest_start < self.earliest_start {
            return fail("latest_start", "latest_start is before earliest_start");
        }
        if self.max_price_per_gpu_hour == Price::default() {
            return fail(
                "max_price_per_gpu_hour",
                "a maximum price of zero admits no quote; give the most you will pay per GPU-hour",
            );
        }
        if self
            .offer_price_per_gpu_hour
            .is_some_and(|p| p > self.max_price_per_gpu_hour)
        {
            return fail(
                "offer_price_per_gpu_hour",
                "the price offered to the holder is above the need's maximum price",
            );
        }
        if self.launch.as_ref().is_some_and(|l| l.len() > 200) {
            return fail("launch", "the launch name is longer than 200 characters");
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
