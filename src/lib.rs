//! Automatic containment of compromised EC2 instances.
//!
//! A GuardDuty finding names an instance (or the credentials of its role); a Step Functions
//! state machine runs each step as its own Lambda function (one thin binary per step in
//! `src/bin/`). The crate is laid out by what each part is:
//!
//! - [`domain`]: what the responder reasons about, without calling AWS: the finding and the
//!   targets it names, which side of the activity the instance is on, the policy settings, and
//!   what a step reports;
//! - [`steps`]: the steps (triage, isolate, deregister, snapshot, role, notify, release), each a
//!   handler of typed input to typed output;
//! - [`case`]: the responder's own record of each containment (a DynamoDB table), which release
//!   and every retry decide from;
//! - [`aws`]: the AWS pieces the steps share: the context loaded once at init and the clients
//!   per finding, the tool's tags, reading the instance, its profile and its role's denies;
//! - [`telemetry`]: what the functions tell CloudWatch and X-Ray: their metrics (embedded
//!   metric format lines) and their spans in the invocation's trace;
//! - [`error`]: the named errors the state machines' Retry and Catch match.

pub mod approval;
pub mod aws;
pub mod case;
pub mod domain;
pub mod error;
pub mod steps;
pub mod telemetry;

pub use aws::context::{Clients, Ctx};
pub use domain::outcome::Outcome;
pub use error::{Error, ErrorName};

/// The current time in RFC 3339 at whole seconds, as written to tags and policy conditions.
pub(crate) fn now_rfc3339() -> String {
    let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
    aws_smithy_types::DateTime::from_secs(now.secs())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

/// The instant Lambda stops the function, from the invocation's deadline (milliseconds since
/// the Unix epoch); `None` when it is not in the future (no deadline given, or a clock apart).
pub fn deadline(deadline_ms: u64) -> Option<tokio::time::Instant> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    let left = std::time::Duration::from_millis(deadline_ms).checked_sub(now)?;
    Some(tokio::time::Instant::now() + left)
}
