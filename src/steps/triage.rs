//! Triage: the first state of the workflow decides whether a finding is contained or only
//! reported, by the configured policy and by what the instance is now. It reads and changes
//! nothing else, so a dry run and a real run triage alike.

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::approval::{ApprovalAsk, ApprovalOutcome};
use crate::aws::context::Ctx;
use crate::aws::pause::Pause;
use crate::aws::{instance, tags};
use crate::case::{Opened, RateSlot};
use crate::domain::evidence::{self, Evidence, Side};
use crate::domain::finding::{self, FindingEvent, NamedTarget, PlannedTarget, Resolution, Target};
use crate::domain::settings::{AutoScalingAction, RoleAction, TriagePolicy};
use crate::error::Error;
use futures::{StreamExt, TryStreamExt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Run the containment steps.
    Contain,
    /// The policy says: report, don't touch (type, severity, TARGET role, exemption tag).
    NotifyOnly,
    /// The finding names nothing this tool can contain (or an account it must not act in).
    NothingToContain,
    /// A person approves first (the approval policy, or the rate cap with approvals on): the
    /// state machine asks and waits, then triages again.
    AwaitApproval,
}

impl Decision {
    /// As the plan writes it (`contain`, `notify_only`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Contain => "contain",
            Decision::NotifyOnly => "notify_only",
            Decision::NothingToContain => "nothing_to_contain",
            Decision::AwaitApproval => "await_approval",
        }
    }
}

/// Triage's plan for a finding: the finding's decision, and one entry per instance it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriageReport {
    /// `contain` when at least one instance is contained (the state machine then runs the
    /// steps for each instance whose own decision is `contain`).
    pub decision: Decision,
    /// Why, in one sentence, for the finding as a whole; empty when it is simply contained.
    pub reason: String,
    /// The instance, when the finding names exactly one (the fallback message names it).
    pub instance_id: Option<String>,
    /// One entry per instance the finding names, in the finding's order (the state machine's
    /// Map runs the steps on each).
    #[serde(default)]
    pub targets: Vec<TargetPlan>,
    /// What the finding names that is not an instance to contain, one line each (capped).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passed_over: Vec<String>,
    /// How many distinct instances the finding names.
    #[serde(default)]
    pub instances_named: usize,
    pub dry_run: bool,
    pub role_action: RoleAction,
    pub auto_scaling_action: AutoScalingAction,
    /// Which side of the activity the instances are on, and the evidence, in one sentence
    /// (see [`crate::domain::evidence`]); absent when the finding names no instance.
    #[serde(default)]
    pub side: Option<Side>,
    #[serde(default)]
    pub evidence: Option<String>,
    /// What the safety rails said about this finding, one line each (the pause switch: paused,
    /// or why it did not apply; the rate cap: reached, or not checked); the notification shows
    /// them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rails: Vec<String>,
    /// What a person is asked to approve, when an instance waits for approval (the state
    /// machine then asks, and writes the outcome here); after an approval, the request and its
    /// outcome as the case table holds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalAsk>,
}

/// One instance of the plan: what the steps act on ([`PlannedTarget`]'s fields: `target` and
/// `case`), and the decision for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetPlan {
    pub decision: Decision,
    /// Why, in one sentence; empty when the instance is simply contained.
    pub reason: String,
    /// How the finding names the instance (its evidence for it).
    pub named_as: String,
    pub target: Target,
    /// The case the steps record in (`null` in a dry run, when the instance is not contained,
    /// or when the case table could not be reached). Always written, so that the state
    /// machine's paths find it.
    pub case: Option<crate::case::CaseHandle>,
    /// The instance's open case, when it was contained before this finding (this finding
    /// joins it: nothing is done twice), and when that case was opened.
    pub already_contained_by: Option<String>,
    pub contained_at: Option<String>,
    /// The safety rail that applied to this instance, in one line (the rate cap), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rail: Option<String>,
}

impl TargetPlan {
    fn new(named: &NamedTarget, decision: Decision, reason: String) -> TargetPlan {
        TargetPlan {
            decision,
            reason,
            named_as: named.named_as.clone(),
            target: named.target.clone(),
            case: None,
            already_contained_by: None,
            contained_at: None,
            rail: None,
        }
    }

    /// What a step receives for this instance.
    pub fn planned(&self) -> PlannedTarget {
        PlannedTarget {
            target: self.target.clone(),
            case: self.case.clone(),
        }
    }
}

