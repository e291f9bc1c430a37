//! A memory image of an instance that waits for a person's approval, taken with AVML
//! (Microsoft's Linux memory acquisition tool) after its volatile evidence, onto an EBS volume
//! made for it, which is then snapshotted and locked like the instance's own disks.
//!
//! Where the image is written decides whether it helps or harms (README, Evidence): never the
//! instance's own disks (their free blocks hold deleted files), never its memory (the image is
//! as large), never S3 through a presigned PUT (at most 5 GiB, and the length must be known
//! first). So, one step per pass of the collection workflow (Step Functions waits between two):
//!
//! 1. the instance's Availability Zone, architecture and memory size are read from EC2 (never
//!    from a tag or the finding), and an encrypted gp3 volume somewhat larger than its memory is
//!    created there, tagged for the approval (`CreateVolume`'s client token makes a retry return
//!    the same volume);
//! 2. once available, it is attached to the instance under a device name the instance does not
//!    use;
//! 3. once attached, the tool's `MemoryImageCollector` document is sent: it fetches the AVML
//!    binary the deployment put in the evidence bucket through a presigned GET, checks it
//!    against the pinned SHA-256 the template holds, finds the volume by its id, and streams
//!    `avml --compress` onto the raw device while hashing the stream (it prints the image's
//!    length and SHA-256);
//! 4. once the command is over (whatever its status), the volume is detached;
//! 5. once detached, it is snapshotted and the snapshot locked with the stack's lock settings.
//!
//! Nothing here deletes anything: the volume stays (tagged, for the investigator), and so does
//! the snapshot. Each step is read back from EC2 before the next: a retried pass finds what the
//! last one did. The record is the approval's (`approval#<id>`, `memory#<instance>`).

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_ec2::types::{
    ArchitectureValues, Filter, InstanceStateName, PlatformValues, ResourceType, TagSpecification,
    VolumeAttachmentState, VolumeState, VolumeType,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::Ctx;
use crate::aws::context::Clients;
use crate::aws::{instance, tags};
use crate::case::{Store, written};
use crate::domain::finding::Target;
use crate::domain::outcome::{Check, Outcome, PlannedAction};
use crate::error::Error;
use crate::steps::snapshot::{ForensicSnapshot, SnapshotLockState};

use super::collect::is_sha256_hex;

/// The AVML release the deployment builds (crate `avml` on crates.io), pinned.
pub const AVML_VERSION: &str = "0.21.0";

/// The tag that marks the volume as an approval's memory image.
pub const MEMORY_IMAGE_TAG: &str = "ec2-quarantine:memory-image";

/// The tag that marks the volume's snapshot (a key of its own: a snapshot of the volume that the
/// containment's `CreateSnapshots` takes copies the volume's tags, and is not this one).
pub const MEMORY_SNAPSHOT_TAG: &str = "ec2-quarantine:memory-snapshot";

/// How long after its first pass the image is followed: the document's hour, the command's
/// delivery and a margin. Past it, the volume comes off.
pub const DEADLINE_SECONDS: i64 = COMMAND_SECONDS as i64 + 300 + 600;

/// The collection's last passes, kept for detaching, snapshotting and locking.
pub const RESERVED_PASSES: u32 = 10;

/// How long a claimed send holds before another pass may send (ListCommands may lag behind).
const SEND_CLAIM_SECONDS: i64 = 180;

/// How long a volume just created may be unknown to DescribeVolumes (EC2's eventual consistency).
const NOT_FOUND_GRACE_SECONDS: i64 = 300;

/// Lock attempts on the snapshot, one per pass.
const LOCK_ATTEMPTS: u32 = 3;

/// The collection's last passes in which the volume is detached with `Force`.
const FORCE_PASSES: u32 = 3;

/// The most memory imaged: what the document writes within its hour at a gp3 volume's baseline
/// of 125 MiB/s (AVML's compression helps, never counted on), with time left for fetching the
/// tool and flushing the device.
pub const MAX_MEMORY_MIB: i64 = 320 * 1024;

/// How long the document may run (its `timeoutSeconds`): AVML reads memory at a few hundred
/// MiB/s and EBS takes a gp3 volume's baseline of 125 MiB/s, so about 50 minutes for 256 GiB.
pub const COMMAND_SECONDS: u32 = 3600;

/// The device names offered to the instance (EC2's recommended names for EBS volumes on Linux,
/// `/dev/sd[f-p]`): the first one its block device mappings do not use.
const DEVICE_LETTERS: std::ops::RangeInclusive<u8> = b'f'..=b'p';

/// The status the record gives a command Systems Manager did not take.
const NOT_SENT: &str = "NotSent";

/// The status the record gives a command no longer followed (out of time or of passes).
const NOT_FOLLOWED: &str = "NotFollowed";

/// The largest volume EC2 makes of gp3 (16 TiB), in GiB.
const MAX_VOLUME_GIB: i64 = 16_384;

/// The instance's architecture, as EC2 reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    /// The binary's name in the evidence bucket, as `deploy.sh deploy` uploads it: named by its
    /// SHA-256 too, so that a rebuilt binary never meets an older one under the same name (the
    /// bucket writes each name once).
    pub fn tool_key(self, sha256: &str) -> String {
        let arch = match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "aarch64",
        };
        format!("tools/avml-{AVML_VERSION}-{arch}-unknown-linux-musl-{sha256}")
    }
}

