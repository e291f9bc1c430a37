//! The volatile-evidence collection on the emulator: the record (the case table) and the
//! evidence bucket are moto's; Systems Manager answers at the SDK boundary, as the API reference
//! describes it (moto runs no agent: its invocations are `Success` at once with no output).
//! One command per instance and approval, whatever the retries; the archive counts only when
//! the object the bucket holds has the SHA-256 the command printed.

mod common;

use aws_sdk_ssm::operation::get_command_invocation::{
    GetCommandInvocationError, GetCommandInvocationOutput,
};
use aws_sdk_ssm::operation::send_command::{SendCommandError, SendCommandOutput};
use aws_sdk_ssm::types::{Command, CommandInvocationStatus};
use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
use aws_smithy_types::error::ErrorMetadata;
use common::Fixture;
use ec2_quarantine::Outcome;
use ec2_quarantine::approval::approval_id;
use ec2_quarantine::domain::finding::resolve;
use ec2_quarantine::steps::collect::{CollectPass, Collector, archive_key, collect};
use sha2::Digest as _;

const EXECUTION: &str = "arn:aws:states:us-east-1:123456789012:execution:containment:0b5e7e34-9a34-4e29-9d5b-0123456789ab";
const COMMAND: &str = "0b5e7e34-9a34-4e29-9d5b-0123456789ab";

fn approval() -> String {
    approval_id(EXECUTION)
}

fn payload(f: &Fixture, pass: u32) -> serde_json::Value {
    let target = resolve(&f.event("instance-backdoor.json"))
        .unwrap()
        .contain()
        .unwrap();
    serde_json::json!({"target": target, "case": null, "execution": EXECUTION, "pass": pass})
}

fn output(archive_sha256: &str) -> String {
    format!(
        "ec2-quarantine volatile evidence, case {}, from a to b\n== files (sha256)\n{}  processes.tsv\n== archive\narchive_sha256: {archive_sha256}\narchive_bytes: 5\nuploaded: yes\n",
        approval(),
        "ab".repeat(32)
    )
}

fn sent(f: &Fixture) -> Rule {
    let instance = f.instance_id.clone();
    mock!(aws_sdk_ssm::Client::send_command)
        .match_requests(move |r| {
            let params = r.parameters().cloned().unwrap_or_default();
            let url = params
                .get("UploadUrl")
                .and_then(|v| v.first())
                .cloned()
                .unwrap_or_default();
            r.document_name() == Some("ec2-quarantine-collector")
                && r.instance_ids() == [instance.clone()]
                && params.get("CaseId").map(Vec::as_slice) == Some(&[approval()][..])
                && url.contains(&archive_key(&approval(), &instance))
                && url.contains("X-Amz-Signature=")
        })
        .then_output(|| {
            SendCommandOutput::builder()
                .command(Command::builder().command_id(COMMAND).build())
                .build()
        })
}

fn invocation(status: CommandInvocationStatus, stdout: String) -> Rule {
    mock!(aws_sdk_ssm::Client::get_command_invocation)
        .match_requests(|r| r.command_id() == Some(COMMAND))
        .sequence()
        .output(move || {
            GetCommandInvocationOutput::builder()
                .status(status.clone())
                .standard_output_content(stdout.clone())
                .build()
        })
        .repeatedly()
        .build()
}