impl TriageReport {
    /// The plan's one instance, when the finding names exactly one.
    pub fn single(&self) -> Option<&TargetPlan> {
        match self.targets.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

/// How many instances triage reads and opens cases for at once: every instance a finding may
/// contain (at most 25, the cap's maximum) in one round, so that a slow case table (each open
/// waits at most CASE_OPEN_TIMEOUT) costs one timeout, not one per round.
const TRIAGE_CONCURRENCY: usize = 25;

/// The most instances listed in the plan of a finding that is not contained as a whole (over the
/// cap, notify only, another account); `instances_named` gives the count.
pub const MAX_LISTED_UNCONTAINED: usize = 25;

/// Triages a finding event (the Lambda handler): resolves every instance it names once, applies
/// the policy to the finding and the blast-radius cap, then decides for each instance by what
/// it is now (gone, exempt, already contained) and opens its case.
pub async fn triage(ctx: &Ctx, event: &FindingEvent) -> Result<TriageReport, Error> {
    triage_after(ctx, event, None).await
}

/// What the approval policy says for a finding's instances.
#[derive(Debug, Default)]
struct Gate {
    /// Why the finding as a whole waits (its type or severity), if it does.
    finding_rule: Option<String>,
    /// A person's approval (or the timeout's contain), as the case table holds it.
    granted: Option<ApprovalOutcome>,
    /// Whether approval was asked before in this execution: it is never asked twice.
    asked_before: bool,
}

/// Triages a finding again after its approval request (`asked`: the earlier report's request
/// and outcome, from the state machine's input). The outcome is believed only as the case
/// table records it, for this finding; then the instances that waited are contained (the
/// rate cap does not hold back what a person approved), and approval is never asked again.
#[tracing::instrument(skip_all, fields(finding_id = event.detail.id.as_deref().map(finding::clip)))]
pub async fn triage_after(
    ctx: &Ctx,
    event: &FindingEvent,
    asked: Option<&ApprovalAsk>,
) -> Result<TriageReport, Error> {
    let mut report = decide(ctx, event, asked).await?;
    if asked.is_none() {
        // Each finding once, at its first triage (a finding that waits for a person is
        // counted as such, not again when the answer comes).
        crate::telemetry::verdict(
            event.detail.finding_type.as_deref(),
            report.decision.as_str(),
        );
    } else {
        // After a person's answer: no time to isolation from the finding, which would measure
        // the person's wait, not the responder.
        for plan in &mut report.targets {
            plan.target.updated_at = None;
        }
    }
    Ok(report)
}

async fn decide(
    ctx: &Ctx,
    event: &FindingEvent,
    asked: Option<&ApprovalAsk>,
) -> Result<TriageReport, Error> {
    let ctx = &ctx.acting_as("triage");
    let settings = ctx.settings();
    let mut report = TriageReport {
        decision: Decision::NothingToContain,
        reason: String::new(),
        instance_id: None,
        targets: Vec::new(),
        passed_over: Vec::new(),
        instances_named: 0,
        dry_run: settings.dry_run,
        role_action: settings.role_action,
        auto_scaling_action: settings.auto_scaling_action,
        side: None,
        evidence: None,
        rails: Vec::new(),
        approval: None,
    };
    let named = match finding::targets(event)? {
        Resolution::Contain(named) => named,
        Resolution::Skip(reason) => {
            report.reason = reason;
            return Ok(report);
        }
    };
    let evidence = evidence::side(&event.detail);
    report.side = Some(evidence.side);
    report.evidence = Some(evidence.because.clone());
    report.passed_over = named.passed_over.clone();
    report.instances_named = named.instances_named;
    let Some(first) = named.targets.first() else {
        report.reason = named.nothing_named();
        return Ok(report);
    };
    if let [one] = named.targets.as_slice() {
        report.instance_id = Some(one.target.instance_id.clone());
    }
    // The finding as a whole: the account, the policy, the blast-radius cap.
    let finding_wide = if let Some(reason) = ctx.org().refusal(&first.target.scope.account_id) {
        Some((Decision::NothingToContain, reason))
    } else if let Some(reason) = policy_reason(&settings.triage, &evidence, &first.target) {
        Some((Decision::NotifyOnly, reason))
    } else if let Some(reason) = host_reason(&settings.triage, &event.detail) {
        Some((Decision::NotifyOnly, reason))
    } else if let Some(reason) = cap_reason(&settings.triage, named.instances_named) {
        crate::telemetry::rail("blast_radius_cap");
        Some((Decision::NotifyOnly, reason))
    } else {
        // The pause switch: read only for a finding that would be contained.
        let pause = ctx.pause().await?;
        report.rails.extend(pause.line());
        matches!(pause, Pause::Paused { .. }).then(|| {
            crate::telemetry::rail("pause");
            let reason =
                "the responder is paused: findings are reported, none is contained automatically";
            (Decision::NotifyOnly, reason.to_owned())
        })
    };
    let mut gate = Gate {
        asked_before: asked.is_some(),
        ..Gate::default()
    };
    if let Some(asked) = asked {
        match granted(ctx, asked, &first.target).await {
            Ok(Some((ask, outcome))) => {
                report.rails.push(outcome.line());
                gate.granted = Some(outcome);
                report.approval = Some(ask);
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(error = %err, "approval not read: the instances that waited are reported only");
                report.rails.push(format!(
                    "the approval could not be read from the case table ({}): the instances that waited are reported, not contained",
                    err.name()
                ));
            }
        }
    }
    gate.finding_rule = settings
        .triage
        .approval
        .finding_rule(&first.target.finding_type, event.detail.severity);
    if let Some((decision, reason)) = finding_wide {
        info!(%reason, ?decision, "not contained");
        // The reason is the finding's, said once; the plan lists the instances (at most
        // MAX_LISTED_UNCONTAINED: the state stays far below Step Functions' 256 KiB).
        report.targets = named
            .targets
            .iter()
            .take(MAX_LISTED_UNCONTAINED)
            .map(|n| TargetPlan::new(n, decision, String::new()))
            .collect();
        report.decision = decision;
        report.reason = reason;
        return Ok(report);
    }

    // Every instance is in the finding's account and region: one set of clients.
    let clients = &ctx
        .clients(&first.target.scope, &first.target.finding_id)
        .await?;
    let updated_at = event.detail.updated_at.as_deref();
    let in_group = named.targets.len() > 1;
    let plans: Vec<TargetPlan> = futures::stream::iter(named.targets.iter())
        .map(|n| {
            triage_instance(
                ctx,
                clients,
                n,
                in_group,
                updated_at,
                &evidence.because,
                &gate,
            )
        })
        .buffered(TRIAGE_CONCURRENCY)
        .try_collect()
        .await?;
    let plans = one_maker_per_vpc(plans);
    report.decision = [
        Decision::Contain,
        Decision::AwaitApproval,
        Decision::NotifyOnly,
    ]
    .into_iter()
    .find(|d| plans.iter().any(|p| p.decision == *d))
    .unwrap_or(Decision::NothingToContain);
    if let [one] = plans.as_slice() {
        report.reason = one.reason.clone();
    }
    for line in plans.iter().filter_map(|p| p.rail.as_ref()) {
        if !report.rails.contains(line) {
            report.rails.push(line.clone());
        }
    }
    let waiting: Vec<String> = plans
        .iter()
        .filter(|p| p.decision == Decision::AwaitApproval)
        .map(|p| match &p.rail {
            Some(rail) => format!("{} ({rail})", p.target.instance_id),
            None => p.target.instance_id.clone(),
        })
        .collect();
    if !waiting.is_empty() {
        report.approval = Some(ApprovalAsk {
            account_id: first.target.scope.account_id.clone(),
            region: first.target.scope.region.clone(),
            finding_id: first.target.finding_id.clone(),
            finding_type: first.target.finding_type.clone(),
            severity: event.detail.severity,
            instances: waiting,
            // The rate cap holds what nobody approved: an instance over it is never contained by
            // a timeout, whatever ApprovalTimeoutAction says.
            on_timeout: if plans.iter().any(|p| {
                p.decision == Decision::AwaitApproval
                    && p.rail
                        .as_deref()
                        .is_some_and(|r| r.starts_with(RATE_CAP_RAIL))
            }) {
                crate::approval::OnTimeout::NotifyOnly
            } else {
                settings.triage.approval.on_timeout
            },
            wait_seconds: settings.triage.approval.timeout_secs,
            outcome: None,
            error: None,
        });
    }
    report.targets = plans;
    info!(decision = ?report.decision, instances = report.targets.len(), "triaged");
    Ok(report)
}

/// The blast-radius cap: why a finding naming more instances than the policy allows contains
/// none of them, and what the team can do.
pub fn cap_reason(policy: &TriagePolicy, instances: usize) -> Option<String> {
    (instances > policy.max_instances).then(|| {
        format!(
            "the finding names {instances} instances, more than MaxInstancesPerFinding ({}): none is contained automatically, so that one wrong finding cannot isolate a fleet. Confirm the finding, then contain the instances by hand (start the containment state machine with a finding naming each), or raise MaxInstancesPerFinding and send the finding again",
            policy.max_instances
        )
    })
}

/// Why the EC2 host of a container workload is only reported, if it is: isolating an EKS node
/// or an ECS container instance stops every workload on it, and replacing its instance profile
/// stops the node's agent, so it is the team's call unless `ContainContainerHosts` says so.
pub fn host_reason(policy: &TriagePolicy, finding: &finding::Finding) -> Option<String> {
    let kind = finding.resource.as_ref()?.resource_type.as_deref()?;
    (kind != "Instance" && finding::INSTANCE_RESOURCE_TYPES.contains(&kind) && !policy.contain_container_hosts)
        .then(|| {
            format!(
                "the instance is the EC2 host of the {kind} workload the finding is about (an EKS node or ECS container instance): isolating it stops every workload on it, so it is reported, not contained; set ContainContainerHosts=true to contain hosts"
            )
        })
}

/// The VPCs of the instance's interfaces, as EC2 describes them.
fn instance_vpcs(inst: &aws_sdk_ec2::types::Instance) -> Vec<String> {
    let mut vpcs: Vec<String> = inst
        .network_interfaces()
        .iter()
        .filter_map(|i| i.vpc_id())
        .chain(inst.vpc_id())
        .filter(|v| finding::is_vpc_id(v))
        .map(str::to_owned)
        .collect();
    vpcs.sort();
    vpcs.dedup();
    vpcs.truncate(finding::MAX_VPC_HINTS);
    vpcs
}

/// Decides for one instance of the plan by what it is now, and opens (or joins) its case.
///
/// One piece on purpose: the checks of one instance in the order they decide (gone, exempt,
/// already contained, its case), each an early return with its reason.
#[tracing::instrument(skip_all, fields(instance_id = %named.target.instance_id))]
async fn triage_instance(
    ctx: &Ctx,
    clients: &crate::aws::context::Clients,
    named: &NamedTarget,
    in_group: bool,
    updated_at: Option<&str>,
    evidence: &str,
    gate: &Gate,
) -> Result<TargetPlan, Error> {
    let settings = ctx.settings();
    let target = &named.target;
    let plan = |decision, reason: String| TargetPlan::new(named, decision, reason);
    // The instance waits for a person (`rail`: the rule that asks; `more`: what else to say);
    // or, asked before and not given, is only reported.
    let ask = |rail: String, more: Option<&str>| -> TargetPlan {
        let more = more.map(|m| format!(": {m}")).unwrap_or_default();
        if gate.asked_before {
            let reason =
                format!("{rail}, and it was not given: the instance is reported only{more}");
            info!(%reason, "notify only");
            return plan(Decision::NotifyOnly, reason);
        }
        info!(%rail, "awaits approval");
        crate::telemetry::rail("approval");
        let mut waiting = plan(
            Decision::AwaitApproval,
            format!("waits for a person's approval (see the safety rail){more}"),
        );
        waiting.rail = Some(rail);
        waiting
    };
    // What the finding's approval rule makes of a containment decided before the instance can
    // be read (a credential finding's role, the instance gone).
    let gated = |reason: String| -> TargetPlan {
        match (&gate.finding_rule, &gate.granted, settings.dry_run) {
            (Some(rule), None, false) => ask(rule.clone(), Some(&reason)),
            _ => plan(Decision::Contain, reason),
        }
    };
    // A credential finding names the role: its stolen credentials are contained even when the
    // instance is gone or cannot be found; the steps report what they could not do.
    let role_still_matters = target.role_name.is_some();
    let inst = match instance::describe(&clients.ec2, &target.scope, &target.instance_id).await {
        Ok(inst) => inst,
        // A group member EC2 no longer knows (terminated, say, by its Auto Scaling group since
        // GuardDuty saw it) has nothing left to contain; the others are contained.
        Err(err @ Error::InstanceNotFound { .. }) if in_group && !role_still_matters => {
            return Ok(plan(Decision::NothingToContain, err.to_string()));
        }
        Err(err @ Error::InstanceNotFound { .. }) => {
            return Ok(gated(format!(
                "{err}: each step reports what it can still do"
            )));
        }
        Err(err) => return Err(err),
    };
    if let Some(reason) = instance::gone_reason(&inst) {
        return Ok(if role_still_matters {
            gated(reason)
        } else {
            plan(Decision::NothingToContain, reason)
        });
    }
    let exemption = &settings.triage.exemption_tag;
    if tags::find(inst.tags(), exemption).is_some() {
        let reason = format!("the instance carries the exemption tag {exemption}");
        info!(%reason, "notify only");
        return Ok(plan(Decision::NotifyOnly, reason));
    }
    let mut out = plan(Decision::Contain, String::new());
    // The instance's VPCs as EC2 has them (not as the finding says: a group finding names
    // none): the isolate step looks the tool's groups up there while it reads the instance.
    out.target.vpc_ids = instance_vpcs(&inst);
    // The tool's groups in those VPCs, looked up beside the case's calls (see
    // `vpcs_without_groups`).
    let lookup = vpcs_without_groups(&clients.ec2, out.target.vpc_ids.clone());
    let decided = async {
        // The case: from the responder's own record, never from the instance's tags.
        let store = ctx.cases();
        let approval_rule = gate
            .finding_rule
            .clone()
            .or_else(|| tag_rule(&settings.triage.approval, inst.tags()));
        if settings.dry_run {
            if let Some(rule) = &approval_rule {
                out.rail = Some(format!("{rule} (a dry run asks nobody)"));
            }
            if let Ok(Some((case_id, opened_at))) =
                store.open_case(&target.scope, &target.instance_id).await
            {
                out.reason = format!("already contained (case {case_id}): nothing is done twice");
                out.already_contained_by = Some(case_id);
                out.contained_at = Some(opened_at);
            }
            return Ok(out);
        }
        // Approval: an instance the policy gates waits for a person, unless its containment is
        // already under way (the finding joins the case) or a person approved.
        if let Some(rule) = approval_rule
            && gate.granted.is_none()
            && !matches!(
                store.open_case(&target.scope, &target.instance_id).await,
                Ok(Some(_))
            )
        {
            return Ok(ask(rule, None));
        }
        // The rate cap: a containment not yet under way takes one of the account's slots for the
        // rolling hour (a finding joining an open case takes none); what a person approved is not
        // held back by it. A table that cannot be reached never holds containment back, here
        // either.
        if let Some(cap) = settings
            .triage
            .max_containments_per_hour
            .filter(|_| gate.granted.is_none())
        {
            let checked = tokio::time::timeout(CASE_OPEN_TIMEOUT, rate_capped(ctx, target, cap))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Transient {
                        action: "dynamodb:PutItem",
                        code: "Timeout".into(),
                        message: "the case table did not answer in time".into(),
                        source: "timeout".into(),
                    })
                });
            match checked {
                Ok(None) => {}
                Ok(Some(rail)) if settings.triage.approval.enabled && !gate.asked_before => {
                    crate::telemetry::rail("rate_cap");
                    return Ok(ask(rail, Some("the rate cap is reached")));
                }
                Ok(Some(rail)) => {
                    crate::telemetry::rail("rate_cap");
                    let reason = "the rate cap is reached (see the safety rail): raise MaxContainmentsPerHour and send the finding again, or isolate the instance by hand".to_owned();
                    info!(%rail, "notify only");
                    let mut capped = plan(Decision::NotifyOnly, reason);
                    capped.rail = Some(rail);
                    return Ok(capped);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "rate cap not checked: containing");
                    out.rail = Some(format!(
                        "the rate cap could not be checked ({}): the instance was contained all the same",
                        err.name()
                    ));
                }
            }
        }
        // A case table that cannot be reached never holds containment back: the steps act and
        // each says that nothing was recorded.
        let opened = tokio::time::timeout(
            CASE_OPEN_TIMEOUT,
            Box::pin(store.open(target, updated_at, Some(evidence), true)),
        )
        .await
        .unwrap_or_else(|_| {
            Err(Error::Transient {
                action: "dynamodb:UpdateItem",
                code: "Timeout".into(),
                message: "the case table did not answer in time".into(),
                source: "timeout".into(),
            })
        });
        let opened = match opened {
            Ok(opened) => opened,
            // The instance's case is being released: triage again once it is over (the state
            // machine retries this transient error), so that the finding does not join a case
            // being undone.
            Err(err) if err.aws_code() == Some("CaseBeingReleased") => return Err(err),
            Err(err) => {
                tracing::warn!(error = %err, "case table unavailable: containing without a case");
                out.reason = format!(
                    "contained without a case record: the case table could not be reached ({err})"
                );
                return Ok(out);
            }
        };
        if let (Some(outcome), Opened::New(handle) | Opened::Joined { handle, .. }) =
            (&gate.granted, &opened)
            && let Err(err) = store.approval_in_case(&handle.case_id, outcome).await
        {
            crate::case::warn_unrecorded("approval", &err);
        }
        match opened {
            Opened::New(handle) => out.case = Some(handle),
            Opened::Joined { handle, opened_at } => {
                out.reason = format!(
                    "already contained (case {}): the finding joins the case, nothing is done twice",
                    handle.case_id
                );
                out.already_contained_by = Some(handle.case_id.clone());
                out.contained_at = Some(opened_at);
                out.case = Some(handle);
            }
            Opened::Released { case_id } => {
                let reason = format!(
                    "the finding belongs to case {case_id}, which the security team released: a copy sent again contains nothing (a new finding does)"
                );
                info!(%reason, "notify only");
                return Ok(plan(Decision::NotifyOnly, reason));
            }
        }
        info!(decision = ?out.decision, case = ?out.case, already_contained_by = ?out.already_contained_by, "triaged");
        Ok::<_, Error>(out)
    };
    // A decision other than containing does not wait for the lookup.
    let contains =
        |d: &Result<TargetPlan, Error>| matches!(d, Ok(p) if p.decision == Decision::Contain);
    let (decided, without_groups) =
        match futures::future::select(Box::pin(decided), Box::pin(lookup)).await {
            futures::future::Either::Left((decided, lookup)) if contains(&decided) => {
                (decided, lookup.await)
            }
            futures::future::Either::Left((decided, _)) => (decided, Vec::new()),
            futures::future::Either::Right((without, decided)) => (decided.await, without),
        };
    let mut decided = decided?;
    if decided.decision == Decision::Contain {
        decided.target.vpcs_without_groups = without_groups;
    }
    Ok(decided)
}

