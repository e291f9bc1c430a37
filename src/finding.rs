//! The GuardDuty finding as EventBridge delivers it, and the containment target it names.
//!
//! Only the fields this tool reads are modelled; every one is optional because GuardDuty omits
//! what does not apply, and unknown fields are ignored. Values that end up in AWS requests
//! (instance id, account, region) are validated here, once, before any call is made.

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::Error;

/// The EventBridge envelope around a GuardDuty finding. Only what the tool reads is typed: the
/// envelope's `time`, `id`, `version` and `resources` are never used, so they are kept as they
/// came, and a value EventBridge or an export writes there in another shape (a redacted time)
/// never makes the finding unusable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindingEvent {
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    pub source: String,
    #[serde(default, deserialize_with = "lenient_string")]
    pub account: Option<String>,
    #[serde(default, deserialize_with = "lenient_string")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<serde_json::Value>,
    pub detail: Finding,
    /// The case triage opened, when the workflow passes triage's result on (`$.triage.case`):
    /// the steps record in it. Any other shape reads as absent (a step then opens or joins
    /// the instance's case itself).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "triage_case"
    )]
    pub triage: Option<TriageCase>,
}

/// The part of triage's result the steps read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriageCase {
    pub case: crate::case::CaseHandle,
}

fn triage_case<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TriageCase>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value
        .and_then(|v| serde_json::from_value::<TriageCase>(v).ok())
        .filter(|t| {
            crate::case::is_case_id(&t.case.case_id)
                && !t.case.claim.is_empty()
                && t.case.claim.len() <= 64
                && t.case.claim.bytes().all(|b| b.is_ascii_alphanumeric())
                && t.case.opened_at.len() <= 32
                && t.case
                    .opened_at
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"-:TZ".contains(&b))
        }))
}

pub const GUARDDUTY_SOURCE: &str = "aws.guardduty";
pub const GUARDDUTY_DETAIL_TYPE: &str = "GuardDuty Finding";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    pub id: Option<String>,
    pub account_id: Option<String>,
    pub region: Option<String>,
    pub partition: Option<String>,
    #[serde(rename = "type")]
    pub finding_type: Option<String>,
    /// A number; a number written as a string (as some exports do) is read too.
    #[serde(default, deserialize_with = "lenient_number")]
    pub severity: Option<f64>,
    /// Only shown: any other shape reads as unknown.
    #[serde(default, deserialize_with = "shown_string")]
    pub title: Option<String>,
    #[serde(default, deserialize_with = "shown_string")]
    pub description: Option<String>,
    #[serde(default, deserialize_with = "shown_string")]
    pub updated_at: Option<String>,
    pub resource: Option<Resource>,
    pub service: Option<Service>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub resource_type: Option<String>,
    pub instance_details: Option<InstanceDetails>,
    pub access_key_details: Option<AccessKeyDetails>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceDetails {
    pub instance_id: Option<String>,
    pub iam_instance_profile: Option<IamInstanceProfile>,
    /// The interfaces as the finding saw them; kept as JSON, so that a shape this tool does not
    /// expect there never makes the finding unusable (only their VPC ids are read, as a hint).
    #[serde(default)]
    pub network_interfaces: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IamInstanceProfile {
    pub arn: Option<String>,
    pub id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessKeyDetails {
    pub access_key_id: Option<String>,
    pub principal_id: Option<String>,
    pub user_name: Option<String>,
    pub user_type: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    #[serde(default, deserialize_with = "shown_string")]
    pub resource_role: Option<String>,
    /// `true`/`false`, or the same as a string (as exports write it).
    #[serde(default, deserialize_with = "flag")]
    pub archived: Option<bool>,
    pub additional_info: Option<AdditionalInfo>,
    #[serde(default, deserialize_with = "shown_string")]
    pub event_first_seen: Option<String>,
    #[serde(default, deserialize_with = "shown_string")]
    pub event_last_seen: Option<String>,
    #[serde(default, deserialize_with = "shown_count")]
    pub count: Option<u64>,
    /// What GuardDuty saw the resource do or undergo; kept as JSON and read leniently by
    /// [`crate::evidence`], so that an action shape this tool does not know never makes the
    /// finding unusable.
    #[serde(default)]
    pub action: Option<serde_json::Value>,
    /// Runtime Monitoring's process details (present: a process on the instance acted).
    #[serde(default)]
    pub runtime_details: Option<serde_json::Value>,
    /// Malware Protection's scan of the instance's volumes (present: malware on the instance).
    #[serde(default)]
    pub ebs_volume_scan_details: Option<serde_json::Value>,
}

/// GuardDuty marks generated sample findings either as `{"sample": true}` or, in the newer
/// shape, as a JSON document in a string: `{"value": "{\"sample\":true}", "type": "default"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdditionalInfo {
    #[serde(default, deserialize_with = "flag")]
    pub sample: Option<bool>,
    /// A JSON document in a string (the API's shape) or, once an export decoded it, an object.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

/// A flag the decision reads (archived, sample): `true`/`false`, or the same as a string in any
/// case (GuardDuty's exports write booleans as strings). Anything else is refused: a flag the
/// tool cannot read must not be guessed.
fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Bool(b)) => Ok(Some(b)),
        Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(serde_json::Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(serde::de::Error::custom(format!(
            "{} is neither true nor false",
            clip(&other.to_string())
        ))),
    }
}

