//! The steps, each run by the state machine as its own Lambda function: [`triage`] the finding
//! into a plan of instances, then per instance [`isolate`] the network interfaces, take it out of
//! service ([`deregister`]: Auto Scaling, load balancers), [`snapshot`] the volumes and contain
//! the IAM [`role`]; [`notify`] the security team of what was done and what failed.
//! [`release`] undoes a containment from its case record.
//!
//! This module holds what every containment step shares: finding its target and its case, and
//! recording the step's start and end in the case.

pub mod approval;
pub mod approval_link;
pub mod collect;
pub mod deregister;
pub mod evidence_copy;
pub mod isolate;
pub mod manifest;
pub mod memory;
pub mod notify;
pub mod release;
pub mod role;
pub mod security_hub;
pub mod snapshot;
pub mod triage;

use std::future::Future;

use crate::domain::finding;
use crate::{Clients, Ctx, Error, Outcome, case};

/// Runs a containment step on its target (one of triage's plan, or the one a finding names when
/// the step runs alone), with clients for the target's account and region; a finding that names
/// nothing to contain, or an account the responder must not act in, is skipped with the reason.
pub(crate) async fn for_target<T, F, Fut>(
    ctx: &Ctx,
    request: finding::StepRequest,
    name: &'static str,
    step: F,
) -> Result<Outcome<T>, Error>
where
    T: serde::Serialize,
    F: FnOnce(Clients, finding::Target) -> Fut,
    Fut: Future<Output = Result<Outcome<T>, Error>>,
{
    let ctx = &ctx.acting_as(match name {
        "role" => "deny-role",
        other => other,
    });
    let (target, planned_case, event) = match request {
        finding::StepRequest::Planned(planned) => (planned.target, planned.case, None),
        finding::StepRequest::Finding(event) => match finding::resolve(&event)? {
            finding::Resolution::Contain(target) => (target, None, Some(event)),
            finding::Resolution::Skip(reason) => {
                tracing::info!(%reason, "skipped: the finding names nothing to contain");
                return Ok(Outcome::skipped(reason));
            }
        },
    };
    if let Some(reason) = ctx.org().refusal(&target.scope.account_id) {
        tracing::info!(%reason, "skipped: not acting in this account");
        return Ok(Outcome::skipped(reason));
    }
    let mut clients = ctx.clients(&target.scope, &target.finding_id).await?;
    if clients.plan().is_none() {
        let updated_at = event.as_ref().and_then(|e| e.detail.updated_at.as_deref());
        attach_case(ctx, planned_case, updated_at, &target, &mut clients).await;
    }
    let case = clients.case.clone();
    // The step's start in the case, beside the step (never ahead of it).
    let started = async {
        if let Some(case) = &case
            && let Err(err) = case.started(name).await
        {
            case::warn_unrecorded(name, &err);
        }
    };
    // Boxed: the SDK's futures nest deep enough to exceed rustc's layout depth limit otherwise.
    let ((), result) = futures::join!(started, Box::pin(step(clients, target)));
    if let Some(case) = case {
        // The step's end in the case: its outcome and report, or its error. A record that
        // cannot be written is logged; the step's result stands.
        let (outcome, report) = match &result {
            Ok(outcome) => (
                outcome.status().to_owned(),
                serde_json::to_string(outcome).unwrap_or_default(),
            ),
            Err(err) => (err.name().as_str().to_owned(), err.to_string()),
        };
        if let Err(err) = case.finished(name, &outcome, &report).await {
            case::warn_unrecorded(name, &err);
        }
    }
    result
}

