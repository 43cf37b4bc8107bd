//! The pure core of rofr: the deal language and the first-refusal state machine.
//!
//! Commands go in, events come out, and the state is a fold of the events. This crate
//! never does IO, never reads the clock and never draws random numbers: time arrives
//! in `Tick` commands, so tests, the broker and the simulator all drive it the same way.

pub mod agenda;
pub mod allocate;
pub mod cap;
pub mod command;
pub mod deal;
pub mod diagnostic;
pub mod duration;
pub mod engine;
pub mod event;
pub mod frozen;
pub mod invariants;
pub mod lint;
pub mod log;
pub mod need;
pub mod state;
pub mod tally;
pub mod types;
pub mod usage;

pub use command::{Command, Rejection, RejectionCode};
pub use deal::Deal;
pub use engine::Engine;
pub use event::{Event, EventKind, ProofStatus, RoundProof};
