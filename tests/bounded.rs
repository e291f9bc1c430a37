//! Lists that grow with the account stay within Step Functions' 256 KiB per state output and
//! SNS's 256 KiB per message: a role shared by 1,000 instances and an instance registered in 200
//! target groups give capped lists with their totals, and a message well under its limit.

mod common;

use common::{Fixture, record_outcome};
use ec2_quarantine::Outcome;
use ec2_quarantine::domain::outcome::MAX_LISTED;
use ec2_quarantine::steps::deregister::deregister;
use ec2_quarantine::steps::notify::{NotifyInput, StepResult, render};
use ec2_quarantine::steps::role::contain_role;

/// Step Functions' limit on a state's input or output, and SNS's on a message, in bytes.
const LIMIT: usize = 262_144;

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_thousand_sharing_instances_and_two_hundred_target_groups_stay_within_the_limits() {
    let f = Fixture::new().await;
    assert_eq!(f.launch_many(999).await, 999);
    for i in 0..200 {
        f.target_group_with(
            &format!("web-{i}"),
            &f.vpc_id,
            aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum::Instance,
            &f.instance_id,
            80,
        )
        .await;
    }

    let role = contain_role(&f.ctx, &f.event("instance-backdoor.json"))
        .await
        .unwrap();
    let role_json = serde_json::to_value(&role).unwrap();
    let Outcome::Done(report) = &role else {
        panic!("{role:?}")
    };
    assert_eq!(report.other_instances.len(), MAX_LISTED);
    assert_eq!(report.other_instances_total, 999);
    assert!(
        role_json.to_string().len() < LIMIT / 8,
        "{}",
        role_json.to_string().len()
    );

    let out = deregister(&f.ctx, &f.event("instance-backdoor.json"))
        .await
        .unwrap();
    let out_json = serde_json::to_value(&out).unwrap();
    let Outcome::Done(report) = &out else {
        panic!("{out:?}")
    };
    assert_eq!(report.targets.len(), MAX_LISTED);
    assert_eq!(report.targets_total, 200);
    assert!(
        out_json.to_string().len() < LIMIT / 8,
        "{}",
        out_json.to_string().len()
    );

    let input = NotifyInput {
        event: f.event_json("instance-backdoor.json"),
        role: Some(StepResult::Completed(role)),
        deregister: Some(StepResult::Completed(out)),
        ..NotifyInput::default()
    };
    let message = render(&input);
    assert!(message.body.len() < LIMIT / 4, "{}", message.body.len());
    assert!(
        message.body.contains("999 other instance(s)"),
        "{}",
        message.body
    );
    assert!(
        message.body.contains("200 registrations in all"),
        "{}",
        message.body
    );
    record_outcome("contained");
}
