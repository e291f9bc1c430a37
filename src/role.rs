//! Role containment: a managed DenyAll policy on the instance's role, and an inline deny of
//! every session issued before now, so that credentials already stolen stop working too.

use aws_sdk_ec2::types::{Filter, IamInstanceProfileSpecification};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use crate::context::{Clients, Ctx};
use crate::error::Error;
use crate::finding::{FindingEvent, Skip, Target, is_role_name};
use crate::outcome::{Outcome, Plan, PlannedAction};
use crate::settings::RoleAction;
use crate::{instance, now_rfc3339, profile, tags};

/// The managed policy attached to contained roles, created once per account.
pub const DENY_ALL_POLICY_NAME: &str = "ec2-quarantine-DenyAll";
/// Its path, which also scopes the responder's IAM permissions to it.
pub const POLICY_PATH: &str = "/ec2-quarantine/";
/// The instance profile that replaces the instance's own: it holds no role, so the instance gets
/// no credentials from its metadata service.
pub const QUARANTINE_PROFILE_NAME: &str = "ec2-quarantine-quarantined";
/// The inline policy that denies sessions issued before containment.
pub const REVOKE_SESSIONS_POLICY_NAME: &str = "ec2-quarantine-revoke-older-sessions";

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
    /// The cutoff written by this run; `None` when an earlier run's deny was kept.
    pub sessions_issued_before: Option<String>,
    /// The instance's profile swapped for the quarantine profile (`None`: it had none).
    #[serde(default)]
    pub instance_profile: Option<ProfileSwap>,
    /// Other instances that use the role and lose their permissions with it.
    pub other_instances: Vec<String>,
    /// Set when the other instances could not be listed (containment went ahead regardless).
    pub other_instances_error: Option<String>,
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

