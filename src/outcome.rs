//! What a containment step reports.

use serde::{Deserialize, Serialize};

/// A step's result: it acted, found its work already done by an earlier run, or had nothing to
/// do (with the reason). Serialized with a `status` field the state machine and notify read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome<T> {
    Done(T),
    AlreadyDone(T),
    Skipped { reason: String },
}

impl<T> Outcome<T> {
    pub fn skipped(reason: impl Into<String>) -> Outcome<T> {
        Outcome::Skipped {
            reason: reason.into(),
        }
    }

    /// `Done` when this run changed something, `AlreadyDone` when an earlier run had.
    pub fn from_changes(changed: bool, report: T) -> Outcome<T> {
        if changed {
            Outcome::Done(report)
        } else {
            Outcome::AlreadyDone(report)
        }
    }

    pub fn report(&self) -> Option<&T> {
        match self {
            Outcome::Done(r) | Outcome::AlreadyDone(r) => Some(r),
            Outcome::Skipped { .. } => None,
        }
    }

    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "done",
            Outcome::AlreadyDone(_) => "already_done",
            Outcome::Skipped { .. } => "skipped",
        }
    }
}
