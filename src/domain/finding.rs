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
}

/// What a containment step acts on: one target of triage's plan, as the workflow hands it on
/// (the finding was parsed once, by triage), or a finding event, when the step is invoked alone
/// (it then resolves the finding itself, through the same [`resolve`]).
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum StepRequest {
    Planned(PlannedTarget),
    Finding(FindingEvent),
}

/// One instance of triage's plan, as a step reads it: the target and the case to record in
/// (`None`: a dry run, or a case table triage could not reach). The plan's other fields
/// (decision, reason) are for the state machine and notify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedTarget {
    pub target: Target,
    #[serde(default, deserialize_with = "case_handle")]
    pub case: Option<crate::case::CaseHandle>,
}

impl From<FindingEvent> for StepRequest {
    fn from(event: FindingEvent) -> StepRequest {
        StepRequest::Finding(event)
    }
}

impl From<&FindingEvent> for StepRequest {
    fn from(event: &FindingEvent) -> StepRequest {
        StepRequest::Finding(event.clone())
    }
}

impl From<PlannedTarget> for StepRequest {
    fn from(planned: PlannedTarget) -> StepRequest {
        StepRequest::Planned(planned)
    }
}

/// Reads a step's Lambda payload: a planned target (an object with `target`) or a finding event.
/// A planned target is checked as strictly as a finding: its values reach AWS requests.
pub fn parse_step_request(payload: serde_json::Value) -> Result<StepRequest, Error> {
    if payload.get("target").is_some() && payload.get("detail").is_none() {
        let planned: PlannedTarget = serde_json::from_value(payload)
            .map_err(|e| Error::InvalidEvent(format!("not a planned target: {e}")))?;
        return Ok(StepRequest::Planned(planned));
    }
    parse_event(payload).map(StepRequest::from)
}

/// A case handle as the workflow hands it on; any other shape, or values that are not a case
/// id and claim token of this tool's, read as absent (the step then opens or joins the case).
fn case_handle<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::case::CaseHandle>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value
        .and_then(|v| serde_json::from_value::<crate::case::CaseHandle>(v).ok())
        .filter(|c| {
            crate::case::is_case_id(&c.case_id)
                && !c.claim.is_empty()
                && c.claim.len() <= 64
                && c.claim.bytes().all(|b| b.is_ascii_alphanumeric())
                && c.opened_at.len() <= 32
                && c.opened_at
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b"-:TZ".contains(&b))
        }))
}

pub const GUARDDUTY_SOURCE: &str = "aws.guardduty";
pub const GUARDDUTY_DETAIL_TYPE: &str = "GuardDuty Finding";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// `arn:<partition>:guardduty:<region>:<account>:detector/<detector>/finding/<id>`; read
    /// only through [`hub_finding`], which checks it against the finding's own fields.
    #[serde(default, deserialize_with = "shown_string")]
    pub arn: Option<String>,
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

/// The resource types whose finding names its EC2 instance in `instanceDetails`: the instance
/// itself, and a container workload on an EC2 host (an EKS node, an ECS container instance),
/// which Runtime Monitoring and Malware Protection findings name beside the cluster. A workload
/// on Fargate has no instance there, and is not one to contain.
pub const INSTANCE_RESOURCE_TYPES: [&str; 4] =
    ["Instance", "EKSCluster", "ECSCluster", "Container"];

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
    /// [`crate::domain::evidence`], so that an action shape this tool does not know never makes the
    /// finding unusable.
    #[serde(default)]
    pub action: Option<serde_json::Value>,
    /// Runtime Monitoring's process details (present: a process on the instance acted).
    #[serde(default)]
    pub runtime_details: Option<serde_json::Value>,
    /// Malware Protection's scan of the instance's volumes (present: malware on the instance).
    #[serde(default)]
    pub ebs_volume_scan_details: Option<serde_json::Value>,
    /// Extended Threat Detection's attack sequence (`detection.sequence`): the resources and
    /// signals of a multi-stage attack. Kept as JSON and read leniently by [`targets`]: one
    /// resource of a shape this tool does not know is passed over, never the whole finding.
    #[serde(default)]
    pub detection: Option<serde_json::Value>,
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

/// Whether `at` is an RFC 3339 time, as GuardDuty writes `updatedAt`, of a sane length.
fn is_time(at: &str) -> bool {
    at.len() <= 40
        && aws_smithy_types::DateTime::from_str(at, aws_smithy_types::date_time::Format::DateTime)
            .is_ok()
}

/// The instance (and role) a finding asks us to contain. A target read from a payload (a step's
/// planned target, triage's plan in notify's input) is checked as it is read ([`Target::check`]):
/// its values reach AWS requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedTarget")]
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
    /// them), then as triage read them from EC2: where isolate looks the tool's groups up (or
    /// makes them, see `vpcs_without_groups`) while it reads the instance; no interface is
    /// moved by it (the instance's own VPCs, as EC2 describes them, decide).
    #[serde(default)]
    pub vpc_ids: Vec<String>,
    /// Those of `vpc_ids` where triage found neither of the tool's groups: isolate creates them
    /// there at once, without looking them up again. A hint too: a group there after all is
    /// found by its name when its creation is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vpcs_without_groups: Vec<String>,
    /// The finding's `updatedAt` (RFC 3339), when it has one that reads as a time: the start of
    /// the time-to-isolation metric ([`crate::telemetry::TIME_TO_ISOLATION`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// A target as a payload carries it, before its values are checked.