/// The memory imager as the function's environment configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imager {
    /// The document's name (`MEMORY_IMAGE_DOCUMENT`), in the responder's account.
    pub document: String,
    /// The pinned SHA-256 of each architecture's binary (`AVML_SHA256_X86_64`,
    /// `AVML_SHA256_ARM64`); an architecture without one is not imaged.
    pub x86_64_sha256: Option<String>,
    pub arm64_sha256: Option<String>,
}

impl Imager {
    /// From `MEMORY_IMAGE_DOCUMENT` (none when unset or empty) and the binaries' hashes.
    pub fn from_env() -> Result<Option<Imager>, Error> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let Some(document) = var("MEMORY_IMAGE_DOCUMENT") else {
            return Ok(None);
        };
        Imager::new(
            &document,
            var("AVML_SHA256_X86_64").as_deref(),
            var("AVML_SHA256_ARM64").as_deref(),
        )
        .map(Some)
    }

    pub fn new(
        document: &str,
        x86_64_sha256: Option<&str>,
        arm64_sha256: Option<&str>,
    ) -> Result<Imager, Error> {
        if !super::collect::is_document_name(document) {
            return Err(Error::Misconfigured(format!(
                "MEMORY_IMAGE_DOCUMENT {document:?} is not an SSM document name"
            )));
        }
        for (name, hash) in [
            ("AVML_SHA256_X86_64", x86_64_sha256),
            ("AVML_SHA256_ARM64", arm64_sha256),
        ] {
            if let Some(h) = hash.filter(|h| !is_sha256_hex(h)) {
                return Err(Error::Misconfigured(format!(
                    "{name} {h:?} is not a SHA-256 in lowercase hexadecimal"
                )));
            }
        }
        Ok(Imager {
            document: document.to_owned(),
            x86_64_sha256: x86_64_sha256.map(str::to_owned),
            arm64_sha256: arm64_sha256.map(str::to_owned),
        })
    }

    fn sha256(&self, arch: Arch) -> Option<&str> {
        match arch {
            Arch::X86_64 => self.x86_64_sha256.as_deref(),
            Arch::Arm64 => self.arm64_sha256.as_deref(),
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What the memory imaging did, as the approval's record keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryReport {
    pub instance_id: String,
    pub approval_id: String,
    pub document: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// The instance type's memory, as EC2 describes the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<i64>,
    /// The volume made for the image: it stays (never deleted), tagged for the approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size_gib: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// When the volume was created (seconds since the epoch): the image's deadline counts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<i64>,
    /// When a pass claimed the send (recorded before `SendCommand`, so that a pass that died
    /// meanwhile is followed by a look for the command rather than a second one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending_at: Option<i64>,
    /// Why the image ends early: the volume comes off (detached, snapshotted if written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winding_down: Option<String>,
    /// The command's output says it started writing to the volume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wrote: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lock_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_status_details: Option<String>,
    /// The image as the command printed it (the instance's word: its root wrote both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<PrintedImage>,
    /// The volume's snapshot, locked as the stack's lock settings say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<SnapshotLockState>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The image's length and SHA-256 as the document printed them, and the tool's hash it checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrintedImage {
    pub bytes: u64,
    pub sha256: String,
    /// The device the command found for the volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// AVML's exit status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub avml_exit: Option<i32>,
}

/// Reads the image's figures from the command's output. Lines that do not have the document's
/// shape are ignored (the output comes from a host the attacker may control).
pub fn parse_output(stdout: &str) -> Option<PrintedImage> {
    let mut bytes = None;
    let mut sha256 = None;
    let mut device = None;
    let mut avml_exit = None;
    for line in stdout.lines().map(str::trim_end) {
        if let Some(v) = line.strip_prefix("image_bytes: ") {
            bytes = v.parse::<u64>().ok();
        } else if let Some(v) = line.strip_prefix("image_sha256: ") {
            sha256 = Some(v).filter(|v| is_sha256_hex(v)).map(str::to_owned);
        } else if let Some(v) = line.strip_prefix("device: ") {
            device = Some(v)
                .filter(|v| {
                    v.len() <= 64
                        && v.starts_with("/dev/")
                        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'/')
                })
                .map(str::to_owned);
        } else if let Some(v) = line.strip_prefix("avml_exit: ") {
            avml_exit = v.parse::<i32>().ok();
        }
    }
    Some(PrintedImage {
        bytes: bytes?,
        sha256: sha256?,
        device,
        avml_exit,
    })
}

/// The volume's size for an instance of `memory_mib`: the memory, 1/64 more for LiME's headers
/// and Snappy's frames on pages that do not compress, and a GiB of margin, at least 1 GiB and at
/// most what gp3 allows (none beyond: such an instance is not imaged).
pub fn volume_gib(memory_mib: i64) -> Option<i32> {
    if memory_mib <= 0 {
        return None;
    }
    let bytes_mib = memory_mib + memory_mib / 64;
    let gib = (bytes_mib + 1023) / 1024 + 1;
    (gib <= MAX_VOLUME_GIB)
        .then(|| i32::try_from(gib).ok())
        .flatten()
}

