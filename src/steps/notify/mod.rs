//! The notification: one SNS message per finding saying what was found, what each containment
//! step did or why it failed, and where to look next.

use std::fmt::Write as _;

use aws_sdk_sns::types::MessageAttributeValue;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::aws::context::Ctx;
use crate::domain::finding::{self, FindingEvent, Resolution, Target, severity_label};
use crate::domain::outcome::Outcome;
use crate::error::{Error, ErrorName};
use crate::steps::deregister::DeregisterReport;
use crate::steps::isolate::IsolateReport;
use crate::steps::release::ReleaseReport;
use crate::steps::role::RoleReport;
use crate::steps::snapshot::SnapshotReport;
use crate::steps::triage::{Decision, TargetPlan, TriageReport};

pub mod chat;
mod release;
mod text;

use release::render_release;
use text::{
    Links, bound, subject_line, write_actions, write_finding_ids, write_status, write_triage,
};

/// SNS rejects subjects of 100 characters or more.
pub const MAX_SUBJECT_CHARS: usize = 99;

/// The longest the chat form's publish may take (the function's timeout is 30 s).
const CHAT_PUBLISH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Settings of the notify function, read once at init.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    pub topic_arn: String,
    /// The topic of the chat form (AWS Chatbot's custom notifications), when the stack has one.
    pub chat_topic_arn: Option<String>,
}

impl NotifySettings {
    pub const TOPIC_ARN_VAR: &'static str = "ALERT_TOPIC_ARN";
    pub const CHAT_TOPIC_ARN_VAR: &'static str = "CHAT_TOPIC_ARN";

    pub fn from_env() -> Result<NotifySettings, Error> {
        let topic_arn = std::env::var(Self::TOPIC_ARN_VAR).unwrap_or_default();
        let chat_topic_arn = std::env::var(Self::CHAT_TOPIC_ARN_VAR).unwrap_or_default();
        Self::from_values(topic_arn, chat_topic_arn)
    }

    fn from_values(topic_arn: String, chat_topic_arn: String) -> Result<NotifySettings, Error> {
        let is_topic = |arn: &str| {
            let parts: Vec<&str> = arn.split(':').collect();
            parts.len() == 6 && parts[0] == "arn" && parts[2] == "sns" && !parts[5].is_empty()
        };
        if !is_topic(&topic_arn) {
            return Err(Error::Misconfigured(format!(
                "{} must be the ARN of the SNS topic to notify, got {topic_arn:?}",
                Self::TOPIC_ARN_VAR
            )));
        }
        // A bad chat topic turns the chat form off, never the report: the function must start.
        let chat_topic_arn = match chat_topic_arn.trim() {
            "" => None,
            arn if is_topic(arn) => Some(arn.to_owned()),
            other => {
                tracing::warn!(
                    value = %finding::clip(other),
                    "{} is not an SNS topic ARN: no chat notifications",
                    Self::CHAT_TOPIC_ARN_VAR
                );
                None
            }
        };
        Ok(NotifySettings {
            topic_arn,
            chat_topic_arn,
        })
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

    pub fn headline(self) -> &'static str {
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
    /// The chat form's delivery, when the stack has a chat topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat: Option<Delivery>,
}

/// How a second form of the report fared. Its failure does not fail the step: the report
/// reached the alert topic already, and a retry would send it twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    Sent { message_id: String },
    Failed { error: String },
}

/// The message, rendered before it is sent (and testable without SNS).
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub verdict: Verdict,
    pub subject: String,
    pub body: String,
    pub attributes: Vec<(&'static str, &'static str, String)>,
    /// The chat form of the same report (sent when the stack has a chat topic).
    pub chat: chat::Card,
}

/// The notify function's client for its topic, made once at init.
#[derive(Debug, Clone)]
pub struct Notifier {
    sns: aws_sdk_sns::Client,
    topic_arn: String,
    chat: Option<(aws_sdk_sns::Client, String)>,
}

impl Notifier {
    pub fn new(ctx: &Ctx, settings: &NotifySettings) -> Notifier {
        let ctx = ctx.acting_as("notify");
        Notifier {
            sns: ctx.sns_for_topic(&settings.topic_arn),
            topic_arn: settings.topic_arn.clone(),
            chat: settings
                .chat_topic_arn
                .as_ref()
                .map(|arn| (ctx.sns_for_topic(arn), arn.clone())),
        }
    }

    /// Publishes the message for `input`, then its chat form when there is a chat topic.
    pub async fn notify(&self, input: &NotifyInput) -> Result<NotifyOutput, Error> {
        let message = render(input);
        let mut out = notify(&self.sns, &self.topic_arn, &message).await?;
        if let Some((sns, topic_arn)) = &self.chat {
            out.chat = Some(publish_chat(sns, topic_arn, &message).await);
        }
        Ok(out)
    }
}

