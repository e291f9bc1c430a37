//! Role containment: a managed DenyAll policy on the instance's role, and an inline deny of
//! every session issued before now, so that credentials already stolen stop working too.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{Filter, IamInstanceProfileSpecification, InstanceStateName};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use crate::aws::context::{Clients, Ctx};
use crate::aws::role_policy;
use crate::aws::{instance, profile};
use crate::case::{Claim, Previous};
use crate::domain::finding::{Resolution, StepRequest, Target, is_role_name};
use crate::domain::outcome::{MAX_LISTED, Outcome, Plan, PlannedAction, Tally};
use crate::domain::settings::RoleAction;
use crate::error::Error;
use crate::now_rfc3339;

/// A session deny older than this belongs to an earlier containment: a new one moves its cutoff.
pub const RENEW_SESSION_DENY_AFTER_SECS: i64 = 30 * 60;
/// The managed policy attached to contained roles, created once per account.
pub const DENY_ALL_POLICY_NAME: &str = "ec2-quarantine-DenyAll";
/// Its path, which also scopes the responder's IAM permissions to it.
pub const POLICY_PATH: &str = "/ec2-quarantine/";
/// The instance profile that replaces the instance's own: it holds no role, so the instance gets
/// no credentials from its metadata service.
pub const QUARANTINE_PROFILE_NAME: &str = "ec2-quarantine-quarantined";
/// The inline policy that denies sessions issued before containment.
pub const REVOKE_SESSIONS_POLICY_NAME: &str = "ec2-quarantine-revoke-older-sessions";
/// The prefix of the inline policy, one per contained instance, that denies the credentials EC2
/// delivered to that instance (`revoke-instance`); the instance id follows.
pub const REVOKE_INSTANCE_POLICY_PREFIX: &str = "ec2-quarantine-revoke-";
/// The most instance profile associations read to find the other instances using a role: a
/// region with more is reported as "at least" the count found.
pub const MAX_SCANNED_ASSOCIATIONS: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleReport {
    pub role_name: String,
    /// The configured role action (`ROLE_ACTION`).
    #[serde(default)]
    pub role_action: RoleAction,
    pub role_arn: String,
    pub deny_all_policy_arn: String,
    pub deny_all: Change,
    pub revoke_sessions: Change,
    /// The deny of this instance's own credentials wherever they are used (`revoke-instance`).
    #[serde(default = "not_configured")]
    pub revoke_instance: Change,
    /// The cutoff written by this run; `None` when an earlier run's deny was kept.
    pub sessions_issued_before: Option<String>,
    /// The instance's profile swapped for the quarantine profile (`None`: it had none).
    #[serde(default)]
    pub instance_profile: Option<ProfileSwap>,
    /// Other instances that use the role (the first [`MAX_LISTED`]).
    pub other_instances: Vec<String>,
    /// How many other instances use the role (at least this many when `other_instances_more`).
    #[serde(default)]
    pub other_instances_total: usize,
    /// The count stopped at [`MAX_SCANNED_ASSOCIATIONS`] profile associations: there may be more.
    #[serde(default)]
    pub other_instances_more: bool,
    /// Set when the other instances could not be listed (the role was then treated as shared).
    pub other_instances_error: Option<String>,
    /// What was not done or not recorded, in plain words (a `deny-all` turned into
    /// `revoke-instance` on a shared role, a record the tag quota refused).
    #[serde(default)]
    pub warnings: Vec<String>,
}

fn not_configured() -> Change {
    Change::NotConfigured
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileSwap {
    /// The profile the instance had (for release); `None` when an earlier run swapped it.
    pub previous_profile_arn: Option<String>,
    pub change: Change,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Applied,
    AlreadyInPlace,
    /// The configured role action does not include it (`ROLE_ACTION`).
    NotConfigured,
}

pub fn deny_all_policy_arn(partition: &str, account_id: &str) -> String {
    format!("arn:{partition}:iam::{account_id}:policy{POLICY_PATH}{DENY_ALL_POLICY_NAME}")
}

pub fn deny_all_document() -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "QuarantineDenyAll",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*"
        }]
    })
    .to_string()
}

/// Denies every request signed with credentials issued before `cutoff` (the IAM console's
/// "revoke active sessions").
pub fn revoke_sessions_document(cutoff: &str) -> String {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "QuarantineRevokeOlderSessions",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"DateLessThan": {"aws:TokenIssueTime": cutoff}}
        }]
    })
    .to_string()
}

/// Denies every request signed with credentials that EC2 delivered to the instance
/// `instance_arn`, wherever they are used: IAM puts `ec2:SourceInstanceARN` in the context of
/// requests signed with an instance's role credentials
/// (https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_condition-keys.html#condition-keys-ec2instancesourcevpc),
/// so stolen copies are denied too, and the other instances of the role are not. While the
/// instance is contained the deny has no time limit (credentials it obtains later, should the
/// profile swap fail, are denied too); release dates it (`issued_before`), so that credentials
/// issued after the release work and the ones stolen before stay denied.
pub fn revoke_instance_document(instance_arn: &str, issued_before: Option<&str>) -> String {
    let mut condition = json!({"StringEquals": {"ec2:SourceInstanceARN": instance_arn}});
    if let Some(cutoff) = issued_before {
        condition["DateLessThan"] = json!({"aws:TokenIssueTime": cutoff});
    }
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "QuarantineRevokeInstanceCredentials",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": condition
        }]
    })
    .to_string()
}

