//! Commands: what parties ask the engine to do. Each is accepted whole, producing
//! events, or rejected with a reason and no change.

use serde::{Deserialize, Serialize};

use crate::event::DeclineReason;
use crate::need::NeedSpec;
use crate::types::{Gpus, NeedId, Price, ProviderId, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Time has reached `now`: every deadline up to it fires, as of its own time.
    Tick {
        now: Timestamp,
    },
    SubmitNeed {
        need: NeedSpec,
    },
    CancelNeed {
        need: NeedId,
        reason: String,
    },
    /// The holder takes an offer, all of it or (where the clause allows) part. Under a
    /// `negotiate` right, `price` is the agreed price.
    Accept {
        provider: ProviderId,
        need: NeedId,
        #[serde(default)]
        offer: Option<u32>,
        #[serde(default)]
        gpus: Option<Gpus>,
        #[serde(default)]
        price: Option<Price>,
    },
    /// The holder declines an offer or a match, or a provider declines an RFQ.
    Decline {
        provider: ProviderId,
        need: NeedId,
        #[serde(default)]
        offer: Option<u32>,
        reason: DeclineReason,
    },
    Quote {
        provider: ProviderId,
        need: NeedId,
        gpus: Gpus,
        price: Price,
    },
    /// The holder matches the best third-party terms it was shown.
    Match {
        provider: ProviderId,
        need: NeedId,
        #[serde(default)]
        offer: Option<u32>,
        #[serde(default)]
        gpus: Option<Gpus>,
    },
    Approve {
        need: NeedId,
        award: u32,
    },
    Reject {
        need: NeedId,
        award: u32,
        reason: String,
    },
    Confirm {
        provider: ProviderId,
        need: NeedId,
        award: u32,
        reservation: String,
    },
    Fail {
        provider: ProviderId,
        need: NeedId,
        award: u32,
        reason: String,
    },
    /// The buyer amends the deal: the file's bytes become its next version, in force
    /// from `effective` (now or later; `None` for the moment the engine decides it).
    /// The engine writes it as a `deal_amended` entry.
    AmendDeal {
        file: String,
        text: String,
        #[serde(default)]
        effective: Option<Timestamp>,
        #[serde(default)]
        open_needs: crate::log::OpenNeeds,
    },
}

impl Command {
    /// The need the command is about; `None` for a tick or an amendment.
    pub fn need(&self) -> Option<&NeedId> {
        match self {
            Command::Tick { .. } | Command::AmendDeal { .. } => None,
            Command::SubmitNeed { need } => Some(&need.id),
            Command::CancelNeed { need, .. }
            | Command::Accept { need, .. }
            | Command::Decline { need, .. }
            | Command::Quote { need, .. }
            | Command::Match { need, .. }
            | Command::Approve { need, .. }
            | Command::Reject { need, .. }
            | Command::Confirm { need, .. }
            | Command::Fail { need, .. } => Some(need),
        }
    }
}

/// Why a command was refused. `NotFound` is also the answer when a provider asks about
/// something addressed to another, so that existence does not leak (I6).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub code: RejectionCode,
    /// The field of the command at fault, where one is.
    pub field: Option<&'static str>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionCode {
    NotFound,
    InvalidField,
    Conflict,
    Lapsed,
    ClockBackwards,
}

impl Rejection {
    pub fn not_found(message: impl Into<String>) -> Rejection {
        Rejection {
            code: RejectionCode::NotFound,
            field: None,
            message: message.into(),
        }
    }

    pub fn invalid(field: &'static str, message: impl Into<String>) -> Rejection {
        Rejection {
            code: RejectionCode::InvalidField,
            field: Some(field),
            message: message.into(),
        }
    }

    pub fn conflict(message: impl Into<String>) -> Rejection {
        Rejection {
            code: RejectionCode::Conflict,
            field: None,
            message: message.into(),
        }
    }

    pub fn lapsed(message: impl Into<String>) -> Rejection {
        Rejection {
            code: RejectionCode::Lapsed,
            field: None,
            message: message.into(),
        }
    }
}
