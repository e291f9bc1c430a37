//! What the responder does, as configured through the template's parameters: each function
//! reads these from its environment once, at init. A value that is not one of the documented
//! ones fails the init with [`Error::Misconfigured`], naming the variable.

use crate::error::Error;

/// What happens to the instance's IAM role (`ROLE_ACTION`). The instance profile is replaced by
/// the empty quarantine profile in every case: that stops the instance getting credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RoleAction {
    /// Attach the DenyAll policy and deny sessions issued before now (the default). On a role
    /// that other instances use too, only with `DENY_ALL_SHARED_ROLES=true`; otherwise the
    /// shared role gets [`RoleAction::RevokeInstance`].
    #[default]
    DenyAll,
    /// Deny only sessions issued before now, the IAM console's "revoke active sessions": stolen
    /// credentials stop working, and so do the current credentials of every other instance
    /// using the role, until their instance fetches fresh ones (within the hour, as they rotate).
    RevokeSessions,
    /// Deny every request signed with credentials that EC2 delivered to this instance before
    /// now, wherever they are used (the `ec2:SourceInstanceARN` condition key): the compromised
    /// instance's credentials, stolen copies included, stop working, and the other instances
    /// using the role keep working.
    RevokeInstance,
    /// Leave the role as it is.
    None,
}

/// What happens to an instance in an Auto Scaling group (`AUTO_SCALING_ACTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AutoScalingAction {
    /// Put it in Standby: the group keeps it (and its evidence) but neither health-checks nor
    /// replaces it, and it leaves the group's load balancers (the default).
    #[default]
    Standby,
    /// Detach it from the group, which then forgets it.
    Detach,
    /// Leave the group alone (the group may terminate the isolated instance as unhealthy).
    None,
}

/// How the forensic snapshots are locked against deletion (EBS Snapshot Lock,
/// `SNAPSHOT_LOCK_MODE`): a locked snapshot cannot be deleted by anyone until the lock expires
/// (<https://docs.aws.amazon.com/ebs/latest/userguide/ebs-snapshot-lock.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotLockMode {
    /// Governance mode (the default): a user with `ec2:UnlockSnapshot` may unlock or shorten
    /// the lock; nobody may delete the snapshot while it holds.
    #[default]
    Governance,
    /// Compliance mode: after the cooling-off period nobody, the account's root included, can
    /// unlock or shorten it, or delete the snapshot before it expires.
    Compliance,
    /// No lock.
    None,
}

/// The lock put on each forensic snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotLock {
    pub mode: SnapshotLockMode,
    /// How long the lock holds, in days (`SNAPSHOT_LOCK_DAYS`, 1 to 36,500), counted from the
    /// snapshot's completion.
    pub days: i32,
    /// Compliance mode's cooling-off period in hours (`SNAPSHOT_LOCK_COOL_OFF_HOURS`, 1 to 72),
    /// during which a mistaken lock can still be undone; `None` (0): compliance at once.
    pub cool_off_hours: Option<i32>,
}

/// The default lock: 90 days, as long as GuardDuty keeps the finding that explains the evidence
/// (<https://docs.aws.amazon.com/guardduty/latest/ug/guardduty_findings.html>): long enough to
/// investigate, copy the snapshots away, or put them under a legal hold. Governance mode, so
/// that a lock set by mistake can be lifted by the account's administrators, never by the
/// attacker of an instance.
pub const DEFAULT_SNAPSHOT_LOCK_DAYS: i32 = 90;

/// The default cooling-off period of a compliance lock: one day to notice a mistake.
pub const DEFAULT_SNAPSHOT_LOCK_COOL_OFF_HOURS: i32 = 24;

impl Default for SnapshotLock {
    fn default() -> SnapshotLock {
        SnapshotLock {
            mode: SnapshotLockMode::Governance,
            days: DEFAULT_SNAPSHOT_LOCK_DAYS,
            cool_off_hours: Some(DEFAULT_SNAPSHOT_LOCK_COOL_OFF_HOURS),
        }
    }
}