/// A number the decision reads (severity): a JSON number, or a number written as a string.
fn lenient_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Number(n)) => Ok(n.as_f64()),
        Some(serde_json::Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{:?} is not a number", clip(&s)))),
        Some(other) => Err(serde::de::Error::custom(format!(
            "{} is not a number",
            clip(&other.to_string())
        ))),
    }
}

/// A string the envelope carries (account, region): a string, or absent; any other shape reads
/// as absent, and the finding's own field, validated where it is used, decides.
fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::String(s)) => Some(s),
        _ => None,
    })
}

/// A field the tool only shows: any shape other than a string reads as unknown.
fn shown_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    lenient_string(d)
}

/// A count the tool only shows: any shape other than a whole number reads as unknown.
fn shown_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        _ => None,
    })
}

impl Finding {
    /// Whether GuardDuty generated this finding as a sample (`CreateSampleFindings`). A sample
    /// flag that cannot be read is refused rather than taken as "not a sample".
    pub fn is_sample(&self) -> Result<bool, Error> {
        let Some(info) = self
            .service
            .as_ref()
            .and_then(|s| s.additional_info.as_ref())
        else {
            return Ok(false);
        };
        if info.sample == Some(true) {
            return Ok(true);
        }
        let inner = match &info.value {
            Some(serde_json::Value::String(text)) => match serde_json::from_str(text) {
                Ok(v @ serde_json::Value::Object(_)) => v,
                // Free text there says nothing of samples.
                _ => return Ok(false),
            },
            Some(v @ serde_json::Value::Object(_)) => v.clone(),
            _ => return Ok(false),
        };
        serde_json::from_value::<AdditionalInfo>(inner)
            .map(|i| i.sample == Some(true))
            .map_err(|e| Error::InvalidEvent(format!("additionalInfo.value: {e}")))
    }
}

/// Where every AWS call for a finding is made: the finding's own account and region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub account_id: String,
    pub region: String,
    pub partition: String,
}

/// The instance (and role) a finding asks us to contain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub finding_id: String,
    pub finding_type: String,
    pub severity: f64,
    pub scope: Scope,
    pub instance_id: String,
    /// The role whose credentials GuardDuty saw misused (AccessKey findings name it).
    pub role_name: Option<String>,
    /// The instance profile the finding saw on the instance (Instance findings name it).
    pub instance_profile_arn: Option<String>,
    /// The VPCs of the instance's interfaces as the finding saw them (Instance findings name
    /// them): a hint to look the quarantine groups up early, never trusted for a change.
    #[serde(default)]
    pub vpc_ids: Vec<String>,
}

impl Target {
    /// The instance's ARN, as `ec2:SourceInstanceARN` names it.
    pub fn instance_arn(&self) -> String {
        format!(
            "arn:{}:ec2:{}:{}:instance/{}",
            self.scope.partition, self.scope.region, self.scope.account_id, self.instance_id
        )
    }
}

/// A finding that is well formed but names nothing this tool can contain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip(pub String);

