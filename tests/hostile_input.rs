//! A corpus of hostile and malformed events (tests/corpus/, expected outcomes in
//! tests/corpus/expected.json): each gets its specific outcome from every containment step, no
//! panic, and, unless it names the fixture's real instance, no AWS write call.

mod common;

use std::collections::BTreeMap;

use common::{Fixture, access_key, proxy_log, record_outcome};
use ec2_quarantine::domain::finding::parse_event;
use ec2_quarantine::steps::isolate::isolate;
use ec2_quarantine::steps::role::contain_role;
use ec2_quarantine::steps::snapshot::snapshot;
use ec2_quarantine::{Error, Outcome};
use serde_json::Value;

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

/// What a step did with the input, in the corpus' words.
fn describe<T>(result: &Result<Outcome<T>, Error>) -> String {
    match result {
        Ok(Outcome::Skipped { reason }) => format!("skipped:{reason}"),
        Ok(_) => "contained".into(),
        Err(e) => format!("error:{}", e.name()),
    }
}

fn matches(got: &str, want: &str) -> bool {
    match want.split_once(':') {
        Some(("skipped", reason)) => got.starts_with("skipped:") && got.contains(reason),
        _ => got == want,
    }
}

fn is_read(action: &str) -> bool {
    let name = action.split(':').nth(1).unwrap_or("");
    ["Describe", "Get", "List", "Query", "Scan"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// The Lambda payload the file holds: JSON as written, or, for text that is not JSON, the text
/// itself as a JSON string (what Lambda hands on for a body it cannot parse as an object).
fn payload(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn every_hostile_event_gets_its_expected_outcome_and_no_write() {
    let expected: BTreeMap<String, String> =
        serde_json::from_str(&std::fs::read_to_string(format!("{CORPUS}/expected.json")).unwrap())
            .unwrap();
    assert!(expected.len() >= 40, "the corpus holds at least 40 events");
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;

    for (file, want) in &expected {
        let text = std::fs::read_to_string(format!("{CORPUS}/{file}")).unwrap();
        let mut value = payload(&text);
        if want == "contained" {
            point_at_fixture(&mut value, &f);
        }
        let before = proxy_log(&key).len();
        let results = match parse_event(value) {
            Err(e) => vec![format!("error:{}", e.name()); 3],
            Ok(event) => vec![
                describe(&isolate(&f.ctx, &event).await),
                describe(&snapshot(&f.ctx, &event).await),
                describe(&contain_role(&f.ctx, &event).await),
            ],
        };
        // Isolation and snapshots follow the instance; the role step may still act on a role the
        // finding names when the instance is gone, so it is held to the same outcome only where
        // the input is refused outright.
        assert!(
            matches(&results[0], want),
            "{file}: isolate gave {}, expected {want}",
            results[0]
        );
        assert!(
            matches(&results[1], want),
            "{file}: snapshot gave {}, expected {want}",
            results[1]
        );
        if want.starts_with("skipped:") || want == "error:InvalidEvent" || want == "contained" {
            assert!(
                matches(&results[2], want),
                "{file}: deny-role gave {}, expected {want}",
                results[2]
            );
        }
        if want != "contained" {
            let writes: Vec<String> = proxy_log(&key)[before..]
                .iter()
                .map(|e| e["action"].as_str().unwrap_or("").to_owned())
                .filter(|a| !is_read(a))
                .collect();
            // A finding that names a valid instance id which cannot be found may still name a
            // role (its credentials are contained all the same), and opens a case in the
            // responder's own table, which records what the steps did and could not do.
            let allowed_role_writes = want == "error:InstanceNotFound";
            assert!(
                writes.is_empty()
                    || allowed_role_writes
                        && writes
                            .iter()
                            .all(|a| a.starts_with("iam:") || a.starts_with("dynamodb:")),
                "{file}: write calls {writes:?}"
            );
            record_outcome("malformed_input");
        }
    }
}

fn point_at_fixture(value: &mut Value, f: &Fixture) {
    let r = &mut value["detail"]["resource"];
    if r["accessKeyDetails"].is_object() {
        r["accessKeyDetails"]["principalId"] = format!("AROAEXAMPLE:{}", f.instance_id).into();
    }
    if r["instanceDetails"].is_object() {
        r["instanceDetails"]["instanceId"] = f.instance_id.clone().into();
    }
    value["detail"]["accountId"] = f.account.clone().into();
}