/// Which findings are acted on and which only notify.
#[derive(Debug, Clone, PartialEq)]
pub struct TriagePolicy {
    /// Finding type prefixes that are acted on (`ACT_ON_TYPE_PREFIXES`); empty: every type.
    pub act_on: Vec<String>,
    /// Finding type prefixes that only notify (`NOTIFY_ONLY_TYPE_PREFIXES`); wins over `act_on`.
    pub notify_only: Vec<String>,
    /// Findings below this severity only notify (`SEVERITY_THRESHOLD`, 0 to 10).
    pub severity_threshold: f64,
    /// Whether an instance that is the TARGET of the activity (probed, attacked) is contained
    /// too (`CONTAIN_TARGETS`); by default only ACTOR instances are.
    pub contain_targets: bool,
    /// An instance carrying this tag key is never touched, only reported (`EXEMPTION_TAG_KEY`).
    pub exemption_tag: String,
    /// Whether the EC2 host of a container workload (an EKS node, an ECS container instance) is
    /// contained on a finding about the workload (`CONTAIN_CONTAINER_HOSTS`); by default it is
    /// only reported.
    pub contain_container_hosts: bool,
    /// The blast-radius cap (`MAX_INSTANCES_PER_FINDING`): a finding naming more instances than
    /// this contains none of them, and the team is told why.
    pub max_instances: usize,
    /// The rate cap (`MAX_CONTAINMENTS_PER_HOUR`): at most this many automatic containments per
    /// account in any rolling hour; further findings are reported, not contained. `None`: no cap
    /// (the tests' default policy; the template always sets one).
    pub max_containments_per_hour: Option<usize>,
    /// Which findings wait for a person's approval before anything is contained.
    pub approval: ApprovalPolicy,
}

/// When a person approves before the instances are contained (`APPROVALS` and the rules
/// below). A finding over the rate cap waits for approval too when approvals are on.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalPolicy {
    /// Approvals on (`APPROVALS`); off, no finding waits and the rate cap reports only.
    pub enabled: bool,
    /// Finding type prefixes that wait for approval (`APPROVAL_TYPE_PREFIXES`).
    pub type_prefixes: Vec<String>,
    /// Findings whose severity is in this band, both ends included, wait for approval
    /// (`APPROVAL_SEVERITY_BAND`, `LOW-HIGH` such as `4-6.9`).
    pub severity_band: Option<(f64, f64)>,
    /// Instances carrying this tag (`APPROVAL_TAG`, `Key=Value`, or `Key` for any value) wait
    /// for approval.
    pub tag: Option<(String, Option<String>)>,
    /// What an unanswered request leads to (`APPROVAL_TIMEOUT_ACTION`).
    pub on_timeout: crate::approval::OnTimeout,
    /// How long the state machine waits for an answer (`APPROVAL_TIMEOUT_SECONDS`).
    pub timeout_secs: i64,
}

/// The default wait for an approval: one hour, the time an on-call engineer is expected to
/// acknowledge a page; the rate cap's window too.
pub const DEFAULT_APPROVAL_TIMEOUT_SECS: i64 = 3600;

/// The shortest and longest wait: one minute to one week.
pub const APPROVAL_TIMEOUT_RANGE_SECS: std::ops::RangeInclusive<i64> = 60..=604_800;

impl Default for ApprovalPolicy {
    fn default() -> ApprovalPolicy {
        ApprovalPolicy {
            enabled: false,
            type_prefixes: Vec::new(),
            severity_band: None,
            tag: None,
            on_timeout: crate::approval::OnTimeout::NotifyOnly,
            timeout_secs: DEFAULT_APPROVAL_TIMEOUT_SECS,
        }
    }
}