/// Reads a Lambda payload as a GuardDuty finding event.
pub fn parse_event(payload: serde_json::Value) -> Result<FindingEvent, Error> {
    serde_json::from_value(payload)
        .map_err(|e| Error::InvalidEvent(format!("not a GuardDuty finding event: {e}")))
}

/// Resolves the containment target of a finding event.
///
/// `Err` is an event that is not a usable GuardDuty finding at all (a named, final error);
/// `Ok(Err(skip))` is a finding that names no EC2 instance, with the reason.
pub fn resolve(event: &FindingEvent) -> Result<Result<Target, Skip>, Error> {
    if event.source != GUARDDUTY_SOURCE || event.detail_type != GUARDDUTY_DETAIL_TYPE {
        return Err(Error::InvalidEvent(format!(
            "expected source {GUARDDUTY_SOURCE:?} and detail-type {GUARDDUTY_DETAIL_TYPE:?}, got {:?} and {:?}",
            clip(&event.source),
            clip(&event.detail_type)
        )));
    }
    let finding = &event.detail;
    let finding_id = match finding.id.as_deref() {
        Some(id) if is_finding_id(id) => id.to_owned(),
        Some(id) => {
            return Err(Error::InvalidEvent(format!(
                "finding id {:?} is not a GuardDuty finding id",
                clip(id)
            )));
        }
        None => return Err(Error::InvalidEvent("the finding has no id".into())),
    };
    let account_id = finding
        .account_id
        .as_deref()
        .or(event.account.as_deref())
        .ok_or_else(|| Error::InvalidEvent("the finding names no account".into()))?;
    if !is_account_id(account_id) {
        return Err(Error::InvalidEvent(format!(
            "account {:?} is not a 12-digit AWS account id",
            clip(account_id)
        )));
    }
    let region = finding
        .region
        .as_deref()
        .or(event.region.as_deref())
        .ok_or_else(|| Error::InvalidEvent("the finding names no region".into()))?;
    if !is_region(region) {
        return Err(Error::InvalidEvent(format!(
            "region {:?} is not an AWS region name",
            clip(region)
        )));
    }
    let partition = finding.partition.as_deref().unwrap_or("aws");
    if !matches!(partition, "aws" | "aws-cn" | "aws-us-gov") {
        return Err(Error::InvalidEvent(format!(
            "partition {:?} is not supported",
            clip(partition)
        )));
    }

    if finding.is_sample()? {
        return Ok(Err(Skip(
            "this is a GuardDuty sample finding (CreateSampleFindings): nothing is contained"
                .into(),
        )));
    }
    if finding.service.as_ref().and_then(|s| s.archived) == Some(true) {
        return Ok(Err(Skip(
            "the finding is archived (suppressed or closed in GuardDuty)".into(),
        )));
    }
    let Some(resource) = finding.resource.as_ref() else {
        return Ok(Err(Skip("the finding names no resource".into())));
    };
    let resource_type = resource.resource_type.as_deref().unwrap_or("");
    let (instance_id, role_name, instance_profile_arn, vpc_ids) = match resource_type {
        "Instance" => {
            let details = resource.instance_details.as_ref();
            let Some(id) = details.and_then(|d| d.instance_id.as_deref()) else {
                return Ok(Err(Skip(
                    "the Instance finding carries no instanceDetails.instanceId".into(),
                )));
            };
            if !is_instance_id(id) {
                return Ok(Err(Skip(format!(
                    "instanceDetails.instanceId {:?} is not an EC2 instance id",
                    clip(id)
                ))));
            }
            let profile = details
                .and_then(|d| d.iam_instance_profile.as_ref())
                .and_then(|p| p.arn.clone())
                .filter(|arn| is_instance_profile_arn(arn));
            let mut vpcs: Vec<String> = details
                .and_then(|d| d.network_interfaces.as_ref())
                .and_then(|v| v.as_array())
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|i| i.get("vpcId")?.as_str())
                .filter(|v| is_vpc_id(v))
                .map(str::to_owned)
                .collect();
            vpcs.sort();
            vpcs.dedup();
            // An instance's interfaces are in one VPC, rarely a few: more is not a real finding.
            vpcs.truncate(MAX_VPC_HINTS);
            (id.to_owned(), None, profile, vpcs)
        }
        "AccessKey" => {
            let details = resource.access_key_details.as_ref();
            let principal = details
                .and_then(|d| d.principal_id.as_deref())
                .unwrap_or("");
            // An instance role session is "<role id>:<instance id>": EC2 names the session after
            // the instance it hands the credentials to.
            let session = principal.rsplit_once(':').map(|(_, s)| s).unwrap_or("");
            if !is_instance_id(session) {
                return Ok(Err(Skip(format!(
                    "the AccessKey finding's principal {:?} is not an EC2 instance role session",
                    clip(principal)
                ))));
            }
            let role = details
                .and_then(|d| d.user_name.clone())
                .filter(|r| is_role_name(r));
            (session.to_owned(), role, None, Vec::new())
        }
        "" => {
            return Ok(Err(Skip(
                "the finding's resource has no resourceType".into(),
            )));
        }
        other => {
            return Ok(Err(Skip(format!(
                "resource type {:?} names no EC2 instance to contain",
                clip(other)
            ))));
        }
    };

    Ok(Ok(Target {
        finding_id,
        finding_type: finding
            .finding_type
            .as_deref()
            .map(clip)
            .unwrap_or("unknown")
            .to_owned(),
        severity: finding.severity.filter(|s| s.is_finite()).unwrap_or(0.0),
        scope: Scope {
            account_id: account_id.to_owned(),
            region: region.to_owned(),
            partition: partition.to_owned(),
        },
        instance_id,
        role_name,
        instance_profile_arn,
        vpc_ids,
    }))
}