/// Contains the role of the instance a finding names (the Lambda handler).
pub async fn contain_role(ctx: &Ctx, event: &FindingEvent) -> Result<Outcome<RoleReport>, Error> {
    crate::for_target(ctx, event, |clients, target| async move {
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
        Ok(name) => name,
        Err(Skip(reason)) => {
            info!(%reason, "skipped");
            return Ok(Outcome::skipped(reason));
        }
    };
    tracing::Span::current().record("role", role_name.as_str());
    let iam = &clients.iam;

    let role = match iam.get_role().role_name(&role_name).send().await {
        Ok(out) => out.role,
        Err(e) => {
            let err = Error::from_sdk("iam:GetRole", e);
            if err.aws_code() == Some("NoSuchEntity") {
                return Ok(Outcome::skipped(format!(
                    "role {role_name} no longer exists"
                )));
            }
            return Err(err);
        }
    };
    let role_arn = role
        .as_ref()
        .map(|r| r.arn().to_owned())
        .unwrap_or_default();
    if role
        .as_ref()
        .is_some_and(|r| r.path().starts_with("/aws-service-role/"))
    {
        return Ok(Outcome::skipped(format!(
            "{role_name} is a service-linked role, which cannot take policies"
        )));
    }

    let policy_arn = deny_all_policy_arn(&target.scope.partition, &target.scope.account_id);
    let action = clients.settings.role_action;
    let plan = clients.plan();
    let (deny_all, revoke, profile, others, hold) = futures::join!(
        async {
            match action {
                RoleAction::DenyAll => attach_deny_all(iam, plan, &role_name, &policy_arn).await,
                _ => Ok(Change::NotConfigured),
            }
        },
        async {
            match action {
                RoleAction::None => Ok((Change::NotConfigured, None)),
                _ => revoke_older_sessions(iam, plan, &role_name).await,
            }
        },
        quarantine_instance_profile(
            clients,
            target,
            (action != RoleAction::None).then_some(role_name.as_str())
        ),
        other_instances(clients, &role_name, &target.instance_id),
        async {
            match action {
                RoleAction::None => Ok(()),
                _ => hold_role(clients, target, &role_name).await,
            }
        },
    );
    if let Some(plan) = plan {
        for err in [deny_all.err(), revoke.err(), profile.err(), hold.err()]
            .into_iter()
            .flatten()
        {
            warn!(error = %err, "dry run: could not plan a role action");
        }
        return Ok(plan.outcome());
    }
    let (deny_all, (revoke_sessions, cutoff), instance_profile) =
        match (deny_all, revoke, profile, hold) {
            (Ok(d), Ok(r), Ok(p), Ok(())) => (d, r, p),
            (d, r, p, h) => {
                let mut done = Vec::new();
                let mut failed = Vec::new();
                match d {
                    Ok(_) => done.push(format!("{DENY_ALL_POLICY_NAME} attached to {role_name}")),
                    Err(e) => failed.push(("DenyAll policy".to_owned(), e)),
                }
                match r {
                    Ok(_) => done.push(format!("older sessions of {role_name} revoked")),
                    Err(e) => failed.push(("session revocation".to_owned(), e)),
                }
                match p {
                    Ok(_) => {
                        done.push("instance profile replaced by the quarantine profile".to_owned())
                    }
                    Err(e) => failed.push(("instance profile replacement".to_owned(), e)),
                }
                if let Err(e) = h {
                    failed.push((
                        "record of the role's containment, for release".to_owned(),
                        e,
                    ));
                }
                return Err(Error::Incomplete {
                    step: "role containment",
                    instance_id: target.instance_id.clone(),
                    done,
                    failed,
                });
            }
        };
    let (other_instances, other_instances_error) = match others {
        Ok(ids) => (ids, None),
        Err(err) => {
            warn!(error = %err, "could not list other instances using the role");
            (Vec::new(), Some(err.to_string()))
        }
    };
    info!(
        ?deny_all,
        ?revoke_sessions,
        ?instance_profile,
        shared_with = other_instances.len(),
        "role contained"
    );
    Ok(Outcome::from_changes(
        deny_all == Change::Applied
            || revoke_sessions == Change::Applied
            || instance_profile
                .as_ref()
                .is_some_and(|p| p.change == Change::Applied),
        RoleReport {
            role_name,
            role_action: action,
            role_arn,
            deny_all_policy_arn: policy_arn,
            deny_all,
            revoke_sessions,
            sessions_issued_before: cutoff,
            instance_profile,
            other_instances,
            other_instances_error,
        },
    ))
}

/// Replaces the instance's profile with the quarantine profile, which holds no role: the
/// instance's metadata service then hands out no credentials at all. One call swaps the
/// association (no window without a profile, no race with a disassociate/associate pair). The
/// profile it had is recorded on the instance first, for release. `None`: the instance has no
/// profile association (none, or the instance is gone).
async fn quarantine_instance_profile(
    clients: &Clients,
    target: &Target,
    contained_role: Option<&str>,
) -> Result<Option<ProfileSwap>, Error> {
    let Some(association) = profile::association(&clients.ec2, &target.instance_id).await? else {
        return Ok(None);
    };
    let current = profile::arn(&association).to_owned();
    if profile::is_quarantine(&current) {
        return Ok(Some(ProfileSwap {
            previous_profile_arn: None,
            change: Change::AlreadyInPlace,
        }));
    }
    let iam = &clients.iam;
    let exists = match iam
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
    // The record for release: the profile, and the role whose policies are changed.
    let mut record = vec![tags::new(tags::PREVIOUS_PROFILE, tags::value(&current))];
    if let Some(role) = contained_role {
        record.push(tags::new(tags::ROLE, role));
    }
    let plan = clients.plan();
    match (exists, plan) {
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
                // Created meanwhile by another execution: it is the same empty profile.
                Err(err) if err.aws_code() != Some("EntityAlreadyExists") => return Err(err),
                _ => {}
            }
        }
    }
    tags::write(
        &clients.ec2,
        plan,
        &target.instance_id,
        record,
        "record of the previous profile and the role, for release",
    )
    .await?;
    if let Some(plan) = plan {
        plan.add(PlannedAction::unchecked(
            "ec2:ReplaceIamInstanceProfileAssociation",
            &target.instance_id,
            format!("{current} replaced by {QUARANTINE_PROFILE_NAME}"),
        ));
        return Ok(None);
    }
    // A profile just created can take seconds to be usable: EC2's "invalid profile" answer is
    // then transient, and the step's retry succeeds.
    clients
        .ec2
        .replace_iam_instance_profile_association()
        .association_id(association.association_id().unwrap_or_default())
        .iam_instance_profile(
            IamInstanceProfileSpecification::builder()
                .name(QUARANTINE_PROFILE_NAME)
                .build(),
        )
        .send()
        .await
        .map_err(
            |e| match Error::from_sdk("ec2:ReplaceIamInstanceProfileAssociation", e) {
                Error::Aws {
                    action,
                    code,
                    message,
                    source,
                } if code == "InvalidParameterValue" && !exists => Error::Transient {
                    action,
                    code,
                    message,
                    source,
                },
                other => other,
            },
        )?;
    info!(previous = %current, profile = QUARANTINE_PROFILE_NAME, "instance profile replaced");
    Ok(Some(ProfileSwap {
        previous_profile_arn: Some(current),
        change: Change::Applied,
    }))
}

