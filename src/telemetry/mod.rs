//! The functions' CloudWatch metrics, written as embedded metric format (EMF) lines on standard
//! output: CloudWatch Logs extracts the metrics as it stores each line in the function's log
//! group, with no API call and no latency added to containment
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Lambda.html>;
//! Lambda's JSON log format passes a line that is already JSON as it is).
//!
//! The steps record with the [`metrics`] crate's macros (nothing happens where no recorder is
//! installed: tests, tools); [`serve`] installs the EMF recorder in a Lambda function, records
//! each invocation's outcome, duration, retries and throttles, and writes what was recorded
//! before the function answers.
//!
//! Every metric has the dimension `Step`; some have one or two more, all of bounded values: a
//! step's outcome (a status or an error name), a verdict, a finding type (GuardDuty's own list,
//! checked to at most 128 printable characters), a safety rail. Never an instance, account or
//! finding id: each distinct value would be a metric of its own.

pub mod xray;

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use metrics::Unit;

use crate::Error;

/// The namespace when `METRICS_NAMESPACE` is not set (the template sets the stack's name).
pub const DEFAULT_NAMESPACE: &str = "ec2-quarantine";

/// Every metric, with its unit and its dimensions besides `Step`.
pub const METRICS: &[(&str, Unit, &[&str])] = &[
    (STEP_OUTCOME, Unit::Count, &["Outcome"]),
    (STEP_DURATION, Unit::Milliseconds, &[]),
    (FINDINGS, Unit::Count, &["FindingType", "Verdict"]),
    (TIME_TO_ISOLATION, Unit::Milliseconds, &[]),
    (RAIL_APPLIED, Unit::Count, &["Rail"]),
    (RETRIES, Unit::Count, &[]),
    (THROTTLES, Unit::Count, &[]),
];

/// One per invocation: `Outcome` is the step's status (`done`, `already_done`, `failed`,
/// `skipped`, `dry_run`; `answered` for a function whose answer has none) or the name of
/// the error it returned (the names the state machines' Retry and Catch match).
pub const STEP_OUTCOME: &str = "StepOutcome";
/// How long the invocation took, from the event to the answer.
pub const STEP_DURATION: &str = "StepDuration";
/// Each finding triage decided on, by finding type and verdict (`contain`, `notify_only`,
/// `nothing_to_contain`, `await_approval`). Not named `Verdict`: a metric and a dimension of
/// one document cannot share a name (both are members of the same JSON object).
pub const FINDINGS: &str = "Findings";
/// From the finding's `updatedAt` to the moment isolate has moved every interface of the
/// instance into quarantine (only when this run moved one).
pub const TIME_TO_ISOLATION: &str = "TimeToIsolation";
/// A safety rail that kept a finding from being contained automatically: `pause`,
/// `blast_radius_cap`, `rate_cap`, `approval`.
pub const RAIL_APPLIED: &str = "RailApplied";
/// AWS requests the SDK sent again (throttled, a server error, a connection lost).
pub const RETRIES: &str = "Retries";
/// AWS answers that refused a request for its rate (RequestLimitExceeded, Throttling, ...).
pub const THROTTLES: &str = "Throttles";

static STEP: OnceLock<&'static str> = OnceLock::new();

/// The step this process runs (`Step` of every metric), `tool` outside a function.
pub fn step() -> &'static str {
    STEP.get().copied().unwrap_or("tool")
}

/// Records triage's verdict on a finding.
pub fn verdict(finding_type: Option<&str>, verdict: &'static str) {
    metrics::counter!(FINDINGS, "Step" => step(), "FindingType" => finding_type_dimension(finding_type), "Verdict" => verdict)
        .increment(1);
}

/// A finding type as a dimension value: GuardDuty's `ThreatPurpose:ResourceType/ThreatFamily`
/// shape (letters, digits and `. _ ! & -` in the last part, at most 128 characters), else
/// `other` (`unknown` without one): a dimension of bounded values.
fn finding_type_dimension(finding_type: Option<&str>) -> String {
    let Some(t) = finding_type else {
        return "unknown".to_owned();
    };
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    let shaped = t.len() <= 128
        && t.split_once(':').is_some_and(|(purpose, rest)| {
            word(purpose)
                && rest.split_once('/').is_some_and(|(resource, family)| {
                    word(resource)
                        && !family.is_empty()
                        && family
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._!&-".contains(&b))
                })
        });
    if shaped {
        t.to_owned()
    } else {
        "other".to_owned()
    }
}