#[derive(Deserialize)]
struct UncheckedTarget {
    finding_id: String,
    finding_type: String,
    severity: f64,
    scope: Scope,
    instance_id: String,
    role_name: Option<String>,
    instance_profile_arn: Option<String>,
    #[serde(default)]
    vpc_ids: Vec<String>,
    #[serde(default)]
    vpcs_without_groups: Vec<String>,
    #[serde(default)]
    updated_at: Option<String>,
}

impl TryFrom<UncheckedTarget> for Target {
    type Error = Error;

    fn try_from(u: UncheckedTarget) -> Result<Self, Error> {
        let target = Target {
            finding_id: u.finding_id,
            finding_type: u.finding_type,
            severity: u.severity,
            scope: u.scope,
            instance_id: u.instance_id,
            role_name: u.role_name,
            instance_profile_arn: u.instance_profile_arn,
            vpc_ids: u.vpc_ids,
            vpcs_without_groups: u.vpcs_without_groups,
            // Only the time-to-isolation metric reads it: one that does not read as a time is
            // dropped, never a reason to refuse the target.
            updated_at: u.updated_at.filter(|at| is_time(at)),
        };
        target.check()?;
        Ok(target)
    }
}

/// One instance in one account and region, with nothing of a finding: what a release names.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRef {
    pub scope: Scope,
    pub instance_id: String,
}

impl InstanceRef {
    /// The instance's ARN, as `ec2:SourceInstanceARN` names it.
    pub fn instance_arn(&self) -> String {
        format!(
            "arn:{}:ec2:{}:{}:instance/{}",
            self.scope.partition, self.scope.region, self.scope.account_id, self.instance_id
        )
    }
}

impl Target {
    /// Checks every value as [`targets`] does for a finding: a planned target is a Lambda
    /// payload too, and its values reach AWS requests.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |what: &str, value: &str| {
            Err(Error::InvalidEvent(format!(
                "the planned target's {what} {:?} is not valid",
                clip(value)
            )))
        };
        if !is_finding_id(&self.finding_id) {
            return bad("finding id", &self.finding_id);
        }
        if self.finding_type.len() > 128 || self.finding_type.chars().any(char::is_control) {
            return bad("finding type", &self.finding_type);
        }
        if !self.severity.is_finite() {
            return bad("severity", &self.severity.to_string());
        }
        if !is_account_id(&self.scope.account_id) {
            return bad("account", &self.scope.account_id);
        }
        if !is_region(&self.scope.region) {
            return bad("region", &self.scope.region);
        }
        if !is_partition(&self.scope.partition) {
            return bad("partition", &self.scope.partition);
        }
        if !is_instance_id(&self.instance_id) {
            return bad("instance id", &self.instance_id);
        }
        if let Some(role) = self.role_name.as_deref().filter(|r| !is_role_name(r)) {
            return bad("role name", role);
        }
        if let Some(arn) = self
            .instance_profile_arn
            .as_deref()
            .filter(|a| !is_instance_profile_arn(a))
        {
            return bad("instance profile", arn);
        }
        if let Some(vpc) = self.vpc_ids.iter().find(|v| !is_vpc_id(v)) {
            return bad("VPC id", vpc);
        }
        if self.vpc_ids.len() > MAX_VPC_HINTS {
            return bad("VPC list", &self.vpc_ids.len().to_string());
        }
        // Each VPC once (two makings of one VPC's groups would race), and only VPCs of the list
        // (so as many, and checked above).
        let once = |list: &[String]| {
            list.iter()
                .enumerate()
                .find(|(i, v)| list[..*i].contains(v))
                .map(|(_, v)| v.clone())
        };
        if let Some(vpc) = once(&self.vpc_ids) {
            return bad("VPC named twice", &vpc);
        }
        if let Some(vpc) = once(&self.vpcs_without_groups) {
            return bad("VPC named twice", &vpc);
        }
        if let Some(vpc) = self
            .vpcs_without_groups
            .iter()
            .find(|v| !self.vpc_ids.contains(v))
        {
            return bad("VPC without groups", vpc);
        }
        Ok(())
    }

    /// The instance's ARN, as `ec2:SourceInstanceARN` names it.
    pub fn instance_arn(&self) -> String {
        format!(
            "arn:{}:ec2:{}:{}:instance/{}",
            self.scope.partition, self.scope.region, self.scope.account_id, self.instance_id
        )
    }
}