/// The first of `/dev/sdf` to `/dev/sdp` that the instance's block device mappings use neither
/// as `sdX` nor as `xvdX`.
pub fn free_device(used: &[&str]) -> Option<String> {
    DEVICE_LETTERS
        .map(char::from)
        .find(|l| {
            !used.iter().any(|u| {
                let name = u.trim_start_matches("/dev/");
                name == format!("sd{l}") || name == format!("xvd{l}")
            })
        })
        .map(|l| format!("/dev/sd{l}"))
}

/// `CreateVolume`'s client token for the approval's image of the instance (at most 64 ASCII
/// characters: `apr-` and 16 hex digits, the instance id).
fn client_token(approval_id: &str, instance_id: &str) -> String {
    format!("{approval_id}-{instance_id}")
}

fn comment(approval_id: &str) -> String {
    format!("ec2-quarantine memory image, {approval_id}")
}

/// What the pass planned, in a dry run.
pub fn planned(imager: &Imager, instance_id: &str) -> Vec<PlannedAction> {
    [
        (
            "ec2:CreateVolume",
            "an encrypted gp3 volume the size of its memory, in its Availability Zone",
        ),
        ("ec2:AttachVolume", "the volume attached to the instance"),
        ("ssm:SendCommand", "AVML's image streamed onto the volume"),
        ("ec2:DetachVolume", "the volume detached (it stays)"),
        (
            "ec2:CreateSnapshot",
            "the volume's snapshot, locked as the stack says",
        ),
    ]
    .into_iter()
    .map(|(action, what)| {
        PlannedAction::new(
            action,
            instance_id,
            format!("{what} ({})", imager.document),
            Check::NotCheckable,
        )
    })
    .collect()
}

/// One pass of the image of `target` for `approval_id`: `AlreadyDone` while a step is under way
/// (the workflow waits and passes again), `Done` once the locked snapshot exists and the command
/// printed its image, `Failed` when it ended otherwise, `Skipped` when it cannot start.
/// `passes_left` counts this pass: the last few are kept for taking the volume off.
pub async fn pass(
    ctx: &Ctx,
    imager: &Imager,
    ssm: &aws_sdk_ssm::Client,
    target: &Target,
    approval_id: &str,
    passes_left: u32,
) -> Result<Outcome<MemoryReport>, Error> {
    let Some(store) = ctx.evidence() else {
        return Ok(Outcome::skipped(
            "no evidence bucket is configured (EVIDENCE_BUCKET): the tool cannot be fetched",
        ));
    };
    let cases = ctx.cases();
    let instance_id = &target.instance_id;
    let mut report = match cases.memory(approval_id, instance_id).await? {
        Some(Memory::Over(over)) => return Ok(over),
        Some(Memory::Progress(report)) => report,
        None => MemoryReport {
            instance_id: instance_id.clone(),
            approval_id: approval_id.to_owned(),
            document: imager.document.clone(),
            ..MemoryReport::default()
        },
    };
    // Out of time (the document's hour and a margin) or of passes (the last ones are kept for
    // detaching and snapshotting): the command is no longer followed, the volume comes off.
    let late = report
        .started_at
        .is_some_and(|at| now_secs() - at > DEADLINE_SECONDS);
    let must_end = late || passes_left <= RESERVED_PASSES;
    if report.volume_id.is_none() && passes_left <= RESERVED_PASSES {
        let over = Outcome::skipped(
            "too few of the collection's passes are left to make, write and take off a volume",
        );
        cases.memory_over(approval_id, instance_id, &over).await?;
        return Ok(over);
    }
    let clients = ctx.clients(&target.scope, approval_id).await?;
    let ec2 = &clients.ec2;
    let step = step(
        ec2,
        imager,
        ssm,
        store,
        cases,
        target,
        &mut report,
        must_end,
        passes_left,
    )
    .await;
    let mut next = match step {
        Ok(Step::Wait) => None,
        Ok(Step::Snapshotted { fresh }) => {
            lock(&clients, &mut report, fresh).await;
            if report.lock.is_none()
                && locks_on(&clients)
                && report.lock_attempts < LOCK_ATTEMPTS
                && passes_left > 1
            {
                // Tried again at the next pass (reading the lock first).
                None
            } else {
                Some(end(report.clone(), locks_on(&clients)))
            }
        }
        Ok(Step::Failed) => Some(Outcome::Failed(report.clone())),
        Ok(Step::Skipped(why)) => Some(Outcome::skipped(why)),
        // Nothing made yet: a throttle or a failed call is retried by the workflow.
        Err(err) if report.volume_id.is_none() && err.name().is_retryable() => {
            cases
                .memory_progress(approval_id, instance_id, &report)
                .await?;
            return Err(err);
        }
        Err(err) if report.volume_id.is_none() => {
            warn!(error = %err, "memory image given up");
            report.warnings.push(format!("given up: {err}"));
            Some(Outcome::Failed(report.clone()))
        }
        Err(err) => {
            // A volume exists: the image never ends on an error (the volume could stay on the
            // instance), and a pass never fails (five failed passes end the collection). Said,
            // and the next pass goes on; one that is not a throttle or a lost answer ends the
            // image early (the volume comes off).
            warn!(error = %err, "memory image pass failed");
            note(&mut report, format!("a pass failed: {err}"));
            if report.winding_down.is_none() && !err.name().is_retryable() {
                wind_down(&mut report, format!("given up: {err}"));
            }
            None
        }
    };
    if next.is_none() && passes_left <= 1 {
        let why = format!(
            "the collection's passes are used up: volume {} left as it is{}",
            report.volume_id.as_deref().unwrap_or("none"),
            if report.snapshot_id.is_some() {
                ""
            } else {
                ", not snapshotted"
            }
        );
        note(&mut report, why);
        next = Some(Outcome::Failed(report.clone()));
    }
    match next {
        Some(over) => {
            cases.memory_over(approval_id, instance_id, &over).await?;
            Ok(over)
        }
        None => {
            cases
                .memory_progress(approval_id, instance_id, &report)
                .await?;
            Ok(Outcome::AlreadyDone(report))
        }
    }
}