impl ApprovalPolicy {
    /// Why the finding as a whole waits for approval (its type or severity), if it does.
    pub fn finding_rule(&self, finding_type: &str, severity: Option<f64>) -> Option<String> {
        if !self.enabled {
            return None;
        }
        if let Some(prefix) = self
            .type_prefixes
            .iter()
            .find(|p| finding_type.starts_with(p.as_str()))
        {
            return Some(format!(
                "approval required: the finding type starts with {prefix} (ApprovalTypePrefixes)"
            ));
        }
        match (self.severity_band, severity) {
            (Some((low, high)), Some(sev)) if (low..=high).contains(&sev) => Some(format!(
                "approval required: severity {sev} is in {low}-{high} (ApprovalSeverityBand)"
            )),
            _ => None,
        }
    }
}

/// The default blast-radius cap. GuardDuty lists at most 25 compromised instances per shared
/// resource of an attack sequence, and the groups it has been seen to report are a few
/// instances; ten contains every such group while bounding what one wrong finding can isolate
/// to ten instances, and keeps one finding's mutating EC2 calls (about 15 per instance) well
/// inside EC2's request-token bucket for mutating actions.
pub const DEFAULT_MAX_INSTANCES: usize = 10;

pub const DEFAULT_EXEMPTION_TAG: &str = "ec2-quarantine-exempt";

/// The default rate cap: 20 automatic containments per account per rolling hour. Two findings
/// naming as many instances as the blast-radius cap allows (10 each) are contained in full; a
/// noisy detector or a scanner mistaken for an attacker, which produce a finding per instance
/// they touch, isolate at most 20 instances before a person looks. Real compromises seen by
/// GuardDuty name a few instances; raise it (up to 1,000) for fleets where more is expected.
pub const DEFAULT_MAX_CONTAINMENTS_PER_HOUR: usize = 20;

/// The highest rate cap the template takes.
pub const MAX_CONTAINMENTS_PER_HOUR_LIMIT: usize = 1000;

impl Default for TriagePolicy {
    /// Every type the rule passes, any severity, ACTOR instances only, the default exemption tag.
    fn default() -> TriagePolicy {
        TriagePolicy {
            act_on: Vec::new(),
            notify_only: Vec::new(),
            severity_threshold: 0.0,
            contain_targets: false,
            exemption_tag: DEFAULT_EXEMPTION_TAG.to_owned(),
            contain_container_hosts: false,
            max_instances: DEFAULT_MAX_INSTANCES,
            max_containments_per_hour: None,
            approval: ApprovalPolicy::default(),
        }
    }
}

/// Every setting of the responder.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings {
    /// Report what each step would do and change nothing (`DRY_RUN`).
    pub dry_run: bool,
    pub role_action: RoleAction,
    /// Whether `deny-all` applies to a role that other instances use too
    /// (`DENY_ALL_SHARED_ROLES`); by default such a role gets `revoke-instance`.
    pub deny_all_shared_roles: bool,
    pub auto_scaling_action: AutoScalingAction,
    pub triage: TriagePolicy,
    pub snapshot_lock: SnapshotLock,
}

/// The number a setting holds, within `range`: `default` when it is unset, else an error naming
/// the variable, its value and the range (`what` says what it counts: "a whole number of days").
pub(crate) fn number_in<T>(
    name: &str,
    value: Option<&str>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    what: &str,
) -> Result<T, Error>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let Some(s) = value else {
        return Ok(default);
    };
    s.parse::<T>()
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| {
            Error::Misconfigured(format!(
                "{name} {s:?} is not {what} from {} to {}",
                range.start(),
                range.end()
            ))
        })
}