/// What a well-formed finding resolves to: something to contain, or nothing, with the reason.
/// (An event that is not a usable finding at all is an [`Error`] instead.)
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution<T> {
    /// Contain this: the finding's target, the instances it names, the role of the instance.
    Contain(T),
    /// The finding is well formed but names nothing this tool can contain; the reason says why.
    Skip(String),
}

impl<T> Resolution<T> {
    /// What to contain, if anything.
    pub fn contain(self) -> Option<T> {
        match self {
            Resolution::Contain(value) => Some(value),
            Resolution::Skip(_) => None,
        }
    }
}

/// Reads a Lambda payload as a GuardDuty finding event.
pub fn parse_event(payload: serde_json::Value) -> Result<FindingEvent, Error> {
    serde_json::from_value(payload)
        .map_err(|e| Error::InvalidEvent(format!("not a GuardDuty finding event: {e}")))
}

/// One instance a finding names, and how the finding names it (its evidence for it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTarget {
    pub target: Target,
    pub named_as: String,
}

/// Every instance a finding names: one for an instance or credential finding, each instance of
/// an attack sequence (up to [`MAX_NAMED_INSTANCES`] read), and what was passed over, with why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Named {
    pub targets: Vec<NamedTarget>,
    /// Resources the finding names that are not an instance to contain (another resource type,
    /// an id that is not an instance id, another account), one line each, at most
    /// [`MAX_PASSED_OVER`] kept.
    pub passed_over: Vec<String>,
    /// How many distinct instances the finding names, counting those beyond the ones read.
    pub instances_named: usize,
    seen: std::collections::BTreeSet<String>,
}

/// The most instances read from one finding. GuardDuty lists at most 400 resources in an attack
/// sequence, and at most 25 instances per shared resource (an Auto Scaling group, an image); a
/// finding naming more is not read further, and the count says so (triage's cap refuses it
/// well before).
pub const MAX_NAMED_INSTANCES: usize = 100;
/// The most attack-sequence resources read; the rest are counted as passed over.
pub const MAX_SEQUENCE_RESOURCES: usize = 1000;
/// The most passed-over lines kept for the report.
pub const MAX_PASSED_OVER: usize = 10;

/// The finding's own fields every target carries, validated once.
struct Header {
    /// `updatedAt`, kept only when it reads as an RFC 3339 time.
    updated_at: Option<String>,
    finding_id: String,
    finding_type: String,
    severity: f64,
    scope: Scope,
}

/// Checks the envelope and the finding's identity, account, region and partition, and refuses
/// samples and archived findings.
fn header(event: &FindingEvent) -> Result<Resolution<Header>, Error> {
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
    if !is_partition(partition) {
        return Err(Error::InvalidEvent(format!(
            "partition {:?} is not supported",
            clip(partition)
        )));
    }
    if finding.is_sample()? {
        return Ok(Resolution::Skip(
            "this is a GuardDuty sample finding (CreateSampleFindings): nothing is contained"
                .into(),
        ));
    }
    if finding.service.as_ref().and_then(|s| s.archived) == Some(true) {
        return Ok(Resolution::Skip(
            "the finding is archived (suppressed or closed in GuardDuty)".into(),
        ));
    }
    Ok(Resolution::Contain(Header {
        updated_at: finding.updated_at.clone().filter(|at| is_time(at)),
        finding_id,
        finding_type: printable(
            finding
                .finding_type
                .as_deref()
                .map(clip)
                .unwrap_or("unknown"),
        ),
        severity: finding.severity.filter(|s| s.is_finite()).unwrap_or(0.0),
        scope: Scope {
            account_id: account_id.to_owned(),
            region: region.to_owned(),
            partition: partition.to_owned(),
        },
    }))
}

/// A GuardDuty finding as Security Hub CSPM holds it: `Id` is the finding's ARN and
/// `ProductArn` GuardDuty's product
/// (https://docs.aws.amazon.com/guardduty/latest/ug/securityhub-integration.html).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFinding {
    pub scope: Scope,
    pub finding_id: String,
    pub id: String,
    pub product_arn: String,
}

