//! All steps on one finding, the way the state machine chains them, and the notification as a
//! subscriber receives it (an SQS queue subscribed to the topic).

mod common;

use common::{Fixture, Subscriber};
use ec2_quarantine::steps::isolate::isolate;
use ec2_quarantine::steps::notify::{Notifier, NotifyInput, NotifySettings, Verdict};
use ec2_quarantine::steps::role::contain_role;
use ec2_quarantine::steps::snapshot::snapshot;
use serde_json::{Value, json};

const EXFILTRATION: &str = "credential-exfiltration.json";

/// Runs the three containment steps and returns notify's input as the state machine builds it.
async fn contain(f: &Fixture) -> Value {
    let event = f.event(EXFILTRATION);
    let (i, s, r) = tokio::join!(
        isolate(&f.ctx, &event),
        snapshot(&f.ctx, &event),
        contain_role(&f.ctx, &event)
    );
    json!({
        "event": f.event_json(EXFILTRATION),
        "isolate": serde_json::to_value(i.unwrap()).unwrap(),
        "snapshot": serde_json::to_value(s.unwrap()).unwrap(),
        "role": serde_json::to_value(r.unwrap()).unwrap(),
    })
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn the_users_test_stack_is_contained_and_the_team_is_told() {
    let f = Fixture::new().await;
    let sub = Subscriber::new(&f.config, "ec2-quarantine-alerts").await;
    let settings = NotifySettings {
        topic_arn: sub.topic_arn.clone(),
        chat_topic_arn: None,
    };

    let input_json = contain(&f).await;
    let input: NotifyInput = serde_json::from_value(input_json.clone()).unwrap();
    let out = Notifier::new(&f.ctx, &settings)
        .notify(&input)
        .await
        .unwrap();
    assert_eq!(out.verdict, Verdict::Contained);
    assert!(!out.failed);
    assert!(!out.message_id.is_empty());

    let received = sub.received().await;
    assert_eq!(received.len(), 1);
    let msg = &received[0];
    let subject = msg["Subject"].as_str().unwrap();
    assert!(subject.len() < 100, "{subject}");
    assert!(subject.starts_with("[CONTAINED]"), "{subject}");
    assert!(subject.contains(&f.instance_id), "{subject}");
    let body = msg["Message"].as_str().unwrap();
    println!("{subject}\n\n{body}");
    assert_eq!(
        msg["MessageAttributes"]["verdict"]["Value"], "contained",
        "{msg}"
    );
    assert_eq!(msg["MessageAttributes"]["severity"]["Type"], "Number");
    assert_eq!(msg["MessageAttributes"]["severity"]["Value"], "8");
    assert_eq!(
        msg["MessageAttributes"]["finding_type"]["Value"],
        "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS"
    );
    assert_eq!(
        msg["MessageAttributes"]["account_id"]["Value"],
        f.account.as_str()
    );

    // The body names every action and what it touched.
    for eni in &f.interfaces {
        assert!(
            body.contains(&format!("{eni} isolated")),
            "{eni} in\n{body}"
        );
    }
    for id in [&f.ssh_group, &f.web_group] {
        assert!(body.contains(id.as_str()), "previous group {id} in\n{body}");
    }
    let snaps = input_json["snapshot"]["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    for s in snaps {
        assert!(body.contains(s["snapshot_id"].as_str().unwrap()), "{body}");
    }
    for needle in [
        "[done] Network isolation",
        "[done] Forensic snapshots",
        "[done] IAM role containment",
        "DenyAll policy: applied",
        &f.role_name,
        &f.account,
        "us-east-1",
        "https://us-east-1.console.aws.amazon.com/ec2/home?region=us-east-1#InstanceDetails:instanceId=",
        "no other instance uses the role",
    ] {
        assert!(body.contains(needle), "{needle:?} in\n{body}");
    }

    // The same finding re-sent: nothing new, and the report says so.
    let again: NotifyInput = serde_json::from_value(contain(&f).await).unwrap();
    let out = Notifier::new(&f.ctx, &settings)
        .notify(&again)
        .await
        .unwrap();
    assert_eq!(out.verdict, Verdict::Contained);
    let received = sub.received().await;
    let body = received[0]["Message"].as_str().unwrap();
    for needle in [
        "[already done] Network isolation",
        "[already done] Forensic snapshots",
        "[already done] IAM role containment",
    ] {
        assert!(body.contains(needle), "{needle:?} in\n{body}");
    }
    assert_eq!(f.snapshots().await.len(), 2, "no second snapshot set");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_failed_step_is_reported_as_failed_and_the_rest_as_done() {
    let f = Fixture::new().await;
    let sub = Subscriber::new(&f.config, "ec2-quarantine-alerts").await;
    let mut input = contain(&f).await;
    // What Catch passes on when the role step fails for good.
    input["role"] = json!({
        "Error": "AccessDenied",
        "Cause": "{\"errorType\":\"AccessDenied\",\"errorMessage\":\"iam:AttachRolePolicy was denied (AccessDenied): not authorized\"}"
    });
    let input: NotifyInput = serde_json::from_value(input).unwrap();
    let settings = NotifySettings {
        topic_arn: sub.topic_arn.clone(),
        chat_topic_arn: None,
    };
    let out = Notifier::new(&f.ctx, &settings)
        .notify(&input)
        .await
        .unwrap();
    assert_eq!(out.verdict, Verdict::Partial);
    assert!(out.failed, "a failed step fails the workflow");
    let received = sub.received().await;
    let subject = received[0]["Subject"].as_str().unwrap();
    assert!(subject.starts_with("[PARTIALLY CONTAINED]"), "{subject}");
    let body = received[0]["Message"].as_str().unwrap();
    assert!(body.contains("[done] Network isolation"), "{body}");
    assert!(
        body.contains(
            "[FAILED] IAM role containment: AccessDenied: iam:AttachRolePolicy was denied"
        ),
        "{body}"
    );
    assert!(!body.contains("[CONTAINED]"));
}
