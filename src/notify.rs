//! The notification: one SNS message per finding saying what was found, what each containment
//! step did or why it failed, and where to look next.

use std::fmt::Write as _;

use aws_sdk_sns::types::MessageAttributeValue;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::context::Ctx;
use crate::deregister::{DeregisterReport, GroupStatus};
use crate::error::{Error, ErrorName};
use crate::finding::{self, FindingEvent, Skip, Target, severity_label};
use crate::isolate::{InterfaceStatus, IsolateReport};
use crate::outcome::{Check, Outcome, PlannedAction};
use crate::release::ReleaseReport;
use crate::role::{Change, RoleReport};
use crate::settings::{AutoScalingAction, RoleAction};
use crate::snapshot::SnapshotReport;
use crate::triage::{Decision, TargetPlan, TriageReport};

/// SNS rejects subjects of 100 characters or more.
pub const MAX_SUBJECT_CHARS: usize = 99;

/// Settings of the notify function, read once at init.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub topic_arn: String,
}

impl NotifySettings {
    pub const TOPIC_ARN_VAR: &'static str = "ALERT_TOPIC_ARN";

    pub fn from_env() -> Result<NotifySettings, Error> {
        let topic_arn = std::env::var(Self::TOPIC_ARN_VAR).unwrap_or_default();
        if !topic_arn.starts_with("arn:") || topic_arn.split(':').count() != 6 {
            return Err(Error::Misconfigured(format!(
                "{} must be the ARN of the SNS topic to notify, got {topic_arn:?}",
                Self::TOPIC_ARN_VAR
            )));
        }
        Ok(NotifySettings { topic_arn })
    }
}

/// What notify receives: the finding event as it arrived (kept as JSON so that even an event
/// no step could read is reported) and each step's result, or its error as Step Functions'
/// Catch hands it on. A missing result means the step did not run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NotifyInput {
    pub event: serde_json::Value,
    /// The triage decision, or its error; absent in inputs written by hand for one step.
    #[serde(default)]
    pub triage: Option<StepResult<TriageReport>>,
    /// Each instance's step results, in the order of triage's targets (the containment state
    /// machine's Map output); absent in inputs written by hand for one instance, which give
    /// the step results below instead.
    #[serde(default)]
    pub instances: Option<Vec<InstanceSteps>>,
    #[serde(default)]
    pub isolate: Option<StepResult<IsolateReport>>,
    #[serde(default)]
    pub deregister: Option<StepResult<DeregisterReport>>,
    #[serde(default)]
    pub snapshot: Option<StepResult<SnapshotReport>>,
    #[serde(default)]
    pub role: Option<StepResult<RoleReport>>,
    /// Set by the release workflow (whose `event` is the release request): the undo's result.
    #[serde(default)]
    pub release: Option<StepResult<ReleaseReport>>,
}

/// One instance's containment steps: each result, or its error, or `None` (did not run).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceSteps {
    #[serde(default)]
    pub isolate: Option<StepResult<IsolateReport>>,
    #[serde(default)]
    pub deregister: Option<StepResult<DeregisterReport>>,
    #[serde(default)]
    pub snapshot: Option<StepResult<SnapshotReport>>,
    #[serde(default)]
    pub role: Option<StepResult<RoleReport>>,
}

/// The step results of one instance, borrowed from either shape of the input.
#[derive(Clone, Copy, Default)]
struct Steps<'a> {
    isolate: Option<&'a StepResult<IsolateReport>>,
    deregister: Option<&'a StepResult<DeregisterReport>>,
    snapshot: Option<&'a StepResult<SnapshotReport>>,
    role: Option<&'a StepResult<RoleReport>>,
}

