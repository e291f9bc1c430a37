//! The Security Hub step on the emulator, through the fault proxy (so that IAM's evaluation of the
//! recorded calls covers its requests): the finding GuardDuty put in Security Hub gets the
//! verdict and the case in its note and the status NOTIFIED; an analyst's status and note stay;
//! an account without Security Hub is skipped; a finding Security Hub does not hold yet fails
//! with the name the state machine retries.
//!
//! Reading a Security Hub finding (a structure of some hundred fields) takes more stack in a debug
//! build than a test thread's 2 MiB: each test runs on a thread of its own with 16 MiB
//! (`common::on_a_big_stack`).
//!
//! moto's Security Hub answers as AWS does through the harness's corrections
//! (`helper_scripts/local/securityhub.py`, loaded by `helper_scripts/local/moto_server.py`).

mod common;

use aws_sdk_securityhub::types::{
    AwsSecurityFinding, AwsSecurityFindingFilters, Resource, Severity, StringFilter,
    StringFilterComparison, Workflow, WorkflowStatus,
};
use common::{Fixture, on_a_big_stack};
use ec2_quarantine::Outcome;
use ec2_quarantine::error::ErrorName;
use ec2_quarantine::steps::notify::{NotifyOutput, Verdict};
use ec2_quarantine::steps::security_hub::{HubInput, HubReport, HubSettings, UPDATED_BY, update};

const BACKDOOR: &str = "instance-backdoor.json";

fn product(region: &str) -> String {
    format!("arn:aws:securityhub:{region}::product/aws/guardduty")
}

fn input(f: &Fixture, verdict: Verdict) -> HubInput {
    HubInput {
        event: f.event_json(BACKDOOR),
        triage: None,
        notification: Some(NotifyOutput {
            verdict,
            failed: verdict.is_failure(),
            subject: String::from("[CONTAINED] test"),
            message_id: String::from("m-1"),
            chat: None,
        }),
    }
}

/// The step, as the state machine runs it after a report of `verdict`.
async fn step(
    f: &Fixture,
    enabled: bool,
    verdict: Verdict,
) -> Result<Outcome<HubReport>, ec2_quarantine::Error> {
    update(&f.ctx, HubSettings { enabled }, input(f, verdict)).await
}

/// Security Hub enabled in the fixture's account, holding the finding as GuardDuty sends it
/// (its identifying fields as in GuardDuty's documented example), with `status` and `note`.
async fn in_security_hub(
    f: &Fixture,
    status: WorkflowStatus,
    note: Option<(&str, &str)>,
) -> aws_sdk_securityhub::Client {
    let hub = aws_sdk_securityhub::Client::new(&f.config);
    hub.enable_security_hub()
        .enable_default_standards(false)
        .send()
        .await
        .unwrap();
    let event = f.event_json(BACKDOOR);
    let d = &event["detail"];
    let id = d["arn"].as_str().unwrap();
    let mut finding = AwsSecurityFinding::builder()
        .schema_version("2018-10-08")
        .id(id)
        .product_arn(product(common::REGION))
        .generator_id(id.split("/finding/").next().unwrap())
        .aws_account_id(&f.account)
        .types("TTPs/Command and Control/Backdoor:EC2-C&CActivity.B")
        .created_at("2026-11-27T09:40:00.000Z")
        .updated_at("2026-11-27T09:42:00.000Z")
        .severity(Severity::builder().label("HIGH".into()).build())
        .title("EC2 instance is communicating with a command and control server.")
        .description("GuardDuty finding")
        .resources(
            Resource::builder()
                .r#type("AwsEc2Instance")
                .id(format!(
                    "arn:aws:ec2:{}:{}:instance/{}",
                    common::REGION,
                    f.account,
                    f.instance_id
                ))
                .build(),
        )
        .workflow(Workflow::builder().status(status).build());
    if let Some((text, by)) = note {
        finding = finding.note(
            aws_sdk_securityhub::types::Note::builder()
                .text(text)
                .updated_by(by)
                .updated_at("2026-11-27T09:50:00.000Z")
                .build(),
        );
    }
    let out = hub
        .batch_import_findings()
        .findings(finding.build())
        .send()
        .await
        .unwrap();
    assert_eq!(out.failed_count(), Some(0), "{out:?}");
    hub
}

