//! Automatic containment of compromised EC2 instances.
//!
//! A GuardDuty finding names an instance (or the credentials of its role); each module here is one
//! containment step that a Step Functions state machine runs as its own Lambda function:
//! [`isolate`] the network interfaces, [`snapshot`] the volumes, contain the IAM [`role`], and
//! [`notify`] the security team of what was done and what failed.

pub mod context;
pub mod error;
pub mod finding;
pub mod instance;
pub mod isolate;
pub mod notify;
pub mod outcome;
pub mod role;
pub mod snapshot;
pub mod tags;

pub use context::Ctx;
pub use error::{Error, ErrorName};
pub use outcome::Outcome;

/// The current time in RFC 3339 at whole seconds, as written to tags and policy conditions.
pub(crate) fn now_rfc3339() -> String {
    let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
    aws_smithy_types::DateTime::from_secs(now.secs())
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}