/// The most warnings a record keeps (each once).
const MAX_WARNINGS: usize = 20;

fn note(report: &mut MemoryReport, warning: String) {
    if !report.warnings.contains(&warning) && report.warnings.len() < MAX_WARNINGS {
        report.warnings.push(warning);
    }
}

fn now_secs() -> i64 {
    aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs()
}

/// Ends the image early: the command (if any) is no longer followed; the next passes detach the
/// volume, and snapshot it if a command was, or may have been, taken (it may have written).
fn wind_down(report: &mut MemoryReport, why: String) {
    note(report, why.clone());
    report.winding_down = Some(why);
    if report.command_status.is_none() {
        let taken = report.command_id.is_some() || report.sending_at.is_some();
        report.command_status = Some(if taken { NOT_FOLLOWED } else { NOT_SENT }.into());
    }
    report.sending_at = None;
}

enum Step {
    /// A step is under way: the workflow waits.
    Wait,
    /// The snapshot exists (`fresh`: just created, so not locked yet): locked, then over.
    Snapshotted { fresh: bool },
    /// Over without an image: the record says why.
    Failed,
    /// Not started, for this reason.
    Skipped(String),
}

#[allow(clippy::too_many_arguments)]
async fn step(
    ec2: &aws_sdk_ec2::Client,
    imager: &Imager,
    ssm: &aws_sdk_ssm::Client,
    store: &crate::aws::evidence::EvidenceStore,
    cases: &Store,
    target: &Target,
    report: &mut MemoryReport,
    must_end: bool,
    passes_left: u32,
) -> Result<Step, Error> {
    let instance_id = target.instance_id.as_str();
    let Some(volume_id) = report.volume_id.clone() else {
        return create_volume(ec2, imager, target, report).await;
    };
    if report.snapshot_id.is_some() {
        // Snapshotted by an earlier pass, whose lock failed: locked again (read first).
        return Ok(Step::Snapshotted { fresh: false });
    }
    let described = ec2
        .describe_volumes()
        .volume_ids(&volume_id)
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:DescribeVolumes", e));
    let volume = match described {
        Ok(out) => out.volumes().first().cloned(),
        // EC2's reads are eventually consistent: a volume just created may not be described yet.
        Err(err) if err.aws_code() == Some("InvalidVolume.NotFound") => None,
        Err(err) => return Err(err),
    };
    let Some(volume) = volume else {
        let young = report
            .started_at
            .is_some_and(|at| now_secs() - at < NOT_FOUND_GRACE_SECONDS);
        if young {
            return Ok(Step::Wait);
        }
        report.warnings.push(format!(
            "volume {volume_id} is not found: deleted, or never made (a customer-managed EBS default key the function may not use)"
        ));
        return Ok(Step::Failed);
    };
    let ours = volume
        .attachments()
        .iter()
        .find(|a| a.instance_id() == Some(instance_id));
    if report.device.is_none() {
        // An attachment a pass requested but did not record.
        report.device = ours.and_then(|a| a.device()).map(str::to_owned);
    }
    let attachment = ours.and_then(|a| a.state().cloned());
    if let Some(elsewhere) = volume
        .attachments()
        .iter()
        .find(|a| a.instance_id().is_some_and(|i| i != instance_id))
    {
        report.warnings.push(format!(
            "the volume is attached to {}, not to the instance: left as it is",
            elsewhere.instance_id().unwrap_or("another instance")
        ));
        return Ok(Step::Failed);
    }
    match volume.state() {
        Some(VolumeState::Creating) => return Ok(Step::Wait),
        Some(VolumeState::Available | VolumeState::InUse) => {}
        other => {
            report.warnings.push(format!(
                "the volume is {}: nothing can be written to it",
                other.map_or("unknown", |s| s.as_str())
            ));
            return Ok(Step::Failed);
        }
    }
    if report.command_status.is_none() {
        // Before the command is over: attach, then send (or, out of time, end early).
        return match attachment {
            Some(VolumeAttachmentState::Attached) => {
                send_or_follow(imager, ssm, store, cases, target, report, must_end).await
            }
            _ if must_end => {
                wind_down(report, out_of_time());
                Ok(Step::Wait)
            }
            None | Some(VolumeAttachmentState::Detached) => {
                attach(ec2, target, &volume_id, report).await
            }
            // Attaching, or busy: asked again at the next pass.
            _ => Ok(Step::Wait),
        };
    }
    // The command is over (or no longer followed): detach, then snapshot what it wrote.
    match attachment {
        Some(VolumeAttachmentState::Attached | VolumeAttachmentState::Busy) => {
            // Forced in the last passes: the volume is the tool's, and must not stay on the
            // instance (a detach the instance's kernel holds stays `busy` otherwise).
            let force = passes_left <= FORCE_PASSES;
            let answer = ec2
                .detach_volume()
                .volume_id(&volume_id)
                .instance_id(instance_id)
                .force(force)
                .send()
                .await
                .map_err(|e| Error::from_sdk("ec2:DetachVolume", e));
            match answer {
                Ok(_) => info!(volume = %volume_id, force, "memory volume detached"),
                // Already detaching (DescribeVolumes lags behind): the next pass looks again.
                Err(err)
                    if matches!(
                        err.aws_code(),
                        Some("IncorrectState" | "InvalidAttachment.NotFound")
                    ) => {}
                Err(err) => return Err(err),
            }
            Ok(Step::Wait)
        }
        Some(VolumeAttachmentState::Attaching | VolumeAttachmentState::Detaching) => Ok(Step::Wait),
        _ if volume.state() != Some(&VolumeState::Available) => Ok(Step::Wait),
        // The command never wrote to it (not sent, not delivered, refused the device or the
        // tool): the volume holds nothing, and is not snapshotted.
        _ if !wrote(report) => {
            report
                .warnings
                .push("nothing was written to the volume: not snapshotted".into());
            Ok(Step::Failed)
        }
        _ => snapshot(ec2, &volume_id, report).await,
    }
}