/// The finding's workflow status and note as Security Hub holds them now.
async fn held(
    f: &Fixture,
    hub: &aws_sdk_securityhub::Client,
) -> (String, Option<(String, String)>) {
    let event = f.event_json(BACKDOOR);
    let filter = |v: &str| {
        StringFilter::builder()
            .value(v)
            .comparison(StringFilterComparison::Equals)
            .build()
    };
    let out = hub
        .get_findings()
        .filters(
            AwsSecurityFindingFilters::builder()
                .id(filter(event["detail"]["arn"].as_str().unwrap()))
                .product_arn(filter(&product(common::REGION)))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let [finding] = out.findings() else {
        panic!("one finding, got {:?}", out.findings())
    };
    (
        finding
            .workflow()
            .and_then(|w| w.status())
            .map_or("NEW", |s| s.as_str())
            .to_owned(),
        finding.note().map(|n| {
            (
                n.text().unwrap_or_default().to_owned(),
                n.updated_by().unwrap_or_default().to_owned(),
            )
        }),
    )
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn a_contained_finding_gets_notified_and_the_note() {
    on_a_big_stack(a_contained_finding_gets_notified_and_the_note_body);
}

async fn a_contained_finding_gets_notified_and_the_note_body() {
    let f = Fixture::new().await;
    let hub = in_security_hub(&f, WorkflowStatus::New, None).await;
    let out = step(&f, true, Verdict::Contained).await.unwrap();
    assert!(matches!(out, Outcome::Done(_)), "{out:?}");
    let (status, note) = held(&f, &hub).await;
    assert_eq!(status, "NOTIFIED");
    let (text, by) = note.expect("a note");
    assert_eq!(by, UPDATED_BY);
    assert!(text.starts_with("ec2-quarantine: CONTAINED."), "{text}");
    // Again: nothing more to write.
    let again = step(&f, true, Verdict::Contained).await.unwrap();
    assert!(matches!(again, Outcome::AlreadyDone(_)), "{again:?}");
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn an_analysts_status_and_note_stay() {
    on_a_big_stack(an_analysts_status_and_note_stay_body);
}

async fn an_analysts_status_and_note_stay_body() {
    let f = Fixture::new().await;
    let analyst = (
        "benign: our scanner",
        "arn:aws:iam::123456789012:user/analyst",
    );
    let hub = Box::pin(in_security_hub(
        &f,
        WorkflowStatus::Suppressed,
        Some(analyst),
    ))
    .await;
    let out = step(&f, true, Verdict::Contained).await.unwrap();
    let Outcome::AlreadyDone(report) = out else {
        panic!("{out:?}")
    };
    assert_eq!(report.kept.len(), 2, "{:?}", report.kept);
    let (status, note) = held(&f, &hub).await;
    assert_eq!(status, "SUPPRESSED");
    assert_eq!(note, Some((analyst.0.to_owned(), analyst.1.to_owned())));
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn an_account_without_security_hub_is_skipped() {
    on_a_big_stack(an_account_without_security_hub_is_skipped_body);
}

async fn an_account_without_security_hub_is_skipped_body() {
    let f = Fixture::new().await;
    let out = step(&f, true, Verdict::Contained).await.unwrap();
    let Outcome::Skipped { reason } = out else {
        panic!("{out:?}")
    };
    assert!(
        reason.starts_with(&format!(
            "Security Hub is not enabled in account {} region us-east-1",
            f.account
        )),
        "{reason}"
    );
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn a_finding_not_there_yet_is_named_for_the_retry() {
    on_a_big_stack(a_finding_not_there_yet_is_named_for_the_retry_body);
}

async fn a_finding_not_there_yet_is_named_for_the_retry_body() {
    let f = Fixture::new().await;
    let hub = aws_sdk_securityhub::Client::new(&f.config);
    hub.enable_security_hub().send().await.unwrap();
    let err = step(&f, true, Verdict::Contained).await.unwrap_err();
    assert_eq!(err.name(), ErrorName::FindingNotInSecurityHub, "{err}");
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn a_finding_only_reported_keeps_its_status_and_turned_off_writes_nothing() {
    on_a_big_stack(a_finding_only_reported_keeps_its_status_and_turned_off_writes_nothing_body);
}

async fn a_finding_only_reported_keeps_its_status_and_turned_off_writes_nothing_body() {
    let f = Fixture::new().await;
    let hub = in_security_hub(&f, WorkflowStatus::New, None).await;
    let off = step(&f, false, Verdict::Contained).await.unwrap();
    assert!(matches!(off, Outcome::Skipped { .. }), "{off:?}");
    assert_eq!(held(&f, &hub).await, ("NEW".to_owned(), None));
    step(&f, true, Verdict::NotifyOnly).await.unwrap();
    let (status, note) = held(&f, &hub).await;
    assert_eq!(status, "NEW", "left for an analyst");
    assert!(note.is_some_and(|(t, _)| t.starts_with("ec2-quarantine: NOT CONTAINED BY POLICY.")),);
}