/// Keeps each VPC without the tool's groups for the first instance of the plan in it: that
/// one's isolate step makes the groups while it reads its instance; the others (a group
/// finding's instances share VPCs) look them up, rather than each asking to create them and
/// being refused, two mutating calls each in EC2's smallest request bucket.
fn one_maker_per_vpc(mut plans: Vec<TargetPlan>) -> Vec<TargetPlan> {
    let mut claimed = std::collections::BTreeSet::new();
    for plan in &mut plans {
        plan.target
            .vpcs_without_groups
            .retain(|vpc| claimed.insert(vpc.clone()));
    }
    plans
}

/// The VPCs of `vpcs` where neither of the tool's groups (tagged as the tool's, `true`) exists:
/// one lookup, so that isolate creates the groups there while it reads the instance rather
/// than after looking them up again. A lookup that fails or does not answer in time finds
/// nothing missing (isolate then looks the groups up itself).
async fn vpcs_without_groups(ec2: &aws_sdk_ec2::Client, vpcs: Vec<String>) -> Vec<String> {
    if vpcs.is_empty() {
        return vpcs;
    }
    let filter = |name: &str, values: &[&str]| {
        aws_sdk_ec2::types::Filter::builder()
            .name(name)
            .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
            .build()
    };
    let vpc_refs: Vec<&str> = vpcs.iter().map(String::as_str).collect();
    let lookup = ec2
        .describe_security_groups()
        .filters(filter("vpc-id", &vpc_refs))
        .filters(filter(
            "tag-key",
            &[tags::ISOLATION_GROUP, tags::TRANSIT_GROUP],
        ))
        .send();
    let found = match tokio::time::timeout(GROUP_LOOKUP_TIMEOUT, lookup).await {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            let err = Error::from_sdk("ec2:DescribeSecurityGroups", e);
            tracing::warn!(error = %err, "the tool's groups not looked up: isolate will");
            return Vec::new();
        }
        Err(_) => {
            tracing::warn!("the tool's groups not looked up in time: isolate will");
            return Vec::new();
        }
    };
    let the_tools = |g: &aws_sdk_ec2::types::SecurityGroup| {
        [tags::ISOLATION_GROUP, tags::TRANSIT_GROUP]
            .iter()
            .any(|tag| tags::find(g.tags(), tag) == Some("true"))
    };
    vpcs.into_iter()
        .filter(|vpc| {
            !found
                .security_groups()
                .iter()
                .any(|g| g.vpc_id() == Some(vpc.as_str()) && the_tools(g))
        })
        .collect()
}