/// The case a step records in: the one triage passed on, or else the instance's open case
/// (joined, or opened by this step when it runs alone). A case table that cannot be reached
/// never holds containment back: the step acts and reports that nothing was recorded.
async fn attach_case(
    ctx: &Ctx,
    planned: Option<case::CaseHandle>,
    updated_at: Option<&str>,
    target: &finding::Target,
    clients: &mut Clients,
) {
    let store = ctx.cases().clone();
    if let Some(handle) = planned {
        clients.case = Some(case::Recorder { store, handle });
        return;
    }
    let opened = tokio::time::timeout(
        triage::CASE_OPEN_TIMEOUT,
        Box::pin(store.open(target, updated_at, None, false)),
    )
    .await;
    let opened = opened.unwrap_or_else(|_| {
        Err(Error::Transient {
            action: "dynamodb:UpdateItem",
            code: "Timeout".into(),
            message: "the case table did not answer in time".into(),
            source: "timeout".into(),
        })
    });
    match opened {
        Ok(case::Opened::New(handle) | case::Opened::Joined { handle, .. }) => {
            clients.case = Some(case::Recorder { store, handle });
        }
        Ok(case::Opened::Released { case_id }) => {
            clients.case_unavailable = Some(format!("the finding's case {case_id} is released"));
        }
        Err(err) => {
            tracing::warn!(error = %err, "case table unavailable: acting without a record");
            clients.case_unavailable = Some(format!(
                "the case record could not be opened ({err}): nothing this step changed is recorded for release"
            ));
        }
    }
}

/// What the steps' unit tests share: a target as a real finding names it, and clients whose
/// services answer only the rules a test gives them (at the SDK boundary, with aws-smithy-mocks).
#[cfg(test)]
pub(crate) mod testing {
    use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
    use aws_sdk_ec2::types::{
        GroupIdentifier, Instance, InstanceNetworkInterface, InstanceState, InstanceStateName,
        Reservation,
    };
    use aws_smithy_mocks::{RuleMode, mock_client};

    use crate::Clients;
    use crate::domain::finding::{Target, parse_event, resolve};

    pub(crate) const INSTANCE: &str = "i-0123456789abcdef0";
    pub(crate) const VPC: &str = "vpc-0123456789abcdef0";

    /// The instance an instance-credential finding names (GuardDuty's AccessKey resource, the
    /// session named after the instance), with its role.
    pub(crate) fn target() -> Target {
        let event = parse_event(serde_json::json!({
            "detail-type": "GuardDuty Finding", "source": "aws.guardduty",
            "detail": {
                "id": "f1", "accountId": "123456789012", "region": "us-east-1",
                "type": "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS",
                "resource": {"resourceType": "AccessKey", "accessKeyDetails": {
                    "principalId": format!("AROAEXAMPLE:{INSTANCE}"), "userName": "web-role",
                    "userType": "AssumedRole"}}
            }
        }))
        .expect("a finding event");
        resolve(&event)
            .expect("a usable finding")
            .contain()
            .expect("a target")
    }

    /// Clients of every service that answer no call: a test adds the rules of the calls it
    /// expects, so an unexpected call fails it.
    pub(crate) fn clients() -> Clients {
        let config = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let mut c = Clients::new(&config, Default::default());
        c.ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &[]);
        c.iam = mock_client!(aws_sdk_iam, RuleMode::MatchAny, &[]);
        c.autoscaling = mock_client!(aws_sdk_autoscaling, RuleMode::MatchAny, &[]);
        c.elbv2 = mock_client!(aws_sdk_elasticloadbalancingv2, RuleMode::MatchAny, &[]);
        c.elb = mock_client!(aws_sdk_elasticloadbalancing, RuleMode::MatchAny, &[]);
        c
    }

    /// DescribeInstances: the instance in `state`, with one interface in the VPC and no volume.
    pub(crate) fn instance(state: InstanceStateName) -> DescribeInstancesOutput {
        let eni = InstanceNetworkInterface::builder()
            .network_interface_id("eni-0000000000000000a")
            .vpc_id(VPC)
            .groups(
                GroupIdentifier::builder()
                    .group_id("sg-0bbbbbbbbbbbbbbb0")
                    .build(),
            )
            .build();
        DescribeInstancesOutput::builder()
            .reservations(
                Reservation::builder()
                    .instances(
                        Instance::builder()
                            .instance_id(INSTANCE)
                            .vpc_id(VPC)
                            .private_ip_address("10.0.0.10")
                            .state(InstanceState::builder().name(state).build())
                            .network_interfaces(eni)
                            .build(),
                    )
                    .build(),
            )
            .build()
    }
}