/// The chat form, after the report went out: a failure is reported in the output and the log.
#[tracing::instrument(skip_all)]
async fn publish_chat(sns: &aws_sdk_sns::Client, topic_arn: &str, message: &Message) -> Delivery {
    let publish = sns
        .publish()
        .topic_arn(topic_arn)
        .message(message.chat.to_json(&message.subject))
        .send();
    // Bounded well inside the function's timeout: a hung chat publish must not time the function
    // out after the report went out (the state machine's retry would send the report twice).
    let Ok(sent) = tokio::time::timeout(CHAT_PUBLISH_TIMEOUT, publish).await else {
        tracing::warn!("chat notification not sent within {CHAT_PUBLISH_TIMEOUT:?}");
        return Delivery::Failed {
            error: format!("sns:Publish took longer than {CHAT_PUBLISH_TIMEOUT:?}"),
        };
    };
    match sent {
        Ok(out) => {
            let message_id = out.message_id().unwrap_or_default().to_owned();
            info!(%message_id, "chat notification sent");
            Delivery::Sent { message_id }
        }
        Err(e) => {
            let error = Error::from_sdk("sns:Publish", e).to_string();
            tracing::warn!(%error, "chat notification not sent (the report went to the alert topic)");
            Delivery::Failed { error }
        }
    }
}

#[tracing::instrument(skip_all)]
async fn notify(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    message: &Message,
) -> Result<NotifyOutput, Error> {
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
        subject: message.subject.clone(),
        message_id,
        chat: None,
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
///
/// One piece on purpose: the shapes notify is given (a plan of instances, a triage that failed,
/// a finding alone) side by side, each resolved into the same instances.
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
                    // Still waiting at the report: the approval was not given.
                    Decision::NotifyOnly | Decision::AwaitApproval => Verdict::NotifyOnly,
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
        && let Ok(Resolution::Contain(named)) = finding::targets(event)
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
        Ok(Resolution::Contain(target)) => {
            let verdict = match triage.map(|t| t.decision) {
                Some(Decision::NotifyOnly | Decision::AwaitApproval) => Verdict::NotifyOnly,
                _ => judge(&flat, with_deregister, triage_failed),
            };
            Resolved::Instances(vec![Instance {
                target,
                plan: None,
                steps: flat,
                verdict,
            }])
        }
        Ok(Resolution::Skip(reason)) => Resolved::Skip(reason),
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

/// One piece on purpose: the message reads top to bottom as the function does (finding,
/// verdict, each step, next actions); each section is a `write_*` function of `text.rs`.
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
                    triage,
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
        triage,
    )
}