/// Whether the command may have written to the volume: its output says it started writing, or
/// it was no longer followed (taken, or perhaps taken: its output is not known).
fn wrote(report: &MemoryReport) -> bool {
    report.wrote || report.command_status.as_deref() == Some(NOT_FOLLOWED)
}

fn out_of_time() -> String {
    format!(
        "still under way {DEADLINE_SECONDS} s after the volume was made, or with only the collection's last {RESERVED_PASSES} passes left: no longer followed, the volume comes off"
    )
}

async fn create_volume(
    ec2: &aws_sdk_ec2::Client,
    imager: &Imager,
    target: &Target,
    report: &mut MemoryReport,
) -> Result<Step, Error> {
    let skip = |why: String| Ok(Step::Skipped(why));
    let inst = instance::describe(ec2, &target.scope, &target.instance_id).await?;
    if inst.state().and_then(|s| s.name()) != Some(&InstanceStateName::Running) {
        return skip("the instance is not running: its memory cannot be read".into());
    }
    if inst.platform() == Some(&PlatformValues::Windows) {
        return skip("AVML images Linux instances only".into());
    }
    let arch = match inst.architecture() {
        Some(ArchitectureValues::X8664) => Arch::X86_64,
        Some(ArchitectureValues::Arm64) => Arch::Arm64,
        other => {
            return skip(format!(
                "no AVML build for the instance's architecture ({})",
                other.map_or("unknown", |a| a.as_str())
            ));
        }
    };
    report.arch = Some(arch);
    if imager.sha256(arch).is_none() {
        return skip(format!(
            "no AVML binary for {arch:?} was deployed (its SHA-256 parameter is empty)"
        ));
    }
    let Some(zone) = inst.placement().and_then(|p| p.availability_zone()) else {
        return skip("EC2 did not give the instance's Availability Zone".into());
    };
    let Some(instance_type) = inst.instance_type().cloned() else {
        return skip("EC2 did not give the instance's type".into());
    };
    let memory_mib = ec2
        .describe_instance_types()
        .instance_types(instance_type.clone())
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:DescribeInstanceTypes", e))?
        .instance_types()
        .first()
        .and_then(|t| t.memory_info())
        .and_then(|m| m.size_in_mib());
    report.memory_mib = memory_mib;
    if memory_mib.is_some_and(|m| m > MAX_MEMORY_MIB) {
        return skip(format!(
            "{} has more memory than the document can write within its hour (at most {} GiB at a gp3 volume's baseline)",
            instance_type.as_str(),
            MAX_MEMORY_MIB / 1024
        ));
    }
    let Some(size) = memory_mib.and_then(volume_gib) else {
        return skip(format!(
            "the memory of {} is unknown",
            instance_type.as_str()
        ));
    };
    let tag_spec = TagSpecification::builder()
        .resource_type(ResourceType::Volume)
        .tags(tags::new(MEMORY_IMAGE_TAG, &report.approval_id))
        .tags(tags::new(tags::INSTANCE_ID, &target.instance_id))
        .tags(tags::new(
            "Name",
            format!(
                "memory image of {} ({})",
                target.instance_id, report.approval_id
            ),
        ))
        .build();
    let out = ec2
        .create_volume()
        .availability_zone(zone)
        .size(size)
        .volume_type(VolumeType::Gp3)
        .encrypted(true)
        .tag_specifications(tag_spec)
        .client_token(client_token(&report.approval_id, &target.instance_id))
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:CreateVolume", e))?;
    let Some(volume_id) = out.volume_id() else {
        return Err(Error::Aws {
            action: "ec2:CreateVolume",
            code: "NoVolumeId".into(),
            message: "CreateVolume answered without a volume id".into(),
            source: "no volume id".into(),
        });
    };
    info!(volume = volume_id, size_gib = size, "memory volume created");
    report.volume_id = Some(volume_id.to_owned());
    report.volume_size_gib = Some(size);
    report.started_at = Some(now_secs());
    Ok(Step::Wait)
}