/// Why an instance waits for approval by its tags (`APPROVAL_TAG`), if it does. A tag is
/// anyone's with `ec2:CreateTags`: it makes an instance wait for a person (and, unanswered with
/// the `notify-only` timeout, stay uncontained), never skips a rule of the finding; the README
/// says to protect the key.
fn tag_rule(
    policy: &crate::domain::settings::ApprovalPolicy,
    tags: &[aws_sdk_ec2::types::Tag],
) -> Option<String> {
    let (key, want) = policy.tag.as_ref().filter(|_| policy.enabled)?;
    let value = tags::find(tags, key)?;
    match want {
        Some(want) if want != value => None,
        Some(want) => Some(format!(
            "approval required: the instance is tagged {key}={want} (ApprovalTag)"
        )),
        None => Some(format!(
            "approval required: the instance carries the tag {key} (ApprovalTag)"
        )),
    }
}

/// The approval `asked` for, as the case table records it, when it lets the finding's
/// instances be contained: the request must be this finding's (its account and id), and its
/// recorded outcome approved (or the timeout's contain). Anything else: `None`.
async fn granted(
    ctx: &Ctx,
    asked: &ApprovalAsk,
    target: &Target,
) -> Result<Option<(ApprovalAsk, ApprovalOutcome)>, Error> {
    let Some(id) = asked
        .outcome
        .as_ref()
        .map(|o| o.approval_id.as_str())
        .filter(|id| crate::approval::is_approval_id(id))
    else {
        return Ok(None);
    };
    let Some(record) = ctx.cases().approval(id).await? else {
        return Ok(None);
    };
    let ours = record.ask.finding_id == target.finding_id
        && record.ask.account_id == target.scope.account_id
        && record.ask.region == target.scope.region;
    Ok(record.outcome.filter(|o| ours && o.contain).map(|o| {
        (
            ApprovalAsk {
                outcome: Some(o.clone()),
                ..record.ask
            },
            o,
        )
    }))
}

