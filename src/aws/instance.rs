//! Reading the target instance, which every EC2 step starts from.

use aws_sdk_ec2::types::{Instance, InstanceStateName};

use crate::domain::finding::Scope;
use crate::error::Error;

/// Describes the instance (in the account and region `ec2` is for, which `scope` names); an
/// instance EC2 does not know is [`Error::InstanceNotFound`].
pub async fn describe(
    ec2: &aws_sdk_ec2::Client,
    scope: &Scope,
    instance_id: &str,
) -> Result<Instance, Error> {
    let not_found = || Error::InstanceNotFound {
        instance_id: instance_id.to_owned(),
        account_id: scope.account_id.clone(),
        region: scope.region.clone(),
    };
    let out = ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| {
            let err = Error::from_sdk("ec2:DescribeInstances", e);
            match err.aws_code() {
                Some("InvalidInstanceID.NotFound" | "InvalidInstanceID.Malformed") => not_found(),
                _ => err,
            }
        })?;
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(instance_id))
        .cloned()
        .ok_or_else(not_found)
}

/// Why an instance can no longer be contained, if it is terminated or being terminated.
pub fn gone_reason(instance: &Instance) -> Option<String> {
    match instance.state().and_then(|s| s.name()) {
        Some(state @ (InstanceStateName::Terminated | InstanceStateName::ShuttingDown)) => {
            Some(format!(
                "the instance is {}: nothing is left to contain",
                state.as_str()
            ))
        }
        _ => None,
    }
}