/// The name of the inline policy that denies the credentials of `instance_id`.
pub fn revoke_instance_policy_name(instance_id: &str) -> String {
    format!("{REVOKE_INSTANCE_POLICY_PREFIX}{instance_id}")
}

/// Contains the role of the instance a finding names (the Lambda handler).
pub async fn contain_role(
    ctx: &Ctx,
    request: impl Into<StepRequest>,
) -> Result<Outcome<RoleReport>, Error> {
    super::for_target(ctx, request.into(), "role", |clients, target| async move {
        contain_instance_role(&clients, &target).await
    })
    .await
}

#[tracing::instrument(skip_all, fields(finding_id = %target.finding_id, instance_id = %target.instance_id, role))]
pub async fn contain_instance_role(
    clients: &Clients,
    target: &Target,
) -> Result<Outcome<RoleReport>, Error> {
    let role_name = match role_of(clients, target).await? {
        Resolution::Contain(name) => name,
        Resolution::Skip(reason) => {
            info!(%reason, "skipped");
            return Ok(Outcome::skipped(reason));
        }
    };
    tracing::Span::current().record("role", role_name.as_str());
    let claim_warning = match Box::pin(claim_role_action(clients)).await {
        Ok(warning) => warning,
        Err(skipped) => return Ok(skipped),
    };
    let role_arn = match Box::pin(read_role(&clients.iam, &role_name)).await? {
        Resolution::Contain(arn) => arn,
        Resolution::Skip(reason) => return Ok(Outcome::skipped(reason)),
    };
    let mut tally = Tally::new("role containment", &target.instance_id);
    // Who else runs with the role decides how far the role action may go.
    let others = other_instances(clients, &role_name, &target.instance_id).await;
    let action = choose_action(clients, &role_name, &others, &mut tally);
    if let Some(warning) = claim_warning {
        tally.warn(warning);
    }
    // The role's hold only where release removes the role's policies once no contained
    // instance needs them; the role itself is recorded for every action that changes it.
    let undone_on_release = matches!(action, RoleAction::DenyAll | RoleAction::RevokeSessions);
    // The role and this instance's hold on it are recorded in the case before acting: a release
    // of another instance that holds the role then sees this hold and keeps the role's
    // DenyAll. A record that cannot be written never holds the actions back; the step then
    // fails after acting (retried when the cause is transient), so that it is written.
    let recorded = if action == RoleAction::None {
        Ok(())
    } else {
        Box::pin(record_role(clients, target, &role_name, undone_on_release)).await
    };
    let acted = Box::pin(act_on_role(clients, target, &role_name, action)).await;
    if let Some(plan) = clients.plan() {
        for err in acted.errors() {
            warn!(error = %err, "dry run: could not plan a role action");
        }
        return Ok(plan.outcome());
    }
    let RoleActions {
        deny_all,
        revoke,
        revoke_instance,
        profile,
    } = acted;
    let (
        deny_all,
        (revoke_sessions, cutoff),
        revoke_instance,
        (instance_profile, profile_warnings),
    ) = match (deny_all, revoke, revoke_instance, profile) {
        (Ok(d), Ok(r), Ok(i), Ok(p)) if recorded.is_ok() => (d, r, i, p),
        (d, r, i, p) => {
            // An action failed, or its record was not written: the tally holds that failure,
            // so it finishes into the step's named error (the fallback below cannot come).
            tally_role_actions(&mut tally, &role_name, target, recorded, d, r, i, p);
            return Err(tally.finish().err().unwrap_or_else(|| {
                Error::Misconfigured("the role step's tally lost a failed action".into())
            }));
        }
    };
    for warning in profile_warnings {
        tally.warn(warning);
    }
    let warnings = tally.finish()?;
    let done = RoleActionsDone {
        action,
        deny_all,
        revoke_sessions,
        revoke_instance,
        cutoff,
        instance_profile,
    };
    Ok(role_report(
        target, role_name, role_arn, done, others, warnings,
    ))
}

/// What the role actions did, every one of them having succeeded.
struct RoleActionsDone {
    action: RoleAction,
    deny_all: Change,
    revoke_sessions: Change,
    revoke_instance: Change,
    /// Sessions issued before this time are denied.
    cutoff: Option<String>,
    instance_profile: Option<ProfileSwap>,
}

