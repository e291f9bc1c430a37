//! The finding parser, target resolution and message rendering never panic, whatever the input,
//! and a resolved target only carries values safe to put in AWS requests.

use ec2_quarantine::finding::{is_instance_id, parse_event, resolve};
use ec2_quarantine::notify::{MAX_SUBJECT_CHARS, NotifyInput, render};
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn resolving_any_finding_shaped_event_never_panics(event in finding_like()) {
        if let Ok(parsed) = parse_event(event.clone())
            && let Ok(Ok(target)) = resolve(&parsed)
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