/// GuardDuty's severity bands.
pub fn severity_label(severity: f64) -> &'static str {
    match severity {
        s if s >= 9.0 => "Critical",
        s if s >= 7.0 => "High",
        s if s >= 4.0 => "Medium",
        s if s >= 1.0 => "Low",
        _ => "Unknown",
    }
}

/// Keeps attacker-controlled strings short in messages and logs.
pub(crate) fn clip(s: &str) -> &str {
    const MAX: usize = 128;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn is_hex_id(s: &str, prefix: &str, lengths: &[usize]) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| {
        lengths.contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

pub fn is_instance_id(s: &str) -> bool {
    is_hex_id(s, "i-", &[8, 17])
}

const MAX_VPC_HINTS: usize = 4;

fn is_vpc_id(s: &str) -> bool {
    is_hex_id(s, "vpc-", &[8, 17])
}

fn is_finding_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub(crate) fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Region names go into endpoint host names, so only the shape `xx-name-N` is accepted.
pub(crate) fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    s.len() <= 32
        && parts.len() >= 3
        && parts[0].len() == 2
        && parts[0].bytes().all(|b| b.is_ascii_lowercase())
        && parts[1..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// IAM role names: 1-64 characters of `[\w+=,.@-]`.
pub fn is_role_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
}

fn is_instance_profile_arn(s: &str) -> bool {
    s.starts_with("arn:") && s.contains(":instance-profile/") && s.len() <= 2048
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(detail: serde_json::Value) -> serde_json::Value {
        json!({
            "version": "0",
            "id": "7bf73129-1428-4cd3-a780-95db273d1602",
            "detail-type": "GuardDuty Finding",
            "source": "aws.guardduty",
            "account": "123456789012",
            "time": "2026-11-27T10:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": detail
        })
    }

    fn resolve_json(v: serde_json::Value) -> Result<Result<Target, Skip>, Error> {
        resolve(&parse_event(v)?)
    }

    #[test]
    fn access_key_finding_names_the_instance_in_the_session() {
        let t = resolve_json(event(json!({
            "id": "f1", "accountId": "111122223333", "region": "eu-west-1", "partition": "aws",
            "type": "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS",
            "severity": 8,
            "resource": {"resourceType": "AccessKey", "accessKeyDetails": {
                "principalId": "AROAEXAMPLEID:i-0123456789abcdef0", "userName": "web-role",
                "userType": "AssumedRole"}}
        })))
        .unwrap()
        .unwrap();
        assert_eq!(t.instance_id, "i-0123456789abcdef0");
        assert_eq!(t.role_name.as_deref(), Some("web-role"));
        assert_eq!(t.scope.account_id, "111122223333");
        assert_eq!(t.scope.region, "eu-west-1");
        assert_eq!(t.severity, 8.0);
    }

    #[test]
    fn instance_finding_names_instance_and_profile() {
        let t = resolve_json(event(json!({
            "id": "f2", "type": "Backdoor:EC2/C&CActivity.B", "severity": 5.0,
            "resource": {"resourceType": "Instance", "instanceDetails": {
                "instanceId": "i-99999999",
                "iamInstanceProfile": {"arn": "arn:aws:iam::123456789012:instance-profile/web", "id": "AIPA"}}}
        })))
        .unwrap()
        .unwrap();
        assert_eq!(t.instance_id, "i-99999999");
        assert_eq!(t.role_name, None);
        assert_eq!(
            t.instance_profile_arn.as_deref(),
            Some("arn:aws:iam::123456789012:instance-profile/web")
        );
        // account and region fall back to the envelope
        assert_eq!(t.scope.account_id, "123456789012");
        assert_eq!(t.scope.region, "us-east-1");
    }

    #[test]
    fn instance_finding_names_its_vpcs_as_a_hint() {
        let t = resolve_json(event(json!({
            "id": "f3", "type": "Backdoor:EC2/C&CActivity.B", "severity": 5.0,
            "resource": {"resourceType": "Instance", "instanceDetails": {
                "instanceId": "i-99999999",
                "networkInterfaces": [
                    {"vpcId": "vpc-0123456789abcdef0"},
                    {"vpcId": "vpc-0123456789abcdef0"},
                    {"vpcId": "vpc-11111111"},
                    {"vpcId": "vpc-<script>"},
                    {"vpcId": 7},
                    {}
                ]}}
        })));
        // a malformed entry is not a malformed finding: the hint is optional
        let t = t.unwrap().unwrap();
        assert_eq!(t.vpc_ids, ["vpc-0123456789abcdef0", "vpc-11111111"]);
        let t = resolve_json(event(json!({
            "id": "f4", "type": "Backdoor:EC2/C&CActivity.B", "severity": 5.0,
            "resource": {"resourceType": "Instance", "instanceDetails": {
                "instanceId": "i-99999999", "networkInterfaces": "not a list"}}
        })))
        .unwrap()
        .unwrap();
        assert!(t.vpc_ids.is_empty());
    }

    #[test]
    fn findings_without_an_instance_are_skipped_with_a_reason() {
        let cases = [
            (json!({"id": "f"}), "names no resource"),
            (json!({"id": "f", "resource": null}), "names no resource"),
            (json!({"id": "f", "resource": {}}), "no resourceType"),
            (
                json!({"id": "f", "resource": {"resourceType": "S3Bucket"}}),
                "\"S3Bucket\" names no EC2 instance",
            ),
            (
                json!({"id": "f", "resource": {"resourceType": "EKSCluster"}}),
                "\"EKSCluster\"",
            ),
            (
                json!({"id": "f", "resource": {"resourceType": "Instance"}}),
                "no instanceDetails.instanceId",
            ),
            (
                json!({"id": "f", "resource": {"resourceType": "Instance", "instanceDetails": {"instanceId": "i-zz"}}}),
                "is not an EC2 instance id",
            ),
            (
                json!({"id": "f", "resource": {"resourceType": "AccessKey", "accessKeyDetails": {"principalId": "AIDAUSER", "userName": "alice", "userType": "IAMUser"}}}),
                "not an EC2 instance role session",
            ),
            (
                json!({"id": "f", "resource": {"resourceType": "AccessKey", "accessKeyDetails": {"principalId": "AROA:botocore-session-1"}}}),
                "not an EC2 instance role session",
            ),
            (
                json!({"id": "f", "resource": {"resourceType": "AccessKey"}}),
                "not an EC2 instance role session",
            ),
        ];
        for (detail, want) in cases {
            let got = resolve_json(event(detail.clone())).unwrap();
            match got {
                Err(Skip(reason)) => assert!(reason.contains(want), "{detail}: {reason}"),
                Ok(t) => panic!("{detail} resolved to {t:?}"),
            }
        }
    }

    #[test]
    fn events_that_are_not_usable_findings_are_named_errors() {
        let cases = [
            json!({}),
            json!({"detail-type": "GuardDuty Finding", "source": "aws.guardduty"}),
            json!({"detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2", "detail": {}}),
            event(json!({})),
            event(json!({"id": 17})),
            event(json!({"id": "f", "severity": "high"})),
            event(json!({"id": "f", "accountId": "12345"})),
            event(json!({"id": "f", "region": "us-east-1.evil.example"})),
            event(json!({"id": "f", "partition": "aws-iso"})),
            event(json!({"id": "has space"})),
            event(json!({"id": "f", "resource": {"resourceType": 3}})),
        ];
        for case in cases {
            match resolve_json(case.clone()) {
                Err(e) => assert_eq!(e.name().as_str(), "InvalidEvent", "{case}"),
                Ok(r) => panic!("{case} gave {r:?}"),
            }
        }
    }

    #[test]
    fn null_fields_read_as_absent() {
        let t = resolve_json(event(json!({
            "id": "f", "type": null, "severity": null, "service": null,
            "resource": {"resourceType": "Instance", "accessKeyDetails": null,
                "instanceDetails": {"instanceId": "i-0123456789abcdef0", "iamInstanceProfile": null}}
        })))
        .unwrap()
        .unwrap();
        assert_eq!(t.finding_type, "unknown");
        assert_eq!(t.severity, 0.0);
    }

    #[test]
    fn sample_marker_is_read_in_both_shapes() {
        let old: Finding =
            serde_json::from_value(json!({"service": {"additionalInfo": {"sample": true}}}))
                .unwrap();
        let new: Finding = serde_json::from_value(
            json!({"service": {"additionalInfo": {"value": "{\"sample\":true}", "type": "default"}}}),
        )
        .unwrap();
        let text: Finding =
            serde_json::from_value(json!({"service": {"additionalInfo": {"sample": "true"}}}))
                .unwrap();
        let real: Finding =
            serde_json::from_value(json!({"service": {"additionalInfo": {"value": "{}"}}}))
                .unwrap();
        let decoded: Finding = serde_json::from_value(
            json!({"service": {"additionalInfo": {"value": {"sample": true}, "type": "default"}}}),
        )
        .unwrap();
        for f in [&old, &new, &text, &decoded] {
            assert!(f.is_sample().unwrap(), "{f:?}");
        }
        assert!(!real.is_sample().unwrap());
        // A sample flag that cannot be read is refused, never taken as "not a sample".
        let garbled: Finding = serde_json::from_value(
            json!({"service": {"additionalInfo": {"value": "{\"sample\":\"yes\"}"}}}),
        )
        .unwrap();
        assert!(garbled.is_sample().is_err());
    }

    #[test]
    fn sample_and_archived_findings_are_not_acted_on() {
        let instance =
            json!({"resourceType": "Instance", "instanceDetails": {"instanceId": "i-99999999"}});
        let sample = resolve_json(event(json!({"id": "f", "resource": instance.clone(),
            "service": {"additionalInfo": {"value": "{\"sample\":true}", "type": "default"}}})))
        .unwrap();
        assert!(matches!(sample, Err(Skip(r)) if r.contains("sample finding")));
        let archived = resolve_json(event(
            json!({"id": "f", "resource": instance, "service": {"archived": true}}),
        ))
        .unwrap();
        assert!(matches!(archived, Err(Skip(r)) if r.contains("archived")));
    }

    #[test]
    fn severity_bands() {
        assert_eq!(severity_label(2.0), "Low");
        assert_eq!(severity_label(5.0), "Medium");
        assert_eq!(severity_label(8.0), "High");
        assert_eq!(severity_label(9.5), "Critical");
    }

    #[test]
    fn clip_never_splits_a_character() {
        let long = "é".repeat(200);
        let c = clip(&long);
        assert!(c.len() <= 128 && c.chars().all(|ch| ch == 'é'));
    }

    #[test]
    fn region_shapes() {
        for ok in [
            "us-east-1",
            "eu-central-2",
            "us-gov-west-1",
            "ap-southeast-4",
            "cn-north-1",
        ] {
            assert!(is_region(ok), "{ok}");
        }
        for bad in [
            "",
            "us",
            "us-east",
            "US-EAST-1",
            "us-east-1a",
            "us-east-1.example.com",
            "us--1",
            "localhost",
        ] {
            assert!(!is_region(bad), "{bad}");
        }
    }
}