/// The step's outcome: done if any action changed something, with who else uses the role.
fn role_report(
    target: &Target,
    role_name: String,
    role_arn: String,
    done: RoleActionsDone,
    others: Result<OtherInstances, Error>,
    warnings: Vec<String>,
) -> Outcome<RoleReport> {
    let (other_instances, other_instances_total, other_instances_more, other_instances_error) =
        match others {
            Ok(o) => (o.listed, o.total, o.more, None),
            Err(err) => {
                warn!(error = %err, "could not list other instances using the role");
                (Vec::new(), 0, false, Some(err.to_string()))
            }
        };
    info!(
        action = ?done.action,
        deny_all = ?done.deny_all,
        revoke_sessions = ?done.revoke_sessions,
        revoke_instance = ?done.revoke_instance,
        instance_profile = ?done.instance_profile,
        shared_with = other_instances_total,
        "role contained"
    );
    Outcome::from_changes(
        done.deny_all == Change::Applied
            || done.revoke_sessions == Change::Applied
            || done.revoke_instance == Change::Applied
            || done
                .instance_profile
                .as_ref()
                .is_some_and(|p| p.change == Change::Applied),
        RoleReport {
            role_name,
            role_action: done.action,
            role_arn,
            deny_all_policy_arn: deny_all_policy_arn(
                &target.scope.partition,
                &target.scope.account_id,
            ),
            deny_all: done.deny_all,
            revoke_sessions: done.revoke_sessions,
            revoke_instance: done.revoke_instance,
            sessions_issued_before: done.cutoff,
            instance_profile: done.instance_profile,
            other_instances,
            other_instances_total,
            other_instances_more,
            other_instances_error,
            warnings,
        },
    )
}

/// One role action per case: an execution that meets another one's role action in progress
/// leaves it to that one (`Err`: the step's skipped outcome); once it has ended, a later
/// finding's run checks what is in place (and changes nothing that is). A claim that cannot be
/// made (the table throttled) never holds the role action back: the actions are idempotent, and
/// the warning says so.
async fn claim_role_action(clients: &Clients) -> Result<Option<String>, Outcome<RoleReport>> {
    let Some(case) = &clients.case else {
        return Ok(None);
    };
    match Box::pin(case.claim("role")).await {
        Ok(Claim::Taken {
            by,
            at,
            ended: false,
        }) => {
            info!(%by, %at, "the role action of this case is taken by another execution");
            Err(Outcome::skipped(format!(
                "the role action of case {} is done by another execution of it (started {at})",
                case.handle.case_id
            )))
        }
        Ok(_) => Ok(None),
        Err(err) => {
            warn!(error = %err, "role action not claimed in the case: acting all the same");
            Ok(Some(format!(
                "the role action could not be claimed in the case ({err}): acted all the same (its actions are idempotent)"
            )))
        }
    }
}

/// The role's ARN; a role that no longer exists, or a service-linked one (which cannot take
/// policies), is skipped with the reason.
async fn read_role(
    iam: &aws_sdk_iam::Client,
    role_name: &str,
) -> Result<Resolution<String>, Error> {
    let role = match iam.get_role().role_name(role_name).send().await {
        Ok(out) => out.role,
        Err(e) => {
            let err = Error::from_sdk("iam:GetRole", e);
            if err.aws_code() == Some("NoSuchEntity") {
                return Ok(Resolution::Skip(format!(
                    "role {role_name} no longer exists"
                )));
            }
            return Err(err);
        }
    };
    if role
        .as_ref()
        .is_some_and(|r| r.path().starts_with("/aws-service-role/"))
    {
        return Ok(Resolution::Skip(format!(
            "{role_name} is a service-linked role, which cannot take policies"
        )));
    }
    Ok(Resolution::Contain(
        role.as_ref()
            .map(|r| r.arn().to_owned())
            .unwrap_or_default(),
    ))
}

/// The role action to take: the configured one, except that DenyAll on a shared role stops
/// every instance using it, so it takes an explicit opt-in; a role whose users could not be
/// listed is taken as shared. The downgrade is a warning in the report.
fn choose_action(
    clients: &Clients,
    role_name: &str,
    others: &Result<OtherInstances, Error>,
    tally: &mut Tally,
) -> RoleAction {
    let shared = others.as_ref().map_or(true, |o| o.total > 0);
    match clients.settings.role_action {
        RoleAction::DenyAll if shared && !clients.settings.deny_all_shared_roles => {
            tally.warn(format!(
                "the role {role_name} is {}: revoke-instance instead of deny-all, so that only this instance's credentials are denied (set DenyAllSharedRoles=true to deny the role to every instance)",
                if others.is_ok() { "used by other instances" } else { "perhaps used by other instances (they could not be listed)" }
            ));
            RoleAction::RevokeInstance
        }
        configured => configured,
    }
}

/// The results of the role's actions, taken at once.
struct RoleActions {
    deny_all: Result<Change, Error>,
    revoke: Result<(Change, Option<String>), Error>,
    revoke_instance: Result<Change, Error>,
    profile: Result<(Option<ProfileSwap>, Vec<String>), Error>,
}

impl RoleActions {
    fn errors(&self) -> impl Iterator<Item = &Error> {
        [
            self.deny_all.as_ref().err(),
            self.revoke.as_ref().err(),
            self.revoke_instance.as_ref().err(),
            self.profile.as_ref().err(),
        ]
        .into_iter()
        .flatten()
    }
}