/// How the rate cap's line begins.
const RATE_CAP_RAIL: &str = "rate cap reached";

/// The rate cap's line when it stops this containment (none when a slot was taken, or the
/// instance's case is already open).
async fn rate_capped(ctx: &Ctx, target: &Target, cap: usize) -> Result<Option<String>, Error> {
    let store = ctx.cases();
    if store
        .open_case(&target.scope, &target.instance_id)
        .await?
        .is_some()
    {
        return Ok(None);
    }
    match store
        .claim_containment(
            &target.scope.account_id,
            cap,
            &target.instance_id,
            &target.finding_id,
        )
        .await?
    {
        RateSlot::Claimed(_) => Ok(None),
        RateSlot::Full { frees_at } => Ok(Some(format!(
            "{RATE_CAP_RAIL}: {cap} automatic containment{} in account {} within the last hour (MaxContainmentsPerHour){}",
            if cap == 1 { "" } else { "s" },
            target.scope.account_id,
            frees_at
                .map(|t| format!("; the next one may start after {t}"))
                .unwrap_or_default()
        ))),
    }
}

/// How long triage waits for the lookup of the tool's groups (beside the case's calls).
const GROUP_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long triage waits for the case table before containing without a case.
pub const CASE_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(8);

/// Why the policy says to report only, if it does. Pure: no AWS call.
pub fn policy_reason(
    policy: &TriagePolicy,
    evidence: &Evidence,
    target: &Target,
) -> Option<String> {
    let finding_type = target.finding_type.as_str();
    if let Some(prefix) = policy
        .notify_only
        .iter()
        .find(|p| finding_type.starts_with(p.as_str()))
    {
        return Some(format!(
            "finding type {finding_type} matches the notify-only prefix {prefix}"
        ));
    }
    if !policy.act_on.is_empty()
        && !policy
            .act_on
            .iter()
            .any(|p| finding_type.starts_with(p.as_str()))
    {
        return Some(format!(
            "finding type {finding_type} matches none of the prefixes acted on ({})",
            policy.act_on.join(", ")
        ));
    }
    if target.severity < policy.severity_threshold {
        return Some(format!(
            "severity {:.1} is below the threshold {:.1}",
            target.severity, policy.severity_threshold
        ));
    }
    // A victim (probed, brute-forced, called from a Tor exit node) is reported, not contained,
    // unless the policy says to contain targets too. The side is read from the evidence, not
    // from GuardDuty's resourceRole label (see crate::domain::evidence).
    if evidence.side == Side::Targeted && !policy.contain_targets {
        return Some(format!(
            "the instance is the target of the activity, not the actor: {}; set ContainTargets to contain targets too",
            evidence.because
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        finding_type: &str,
        severity: f64,
        resource: serde_json::Value,
        role: &str,
    ) -> FindingEvent {
        finding::parse_event(serde_json::json!({
            "version": "0", "id": "e", "detail-type": "GuardDuty Finding", "source": "aws.guardduty",
            "account": "123456789012", "time": "2026-11-27T00:00:00Z", "region": "us-east-1",
            "resources": [],
            "detail": {"id": "f1", "accountId": "123456789012", "region": "us-east-1",
                       "type": finding_type, "severity": severity, "resource": resource,
                       "service": {"resourceRole": role}}
        }))
        .unwrap()
    }

    fn instance() -> serde_json::Value {
        serde_json::json!({"resourceType": "Instance", "instanceDetails": {"instanceId": "i-0123456789abcdef0"}})
    }

    fn reason(policy: &TriagePolicy, e: &FindingEvent) -> Option<String> {
        let target = finding::resolve(e).unwrap().contain().unwrap();
        policy_reason(policy, &evidence::side(&e.detail), &target)
    }

    #[test]
    fn a_decision_is_named_in_metrics_as_the_plan_writes_it() {
        for d in [
            Decision::Contain,
            Decision::NotifyOnly,
            Decision::NothingToContain,
            Decision::AwaitApproval,
        ] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
    }

    #[test]
    fn container_hosts_are_reported_unless_the_policy_contains_them() {
        let finding = |kind: &str| -> finding::Finding {
            serde_json::from_value(serde_json::json!({"resource": {"resourceType": kind,
                "instanceDetails": {"instanceId": "i-0123456789abcdef0"}}}))
            .unwrap()
        };
        let policy = TriagePolicy::default();
        assert_eq!(host_reason(&policy, &finding("Instance")), None);
        for kind in ["EKSCluster", "ECSCluster", "Container"] {
            let reason = host_reason(&policy, &finding(kind)).unwrap();
            assert!(reason.contains("ContainContainerHosts=true"), "{reason}");
            let hosts = TriagePolicy {
                contain_container_hosts: true,
                ..TriagePolicy::default()
            };
            assert_eq!(host_reason(&hosts, &finding(kind)), None);
        }
    }

    #[test]
    fn one_instance_per_vpc_makes_the_groups() {
        let e = event("Backdoor:EC2/C&CActivity.B", 8.0, instance(), "ACTOR");
        let target = finding::resolve(&e).unwrap().contain().unwrap();
        let plan = |vpcs: &[&str], without: &[&str]| {
            let mut t = target.clone();
            t.vpc_ids = vpcs.iter().map(|v| v.to_string()).collect();
            t.vpcs_without_groups = without.iter().map(|v| v.to_string()).collect();
            TargetPlan::new(
                &NamedTarget {
                    target: t,
                    named_as: String::new(),
                },
                Decision::Contain,
                String::new(),
            )
        };
        let plans = one_maker_per_vpc(vec![
            plan(&["vpc-11111111"], &["vpc-11111111"]),
            plan(
                &["vpc-11111111", "vpc-22222222"],
                &["vpc-11111111", "vpc-22222222"],
            ),
            plan(&["vpc-22222222"], &["vpc-22222222"]),
        ]);
        let made: Vec<&[String]> = plans
            .iter()
            .map(|p| p.target.vpcs_without_groups.as_slice())
            .collect();
        assert_eq!(
            made,
            [
                &["vpc-11111111".to_owned()][..],
                &["vpc-22222222".to_owned()][..],
                &[][..]
            ]
        );
    }

    #[test]
    fn the_blast_radius_cap_refuses_a_group_over_it_and_says_what_to_do() {
        let policy = TriagePolicy::default();
        assert_eq!(cap_reason(&policy, 1), None);
        assert_eq!(cap_reason(&policy, policy.max_instances), None);
        let over = cap_reason(&policy, policy.max_instances + 1).unwrap();
        assert!(over.contains("none is contained"), "{over}");
        assert!(over.contains("MaxInstancesPerFinding (10)"), "{over}");
        assert!(over.contains("by hand"), "{over}");
    }

    #[test]
    fn actors_are_contained_and_probed_targets_only_reported() {
        let policy = TriagePolicy::default();
        let actor = event("Backdoor:EC2/C&CActivity.B", 8.0, instance(), "TARGET");
        assert_eq!(reason(&policy, &actor), None);
        let probed = event(
            "Recon:EC2/PortProbeUnprotectedPort",
            8.0,
            instance(),
            "TARGET",
        );
        assert!(
            reason(&policy, &probed)
                .unwrap()
                .contains("target of the activity")
        );
        let both = TriagePolicy {
            contain_targets: true,
            ..TriagePolicy::default()
        };
        assert_eq!(reason(&both, &probed), None);
    }

    fn with_action(finding_type: &str, role: &str, action: serde_json::Value) -> FindingEvent {
        let mut e = event(finding_type, 8.0, instance(), role);
        e.detail.service.as_mut().unwrap().action = Some(action);
        e
    }

    fn dns(domain: &str) -> serde_json::Value {
        serde_json::json!({"actionType": "DNS_REQUEST",
            "dnsRequestAction": {"domain": domain, "protocol": "UDP", "blocked": false}})
    }

    fn connection(direction: &str) -> serde_json::Value {
        serde_json::json!({"actionType": "NETWORK_CONNECTION", "networkConnectionAction": {
            "connectionDirection": direction, "protocol": "TCP", "blocked": false,
            "remoteIpDetails": {"ipAddressV4": "198.51.100.9"}}})
    }

    /// Findings shaped as GuardDuty writes them for these types: labelled TARGET although the
    /// instance is the one acting (GuardDuty's sample findings and real accounts' findings).
    #[test]
    fn acting_instances_labelled_target_are_contained_by_default() {
        let policy = TriagePolicy::default();
        for e in [
            with_action(
                "CryptoCurrency:EC2/BitcoinTool.B!DNS",
                "TARGET",
                dns("pool.mining.example.invalid"),
            ),
            with_action(
                "Backdoor:EC2/C&CActivity.B",
                "TARGET",
                connection("OUTBOUND"),
            ),
            with_action(
                "UnauthorizedAccess:EC2/TorRelay",
                "TARGET",
                connection("INBOUND"),
            ),
            with_action(
                "UnauthorizedAccess:EC2/TorClient",
                "TARGET",
                connection("OUTBOUND"),
            ),
            with_action("Trojan:EC2/DropPoint", "TARGET", connection("OUTBOUND")),
            with_action(
                "Trojan:EC2/BlackholeTraffic",
                "TARGET",
                connection("OUTBOUND"),
            ),
            with_action("Backdoor:EC2/Spambot", "TARGET", connection("OUTBOUND")),
            with_action(
                "UnauthorizedAccess:EC2/SSHBruteForce",
                "TARGET",
                connection("OUTBOUND"),
            ),
        ] {
            let t = e.detail.finding_type.clone().unwrap();
            assert_eq!(reason(&policy, &e), None, "{t} is contained");
        }
    }

    #[test]
    fn probes_and_inbound_brute_force_are_only_reported() {
        let policy = TriagePolicy::default();
        for e in [
            with_action(
                "Recon:EC2/PortProbeUnprotectedPort",
                "TARGET",
                serde_json::json!({"actionType": "PORT_PROBE", "portProbeAction": {"blocked": false}}),
            ),
            with_action(
                "UnauthorizedAccess:EC2/SSHBruteForce",
                "TARGET",
                connection("INBOUND"),
            ),
            with_action(
                "UnauthorizedAccess:EC2/RDPBruteForce",
                "ACTOR",
                connection("INBOUND"),
            ),
        ] {
            let t = e.detail.finding_type.clone().unwrap();
            let why = reason(&policy, &e).unwrap_or_else(|| panic!("{t} is only reported"));
            assert!(why.contains("target of the activity"), "{t}: {why}");
        }
    }

    #[test]
    fn fields_the_decision_does_not_use_never_make_a_finding_invalid() {
        let e = finding::parse_event(serde_json::json!({
            "version": "0", "id": 17, "detail-type": "GuardDuty Finding", "source": "aws.guardduty",
            "account": "123456789012", "time": "REDACTED", "region": "us-east-1", "resources": "n/a",
            "detail": {"id": "f1", "accountId": "123456789012", "region": "us-east-1",
                       "type": "CryptoCurrency:EC2/BitcoinTool.B!DNS", "severity": "8",
                       "title": {"unexpected": true}, "updatedAt": 0, "resource": instance(),
                       "service": {"resourceRole": "TARGET", "archived": "false", "count": "many",
                                   "eventFirstSeen": null,
                                   "additionalInfo": {"value": "{\"sample\":\"false\"}", "type": "default"}}}
        }))
        .expect("read");
        let target = finding::resolve(&e).unwrap().contain().expect("a target");
        assert_eq!(target.severity, 8.0);
        assert_eq!(reason(&TriagePolicy::default(), &e), None);
        // The flags the decision reads are strict about what they cannot read.
        for bad in [
            serde_json::json!({"archived": "yes"}),
            serde_json::json!({"archived": 1}),
        ] {
            let mut raw = serde_json::to_value(&e).unwrap();
            raw["detail"]["service"] = bad.clone();
            assert!(finding::parse_event(raw).is_err(), "{bad}");
        }
    }

    #[test]
    fn credential_findings_are_contained_though_their_key_is_the_target() {
        let key = serde_json::json!({"resourceType": "AccessKey", "accessKeyDetails": {
            "principalId": "AROAEXAMPLE:i-0123456789abcdef0", "userName": "role"}});
        let e = event(
            "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS",
            8.0,
            key,
            "TARGET",
        );
        assert_eq!(reason(&TriagePolicy::default(), &e), None);
    }

    #[test]
    fn type_prefixes_and_severity_decide() {
        let e = event(
            "CryptoCurrency:EC2/BitcoinTool.B!DNS",
            5.0,
            instance(),
            "ACTOR",
        );
        let only_backdoors = TriagePolicy {
            act_on: vec!["Backdoor:".into()],
            ..TriagePolicy::default()
        };
        assert!(
            reason(&only_backdoors, &e)
                .unwrap()
                .contains("none of the prefixes")
        );
        let quiet_crypto = TriagePolicy {
            act_on: vec!["CryptoCurrency:".into()],
            notify_only: vec!["CryptoCurrency:EC2/BitcoinTool".into()],
            ..TriagePolicy::default()
        };
        assert!(
            reason(&quiet_crypto, &e)
                .unwrap()
                .contains("notify-only prefix")
        );
        let high_only = TriagePolicy {
            severity_threshold: 7.0,
            ..TriagePolicy::default()
        };
        assert!(
            reason(&high_only, &e)
                .unwrap()
                .contains("below the threshold")
        );
    }
}