async fn attach(
    ec2: &aws_sdk_ec2::Client,
    target: &Target,
    volume_id: &str,
    report: &mut MemoryReport,
) -> Result<Step, Error> {
    let inst = instance::describe(ec2, &target.scope, &target.instance_id).await?;
    if inst.state().and_then(|s| s.name()) != Some(&InstanceStateName::Running) {
        report
            .warnings
            .push("the instance is no longer running: nothing attached".into());
        return Ok(Step::Failed);
    }
    let used: Vec<&str> = inst
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.device_name())
        .collect();
    let Some(device) = free_device(&used) else {
        report
            .warnings
            .push("no free device name from /dev/sdf to /dev/sdp: nothing attached".into());
        return Ok(Step::Failed);
    };
    ec2.attach_volume()
        .volume_id(volume_id)
        .instance_id(&target.instance_id)
        .device(&device)
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:AttachVolume", e))?;
    info!(volume = volume_id, %device, "memory volume attached");
    report.device = Some(device);
    Ok(Step::Wait)
}

async fn send_or_follow(
    imager: &Imager,
    ssm: &aws_sdk_ssm::Client,
    store: &crate::aws::evidence::EvidenceStore,
    cases: &Store,
    target: &Target,
    report: &mut MemoryReport,
    must_end: bool,
) -> Result<Step, Error> {
    let instance_id = target.instance_id.as_str();
    if report.command_id.is_none()
        && let Some(at) = report.sending_at
    {
        // A pass died while it sent: the command Systems Manager took, if any, is followed;
        // none is sent again before the claim is stale (ListCommands may lag behind).
        report.command_id = super::collect::sent_earlier(
            ssm,
            &imager.document,
            instance_id,
            &comment(&report.approval_id),
        )
        .await?;
        if report.command_id.is_none() && now_secs() - at < SEND_CLAIM_SECONDS && !must_end {
            return Ok(Step::Wait);
        }
    }
    let Some(command_id) = report.command_id.clone() else {
        if must_end {
            wind_down(report, out_of_time());
            return Ok(Step::Wait);
        }
        return send(imager, ssm, store, cases, target, report).await;
    };
    let invocation = match ssm
        .get_command_invocation()
        .command_id(&command_id)
        .instance_id(instance_id)
        .send()
        .await
        .map_err(|e| Error::from_sdk("ssm:GetCommandInvocation", e))
    {
        Ok(out) => out,
        Err(err) if err.aws_code() == Some("InvocationDoesNotExist") => return Ok(Step::Wait),
        Err(err) => return Err(err),
    };
    use aws_sdk_ssm::types::CommandInvocationStatus as S;
    let status = invocation.status().cloned();
    if matches!(
        status,
        None | Some(S::Pending | S::InProgress | S::Delayed | S::Cancelling)
    ) {
        if must_end {
            wind_down(report, out_of_time());
        }
        return Ok(Step::Wait);
    }
    let stdout = invocation.standard_output_content().unwrap_or_default();
    report.command_status = status.map(|s| s.as_str().to_owned());
    report.command_status_details = invocation.status_details().map(str::to_owned);
    report.image = parse_output(stdout);
    report.wrote = started_writing(stdout);
    if report.image.is_none() {
        report
            .warnings
            .push("the command printed no image length and hash".into());
    }
    // Detached at the next pass (the record of the command's end first).
    Ok(Step::Wait)
}

async fn send(
    imager: &Imager,
    ssm: &aws_sdk_ssm::Client,
    store: &crate::aws::evidence::EvidenceStore,
    cases: &Store,
    target: &Target,
    report: &mut MemoryReport,
) -> Result<Step, Error> {
    let (Some(arch), Some(volume_id), Some(device), Some(size)) = (
        report.arch,
        report.volume_id.clone(),
        report.device.clone(),
        report.volume_size_gib,
    ) else {
        wind_down(
            report,
            "the record lacks the volume's architecture, device or size".into(),
        );
        return Ok(Step::Wait);
    };
    let Some(tool_sha256) = imager.sha256(arch) else {
        wind_down(report, format!("no AVML binary for {arch:?} was deployed"));
        return Ok(Step::Wait);
    };
    let url = store
        .presign_get(&arch.tool_key(tool_sha256), super::collect::URL_SECONDS)
        .await?;
    if !super::collect::is_upload_url(&url) && !store.is_local() {
        return Err(Error::Misconfigured(format!(
            "the presigned URL of the tool ({} characters) does not fit the document's pattern",
            url.len()
        )));
    }
    // Claimed in the record before it is sent: a pass that dies after Systems Manager took the
    // command is followed by a look for it, never by a second one.
    report.sending_at = Some(now_secs());
    cases
        .memory_progress(&report.approval_id, &target.instance_id, report)
        .await?;
    let bytes = i64::from(size) * 1024 * 1024 * 1024;
    let answer = ssm
        .send_command()
        .document_name(&imager.document)
        .instance_ids(&target.instance_id)
        .parameters("CaseId", vec![report.approval_id.clone()])
        .parameters("VolumeId", vec![volume_id])
        .parameters("VolumeBytes", vec![bytes.to_string()])
        .parameters("Device", vec![device])
        .parameters("ToolUrl", vec![url])
        .parameters("ToolSha256", vec![tool_sha256.to_owned()])
        .comment(comment(&report.approval_id))
        .timeout_seconds(super::collect::DELIVERY_SECONDS)
        // No idempotency token: never sent twice by the SDK (a lost answer is looked for with
        // ListCommands at the next pass, as `sending_at` says).
        .customize()
        .config_override(
            aws_sdk_ssm::config::Builder::default()
                .retry_config(aws_config::retry::RetryConfig::disabled()),
        )
        .send()
        .await
        .map_err(|e| Error::from_sdk("ssm:SendCommand", e));
    match answer {
        Ok(out) => {
            report.command_id = out
                .command()
                .and_then(|c| c.command_id())
                .map(str::to_owned);
            info!(command = ?report.command_id, "memory image command sent");
            Ok(Step::Wait)
        }
        Err(err) if err.aws_code() == Some("InvalidInstanceId") => {
            // Not managed, or no longer online (contained meanwhile): nothing was taken, the
            // volume comes off.
            report.sending_at = None;
            wind_down(
                report,
                format!(
                    "Systems Manager does not manage the instance, or it is not online ({err}): no memory image"
                ),
            );
            Ok(Step::Wait)
        }
        Err(err) => {
            if err.aws_code().is_some_and(|c| {
                c.starts_with("Invalid")
                    || c == "AccessDeniedException"
                    || c == "UnsupportedPlatformType"
                    || c == "ThrottlingException"
            }) {
                // Refused: nothing was taken, another pass may send.
                report.sending_at = None;
            }
            Err(err)
        }
    }
}

