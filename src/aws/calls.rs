//! A trace of the EC2 calls a function makes, for the benchmarks' chain of dependent calls:
//! each call's operation, the branch of the step that made it (`branch`), and where it started
//! and ended in the function's own order of events. Off unless `EC2Q_CALL_TRACE` is set (the
//! benchmarks set it); then one log line per call, `aws call`, with `op`, `branch`, `started`,
//! `ended` (the function's event counter), `start_us`, `end_us` (since the process started) and
//! `ok`.
//!
//! A branch inside another is named `outer/inner` (each interface's moves: `network/<eni>`). A
//! call that started after another ended may have waited for it if that one was made in the
//! same branch or in a branch around it; calls of concurrent branches (the evidence attributes
//! beside the network moves, one interface's moves beside another's) never wait for each
//! other, so the branch keeps them apart where timestamps alone would chain them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextRef,
    FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::retries::RequestAttempts;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::Response as HttpResponse;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use tracing::info;

tokio::task_local! {
    static BRANCH: Arc<str>;
}

/// Runs `future` as the step's branch `name`: the calls it makes are traced with that name.
pub async fn branch<F: std::future::Future>(name: impl Into<Arc<str>>, future: F) -> F::Output {
    BRANCH.scope(name.into(), future).await
}

/// Whether calls are traced (`EC2Q_CALL_TRACE` set), read once.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("EC2Q_CALL_TRACE").is_some_and(|v| !v.is_empty()))
}

/// The function's events (a call started, a call ended), counted in the order they happened.
static EVENTS: AtomicU64 = AtomicU64::new(0);

fn since_start() -> u128 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros()
}

/// The interceptor that writes the trace (added to a client only when [`enabled`]).
#[derive(Debug, Default)]
pub struct CallTrace;

#[derive(Debug, Clone)]
struct Started {
    event: u64,
    at_us: u128,
    branch: Arc<str>,
}

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

impl Intercept for CallTrace {
    fn name(&self) -> &'static str {
        "CallTrace"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let started = Started {
            event: EVENTS.fetch_add(1, Ordering::SeqCst),
            at_us: since_start(),
            branch: BRANCH
                .try_with(Arc::clone)
                .unwrap_or_else(|_| Arc::from("step")),
        };
        cfg.interceptor_state().store_put(started);
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let ended = EVENTS.fetch_add(1, Ordering::SeqCst);
        let end_us = since_start();
        let op = cfg.load::<Metadata>().map(|m| m.name().to_owned());
        let ok = context.output_or_error().is_some_and(|r| r.is_ok());
        if let Some(s) = cfg.load::<Started>() {
            info!(
                op = op.as_deref().unwrap_or("?"),
                branch = &*s.branch,
                started = s.event,
                ended,
                start_us = s.at_us as u64,
                end_us = end_us as u64,
                ok,
                "aws call"
            );
        }
        Ok(())
    }
}

/// The interceptor every client of the functions carries: counts each attempt the SDK makes
/// again (its retry policy's count, before the attempt is sent: one cut short by a deadline
/// counts too) and each throttled answer, for the invocation's metrics ([`crate::telemetry`]).
#[derive(Debug, Default)]
pub struct CallMetrics;

impl Intercept for CallMetrics {
    fn name(&self) -> &'static str {
        "CallMetrics"
    }

    fn read_before_attempt(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if cfg
            .load::<RequestAttempts>()
            .is_some_and(|a| a.attempts() > 1)
        {
            crate::telemetry::retried();
        }
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if context.response().is_some_and(is_throttle) {
            crate::telemetry::throttled();
        }
        Ok(())
    }
}

/// Whether an answer refused the request for its rate: HTTP 429, or an error code the SDK's
/// retry policy treats as throttling (its own list), as the query and EC2 protocols (XML
/// `<Code>`) and the JSON protocols (`__type`, `x-amzn-ErrorType`) carry it.
fn is_throttle(response: &HttpResponse) -> bool {
    let status = response.status().as_u16();
    if status == 429 {
        return true;
    }
    if status < 400 {
        return false;
    }
    let error_type = response
        .headers()
        .get("x-amzn-errortype")
        .and_then(|t| t.split(':').next())
        .unwrap_or_default();
    let body = response
        .body()
        .bytes()
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    aws_runtime::retries::classifiers::THROTTLING_ERRORS
        .iter()
        .any(|code| {
            error_type == *code
                || body.contains(&format!("<Code>{code}</Code>"))
                || body.contains(&format!("#{code}\""))
                || body.contains(&format!("\"{code}\""))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_types::body::SdkBody;

    fn answer(status: u16, body: &str) -> HttpResponse {
        HttpResponse::new(status.try_into().unwrap(), SdkBody::from(body))
    }

    #[test]
    fn throttles_are_told_from_other_refusals() {
        let ec2 = "<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors></Response>";
        assert!(is_throttle(&answer(503, ec2)));
        let iam = "<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code></Error></ErrorResponse>";
        assert!(is_throttle(&answer(400, iam)));
        let dynamodb = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"slow down"}"#;
        assert!(is_throttle(&answer(400, dynamodb)));
        assert!(is_throttle(&answer(429, "")));
        let denied = "<Response><Errors><Error><Code>UnauthorizedOperation</Code></Error></Errors></Response>";
        assert!(!is_throttle(&answer(403, denied)));
        assert!(!is_throttle(&answer(503, "<Code>Unavailable</Code>")));
        assert!(!is_throttle(&answer(200, "<Code>Throttling</Code>")));
    }
}