async fn pass(
    f: &Fixture,
    ctx: &ec2_quarantine::Ctx,
    ssm: &aws_sdk_ssm::Client,
    n: u32,
) -> CollectPass {
    let collector = Collector::new("ec2-quarantine-collector").unwrap();
    collect(ctx, Some(&collector), ssm, payload(f, n))
        .await
        .expect("a pass")
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn one_command_and_the_archive_checked_in_the_bucket() {
    let f = Fixture::new().await;
    let bucket = common::evidence_bucket(&f.config, &f.account).await;
    let ctx = f.ctx.clone().with_evidence_bucket(&bucket);
    let archive = b"tar!\n".to_vec();
    let sum = hex::encode(sha2::Sha256::digest(&archive));
    let send = sent(&f);
    let running = invocation(CommandInvocationStatus::InProgress, String::new());
    let ssm = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[&send, &running]);
    // The first pass sends; its retry finds the command recorded and only asks how it goes.
    let first = pass(&f, &ctx, &ssm, 0).await;
    assert!(!first.finished, "{first:?}");
    let again = pass(&f, &ctx, &ssm, 0).await;
    assert!(!again.finished);
    assert_eq!(send.num_calls(), 1, "one command, whatever the retries");
    // Over: the object the instance uploaded is read back and hashed here.
    common::direct_s3(&f.config)
        .put_object()
        .bucket(&bucket)
        .key(archive_key(&approval(), &f.instance_id))
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .body(archive.into())
        .send()
        .await
        .unwrap();
    let over = invocation(CommandInvocationStatus::Success, output(&sum));
    let ssm = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[&over]);
    let done = pass(&f, &ctx, &ssm, 1).await;
    assert!(done.finished);
    let Outcome::Done(report) = &done.outcome else {
        panic!("{done:?}")
    };
    let archive = report.archive.as_ref().unwrap();
    assert!(archive.verified && archive.stored_sha256.as_deref() == Some(sum.as_str()));
    assert_eq!(report.files.len(), 1);
    // The record stands: a later pass (a retried one) reads it and asks nothing.
    let silent = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[]);
    let later = pass(&f, &ctx, &silent, 2).await;
    assert_eq!(later.outcome, done.outcome);
    let record = ctx
        .cases()
        .collection(&approval(), &f.instance_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.command_id.as_deref(), Some(COMMAND));
    assert_eq!(record.report, Some(done.outcome));
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn an_object_that_is_not_the_printed_archive_is_not_evidence() {
    let f = Fixture::new().await;
    let bucket = common::evidence_bucket(&f.config, &f.account).await;
    let ctx = f.ctx.clone().with_evidence_bucket(&bucket);
    let send = sent(&f);
    let ssm = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[&send]);
    pass(&f, &ctx, &ssm, 0).await;
    // Someone who read the URL PUT first: the bucket holds other bytes under the name.
    let forged = b"not the archive".to_vec();
    common::direct_s3(&f.config)
        .put_object()
        .bucket(&bucket)
        .key(archive_key(&approval(), &f.instance_id))
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .body(forged.into())
        .send()
        .await
        .unwrap();
    let over = invocation(CommandInvocationStatus::Success, output(&"cd".repeat(32)));
    let ssm = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[&over]);
    let failed = pass(&f, &ctx, &ssm, 1).await;
    assert!(failed.finished);
    let Outcome::Failed(report) = &failed.outcome else {
        panic!("{failed:?}")
    };
    assert!(!report.archive.as_ref().unwrap().verified);
    assert!(report.warnings.iter().any(|w| w.contains("not evidence")));
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn an_instance_systems_manager_does_not_manage_is_reported_once() {
    let f = Fixture::new().await;
    let bucket = common::evidence_bucket(&f.config, &f.account).await;
    let ctx = f.ctx.clone().with_evidence_bucket(&bucket);
    let refused = mock!(aws_sdk_ssm::Client::send_command).then_error(|| {
        SendCommandError::generic(
            ErrorMetadata::builder()
                .code("InvalidInstanceId")
                .message("Instances not in a valid state for account")
                .build(),
        )
    });
    let ssm = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[&refused]);
    let first = pass(&f, &ctx, &ssm, 0).await;
    assert!(first.finished);
    assert!(
        matches!(first.outcome, Outcome::Skipped { .. }),
        "{first:?}"
    );
    pass(&f, &ctx, &ssm, 1).await;
    assert_eq!(refused.num_calls(), 1);
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_command_not_listed_yet_is_waited_for() {
    let f = Fixture::new().await;
    let bucket = common::evidence_bucket(&f.config, &f.account).await;
    let ctx = f.ctx.clone().with_evidence_bucket(&bucket);
    let send = sent(&f);
    let unknown = mock!(aws_sdk_ssm::Client::get_command_invocation)
        .sequence()
        .error(|| {
            GetCommandInvocationError::generic(
                ErrorMetadata::builder()
                    .code("InvocationDoesNotExist")
                    .build(),
            )
        })
        .repeatedly()
        .build();
    let ssm = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[&send, &unknown]);
    let first = pass(&f, &ctx, &ssm, 0).await;
    assert!(!first.finished);
    assert_eq!(first.wait_seconds, 30);
    // The last pass gives up and says so.
    let last = pass(&f, &ctx, &ssm, 49).await;
    assert!(
        last.finished && matches!(last.outcome, Outcome::Failed(_)),
        "{last:?}"
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_send_that_may_have_been_taken_is_not_sent_again() {
    let f = Fixture::new().await;
    let bucket = common::evidence_bucket(&f.config, &f.account).await;
    let ctx = f.ctx.clone().with_evidence_bucket(&bucket);
    // A 5xx: Systems Manager may have taken the command (SendCommand has no idempotency token).
    let unknown = mock!(aws_sdk_ssm::Client::send_command)
        .sequence()
        .http_status(500, None)
        .repeatedly()
        .build();
    let ssm = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[&unknown]);
    let collector = Collector::new("ec2-quarantine-collector").unwrap();
    let first = collect(&ctx, Some(&collector), &ssm, payload(&f, 0)).await;
    assert!(first.is_err(), "{first:?}");
    assert_eq!(unknown.num_calls(), 1, "the SDK does not send it again");
    // The retried pass finds the claim held and sends nothing; the takeover (after 3 minutes)
    // looks for the command before it sends one.
    let again = pass(&f, &ctx, &ssm, 0).await;
    assert!(!again.finished);
    assert_eq!(unknown.num_calls(), 1);
    // A refusal proves nothing was taken: the claim goes, and the next pass, finding no command
    // of the approval listed, sends.
    let f2 = Fixture::new().await;
    let ctx2 = f2.ctx.clone().with_evidence_bucket(&bucket);
    let refused = mock!(aws_sdk_ssm::Client::send_command)
        .sequence()
        .error(|| {
            SendCommandError::generic(ErrorMetadata::builder().code("ThrottlingException").build())
        })
        .build();
    let listed = mock!(aws_sdk_ssm::Client::list_commands).then_output(|| {
        aws_sdk_ssm::operation::list_commands::ListCommandsOutput::builder().build()
    });
    let send = sent(&f2);
    let ssm = mock_client!(
        aws_sdk_ssm,
        RuleMode::Sequential,
        &[&refused, &listed, &send]
    );
    assert!(
        collect(&ctx2, Some(&collector), &ssm, payload(&f2, 0))
            .await
            .is_err()
    );
    let resent = pass(&f2, &ctx2, &ssm, 1).await;
    assert!(!resent.finished);
    assert_eq!(send.num_calls(), 1);
}
