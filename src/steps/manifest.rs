//! The case's evidence manifest: what the snapshot step preserved, for whom and why, written once
//! to the object-locked evidence bucket ([`crate::aws::evidence`]) with its SHA-256.
//!
//! The manifest lists the case, the finding the step ran for (id, type, severity), the instance
//! and where it runs, and each forensic snapshot: its id, the volume it copies and the device it
//! was attached as, the volume's size, and when EBS started the snapshot. Those facts never change
//! once the snapshots exist, and the manifest holds nothing else (no time of writing: S3 keeps
//! that; no lock: a lock's state changes, and EC2 keeps its record), so a retried step writes the
//! same bytes under the same name and S3 keeps one object. A manifest is written only when every
//! fact is known: a case to file it under, and each snapshot's size and start time (a run that
//! lacks one writes none and says so), so that no two manifests of one set disagree. Its name is
//! `cases/<case>/manifest-<sha256>.json`: anyone holding the name can check the bytes, and S3
//! checked them on arrival.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::aws::evidence::{EvidenceStore, Stored};
use crate::domain::finding::Target;
use crate::steps::snapshot::ForensicSnapshot;

/// The manifest's format name; a reader checks it before reading the rest.
pub const FORMAT: &str = "ec2-quarantine/evidence-manifest/1";

/// Where a manifest was written, as the case and the notification show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub bucket: String,
    pub key: String,
    /// The SHA-256 of the object's bytes, in hex (S3 keeps it too, in base64).
    pub sha256: String,
    /// The object's version (read it with `--version-id`: a later version or a delete marker
    /// on the key never changes this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct Manifest<'a> {
    format: &'static str,
    case_id: &'a str,
    case_opened_at: Option<&'a str>,
    finding: Finding<'a>,
    partition: &'a str,
    account_id: &'a str,
    region: &'a str,
    instance_id: &'a str,
    snapshots: Vec<Snapshot<'a>>,
}

#[derive(Debug, Serialize)]
struct Finding<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    finding_type: &'a str,
    severity: f64,
}

#[derive(Debug, Serialize)]
struct Snapshot<'a> {
    snapshot_id: &'a str,
    volume_id: &'a str,
    device: Option<&'a str>,
    volume_size_gib: i32,
    started_at: &'a str,
}

/// The manifest's bytes (pretty JSON, the snapshots in id order) and their SHA-256; what is
/// missing to write it (a snapshot's size or start time) instead.
pub fn render(
    target: &Target,
    case: &crate::case::CaseHandle,
    snapshots: &[ForensicSnapshot],
) -> Result<(Vec<u8>, [u8; 32]), String> {
    let mut listed = Vec::with_capacity(snapshots.len());
    for s in snapshots {
        let (Some(volume_size_gib), Some(started_at)) =
            (s.volume_size_gib, s.started_at.as_deref())
        else {
            return Err(format!(
                "the size or start time of {} is not known",
                s.snapshot_id
            ));
        };
        listed.push(Snapshot {
            snapshot_id: &s.snapshot_id,
            volume_id: &s.volume_id,
            device: s.device.as_deref(),
            volume_size_gib,
            started_at,
        });
    }
    listed.sort_by(|a, b| a.snapshot_id.cmp(b.snapshot_id));
    let manifest = Manifest {
        format: FORMAT,
        case_id: &case.case_id,
        case_opened_at: Some(case.opened_at.as_str()).filter(|t| !t.is_empty()),
        finding: Finding {
            id: &target.finding_id,
            finding_type: &target.finding_type,
            severity: target.severity,
        },
        partition: &target.scope.partition,
        account_id: &target.scope.account_id,
        region: &target.scope.region,
        instance_id: &target.instance_id,
        snapshots: listed,
    };
    // Serializing plain strings and numbers cannot fail; an empty body would be refused below.
    let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    bytes.push(b'\n');
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    Ok((bytes, digest))
}

