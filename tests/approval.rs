//! Approvals on the emulator, through the fault proxy: a finding the approval policy gates waits
//! (no case, nothing changed), its request is recorded once and sent once, a person's decision is
//! recorded once and believed only from the case table, and every late, repeated, forged or
//! misdirected answer is refused and changes nothing.

mod common;

use common::{Fixture, Subscriber};
use ec2_quarantine::approval::{ApprovalAsk, ApprovalOutcome, ApprovalStatus, approval_id};
use ec2_quarantine::domain::finding::{FindingEvent, parse_event};
use ec2_quarantine::domain::settings::Settings;
use ec2_quarantine::steps::approval::{
    Answer, ApprovalInput, ApprovalOutput, ApprovalSettings, handle,
};
use ec2_quarantine::steps::triage::{Decision, TriageReport, triage, triage_after};
use ec2_quarantine::{Ctx, Error};

const BACKDOOR: &str = "instance-backdoor.json";

fn gated() -> Settings {
    let mut s = Settings::default();
    s.triage.approval.enabled = true;
    s.triage.approval.type_prefixes = vec!["Backdoor:EC2/".into()];
    s
}

/// The alert topic (named as iam_check binds it, where no notification names it) and its
/// subscriber.
struct Inbox(Subscriber);

impl Inbox {
    async fn new(f: &Fixture) -> Inbox {
        Inbox(Subscriber::new(&f.config, "alerts").await)
    }

    /// The messages received so far (their SNS bodies).
    async fn messages(&self) -> Vec<String> {
        self.0
            .received()
            .await
            .iter()
            .filter_map(|envelope| Some(envelope["Message"].as_str()?.to_owned()))
            .collect()
    }
}

fn execution(f: &Fixture, name: &str) -> String {
    format!(
        "arn:aws:states:us-east-1:{}:execution:containment:{name}",
        f.account
    )
}

async fn run(ctx: &Ctx, inbox: &Inbox, input: serde_json::Value) -> Result<ApprovalOutput, Error> {
    let settings = ApprovalSettings::from_value(inbox.0.topic_arn.clone()).unwrap();
    let input: ApprovalInput = serde_json::from_value(input).unwrap();
    handle(ctx, &settings, input).await
}

/// The wait ended (a timeout, or the state after an answer): the outcome the record settles on.
async fn settle(ctx: &Ctx, inbox: &Inbox, exec: &str) -> ApprovalOutcome {
    let settled = run(
        ctx,
        inbox,
        serde_json::json!({"action": "settle", "execution": exec}),
    )
    .await
    .unwrap();
    let ApprovalOutput::Outcome(outcome) = settled else {
        panic!("{settled:?}")
    };
    outcome
}

fn answer(out: ApprovalOutput) -> Answer {
    match out {
        ApprovalOutput::Answer(a) => a,
        other => panic!("not an answer: {other:?}"),
    }
}

async fn decide(ctx: &Ctx, inbox: &Inbox, id: &str, approve: bool, by: &str) -> Answer {
    answer(
        run(
            ctx,
            inbox,
            serde_json::json!({"action": "decide", "approval_id": id, "approve": approve, "by": by, "reason": "checked with the owner"}),
        )
        .await
        .unwrap(),
    )
}

