//! The state machines and the functions agree on error names: every name a `Retry` or `Catch`
//! matches is one a function can return (or one of Step Functions' and Lambda's own), every
//! function's task retries exactly the errors that are worth retrying, and every function's task
//! catches everything, so no failure leaves the team uninformed. No emulator needed.

use std::collections::BTreeSet;

use ec2_quarantine::ErrorName;
use serde_json::Value;

const STATE_MACHINES: [(&str, &str); 4] = [
    (
        "containment",
        include_str!("../statemachine/containment.asl.json"),
    ),
    ("release", include_str!("../statemachine/release.asl.json")),
    (
        "evidence-copy",
        include_str!("../statemachine/evidence-copy.asl.json"),
    ),
    (
        "collection",
        include_str!("../statemachine/collection.asl.json"),
    ),
];

/// The errors Lambda raises itself rather than the function's code: the service integration's
/// (`Lambda.*`), and the execution environment's when the function times out or its process
/// exits (a panic aborts). Which of them each task retries is checked in
/// `tests/workflow/test_fail_safe.py` (`LAMBDA_RETRIED`); here they only count as known names.
fn lambda_error(name: &str) -> bool {
    name.starts_with("Lambda.") || name == "Sandbox.Timedout" || name == "Runtime.ExitError"
}

/// The errors the state machine retries although they are not transient, per function: isolate's
/// fail-open error is retried because its next attempt moves the interface on to quarantine
/// (`ErrorName::IsolationFailedOpen`), and only isolate returns it.
fn retried_beyond_transient(function: &str) -> BTreeSet<&'static str> {
    match function {
        "isolate" => BTreeSet::from([ErrorName::IsolationFailedOpen.as_str()]),
        "security-hub" => BTreeSet::from([ErrorName::FindingNotInSecurityHub.as_str()]),
        _ => BTreeSet::new(),
    }
}

/// The errors only one function returns; any other function's Retry or Catch naming one of them
/// names an error that can never come.
fn returned_only_by(name: &str) -> Option<&'static str> {
    if name == ErrorName::IsolationFailedOpen.as_str() {
        Some("isolate")
    } else if name == ErrorName::FindingNotInSecurityHub.as_str() {
        Some("security-hub")
    } else {
        None
    }
}

/// A task state that invokes one of the tool's functions, with its Retry and Catch.
struct FunctionTask {
    machine: &'static str,
    state: String,
    function: String,
    retried: Vec<String>,
    caught: Vec<String>,
}

/// The function a task's resource names through its definition substitution
/// (`${IsolateFunctionArn}` is `isolate`, `${DenyRoleFunctionArn}` is `deny-role`).
fn function_of(resource: &str) -> Option<String> {
    let name = resource.strip_prefix("${")?.strip_suffix("FunctionArn}")?;
    let mut function = String::new();
    for (i, c) in name.char_indices() {
        if c.is_ascii_uppercase() && i > 0 {
            function.push('-');
        }
        function.push(c.to_ascii_lowercase());
    }
    Some(function)
}

fn error_names(rules: Option<&Value>) -> Vec<String> {
    rules
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|rule| rule["ErrorEquals"].as_array().cloned().unwrap_or_default())
        .filter_map(|name| name.as_str().map(str::to_owned))
        .collect()
}

/// Every state of a definition, nested ones included (Parallel branches, Map item processors).
fn states<'a>(definition: &'a Value, out: &mut Vec<(&'a str, &'a Value)>) {
    let Some(map) = definition["States"].as_object() else {
        return;
    };
    for (name, state) in map {
        out.push((name, state));
        for branch in state["Branches"].as_array().into_iter().flatten() {
            states(branch, out);
        }
        for key in ["ItemProcessor", "Iterator"] {
            if state.get(key).is_some() {
                states(&state[key], out);
            }
        }
    }
}

