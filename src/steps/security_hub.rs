//! The finding in Security Hub: after the report went out, the GuardDuty finding's copy in
//! Security Hub CSPM gets the case and the verdict in its note and, when an instance was
//! contained (or containment failed), the workflow status NOTIFIED, so that the SOC's console
//! shows what the responder did.
//!
//! Only what the responder owns is written (`BatchUpdateFindings`, the customer's fields:
//! https://docs.aws.amazon.com/securityhub/latest/userguide/finding-update-batchupdatefindings.html):
//! the status only while it is still `NEW` (an analyst's NOTIFIED, RESOLVED or SUPPRESSED is never
//! undone), the note only when there is none or it is the responder's own (an analyst's note is
//! never overwritten). The calls go to the finding's own account and region (the member role for
//! another account); a member account may update its own findings.
//!
//! GuardDuty sends a new finding to Security Hub within minutes; a finding Security Hub does not
//! hold yet fails with `FindingNotInSecurityHub`, which the state machine retries for a while
//! (the function never waits). An account without Security Hub is skipped, with the reason.

use aws_sdk_securityhub::types::{
    AwsSecurityFinding, AwsSecurityFindingFilters, AwsSecurityFindingIdentifier, NoteUpdate,
    StringFilter, StringFilterComparison, WorkflowStatus, WorkflowUpdate,
};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::aws::context::Ctx;
use crate::domain::finding::{self, HubFinding};
use crate::domain::outcome::{Outcome, PlannedAction};
use crate::error::Error;
use crate::steps::notify::{NotifyOutput, StepResult, Verdict};
use crate::steps::triage::TriageReport;

/// Who the note says wrote it; a note by anyone else is an analyst's, and kept.
pub const UPDATED_BY: &str = "ec2-quarantine";
/// Security Hub keeps a note of 1 to 512 characters
/// (https://docs.aws.amazon.com/securityhub/1.0/APIReference/API_Note.html).
pub const MAX_NOTE_CHARS: usize = 512;
const MAX_CASES_NAMED: usize = 5;

/// The function's setting (`SECURITY_HUB_UPDATES`, from the template's `SecurityHubUpdates`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HubSettings {
    pub enabled: bool,
}

impl HubSettings {
    pub const VAR: &'static str = "SECURITY_HUB_UPDATES";

    pub fn from_env() -> Result<HubSettings, Error> {
        Self::from_value(std::env::var(Self::VAR).ok().as_deref())
    }

    fn from_value(value: Option<&str>) -> Result<HubSettings, Error> {
        match value.map(str::trim) {
            None | Some("") | Some("Enabled") => Ok(HubSettings { enabled: true }),
            Some("Disabled") => Ok(HubSettings { enabled: false }),
            Some(other) => Err(Error::Misconfigured(format!(
                "{} must be Enabled or Disabled, got {:?}",
                Self::VAR,
                finding::clip(other)
            ))),
        }
    }
}

/// What the step receives: the finding event, triage's plan (for the cases) and the report's
/// result (for the verdict), as the state machine's Notify state leaves them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HubInput {
    pub event: serde_json::Value,
    #[serde(default)]
    pub triage: Option<StepResult<TriageReport>>,
    #[serde(default)]
    pub notification: Option<NotifyOutput>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubReport {
    /// The finding's `Id` in Security Hub.
    pub finding: String,
    /// The workflow status after the step.
    pub workflow_status: String,
    /// What the step wrote, and what it left as it found it and why.
    pub written: Vec<String>,
    pub kept: Vec<String>,
}