impl InstanceSteps {
    fn steps(&self) -> Steps<'_> {
        Steps {
            isolate: self.isolate.as_ref(),
            deregister: self.deregister.as_ref(),
            snapshot: self.snapshot.as_ref(),
            role: self.role.as_ref(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
#[allow(clippy::large_enum_variant)]
pub enum StepResult<T> {
    Completed(Outcome<T>),
    Failed(StepFailure),
    /// Anything else: reported as a failure, with the raw value, rather than lost.
    Unreadable(serde_json::Value),
}

/// The error object of a Catch: `Cause` holds the Lambda's `{"errorType","errorMessage"}` JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFailure {
    #[serde(rename = "Error")]
    pub error: String,
    #[serde(rename = "Cause", default)]
    pub cause: Option<String>,
}

impl StepFailure {
    pub fn message(&self) -> String {
        #[derive(Deserialize)]
        struct LambdaCause {
            #[serde(rename = "errorMessage")]
            error_message: String,
        }
        match self.cause.as_deref() {
            Some(cause) => serde_json::from_str::<LambdaCause>(cause)
                .map(|c| c.error_message)
                .unwrap_or_else(|_| cause.to_owned()),
            None => String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every step succeeded (or had nothing to do) and at least one acted or had acted.
    Contained,
    /// Isolation held but another step failed or did not run.
    Partial,
    /// Isolation failed or did not run.
    Failed,
    /// The finding names nothing to contain.
    Skipped,
    /// The triage policy says to report only (type, severity, TARGET role, exemption tag).
    NotifyOnly,
    /// A dry run: every step reported what it would do, and nothing was changed.
    DryRun,
    /// A release restored what a containment changed.
    Released,
    /// The event is not a GuardDuty finding this tool can read.
    Invalid,
}

impl Verdict {
    /// Whether the workflow should end Failed after notifying.
    pub fn is_failure(self) -> bool {
        matches!(self, Verdict::Partial | Verdict::Failed | Verdict::Invalid)
    }

    fn headline(self) -> &'static str {
        match self {
            Verdict::Contained => "CONTAINED",
            Verdict::Partial => "PARTIALLY CONTAINED",
            Verdict::Failed => "CONTAINMENT FAILED",
            Verdict::Skipped => "NOT ACTIONABLE",
            Verdict::NotifyOnly => "NOT CONTAINED BY POLICY",
            Verdict::DryRun => "DRY RUN",
            Verdict::Released => "RELEASED",
            Verdict::Invalid => "INVALID FINDING",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifyOutput {
    pub verdict: Verdict,
    /// True when containment failed in any part: the state machine ends Failed on it.
    pub failed: bool,
    pub subject: String,
    pub message_id: String,
}

/// The message, rendered before it is sent (and testable without SNS).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub verdict: Verdict,
    pub subject: String,
    pub body: String,
    pub attributes: Vec<(&'static str, &'static str, String)>,
}

/// The notify function's client for its topic, made once at init.
#[derive(Debug, Clone)]
pub struct Notifier {
    sns: aws_sdk_sns::Client,
    topic_arn: String,
}

impl Notifier {
    pub fn new(ctx: &Ctx, settings: &NotifySettings) -> Notifier {
        Notifier {
            sns: ctx.acting_as("notify").sns_for_topic(&settings.topic_arn),
            topic_arn: settings.topic_arn.clone(),
        }
    }

    /// Publishes the message for `input`.
    pub async fn notify(&self, input: &NotifyInput) -> Result<NotifyOutput, Error> {
        notify(&self.sns, &self.topic_arn, input).await
    }
}

#[tracing::instrument(skip_all)]
async fn notify(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    input: &NotifyInput,
) -> Result<NotifyOutput, Error> {
    let message = render(input);
    let mut request = sns
        .publish()
        .topic_arn(topic_arn)
        .subject(&message.subject)
        .message(&message.body);
    for (name, data_type, value) in &message.attributes {
        request = request.message_attributes(
            *name,
            MessageAttributeValue::builder()
                .data_type(*data_type)
                .string_value(value)
                .build()
                .map_err(|e| Error::Misconfigured(format!("message attribute {name}: {e}")))?,
        );
    }
    let out = request
        .send()
        .await
        .map_err(|e| Error::from_sdk("sns:Publish", e))?;
    let message_id = out.message_id().unwrap_or_default().to_owned();
    info!(verdict = ?message.verdict, %message_id, "notification sent");
    Ok(NotifyOutput {
        verdict: message.verdict,
        failed: message.verdict.is_failure(),
        subject: message.subject,
        message_id,
    })
}

/// One instance of the message: its target, triage's plan for it (absent for inputs written
/// by hand), and its steps.
struct Instance<'a> {
    target: Target,
    plan: Option<&'a TargetPlan>,
    steps: Steps<'a>,
    verdict: Verdict,
}

enum Resolved<'a> {
    Instances(Vec<Instance<'a>>),
    Skip(String),
    Invalid(String),
}

/// The instances of the message: triage's plan with the Map's results, in order; or, for an
/// input written by hand (or a triage that failed), the one instance the finding names with
/// the input's own step results.
fn resolve_instances<'a>(
    input: &'a NotifyInput,
    event: &Result<FindingEvent, Error>,
    triage: Option<&'a TriageReport>,
) -> Resolved<'a> {
    let event = match event {
        Ok(event) => event,
        Err(e) => return Resolved::Invalid(e.to_string()),
    };
    let flat = Steps {
        isolate: input.isolate.as_ref(),
        deregister: input.deregister.as_ref(),
        snapshot: input.snapshot.as_ref(),
        role: input.role.as_ref(),
    };
    // Inputs written for the three original steps alone carry no out-of-service result.
    let with_deregister = input.triage.is_some() || input.deregister.is_some();
    let triage_failed = matches!(
        input.triage,
        Some(StepResult::Failed(_) | StepResult::Unreadable(_))
    );
    if let Some(t) =
        triage.filter(|t| t.decision == Decision::NothingToContain && t.targets.len() <= 1)
    {
        let reason = t
            .single()
            .map(|p| p.reason.as_str())
            .filter(|r| !r.is_empty());
        return Resolved::Skip(reason.unwrap_or(&t.reason).to_owned());
    }
    if let Some(t) = triage.filter(|t| !t.targets.is_empty()) {
        let results = input.instances.as_deref().unwrap_or_default();
        let instances = t
            .targets
            .iter()
            .enumerate()
            .map(|(i, plan)| {
                let steps = results.get(i).map(InstanceSteps::steps).unwrap_or(
                    if t.targets.len() == 1 && input.instances.is_none() {
                        flat
                    } else {
                        Steps::default()
                    },
                );
                let verdict = match plan.decision {
                    Decision::NotifyOnly => Verdict::NotifyOnly,
                    Decision::NothingToContain => Verdict::Skipped,
                    Decision::Contain => judge(&steps, with_deregister, triage_failed),
                };
                Instance {
                    target: plan.target.clone(),
                    plan: Some(plan),
                    steps,
                    verdict,
                }
            })
            .collect();
        return Resolved::Instances(instances);
    }
    // Triage failed: nothing was contained, whatever the finding names. Each instance it names
    // is listed as failed, so that a group is never reported as not actionable.
    if triage_failed
        && let Ok(Ok(named)) = finding::targets(event)
        && named.targets.len() > 1
    {
        return Resolved::Instances(
            named
                .targets
                .into_iter()
                .map(|n| Instance {
                    target: n.target,
                    plan: None,
                    steps: Steps::default(),
                    verdict: Verdict::Failed,
                })
                .collect(),
        );
    }
    match finding::resolve(event) {
        Ok(Ok(target)) => {
            let verdict = match triage.map(|t| t.decision) {
                Some(Decision::NotifyOnly) => Verdict::NotifyOnly,
                _ => judge(&flat, with_deregister, triage_failed),
            };
            Resolved::Instances(vec![Instance {
                target,
                plan: None,
                steps: flat,
                verdict,
            }])
        }
        Ok(Err(Skip(reason))) => Resolved::Skip(reason),
        Err(e) => Resolved::Invalid(e.to_string()),
    }
}

/// The verdict of a finding from its instances': any failure makes it partial (or failed, when
/// no instance was contained); otherwise the strongest of contained, dry run, notify only,
/// skipped.
fn overall(instances: &[Instance<'_>]) -> Verdict {
    let any = |v: Verdict| instances.iter().any(|i| i.verdict == v);
    let failed = instances.iter().filter(|i| i.verdict.is_failure()).count();
    if failed > 0 {
        let held = instances
            .iter()
            .any(|i| matches!(i.verdict, Verdict::Contained | Verdict::Partial));
        return if held {
            Verdict::Partial
        } else {
            Verdict::Failed
        };
    }
    [
        Verdict::DryRun,
        Verdict::Contained,
        Verdict::NotifyOnly,
        Verdict::Skipped,
    ]
    .into_iter()
    .find(|v| any(*v))
    .unwrap_or(Verdict::Skipped)
}

pub fn render(input: &NotifyInput) -> Message {
    if let Some(release) = &input.release {
        return render_release(&input.event, release);
    }
    let event = finding::parse_event(input.event.clone());
    let triage = match &input.triage {
        Some(StepResult::Completed(Outcome::Done(t) | Outcome::AlreadyDone(t))) => Some(t),
        _ => None,
    };
    let resolved = resolve_instances(input, &event, triage);
    let verdict = match &resolved {
        Resolved::Invalid(_) => Verdict::Invalid,
        Resolved::Skip(_) => Verdict::Skipped,
        Resolved::Instances(instances) => overall(instances),
    };
    let detail = event.as_ref().ok().map(|e| &e.detail);
    let finding_type = detail
        .and_then(|d| d.finding_type.as_deref())
        .map(finding::clip)
        .unwrap_or("unknown type");
    let severity = detail.and_then(|d| d.severity).filter(|s| s.is_finite());

    // An interface left open is what the team must act on first.
    let exposed: Vec<(String, String)> = match &resolved {
        Resolved::Instances(instances) => instances
            .iter()
            .filter_map(|i| match i.steps.isolate {
                Some(StepResult::Failed(f))
                    if f.error == ErrorName::IsolationFailedOpen.as_str() =>
                {
                    Some((i.target.instance_id.clone(), f.message()))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut body = String::new();
    for (_, message) in &exposed {
        // Its first sentence; the step's line below has the whole error.
        let lead = message
            .split_inclusive("by hand.")
            .next()
            .unwrap_or_default();
        let _ = writeln!(body, "{}\n", lead.chars().take(2000).collect::<String>());
    }
    let _ = writeln!(body, "{}", verdict.headline());
    let _ = writeln!(body, "GuardDuty finding: {finding_type}");
    if let Some(s) = severity {
        let _ = writeln!(body, "Severity: {s:.1} ({})", severity_label(s));
    }
    if let Some(title) = detail.and_then(|d| d.title.as_deref()) {
        let _ = writeln!(body, "Title: {}", finding::clip(title));
    }
    let subject_target;
    match &resolved {
        Resolved::Invalid(reason) => {
            subject_target = String::from("unreadable event");
            let _ = writeln!(
                body,
                "\nThe event could not be read, so nothing was changed."
            );
            let _ = writeln!(body, "Reason: {reason}");
        }
        Resolved::Skip(reason) => {
            subject_target = detail
                .and_then(|d| d.resource.as_ref())
                .and_then(|r| r.resource_type.as_deref())
                .map(finding::clip)
                .unwrap_or("no resource")
                .to_owned();
            let _ = writeln!(body, "\nNothing was changed: {reason}.");
            write_finding_ids(&mut body, event.as_ref().ok());
        }
        Resolved::Instances(instances) => {
            let [one] = instances.as_slice() else {
                subject_target = format!("{} instances", instances.len());
                write_group(
                    &mut body,
                    triage,
                    input.triage.as_ref(),
                    instances,
                    finding_type,
                    verdict,
                );
                return finish(
                    body,
                    verdict,
                    &exposed,
                    subject_target,
                    finding_type,
                    severity,
                    instances,
                );
            };
            let target = &one.target;
            subject_target = target.instance_id.clone();
            let links = Links::new(target);
            let _ = writeln!(body, "Instance: {}", target.instance_id);
            let _ = writeln!(
                body,
                "Account: {}  Region: {}",
                target.scope.account_id, target.scope.region
            );
            let _ = writeln!(body, "Finding id: {}", target.finding_id);
            if verdict == Verdict::DryRun {
                let _ = writeln!(
                    body,
                    "\nDRY RUN: nothing was changed. Each step lists the calls it would make."
                );
            }
            write_triage(&mut body, input.triage.as_ref(), one.plan);
            if verdict != Verdict::NotifyOnly {
                let _ = writeln!(body, "\nActions");
                write_actions(&mut body, &one.steps, finding_type, &links);
            }
            let _ = writeln!(body, "\nLinks");
            let _ = writeln!(body, "  Finding:  {}", links.finding(&target.finding_id));
            let _ = writeln!(body, "  Instance: {}", links.instance(&target.instance_id));
            if verdict.is_failure() {
                let _ = writeln!(
                    body,
                    "\nContainment is not complete: act on the failed steps above by hand."
                );
            }
        }
    }
    let instances = match &resolved {
        Resolved::Instances(i) => i.as_slice(),
        _ => &[],
    };
    finish(
        body,
        verdict,
        &exposed,
        subject_target,
        finding_type,
        severity,
        instances,
    )
}

/// The closing line, the size bound, the subject and the attributes.
fn finish(
    mut body: String,
    verdict: Verdict,
    exposed: &[(String, String)],
    subject_target: String,
    finding_type: &str,
    severity: Option<f64>,
    instances: &[Instance<'_>],
) -> Message {
    let _ = writeln!(
        body,
        "\nNothing was terminated, stopped or deleted. Sent by ec2-quarantine."
    );
    bound(&mut body);

    // What and where first: a long finding type is what gets cut.
    let subject = subject_line(&format!(
        "[{}{}] {} - GuardDuty {} {}",
        if exposed.is_empty() { "" } else { "EXPOSED, " },
        verdict.headline(),
        subject_target,
        severity.map(severity_label).unwrap_or("Unknown"),
        finding_type,
    ));

    let mut attributes = vec![
        ("verdict", "String", verdict_name(verdict).to_owned()),
        ("finding_type", "String", finding_type.to_owned()),
    ];
    if let Some(s) = severity {
        attributes.push(("severity", "Number", format!("{s}")));
    }
    if let Some(first) = instances.first() {
        attributes.push((
            "account_id",
            "String",
            first.target.scope.account_id.clone(),
        ));
        attributes.push(("region", "String", first.target.scope.region.clone()));
    }
    match instances {
        [one] => attributes.push(("instance_id", "String", one.target.instance_id.clone())),
        [] => {}
        many => attributes.push(("instance_count", "Number", many.len().to_string())),
    }
    attributes.retain(|(_, _, v)| !v.is_empty());
    Message {
        verdict,
        subject,
        body,
        attributes,
    }
}

/// Each step's line and details for one instance.
fn write_actions(body: &mut String, steps: &Steps<'_>, finding_type: &str, links: &Links) {
    write_isolation(body, steps.isolate, links);
    if finding_type.ends_with("!DNS") {
        let _ = writeln!(
            body,
            "      NOTE: this finding comes from DNS queries. Security groups do not filter DNS queries to the Route 53 Resolver, so the instance can still resolve names (and a DNS tunnel keeps working) after isolation: block its queries with Route 53 Resolver DNS Firewall."
        );
    }
    write_deregistration(body, steps.deregister);
    write_snapshots(body, steps.snapshot, links);
    write_role(body, steps.role, links);
}

/// The body for a finding naming several instances: the finding, what was passed over, then
/// each instance with its verdict, case and steps.
fn write_group(
    body: &mut String,
    triage: Option<&TriageReport>,
    triage_failure: Option<&StepResult<TriageReport>>,
    instances: &[Instance<'_>],
    finding_type: &str,
    verdict: Verdict,
) {
    let Some(first) = instances.first() else {
        return;
    };
    let scope = &first.target.scope;
    let links = Links::new(&first.target);
    let _ = writeln!(
        body,
        "Account: {}  Region: {}",
        scope.account_id, scope.region
    );
    let _ = writeln!(body, "Finding id: {}", first.target.finding_id);
    let count = |v: Verdict| instances.iter().filter(|i| i.verdict == v).count();
    let _ = writeln!(
        body,
        "Instances: {} named; {} contained, {} partially, {} failed, {} not contained",
        triage.map_or(instances.len(), |t| t.instances_named.max(instances.len())),
        count(Verdict::Contained) + count(Verdict::DryRun),
        count(Verdict::Partial),
        count(Verdict::Failed),
        count(Verdict::NotifyOnly)
            + count(Verdict::Skipped)
            + triage.map_or(0, |t| t.instances_named.saturating_sub(instances.len())),
    );
    if verdict == Verdict::DryRun {
        let _ = writeln!(
            body,
            "\nDRY RUN: nothing was changed. Each step lists the calls it would make."
        );
    }
    if let Some(t) = triage {
        if let Some(evidence) = &t.evidence {
            let _ = writeln!(body, "\nWhy: {evidence}.");
        }
        if t.decision != Decision::Contain && !t.reason.is_empty() {
            let lead = if t.decision == Decision::NotifyOnly {
                "Not contained, by policy"
            } else {
                "Nothing to contain"
            };
            let _ = writeln!(body, "\n{lead}: {}.", t.reason);
            let _ = writeln!(body, "Nothing was changed on any instance.");
        }
        if !t.passed_over.is_empty() {
            let _ = writeln!(body, "\nNamed by the finding but not contained:");
            for line in &t.passed_over {
                let _ = writeln!(body, "  - {line}");
            }
        }
    }
    if triage.is_none()
        && let Some(failure) = triage_failure
    {
        let _ = writeln!(body, "\nActions");
        write_status::<TriageReport>(body, "Triage", Some(failure));
        let _ = writeln!(body, "Nothing was changed on any instance.");
    }
    let finding_wide = triage.is_none_or(|t| t.decision != Decision::Contain);
    for i in instances {
        let _ = writeln!(
            body,
            "\nInstance {}: {}",
            i.target.instance_id,
            i.verdict.headline()
        );
        if let Some(plan) = i.plan {
            let _ = writeln!(body, "  named as: {}", plan.named_as);
        }
        if finding_wide {
            continue;
        }
        if let Some(plan) = i.plan {
            if !plan.reason.is_empty() {
                let _ = writeln!(body, "  {}", plan.reason);
            }
            if let Some(case) = &plan.case {
                let _ = writeln!(
                    body,
                    "  Case: {} (helper_scripts/deploy.sh case {})",
                    case.case_id, case.case_id
                );
            }
            if plan.decision != Decision::Contain {
                continue;
            }
        }
        write_actions(body, &i.steps, finding_type, &links);
        let _ = writeln!(
            body,
            "  Instance: {}",
            links.instance(&i.target.instance_id)
        );
    }
    if let Some(more) = triage
        .map(|t| t.instances_named.saturating_sub(instances.len()))
        .filter(|more| *more > 0)
    {
        let _ = writeln!(
            body,
            "\n... and {more} more instances the finding names (in GuardDuty's finding)"
        );
    }
    let _ = writeln!(body, "\nLinks");
    let _ = writeln!(
        body,
        "  Finding:  {}",
        links.finding(&first.target.finding_id)
    );
    if verdict.is_failure() {
        let _ = writeln!(
            body,
            "\nContainment is not complete: act on the failed steps above by hand."
        );
    }
}

/// The message of the release workflow.
fn render_release(request: &serde_json::Value, result: &StepResult<ReleaseReport>) -> Message {
    let instance = request
        .get("instance_id")
        .and_then(|v| v.as_str())
        .map(finding::clip)
        .unwrap_or("unknown instance");
    let verdict = match result {
        StepResult::Completed(Outcome::Done(_) | Outcome::AlreadyDone(_)) => Verdict::Released,
        StepResult::Completed(Outcome::Skipped { .. }) => Verdict::Skipped,
        _ => Verdict::Failed,
    };
    let headline = if verdict == Verdict::Failed {
        "RELEASE FAILED"
    } else {
        verdict.headline()
    };
    let mut body = String::new();
    let _ = writeln!(body, "{headline}");
    let _ = writeln!(body, "Instance: {instance}");
    if let Some(reason) = request.get("reason").and_then(|v| v.as_str()) {
        let _ = writeln!(body, "Reason given: {}", finding::clip(reason));
    }
    let _ = writeln!(body, "\nActions");
    if let Some(r) = write_status(&mut body, "Release", Some(result)) {
        if !r.case_id.is_empty() {
            let _ = writeln!(
                body,
                "      case {} (the full record: helper_scripts/deploy.sh case {})",
                r.case_id, r.case_id
            );
        }
        if let Some(f) = &r.finding_id {
            let _ = writeln!(body, "      contained by finding {f}");
        }
        for (eni, groups) in &r.interfaces {
            let _ = writeln!(body, "      {eni} back in {}", groups.join(", "));
        }
        if let Some(a) = &r.attributes {
            let _ = writeln!(body, "      attributes restored: {a}");
        }
        if !r.volumes_delete_on_termination.is_empty() {
            let _ = writeln!(
                body,
                "      volumes deleted with the instance again: {}",
                r.volumes_delete_on_termination.join(", ")
            );
        }
        if let Some(p) = &r.instance_profile {
            let _ = writeln!(body, "      instance profile restored: {p}");
        }
        if let Some(role) = &r.role {
            if role.policies_removed {
                let _ = writeln!(
                    body,
                    "      role {}: DenyAll removed{}",
                    role.role_name,
                    if role.credentials_released {
                        ", and the denies of credentials issued before containment"
                    } else {
                        "; credentials issued before containment stay denied"
                    }
                );
            } else {
                let _ = writeln!(
                    body,
                    "      role {}: quarantine policies KEPT, still held by {}",
                    role.role_name,
                    role.still_held_by.join(", ")
                );
            }
        }
        if let Some(a) = &r.auto_scaling {
            let _ = writeln!(body, "      Auto Scaling group {a}");
        }
        for t in &r.targets {
            let _ = writeln!(
                body,
                "      registered {} again with {}",
                t.target_id, t.target_group_arn
            );
        }
        for lb in &r.classic_load_balancers {
            let _ = writeln!(
                body,
                "      registered again with Classic Load Balancer {lb}"
            );
        }
    }
    if verdict == Verdict::Failed {
        let _ = writeln!(
            body,
            "\nThe containment record stays on the instance: fix the cause and start the release again."
        );
    }
    let _ = writeln!(
        body,
        "\nForensic snapshots are kept. Sent by ec2-quarantine."
    );
    let subject = subject_line(&format!("[{headline}] {instance} - ec2-quarantine release"));
    Message {
        verdict,
        subject,
        body,
        attributes: vec![
            ("verdict", "String", verdict_name(verdict).to_owned()),
            ("instance_id", "String", instance.to_owned()),
        ],
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Contained => "contained",
        Verdict::Partial => "partial",
        Verdict::Failed => "failed",
        Verdict::Skipped => "skipped",
        Verdict::NotifyOnly => "notify_only",
        Verdict::DryRun => "dry_run",
        Verdict::Released => "released",
        Verdict::Invalid => "invalid",
    }
}

/// The verdict for one instance that was to be contained, from its steps' results.
fn judge(input: &Steps<'_>, with_deregister: bool, triage_failed: bool) -> Verdict {
    #[derive(PartialEq)]
    enum S {
        Acted,
        /// A dry run's plan: counted as acted, and the verdict is a dry run's.
        Planned,
        Nothing,
        Failed,
    }
    fn state<T>(r: Option<&StepResult<T>>) -> S {
        match r {
            Some(StepResult::Completed(Outcome::Done(_) | Outcome::AlreadyDone(_))) => S::Acted,
            Some(StepResult::Completed(Outcome::DryRun { .. })) => S::Planned,
            Some(StepResult::Completed(Outcome::Skipped { .. })) => S::Nothing,
            _ => S::Failed,
        }
    }
    if triage_failed {
        return Verdict::Failed;
    }
    let mut steps = vec![
        state(input.isolate),
        state(input.snapshot),
        state(input.role),
    ];
    if with_deregister {
        steps.push(state(input.deregister));
    }
    let dry_run = steps.contains(&S::Planned);
    if dry_run && !steps.contains(&S::Failed) {
        return Verdict::DryRun;
    }
    if steps.contains(&S::Failed) {
        if matches!(steps[0], S::Acted | S::Planned) {
            Verdict::Partial
        } else {
            Verdict::Failed
        }
    } else if steps.iter().all(|s| *s == S::Nothing) {
        Verdict::Skipped
    } else {
        Verdict::Contained
    }
}

/// The most bytes of a message body: SNS refuses a message over 262,144 bytes, attributes
/// included (https://docs.aws.amazon.com/sns/latest/api/API_Publish.html); every list in a report
/// is capped already, so this only guards against the unforeseen.
const MAX_BODY_BYTES: usize = 200 * 1024;

/// Cuts a body over [`MAX_BODY_BYTES`] on a character boundary, saying where the rest is.
fn bound(body: &mut String) {
    if body.len() <= MAX_BODY_BYTES {
        return;
    }
    let mut end = MAX_BODY_BYTES;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    body.truncate(end);
    body.push_str("\n... (message cut at 200 KiB: each step's full result is in the Step Functions execution's history)\n");
}

/// One line of printable ASCII under SNS's limit (SNS rejects control characters and newlines).
fn subject_line(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .collect();
    if clean.chars().count() <= MAX_SUBJECT_CHARS {
        return clean;
    }
    let mut cut: String = clean.chars().take(MAX_SUBJECT_CHARS - 3).collect();
    cut.push_str("...");
    cut
}

fn write_finding_ids(body: &mut String, event: Option<&FindingEvent>) {
    if let Some(d) = event.map(|e| &e.detail) {
        if let Some(id) = d.id.as_deref() {
            let _ = writeln!(body, "Finding id: {}", finding::clip(id));
        }
        if let (Some(a), Some(r)) = (d.account_id.as_deref(), d.region.as_deref()) {
            let _ = writeln!(
                body,
                "Account: {}  Region: {}",
                finding::clip(a),
                finding::clip(r)
            );
        }
    }
}

/// Writes the status line of a step and returns its report when it has one.
fn write_status<'a, T>(
    body: &mut String,
    name: &str,
    result: Option<&'a StepResult<T>>,
) -> Option<&'a T> {
    match result {
        None => {
            let _ = writeln!(body, "  [NOT RUN] {name}");
            None
        }
        Some(StepResult::Completed(outcome)) => {
            let label = match outcome {
                Outcome::Done(_) => "done",
                Outcome::AlreadyDone(_) => "already done",
                Outcome::Skipped { .. } => "skipped",
                Outcome::DryRun { .. } => "DRY RUN, nothing changed",
            };
            let _ = write!(body, "  [{label}] {name}");
            if let Outcome::Skipped { reason } = outcome {
                let _ = write!(body, ": {reason}");
            }
            let _ = writeln!(body);
            if let Outcome::DryRun { actions } = outcome {
                write_plan(body, actions);
            }
            outcome.report()
        }
        Some(StepResult::Failed(f)) => {
            let _ = writeln!(body, "  [FAILED] {name}: {}: {}", f.error, f.message());
            None
        }
        Some(StepResult::Unreadable(v)) => {
            let raw = v.to_string();
            let _ = writeln!(
                body,
                "  [FAILED] {name}: unreadable result {}",
                finding::clip(&raw)
            );
            None
        }
    }
}

fn write_plan(body: &mut String, actions: &[PlannedAction]) {
    if actions.is_empty() {
        let _ = writeln!(body, "      would change nothing: already in place");
    }
    for a in actions {
        let check = match &a.check {
            Check::Permitted => "EC2 dry run: permitted".to_owned(),
            Check::Denied { message } => format!("EC2 dry run: DENIED: {message}"),
            Check::Failed { message } => format!("EC2 dry run: failed: {message}"),
            Check::NotCheckable => "no dry run in this API".to_owned(),
        };
        let _ = writeln!(
            body,
            "      would call {} on {}: {} ({check})",
            a.action, a.resource, a.detail
        );
    }
}

fn write_isolation(body: &mut String, r: Option<&StepResult<IsolateReport>>, links: &Links) {
    let Some(report) = write_status(body, "Network isolation", r) else {
        return;
    };
    for g in &report.quarantine_groups {
        let _ = writeln!(
            body,
            "      quarantine group {} in {}: {}",
            g.group_id,
            g.vpc_id,
            links.security_group(&g.group_id)
        );
    }
    for eni in &report.interfaces {
        let status = match eni.status {
            InterfaceStatus::Isolated => "isolated",
            InterfaceStatus::AlreadyIsolated => "already isolated",
        };
        let previous = if eni.previous_groups.is_empty() {
            "unknown".to_owned()
        } else {
            eni.previous_groups.join(", ")
        };
        let path = if eni.connections_cut {
            " after passing through the transit group (the technique AWS's containment runbook uses to cut tracked connections)"
        } else {
            ""
        };
        let _ = writeln!(
            body,
            "      {} {status}{path}; previous groups: {previous}",
            eni.interface_id
        );
        if eni.status == InterfaceStatus::Isolated && !eni.connections_cut {
            let _ = writeln!(
                body,
                "        WARNING: transit failed: connections open before isolation may persist"
            );
        }
    }
    for w in &report.warnings {
        let _ = writeln!(body, "      WARNING: {w}");
    }
    for skipped in &report.skipped_interfaces {
        let _ = writeln!(
            body,
            "      {} NOT isolated: {}",
            skipped.interface_id, skipped.reason
        );
    }
    let _ = writeln!(
        body,
        "      termination protection {}; shutdown behaviour: {}",
        if report.termination_protection {
            "on"
        } else {
            "NOT on (see the warning)"
        },
        report.shutdown_behavior
    );
    if !report.volumes_kept_on_termination.is_empty() {
        let _ = writeln!(
            body,
            "      volumes no longer deleted with the instance: {}",
            report.volumes_kept_on_termination.join(", ")
        );
    }
}

fn write_triage(
    body: &mut String,
    r: Option<&StepResult<TriageReport>>,
    plan: Option<&TargetPlan>,
) {
    match r {
        None => {}
        Some(StepResult::Completed(Outcome::Done(t) | Outcome::AlreadyDone(t))) => {
            // The instance's own reason, or the finding's (a decision for the whole finding,
            // such as the policy's, is said once, in the report).
            let (decision, reason) = plan
                .map(|p| (p.decision, p.reason.as_str()))
                .filter(|(_, r)| !r.is_empty())
                .or(plan.map(|p| (p.decision, t.reason.as_str())))
                .unwrap_or((t.decision, t.reason.as_str()));
            let (case, already_contained_by, contained_at) = plan
                .map(|p| (&p.case, &p.already_contained_by, &p.contained_at))
                .unwrap_or((&None, &None, &None));
            match decision {
                Decision::NotifyOnly => {
                    let _ = writeln!(body, "\nNot contained, by policy: {reason}.");
                    let _ = writeln!(
                        body,
                        "Nothing was changed. Contain it by hand if it should be."
                    );
                }
                Decision::NothingToContain => {
                    let _ = writeln!(body, "\nNothing to contain: {reason}.");
                }
                Decision::Contain => {
                    if let Some(evidence) = &t.evidence {
                        let _ = writeln!(body, "\nContained because: {evidence}.");
                    }
                    match (case, already_contained_by) {
                        (Some(case), _) => {
                            let _ = writeln!(
                                body,
                                "Case: {} (the full record: helper_scripts/deploy.sh case {})",
                                case.case_id, case.case_id
                            );
                        }
                        (None, None) => {
                            let _ = writeln!(
                                body,
                                "Case: none ({}).",
                                if t.dry_run {
                                    "dry run"
                                } else {
                                    "not recorded: see the warnings"
                                }
                            );
                        }
                        (None, Some(_)) => {}
                    }
                    if let Some(earlier) = already_contained_by {
                        let _ = writeln!(
                            body,
                            "\nAlready contained (case {earlier}{}): this finding joins the case; nothing is done twice, each step reports what is in place.",
                            contained_at
                                .as_deref()
                                .map(|at| format!(" at {at}"))
                                .unwrap_or_default()
                        );
                    }
                }
            }
        }
        Some(other) => {
            let _ = writeln!(body, "\nActions");
            write_status::<TriageReport>(body, "Triage", Some(other));
        }
    }
}

fn write_deregistration(body: &mut String, r: Option<&StepResult<DeregisterReport>>) {
    let Some(report) = write_status(body, "Out of service (Auto Scaling, load balancers)", r)
    else {
        return;
    };
    match &report.auto_scaling {
        Some(a) => {
            let what = match (a.status, a.action) {
                (GroupStatus::LeftAsIs, AutoScalingAction::None) => {
                    "left as it is (AutoScalingAction none)".to_owned()
                }
                (GroupStatus::LeftAsIs, _) => format!(
                    "left as it is: the instance was {}, not InService",
                    a.previous_state
                ),
                (status, action) => format!(
                    "{} ({})",
                    match action {
                        AutoScalingAction::Detach => "detached",
                        _ => "in Standby",
                    },
                    if status == GroupStatus::AlreadyInPlace {
                        "already"
                    } else {
                        "done"
                    }
                ),
            };
            let _ = writeln!(body, "      Auto Scaling group {}: {what}", a.group_name);
            if a.status != GroupStatus::LeftAsIs && !a.capacity_decremented {
                let _ = writeln!(
                    body,
                    "        the group was at its minimum size: it launches a replacement"
                );
            }
        }
        None => {
            let _ = writeln!(body, "      in no Auto Scaling group");
        }
    }
    for t in &report.targets {
        let port = t.port.map(|p| format!(" port {p}")).unwrap_or_default();
        let _ = writeln!(
            body,
            "      deregistered {}{port} from {}",
            t.target_id, t.target_group_arn
        );
    }
    if report.targets_total > report.targets.len() {
        let _ = writeln!(
            body,
            "      ... {} registrations in all (the first {} above; the others: the EC2 console's target groups)",
            report.targets_total,
            report.targets.len()
        );
    }
    for lb in &report.classic_load_balancers {
        let _ = writeln!(body, "      deregistered from Classic Load Balancer {lb}");
    }
    if report.classic_load_balancers_total > report.classic_load_balancers.len() {
        let _ = writeln!(
            body,
            "      ... {} Classic Load Balancers in all (the first {} above)",
            report.classic_load_balancers_total,
            report.classic_load_balancers.len()
        );
    }
    for w in &report.warnings {
        let _ = writeln!(body, "      WARNING: {w}");
    }
}

fn write_snapshots(body: &mut String, r: Option<&StepResult<SnapshotReport>>, links: &Links) {
    let Some(report) = write_status(body, "Forensic snapshots", r) else {
        return;
    };
    for s in &report.snapshots {
        let _ = writeln!(
            body,
            "      {} of {} ({}): {}",
            s.snapshot_id,
            s.volume_id,
            s.device.as_deref().unwrap_or("unknown device"),
            links.snapshot(&s.snapshot_id)
        );
    }
    for w in &report.warnings {
        let _ = writeln!(body, "      WARNING: {w}");
    }
}

fn write_role(body: &mut String, r: Option<&StepResult<RoleReport>>, links: &Links) {
    let Some(report) = write_status(body, "IAM role containment", r) else {
        return;
    };
    let change = |c: Change| match c {
        Change::Applied => "applied",
        Change::AlreadyInPlace => "already in place",
        Change::NotConfigured => "not done (RoleAction)",
    };
    let _ = writeln!(
        body,
        "      role {}: {}",
        report.role_name,
        links.role(&report.role_name)
    );
    let _ = writeln!(
        body,
        "      role action: {}",
        match report.role_action {
            RoleAction::DenyAll => "deny-all",
            RoleAction::RevokeSessions =>
                "revoke-sessions (every session of the role issued before containment denied, other instances' too until their credentials rotate)",
            RoleAction::RevokeInstance =>
                "revoke-instance (this instance's credentials denied wherever they are used; other instances keep working)",
            RoleAction::None => "none (role left as it is)",
        }
    );
    if report.role_action == RoleAction::RevokeInstance {
        let _ = writeln!(
            body,
            "      credentials EC2 delivered to this instance: denied wherever they are used ({})",
            change(report.revoke_instance)
        );
    } else {
        let _ = writeln!(
            body,
            "      DenyAll policy: {}; sessions issued before {}: revoked ({})",
            change(report.deny_all),
            report
                .sessions_issued_before
                .as_deref()
                .unwrap_or("the first containment"),
            change(report.revoke_sessions)
        );
    }
    match &report.instance_profile {
        Some(swap) => {
            let _ = writeln!(
                body,
                "      instance profile: replaced by the quarantine profile, which grants nothing ({}); previous: {}",
                change(swap.change),
                swap.previous_profile_arn
                    .as_deref()
                    .unwrap_or("recorded in the case")
            );
        }
        None => {
            let _ = writeln!(body, "      instance profile: none to replace");
        }
    }
    let total = report
        .other_instances_total
        .max(report.other_instances.len());
    let at_least = if report.other_instances_more {
        "at least "
    } else {
        ""
    };
    let listed = report.other_instances.join(", ");
    let rest = if total > report.other_instances.len() {
        format!(
            " (the first {}; the others: EC2 console, instances with the role's instance profile)",
            report.other_instances.len()
        )
    } else {
        String::new()
    };
    match (&report.other_instances_error, total) {
        (Some(e), _) => {
            let _ = writeln!(body, "      other instances using the role: unknown ({e})");
        }
        (None, 0) => {
            let _ = writeln!(body, "      no other instance uses the role");
        }
        (None, n) => match report.role_action {
            RoleAction::DenyAll => {
                let _ = writeln!(
                    body,
                    "      WARNING: {at_least}{n} other instance(s) use this role and lost its permissions too: {listed}{rest}"
                );
            }
            RoleAction::RevokeSessions => {
                let _ = writeln!(
                    body,
                    "      WARNING: {at_least}{n} other instance(s) use this role: their current credentials are denied too until they rotate: {listed}{rest}"
                );
            }
            _ => {
                let _ = writeln!(
                    body,
                    "      {at_least}{n} other instance(s) use this role and keep working: {listed}{rest}"
                );
            }
        },
    }
    for w in &report.warnings {
        let _ = writeln!(body, "      WARNING: {w}");
    }
}

/// AWS console addresses for the finding's partition and region.
struct Links {
    regional: String,
    global: &'static str,
    region: String,
}

impl Links {
    fn new(target: &Target) -> Links {
        let region = target.scope.region.clone();
        let (regional, global) = match target.scope.partition.as_str() {
            "aws-cn" => (
                format!("https://{region}.console.amazonaws.cn"),
                "https://console.amazonaws.cn",
            ),
            "aws-us-gov" => (
                "https://console.amazonaws-us-gov.com".to_owned(),
                "https://console.amazonaws-us-gov.com",
            ),
            _ => (
                format!("https://{region}.console.aws.amazon.com"),
                "https://console.aws.amazon.com",
            ),
        };
        Links {
            regional,
            global,
            region,
        }
    }

    fn ec2(&self, fragment: &str) -> String {
        format!(
            "{}/ec2/home?region={}#{fragment}",
            self.regional, self.region
        )
    }

    fn instance(&self, id: &str) -> String {
        self.ec2(&format!("InstanceDetails:instanceId={id}"))
    }

    fn security_group(&self, id: &str) -> String {
        self.ec2(&format!("SecurityGroup:groupId={id}"))
    }

    fn snapshot(&self, id: &str) -> String {
        self.ec2(&format!("SnapshotDetails:snapshotId={id}"))
    }

    fn finding(&self, id: &str) -> String {
        format!(
            "{}/guardduty/home?region={}#/findings?macros=current&fId={id}",
            self.regional, self.region
        )
    }

    fn role(&self, name: &str) -> String {
        format!("{}/iam/home#/roles/details/{name}", self.global)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(resource: serde_json::Value, finding_type: &str) -> serde_json::Value {
        json!({
            "detail-type": "GuardDuty Finding", "source": "aws.guardduty",
            "account": "123456789012", "region": "eu-west-1",
            "detail": {"id": "f1", "type": finding_type, "severity": 8.5, "resource": resource,
                       "title": "something happened"}
        })
    }

    fn instance() -> serde_json::Value {
        json!({"resourceType": "Instance", "instanceDetails": {"instanceId": "i-0123456789abcdef0"}})
    }

    fn input(v: serde_json::Value) -> NotifyInput {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_finding_without_an_instance_is_reported_as_not_actionable() {
        let m = render(&input(
            json!({"event": event(json!({"resourceType": "S3Bucket"}), "Policy:S3/BucketBlockPublicAccessDisabled")}),
        ));
        assert_eq!(m.verdict, Verdict::Skipped);
        assert!(!m.verdict.is_failure());
        assert!(
            m.subject
                .starts_with("[NOT ACTIONABLE] S3Bucket - GuardDuty High"),
            "{}",
            m.subject
        );
        assert!(
            m.body
                .contains("Nothing was changed: resource type \"S3Bucket\" names no EC2 instance"),
            "{}",
            m.body
        );
        assert!(
            m.attributes
                .contains(&("verdict", "String", "skipped".into()))
        );
    }

    /// Triage's plan for a group of instances, each with `decision`.
    fn group_triage(decisions: &[(&str, &str)], decision: &str, reason: &str) -> serde_json::Value {
        let targets: Vec<_> = decisions
            .iter()
            .map(|(id, d)| json!({
                "decision": d, "reason": "", "named_as": "an instance of the attack sequence (EC2_INSTANCE)",
                "target": {"finding_id": "f1", "finding_type": "AttackSequence:EC2/CompromisedInstanceGroup",
                    "severity": 9.0, "scope": {"account_id": "123456789012", "region": "eu-west-1", "partition": "aws"},
                    "instance_id": id, "role_name": null, "instance_profile_arn": null, "vpc_ids": []},
                "case": null, "already_contained_by": null, "contained_at": null}))
            .collect();
        json!({"status": "done", "decision": decision, "reason": reason, "instance_id": null,
               "targets": targets, "passed_over": ["resource 3 (S3_BUCKET b): not an EC2 instance"],
               "instances_named": decisions.len(), "dry_run": false, "role_action": "deny-all",
               "auto_scaling_action": "standby", "side": "acting", "evidence": "named in a group (acting)"})
    }

    fn sequence_event() -> serde_json::Value {
        event(
            json!({"resourceType": "AttackSequence"}),
            "AttackSequence:EC2/CompromisedInstanceGroup",
        )
    }

    fn done_steps(id: &str) -> serde_json::Value {
        json!({
            "isolate": {"status": "done", "instance_id": id, "quarantine_groups": [], "interfaces": [],
                        "termination_protection": true, "shutdown_behavior": "stop"},
            "deregister": {"status": "skipped", "reason": "in no group"},
            "snapshot": {"status": "done", "instance_id": id, "snapshots": []},
            "role": {"status": "skipped", "reason": "the instance has no instance profile"}
        })
    }

    #[test]
    fn a_group_is_one_message_naming_every_instance() {
        let a = "i-0aaaaaaaaaaaaaaaa";
        let b = "i-0bbbbbbbbbbbbbbbb";
        let m = render(&input(json!({
            "event": sequence_event(),
            "triage": group_triage(&[(a, "contain"), (b, "contain")], "contain", ""),
            "instances": [done_steps(a), done_steps(b)],
        })));
        assert_eq!(m.verdict, Verdict::Contained, "{}", m.body);
        assert!(
            m.subject
                .starts_with("[CONTAINED] 2 instances - GuardDuty High AttackSequence:EC2/"),
            "{}",
            m.subject
        );
        assert!(
            m.body.contains(&format!("Instance {a}: CONTAINED")),
            "{}",
            m.body
        );
        assert!(
            m.body.contains(&format!("Instance {b}: CONTAINED")),
            "{}",
            m.body
        );
        assert!(
            m.body.contains("S3_BUCKET"),
            "what was passed over is named"
        );
        assert!(
            m.attributes
                .contains(&("instance_count", "Number", "2".into()))
        );

        // One instance's isolation failing makes the finding partial, and the workflow fails.
        let mut failed = done_steps(b);
        failed["isolate"] = json!({"Error": "AccessDenied", "Cause": "{\"errorType\":\"AccessDenied\",\"errorMessage\":\"denied\"}"});
        let m = render(&input(json!({
            "event": sequence_event(),
            "triage": group_triage(&[(a, "contain"), (b, "contain")], "contain", ""),
            "instances": [done_steps(a), failed],
        })));
        assert_eq!(m.verdict, Verdict::Partial, "{}", m.body);
        assert!(m.verdict.is_failure());
        assert!(
            m.body
                .contains(&format!("Instance {b}: CONTAINMENT FAILED")),
            "{}",
            m.body
        );
        assert!(
            m.body
                .contains("[FAILED] Network isolation: AccessDenied: denied"),
            "{}",
            m.body
        );

        // Every instance failing is a failure; an exempt one beside a contained one is not.
        let m = render(&input(json!({
            "event": sequence_event(),
            "triage": group_triage(&[(a, "contain"), (b, "contain")], "contain", ""),
        })));
        assert_eq!(m.verdict, Verdict::Failed, "{}", m.body);
        let m = render(&input(json!({
            "event": sequence_event(),
            "triage": group_triage(&[(a, "contain"), (b, "notify_only")], "contain", ""),
            "instances": [done_steps(a), {"isolate": null, "deregister": null, "snapshot": null, "role": null}],
        })));
        assert_eq!(m.verdict, Verdict::Contained, "{}", m.body);
        assert!(
            m.body
                .contains(&format!("Instance {b}: NOT CONTAINED BY POLICY")),
            "{}",
            m.body
        );
    }

    #[test]
    fn a_group_whose_triage_failed_is_a_failure_naming_each_instance() {
        let sample: serde_json::Value = serde_json::from_str(include_str!(
            "../events/attack-sequence-instance-group.json"
        ))
        .unwrap();
        let m = render(&input(json!({
            "event": sample,
            "triage": {"Error": "MemberRoleUnavailable", "Cause": "{\"errorType\":\"MemberRoleUnavailable\",\"errorMessage\":\"no role\"}"},
            "instances": [],
        })));
        assert_eq!(m.verdict, Verdict::Failed, "{}", m.body);
        assert!(m.verdict.is_failure());
        assert!(
            m.body
                .contains("[FAILED] Triage: MemberRoleUnavailable: no role"),
            "{}",
            m.body
        );
        for id in ["i-0a1b2c3d4e5f67890", "i-0b2c3d4e5f6a78901"] {
            assert!(
                m.body
                    .contains(&format!("Instance {id}: CONTAINMENT FAILED")),
                "{}",
                m.body
            );
        }
        assert!(!m.body.contains("[NOT RUN]"), "{}", m.body);
    }

    #[test]
    fn a_group_over_the_cap_says_why_nothing_was_contained() {
        let ids: Vec<String> = (0..12).map(|i| format!("i-{:017x}", i + 1)).collect();
        let plan: Vec<(&str, &str)> = ids.iter().map(|i| (i.as_str(), "notify_only")).collect();
        let m = render(&input(json!({
            "event": sequence_event(),
            "triage": group_triage(&plan, "notify_only", "the finding names 12 instances, more than MaxInstancesPerFinding (10)"),
            "instances": [],
        })));
        assert_eq!(m.verdict, Verdict::NotifyOnly);
        assert!(!m.verdict.is_failure());
        assert!(
            m.body
                .contains("Not contained, by policy: the finding names 12 instances"),
            "{}",
            m.body
        );
        assert!(m.body.contains("Nothing was changed on any instance."));
        for id in &ids {
            assert!(m.body.contains(id.as_str()), "{id}");
        }
        assert!(
            !m.body.contains("[NOT RUN]"),
            "no step lines for instances not contained"
        );
    }

    #[test]
    fn an_unreadable_event_is_reported_and_fails_the_workflow() {
        let m = render(&input(json!({"event": {"hello": "world"}})));
        assert_eq!(m.verdict, Verdict::Invalid);
        assert!(m.verdict.is_failure());
        assert!(
            m.subject.starts_with("[INVALID FINDING] unreadable event"),
            "{}",
            m.subject
        );
        assert!(m.body.contains("could not be read"), "{}", m.body);
    }

    #[test]
    fn steps_that_did_not_run_are_not_reported_as_done() {
        let m = render(&input(
            json!({"event": event(instance(), "Backdoor:EC2/C&CActivity.B")}),
        ));
        assert_eq!(m.verdict, Verdict::Failed);
        assert_eq!(m.body.matches("[NOT RUN]").count(), 4, "{}", m.body);
        assert!(m.body.contains("Containment is not complete"));
    }

    #[test]
    fn isolation_failing_is_a_failure_even_when_the_rest_worked() {
        let m = render(&input(json!({
            "event": event(instance(), "Backdoor:EC2/C&CActivity.B"),
            "isolate": {"Error": "ContainmentIncomplete", "Cause": "not json"},
            "snapshot": {"status": "done", "instance_id": "i-0123456789abcdef0", "snapshots": []},
            "role": {"status": "skipped", "reason": "the instance has no instance profile"},
        })));
        assert_eq!(m.verdict, Verdict::Failed);
        assert!(
            m.body
                .contains("[FAILED] Network isolation: ContainmentIncomplete: not json"),
            "{}",
            m.body
        );
        assert!(
            m.body
                .contains("[skipped] IAM role containment: the instance has no instance profile"),
            "{}",
            m.body
        );
    }

    #[test]
    fn an_unexpected_step_result_is_kept_and_counted_as_failed() {
        let m = render(&input(json!({
            "event": event(instance(), "Backdoor:EC2/C&CActivity.B"),
            "isolate": {"status": "done", "unexpected": true},
            "snapshot": {"status": "skipped", "reason": "x"},
            "role": {"status": "skipped", "reason": "y"},
        })));
        assert_eq!(m.verdict, Verdict::Failed);
        assert!(m.body.contains("unreadable result"), "{}", m.body);
    }

    #[test]
    fn subjects_are_one_short_line_of_ascii() {
        let hostile = format!("Trojan:EC2/é\nBad\u{7}{}", "X".repeat(300));
        let m = render(&input(json!({"event": event(instance(), &hostile)})));
        assert!(
            m.subject.chars().count() <= MAX_SUBJECT_CHARS,
            "{}",
            m.subject
        );
        assert!(
            m.subject.chars().all(|c| c.is_ascii_graphic() || c == ' '),
            "{}",
            m.subject
        );
        assert!(m.subject.contains("i-0123456789abcdef0"));
        assert!(m.subject.ends_with("..."));
    }

    #[test]
    fn links_follow_the_partition() {
        let mut e = event(instance(), "Backdoor:EC2/C&CActivity.B");
        e["detail"]["partition"] = "aws-cn".into();
        e["region"] = "cn-north-1".into();
        let m = render(&input(json!({"event": e})));
        assert!(
            m.body
                .contains("https://cn-north-1.console.amazonaws.cn/ec2/home?region=cn-north-1"),
            "{}",
            m.body
        );
    }
}