/// Records a safety rail that applied.
pub fn rail(rail: &'static str) {
    metrics::counter!(RAIL_APPLIED, "Step" => step(), "Rail" => rail).increment(1);
}

/// Records the time from the finding's `updatedAt` (RFC 3339) to now, when it can be read and
/// is not in the future.
pub fn time_to_isolation(updated_at: Option<&str>) {
    let Some(ms) = updated_at.and_then(since_ms) else {
        return;
    };
    metrics::histogram!(TIME_TO_ISOLATION, "Step" => step()).record(ms as f64);
}

fn since_ms(rfc3339: &str) -> Option<u64> {
    let then = aws_smithy_types::DateTime::from_str(
        rfc3339,
        aws_smithy_types::date_time::Format::DateTime,
    )
    .ok()?;
    let then = std::time::SystemTime::try_from(then).ok()?;
    let ms = std::time::SystemTime::now()
        .duration_since(then)
        .ok()?
        .as_millis();
    u64::try_from(ms).ok()
}

/// The AWS requests of this invocation sent again, and the answers that throttled one. A
/// Lambda function runs one invocation at a time, so a process-wide count is the invocation's
/// own.
static RETRIED: AtomicU64 = AtomicU64::new(0);
static THROTTLED: AtomicU64 = AtomicU64::new(0);

/// Counts an attempt after the first of its operation.
pub(crate) fn retried() {
    RETRIED.fetch_add(1, Ordering::Relaxed);
}

/// Counts an answer that refused a request for its rate.
pub(crate) fn throttled() {
    THROTTLED.fetch_add(1, Ordering::Relaxed);
}

/// What one invocation did, as the metrics record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub outcome: String,
    pub duration: Duration,
    pub retries: u64,
    pub throttles: u64,
}

impl Invocation {
    /// Reads an invocation's answer: its status, or the name of its error.
    pub fn of<O: serde::Serialize>(result: &Result<O, Error>, duration: Duration) -> Invocation {
        let outcome = match result {
            Ok(answer) => status_of(answer).to_owned(),
            Err(err) => err.name().as_str().to_owned(),
        };
        Invocation {
            outcome,
            duration,
            retries: RETRIED.swap(0, Ordering::Relaxed),
            throttles: THROTTLED.swap(0, Ordering::Relaxed),
        }
    }

    pub fn record(&self) {
        let step = step();
        metrics::counter!(STEP_OUTCOME, "Step" => step, "Outcome" => self.outcome.clone())
            .increment(1);
        metrics::histogram!(STEP_DURATION, "Step" => step)
            .record(self.duration.as_secs_f64() * 1000.0);
        metrics::counter!(RETRIES, "Step" => step).increment(self.retries);
        metrics::counter!(THROTTLES, "Step" => step).increment(self.throttles);
    }
}

/// A step's status (the `status` field every step's answer carries), one of a fixed list.
fn status_of<O: serde::Serialize>(answer: &O) -> &'static str {
    const STATUSES: [&str; 5] = ["done", "already_done", "failed", "skipped", "dry_run"];
    let status = serde_json::to_value(answer)
        .ok()
        .and_then(|v| v.get("status").and_then(|s| s.as_str()).map(str::to_owned));
    status
        .and_then(|s| STATUSES.into_iter().find(|known| *known == s))
        .unwrap_or("answered")
}

/// Installs the EMF recorder for `step`; `None` (and a warning) if another is installed.
fn install(step: &'static str) -> Option<&'static metrics_cloudwatch_embedded::Collector> {
    let _ = STEP.set(step);
    let namespace = std::env::var("METRICS_NAMESPACE")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let collector = match metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(namespace)
        .init()
    {
        Ok(collector) => collector,
        Err(err) => {
            tracing::warn!(error = %err, "no metrics: the recorder could not be installed");
            return None;
        }
    };
    for (name, unit, _) in METRICS {
        match unit {
            Unit::Milliseconds => metrics::describe_histogram!(*name, *unit, ""),
            _ => metrics::describe_counter!(*name, *unit, ""),
        }
    }
    Some(collector)
}

/// Installs the function's logging (Lambda's advanced logging controls: JSON lines with
/// `AWS_LAMBDA_LOG_FORMAT=JSON`, the level of `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG`, as
/// `lambda_runtime`'s default subscriber reads them) and, where Lambda gives an X-Ray daemon
/// (active tracing), the layer that puts the steps' spans and AWS calls in the trace.
pub fn init_logging() {
    use lambda_runtime::tracing::subscriber::filter::{EnvFilter, LevelFilter, filter_fn};
    use lambda_runtime::tracing::subscriber::prelude::*;
    use lambda_runtime::tracing::subscriber::{fmt, registry};

    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .ok()
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let filter = EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy();
    let lines = fmt::layer().with_target(false).without_time();
    let lines =
        if std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
            lines.json().with_filter(filter).boxed()
        } else {
            lines.with_filter(filter).boxed()
        };
    let traced = xray::XRayLayer::from_env().map(|layer| {
        layer.with_filter(filter_fn(|meta| {
            meta.is_span()
                && (meta.target().starts_with("ec2_quarantine")
                    || meta.fields().field("rpc.system").is_some())
        }))
    });
    let _ = registry().with(lines).with(traced).try_init();
}