/// Records the verdict on the finding in Security Hub (the Lambda handler).
pub async fn update(
    ctx: &Ctx,
    settings: HubSettings,
    input: HubInput,
) -> Result<Outcome<HubReport>, Error> {
    let ctx = &ctx.acting_as("security-hub");
    if !settings.enabled {
        return Ok(Outcome::skipped(
            "Security Hub updates are turned off (SecurityHubUpdates=Disabled)",
        ));
    }
    let Some(notification) = &input.notification else {
        return Ok(Outcome::skipped(
            "no report was sent, so there is no verdict to record",
        ));
    };
    let hub = match finding::parse_event(input.event).and_then(|e| finding::hub_finding(&e)) {
        Ok(Ok(hub)) => hub,
        Ok(Err(reason)) => return Ok(Outcome::skipped(reason)),
        Err(e) => return Ok(Outcome::skipped(e.to_string())),
    };
    if let Some(reason) = ctx.org().refusal(&hub.scope.account_id) {
        return Ok(Outcome::skipped(reason));
    }
    let triage = match &input.triage {
        Some(StepResult::Completed(Outcome::Done(t) | Outcome::AlreadyDone(t))) => Some(t),
        _ => None,
    };
    let cases: Vec<&str> = triage
        .map(|t| {
            t.targets
                .iter()
                .filter_map(|p| p.case.as_ref().map(|c| c.case_id.as_str()))
                .collect()
        })
        .unwrap_or_default();
    let change = Change {
        note: note(notification.verdict, &cases),
        notify: matches!(
            notification.verdict,
            Verdict::Contained | Verdict::Partial | Verdict::Failed
        ),
    };
    // Boxed: the SDK's futures nest deep enough to overflow a test thread's stack otherwise.
    let config = Box::pin(ctx.scoped_config(&hub.scope, &hub.finding_id)).await?;
    let client = aws_sdk_securityhub::Client::from_conf(
        aws_sdk_securityhub::config::Builder::from(&config)
            .interceptor(crate::aws::calls::CallMetrics)
            .build(),
    );
    Box::pin(update_finding(
        &client,
        &hub,
        &change,
        ctx.settings().dry_run,
    ))
    .await
}

/// What the step would write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub note: String,
    /// Whether the workflow status should say NOTIFIED (the finding was acted on and the team
    /// told); otherwise it is left for an analyst to triage.
    pub notify: bool,
}

/// The note: the verdict, the cases and where to read more, within Security Hub's bound.
pub fn note(verdict: Verdict, cases: &[&str]) -> String {
    let mut text = format!("{UPDATED_BY}: {}.", verdict.headline());
    match cases {
        [] => {}
        [one] => text.push_str(&format!(
            " Case {one} (helper_scripts/deploy.sh case {one})."
        )),
        many => {
            text.push_str(&format!(
                " Cases: {}",
                many[..many.len().min(MAX_CASES_NAMED)].join(", ")
            ));
            if many.len() > MAX_CASES_NAMED {
                text.push_str(&format!(" and {} more", many.len() - MAX_CASES_NAMED));
            }
            text.push('.');
        }
    }
    text.push_str(" The alert topic's message lists each step.");
    text.chars().take(MAX_NOTE_CHARS).collect()
}

