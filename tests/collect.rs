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
    collect(ctx, Some(&collector), None, ssm, payload(f, n))
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
    let first = collect(&ctx, Some(&collector), None, &ssm, payload(&f, 0)).await;
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
        collect(&ctx2, Some(&collector), None, &ssm, payload(&f2, 0))
            .await
            .is_err()
    );
    let resent = pass(&f2, &ctx2, &ssm, 1).await;
    assert!(!resent.finished);
    assert_eq!(send.num_calls(), 1);
}

const MEMORY_COMMAND: &str = "6c2f3a10-1d2e-4f00-8a9b-0123456789ab";
const MEMORY_DOCUMENT: &str = "ec2-quarantine-memory";

/// The volatile collection over (its archive in the bucket), for the memory image to follow.
async fn volatile_over(f: &Fixture, bucket: &str) -> Rule {
    let archive = b"tar!\n".to_vec();
    let sum = hex::encode(sha2::Sha256::digest(&archive));
    common::direct_s3(&f.config)
        .put_object()
        .bucket(bucket)
        .key(archive_key(&approval(), &f.instance_id))
        .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
        .body(archive.into())
        .send()
        .await
        .unwrap();
    invocation(CommandInvocationStatus::Success, output(&sum))
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn the_memory_image_goes_onto_its_own_volume_then_a_locked_snapshot() {
    use ec2_quarantine::steps::memory::{Imager, MEMORY_IMAGE_TAG};
    let f = Fixture::new().await;
    let bucket = common::evidence_bucket(&f.config, &f.account).await;
    let ctx = f.ctx.clone().with_evidence_bucket(&bucket);
    let image_sha = "cd".repeat(32);
    let send = sent(&f);
    let volatile = volatile_over(&f, &bucket).await;
    let instance = f.instance_id.clone();
    let memory_sent = mock!(aws_sdk_ssm::Client::send_command)
        .match_requests(move |r| {
            let params = r.parameters().cloned().unwrap_or_default();
            let one = |k: &str| params.get(k).and_then(|v| v.first()).cloned();
            r.document_name() == Some(MEMORY_DOCUMENT)
                && r.instance_ids() == [instance.clone()]
                && one("CaseId") == Some(approval())
                && one("VolumeId").is_some_and(|v| v.starts_with("vol-"))
                // The first of /dev/sdf-/dev/sdp the instance does not use (the fixture's data
                // volume is at /dev/sdf).
                && one("Device").as_deref() == Some("/dev/sdg")
                && one("ToolSha256") == Some("ab".repeat(32))
                // t3.micro's 1 GiB: a volume of 3 GiB.
                && one("VolumeBytes").as_deref() == Some("3221225472")
                && one("ToolUrl").is_some_and(|u| {
                    u.contains(&format!(
                        "tools/avml-0.21.0-x86_64-unknown-linux-musl-{}",
                        "ab".repeat(32)
                    )) && u.contains("X-Amz-Signature=")
                })
        })
        .then_output(|| {
            SendCommandOutput::builder()
                .command(Command::builder().command_id(MEMORY_COMMAND).build())
                .build()
        });
    let printed = format!(
        "device: /dev/nvme1n1\nstarted: 2026-12-03T08:00:00Z\navml_exit: 0\nwrite_exit: 0\nimage_bytes: 1048576\nimage_sha256: {image_sha}\n"
    );
    let imaging = mock!(aws_sdk_ssm::Client::get_command_invocation)
        .match_requests(|r| r.command_id() == Some(MEMORY_COMMAND))
        .sequence()
        .output(|| {
            GetCommandInvocationOutput::builder()
                .status(CommandInvocationStatus::InProgress)
                .build()
        })
        .output(move || {
            GetCommandInvocationOutput::builder()
                .status(CommandInvocationStatus::Success)
                .standard_output_content(printed.clone())
                .build()
        })
        .repeatedly()
        .build();
    let ssm = mock_client!(
        aws_sdk_ssm,
        RuleMode::MatchAny,
        &[&send, &volatile, &memory_sent, &imaging]
    );
    let imager = Imager::new(MEMORY_DOCUMENT, Some(&"ab".repeat(32)), None).unwrap();
    let collector = Collector::new("ec2-quarantine-collector").unwrap();
    let mut passes = Vec::new();
    for n in 0..20 {
        // Each pass twice, as a retry after a lost answer would run it: nothing is done twice.
        for _ in 0..2 {
            let p = collect(&ctx, Some(&collector), Some(&imager), &ssm, payload(&f, n))
                .await
                .expect("a pass");
            passes.push(p);
        }
        if passes.last().unwrap().finished {
            break;
        }
    }
    let last = passes.last().unwrap();
    assert!(last.finished, "{last:?}");
    assert_eq!(
        memory_sent.num_calls(),
        1,
        "one memory command, whatever the retries"
    );
    let Some(Outcome::Done(report)) = &last.memory else {
        panic!("{last:?}")
    };
    assert_eq!(
        report.memory_mib,
        Some(1024),
        "t3.micro, as EC2 describes the type"
    );
    assert_eq!(report.volume_size_gib, Some(3));
    let image = report.image.as_ref().unwrap();
    assert_eq!(
        (image.bytes, image.sha256.as_str()),
        (1_048_576, image_sha.as_str())
    );
    let volume_id = report.volume_id.clone().unwrap();
    let snapshot_id = report.snapshot_id.clone().unwrap();
    assert_eq!(
        report.lock.as_ref().map(|l| l.state.as_str()),
        Some("governance")
    );
    // EC2's state: one volume made, encrypted, tagged, detached and kept; one snapshot of it.
    let ec2 = aws_sdk_ec2::Client::new(&f.config);
    let tagged = ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{MEMORY_IMAGE_TAG}"))
                .values(approval())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let volumes = tagged.volumes();
    assert_eq!(volumes.len(), 1, "one volume, whatever the retries");
    let volume = &volumes[0];
    assert_eq!(volume.volume_id(), Some(volume_id.as_str()));
    assert_eq!(volume.encrypted(), Some(true));
    assert_eq!(volume.size(), Some(3));
    assert_eq!(
        volume.state(),
        Some(&aws_sdk_ec2::types::VolumeState::Available)
    );
    let snapshots = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("volume-id")
                .values(&volume_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        snapshots
            .snapshots()
            .iter()
            .filter_map(|s| s.snapshot_id())
            .collect::<Vec<_>>(),
        [snapshot_id.as_str()]
    );
    // The record stands: a later pass reads it and asks nothing.
    let silent = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[]);
    let later = collect(
        &ctx,
        Some(&collector),
        Some(&imager),
        &silent,
        payload(&f, 30),
    )
    .await
    .unwrap();
    assert_eq!(later.memory, last.memory);
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn an_architecture_without_a_deployed_tool_is_not_imaged() {
    use ec2_quarantine::steps::memory::Imager;
    let f = Fixture::new().await;
    let bucket = common::evidence_bucket(&f.config, &f.account).await;
    let ctx = f.ctx.clone().with_evidence_bucket(&bucket);
    let send = sent(&f);
    let volatile = volatile_over(&f, &bucket).await;
    let ssm = mock_client!(aws_sdk_ssm, RuleMode::MatchAny, &[&send, &volatile]);
    // Only an arm64 build: the emulator's instance is x86_64.
    let imager = Imager::new(MEMORY_DOCUMENT, None, Some(&"ab".repeat(32))).unwrap();
    let collector = Collector::new("ec2-quarantine-collector").unwrap();
    let mut last = None;
    for n in 0..4 {
        let p = collect(&ctx, Some(&collector), Some(&imager), &ssm, payload(&f, n))
            .await
            .unwrap();
        let finished = p.finished;
        last = Some(p);
        if finished {
            break;
        }
    }
    let last = last.unwrap();
    assert!(last.finished);
    let Some(Outcome::Skipped { reason }) = &last.memory else {
        panic!("{last:?}")
    };
    assert!(reason.contains("no AVML binary for X86_64"), "{reason}");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_memory_command_not_taken_takes_the_empty_volume_off_without_a_snapshot() {
    use ec2_quarantine::steps::memory::{Imager, MEMORY_IMAGE_TAG};
    let f = Fixture::new().await;
    let bucket = common::evidence_bucket(&f.config, &f.account).await;
    let ctx = f.ctx.clone().with_evidence_bucket(&bucket);
    let send = sent(&f);
    let volatile = volatile_over(&f, &bucket).await;
    // Contained meanwhile (or never managed): Systems Manager takes no command.
    let refused = mock!(aws_sdk_ssm::Client::send_command)
        .match_requests(|r| r.document_name() == Some(MEMORY_DOCUMENT))
        .then_error(|| {
            SendCommandError::generic(
                ErrorMetadata::builder()
                    .code("InvalidInstanceId")
                    .message("Instances not in a valid state for account")
                    .build(),
            )
        });
    let ssm = mock_client!(
        aws_sdk_ssm,
        RuleMode::MatchAny,
        &[&send, &volatile, &refused]
    );
    let imager = Imager::new(MEMORY_DOCUMENT, Some(&"ab".repeat(32)), None).unwrap();
    let collector = Collector::new("ec2-quarantine-collector").unwrap();
    let mut last = None;
    for n in 0..20 {
        let p = collect(&ctx, Some(&collector), Some(&imager), &ssm, payload(&f, n))
            .await
            .unwrap();
        let finished = p.finished;
        last = Some(p);
        if finished {
            break;
        }
    }
    let last = last.unwrap();
    assert!(last.finished, "{last:?}");
    let Some(Outcome::Failed(report)) = &last.memory else {
        panic!("{last:?}")
    };
    assert_eq!(refused.num_calls(), 1);
    assert_eq!(report.command_status.as_deref(), Some("NotSent"));
    assert_eq!(
        report.snapshot_id, None,
        "an empty volume is not snapshotted"
    );
    // The volume came off the instance, and stays.
    let ec2 = aws_sdk_ec2::Client::new(&f.config);
    let volumes = ec2
        .describe_volumes()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{MEMORY_IMAGE_TAG}"))
                .values(approval())
                .build(),
        )
        .send()
        .await
        .unwrap();
    let volume = &volumes.volumes()[0];
    assert_eq!(
        volume.state(),
        Some(&aws_sdk_ec2::types::VolumeState::Available)
    );
    assert!(volume.attachments().is_empty());
}
