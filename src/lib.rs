//! Automatic containment of compromised EC2 instances.
//!
//! A GuardDuty finding names an instance (or the credentials of its role); each module here is one
//! step that a Step Functions state machine runs as its own Lambda function: [`triage`] the
//! finding by policy, [`isolate`] the network interfaces, take the instance out of service
//! ([`deregister`]: Auto Scaling, load balancers), [`snapshot`] the volumes, contain the IAM
//! [`role`], and [`notify`] the security team of what was done and what failed; [`release`]
//! undoes a containment from its record.

pub mod context;
pub mod deregister;
pub mod error;
pub mod evidence;
pub mod finding;
pub mod instance;
pub mod isolate;
pub mod notify;
pub mod outcome;
pub mod profile;
pub mod release;
pub mod role;
pub mod role_policy;
pub mod settings;
pub mod snapshot;
pub mod tags;
pub mod triage;

use std::future::Future;

pub use context::{Clients, Ctx};
pub use error::{Error, ErrorName};
pub use outcome::Outcome;

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

/// Runs a containment step on the target a finding names, with clients for the finding's
/// account and region; a finding that names nothing to contain, or an account the responder
/// must not act in, is skipped with the reason.
pub(crate) async fn for_target<T, F, Fut>(
    ctx: &Ctx,
    event: &finding::FindingEvent,
    step: F,
) -> Result<Outcome<T>, Error>
where
    F: FnOnce(Clients, finding::Target) -> Fut,
    Fut: Future<Output = Result<Outcome<T>, Error>>,
{
    let target = match finding::resolve(event)? {
        Ok(target) => target,
        Err(finding::Skip(reason)) => {
            tracing::info!(%reason, "skipped: the finding names nothing to contain");
            return Ok(Outcome::skipped(reason));
        }
    };
    if let Some(reason) = ctx.org().refusal(&target.scope.account_id) {
        tracing::info!(%reason, "skipped: not acting in this account");
        return Ok(Outcome::skipped(reason));
    }
    let clients = ctx.clients(&target).await?;
    // Boxed: the SDK's futures nest deep enough to exceed rustc's layout depth limit otherwise.
    Box::pin(step(clients, target)).await
}