/// Takes the role actions `action` calls for, and swaps the instance profile, at once (in a dry
/// run, each is planned instead).
async fn act_on_role(
    clients: &Clients,
    target: &Target,
    role_name: &str,
    action: RoleAction,
) -> RoleActions {
    let (iam, plan) = (&clients.iam, clients.plan());
    let policy_arn = deny_all_policy_arn(&target.scope.partition, &target.scope.account_id);
    let instance_arn = target.instance_arn();
    let (deny_all, revoke, revoke_instance, profile) = futures::join!(
        async {
            match action {
                RoleAction::DenyAll => attach_deny_all(iam, plan, role_name, &policy_arn).await,
                _ => Ok(Change::NotConfigured),
            }
        },
        async {
            match action {
                RoleAction::DenyAll | RoleAction::RevokeSessions => {
                    revoke_older_sessions(iam, plan, role_name).await
                }
                _ => Ok((Change::NotConfigured, None)),
            }
        },
        async {
            match action {
                RoleAction::RevokeInstance => {
                    revoke_instance_credentials(iam, plan, role_name, target, &instance_arn).await
                }
                _ => Ok(Change::NotConfigured),
            }
        },
        quarantine_instance_profile(clients, target),
    );
    RoleActions {
        deny_all,
        revoke,
        revoke_instance,
        profile,
    }
}

/// Tallies the role actions of a step where one failed: what each did or why it failed.
#[allow(clippy::too_many_arguments)]
fn tally_role_actions(
    tally: &mut Tally,
    role_name: &str,
    target: &Target,
    recorded: Result<(), Error>,
    deny_all: Result<Change, Error>,
    revoke: Result<(Change, Option<String>), Error>,
    revoke_instance: Result<Change, Error>,
    profile: Result<(Option<ProfileSwap>, Vec<String>), Error>,
) {
    if let Err(e) = recorded {
        warn!(error = %e, "role record not written");
        tally.failed(
            format!("the case's record of the role {role_name} (release needs it to undo the role's policies)"),
            e,
        );
    }
    match tally.check("DenyAll policy", deny_all) {
        None | Some(Change::NotConfigured) => {}
        Some(_) => tally.done(format!("{DENY_ALL_POLICY_NAME} attached to {role_name}")),
    }
    match tally.check("session revocation", revoke) {
        None | Some((Change::NotConfigured, _)) => {}
        Some(_) => tally.done(format!("older sessions of {role_name} revoked")),
    }
    match tally.check("revocation of the instance's credentials", revoke_instance) {
        None | Some(Change::NotConfigured) => {}
        Some(_) => tally.done(format!("credentials of {} revoked", target.instance_id)),
    }
    if let Some((_, warnings)) = tally.check("instance profile replacement", profile) {
        tally.done("instance profile replaced by the quarantine profile");
        for warning in warnings {
            tally.warn(warning);
        }
    }
}

/// Adds the deny of the instance's own credentials ([`revoke_instance_document`], undated) to
/// the role, as an inline policy of its own per instance: concurrent containments of instances
/// sharing the role never overwrite each other's. A deny an earlier release dated is made
/// undated again (the instance is contained anew).
async fn revoke_instance_credentials(
    iam: &aws_sdk_iam::Client,
    plan: Option<&Plan>,
    role_name: &str,
    target: &Target,
    instance_arn: &str,
) -> Result<Change, Error> {
    let name = revoke_instance_policy_name(&target.instance_id);
    let wanted = revoke_instance_document(instance_arn, None);
    if role_policy::inline_policy(iam, role_name, &name)
        .await?
        .is_some_and(|found| same_document(&found, &wanted))
    {
        return Ok(Change::AlreadyInPlace);
    }
    if let Some(plan) = plan {
        plan.add(PlannedAction::unchecked(
            "iam:PutRolePolicy",
            role_name,
            format!("{name}: deny every credential EC2 delivered to {instance_arn}"),
        ));
        return Ok(Change::Applied);
    }
    iam.put_role_policy()
        .role_name(role_name)
        .policy_name(&name)
        .policy_document(wanted)
        .send()
        .await
        .map_err(|e| Error::from_sdk("iam:PutRolePolicy", e))?;
    info!(
        role = role_name,
        instance = instance_arn,
        "instance credentials revoked"
    );
    Ok(Change::Applied)
}

