//! The rate cap (MaxContainmentsPerHour) on the emulator, through the fault proxy (which
//! serializes the writes of one DynamoDB item, as DynamoDB's conditional writes are atomic):
//! findings for more instances than the cap, all at once, contain exactly the cap and report the
//! rest; a finding joining an open case takes no slot; a slot frees an hour after it was taken.

mod common;

use aws_sdk_dynamodb::types::AttributeValue;
use common::Fixture;
use ec2_quarantine::case::RateSlot;
use ec2_quarantine::domain::finding::{FindingEvent, parse_event};
use ec2_quarantine::domain::settings::Settings;
use ec2_quarantine::steps::triage::{Decision, TriageReport, triage};

const BACKDOOR: &str = "instance-backdoor.json";

/// A finding of its own (its own id) naming `instance_id`.
fn finding_for(f: &Fixture, instance_id: &str, n: usize) -> FindingEvent {
    let mut e = f.event_json(BACKDOOR);
    e["detail"]["id"] = format!("{n:032x}").into();
    e["detail"]["resource"]["instanceDetails"]["instanceId"] = instance_id.into();
    parse_event(e).unwrap()
}

fn capped(cap: usize) -> Settings {
    let mut s = Settings::default();
    s.triage.max_containments_per_hour = Some(cap);
    s
}

fn decision(t: &TriageReport) -> Decision {
    t.targets[0].decision
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_burst_over_the_cap_contains_exactly_the_cap_and_reports_the_rest() {
    let f = Fixture::new().await;
    let mut instances = vec![f.instance_id.clone()];
    for _ in 0..4 {
        instances.push(f.launch_sibling().await);
    }
    let ctx = f.ctx.clone().with_settings(capped(3));
    let findings: Vec<FindingEvent> = instances
        .iter()
        .enumerate()
        .map(|(n, i)| finding_for(&f, i, n + 1))
        .collect();
    let reports = futures::future::join_all(findings.iter().map(|e| triage(&ctx, e))).await;
    let reports: Vec<TriageReport> = reports.into_iter().map(Result::unwrap).collect();
    let contained = reports
        .iter()
        .filter(|t| decision(t) == Decision::Contain)
        .count();
    assert_eq!(contained, 3, "{reports:#?}");
    for t in reports
        .iter()
        .filter(|t| decision(t) == Decision::NotifyOnly)
    {
        assert!(t.targets[0].reason.contains("rate cap is reached"), "{t:?}");
        assert!(t.targets[0].case.is_none(), "no case for a capped instance");
        let rail = &t.rails[0];
        assert!(
            rail.starts_with(&format!(
                "rate cap reached: 3 automatic containments in account {} within the last hour",
                f.account
            )) && rail.contains("the next one may start after "),
            "{rail}"
        );
    }

    // A second finding for a contained instance joins its case: no slot needed.
    let contained_instance = reports
        .iter()
        .find(|t| decision(t) == Decision::Contain)
        .unwrap()
        .targets[0]
        .target
        .instance_id
        .clone();
    let again = triage(&ctx, &finding_for(&f, &contained_instance, 99))
        .await
        .unwrap();
    assert_eq!(decision(&again), Decision::Contain, "{again:?}");
    assert!(again.targets[0].already_contained_by.is_some());

    // An hour later (the slot's time moved back), a capped instance is contained.
    let db = aws_sdk_dynamodb::Client::new(&f.config);
    let slots = db
        .query()
        .table_name(ctx.cases().table())
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S(format!("rate#{}", f.account)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        slots.count, 3,
        "one slot item per containment, never more than the cap"
    );
    let first = &slots.items()[0];
    let an_hour_ago = aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs() - 3601;
    db.update_item()
        .table_name(ctx.cases().table())
        .key("pk", first["pk"].clone())
        .key("sk", first["sk"].clone())
        .update_expression("SET taken_at = :t")
        .expression_attribute_values(":t", AttributeValue::N(an_hour_ago.to_string()))
        .send()
        .await
        .unwrap();
    let waiting = reports
        .iter()
        .find(|t| decision(t) == Decision::NotifyOnly)
        .unwrap()
        .targets[0]
        .target
        .instance_id
        .clone();
    let later = triage(&ctx, &finding_for(&f, &waiting, 100)).await.unwrap();
    assert_eq!(decision(&later), Decision::Contain, "{later:?}");
    assert!(later.rails.is_empty());
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn an_unreachable_case_table_never_holds_containment_back_at_the_cap() {
    let f = Fixture::new().await;
    let key = common::access_key(&f.config).await;
    for action in [
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
    ] {
        common::inject(&key, action, "throttle", None);
    }
    let ctx = f.ctx.clone().with_settings(capped(1));
    let t = triage(&ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(decision(&t), Decision::Contain, "{t:?}");
    assert!(
        t.rails[0].starts_with("the rate cap could not be checked (TransientAwsError)"),
        "{:?}",
        t.rails
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn an_instance_keeps_its_slot_and_a_lowered_cap_counts_every_slot_of_the_hour() {
    let f = Fixture::new().await;
    let store = f.ctx.cases();
    let account = &f.account;
    // A retried triage (or a second finding) for an instance that took a slot: the same slot.
    let first = store
        .claim_containment(account, 3, "i-00000000000000001", "f1")
        .await
        .unwrap();
    let again = store
        .claim_containment(account, 3, "i-00000000000000001", "f2")
        .await
        .unwrap();
    assert_eq!(first, again);
    for (n, instance) in ["i-00000000000000002", "i-00000000000000003"]
        .iter()
        .enumerate()
    {
        let got = store
            .claim_containment(account, 3, instance, &format!("f{n}"))
            .await
            .unwrap();
        assert!(matches!(got, RateSlot::Claimed(_)), "{got:?}");
    }
    // Three slots taken within the hour: a cap lowered to 2 is full, and so is 3.
    for cap in [2, 3] {
        let got = store
            .claim_containment(account, cap, "i-00000000000000004", "f9")
            .await
            .unwrap();
        assert!(
            matches!(got, RateSlot::Full { frees_at: Some(_) }),
            "cap {cap}: {got:?}"
        );
    }
    assert!(matches!(
        store
            .claim_containment(account, 4, "i-00000000000000004", "f9")
            .await
            .unwrap(),
        RateSlot::Claimed(_)
    ));
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_dry_run_takes_no_slot() {
    let f = Fixture::new().await;
    let mut settings = capped(1);
    settings.dry_run = true;
    let ctx = f.ctx.clone().with_settings(settings);
    for n in 1..=3 {
        let t = triage(&ctx, &finding_for(&f, &f.instance_id, n))
            .await
            .unwrap();
        assert_eq!(decision(&t), Decision::Contain, "{t:?}");
    }
    let slots = ctx
        .cases()
        .claim_containment(&f.account, 1, "i-00000000000000009", "f")
        .await
        .unwrap();
    assert_eq!(slots, RateSlot::Claimed(0), "the only slot was still free");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_denied_rate_cap_never_holds_containment_back() {
    let f = Fixture::new().await;
    let key = common::access_key(&f.config).await;
    common::inject(&key, "dynamodb:PutItem", "denied", None);
    let ctx = f.ctx.clone().with_settings(capped(1));
    let t = triage(&ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(decision(&t), Decision::Contain, "{t:?}");
    assert!(
        t.rails[0].starts_with("the rate cap could not be checked (AccessDenied)"),
        "{:?}",
        t.rails
    );
}
