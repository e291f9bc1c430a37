//! The finding parser, target resolution and message rendering never panic, whatever the input,
//! and a resolved target only carries values safe to put in AWS requests.

use ec2_quarantine::domain::finding::{Resolution, is_instance_id, parse_event, resolve, targets};
use ec2_quarantine::steps::notify::{MAX_SUBJECT_CHARS, NotifyInput, render};
use proptest::prelude::*;
use serde_json::{Value, json};

/// JSON values biased towards the shapes of a finding, with hostile leaves.
fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        any::<i64>().prop_map(Value::from),
        ".{0,300}".prop_map(Value::from),
        Just(json!("i-0123456789abcdef0")),
        Just(json!("AROAEXAMPLE:i-0123456789abcdef0")),
        Just(json!("Instance")),
        Just(json!("AccessKey")),
        Just(json!("123456789012")),
        Just(json!("us-east-1")),
    ]
}

fn finding_like() -> impl Strategy<Value = Value> {
    let field = |name: &'static str| (Just(name), leaf());
    (
        prop::collection::vec(
            prop_oneof![
                field("id"),
                field("type"),
                field("severity"),
                field("accountId"),
                field("region"),
                field("partition"),
            ],
            0..6,
        ),
        leaf(),
        leaf(),
        leaf(),
        prop::option::of(leaf()),
    )
        .prop_map(|(fields, rtype, iid, principal, service)| {
            let mut detail = serde_json::Map::new();
            for (k, v) in fields {
                detail.insert(k.to_owned(), v);
            }
            detail.insert(
                "resource".into(),
                json!({
                    "resourceType": rtype,
                    "instanceDetails": {"instanceId": iid},
                    "accessKeyDetails": {"principalId": principal, "userName": "role"}
                }),
            );
            if let Some(s) = service {
                detail.insert("service".into(), json!({"additionalInfo": {"sample": s}}));
            }
            json!({
                "detail-type": "GuardDuty Finding",
                "source": "aws.guardduty",
                "account": "123456789012",
                "region": "us-east-1",
                "detail": detail
            })
        })
}

/// Attack sequences with resources of any shape: GuardDuty's resource types and hostile ones,
/// instance ids and ARNs of this and other accounts, group lists of any content.
fn sequence_like() -> impl Strategy<Value = Value> {
    let kind = prop_oneof![
        Just(json!("EC2_INSTANCE")),
        Just(json!("AUTOSCALING_AUTO_SCALING_GROUP")),
        Just(json!("EC2_IMAGE")),
        Just(json!("EKS_CLUSTER")),
        Just(json!("EC2_NETWORK_INTERFACE")),
        leaf(),
    ];
    let uid = prop_oneof![
        Just(json!("i-0123456789abcdef0")),
        Just(json!(
            "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef1"
        )),
        Just(json!(
            "arn:aws:ec2:us-east-1:999999999999:instance/i-0123456789abcdef2"
        )),
        "i-[0-9a-f]{8}".prop_map(Value::from),
        leaf(),
    ];
    let resource = (
        kind,
        uid.clone(),
        prop::option::of(leaf()),
        prop::collection::vec(uid, 0..4),
    )
        .prop_map(|(kind, uid, account, listed)| {
            let mut r = json!({"resourceType": kind, "uid": uid, "data": {
                "autoscalingAutoScalingGroup": {"ec2InstanceUids": listed.clone()},
                "ec2Image": {"ec2InstanceUids": listed.clone()},
                "eksCluster": {"ec2InstanceUids": listed}}});
            if let Some(a) = account {
                r["accountId"] = a;
            }
            r
        });
    prop::collection::vec(resource, 0..40).prop_map(|resources| {
        json!({
            "detail-type": "GuardDuty Finding", "source": "aws.guardduty",
            "account": "123456789012", "region": "us-east-1",
            "detail": {"id": "f", "type": "AttackSequence:EC2/CompromisedInstanceGroup", "severity": 9,
                "resource": {"resourceType": "AttackSequence"},
                "service": {"detection": {"sequence": {"uid": "s", "resources": resources}}}}
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_instance_of_any_attack_sequence_is_valid_and_named_in_it(event in sequence_like()) {
        let text = event.to_string();
        let parsed = parse_event(event.clone()).unwrap();
        if let Ok(Resolution::Contain(named)) = targets(&parsed) {
            let mut seen = std::collections::BTreeSet::new();
            for n in &named.targets {
                prop_assert!(n.target.check().is_ok(), "{:?}", n.target);
                prop_assert!(text.contains(&n.target.instance_id));
                prop_assert_eq!(n.target.scope.account_id.as_str(), "123456789012");
                prop_assert!(seen.insert(n.target.instance_id.clone()), "named once");
            }
            prop_assert!(named.instances_named >= named.targets.len());
        }
        let message = render(&NotifyInput { event, ..NotifyInput::default() });
        prop_assert!(message.subject.chars().count() <= MAX_SUBJECT_CHARS);
    }

    #[test]
    fn resolving_any_finding_shaped_event_never_panics(event in finding_like()) {
        if let Ok(parsed) = parse_event(event.clone())
            && let Ok(Resolution::Contain(target)) = resolve(&parsed)
        {
            prop_assert!(is_instance_id(&target.instance_id));
            prop_assert_eq!(target.scope.account_id.len(), 12);
            prop_assert!(target.scope.region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        }
        let message = render(&NotifyInput { event, ..NotifyInput::default() });
        prop_assert!(message.subject.chars().count() <= MAX_SUBJECT_CHARS);
        prop_assert!(!message.subject.contains('\n'));
    }

    #[test]
    fn arbitrary_text_is_never_a_panic(text in ".{0,400}") {
        if let Ok(v) = serde_json::from_str::<Value>(&text)
            && let Ok(parsed) = parse_event(v)
        {
            let _ = resolve(&parsed);
        }
    }
}