/// The Security Hub identifiers of a finding, built from its checked account, region, partition
/// and id and the detector its ARN names; `Ok(Err(reason))` when the finding has no ARN of that
/// exact shape, or is a sample or archived (nothing of it is updated then).
pub fn hub_finding(event: &FindingEvent) -> Result<Result<HubFinding, String>, Error> {
    let header = match header(event)? {
        Resolution::Contain(header) => header,
        Resolution::Skip(reason) => return Ok(Err(reason)),
    };
    let Scope {
        account_id,
        region,
        partition,
    } = &header.scope;
    let prefix = format!("arn:{partition}:guardduty:{region}:{account_id}:detector/");
    let suffix = format!("/finding/{}", header.finding_id);
    let detector = event
        .detail
        .arn
        .as_deref()
        .and_then(|arn| arn.strip_prefix(&prefix))
        .and_then(|rest| rest.strip_suffix(&suffix))
        .filter(|d| {
            !d.is_empty()
                && d.len() <= 300
                && d.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    let Some(detector) = detector else {
        return Ok(Err(format!(
            "the finding's ARN is not {prefix}<detector>{suffix}"
        )));
    };
    Ok(Ok(HubFinding {
        id: format!("{prefix}{detector}{suffix}"),
        product_arn: format!("arn:{partition}:securityhub:{region}::product/aws/guardduty"),
        finding_id: header.finding_id.clone(),
        scope: header.scope,
    }))
}

impl Header {
    fn target(&self, instance_id: &str) -> Target {
        Target {
            finding_id: self.finding_id.clone(),
            finding_type: self.finding_type.clone(),
            severity: self.severity,
            scope: self.scope.clone(),
            instance_id: instance_id.to_owned(),
            role_name: None,
            instance_profile_arn: None,
            vpc_ids: Vec::new(),
            vpcs_without_groups: Vec::new(),
            updated_at: self.updated_at.clone(),
        }
    }
}

/// Resolves the one containment target of a finding event: what a step invoked alone with a
/// finding acts on. A finding naming several instances (an attack sequence) is the workflow's
/// to plan ([`targets`], in triage); a step alone skips it with the reason.
///
/// `Err` is an event that is not a usable GuardDuty finding at all (a named, final error);
/// `Ok(Resolution::Skip(reason))` is a finding that names no one EC2 instance, with the reason.
pub fn resolve(event: &FindingEvent) -> Result<Resolution<Target>, Error> {
    let named = match targets(event)? {
        Resolution::Contain(named) => named,
        Resolution::Skip(reason) => return Ok(Resolution::Skip(reason)),
    };
    let nothing = named.nothing_named();
    let count = named.instances_named;
    let mut found = named.targets.into_iter();
    match (found.next(), found.next()) {
        (Some(one), None) => Ok(Resolution::Contain(one.target)),
        (None, _) => Ok(Resolution::Skip(nothing)),
        (Some(_), Some(_)) => Ok(Resolution::Skip(format!(
            "the finding names {count} instances: the containment workflow contains each one (triage plans them); a step invoked alone contains one instance"
        ))),
    }
}

impl Named {
    /// Why nothing is contained, from what was passed over.
    pub fn nothing_named(&self) -> String {
        match self.passed_over.as_slice() {
            [] => "the finding names no EC2 instance".to_owned(),
            [one] => one.clone(),
            many => format!(
                "the finding names no EC2 instance to contain: {}",
                many.join("; ")
            ),
        }
    }

    fn pass_over(&mut self, why: String) {
        if self.passed_over.len() < MAX_PASSED_OVER {
            self.passed_over.push(printable(&why));
        }
    }

    /// Adds an instance once: one named again (in a group and on its own) keeps its first
    /// reason.
    fn add(&mut self, target: Target, named_as: String) {
        if !self.seen.insert(target.instance_id.clone()) {
            return;
        }
        self.instances_named += 1;
        if self.targets.len() < MAX_NAMED_INSTANCES {
            let named_as = printable(&named_as);
            self.targets.push(NamedTarget { target, named_as });
        }
    }
}

/// Every instance a finding event names, validated, with how the finding names each.
///
/// `Err` is an event that is not a usable GuardDuty finding at all; `Ok(Resolution::Skip(reason))` a finding
/// that is not acted on as a whole (a sample, archived, no resource).
///
/// One piece on purpose: one match over GuardDuty's resource types, each arm what that type
/// names.
pub fn targets(event: &FindingEvent) -> Result<Resolution<Named>, Error> {
    let header = match header(event)? {
        Resolution::Contain(header) => header,
        Resolution::Skip(reason) => return Ok(Resolution::Skip(reason)),
    };
    let finding = &event.detail;
    let Some(resource) = finding.resource.as_ref() else {
        return Ok(Resolution::Skip("the finding names no resource".into()));
    };
    let resource_type = resource.resource_type.as_deref().unwrap_or("");
    let mut named = Named::default();
    match resource_type {
        "" => {
            return Ok(Resolution::Skip(
                "the finding's resource has no resourceType".into(),
            ));
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
                return Ok(Resolution::Skip(format!(
                    "the AccessKey finding's principal {:?} is not an EC2 instance role session",
                    clip(principal)
                )));
            }
            let mut target = header.target(session);
            target.role_name = details
                .and_then(|d| d.user_name.clone())
                .filter(|r| is_role_name(r));
            named.add(
                target,
                "the instance whose role credentials were used (accessKeyDetails.principalId)"
                    .into(),
            );
        }
        "AttackSequence" => {
            sequence_targets(&header, finding, &mut named);
            if named.targets.is_empty() {
                return Ok(Resolution::Skip(named.nothing_named()));
            }
        }
        kind if INSTANCE_RESOURCE_TYPES.contains(&kind) => {
            let details = resource.instance_details.as_ref();
            let Some(id) = details.and_then(|d| d.instance_id.as_deref()) else {
                return Ok(Resolution::Skip(if kind == "Instance" {
                    "the Instance finding carries no instanceDetails.instanceId".to_owned()
                } else {
                    format!(
                        "resource type {kind:?} names no EC2 instance to contain (no instanceDetails: a Fargate workload, or the cluster itself)"
                    )
                }));
            };
            if !is_instance_id(id) {
                return Ok(Resolution::Skip(format!(
                    "instanceDetails.instanceId {:?} is not an EC2 instance id",
                    clip(id)
                )));
            }
            let mut target = header.target(id);
            target.instance_profile_arn = details
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
            target.vpc_ids = vpcs;
            let named_as = if kind == "Instance" {
                "the finding's resource (instanceDetails)".to_owned()
            } else {
                format!("the EC2 host of the {kind} workload (instanceDetails)")
            };
            named.add(target, named_as);
        }
        other => {
            return Ok(Resolution::Skip(format!(
                "resource type {:?} names no EC2 instance to contain",
                clip(other)
            )));
        }
    }
    Ok(Resolution::Contain(named))
}

/// The resources of an attack sequence whose `ec2InstanceUids` GuardDuty documents as "the
/// compromised Amazon EC2 instances" sharing them (API reference, ResourceData): resource type,
/// its data member, and what it is called in a report.
const SEQUENCE_GROUPS: [(&str, &str, &str); 6] = [
    (
        "AUTOSCALING_AUTO_SCALING_GROUP",
        "autoscalingAutoScalingGroup",
        "Auto Scaling group",
    ),
    ("EC2_IMAGE", "ec2Image", "image"),
    (
        "IAM_INSTANCE_PROFILE",
        "iamInstanceProfile",
        "instance profile",
    ),
    (
        "EC2_LAUNCH_TEMPLATE",
        "ec2LaunchTemplate",
        "launch template",
    ),
    (
        "CLOUDFORMATION_STACK",
        "cloudformationStack",
        "CloudFormation stack",
    ),
    ("EC2_VPC", "ec2Vpc", "VPC"),
];

/// Resources whose `ec2InstanceUids` list every worker node or container instance of a cluster
/// (EKS, ECS), compromised or not: not read as instances to contain.
const NODE_LISTS: [&str; 2] = ["EKS_CLUSTER", "ECS_CLUSTER"];

/// The instances of an attack sequence (`service.detection.sequence.resources`, GuardDuty's
/// ResourceV2, whose `resourceType` is one of the API's FindingResourceType values): each
/// `EC2_INSTANCE`, and the compromised instances listed in the `ec2InstanceUids` of the groups
/// they share ([`SEQUENCE_GROUPS`]). A resource in another account or region than the
/// finding's, or an id that is not an instance id, is passed over with the reason: every call
/// for the finding is made in its own account and region.
///
/// One piece on purpose: one pass over an attack sequence's resources, each kind what it names
/// or why it is passed over.
fn sequence_targets(header: &Header, finding: &Finding, named: &mut Named) {
    let resources = finding
        .service
        .as_ref()
        .and_then(|s| s.detection.as_ref())
        .and_then(|d| d.pointer("/sequence/resources"));
    let Some(resources) = resources
        .and_then(|r| r.as_array())
        .filter(|r| !r.is_empty())
    else {
        named.pass_over(
            "the attack sequence lists no resources (detection.sequence.resources)".into(),
        );
        return;
    };
    if resources.len() > MAX_SEQUENCE_RESOURCES {
        named.pass_over(format!(
            "the attack sequence lists {} resources: only the first {MAX_SEQUENCE_RESOURCES} are read",
            resources.len()
        ));
    }
    for (i, resource) in resources.iter().take(MAX_SEQUENCE_RESOURCES).enumerate() {
        let kind = resource
            .get("resourceType")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let uid = resource.get("uid").and_then(|v| v.as_str()).unwrap_or("");
        let label = format!("resource {} ({} {})", i + 1, clip(kind), clip(uid));
        // A resource names its own account and region; absent, they are the finding's.
        let foreign = [
            ("accountId", header.scope.account_id.as_str()),
            ("region", header.scope.region.as_str()),
        ]
        .into_iter()
        .find_map(|(field, own)| {
            let theirs = resource.get(field)?;
            (theirs.as_str() != Some(own)).then(|| {
                format!(
                    "{label}: its {field} {} is not the finding's {own}",
                    clip(&theirs.to_string())
                )
            })
        });
        if let Some(why) = foreign {
            named.pass_over(why);
            continue;
        }
        let listed = |pointer: &str| -> Vec<&str> {
            resource
                .pointer(pointer)
                .and_then(|v| v.as_array())
                .map(|ids| ids.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default()
        };
        let name = clip(resource.get("name").and_then(|v| v.as_str()).unwrap_or(uid));
        let (ids, named_as): (Vec<&str>, String) = match kind {
            "EC2_INSTANCE" => (
                vec![uid],
                "an instance of the attack sequence (EC2_INSTANCE)".to_owned(),
            ),
            _ => match SEQUENCE_GROUPS.iter().find(|(k, _, _)| *k == kind) {
                Some((_, data, what)) => (
                    listed(&format!("/data/{data}/ec2InstanceUids")),
                    format!("a compromised instance of {what} {name} in the attack sequence"),
                ),
                None if NODE_LISTS.contains(&kind) => {
                    named.pass_over(format!(
                        "{label}: its ec2InstanceUids are every node of the cluster, not the compromised ones"
                    ));
                    continue;
                }
                None => {
                    named.pass_over(format!("{label}: not an EC2 instance"));
                    continue;
                }
            },
        };
        if ids.is_empty() {
            named.pass_over(format!("{label}: lists no instance"));
        }
        for uid in ids {
            let Some(id) = instance_id_of(uid, &header.scope) else {
                named.pass_over(format!(
                    "{label}: {:?} is not an EC2 instance id of the finding's account and region",
                    clip(uid)
                ));
                continue;
            };
            named.add(header.target(id), named_as.clone());
        }
    }
}

/// The instance id a sequence resource names: the id itself, or the id at the end of an
/// instance ARN of the finding's own partition, account and region.
fn instance_id_of<'a>(uid: &'a str, scope: &Scope) -> Option<&'a str> {
    let id = if uid.starts_with("arn:") {
        let parts: Vec<&str> = uid.splitn(6, ':').collect();
        let [_, partition, "ec2", region, account, resource] = parts.as_slice() else {
            return None;
        };
        if (*partition, *region, *account)
            != (
                scope.partition.as_str(),
                scope.region.as_str(),
                scope.account_id.as_str(),
            )
        {
            return None;
        }
        resource.strip_prefix("instance/")?
    } else {
        uid
    };
    is_instance_id(id).then_some(id)
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

/// A string from the finding as shown in a message: control characters (a line break that would
/// forge a line of the notification) become `?`.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
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

fn is_partition(s: &str) -> bool {
    matches!(s, "aws" | "aws-cn" | "aws-us-gov")
}

pub fn is_instance_id(s: &str) -> bool {
    is_hex_id(s, "i-", &[8, 17])
}

/// `vol-` and 8 or 17 hexadecimal digits, as EC2 names volumes.
pub fn is_volume_id(s: &str) -> bool {
    is_hex_id(s, "vol-", &[8, 17])
}

/// `snap-` and 8 or 17 hexadecimal digits, as EC2 names snapshots.
pub fn is_snapshot_id(s: &str) -> bool {
    is_hex_id(s, "snap-", &[8, 17])
}

pub(crate) const MAX_VPC_HINTS: usize = 4;

pub(crate) fn is_vpc_id(s: &str) -> bool {
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

    fn resolve_json(v: serde_json::Value) -> Result<Resolution<Target>, Error> {
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
        .contain()
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
        .contain()
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
        let t = t.unwrap().contain().unwrap();
        assert_eq!(t.vpc_ids, ["vpc-0123456789abcdef0", "vpc-11111111"]);
        let t = resolve_json(event(json!({
            "id": "f4", "type": "Backdoor:EC2/C&CActivity.B", "severity": 5.0,
            "resource": {"resourceType": "Instance", "instanceDetails": {
                "instanceId": "i-99999999", "networkInterfaces": "not a list"}}
        })))
        .unwrap()
        .contain()
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
                Resolution::Skip(reason) => assert!(reason.contains(want), "{detail}: {reason}"),
                Resolution::Contain(t) => panic!("{detail} resolved to {t:?}"),
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
        .contain()
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
        assert!(matches!(sample, Resolution::Skip(r) if r.contains("sample finding")));
        let archived = resolve_json(event(
            json!({"id": "f", "resource": instance, "service": {"archived": true}}),
        ))
        .unwrap();
        assert!(matches!(archived, Resolution::Skip(r) if r.contains("archived")));
    }

    fn sequence(resources: serde_json::Value) -> serde_json::Value {
        event(json!({
            "id": "a5b6c7d8e9f04a1b2c3d4e5f60718293", "accountId": "123456789012",
            "region": "us-east-1", "type": "AttackSequence:EC2/CompromisedInstanceGroup",
            "severity": 9.0, "resource": {"resourceType": "AttackSequence"},
            "service": {"featureName": "Correlation", "detection": {"sequence": {
                "uid": "s", "description": "d", "resources": resources, "signals": []}}}
        }))
    }

    fn instance_resource(uid: &str) -> serde_json::Value {
        json!({"uid": uid, "resourceType": "EC2_INSTANCE", "accountId": "123456789012",
               "region": "us-east-1", "data": {"ec2Instance": {"instanceState": "running"}}})
    }

    fn named(v: serde_json::Value) -> Named {
        targets(&parse_event(v).unwrap())
            .unwrap()
            .contain()
            .unwrap()
    }

    fn ids(n: &Named) -> Vec<&str> {
        n.targets
            .iter()
            .map(|t| t.target.instance_id.as_str())
            .collect()
    }

    #[test]
    fn the_attack_sequence_sample_names_both_instances_once() {
        let sample: serde_json::Value = serde_json::from_str(include_str!(
            "../../events/attack-sequence-instance-group.json"
        ))
        .unwrap();
        let n = named(sample);
        // Named as instances and again through the instance profile they share: once each.
        assert_eq!(ids(&n), ["i-0a1b2c3d4e5f67890", "i-0b2c3d4e5f6a78901"]);
        assert_eq!(n.instances_named, 2);
        assert!(n.targets[0].named_as.contains("EC2_INSTANCE"), "{n:?}");
        // The interface is passed over, with the reason.
        assert!(
            n.passed_over
                .iter()
                .any(|p| p.contains("EC2_NETWORK_INTERFACE")),
            "{:?}",
            n.passed_over
        );
        for t in &n.targets {
            assert_eq!(
                t.target.finding_type,
                "AttackSequence:EC2/CompromisedInstanceGroup"
            );
            assert_eq!(t.target.scope.account_id, "123456789012");
            t.target.check().unwrap();
        }
        // A step invoked alone with it contains nothing: the workflow plans the group.
        let alone = resolve(
            &parse_event(
                serde_json::from_str(include_str!(
                    "../../events/attack-sequence-instance-group.json"
                ))
                .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert!(matches!(alone, Resolution::Skip(r) if r.contains("names 2 instances")));
    }

    #[test]
    fn group_members_are_read_from_the_shared_resources() {
        let n = named(sequence(json!([
            {"uid": "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:x:autoScalingGroupName/web",
             "name": "web", "resourceType": "AUTOSCALING_AUTO_SCALING_GROUP",
             "data": {"autoscalingAutoScalingGroup": {"ec2InstanceUids": ["i-11111111", "i-22222222"]}}},
            {"uid": "ami-0123456789abcdef0", "resourceType": "EC2_IMAGE",
             "data": {"ec2Image": {"ec2InstanceUids": ["i-22222222", "i-33333333"]}}},
            // An instance ARN of the finding's own account and region is read as its id.
            {"uid": "arn:aws:ec2:us-east-1:123456789012:instance/i-44444444", "resourceType": "EC2_INSTANCE"},
            // Every node of a cluster is not a compromised group.
            {"uid": "arn:aws:eks:us-east-1:123456789012:cluster/c", "resourceType": "EKS_CLUSTER",
             "data": {"eksCluster": {"ec2InstanceUids": ["i-55555555"]}}}
        ])));
        assert_eq!(
            ids(&n),
            ["i-11111111", "i-22222222", "i-33333333", "i-44444444"]
        );
        assert!(
            n.targets[0].named_as.contains("Auto Scaling group web"),
            "{n:?}"
        );
        assert!(
            n.passed_over
                .iter()
                .any(|p| p.contains("every node of the cluster"))
        );
    }

    #[test]
    fn hostile_attack_sequences_get_a_clear_outcome() {
        // No resources, or none that is an instance: nothing to contain, with the reason.
        for resources in [json!([]), json!(null), json!("x")] {
            let got = targets(&parse_event(sequence(resources.clone())).unwrap()).unwrap();
            assert!(
                matches!(&got, Resolution::Skip(r) if r.contains("lists no resources")),
                "{resources}: {got:?}"
            );
        }
        let others = json!([{"resourceType": "S3_BUCKET", "uid": "b"}, 7, null]);
        let got = targets(&parse_event(sequence(others)).unwrap()).unwrap();
        assert!(
            matches!(&got, Resolution::Skip(r) if r.contains("not an EC2 instance")),
            "{got:?}"
        );
        // One.
        assert_eq!(
            ids(&named(sequence(json!([instance_resource(
                "i-0123456789abcdef0"
            )])))),
            ["i-0123456789abcdef0"]
        );
        // Thirty distinct instances: all named (triage's cap decides).
        let thirty: Vec<_> = (0..30)
            .map(|i| instance_resource(&format!("i-{:08x}", i + 1)))
            .collect();
        let n = named(sequence(json!(thirty)));
        assert_eq!((n.targets.len(), n.instances_named), (30, 30));
        // A thousand resources naming a thousand instances: read up to the bound, all counted.
        let thousand: Vec<_> = (0..1000)
            .map(|i| instance_resource(&format!("i-{:08x}", i + 1)))
            .collect();
        let n = named(sequence(json!(thousand)));
        assert_eq!(
            (n.targets.len(), n.instances_named),
            (MAX_NAMED_INSTANCES, 1000)
        );
        // More resources than are read: the rest are counted as passed over.
        let more: Vec<_> = (0..1500)
            .map(|_| json!({"resourceType": "S3_BUCKET", "uid": "b"}))
            .collect();
        let got = targets(&parse_event(sequence(json!(more))).unwrap()).unwrap();
        assert!(
            matches!(&got, Resolution::Skip(r) if r.contains("only the first 1000")),
            "{got:?}"
        );
        // Repeated ids: once.
        let n = named(sequence(
            json!([instance_resource("i-11111111"), instance_resource("i-11111111"),
            {"uid": "g", "resourceType": "EC2_VPC", "data": {"ec2Vpc": {"ec2InstanceUids": ["i-11111111"]}}}]),
        ));
        assert_eq!((ids(&n), n.instances_named), (vec!["i-11111111"], 1));
        // Another account or region, a foreign ARN, a hostile id, an unknown type: passed over.
        let n = named(sequence(json!([
            instance_resource("i-11111111"),
            {"uid": "i-22222222", "resourceType": "EC2_INSTANCE", "accountId": "999999999999"},
            {"uid": "i-33333333", "resourceType": "EC2_INSTANCE", "region": "eu-west-1"},
            {"uid": "i-44444444", "resourceType": "EC2_INSTANCE", "accountId": 123456789012u64},
            {"uid": "arn:aws:ec2:us-east-1:999999999999:instance/i-55555555", "resourceType": "EC2_INSTANCE"},
            {"uid": "i-66666666; rm -rf /", "resourceType": "EC2_INSTANCE"},
            {"uid": "i-77777777", "resourceType": "SOMETHING_NEW"},
            {"uid": 12, "resourceType": ["EC2_INSTANCE"]}
        ])));
        assert_eq!(ids(&n), ["i-11111111"]);
        assert_eq!(
            n.passed_over.len(),
            MAX_PASSED_OVER.min(7),
            "{:?}",
            n.passed_over
        );
        assert!(n.passed_over.iter().any(|p| p.contains("999999999999")));
        assert!(n.passed_over.iter().any(|p| p.contains("eu-west-1")));
        // A name with a line break cannot forge a line of the message.
        let n = named(sequence(
            json!([{"uid": "g", "name": "web\r\nCONTAINED: nothing to see",
            "resourceType": "AUTOSCALING_AUTO_SCALING_GROUP",
            "data": {"autoscalingAutoScalingGroup": {"ec2InstanceUids": ["i-11111111"]}}}]),
        ));
        assert!(
            !n.targets[0].named_as.contains('\n'),
            "{:?}",
            n.targets[0].named_as
        );
    }

    #[test]
    fn container_hosts_are_instances_and_fargate_workloads_are_not() {
        for kind in ["EKSCluster", "ECSCluster", "Container"] {
            let n = named(event(json!({
                "id": "f", "type": "Execution:Runtime/ReverseShell", "severity": 8,
                "resource": {"resourceType": kind, "instanceDetails": {"instanceId": "i-0123456789abcdef0"}}
            })));
            assert_eq!(ids(&n), ["i-0123456789abcdef0"], "{kind}");
            assert!(n.targets[0].named_as.contains(kind));
            let fargate = targets(&parse_event(event(json!({
                "id": "f", "type": "Execution:Runtime/ReverseShell", "severity": 8,
                "resource": {"resourceType": kind, "ecsClusterDetails": {"taskDetails": {"launchType": "FARGATE"}}}
            }))).unwrap()).unwrap();
            assert!(
                matches!(&fargate, Resolution::Skip(r) if r.contains("names no EC2 instance")),
                "{kind}: {fargate:?}"
            );
        }
    }

    #[test]
    fn a_planned_target_is_checked_like_a_finding() {
        let good: serde_json::Value =
            serde_json::from_str(include_str!("../../events/instance-backdoor.json")).unwrap();
        let target = resolve(&parse_event(good).unwrap())
            .unwrap()
            .contain()
            .unwrap();
        let planned = |t: &Target| json!({"decision": "contain", "target": t, "case": null});
        assert!(matches!(
            parse_step_request(planned(&target)),
            Ok(StepRequest::Planned(_))
        ));
        let mut bad = target.clone();
        bad.scope.region = "us-east-1.evil.example".into();
        let mut injected = target.clone();
        injected.instance_id = "i-0123456789abcdef0 --dry-run".into();
        let mut profile = target.clone();
        profile.instance_profile_arn = Some("not-an-arn".into());
        // A VPC to make groups in that is not one of the instance's.
        let mut elsewhere = target.clone();
        elsewhere.vpc_ids = vec!["vpc-11111111".into()];
        elsewhere.vpcs_without_groups = vec!["vpc-22222222".into()];
        let mut twice = target.clone();
        twice.vpc_ids = vec!["vpc-11111111".into(), "vpc-11111111".into()];
        let mut twice_made = target.clone();
        twice_made.vpc_ids = vec!["vpc-11111111".into()];
        twice_made.vpcs_without_groups = vec!["vpc-11111111".into(), "vpc-11111111".into()];
        for t in [bad, injected, profile, elsewhere, twice, twice_made] {
            let err = parse_step_request(planned(&t)).unwrap_err();
            assert_eq!(err.name().as_str(), "InvalidEvent", "{t:?}");
        }
        // A forged case handle reads as absent: the step opens or joins the case itself.
        let forged = json!({"target": target, "case": {"case_id": "x; drop", "claim": "c"}});
        match parse_step_request(forged).unwrap() {
            StepRequest::Planned(p) => assert!(p.case.is_none()),
            other => panic!("{other:?}"),
        }
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