/// The output's line that the script prints just before AVML starts writing to the device.
fn started_writing(stdout: &str) -> bool {
    stdout.lines().any(|l| l.starts_with("started: "))
}

async fn snapshot(
    ec2: &aws_sdk_ec2::Client,
    volume_id: &str,
    report: &mut MemoryReport,
) -> Result<Step, Error> {
    // A pass that died after CreateSnapshot left one: found by the snapshot's own tag (never one
    // the containment's CreateSnapshots made of the volume while it was attached, which carries
    // the volume's tags), never taken twice.
    let earlier = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            Filter::builder()
                .name("volume-id")
                .values(volume_id)
                .build(),
        )
        .filters(
            Filter::builder()
                .name(format!("tag:{MEMORY_SNAPSHOT_TAG}"))
                .values(&report.approval_id)
                .build(),
        )
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:DescribeSnapshots", e))?;
    if let Some(id) = earlier.snapshots().iter().find_map(|s| s.snapshot_id()) {
        report.snapshot_id = Some(id.to_owned());
        return Ok(Step::Snapshotted { fresh: false });
    }
    let tag_spec = TagSpecification::builder()
        .resource_type(ResourceType::Snapshot)
        .tags(tags::new(MEMORY_SNAPSHOT_TAG, &report.approval_id))
        .tags(tags::new(tags::INSTANCE_ID, &report.instance_id))
        .tags(tags::new(tags::VOLUME_ID, volume_id))
        .build();
    let out = ec2
        .create_snapshot()
        .volume_id(volume_id)
        .description(tags::value(&format!(
            "ec2-quarantine memory image of {} for {}",
            report.instance_id, report.approval_id
        )))
        .tag_specifications(tag_spec)
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:CreateSnapshot", e))?;
    report.snapshot_id = out.snapshot_id().map(str::to_owned);
    info!(snapshot = ?report.snapshot_id, "memory volume snapshotted");
    Ok(Step::Snapshotted { fresh: true })
}

fn locks_on(clients: &Clients) -> bool {
    clients.settings.snapshot_lock.mode != crate::domain::settings::SnapshotLockMode::None
}

/// Locks the snapshot as the disks' snapshots are locked (`fresh`: just created; otherwise the
/// lock EC2 holds is read first, and only a missing one set).
async fn lock(clients: &Clients, report: &mut MemoryReport, fresh: bool) {
    let Some(id) = report.snapshot_id.clone() else {
        return;
    };
    report.lock_attempts += 1;
    let set = vec![ForensicSnapshot {
        snapshot_id: id,
        volume_id: report.volume_id.clone().unwrap_or_default(),
        device: report.device.clone(),
        lock: None,
        volume_size_gib: report.volume_size_gib,
        started_at: None,
    }];
    let mut warnings = Vec::new();
    let locked = crate::steps::snapshot::lock_set(clients, set, fresh, &mut warnings).await;
    report.lock = locked.into_iter().next().and_then(|s| s.lock);
    if report.lock.is_none() {
        for w in warnings {
            note(report, w);
        }
    }
}