impl Settings {
    pub fn from_env() -> Result<Settings, Error> {
        Settings::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup` (the environment, or a table in tests).
    ///
    /// One piece on purpose: one block per setting, each named as the template names it.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Settings, Error> {
        let var = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let list = |name: &str| -> Vec<String> {
            var(name)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let boolean = |name: &str| -> Result<bool, Error> {
            match var(name).as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("false") => Ok(false),
                Some("true") => Ok(true),
                Some(other) => Err(Error::Misconfigured(format!(
                    "{name}: {other:?} is neither true nor false"
                ))),
            }
        };
        let choice = |name: &str, default: &str| -> Result<serde_json::Value, Error> {
            Ok(serde_json::Value::String(
                var(name).unwrap_or_else(|| default.to_owned()),
            ))
        };
        let role_action =
            serde_json::from_value(choice("ROLE_ACTION", "deny-all")?).map_err(|_| {
                Error::Misconfigured(
                    "ROLE_ACTION must be one of deny-all, revoke-sessions, revoke-instance, none"
                        .into(),
                )
            })?;
        let auto_scaling_action = serde_json::from_value(choice("AUTO_SCALING_ACTION", "standby")?)
            .map_err(|_| {
                Error::Misconfigured(
                    "AUTO_SCALING_ACTION must be one of standby, detach, none".into(),
                )
            })?;
        let severity_threshold = number_in(
            "SEVERITY_THRESHOLD",
            var("SEVERITY_THRESHOLD").as_deref(),
            0.0,
            0.0..=10.0,
            "a number",
        )?;
        let max_instances = number_in(
            "MAX_INSTANCES_PER_FINDING",
            var("MAX_INSTANCES_PER_FINDING").as_deref(),
            DEFAULT_MAX_INSTANCES,
            1..=crate::domain::finding::MAX_NAMED_INSTANCES,
            "a whole number",
        )?;
        let max_containments_per_hour = number_in(
            "MAX_CONTAINMENTS_PER_HOUR",
            var("MAX_CONTAINMENTS_PER_HOUR").as_deref(),
            DEFAULT_MAX_CONTAINMENTS_PER_HOUR,
            1..=MAX_CONTAINMENTS_PER_HOUR_LIMIT,
            "a whole number",
        )?;
        let severity_band = match var("APPROVAL_SEVERITY_BAND") {
            None => None,
            Some(s) => Some(
                s.split_once('-')
                    .and_then(|(low, high)| {
                        Some((low.trim().parse::<f64>().ok()?, high.trim().parse::<f64>().ok()?))
                    })
                    .filter(|(low, high)| (0.0..=10.0).contains(low) && (*low..=10.0).contains(high))
                    .ok_or_else(|| {
                        Error::Misconfigured(format!(
                            "APPROVAL_SEVERITY_BAND {s:?} is not LOW-HIGH with 0 <= LOW <= HIGH <= 10"
                        ))
                    })?,
            ),
        };
        let approval_tag = match var("APPROVAL_TAG") {
            None => None,
            Some(s) => {
                let (key, value) = match s.split_once('=') {
                    Some((k, v)) => (k.trim().to_owned(), Some(v.trim().to_owned())),
                    None => (s.clone(), None),
                };
                if key.is_empty() || key.chars().count() > 128 || key.starts_with("aws:") {
                    return Err(Error::Misconfigured(format!(
                        "APPROVAL_TAG {s:?} is not Key=Value or Key (an EC2 tag key, 1 to 128 characters, not aws:)"
                    )));
                }
                Some((key, value))
            }
        };
        let on_timeout = serde_json::from_value(choice("APPROVAL_TIMEOUT_ACTION", "notify-only")?)
            .map_err(|_| {
                Error::Misconfigured(
                    "APPROVAL_TIMEOUT_ACTION must be one of notify-only, contain".into(),
                )
            })?;
        let approval_timeout = number_in(
            "APPROVAL_TIMEOUT_SECONDS",
            var("APPROVAL_TIMEOUT_SECONDS").as_deref(),
            DEFAULT_APPROVAL_TIMEOUT_SECS,
            APPROVAL_TIMEOUT_RANGE_SECS,
            "a whole number of seconds",
        )?;
        let lock_mode = serde_json::from_value(choice("SNAPSHOT_LOCK_MODE", "governance")?)
            .map_err(|_| {
                Error::Misconfigured(
                    "SNAPSHOT_LOCK_MODE must be one of governance, compliance, none".into(),
                )
            })?;
        let lock_days = number_in(
            "SNAPSHOT_LOCK_DAYS",
            var("SNAPSHOT_LOCK_DAYS").as_deref(),
            DEFAULT_SNAPSHOT_LOCK_DAYS,
            1..=36_500,
            "a whole number of days",
        )?;
        // 0: no cooling-off period.
        let cool_off_hours = Some(number_in(
            "SNAPSHOT_LOCK_COOL_OFF_HOURS",
            var("SNAPSHOT_LOCK_COOL_OFF_HOURS").as_deref(),
            DEFAULT_SNAPSHOT_LOCK_COOL_OFF_HOURS,
            0..=72,
            "a whole number of hours",
        )?)
        .filter(|&hours| hours != 0);
        Ok(Settings {
            snapshot_lock: SnapshotLock {
                mode: lock_mode,
                days: lock_days,
                cool_off_hours,
            },
            dry_run: boolean("DRY_RUN")?,
            role_action,
            deny_all_shared_roles: boolean("DENY_ALL_SHARED_ROLES")?,
            auto_scaling_action,
            triage: TriagePolicy {
                act_on: list("ACT_ON_TYPE_PREFIXES"),
                notify_only: list("NOTIFY_ONLY_TYPE_PREFIXES"),
                severity_threshold,
                contain_targets: boolean("CONTAIN_TARGETS")?,
                exemption_tag: var("EXEMPTION_TAG_KEY")
                    .unwrap_or_else(|| DEFAULT_EXEMPTION_TAG.to_owned()),
                contain_container_hosts: boolean("CONTAIN_CONTAINER_HOSTS")?,
                max_instances,
                max_containments_per_hour: Some(max_containments_per_hour),
                approval: ApprovalPolicy {
                    enabled: boolean("APPROVALS")?,
                    type_prefixes: list("APPROVAL_TYPE_PREFIXES"),
                    severity_band,
                    tag: approval_tag,
                    on_timeout,
                    timeout_secs: approval_timeout,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Settings, Error> {
        Settings::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn snapshots_are_locked_in_governance_mode_for_90_days_unless_told_otherwise() {
        assert_eq!(read(&[]).unwrap().snapshot_lock, SnapshotLock::default());
        let lock = read(&[
            ("SNAPSHOT_LOCK_MODE", "compliance"),
            ("SNAPSHOT_LOCK_DAYS", "3650"),
            ("SNAPSHOT_LOCK_COOL_OFF_HOURS", "0"),
        ])
        .unwrap()
        .snapshot_lock;
        assert_eq!(
            lock,
            SnapshotLock {
                mode: SnapshotLockMode::Compliance,
                days: 3650,
                cool_off_hours: None
            }
        );
        assert_eq!(
            read(&[("SNAPSHOT_LOCK_MODE", "none")])
                .unwrap()
                .snapshot_lock
                .mode,
            SnapshotLockMode::None
        );
        for (name, bad) in [
            ("SNAPSHOT_LOCK_MODE", "legal-hold"),
            ("SNAPSHOT_LOCK_DAYS", "0"),
            ("SNAPSHOT_LOCK_DAYS", "36501"),
            ("SNAPSHOT_LOCK_DAYS", "7.5"),
            ("SNAPSHOT_LOCK_COOL_OFF_HOURS", "73"),
            ("SNAPSHOT_LOCK_COOL_OFF_HOURS", "-1"),
        ] {
            let err = read(&[(name, bad)]).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={bad}: {err}");
        }
    }

    #[test]
    fn a_number_outside_its_range_is_named_with_its_value_and_the_range() {
        assert_eq!(number_in("N", None, 7, 1..=9, "a whole number").unwrap(), 7);
        assert_eq!(
            number_in("N", Some("9"), 7, 1..=9, "a whole number").unwrap(),
            9
        );
        for bad in ["0", "10", "x", "1.5", ""] {
            let err = number_in("N", Some(bad), 7_u32, 1..=9, "a whole number of days");
            assert_eq!(
                err.unwrap_err().to_string(),
                Error::Misconfigured(format!(
                    "N {bad:?} is not a whole number of days from 1 to 9"
                ))
                .to_string()
            );
        }
        let nan = number_in(
            "SEVERITY_THRESHOLD",
            Some("NaN"),
            0.0,
            0.0..=10.0,
            "a number",
        );
        assert!(nan.unwrap_err().to_string().contains("from 0 to 10"));
    }

    #[test]
    fn defaults_contain_fully() {
        let s = read(&[]).unwrap();
        assert!(!s.dry_run);
        assert_eq!(s.role_action, RoleAction::DenyAll);
        assert_eq!(s.auto_scaling_action, AutoScalingAction::Standby);
        assert!(!s.triage.contain_targets);
        assert_eq!(s.triage.exemption_tag, DEFAULT_EXEMPTION_TAG);
        assert!(s.triage.act_on.is_empty() && s.triage.notify_only.is_empty());
    }

    #[test]
    fn every_documented_value_is_read() {
        let s = read(&[
            ("DRY_RUN", "True"),
            ("ROLE_ACTION", "revoke-sessions"),
            ("AUTO_SCALING_ACTION", "detach"),
            (
                "ACT_ON_TYPE_PREFIXES",
                " Backdoor:EC2/, CryptoCurrency:EC2/ ,",
            ),
            ("NOTIFY_ONLY_TYPE_PREFIXES", "Recon:EC2/"),
            ("SEVERITY_THRESHOLD", "7"),
            ("CONTAIN_TARGETS", "true"),
            ("EXEMPTION_TAG_KEY", "do-not-quarantine"),
            ("MAX_INSTANCES_PER_FINDING", "25"),
            ("CONTAIN_CONTAINER_HOSTS", "true"),
            ("MAX_CONTAINMENTS_PER_HOUR", "150"),
        ])
        .unwrap();
        assert_eq!(s.triage.max_containments_per_hour, Some(150));
        assert_eq!(
            read(&[]).unwrap().triage.max_containments_per_hour,
            Some(DEFAULT_MAX_CONTAINMENTS_PER_HOUR)
        );
        assert!(s.triage.contain_container_hosts);
        assert!(!read(&[]).unwrap().triage.contain_container_hosts);
        assert_eq!(s.triage.max_instances, 25);
        assert_eq!(
            read(&[]).unwrap().triage.max_instances,
            DEFAULT_MAX_INSTANCES
        );
        assert!(s.dry_run);
        assert_eq!(s.role_action, RoleAction::RevokeSessions);
        assert_eq!(s.auto_scaling_action, AutoScalingAction::Detach);
        assert_eq!(s.triage.act_on, ["Backdoor:EC2/", "CryptoCurrency:EC2/"]);
        assert_eq!(s.triage.notify_only, ["Recon:EC2/"]);
        assert_eq!(s.triage.severity_threshold, 7.0);
        assert!(s.triage.contain_targets);
        assert_eq!(s.triage.exemption_tag, "do-not-quarantine");
        assert_eq!(
            read(&[("ROLE_ACTION", "none")]).unwrap().role_action,
            RoleAction::None
        );
        assert_eq!(
            read(&[("ROLE_ACTION", "revoke-instance")])
                .unwrap()
                .role_action,
            RoleAction::RevokeInstance
        );
        assert!(!read(&[]).unwrap().deny_all_shared_roles);
        assert!(
            read(&[("DENY_ALL_SHARED_ROLES", "true")])
                .unwrap()
                .deny_all_shared_roles
        );
    }

    #[test]
    fn wrong_values_fail_init_naming_the_variable() {
        for (name, value) in [
            ("DRY_RUN", "yes"),
            ("ROLE_ACTION", "delete-role"),
            ("AUTO_SCALING_ACTION", "terminate"),
            ("SEVERITY_THRESHOLD", "eleven"),
            ("SEVERITY_THRESHOLD", "11"),
            ("CONTAIN_TARGETS", "1"),
            ("DENY_ALL_SHARED_ROLES", "yes"),
            ("MAX_INSTANCES_PER_FINDING", "0"),
            ("CONTAIN_CONTAINER_HOSTS", "yes"),
            ("MAX_INSTANCES_PER_FINDING", "101"),
            ("MAX_INSTANCES_PER_FINDING", "ten"),
            ("MAX_CONTAINMENTS_PER_HOUR", "0"),
            ("MAX_CONTAINMENTS_PER_HOUR", "1001"),
            ("MAX_CONTAINMENTS_PER_HOUR", "-3"),
            ("APPROVALS", "on"),
            ("APPROVAL_SEVERITY_BAND", "7"),
            ("APPROVAL_SEVERITY_BAND", "8-4"),
            ("APPROVAL_SEVERITY_BAND", "4-11"),
            ("APPROVAL_TAG", "=production"),
            ("APPROVAL_TAG", "aws:cloudformation:stack-name"),
            ("APPROVAL_TIMEOUT_ACTION", "terminate"),
            ("APPROVAL_TIMEOUT_SECONDS", "59"),
            ("APPROVAL_TIMEOUT_SECONDS", "604801"),
            ("APPROVAL_TIMEOUT_SECONDS", "an hour"),
        ] {
            let err = read(&[(name, value)]).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn the_approval_policy_is_read_and_matched() {
        let off = read(&[("APPROVAL_TYPE_PREFIXES", "Backdoor:")]).unwrap();
        assert_eq!(
            off.triage
                .approval
                .finding_rule("Backdoor:EC2/X", Some(8.0)),
            None
        );
        let s = read(&[
            ("APPROVALS", "true"),
            ("APPROVAL_TYPE_PREFIXES", "Backdoor:EC2/, Trojan:"),
            ("APPROVAL_SEVERITY_BAND", " 4 - 6.9 "),
            ("APPROVAL_TAG", "Environment=production"),
            ("APPROVAL_TIMEOUT_ACTION", "contain"),
            ("APPROVAL_TIMEOUT_SECONDS", "900"),
        ])
        .unwrap();
        let a = &s.triage.approval;
        assert_eq!(a.severity_band, Some((4.0, 6.9)));
        assert_eq!(
            a.tag,
            Some(("Environment".to_owned(), Some("production".to_owned())))
        );
        assert_eq!(a.on_timeout, crate::approval::OnTimeout::Contain);
        assert_eq!(a.timeout_secs, 900);
        assert_eq!(
            read(&[]).unwrap().triage.approval.timeout_secs,
            DEFAULT_APPROVAL_TIMEOUT_SECS
        );
        assert!(
            a.finding_rule("Backdoor:EC2/C&CActivity.B", Some(8.0))
                .unwrap()
                .contains("Backdoor:EC2/")
        );
        assert!(
            a.finding_rule("Recon:EC2/PortProbe", Some(5.0))
                .unwrap()
                .contains("severity 5")
        );
        assert_eq!(a.finding_rule("Recon:EC2/PortProbe", Some(8.0)), None);
        assert_eq!(a.finding_rule("Recon:EC2/PortProbe", None), None);
        assert_eq!(
            read(&[("APPROVAL_TAG", "Critical")])
                .unwrap()
                .triage
                .approval
                .tag,
            Some(("Critical".to_owned(), None))
        );
        assert_eq!(
            read(&[]).unwrap().triage.approval.on_timeout,
            crate::approval::OnTimeout::NotifyOnly
        );
    }
}