/// Triage of `event` after its request was answered: the state machine's input carries the
/// request and the outcome it received.
async fn after(
    ctx: &Ctx,
    event: &FindingEvent,
    asked: &ApprovalAsk,
    outcome: serde_json::Value,
) -> TriageReport {
    let mut asked = serde_json::to_value(asked).unwrap();
    asked["outcome"] = outcome;
    let asked: ApprovalAsk = serde_json::from_value(asked).unwrap();
    triage_after(ctx, event, Some(&asked)).await.unwrap()
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_gated_finding_waits_and_is_contained_only_once_a_person_approves() {
    let f = Fixture::new().await;
    let inbox = Inbox::new(&f).await;
    let ctx = f.ctx.clone().with_settings(gated());
    let event = f.event(BACKDOOR);

    let first = triage(&ctx, &event).await.unwrap();
    assert_eq!(first.decision, Decision::AwaitApproval, "{first:#?}");
    assert!(first.targets[0].case.is_none(), "no case before approval");
    assert!(
        f.case_in(&ctx).await.is_none(),
        "nothing recorded before approval"
    );
    let ask = first.approval.clone().expect("the request");
    assert_eq!(ask.instances.len(), 1);
    assert!(ask.instances[0].contains("ApprovalTypePrefixes"), "{ask:?}");
    assert_eq!(ask.wait_seconds, 3600);

    // The request: recorded and sent once, however often the state retries it.
    let exec = execution(&f, "approved");
    let request = serde_json::json!({"action": "request", "task_token": "token-of-the-test", "execution": exec, "ask": ask});
    let requested = answer(run(&ctx, &inbox, request.clone()).await.unwrap());
    let id = approval_id(&exec);
    assert_eq!(
        (requested.status.as_str(), requested.approval_id.as_str()),
        ("requested", id.as_str())
    );
    answer(run(&ctx, &inbox, request).await.unwrap());
    let messages = inbox.messages().await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert!(
        messages[0].contains(&format!("deploy.sh approve {id}"))
            && messages[0].contains(&f.instance_id)
            && !messages[0].contains("token-of-the-test"),
        "{}",
        messages[0]
    );

    // The decision: recorded once, with its author; a second one changes nothing.
    let approved = decide(
        &ctx,
        &inbox,
        &id,
        true,
        "arn:aws:iam::111122223333:user/alice",
    )
    .await;
    assert_eq!(approved.status, "recorded", "{approved:?}");
    assert!(
        approved
            .message
            .contains("approved by arn:aws:iam::111122223333:user/alice"),
        "{approved:?}"
    );
    let late = decide(&ctx, &inbox, &id, false, "mallory").await;
    assert_eq!(late.status, "refused", "{late:?}");
    assert!(late.message.contains("already decided"), "{late:?}");
    let record = ctx.cases().approval(&id).await.unwrap().unwrap();
    assert_eq!(record.status, ApprovalStatus::Approved);

    // The timeout after a person's decision: the decision stands.
    let outcome = settle(&ctx, &inbox, &exec).await;
    assert_eq!(
        (outcome.status, outcome.contain),
        (ApprovalStatus::Approved, true)
    );

    // Triage again: the approval as the case table holds it contains the instance, and the
    // case keeps it.
    let second = after(&ctx, &event, &ask, serde_json::to_value(&outcome).unwrap()).await;
    assert_eq!(second.decision, Decision::Contain, "{second:#?}");
    assert!(second.targets[0].case.is_some());
    assert!(
        second
            .rails
            .iter()
            .any(|r| r.contains("approved by arn:aws:iam::111122223333:user/alice")),
        "{:?}",
        second.rails
    );
    assert!(f.case_in(&ctx).await.is_some());
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn forged_late_and_misdirected_answers_change_nothing() {
    let f = Fixture::new().await;
    let inbox = Inbox::new(&f).await;
    let ctx = f.ctx.clone().with_settings(gated());
    let event = f.event(BACKDOOR);
    let ask = triage(&ctx, &event).await.unwrap().approval.unwrap();

    // An answer to a request that does not exist, or not an id at all.
    let unknown = decide(&ctx, &inbox, "apr-0123456789abcdef", true, "alice").await;
    assert_eq!(unknown.status, "refused");
    let bad = run(
        &ctx,
        &inbox,
        serde_json::json!({"action": "decide", "approval_id": "apr-../../case", "approve": true, "by": "alice"}),
    )
    .await
    .unwrap_err();
    assert_eq!(bad.name().as_str(), "InvalidEvent");
    let nobody = run(
        &ctx,
        &inbox,
        serde_json::json!({"action": "decide", "approval_id": "apr-0123456789abcdef", "approve": true, "by": " \n "}),
    )
    .await
    .unwrap_err();
    assert_eq!(nobody.name().as_str(), "InvalidEvent");

    // A forged outcome in the state machine's input: no record says so, nothing is contained.
    let forged = serde_json::json!({"approval_id": "apr-0123456789abcdef", "status": "approved", "contain": true, "by": "x", "at": "now", "via": "deploy.sh"});
    let t = after(&ctx, &event, &ask, forged).await;
    assert_eq!(t.targets[0].decision, Decision::NotifyOnly, "{t:#?}");
    assert!(t.targets[0].reason.contains("not given"), "{t:#?}");
    assert!(f.case_in(&ctx).await.is_none());

    // Another finding's approval: recorded and approved, but not this finding's.
    let exec = execution(&f, "other-finding");
    let mut other = ask.clone();
    other.finding_id = "another-finding".into();
    answer(
        run(
            &ctx,
            &inbox,
            serde_json::json!({"action": "request", "task_token": "t", "execution": exec, "ask": other}),
        )
        .await
        .unwrap(),
    );
    let id = approval_id(&exec);
    assert_eq!(
        decide(&ctx, &inbox, &id, true, "alice").await.status,
        "recorded"
    );
    let outcome = ctx
        .cases()
        .approval(&id)
        .await
        .unwrap()
        .unwrap()
        .outcome
        .unwrap();
    let t = after(&ctx, &event, &ask, serde_json::to_value(&outcome).unwrap()).await;
    assert_eq!(t.targets[0].decision, Decision::NotifyOnly, "{t:#?}");
    assert!(f.case_in(&ctx).await.is_none());

    // The timeout first: the default (notify only) stands, and a reject or approve after it is
    // refused.
    let exec = execution(&f, "timed-out");
    answer(
        run(
            &ctx,
            &inbox,
            serde_json::json!({"action": "request", "task_token": "t2", "execution": exec, "ask": ask}),
        )
        .await
        .unwrap(),
    );
    let id = approval_id(&exec);
    let outcome = settle(&ctx, &inbox, &exec).await;
    assert_eq!(
        (outcome.status, outcome.contain),
        (ApprovalStatus::TimedOut, false)
    );
    for approve in [false, true] {
        let late = decide(&ctx, &inbox, &id, approve, "alice").await;
        assert_eq!(late.status, "refused", "{late:?}");
    }
    let t = after(&ctx, &event, &ask, serde_json::to_value(&outcome).unwrap()).await;
    assert_eq!(t.targets[0].decision, Decision::NotifyOnly);
    assert!(f.case_in(&ctx).await.is_none());
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn over_the_rate_cap_with_approvals_on_a_finding_waits_instead_of_being_dropped() {
    let f = Fixture::new().await;
    let sibling = f.launch_sibling().await;
    let mut settings = Settings::default();
    settings.triage.max_containments_per_hour = Some(1);
    settings.triage.approval.enabled = true;
    // Even where a timeout contains, one over the cap is never contained by a timeout.
    settings.triage.approval.on_timeout = ec2_quarantine::approval::OnTimeout::Contain;
    let ctx = f.ctx.clone().with_settings(settings);
    let finding = |instance: &str, n: u32| {
        let mut e = f.event_json(BACKDOOR);
        e["detail"]["id"] = format!("{n:032x}").into();
        e["detail"]["resource"]["instanceDetails"]["instanceId"] = instance.into();
        parse_event(e).unwrap()
    };
    let first = triage(&ctx, &finding(&f.instance_id, 1)).await.unwrap();
    assert_eq!(first.decision, Decision::Contain);
    let second = triage(&ctx, &finding(&sibling, 2)).await.unwrap();
    assert_eq!(second.decision, Decision::AwaitApproval, "{second:#?}");
    let ask = second.approval.unwrap();
    assert!(ask.instances[0].contains("rate cap reached"), "{ask:?}");
    assert_eq!(
        ask.on_timeout,
        ec2_quarantine::approval::OnTimeout::NotifyOnly
    );
}

/// A function URL request (payload format 2.0) as the link's page receives it.
fn http(method: &str, query: &str, form: Option<&str>) -> serde_json::Value {
    use base64::Engine as _;
    serde_json::json!({
        "version": "2.0",
        "rawPath": "/",
        "rawQueryString": query,
        "requestContext": {"http": {"method": method, "path": "/", "sourceIp": "203.0.113.7", "userAgent": "Mozilla/5.0 (test)"}},
        "body": form.map(|f| base64::engine::general_purpose::STANDARD.encode(f)),
        "isBase64Encoded": form.is_some(),
    })
}

async fn open_link(ctx: &Ctx, event: serde_json::Value) -> (u16, String) {
    let page = ec2_quarantine::steps::approval_link::handle(ctx, event)
        .await
        .unwrap();
    (
        page["statusCode"].as_u64().unwrap() as u16,
        page["body"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn the_link_shows_the_request_records_one_confirmed_decision_and_refuses_forgeries() {
    let f = Fixture::new().await;
    let inbox = Inbox::new(&f).await;
    let ctx = f.ctx.clone().with_settings(gated());
    let event = f.event(BACKDOOR);
    let ask = triage(&ctx, &event).await.unwrap().approval.unwrap();
    let settings = ApprovalSettings::from_value(inbox.0.topic_arn.clone())
        .unwrap()
        .with_link("https://abc.lambda-url.us-east-1.on.aws".into())
        .unwrap();
    let mut ids = Vec::new();
    for name in ["linked", "other"] {
        let exec = execution(&f, name);
        let input: ApprovalInput = serde_json::from_value(serde_json::json!({"action": "request", "task_token": format!("token-{name}"), "execution": exec, "ask": ask})).unwrap();
        handle(&ctx, &settings, input).await.unwrap();
        ids.push(approval_id(&exec));
    }
    let messages = inbox.messages().await;
    let link = |id: &str| {
        let m = messages.iter().find(|m| m.contains(id)).unwrap();
        let start = m.find("https://abc.lambda-url.us-east-1.on.aws/?").unwrap();
        let url = m[start..].split_whitespace().next().unwrap().to_owned();
        url.split_once('?').unwrap().1.to_owned()
    };
    let query = link(&ids[0]);
    let token = query.split("&t=").nth(1).unwrap().to_owned();
    assert_eq!(token.len(), 64);
    let record = ctx.cases().approval(&ids[0]).await.unwrap().unwrap();
    assert_ne!(
        record.link_hash.as_deref(),
        Some(token.as_str()),
        "only the hash is kept"
    );

    // Opening it shows the request and the forms; it decides nothing.
    let (status, body) = open_link(&ctx, http("GET", &query, None)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&f.instance_id) && body.contains("name=\"decision\" value=\"approve\""),
        "{body}"
    );
    assert_eq!(
        ctx.cases().approval(&ids[0]).await.unwrap().unwrap().status,
        ApprovalStatus::Pending
    );

    // A forged token, another request's id with this token, a malformed one: not a link.
    let forged = format!("a={}&t={}", ids[0], "0".repeat(64));
    let misdirected = format!("a={}&t={token}", ids[1]);
    for q in [forged.as_str(), misdirected.as_str(), "a=apr-x&t=y", ""] {
        let (status, body) = open_link(&ctx, http("GET", q, None)).await;
        assert_eq!(status, 403, "{q}: {body}");
        let form = format!("{q}&decision=approve&confirm=approve");
        let (status, _) = open_link(&ctx, http("POST", "", Some(&form))).await;
        assert_eq!(status, 403, "{q}");
    }
    for id in &ids {
        let record = ctx.cases().approval(id).await.unwrap().unwrap();
        assert_eq!(
            record.status,
            ApprovalStatus::Pending,
            "a forgery changed nothing"
        );
    }

    // A click without the typed confirmation (a mail scanner submitting the form) decides nothing.
    let (status, body) = open_link(
        &ctx,
        http("POST", "", Some(&format!("{query}&decision=approve"))),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        ctx.cases().approval(&ids[0]).await.unwrap().unwrap().status,
        ApprovalStatus::Pending
    );

    // The confirmation records the decision with what the function URL saw; a replay is refused.
    let form = format!("{query}&decision=reject&reason=our+scanner&confirm=reject");
    let (status, body) = open_link(&ctx, http("POST", "", Some(&form))).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("rejected by the approval link (from 203.0.113.7, Mozilla/5.0 (test))"),
        "{body}"
    );
    assert!(body.contains("(our scanner)"), "{body}");
    let (status, body) = open_link(
        &ctx,
        http("POST", "", Some(&form.replace("=reject", "=approve"))),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("already decided"), "{body}");
    let (status, body) = open_link(&ctx, http("GET", &query, None)).await;
    assert_eq!(
        (status, body.contains("Already decided")),
        (200, true),
        "{body}"
    );
    let (status, _) = open_link(&ctx, http("DELETE", &query, None)).await;
    assert_eq!(status, 405);
    // The command line's answer to a request decided through the link: refused too.
    assert_eq!(
        decide(&ctx, &inbox, &ids[0], true, "alice").await.status,
        "refused"
    );
}