/// The image's end: `Done` when the command succeeded, AVML exited 0 and the snapshot exists,
/// `Failed` otherwise (the snapshot stands all the same).
fn end(mut report: MemoryReport, locks_on: bool) -> Outcome<MemoryReport> {
    if locks_on && report.lock.is_none() {
        note(
            &mut report,
            "the snapshot is not locked: check it with aws ec2 describe-locked-snapshots".into(),
        );
    }
    let imaged = report.command_status.as_deref() == Some("Success")
        && report
            .image
            .as_ref()
            .is_some_and(|i| i.bytes > 0 && i.avml_exit == Some(0));
    if imaged && report.snapshot_id.is_some() {
        Outcome::Done(report)
    } else {
        Outcome::Failed(report)
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn memory_sort_key(instance_id: &str) -> String {
    format!("memory#{instance_id}")
}

/// The approval's record of an instance's memory image.
pub enum Memory {
    Progress(MemoryReport),
    Over(Outcome<MemoryReport>),
}

impl Store {
    /// The memory image of `instance_id` for `approval_id`, if one was started.
    pub async fn memory(
        &self,
        approval_id: &str,
        instance_id: &str,
    ) -> Result<Option<Memory>, Error> {
        let out = self
            .db()
            .get_item()
            .table_name(self.table())
            .key("pk", s(format!("approval#{approval_id}")))
            .key("sk", s(memory_sort_key(instance_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:GetItem", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        if let Some(over) = text("report").and_then(|r| serde_json::from_str(&r).ok()) {
            return Ok(Some(Memory::Over(over)));
        }
        Ok(text("progress")
            .and_then(|r| serde_json::from_str(&r).ok())
            .map(Memory::Progress))
    }

    /// Records how far the image got (passes run one after the other: the last one wins).
    pub async fn memory_progress(
        &self,
        approval_id: &str,
        instance_id: &str,
        report: &MemoryReport,
    ) -> Result<(), Error> {
        self.write_memory(approval_id, instance_id, "progress", report, false)
            .await
    }

    /// Records the image's end, once.
    pub async fn memory_over(
        &self,
        approval_id: &str,
        instance_id: &str,
        report: &Outcome<MemoryReport>,
    ) -> Result<(), Error> {
        self.write_memory(approval_id, instance_id, "report", report, true)
            .await
    }

    /// Sets `attribute` to `value` (JSON) on the image's item, unless its end is recorded (that
    /// item never changes again); `ended`: with the time it ended.
    async fn write_memory(
        &self,
        approval_id: &str,
        instance_id: &str,
        attribute: &str,
        value: &impl Serialize,
        ended: bool,
    ) -> Result<(), Error> {
        let json = serde_json::to_string(value)
            .map_err(|e| Error::InvalidEvent(format!("memory report: {e}")))?;
        let mut update = self
            .db()
            .update_item()
            .table_name(self.table())
            .key("pk", s(format!("approval#{approval_id}")))
            .key("sk", s(memory_sort_key(instance_id)))
            .update_expression(if ended {
                "SET #attr = :v, instance_id = :i, ended_at = :now"
            } else {
                "SET #attr = :v, instance_id = :i"
            })
            .condition_expression("attribute_not_exists(#report)")
            .expression_attribute_names("#attr", attribute)
            .expression_attribute_names("#report", "report")
            .expression_attribute_values(":v", s(json))
            .expression_attribute_values(":i", s(instance_id));
        if ended {
            update = update.expression_attribute_values(":now", s(crate::now_rfc3339()));
        }
        let answer = update.send().await;
        written("dynamodb:UpdateItem", answer).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_volume_holds_the_memory_and_a_margin() {
        assert_eq!(volume_gib(1024), Some(3));
        assert_eq!(volume_gib(512), Some(2));
        assert_eq!(volume_gib(16 * 1024), Some(18));
        assert_eq!(volume_gib(0), None);
        assert_eq!(volume_gib(-1), None);
        // u-24tb1: beyond one gp3 volume.
        assert_eq!(volume_gib(24 * 1024 * 1024), None);
    }

    #[test]
    fn the_device_is_one_the_instance_does_not_use() {
        assert_eq!(free_device(&["/dev/xvda"]).as_deref(), Some("/dev/sdf"));
        assert_eq!(
            free_device(&["/dev/sda1", "/dev/sdf", "xvdg"]).as_deref(),
            Some("/dev/sdh")
        );
        let all: Vec<String> = (b'f'..=b'p')
            .map(|l| format!("/dev/sd{}", char::from(l)))
            .collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(free_device(&all), None);
    }

    #[test]
    fn the_output_gives_checked_figures_only() {
        let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let image = parse_output(&format!(
            "== memory image\ndevice: /dev/nvme1n1\nimage_bytes: 4096\nimage_sha256: {sha}\navml_exit: 0\n"
        ))
        .unwrap();
        assert_eq!(image.bytes, 4096);
        assert_eq!(image.sha256, sha);
        assert_eq!(image.device.as_deref(), Some("/dev/nvme1n1"));
        assert_eq!(image.avml_exit, Some(0));
        assert_eq!(parse_output("image_bytes: 4096\nimage_sha256: ABC\n"), None);
        assert_eq!(
            parse_output(&format!(
                "image_bytes: -1\nimage_sha256: {sha}\ndevice: /dev/../etc\n"
            )),
            None
        );
        let hostile = parse_output(&format!(
            "image_bytes: 1\nimage_sha256: {sha}\ndevice: /dev/../etc/passwd\n"
        ))
        .unwrap();
        assert_eq!(hostile.device, None);
    }

    #[test]
    fn the_tool_names_and_hashes_are_checked() {
        assert_eq!(
            Arch::Arm64.tool_key("ab"),
            "tools/avml-0.21.0-aarch64-unknown-linux-musl-ab"
        );
        assert!(Imager::new("MemoryImageCollector", Some(&"a".repeat(64)), None).is_ok());
        assert!(Imager::new("MemoryImageCollector", Some("ABC"), None).is_err());
        assert!(Imager::new("x", None, None).is_err());
        assert!(client_token("apr-0123456789abcdef", "i-0123456789abcdef0").len() <= 64);
    }
}