/// The role to contain: named by an AccessKey finding, else the role in the instance profile
/// the finding saw, else the one the instance has now.
async fn role_of(clients: &Clients, target: &Target) -> Result<Result<String, Skip>, Error> {
    if let Some(role) = &target.role_name {
        return Ok(Ok(role.clone()));
    }
    let profile_arn = match &target.instance_profile_arn {
        Some(arn) => arn.clone(),
        None => {
            let inst = instance::describe(&clients.ec2, target).await?;
            match inst.iam_instance_profile().and_then(|p| p.arn()) {
                Some(arn) => arn.to_owned(),
                None => return Ok(Err(Skip("the instance has no instance profile".into()))),
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
                return Ok(Err(Skip(format!(
                    "instance profile {profile_name} no longer exists"
                ))));
            }
            return Err(err);
        }
    };
    match profile
        .as_ref()
        .and_then(|p| p.roles().first())
        .map(|r| r.role_name())
    {
        Some(name) if is_role_name(name) => Ok(Ok(name.to_owned())),
        _ => Ok(Err(Skip(format!(
            "instance profile {profile_name} holds no role"
        )))),
    }
}

async fn attach_deny_all(
    iam: &aws_sdk_iam::Client,
    plan: Option<&Plan>,
    role_name: &str,
    policy_arn: &str,
) -> Result<Change, Error> {
    let (exists, attached) = futures::try_join!(
        async {
            match iam.get_policy().policy_arn(policy_arn).send().await {
                Ok(_) => Ok(true),
                Err(e) => {
                    let err = Error::from_sdk("iam:GetPolicy", e);
                    if err.aws_code() == Some("NoSuchEntity") {
                        Ok(false)
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
            // Created meanwhile by another execution: it is the same policy.
            if err.aws_code() != Some("EntityAlreadyExists") {
                return Err(err);
            }
        }
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

async fn revoke_older_sessions(
    iam: &aws_sdk_iam::Client,
    plan: Option<&Plan>,
    role_name: &str,
) -> Result<(Change, Option<String>), Error> {
    let existing = iam
        .get_role_policy()
        .role_name(role_name)
        .policy_name(REVOKE_SESSIONS_POLICY_NAME)
        .send()
        .await;
    match existing {
        Ok(_) => return Ok((Change::AlreadyInPlace, None)),
        Err(e) => {
            let err = Error::from_sdk("iam:GetRolePolicy", e);
            if err.aws_code() != Some("NoSuchEntity") {
                return Err(err);
            }
        }
    }
    let cutoff = now_rfc3339();
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

/// Records the containment on the role: a hold per instance, which release removes; the
/// role's quarantine policies go when the last hold does.
async fn hold_role(clients: &Clients, target: &Target, role_name: &str) -> Result<(), Error> {
    let key = format!("{}{}", tags::ROLE_HOLD, target.instance_id);
    if let Some(plan) = clients.plan() {
        plan.add(PlannedAction::unchecked("iam:TagRole", role_name, key));
        return Ok(());
    }
    let role_tag = aws_sdk_iam::types::Tag::builder()
        .key(&key)
        .value(tags::value(&target.finding_id))
        .build()
        .map_err(|e| Error::Misconfigured(format!("role tag: {e}")))?;
    clients
        .iam
        .tag_role()
        .role_name(role_name)
        .tags(role_tag)
        .send()
        .await
        .map_err(|e| Error::from_sdk("iam:TagRole", e))?;
    Ok(())
}

/// Instances other than the target that run with the role, through any of its profiles.
///
/// Read from the instance profile associations, which every instance with a profile has.
async fn other_instances(
    clients: &Clients,
    role_name: &str,
    instance_id: &str,
) -> Result<Vec<String>, Error> {
    let profiles = clients
        .iam
        .list_instance_profiles_for_role()
        .role_name(role_name)
        .send()
        .await
        .map_err(|e| Error::from_sdk("iam:ListInstanceProfilesForRole", e))?;
    let arns: Vec<&str> = profiles
        .instance_profiles()
        .iter()
        .map(|p| p.arn())
        .collect();
    if arns.is_empty() {
        return Ok(Vec::new());
    }
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
        .into_paginator()
        .send();
    let mut ids = Vec::new();
    while let Some(page) = pages.next().await {
        let page =
            page.map_err(|e| Error::from_sdk("ec2:DescribeIamInstanceProfileAssociations", e))?;
        ids.extend(
            page.iam_instance_profile_associations()
                .iter()
                .filter(|a| {
                    a.iam_instance_profile()
                        .and_then(|p| p.arn())
                        .is_some_and(|arn| arns.contains(&arn))
                })
                .filter_map(|a| a.instance_id())
                .filter(|id| *id != instance_id)
                .map(str::to_owned),
        );
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}
