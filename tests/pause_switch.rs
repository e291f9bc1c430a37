//! The pause switch (an SSM parameter, `deploy.sh pause` / `resume`) on the emulator, through the
//! fault proxy: a paused responder reports a finding and opens no case; anything but a readable
//! `true` (false, a value that is not a boolean, no parameter, a read that is denied) leaves it
//! containing, and the report says why the switch did not apply.

mod common;

use common::{Fixture, access_key, inject};
use ec2_quarantine::aws::pause::PauseSwitch;
use ec2_quarantine::domain::finding::Scope;
use ec2_quarantine::steps::triage::{Decision, triage};

const BACKDOOR: &str = "instance-backdoor.json";
/// The switch's name in a stack named ec2-quarantine (the IAM check evaluates the calls against it).
const SWITCH: &str = "/ec2-quarantine/ec2-quarantine/paused";

/// The fixture's context with the switch, the parameter holding `value` (none: no parameter).
async fn paused_fixture(value: Option<&str>, reason: &str) -> (Fixture, ec2_quarantine::Ctx) {
    let f = Fixture::new().await;
    let ssm = aws_sdk_ssm::Client::new(&f.config);
    if let Some(value) = value {
        ssm.put_parameter()
            .name(SWITCH)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .value(value)
            .description(reason)
            .send()
            .await
            .unwrap();
    }
    let ctx = f
        .ctx
        .clone()
        .with_pause_switch(PauseSwitch::new(ssm, SWITCH).unwrap());
    (f, ctx)
}

fn scope(f: &Fixture) -> Scope {
    Scope {
        account_id: f.account.clone(),
        region: common::REGION.into(),
        partition: "aws".into(),
    }
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_paused_responder_reports_the_finding_and_opens_no_case() {
    let (f, ctx) = paused_fixture(Some("true"), "scanner mistaken for an attacker").await;
    let t = triage(&ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(t.decision, Decision::NotifyOnly, "{t:?}");
    assert!(t.reason.contains("paused"), "{}", t.reason);
    let rail = t.rails.first().expect("the pause is reported");
    assert!(rail.starts_with("paused since "), "{rail}");
    assert!(
        rail.contains("(reason given: scanner mistaken for an attacker)"),
        "{rail}"
    );
    assert!(rail.contains("deploy.sh resume"), "{rail}");
    assert!(
        t.targets
            .iter()
            .all(|p| p.case.is_none() && p.decision == Decision::NotifyOnly)
    );
    let open = ctx
        .cases()
        .open_case(&scope(&f), &f.instance_id)
        .await
        .unwrap();
    assert_eq!(open, None, "no case while paused");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_responder_not_paused_contains_and_says_nothing_of_the_switch() {
    let (f, ctx) = paused_fixture(Some("false"), "Not paused.").await;
    let t = triage(&ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(t.decision, Decision::Contain, "{t:?}");
    assert!(t.rails.is_empty(), "{:?}", t.rails);
}

/// AWS refuses such a value (the parameter's AllowedPattern, ParameterPatternMismatchException);
/// moto stores it, which lets this test show what the function does if one got there anyway.
#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_switch_that_is_not_a_boolean_does_not_pause_and_says_so() {
    let (f, ctx) = paused_fixture(Some("yes"), "typed by hand").await;
    let t = triage(&ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(t.decision, Decision::Contain, "{t:?}");
    assert!(
        t.rails[0].contains("\"yes\", which is neither true nor false")
            && t.rails[0].contains("ran as usual"),
        "{:?}",
        t.rails
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_missing_or_unreadable_switch_does_not_pause_and_says_so() {
    let (f, ctx) = paused_fixture(None, "").await;
    let t = triage(&ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(t.decision, Decision::Contain, "{t:?}");
    assert!(t.rails[0].contains("does not exist"), "{:?}", t.rails);

    let (f, ctx) = paused_fixture(Some("true"), "paused, but the read is denied").await;
    inject(
        &access_key(&f.config).await,
        "ssm:GetParameter",
        "denied",
        None,
    );
    let t = triage(&ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(t.decision, Decision::Contain, "{t:?}");
    assert!(t.rails[0].contains("could not be read"), "{:?}", t.rails);
}
