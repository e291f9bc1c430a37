//! The release workflow's report.

use std::fmt::Write as _;

use super::chat::{Card, escape};
use super::text::{subject_line, write_status};
use super::{Message, StepResult, Verdict, verdict_name};
use crate::domain::finding;
use crate::domain::outcome::Outcome;
use crate::steps::release::ReleaseReport;

/// The message of the release workflow.
///
/// One piece on purpose: the release message in reading order, one section per thing given
/// back.
pub(super) fn render_release(
    request: &serde_json::Value,
    result: &StepResult<ReleaseReport>,
) -> Message {
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
    let chat = Card {
        title: format!("{headline}: ec2-quarantine release of {}", escape(instance)),
        lines: body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(escape)
            .collect(),
        event_type: format!("ec2-quarantine.release.{}", verdict_name(verdict)),
        keywords: vec![headline.to_owned()],
        related_resources: vec![instance.to_owned()],
        ..Card::default()
    };
    Message {
        verdict,
        subject,
        body,
        attributes: vec![
            ("verdict", "String", verdict_name(verdict).to_owned()),
            ("instance_id", "String", instance.to_owned()),
        ],
        chat,
    }
}
