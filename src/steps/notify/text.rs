//! The containment report's text: each step's lines, the links to the consoles, and the
//! bounds SNS sets on a subject and a body.

use std::fmt::Write as _;

use super::{MAX_SUBJECT_CHARS, StepResult, Steps};
use crate::domain::finding::{self, FindingEvent, Target};
use crate::domain::outcome::{Check, Outcome, PlannedAction};
use crate::domain::settings::{AutoScalingAction, RoleAction};
use crate::steps::deregister::{DeregisterReport, GroupStatus};
use crate::steps::isolate::{InterfaceStatus, IsolateReport};
use crate::steps::role::{Change, RoleReport};
use crate::steps::snapshot::SnapshotReport;
use crate::steps::triage::{Decision, TargetPlan, TriageReport};

/// Each step's line and details for one instance.
pub(super) fn write_actions(
    body: &mut String,
    steps: &Steps<'_>,
    finding_type: &str,
    links: &Links,
) {
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

/// The most bytes of a message body: SNS refuses a message over 262,144 bytes, attributes
/// included (https://docs.aws.amazon.com/sns/latest/api/API_Publish.html); every list in a report
/// is capped already, so this only guards against the unforeseen.
pub(super) const MAX_BODY_BYTES: usize = 200 * 1024;

/// Cuts a body over [`MAX_BODY_BYTES`] on a character boundary, saying where the rest is.
pub(super) fn bound(body: &mut String) {
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
pub(super) fn subject_line(s: &str) -> String {
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

pub(super) fn write_finding_ids(body: &mut String, event: Option<&FindingEvent>) {
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
pub(super) fn write_status<'a, T>(
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
                Outcome::Failed(_) => "FAILED",
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

pub(super) fn write_plan(body: &mut String, actions: &[PlannedAction]) {
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

pub(super) fn write_isolation(
    body: &mut String,
    r: Option<&StepResult<IsolateReport>>,
    links: &Links,
) {
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

pub(super) fn write_triage(
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
                Decision::AwaitApproval => {
                    let _ = writeln!(
                        body,
                        "\nNot contained: it {reason}, and the approval was not given (see the safety rails)."
                    );
                    let _ = writeln!(
                        body,
                        "Nothing was changed. Contain it by hand if it should be."
                    );
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
            write_rails(body, t);
        }
        Some(other) => {
            let _ = writeln!(body, "\nActions");
            write_status::<TriageReport>(body, "Triage", Some(other));
        }
    }
}

/// What the safety rails said about the finding (the pause switch), one line each.
pub(super) fn write_rails(body: &mut String, t: &TriageReport) {
    for line in t.rails.iter().chain(approval_line(t).as_ref()) {
        let _ = writeln!(body, "Safety rail: {line}.");
    }
}

/// The approval's outcome or error, when the rails do not say it already (triage writes it
/// there after an approval; a rejection or a timeout ends the workflow before).
pub(super) fn approval_line(t: &TriageReport) -> Option<String> {
    let approval = t.approval.as_ref()?;
    let error = approval.error.as_ref().map(|error| {
        format!(
            "the approval request failed ({}); what followed: {}",
            error.to_string().chars().take(300).collect::<String>(),
            approval
                .outcome
                .as_ref()
                .map(|o| o.line())
                .unwrap_or_else(|| "nothing that waited for it was contained".into())
        )
    });
    let line = error.or_else(|| approval.outcome.as_ref().map(|o| o.line()))?;
    (!t.rails.contains(&line)).then_some(line)
}

pub(super) fn write_deregistration(body: &mut String, r: Option<&StepResult<DeregisterReport>>) {
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

pub(super) fn write_snapshots(
    body: &mut String,
    r: Option<&StepResult<SnapshotReport>>,
    links: &Links,
) {
    let Some(report) = write_status(body, "Forensic snapshots", r) else {
        return;
    };
    for s in &report.snapshots {
        // Its lock, when it has one (a lock that failed is among the warnings).
        // A snapshot locked while pending has no expiry yet: its duration starts at completion.
        let lock = s.lock.as_ref().map_or_else(String::new, |l| {
            let term = match (&l.expires_on, l.days) {
                (Some(e), _) => format!(" until {e}"),
                (None, Some(d)) => format!(", {d} days from its completion"),
                (None, None) => String::new(),
            };
            format!(", locked ({}{term})", l.state)
        });
        let _ = writeln!(
            body,
            "      {} of {} ({}){lock}: {}",
            s.snapshot_id,
            s.volume_id,
            s.device.as_deref().unwrap_or("unknown device"),
            links.snapshot(&s.snapshot_id)
        );
    }
    if let Some(m) = &report.manifest {
        let _ = writeln!(
            body,
            "      Manifest: s3://{}/{}{} (SHA-256 {}), in the Object Lock bucket",
            m.bucket,
            m.key,
            m.version_id
                .as_deref()
                .map_or_else(String::new, |v| format!(" version {v}")),
            m.sha256
        );
    }
    for w in &report.warnings {
        let _ = writeln!(body, "      WARNING: {w}");
    }
}

/// One piece on purpose: the role section in reading order, one line per role action and its
/// links.
pub(super) fn write_role(body: &mut String, r: Option<&StepResult<RoleReport>>, links: &Links) {
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
pub(super) struct Links {
    regional: String,
    global: &'static str,
    region: String,
}

impl Links {
    pub(super) fn new(target: &Target) -> Links {
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

    pub(super) fn instance(&self, id: &str) -> String {
        self.ec2(&format!("InstanceDetails:instanceId={id}"))
    }

    fn security_group(&self, id: &str) -> String {
        self.ec2(&format!("SecurityGroup:groupId={id}"))
    }

    fn snapshot(&self, id: &str) -> String {
        self.ec2(&format!("SnapshotDetails:snapshotId={id}"))
    }

    pub(super) fn finding(&self, id: &str) -> String {
        format!(
            "{}/guardduty/home?region={}#/findings?macros=current&fId={id}",
            self.regional, self.region
        )
    }

    fn role(&self, name: &str) -> String {
        format!("{}/iam/home#/roles/details/{name}", self.global)
    }
}