/// Writes the manifest of `snapshots` once to `store`. Never fails the step: what went wrong is
/// returned as a warning, and the snapshots stand.
pub async fn write(
    store: &EvidenceStore,
    target: &Target,
    case: Option<&crate::case::CaseHandle>,
    snapshots: &[ForensicSnapshot],
) -> Result<ManifestRecord, String> {
    let Some(case) = case else {
        return Err("no evidence manifest was written: the case could not be read (the snapshots stand, tagged with the case)".into());
    };
    let (bytes, digest) = render(target, case, snapshots).map_err(|missing| {
        format!("no evidence manifest was written: {missing} (the snapshots stand and the case lists them)")
    })?;
    let sha256 = hex::encode(digest);
    let key = format!("cases/{}/manifest-{sha256}.json", case.case_id);
    let record = |version_id| ManifestRecord {
        bucket: store.bucket().to_owned(),
        key: key.clone(),
        sha256: sha256.clone(),
        version_id,
    };
    match store.put_once(&key, bytes, &digest).await {
        Ok(Stored::New { version_id }) => {
            info!(bucket = store.bucket(), %key, "evidence manifest written");
            Ok(record(version_id))
        }
        Ok(Stored::Existing { version_id }) => {
            info!(bucket = store.bucket(), %key, "evidence manifest already there");
            Ok(record(version_id))
        }
        Ok(Stored::Other { found }) => {
            warn!(%key, ?found, "another object holds the manifest's name");
            Err(format!(
                "the evidence manifest was not written: s3://{}/{key} holds other content (checksum {}); the snapshots stand and the case lists them",
                store.bucket(),
                found.as_deref().unwrap_or("none")
            ))
        }
        Err(err) => {
            warn!(error = %err, %key, "evidence manifest not written");
            Err(format!(
                "the evidence manifest was not written to s3://{}/{key} ({err}); the snapshots stand and the case lists them",
                store.bucket()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::operation::head_object::HeadObjectOutput;
    use aws_sdk_s3::operation::put_object::{PutObjectError, PutObjectOutput};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use base64::Engine as _;

    use super::*;
    use crate::case::CaseHandle;
    use crate::steps::snapshot::SnapshotLockState;
    use crate::steps::testing;

    fn case() -> CaseHandle {
        CaseHandle {
            case_id: "i-0abc-20261202T100000Z".into(),
            claim: "claim".into(),
            opened_at: "2026-12-02T10:00:00Z".into(),
        }
    }

    fn set() -> Vec<ForensicSnapshot> {
        ["snap-0b vol-0b /dev/sdf", "snap-0a vol-0a /dev/xvda"]
            .iter()
            .map(|entry| {
                let mut parts = entry.split(' ');
                ForensicSnapshot {
                    snapshot_id: parts.next().unwrap().to_owned(),
                    volume_id: parts.next().unwrap().to_owned(),
                    device: parts.next().map(str::to_owned),
                    lock: Some(SnapshotLockState {
                        state: "compliance-cooloff".into(),
                        expires_on: None,
                        days: Some(90),
                    }),
                    volume_size_gib: Some(8),
                    started_at: Some("2026-12-02T10:00:01Z".into()),
                }
            })
            .collect()
    }

    fn store(rules: &[&aws_smithy_mocks::Rule]) -> EvidenceStore {
        EvidenceStore::with_client(
            mock_client!(aws_sdk_s3, RuleMode::MatchAny, rules),
            "evidence-bucket",
        )
    }

    fn s3_error(code: &str) -> PutObjectError {
        PutObjectError::generic(
            aws_smithy_types::error::ErrorMetadata::builder()
                .code(code)
                .build(),
        )
    }

    fn checksum() -> String {
        let (_, digest) = render(&testing::target(), &case(), &set()).unwrap();
        base64::engine::general_purpose::STANDARD.encode(digest)
    }

    /// The same facts make the same bytes whatever order the set came in and whatever its
    /// locks say now (a lock's state changes; EC2 keeps its record), so that a retry writes what
    /// the first run wrote.
    #[test]
    fn the_content_is_fixed_by_the_facts() {
        let target = testing::target();
        let (bytes, digest) = render(&target, &case(), &set()).unwrap();
        let mut later = set();
        later.reverse();
        for s in &mut later {
            s.lock = None;
        }
        assert_eq!(render(&target, &case(), &later).unwrap().0, bytes);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&bytes)));
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["format"], FORMAT);
        assert_eq!(doc["case_id"], "i-0abc-20261202T100000Z");
        assert_eq!(doc["snapshots"][0]["snapshot_id"], "snap-0a");
        assert_eq!(doc["snapshots"][0]["volume_size_gib"], 8);
        assert_eq!(doc["finding"]["id"], target.finding_id.as_str());
    }

    /// A fact missing (the describe of a recorded set failed), or no case to file it under:
    /// no manifest, and a warning that says why; S3 is not called.
    #[tokio::test]
    async fn a_manifest_with_a_fact_missing_is_not_written() {
        let put = mock!(aws_sdk_s3::Client::put_object)
            .then_output(|| PutObjectOutput::builder().build());
        let store = store(&[&put]);
        let mut unknown = set();
        unknown[1].started_at = None;
        let warning = write(&store, &testing::target(), Some(&case()), &unknown)
            .await
            .unwrap_err();
        assert!(
            warning.contains("start time of snap-0a") && warning.contains("snapshots stand"),
            "{warning}"
        );
        let warning = write(&store, &testing::target(), None, &set())
            .await
            .unwrap_err();
        assert!(warning.contains("the case could not be read"), "{warning}");
        assert_eq!(put.num_calls(), 0);
    }

    /// The write carries If-None-Match: * and the body's SHA-256, under a name holding it.
    #[tokio::test]
    async fn the_manifest_is_written_once_with_its_checksum() {
        let target = testing::target();
        let (_, digest) = render(&target, &case(), &set()).unwrap();
        let key = format!(
            "cases/{}/manifest-{}.json",
            case().case_id,
            hex::encode(digest)
        );
        let (wanted, sum) = (key.clone(), checksum());
        let put = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(move |r| {
                r.bucket() == Some("evidence-bucket")
                    && r.key() == Some(wanted.as_str())
                    && r.if_none_match() == Some("*")
                    && r.checksum_sha256() == Some(sum.as_str())
            })
            .then_output(|| PutObjectOutput::builder().version_id("v1").build());
        let record = write(&store(&[&put]), &target, Some(&case()), &set())
            .await
            .unwrap();
        assert_eq!(put.num_calls(), 1);
        assert_eq!(record.key, key);
        assert_eq!(record.sha256, hex::encode(digest));
        assert_eq!(record.version_id.as_deref(), Some("v1"));
    }

    /// A manifest already there (S3's 412 to If-None-Match; a write conflicting with another is
    /// asked once more first) is taken for this one only when the checksum S3 kept is this
    /// content's; other content under the name is a warning.
    #[tokio::test]
    async fn a_manifest_already_there_is_checked() {
        for (kept, same) in [(checksum(), true), ("b3RoZXI=".to_owned(), false)] {
            let conflict = mock!(aws_sdk_s3::Client::put_object)
                .then_error(|| s3_error("ConditionalRequestConflict"));
            let there =
                mock!(aws_sdk_s3::Client::put_object).then_error(|| s3_error("PreconditionFailed"));
            let head = mock!(aws_sdk_s3::Client::head_object)
                .match_requests(|r| r.checksum_mode().is_some())
                .then_output(move || {
                    HeadObjectOutput::builder()
                        .checksum_sha256(kept.clone())
                        .version_id("v1")
                        .build()
                });
            let s3 = mock_client!(
                aws_sdk_s3,
                RuleMode::Sequential,
                &[&conflict, &there, &head]
            );
            let store = EvidenceStore::with_client(s3, "evidence-bucket");
            let written = write(&store, &testing::target(), Some(&case()), &set()).await;
            assert_eq!(
                (conflict.num_calls(), there.num_calls(), head.num_calls()),
                (1, 1, 1)
            );
            if same {
                assert_eq!(written.unwrap().version_id.as_deref(), Some("v1"));
            } else {
                let warning = written.unwrap_err();
                assert!(warning.contains("holds other content"), "{warning}");
            }
        }
    }

    /// A refused write, or a bucket name S3 would refuse, is a warning that names where the
    /// manifest should be; nothing fails.
    #[tokio::test]
    async fn a_refused_write_is_a_warning() {
        let denied = mock!(aws_sdk_s3::Client::put_object).then_error(|| s3_error("AccessDenied"));
        let warning = write(
            &store(&[&denied]),
            &testing::target(),
            Some(&case()),
            &set(),
        )
        .await
        .unwrap_err();
        assert!(
            warning.contains("was not written to s3://evidence-bucket/cases/")
                && warning.contains("AccessDenied"),
            "{warning}"
        );
        let bad = EvidenceStore::with_client(
            mock_client!(aws_sdk_s3, RuleMode::MatchAny, &[&denied]),
            "Not_A_Bucket",
        );
        let warning = write(&bad, &testing::target(), Some(&case()), &set())
            .await
            .unwrap_err();
        assert!(warning.contains("is not an S3 bucket name"), "{warning}");
        assert_eq!(denied.num_calls(), 1);
    }
}