/// Runs a Lambda function's handler for `step`, with its metrics: after each invocation, its
/// outcome, duration, retries and throttles, and whatever the step recorded, written as EMF
/// lines before the answer goes back.
pub async fn serve<F, Fut, O>(step: &'static str, handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(lambda_runtime::LambdaEvent<serde_json::Value>) -> Fut,
    Fut: Future<Output = Result<O, Error>>,
    O: serde::Serialize,
{
    let collector = install(step);
    let handler = &handler;
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: lambda_runtime::LambdaEvent<serde_json::Value>| async move {
            let started = Instant::now();
            xray::set_current(event.context.xray_trace_id.as_deref());
            // Boxed: the steps' futures are deep, and the compiler's layout query would
            // overflow its depth limit with this one around them.
            let result = Box::pin(handler(event)).await;
            Invocation::of(&result, started.elapsed()).record();
            if let Some(collector) = collector
                && let Err(err) = collector.flush(std::io::stdout().lock())
            {
                tracing::warn!(error = %err, "metrics not written");
            }
            result
        },
    ))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    #[test]
    fn an_answer_is_read_as_its_status_or_its_error_name() {
        // A step's report is an object (the status goes in beside its fields).
        let done: Result<Outcome<serde_json::Value>, Error> = Ok(Outcome::Done(
            serde_json::json!({"instance_id": "i-0123456789abcdef0"}),
        ));
        assert_eq!(Invocation::of(&done, Duration::ZERO).outcome, "done");
        let skipped: Result<Outcome<serde_json::Value>, Error> = Ok(Outcome::skipped("why"));
        assert_eq!(Invocation::of(&skipped, Duration::ZERO).outcome, "skipped");
        let plain: Result<serde_json::Value, Error> = Ok(serde_json::json!({"status": "mine"}));
        assert_eq!(Invocation::of(&plain, Duration::ZERO).outcome, "answered");
        let err: Result<Outcome<serde_json::Value>, Error> = Err(Error::InvalidEvent("bad".into()));
        assert_eq!(Invocation::of(&err, Duration::ZERO).outcome, "InvalidEvent");
    }

    #[test]
    fn a_finding_type_is_a_dimension_only_in_guardduty_s_shape() {
        for t in [
            "Backdoor:EC2/C&CActivity.B",
            "CryptoCurrency:EC2/BitcoinTool.B!DNS",
            "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS",
            "AttackSequence:EC2/CompromisedInstanceGroup",
            "Execution:Runtime/ReverseShell",
        ] {
            assert_eq!(finding_type_dimension(Some(t)), t);
        }
        for t in [
            "   ",
            "i-0123456789abcdef0",
            "Backdoor:EC2/x y",
            "a:b/c\nd",
            "",
        ] {
            assert_eq!(finding_type_dimension(Some(t)), "other", "{t:?}");
        }
        assert_eq!(finding_type_dimension(None), "unknown");
    }

    #[test]
    fn no_metric_shares_its_name_with_a_dimension() {
        let dimensions: Vec<&str> = METRICS
            .iter()
            .flat_map(|(_, _, d)| d.iter().copied())
            .chain(["Step"])
            .collect();
        for (name, _, _) in METRICS {
            assert!(!dimensions.contains(name), "{name} is a dimension too");
        }
    }

    #[test]
    fn the_time_since_a_finding_is_read_from_its_updated_at() {
        assert!(since_ms("2020-01-01T00:00:00Z").is_some_and(|ms| ms > 0));
        assert!(since_ms("2020-01-01T00:00:00.123Z").is_some());
        assert_eq!(since_ms("2999-01-01T00:00:00Z"), None);
        assert_eq!(since_ms("yesterday"), None);
    }
}
