//! What a containment step reports.

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The most items of one list (target groups, other instances, snapshots) that a step's output
/// and the notification carry; the total is reported beside it. Step Functions refuses any state
/// input or output over 256 KiB and SNS any message over 256 KiB, and a list that grows with
/// the account must never reach either.
pub const MAX_LISTED: usize = 50;

/// A step's result: it acted, found its work already done by an earlier run, ran to its end
/// with its work failed (the report says what failed and why), had nothing to do (with the
/// reason), or, in a dry run, what it would do. Serialized with a `status` field the
/// state machine and notify read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome<T> {
    Done(T),
    AlreadyDone(T),
    Failed(T),
    Skipped { reason: String },
    DryRun { actions: Vec<PlannedAction> },
}

/// One change a dry run would make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedAction {
    /// The API action, as `service:Action`.
    pub action: String,
    /// What it acts on (an interface, a volume, a role, a group).
    pub resource: String,
    pub detail: String,
    pub check: Check,
}

/// What the service said of the planned call, where it can be asked without acting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Check {
    /// EC2's DryRun answered that the call would succeed.
    Permitted,
    /// EC2's DryRun answered that the call is not permitted.
    Denied { message: String },
    /// EC2's DryRun answered with another error.
    Failed { message: String },
    /// The API has no dry run (IAM, Auto Scaling, Elastic Load Balancing).
    NotCheckable,
}

impl PlannedAction {
    pub fn new(
        action: &str,
        resource: impl Into<String>,
        detail: impl Into<String>,
        check: Check,
    ) -> PlannedAction {
        PlannedAction {
            action: action.to_owned(),
            resource: resource.into(),
            detail: detail.into(),
            check,
        }
    }

    /// A planned call the service cannot check without acting.
    pub fn unchecked(
        action: &str,
        resource: impl Into<String>,
        detail: impl Into<String>,
    ) -> PlannedAction {
        PlannedAction::new(action, resource, detail, Check::NotCheckable)
    }
}

impl Check {
    /// Reads the answer to an EC2 request sent with `DryRun=true`.
    pub fn from_dry_run<T>(answer: Result<T, crate::Error>) -> Check {
        match answer {
            Ok(_) => Check::Permitted,
            Err(e) => match e.aws_code() {
                Some("DryRunOperation") => Check::Permitted,
                Some("UnauthorizedOperation") => Check::Denied {
                    message: e.to_string(),
                },
                _ => Check::Failed {
                    message: e.to_string(),
                },
            },
        }
    }
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
            Outcome::Done(r) | Outcome::AlreadyDone(r) | Outcome::Failed(r) => Some(r),
            Outcome::Skipped { .. } | Outcome::DryRun { .. } => None,
        }
    }

    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Done(_) => "done",
            Outcome::AlreadyDone(_) => "already_done",
            Outcome::Failed(_) => "failed",
            Outcome::Skipped { .. } => "skipped",
            Outcome::DryRun { .. } => "dry_run",
        }
    }
}

/// The changes a dry run would make, collected as the step walks its usual path: every
/// mutating call site asks [`crate::Clients::plan`] first and, in a dry run, adds its call here
/// instead of making it.
#[derive(Debug, Default)]
pub struct Plan(std::sync::Mutex<Vec<PlannedAction>>);

impl Plan {
    pub fn add(&self, action: PlannedAction) {
        if let Ok(mut actions) = self.0.lock() {
            actions.push(action);
        }
    }

    /// Adds an EC2 call whose `DryRun=true` answer is `answer`.
    pub fn add_ec2<T>(
        &self,
        action: &str,
        resource: impl Into<String>,
        detail: impl Into<String>,
        answer: Result<T, crate::Error>,
    ) {
        self.add(PlannedAction::new(
            action,
            resource,
            detail,
            Check::from_dry_run(answer),
        ));
    }

    /// An outcome listing every planned call.
    pub fn outcome<T>(&self) -> Outcome<T> {
        let actions = self
            .0
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default();
        Outcome::DryRun { actions }
    }
}

/// What a step's actions came to, recorded as each one ends: the lines of what was done, the
/// actions that failed (each with its error), and warnings (something the step did not need, such
/// as a record, that could not be had). Every step keeps one, so that a failure is never lost
/// between one action and the step's answer: it finishes into the warnings of its report when
/// nothing failed, or else into its named error ([`Error::Incomplete`]) listing both.
#[derive(Debug)]
pub struct Tally {
    step: &'static str,
    instance_id: String,
    done: Vec<String>,
    failed: Vec<(String, Error)>,
    warnings: Vec<String>,
}

impl Tally {
    /// An empty tally for `step` (as the error names it: "isolation", "role containment") on
    /// one instance.
    pub fn new(step: &'static str, instance_id: &str) -> Tally {
        Tally {
            step,
            instance_id: instance_id.to_owned(),
            done: Vec::new(),
            failed: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// An action that was done, in a line the report and the case show.
    pub fn done(&mut self, line: impl Into<String>) {
        self.done.push(line.into());
    }

    /// An action that failed, with what it was.
    pub fn failed(&mut self, what: impl Into<String>, err: Error) {
        self.failed.push((what.into(), err));
    }

    /// A warning for the report: the step's work stands.
    pub fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(warning.into());
    }

    /// Records one action's result: its value when it succeeded; its failure (as `what`)
    /// otherwise.
    pub fn check<T>(&mut self, what: impl Into<String>, result: Result<T, Error>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(err) => {
                self.failed(what, err);
                None
            }
        }
    }

    /// The lines of what was done, so far.
    pub fn done_lines(&self) -> &[String] {
        &self.done
    }

    /// Each failure as one line, "what: error".
    pub fn failure_lines(&self) -> Vec<String> {
        self.failed
            .iter()
            .map(|(what, err)| format!("{what}: {err}"))
            .collect()
    }

    /// The step's answer: its warnings when every action succeeded; otherwise its
    /// [`Error::Incomplete`], each failure logged, the warnings listed after what was done.
    pub fn finish(self) -> Result<Vec<String>, Error> {
        if self.failed.is_empty() {
            return Ok(self.warnings);
        }
        for (what, err) in &self.failed {
            tracing::warn!(step = self.step, what, error = %err, "action failed");
        }
        let mut done = self.done;
        done.extend(self.warnings.into_iter().map(|w| format!("warning: {w}")));
        Err(Error::Incomplete {
            step: self.step,
            instance_id: self.instance_id,
            done,
            failed: self.failed,
        })
    }
}