/// The closing line, the size bound, the subject, the attributes and the chat card.
#[allow(clippy::too_many_arguments)]
fn finish(
    mut body: String,
    verdict: Verdict,
    exposed: &[(String, String)],
    subject_target: String,
    finding_type: &str,
    severity: Option<f64>,
    instances: &[Instance<'_>],
    triage: Option<&TriageReport>,
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
    let chat = chat_card(verdict, exposed, finding_type, severity, instances, triage);
    Message {
        verdict,
        subject,
        body,
        attributes,
        chat,
    }
}

/// The chat card of a containment report: the verdict, each instance in a line (its case and
/// what failed), the safety rails that applied, and what to do next.
fn chat_card(
    verdict: Verdict,
    exposed: &[(String, String)],
    finding_type: &str,
    severity: Option<f64>,
    instances: &[Instance<'_>],
    triage: Option<&TriageReport>,
) -> chat::Card {
    use chat::escape;
    let severity_text = severity.map_or_else(
        || String::from("Unknown"),
        |s| format!("{} {s:.1}", severity_label(s)),
    );
    let first = instances.first().map(|i| &i.target);
    let mut card = chat::Card {
        title: format!(
            "{}{}: GuardDuty {} {}",
            if exposed.is_empty() { "" } else { "EXPOSED, " },
            verdict.headline(),
            severity_text,
            escape(finding_type)
        ),
        event_type: format!("ec2-quarantine.{}", verdict_name(verdict)),
        thread_id: first.map(|t| t.finding_id.clone()),
        keywords: vec![verdict.headline().to_owned(), severity_text.clone()],
        ..chat::Card::default()
    };
    card.lines.push(format!("*{}*", verdict.headline()));
    for (instance, _) in exposed {
        card.lines.push(format!(
            "*`{instance}` still has an open network interface: isolate it by hand now.*"
        ));
    }
    if let Some(t) = first {
        card.lines.push(format!(
            "Account `{}`, {}. Finding `{}`.",
            t.scope.account_id,
            t.scope.region,
            escape(&t.finding_id)
        ));
        card.context = vec![
            ("account", t.scope.account_id.clone()),
            ("region", t.scope.region.clone()),
            ("finding_id", t.finding_id.clone()),
            ("finding_type", finding_type.to_owned()),
            (
                "severity",
                severity.map(|s| format!("{s}")).unwrap_or_default(),
            ),
        ];
        card.keywords.push(t.scope.account_id.clone());
    }
    for i in instances.iter().take(chat::MAX_LISTED) {
        let mut line = format!("• `{}`: {}", i.target.instance_id, i.verdict.headline());
        if let Some(case) = i.plan.and_then(|p| p.case.as_ref()) {
            line.push_str(&format!(", case `{}`", case.case_id));
        }
        if i.verdict.is_failure() {
            line.push_str(&format!(
                "; not done: {}",
                unfinished_steps(&i.steps).join(", ")
            ));
        } else if let Some(reason) = i.plan.map(|p| p.reason.as_str()).filter(|r| !r.is_empty()) {
            line.push_str(&format!(" ({})", escape(reason)));
        }
        card.lines.push(line);
        card.related_resources.push(i.target.instance_id.clone());
    }
    if let Some(more) = instances
        .len()
        .checked_sub(chat::MAX_LISTED)
        .filter(|n| *n > 0)
    {
        card.lines
            .push(format!("• ... and {more} more (the email lists each)"));
    }
    if let Some(t) = triage {
        if t.decision != Decision::Contain && !t.reason.is_empty() {
            card.lines
                .push(format!("Not contained: {}.", escape(&t.reason)));
        }
        for rail in t
            .rails
            .iter()
            .chain(t.targets.iter().filter_map(|p| p.rail.as_ref()))
            .chain(text::approval_line(t).as_ref())
        {
            card.lines.push(format!("Safety rail: {}", escape(rail)));
        }
    }
    if let Some(t) = first {
        card.lines.push(format!(
            "Finding: {}",
            text::Links::new(t).finding(&t.finding_id)
        ));
    }
    if !exposed.is_empty() || verdict.is_failure() {
        card.next_steps.push(String::from(
            "Act on what was not done, by hand: the email gives each step's error.",
        ));
    }
    if let Some(case) = instances
        .iter()
        .find_map(|i| i.plan.and_then(|p| p.case.as_ref()))
    {
        card.next_steps.push(format!(
            "Read the case: `helper_scripts/deploy.sh case {}`",
            case.case_id
        ));
    }
    card
}

/// The steps of an instance that failed or did not run, by name.
fn unfinished_steps(steps: &Steps<'_>) -> Vec<&'static str> {
    fn unfinished<T>(r: Option<&StepResult<T>>) -> bool {
        !matches!(r, Some(StepResult::Completed(_)))
    }
    let mut out = Vec::new();
    if unfinished(steps.isolate) {
        out.push("network isolation");
    }
    if matches!(
        steps.deregister,
        Some(StepResult::Failed(_) | StepResult::Unreadable(_))
    ) {
        out.push("out of service");
    }
    if unfinished(steps.snapshot) {
        out.push("forensic snapshots");
    }
    if unfinished(steps.role) {
        out.push("IAM role");
    }
    if out.is_empty() {
        out.push("triage");
    }
    out
}

/// The body for a finding naming several instances: the finding, what was passed over, then
/// each instance with its verdict, case and steps.
///
/// One piece on purpose: the group message in reading order (the finding, what was passed over,
/// then each instance with its steps).
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
        text::write_rails(body, t);
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
            "../../../events/attack-sequence-instance-group.json"
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

    /// A paused responder: the finding's notification says so, and shows the rail's line, for a
    /// group as for a single instance.
    #[test]
    fn a_paused_responder_says_so_with_the_rails_line() {
        let rail = "paused since 2027-01-15T08:00:03Z by arn:aws:iam::123456789012:user/oncall (reason given: scanner): no finding is contained, whether the rule or a person starts the workflow; resume with helper_scripts/deploy.sh resume";
        let reason =
            "the responder is paused: findings are reported, none is contained automatically";
        let plan = [
            ("i-00000000000000001", "notify_only"),
            ("i-00000000000000002", "notify_only"),
        ];
        let mut group = group_triage(&plan, "notify_only", reason);
        group["rails"] = json!([rail]);
        let mut single = group_triage(&plan[..1], "notify_only", reason);
        single["rails"] = json!([rail]);
        single["instance_id"] = json!("i-00000000000000001");
        for triage in [group, single] {
            let m = render(&input(
                json!({"event": sequence_event(), "triage": triage, "instances": []}),
            ));
            assert_eq!(m.verdict, Verdict::NotifyOnly);
            assert!(
                m.body
                    .contains(&format!("Not contained, by policy: {reason}.")),
                "{}",
                m.body
            );
            assert!(
                m.body.contains(&format!("Safety rail: {rail}.")),
                "{}",
                m.body
            );
        }
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