/// Whether an inline policy document as IAM returns it (URL-encoded JSON) says what `wanted`
/// says.
pub(crate) fn same_document(returned: &str, wanted: &str) -> bool {
    let decoded = percent_encoding::percent_decode_str(returned).decode_utf8_lossy();
    match (
        serde_json::from_str::<serde_json::Value>(&decoded),
        serde_json::from_str::<serde_json::Value>(wanted),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Replaces the instance's profile with the quarantine profile, which holds no role: the
/// instance's metadata service then hands out no credentials at all. On a running instance one
/// call swaps the association (no window without a profile); EC2 documents that call for
/// running instances, so a stopped one gets a disassociate and an associate, which work on
/// stopped instances (and a stopped instance fetches no credentials in between). An instance
/// between states is a transient failure: the step's retry finds it settled. The profile it had
/// is recorded on the instance afterwards, for release; a record that could not be written is
/// a warning. `None`: the instance has no profile association (none, or the instance is gone).
async fn quarantine_instance_profile(
    clients: &Clients,
    target: &Target,
) -> Result<(Option<ProfileSwap>, Vec<String>), Error> {
    let ec2 = &clients.ec2;
    let (association, inst) = futures::join!(
        profile::association(ec2, &target.instance_id),
        instance::describe(ec2, &target.scope, &target.instance_id),
    );
    let Some(association) = association? else {
        return Ok((None, Vec::new()));
    };
    let current = profile::arn(&association).to_owned();
    if profile::is_quarantine(&current) {
        return Ok((
            Some(ProfileSwap {
                previous_profile_arn: None,
                change: Change::AlreadyInPlace,
            }),
            Vec::new(),
        ));
    }
    // Read to choose the calls; an instance that cannot be read is taken as running, and the
    // replace call's own answer then says what is wrong.
    let state = inst
        .ok()
        .and_then(|i| i.state().and_then(|s| s.name()).cloned())
        .unwrap_or(InstanceStateName::Running);
    let plan = clients.plan();
    let existed = Box::pin(ensure_quarantine_profile(&clients.iam, plan)).await?;
    // The profile it had, recorded in the case before it is replaced (the first record stands).
    let mut warnings = Vec::new();
    if let Some(case) = clients.case.as_ref().filter(|_| plan.is_none()) {
        let previous = Previous::Profile {
            profile_arn: current.clone(),
        };
        if let Err(err) = Box::pin(case.remember(&previous)).await {
            warn!(error = %err, "record of the previous profile not written");
            warnings.push(format!(
                "the record of the previous instance profile could not be written to the case ({err}): release will not give it back; it was {current}"
            ));
        }
    }
    let swap = ProfileChangeRequest {
        instance_id: &target.instance_id,
        association_id: association.association_id().unwrap_or_default(),
        current: &current,
        existed,
    };
    Box::pin(swap_profile(ec2, plan, &state, swap)).await?;
    if plan.is_some() {
        return Ok((None, warnings));
    }
    info!(previous = %current, profile = QUARANTINE_PROFILE_NAME, ?state, "instance profile replaced");
    Ok((
        Some(ProfileSwap {
            previous_profile_arn: Some(current),
            change: Change::Applied,
        }),
        warnings,
    ))
}

/// Makes sure the empty quarantine profile exists (planned in a dry run); whether it existed
/// already. One created meanwhile by another execution is the same empty profile.
async fn ensure_quarantine_profile(
    iam: &aws_sdk_iam::Client,
    plan: Option<&Plan>,
) -> Result<bool, Error> {
    let existed = match iam
        .get_instance_profile()
        .instance_profile_name(QUARANTINE_PROFILE_NAME)
        .send()
        .await
    {
        Ok(_) => true,
        Err(e) => {
            let err = Error::from_sdk("iam:GetInstanceProfile", e);
            if err.aws_code() != Some("NoSuchEntity") {
                return Err(err);
            }
            false
        }
    };
    match (existed, plan) {
        (true, _) => {}
        (false, Some(plan)) => plan.add(PlannedAction::unchecked(
            "iam:CreateInstanceProfile",
            QUARANTINE_PROFILE_NAME,
            "the empty quarantine profile (no role)",
        )),
        (false, None) => {
            let created = iam
                .create_instance_profile()
                .instance_profile_name(QUARANTINE_PROFILE_NAME)
                .path(POLICY_PATH)
                .send()
                .await
                .map_err(|e| Error::from_sdk("iam:CreateInstanceProfile", e));
            match created {
                Err(err) if err.aws_code() != Some("EntityAlreadyExists") => return Err(err),
                _ => {}
            }
        }
    }
    Ok(existed)
}

/// The instance's profile association to swap for the quarantine profile.
struct ProfileChangeRequest<'a> {
    instance_id: &'a str,
    association_id: &'a str,
    /// The profile it has.
    current: &'a str,
    /// Whether the quarantine profile existed before this run (one just created may not be
    /// usable yet).
    existed: bool,
}

/// Swaps the instance's profile for the quarantine profile: replaced on a running instance,
/// removed and associated anew on a stopped one (EC2 replaces no association of a stopped
/// instance); an instance between states is retried. Planned instead in a dry run.
async fn swap_profile(
    ec2: &aws_sdk_ec2::Client,
    plan: Option<&Plan>,
    state: &InstanceStateName,
    swap: ProfileChangeRequest<'_>,
) -> Result<(), Error> {
    let ProfileChangeRequest {
        instance_id,
        association_id,
        current,
        existed,
    } = swap;
    let quarantine = IamInstanceProfileSpecification::builder()
        .name(QUARANTINE_PROFILE_NAME)
        .build();
    // A profile just created can take seconds to be usable: EC2's "invalid profile" answer is
    // then transient, and the step's retry succeeds.
    let young_profile = |err: Error| match err {
        Error::Aws {
            action,
            code,
            message,
            source,
        } if code == "InvalidParameterValue" && !existed => Error::Transient {
            action,
            code,
            message,
            source,
        },
        other => other,
    };
    match (state, plan) {
        (InstanceStateName::Running, Some(plan)) => plan.add(PlannedAction::unchecked(
            "ec2:ReplaceIamInstanceProfileAssociation",
            instance_id,
            format!("{current} replaced by {QUARANTINE_PROFILE_NAME}"),
        )),
        (InstanceStateName::Stopped, Some(plan)) => {
            plan.add(PlannedAction::unchecked(
                "ec2:DisassociateIamInstanceProfile",
                instance_id,
                format!("{current} removed (the instance is stopped)"),
            ));
            plan.add(PlannedAction::unchecked(
                "ec2:AssociateIamInstanceProfile",
                instance_id,
                QUARANTINE_PROFILE_NAME,
            ));
        }
        (InstanceStateName::Running, None) => {
            ec2.replace_iam_instance_profile_association()
                .association_id(association_id)
                .iam_instance_profile(quarantine)
                .send()
                .await
                .map_err(|e| {
                    young_profile(Error::from_sdk(
                        "ec2:ReplaceIamInstanceProfileAssociation",
                        e,
                    ))
                })?;
        }
        (InstanceStateName::Stopped, None) => {
            ec2.disassociate_iam_instance_profile()
                .association_id(association_id)
                .send()
                .await
                .map_err(|e| Error::from_sdk("ec2:DisassociateIamInstanceProfile", e))?;
            ec2.associate_iam_instance_profile()
                .instance_id(instance_id)
                .iam_instance_profile(quarantine)
                .send()
                .await
                .map_err(|e| {
                    young_profile(Error::from_sdk("ec2:AssociateIamInstanceProfile", e))
                })?;
        }
        (other, _) => {
            return Err(Error::Transient {
                action: "ec2:ReplaceIamInstanceProfileAssociation",
                code: "InstanceStateChanging".into(),
                message: format!(
                    "the instance is {}: its profile can be swapped once it is running or stopped",
                    other.as_str()
                ),
                source: "instance between states".into(),
            });
        }
    }
    Ok(())
}

/// The role to contain: named by an AccessKey finding, else the role in the instance profile
/// the finding saw, else the one the instance has now.
async fn role_of(clients: &Clients, target: &Target) -> Result<Resolution<String>, Error> {
    if let Some(role) = &target.role_name {
        return Ok(Resolution::Contain(role.clone()));
    }
    let profile_arn = match &target.instance_profile_arn {
        Some(arn) => arn.clone(),
        None => {
            let inst = instance::describe(&clients.ec2, &target.scope, &target.instance_id).await?;
            match inst.iam_instance_profile().and_then(|p| p.arn()) {
                Some(arn) => arn.to_owned(),
                None => {
                    return Ok(Resolution::Skip(
                        "the instance has no instance profile".into(),
                    ));
                }
            }
        }
    };
    let profile_name = profile_arn.rsplit('/').next().unwrap_or_default();
    let profile = match clients
        .iam
        .get_instance_profile()
        .instance_profile_name(profile_name)
        .send()
        .await
    {
        Ok(out) => out.instance_profile,
        Err(e) => {
            let err = Error::from_sdk("iam:GetInstanceProfile", e);
            if err.aws_code() == Some("NoSuchEntity") {
                return Ok(Resolution::Skip(format!(
                    "instance profile {profile_name} no longer exists"
                )));
            }
            return Err(err);
        }
    };
    match profile
        .as_ref()
        .and_then(|p| p.roles().first())
        .map(|r| r.role_name())
    {
        Some(name) if is_role_name(name) => Ok(Resolution::Contain(name.to_owned())),
        _ => Ok(Resolution::Skip(format!(
            "instance profile {profile_name} holds no role"
        ))),
    }
}

async fn attach_deny_all(
    iam: &aws_sdk_iam::Client,
    plan: Option<&Plan>,
    role_name: &str,
    policy_arn: &str,
) -> Result<Change, Error> {
    // The policy's default version when it exists.
    let (found, attached) = futures::try_join!(
        async {
            match iam.get_policy().policy_arn(policy_arn).send().await {
                Ok(out) => Ok(Some(
                    out.policy()
                        .and_then(|p| p.default_version_id())
                        .map(str::to_owned),
                )),
                Err(e) => {
                    let err = Error::from_sdk("iam:GetPolicy", e);
                    if err.aws_code() == Some("NoSuchEntity") {
                        Ok(None)
                    } else {
                        Err(err)
                    }
                }
            }
        },
        async {
            let out = iam
                .list_attached_role_policies()
                .role_name(role_name)
                .path_prefix(POLICY_PATH)
                .send()
                .await
                .map_err(|e| Error::from_sdk("iam:ListAttachedRolePolicies", e))?;
            Ok(out
                .attached_policies()
                .iter()
                .any(|p| p.policy_arn() == Some(policy_arn)))
        }
    )?;
    if attached {
        return Ok(Change::AlreadyInPlace);
    }
    let exists = found.is_some();
    if let Some(plan) = plan {
        if !exists {
            plan.add(PlannedAction::unchecked(
                "iam:CreatePolicy",
                policy_arn,
                "the DenyAll managed policy",
            ));
        }
        plan.add(PlannedAction::unchecked(
            "iam:AttachRolePolicy",
            role_name,
            policy_arn,
        ));
        return Ok(Change::Applied);
    }
    if !exists {
        let created = iam
            .create_policy()
            .policy_name(DENY_ALL_POLICY_NAME)
            .path(POLICY_PATH)
            .description("Denies every action. Attached by ec2-quarantine to the roles of compromised instances.")
            .policy_document(deny_all_document())
            .send()
            .await;
        if let Err(e) = created {
            let err = Error::from_sdk("iam:CreatePolicy", e);
            // Created meanwhile (by another execution, or by someone else): read below.
            if err.aws_code() != Some("EntityAlreadyExists") {
                return Err(err);
            }
            verify_deny_all(iam, policy_arn, None).await?;
        }
    } else {
        verify_deny_all(iam, policy_arn, found.flatten()).await?;
    }
    iam.attach_role_policy()
        .role_name(role_name)
        .policy_arn(policy_arn)
        .send()
        .await
        .map_err(|e| Error::from_sdk("iam:AttachRolePolicy", e))?;
    info!(role = role_name, policy = policy_arn, "DenyAll attached");
    Ok(Change::Applied)
}

/// Whether the policy under the DenyAll name is the tool's: a policy someone else created
/// there first (anyone allowed `iam:CreatePolicy` can) may allow what it likes, and attaching it
/// to a compromised role would give that role more, not less.
async fn verify_deny_all(
    iam: &aws_sdk_iam::Client,
    policy_arn: &str,
    version: Option<String>,
) -> Result<(), Error> {
    let version = match version {
        Some(version) => version,
        None => iam
            .get_policy()
            .policy_arn(policy_arn)
            .send()
            .await
            .map_err(|e| Error::from_sdk("iam:GetPolicy", e))?
            .policy()
            .and_then(|p| p.default_version_id())
            .unwrap_or_default()
            .to_owned(),
    };
    let document = iam
        .get_policy_version()
        .policy_arn(policy_arn)
        .version_id(&version)
        .send()
        .await
        .map_err(|e| Error::from_sdk("iam:GetPolicyVersion", e))?
        .policy_version()
        .and_then(|v| v.document())
        .unwrap_or_default()
        .to_owned();
    if role_policy::denies_everything(&document) {
        return Ok(());
    }
    Err(Error::Misconfigured(format!(
        "{policy_arn} is not the tool's DenyAll (its default version {version} does not only deny every action): not attached; delete or fix it, then run the step again"
    )))
}

async fn revoke_older_sessions(
    iam: &aws_sdk_iam::Client,
    plan: Option<&Plan>,
    role_name: &str,
) -> Result<(Change, Option<String>), Error> {
    // Release keeps this deny (credentials issued before containment stay dead), so one found
    // may be an earlier containment's: it stands only if its cutoff is recent (this case's
    // own, written by an earlier attempt of the step); an older one moves to now.
    let cutoff = now_rfc3339();
    if let Some(existing) =
        role_policy::inline_policy(iam, role_name, REVOKE_SESSIONS_POLICY_NAME).await?
        && role_policy::session_cutoff(&existing)
            .is_some_and(|c| role_policy::is_recent(&c, RENEW_SESSION_DENY_AFTER_SECS))
    {
        return Ok((Change::AlreadyInPlace, None));
    }
    if let Some(plan) = plan {
        plan.add(PlannedAction::unchecked(
            "iam:PutRolePolicy",
            role_name,
            format!("{REVOKE_SESSIONS_POLICY_NAME}: deny sessions issued before {cutoff}"),
        ));
        return Ok((Change::Applied, Some(cutoff)));
    }
    iam.put_role_policy()
        .role_name(role_name)
        .policy_name(REVOKE_SESSIONS_POLICY_NAME)
        .policy_document(revoke_sessions_document(&cutoff))
        .send()
        .await
        .map_err(|e| Error::from_sdk("iam:PutRolePolicy", e))?;
    info!(role = role_name, %cutoff, "sessions issued before cutoff revoked");
    Ok((Change::Applied, Some(cutoff)))
}

/// Records the role in the case and, where release removes the role's policies, the
/// instance's hold on it (in the responder's table: the role's own tags are never read). The
/// role's quarantine policies go when the last hold does.
async fn record_role(
    clients: &Clients,
    target: &Target,
    role_name: &str,
    hold: bool,
) -> Result<(), Error> {
    if let Some(plan) = clients.plan() {
        if hold {
            plan.add(PlannedAction::unchecked(
                "dynamodb:PutItem",
                role_name,
                format!("the case's hold of {} on the role", target.instance_id),
            ));
        }
        return Ok(());
    }
    let Some(case) = &clients.case else {
        // The case table could not be reached when the step began: worth retrying the step.
        // (No case and no such failure: the step runs outside a case, as a library call.)
        return match &clients.case_unavailable {
            Some(why) => Err(Error::Transient {
                action: "dynamodb:PutItem",
                code: "CaseUnavailable".into(),
                message: why.clone(),
                source: "case unavailable".into(),
            }),
            None => Ok(()),
        };
    };
    let role = Previous::Role {
        role_name: role_name.to_owned(),
    };
    if hold {
        futures::try_join!(
            Box::pin(case.remember(&role)),
            case.store.hold_role(
                &target.scope,
                role_name,
                &target.instance_id,
                &case.handle.case_id
            )
        )?;
    } else {
        Box::pin(case.remember(&role)).await?;
    }
    Ok(())
}

/// The other instances that run with a role.
struct OtherInstances {
    /// The first [`MAX_LISTED`], sorted.
    listed: Vec<String>,
    total: usize,
    /// The scan stopped at [`MAX_SCANNED_ASSOCIATIONS`]: `total` is a lower bound.
    more: bool,
}

/// Instances other than the target that run with the role, through any of its profiles.
///
/// Read from the instance profile associations, which every instance with a profile has; at
/// most [`MAX_SCANNED_ASSOCIATIONS`] of them, page by page.
async fn other_instances(
    clients: &Clients,
    role_name: &str,
    instance_id: &str,
) -> Result<OtherInstances, Error> {
    let profiles = clients
        .iam
        .list_instance_profiles_for_role()
        .role_name(role_name)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| Error::from_sdk("iam:ListInstanceProfilesForRole", e))?;
    let arns: BTreeSet<&str> = profiles.iter().map(|p| p.arn()).collect();
    let mut ids = BTreeSet::new();
    let mut more = false;
    if !arns.is_empty() {
        let mut pages = clients
            .ec2
            .describe_iam_instance_profile_associations()
            .filters(
                Filter::builder()
                    .name("state")
                    .values("associating")
                    .values("associated")
                    .build(),
            )
            .max_results(1000)
            .into_paginator()
            .send();
        let mut scanned = 0;
        while let Some(page) = pages.next().await {
            if scanned >= MAX_SCANNED_ASSOCIATIONS {
                more = true;
                break;
            }
            let page =
                page.map_err(|e| Error::from_sdk("ec2:DescribeIamInstanceProfileAssociations", e))?;
            let associations = page.iam_instance_profile_associations();
            scanned += associations.len();
            ids.extend(
                associations
                    .iter()
                    .filter(|a| {
                        a.iam_instance_profile()
                            .and_then(|p| p.arn())
                            .is_some_and(|arn| arns.contains(arn))
                    })
                    .filter_map(|a| a.instance_id())
                    .filter(|id| *id != instance_id)
                    .map(str::to_owned),
            );
        }
    }
    Ok(OtherInstances {
        total: ids.len(),
        listed: ids.into_iter().take(MAX_LISTED).collect(),
        more,
    })
}