fn all_states() -> Vec<(&'static str, String, Value)> {
    let mut all = Vec::new();
    for (machine, text) in STATE_MACHINES {
        let definition: Value = serde_json::from_str(text).expect("the ASL file is JSON");
        let mut found = Vec::new();
        states(&definition, &mut found);
        all.extend(
            found
                .into_iter()
                .map(|(name, state)| (machine, name.to_owned(), state.clone())),
        );
    }
    all
}

fn function_tasks() -> Vec<FunctionTask> {
    all_states()
        .into_iter()
        .filter_map(|(machine, state, value)| {
            // A function the task invokes directly, or through the Lambda integration (the
            // approval's `.waitForTaskToken` task names it in its parameters).
            let resource = value["Resource"].as_str()?;
            let function = if resource.starts_with("arn:aws:states:::lambda:invoke") {
                function_of(value["Parameters"]["FunctionName"].as_str()?)?
            } else {
                function_of(resource)?
            };
            Some(FunctionTask {
                machine,
                state,
                function,
                retried: error_names(value.get("Retry")),
                caught: error_names(value.get("Catch")),
            })
        })
        .collect()
}

fn tool_error(name: &str) -> bool {
    ErrorName::ALL.iter().any(|n| n.as_str() == name)
}

#[test]
fn every_function_of_the_template_has_its_task() {
    let functions: BTreeSet<String> = function_tasks().into_iter().map(|t| t.function).collect();
    let binaries = [
        "approval",
        "collect",
        "deny-role",
        "deregister",
        "evidence-copy",
        "isolate",
        "notify",
        "release",
        "security-hub",
        "snapshot",
        "triage",
    ];
    assert_eq!(
        functions,
        binaries.iter().map(|b| b.to_string()).collect(),
        "each binary in src/bin has a task in a state machine"
    );
    for binary in binaries {
        assert!(
            std::path::Path::new(&format!("src/bin/{binary}.rs")).exists(),
            "the state machines name a function src/bin/{binary}.rs builds"
        );
    }
}

#[test]
fn every_error_a_state_matches_exists() {
    for (machine, state, value) in all_states() {
        for name in error_names(value.get("Retry"))
            .into_iter()
            .chain(error_names(value.get("Catch")))
        {
            let known = name.starts_with("States.") || lambda_error(&name) || tool_error(&name);
            assert!(
                known,
                "{machine}.{state} matches {name:?}, which no function returns and neither Step Functions nor Lambda raises"
            );
        }
    }
}

#[test]
fn each_function_task_retries_exactly_what_is_worth_retrying() {
    for task in function_tasks() {
        let place = format!("{}.{} ({})", task.machine, task.state, task.function);
        let retried: BTreeSet<&str> = task
            .retried
            .iter()
            .map(String::as_str)
            .filter(|name| tool_error(name))
            .collect();
        let mut expected: BTreeSet<&str> = ErrorName::ALL
            .iter()
            .filter(|n| n.is_retryable())
            .map(|n| n.as_str())
            .collect();
        expected.extend(retried_beyond_transient(&task.function));
        assert_eq!(
            retried, expected,
            "{place} retries the tool's errors that are worth retrying, and no others"
        );
        for name in task.retried.iter().chain(&task.caught) {
            if let Some(only) = returned_only_by(name) {
                assert_eq!(
                    task.function, only,
                    "{place} matches {name}, which only {only} returns"
                );
            }
        }
    }
}

#[test]
fn each_function_task_catches_every_error() {
    for task in function_tasks() {
        assert!(
            task.caught.iter().any(|n| n == "States.ALL"),
            "{}.{} ({}) catches States.ALL: a failed step must still reach the report",
            task.machine,
            task.state,
            task.function
        );
    }
}

/// The checks above can fail: a Retry naming an error no function returns is caught.
#[test]
fn a_retry_naming_an_unknown_error_is_caught() {
    assert!(!tool_error("TransientAWSError"));
    assert!(tool_error("TransientAwsError"));
    assert_eq!(
        function_of("${DenyRoleFunctionArn}").as_deref(),
        Some("deny-role")
    );
    assert_eq!(function_of("arn:aws:states:::sns:publish"), None);
}