/// Reads the finding and writes what the responder owns of it.
#[tracing::instrument(skip_all, fields(finding_id = %hub.finding_id))]
pub async fn update_finding(
    client: &aws_sdk_securityhub::Client,
    hub: &HubFinding,
    change: &Change,
    dry_run: bool,
) -> Result<Outcome<HubReport>, Error> {
    let filter = |value: &str| {
        StringFilter::builder()
            .value(value)
            .comparison(StringFilterComparison::Equals)
            .build()
    };
    let found = client
        .get_findings()
        .filters(
            AwsSecurityFindingFilters::builder()
                .id(filter(&hub.id))
                .product_arn(filter(&hub.product_arn))
                .build(),
        )
        .max_results(1)
        .send()
        .await;
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            let err = Error::from_sdk("securityhub:GetFindings", e);
            // Security Hub's answer for an account that has not enabled it
            // (https://docs.aws.amazon.com/securityhub/1.0/APIReference/CommonErrors.html).
            if err.aws_code() == Some("InvalidAccessException") {
                info!(error = %err, "Security Hub is not enabled here");
                return Ok(Outcome::skipped(format!(
                    "Security Hub is not enabled in account {} region {} ({err})",
                    hub.scope.account_id, hub.scope.region
                )));
            }
            return Err(err);
        }
    };
    let Some(current) = found
        .findings()
        .iter()
        .find(|f| f.id() == Some(hub.id.as_str()))
    else {
        return Err(Error::NotInSecurityHub {
            finding: hub.id.clone(),
        });
    };
    let plan = decide(current, change);
    if plan.workflow.is_none() && plan.note.is_none() {
        return Ok(Outcome::AlreadyDone(plan.report(hub)));
    }
    if dry_run {
        let mut actions = Vec::new();
        if let Some(status) = &plan.workflow {
            actions.push(PlannedAction::unchecked(
                "securityhub:BatchUpdateFindings",
                &hub.id,
                format!("workflow status {status}"),
            ));
        }
        if let Some(note) = &plan.note {
            actions.push(PlannedAction::unchecked(
                "securityhub:BatchUpdateFindings",
                &hub.id,
                format!("note: {note}"),
            ));
        }
        return Ok(Outcome::DryRun { actions });
    }
    let identifier = AwsSecurityFindingIdentifier::builder()
        .id(&hub.id)
        .product_arn(&hub.product_arn)
        .build();
    let mut request = client
        .batch_update_findings()
        .finding_identifiers(identifier);
    if let Some(status) = &plan.workflow {
        request = request.workflow(WorkflowUpdate::builder().status(status.clone()).build());
    }
    if let Some(text) = &plan.note {
        request = request.note(
            NoteUpdate::builder()
                .text(text)
                .updated_by(UPDATED_BY)
                .build(),
        );
    }
    let out = request
        .send()
        .await
        .map_err(|e| Error::from_sdk("securityhub:BatchUpdateFindings", e))?;
    // A finding the call could not update is listed, not raised
    // (https://docs.aws.amazon.com/securityhub/1.0/APIReference/API_BatchUpdateFindingsUnprocessedFinding.html).
    if let Some(unprocessed) = out.unprocessed_findings().first() {
        let code = unprocessed.error_code().unwrap_or("Unknown");
        let message = unprocessed.error_message().unwrap_or_default();
        return Err(match code {
            "FindingNotFound" => Error::NotInSecurityHub {
                finding: hub.id.clone(),
            },
            "ConcurrentUpdateError" | "InternalFailure" => {
                Error::answered("securityhub:BatchUpdateFindings", code, message, true)
            }
            _ => Error::answered("securityhub:BatchUpdateFindings", code, message, false),
        });
    }
    info!(workflow = ?plan.workflow, note = plan.note.is_some(), "finding updated in Security Hub");
    Ok(Outcome::Done(plan.report(hub)))
}

fn names_case(note: &str) -> bool {
    note.contains(". Case ") || note.contains(". Cases: ")
}

/// What to write of the change, given the finding as Security Hub holds it.
struct Plan {
    status_now: String,
    workflow: Option<WorkflowStatus>,
    note: Option<String>,
    kept: Vec<String>,
}

impl Plan {
    fn report(self, hub: &HubFinding) -> HubReport {
        let mut written = Vec::new();
        if let Some(status) = &self.workflow {
            written.push(format!(
                "workflow status {status} (was {})",
                self.status_now
            ));
        }
        if self.note.is_some() {
            written.push(String::from("note"));
        }
        HubReport {
            finding: hub.id.clone(),
            workflow_status: self
                .workflow
                .as_ref()
                .map_or(self.status_now.clone(), |s| s.as_str().to_owned()),
            written,
            kept: self.kept,
        }
    }
}