#[cfg(test)]
mod tests {
    use aws_sdk_iam::operation::get_role::GetRoleOutput;
    use aws_sdk_iam::types::Role;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;
    use crate::steps::testing;

    fn role(path: &str) -> Role {
        Role::builder()
            .path(path)
            .role_name("web-role")
            .role_id("AROAEXAMPLEID")
            .arn(format!("arn:aws:iam::123456789012:role{path}web-role"))
            .create_date(aws_smithy_types::DateTime::from_secs(0))
            .build()
            .expect("every required field")
    }

    /// A service-linked role cannot take policies: it is skipped with the reason, before any
    /// instance is listed or any policy written.
    #[tokio::test]
    async fn a_service_linked_role_is_skipped() {
        let get = mock!(aws_sdk_iam::Client::get_role).then_output(|| {
            GetRoleOutput::builder()
                .role(role("/aws-service-role/ec2.amazonaws.com/"))
                .build()
        });
        let mut clients = testing::clients();
        clients.iam = mock_client!(aws_sdk_iam, RuleMode::MatchAny, &[&get]);
        let outcome = contain_instance_role(&clients, &testing::target())
            .await
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::skipped("web-role is a service-linked role, which cannot take policies")
        );
    }

    /// A role that no longer exists is nothing to contain, not a failure. (The error as the SDK
    /// reads IAM's answer: its modeled exception, with the code `NoSuchEntity` IAM sends.)
    #[tokio::test]
    async fn a_role_that_no_longer_exists_is_skipped() {
        let get = mock!(aws_sdk_iam::Client::get_role).then_error(|| {
            let message = "The role with name web-role cannot be found.";
            aws_sdk_iam::operation::get_role::GetRoleError::NoSuchEntityException(
                aws_sdk_iam::types::error::NoSuchEntityException::builder()
                    .message(message)
                    .meta(
                        aws_sdk_iam::error::ErrorMetadata::builder()
                            .code("NoSuchEntity")
                            .message(message)
                            .build(),
                    )
                    .build(),
            )
        });
        let mut clients = testing::clients();
        clients.iam = mock_client!(aws_sdk_iam, RuleMode::MatchAny, &[&get]);
        let outcome = contain_instance_role(&clients, &testing::target())
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::skipped("role web-role no longer exists"));
    }
}