fn decide(current: &AwsSecurityFinding, change: &Change) -> Plan {
    let status_now = current
        .workflow()
        .and_then(|w| w.status())
        .map_or("NEW", |s| s.as_str())
        .to_owned();
    let mut kept = Vec::new();
    let workflow = if !change.notify {
        None
    } else if status_now == WorkflowStatus::New.as_str() {
        Some(WorkflowStatus::Notified)
    } else {
        if status_now != WorkflowStatus::Notified.as_str() {
            kept.push(format!(
                "workflow status {status_now}: set by someone else, never undone"
            ));
        }
        None
    };
    let note = match current.note() {
        Some(n) if n.updated_by() != Some(UPDATED_BY) => {
            kept.push(format!(
                "the note by {}: an analyst's note is never overwritten",
                finding::clip(n.updated_by().unwrap_or("someone"))
            ));
            None
        }
        Some(n) if n.text() == Some(change.note.as_str()) => None,
        // A copy of the finding sent later (while paused, after a release) is not contained
        // again: the note that names the case stays.
        Some(n) if names_case(n.text().unwrap_or_default()) && !names_case(&change.note) => {
            kept.push(String::from(
                "the responder's earlier note, which names the case",
            ));
            None
        }
        _ => Some(change.note.clone()),
    };
    Plan {
        status_now,
        workflow,
        note,
        kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_securityhub::error::ErrorMetadata;
    use aws_sdk_securityhub::operation::batch_update_findings::BatchUpdateFindingsOutput;
    use aws_sdk_securityhub::operation::get_findings::{GetFindingsError, GetFindingsOutput};
    use aws_sdk_securityhub::types::{
        BatchUpdateFindingsUnprocessedFinding, Note, Resource, Workflow,
    };
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

    use crate::domain::finding::Scope;

    const ID: &str = "arn:aws:guardduty:us-east-1:123456789012:detector/12abc34d567e8fa901bc2d34e56789f0/finding/a5b6c7d8e9f04a1b2c3d4e5f60718293";

    fn hub() -> HubFinding {
        HubFinding {
            scope: Scope {
                account_id: "123456789012".into(),
                region: "us-east-1".into(),
                partition: "aws".into(),
            },
            finding_id: "a5b6c7d8e9f04a1b2c3d4e5f60718293".into(),
            id: ID.into(),
            product_arn: "arn:aws:securityhub:us-east-1::product/aws/guardduty".into(),
        }
    }

    fn change(notify: bool) -> Change {
        Change {
            note: "ec2-quarantine: CONTAINED. Case i-1-20260101T000000000Z.".into(),
            notify,
        }
    }

    /// The finding as Security Hub holds it (GuardDuty's fields, as in its documented example).
    fn held(status: &str, note: Option<(&str, &str)>) -> Rule {
        let status = status.to_owned();
        let note = note.map(|(t, by)| (t.to_owned(), by.to_owned()));
        mock!(aws_sdk_securityhub::Client::get_findings)
            .match_requests(|r| {
                let f = r.filters().expect("filters");
                f.id()[0].value() == Some(ID)
                    && f.id()[0].comparison() == Some(&StringFilterComparison::Equals)
                    && f.product_arn()[0].value()
                        == Some("arn:aws:securityhub:us-east-1::product/aws/guardduty")
            })
            .then_output(move || {
                let mut finding = AwsSecurityFinding::builder()
                    .schema_version("2018-10-08")
                    .id(ID)
                    .product_arn("arn:aws:securityhub:us-east-1::product/aws/guardduty")
                    .generator_id("arn:aws:guardduty:us-east-1:123456789012:detector/12abc34d567e8fa901bc2d34e56789f0")
                    .aws_account_id("123456789012")
                    .created_at("2026-01-01T00:00:00.000Z")
                    .updated_at("2026-01-01T00:00:00.000Z")
                    .title("Backdoor")
                    .description("Backdoor")
                    .resources(Resource::builder().r#type("AwsEc2Instance").id("i-1").build())
                    .workflow(Workflow::builder().status(WorkflowStatus::from(status.as_str())).build());
                if let Some((text, by)) = &note {
                    finding = finding.note(
                        Note::builder()
                            .text(text)
                            .updated_by(by)
                            .updated_at("2026-01-01T00:00:00.000Z")
                            .build(),
                    );
                }
                GetFindingsOutput::builder().findings(finding.build()).build()
            })
    }

    fn none_held() -> Rule {
        mock!(aws_sdk_securityhub::Client::get_findings).then_output(|| {
            GetFindingsOutput::builder()
                .set_findings(Some(Vec::new()))
                .build()
        })
    }

    fn updated(expect_status: Option<&'static str>, expect_note: bool) -> Rule {
        mock!(aws_sdk_securityhub::Client::batch_update_findings)
            .match_requests(move |r| {
                r.workflow().and_then(|w| w.status()).map(|s| s.as_str()) == expect_status
                    && r.note().is_some() == expect_note
                    && r.note().is_none_or(|n| n.updated_by() == Some(UPDATED_BY))
                    && r.finding_identifiers().len() == 1
                    && r.finding_identifiers()[0].id() == Some(ID)
            })
            .then_output(|| BatchUpdateFindingsOutput::builder().build())
    }

    #[tokio::test]
    async fn a_new_finding_gets_notified_and_the_note() {
        let (get, put) = (held("NEW", None), updated(Some("NOTIFIED"), true));
        let client = mock_client!(aws_sdk_securityhub, RuleMode::MatchAny, [&get, &put]);
        let out = update_finding(&client, &hub(), &change(true), false)
            .await
            .unwrap();
        let Outcome::Done(report) = out else {
            panic!("{out:?}")
        };
        assert_eq!(report.workflow_status, "NOTIFIED");
        assert_eq!(
            report.written,
            ["workflow status NOTIFIED (was NEW)", "note"]
        );
        assert_eq!(put.num_calls(), 1);
    }

    #[tokio::test]
    async fn an_analysts_status_and_note_are_never_changed() {
        for status in ["RESOLVED", "SUPPRESSED"] {
            let get = held(
                status,
                Some((
                    "looked at it: scanner",
                    "arn:aws:iam::123456789012:user/ana",
                )),
            );
            let put = updated(None, false);
            let client = mock_client!(aws_sdk_securityhub, RuleMode::MatchAny, [&get, &put]);
            let out = update_finding(&client, &hub(), &change(true), false)
                .await
                .unwrap();
            let Outcome::AlreadyDone(report) = out else {
                panic!("{out:?}")
            };
            assert_eq!(report.workflow_status, status);
            assert_eq!(report.kept.len(), 2, "{:?}", report.kept);
            assert_eq!(put.num_calls(), 0, "nothing written");
        }
    }

    #[tokio::test]
    async fn the_responders_own_note_is_brought_up_to_date_and_a_notify_only_verdict_leaves_the_status()
     {
        let get = held("NEW", Some(("ec2-quarantine: DRY RUN.", UPDATED_BY)));
        let put = updated(None, true);
        let client = mock_client!(aws_sdk_securityhub, RuleMode::MatchAny, [&get, &put]);
        let out = update_finding(&client, &hub(), &change(false), false)
            .await
            .unwrap();
        assert!(
            matches!(out, Outcome::Done(ref r) if r.workflow_status == "NEW"),
            "{out:?}"
        );
        assert_eq!(put.num_calls(), 1);
    }

    #[tokio::test]
    async fn a_later_copy_not_contained_again_keeps_the_note_that_names_the_case() {
        let get = held(
            "NOTIFIED",
            Some((
                "ec2-quarantine: CONTAINED. Case i-1-20260101T000000000Z (helper_scripts/deploy.sh case i-1-20260101T000000000Z).",
                UPDATED_BY,
            )),
        );
        let put = updated(None, true);
        let client = mock_client!(aws_sdk_securityhub, RuleMode::MatchAny, [&get, &put]);
        let paused = Change {
            note: note(Verdict::NotifyOnly, &[]),
            notify: false,
        };
        let out = update_finding(&client, &hub(), &paused, false)
            .await
            .unwrap();
        let Outcome::AlreadyDone(report) = out else {
            panic!("{out:?}")
        };
        assert_eq!(
            report.kept,
            ["the responder's earlier note, which names the case"]
        );
        assert_eq!(put.num_calls(), 0);
    }

    #[tokio::test]
    async fn a_second_run_writes_nothing() {
        let get = held(
            "NOTIFIED",
            Some((
                "ec2-quarantine: CONTAINED. Case i-1-20260101T000000000Z.",
                UPDATED_BY,
            )),
        );
        let put = updated(None, false);
        let client = mock_client!(aws_sdk_securityhub, RuleMode::MatchAny, [&get, &put]);
        let out = update_finding(&client, &hub(), &change(true), false)
            .await
            .unwrap();
        assert!(matches!(out, Outcome::AlreadyDone(_)), "{out:?}");
        assert_eq!(put.num_calls(), 0);
    }

    #[tokio::test]
    async fn a_finding_security_hub_does_not_hold_yet_is_retried_by_name() {
        let client = mock_client!(aws_sdk_securityhub, [&none_held()]);
        let err = update_finding(&client, &hub(), &change(true), false)
            .await
            .unwrap_err();
        assert_eq!(err.name(), crate::error::ErrorName::FindingNotInSecurityHub);
        // And when BatchUpdateFindings says so (it lists the finding, it does not fail).
        let get = held("NEW", None);
        let put = mock!(aws_sdk_securityhub::Client::batch_update_findings).then_output(|| {
            BatchUpdateFindingsOutput::builder()
                .unprocessed_findings(
                    BatchUpdateFindingsUnprocessedFinding::builder()
                        .finding_identifier(
                            AwsSecurityFindingIdentifier::builder()
                                .id(ID)
                                .product_arn("arn:aws:securityhub:us-east-1::product/aws/guardduty")
                                .build(),
                        )
                        .error_code("FindingNotFound")
                        .error_message("Finding Not Found")
                        .build(),
                )
                .build()
        });
        let client = mock_client!(aws_sdk_securityhub, RuleMode::Sequential, [&get, &put]);
        let err = update_finding(&client, &hub(), &change(true), false)
            .await
            .unwrap_err();
        assert_eq!(err.name(), crate::error::ErrorName::FindingNotInSecurityHub);
    }

    #[tokio::test]
    async fn an_account_without_security_hub_is_skipped_and_a_throttle_is_transient() {
        let not_enabled = mock!(aws_sdk_securityhub::Client::get_findings).then_error(|| {
            GetFindingsError::generic(
                ErrorMetadata::builder()
                    .code("InvalidAccessException")
                    .message("Account 123456789012 is not subscribed to AWS Security Hub")
                    .build(),
            )
        });
        let client = mock_client!(aws_sdk_securityhub, [&not_enabled]);
        let out = update_finding(&client, &hub(), &change(true), false)
            .await
            .unwrap();
        assert!(
            matches!(out, Outcome::Skipped { ref reason } if reason.starts_with("Security Hub is not enabled in account 123456789012 region us-east-1")),
            "{out:?}"
        );
        let throttled = mock!(aws_sdk_securityhub::Client::get_findings).then_error(|| {
            GetFindingsError::generic(
                ErrorMetadata::builder()
                    .code("LimitExceededException")
                    .message("Rate exceeded")
                    .build(),
            )
        });
        let client = mock_client!(aws_sdk_securityhub, [&throttled]);
        let err = update_finding(&client, &hub(), &change(true), false)
            .await
            .unwrap_err();
        assert_eq!(err.name(), crate::error::ErrorName::TransientAwsError);
    }

    #[tokio::test]
    async fn a_dry_run_says_what_it_would_write_and_writes_nothing() {
        let (get, put) = (held("NEW", None), updated(Some("NOTIFIED"), true));
        let client = mock_client!(aws_sdk_securityhub, RuleMode::MatchAny, [&get, &put]);
        let out = update_finding(&client, &hub(), &change(true), true)
            .await
            .unwrap();
        let Outcome::DryRun { actions } = out else {
            panic!("{out:?}")
        };
        assert_eq!(actions.len(), 2);
        assert_eq!(put.num_calls(), 0);
    }

    #[test]
    fn the_note_names_the_verdict_and_the_cases_within_security_hubs_bound() {
        let one = note(Verdict::Contained, &["i-1-20260101T000000000Z"]);
        assert_eq!(
            one,
            "ec2-quarantine: CONTAINED. Case i-1-20260101T000000000Z (helper_scripts/deploy.sh case i-1-20260101T000000000Z). The alert topic's message lists each step."
        );
        assert!(
            note(Verdict::NotifyOnly, &[]).starts_with("ec2-quarantine: NOT CONTAINED BY POLICY.")
        );
        let ids: Vec<String> = (0..25)
            .map(|i| format!("i-{i:017x}-20260101T000000000Z"))
            .collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let many = note(Verdict::Partial, &ids);
        assert!(many.contains(" and 20 more."), "{many}");
        assert!(many.chars().count() <= MAX_NOTE_CHARS);
    }

    #[test]
    fn the_setting_is_enabled_or_disabled() {
        assert!(HubSettings::from_value(None).unwrap().enabled);
        assert!(HubSettings::from_value(Some("Enabled")).unwrap().enabled);
        assert!(!HubSettings::from_value(Some("Disabled")).unwrap().enabled);
        assert!(HubSettings::from_value(Some("yes")).is_err());
    }
}
