//! The case record: what each containment found, changed and left, in one DynamoDB table of
//! the responder's own account that only the responder's functions write.
//!
//! Nothing here is read from the instance or its role: tags are written by anyone allowed
//! `ec2:CreateTags`, so a release that trusted them would restore what an attacker wrote (a
//! confused deputy). One table, keyed by `pk` and `sk`:
//!
//! | `pk`                                    | `sk`                          | what                                   |
//! |-----------------------------------------|-------------------------------|----------------------------------------|
//! | `instance#<account>#<region>#<id>`      | `head`                        | the open case, every case, released findings |
//! | `case#<case id>`                        | `case`                        | account, region, instance, opened, status |
//! | `case#<case id>`                        | `finding#<finding id>`        | type, severity, first and last seen    |
//! | `case#<case id>`                        | `step#<step>`                 | started, ended, outcome, actions, claim |
//! | `case#<case id>`                        | `previous#<what>[#<resource>]`| the exact state a step changed ([`Previous`]) |
//! | `case#<case id>`                        | `release#<time>`              | one release attempt and what it restored |
//! | `role#<account>#<role name>`            | `hold#<instance id>`          | a contained instance holding its role contained |
//! | `rate#<account>`                        | `slot#<n>`                    | one of the rate cap's slots: when a containment took it, and which |
//!
//! Every write is conditional where two executions could meet: the case is opened once per
//! instance (a second finding joins it), a previous state is recorded by the first step that
//! saw it and never overwritten, and a step that must run once per case (snapshots, the role)
//! claims it before acting.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use aws_sdk_dynamodb::types::AttributeValue;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::domain::finding::{Scope, Target};
use crate::error::Error;
use crate::now_rfc3339;

/// The table's name when `CASE_TABLE` is not set (the tests and the local run create it).
pub const DEFAULT_TABLE: &str = "ec2-quarantine-cases";

/// How long a step's claim holds against another execution of the same case: longer than a
/// Lambda function runs (15 min) with its retries, so only an execution that died lets another
/// take the step over.
pub const CLAIM_LEASE_SECS: i64 = 30 * 60;

const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

/// A conditional write's answer: `true` written, `false` refused by its condition (another
/// execution was first, or the record already stands); any other failure is the error.
pub(crate) fn written<O, E>(
    action: &'static str,
    answer: Result<
        O,
        aws_smithy_runtime_api::client::result::SdkError<
            E,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
    >,
) -> Result<bool, Error>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match answer {
        Ok(_) => Ok(true),
        Err(e) => {
            let err = Error::from_sdk(action, e);
            if err.aws_code() == Some(CONDITION_FAILED) {
                Ok(false)
            } else {
                Err(err)
            }
        }
    }
}

/// How long a release holds the instance's case against new findings, and how far back a
/// step's start or a finding's arrival counts as an execution that may still run: longer than
/// an execution's retries last.
pub const RELEASE_LEASE_SECS: i64 = 15 * 60;

/// Now in RFC 3339 with milliseconds (`...:33.123Z`): the times the case compares (a step's
/// last start and end, a finding's arrival), which one second cannot order.
fn now_precise() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let whole = aws_smithy_types::DateTime::from_secs(since.as_secs() as i64)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default();
    format!(
        "{}.{:03}Z",
        whole.trim_end_matches('Z'),
        since.subsec_millis()
    )
}

fn epoch_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The most bytes of a step's report kept in its case item (DynamoDB items hold 400 KB).
pub const MAX_REPORT_BYTES: usize = 100_000;

/// `text` cut to at most `max` bytes, on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Where one containment's record is kept, and the execution's claim on its steps: the small
/// value the workflow passes from triage to every step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseHandle {
    pub case_id: String,
    /// This execution's token: a retried step finds its own claims by it.
    pub claim: String,
    /// When the case was opened (RFC 3339): the time on the instance's marker tag.
    #[serde(default)]
    pub opened_at: String,
}

/// The state a containment changed, exactly as it was before, recorded by the step that
/// changed it: what release restores, and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Previous {
    /// An interface's security groups.
    Groups {
        interface_id: String,
        groups: Vec<String>,
    },
    /// Termination protection and shutdown behaviour.
    Attributes {
        termination_protection: bool,
        shutdown: String,
    },
    /// The devices whose volumes were deleted with the instance.
    DeleteOnTermination { devices: Vec<String> },
    /// The instance profile the quarantine profile replaced.
    Profile { profile_arn: String },
    /// The role whose policies the containment changed (its hold is in the role's items).
    Role { role_name: String },
    /// The Auto Scaling group the instance was taken out of, and how.
    AutoScaling {
        group: String,
        /// `standby` or `detach`.
        mode: String,
        /// Whether the group's desired capacity was lowered (no replacement launched).
        capacity_decremented: bool,
    },
    /// One registration in a target group.
    Target {
        target_group_arn: String,
        target_id: String,
        #[serde(default)]
        port: Option<i32>,
        #[serde(default)]
        availability_zone: Option<String>,
    },
    /// A Classic Load Balancer the instance was registered with.
    ClassicLoadBalancer { name: String },
}

impl Previous {
    /// The item's sort key: one item per thing changed.
    fn sort_key(&self) -> String {
        match self {
            Previous::Groups { interface_id, .. } => format!("previous#groups#{interface_id}"),
            Previous::Attributes { .. } => "previous#attributes".into(),
            Previous::DeleteOnTermination { .. } => "previous#delete-on-termination".into(),
            Previous::Profile { .. } => "previous#profile".into(),
            Previous::Role { .. } => "previous#role".into(),
            Previous::AutoScaling { .. } => "previous#auto-scaling".into(),
            Previous::Target {
                target_group_arn,
                target_id,
                port,
                ..
            } => format!(
                "previous#target#{target_group_arn}#{target_id}#{}",
                port.map(|p| p.to_string()).unwrap_or_default()
            ),
            Previous::ClassicLoadBalancer { name } => format!("previous#classic#{name}"),
        }
    }
}

/// A case as release and the on-call engineer read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Case {
    pub case_id: String,
    pub account_id: String,
    pub region: String,
    pub instance_id: String,
    pub opened_at: String,
    /// `open` or `released`.
    pub status: String,
    #[serde(default)]
    pub released_at: Option<String>,
    /// Every finding that touched the instance while the case was open.
    #[serde(default)]
    pub findings: Vec<CaseFinding>,
    #[serde(default)]
    pub previous: Vec<Previous>,
    /// Each step's last start and last end, as recorded (`step`, `last_started`, `ended`).
    #[serde(default)]
    pub steps: Vec<(String, String, String)>,
}

impl Case {
    /// Why an execution of the case may still be running, if one may: a step started and not
    /// ended since, or a finding that joined after the last step ended (its steps have not
    /// started yet). Only activity of the last [`RELEASE_LEASE_SECS`] counts.
    pub fn busy(&self) -> Option<String> {
        let recent = |t: &str| {
            aws_smithy_types::DateTime::from_str(t, aws_smithy_types::date_time::Format::DateTime)
                .is_ok_and(|d| epoch_secs() - d.secs() < RELEASE_LEASE_SECS)
        };
        if let Some((step, started, _)) = self
            .steps
            .iter()
            .find(|(_, started, ended)| recent(started) && started.as_str() > ended.as_str())
        {
            return Some(format!(
                "its step {step} started at {started} and has not ended"
            ));
        }
        let last_end = self
            .steps
            .iter()
            .map(|(_, _, e)| e.as_str())
            .max()
            .unwrap_or("");
        self.findings
            .iter()
            .find(|f| recent(&f.last_seen) && f.last_seen.as_str() > last_end)
            .map(|f| {
                format!(
                    "finding {} joined it at {}, after its steps last ended",
                    f.finding_id, f.last_seen
                )
            })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseFinding {
    pub finding_id: String,
    pub finding_type: String,
    pub first_seen: String,
    pub last_seen: String,
    /// The finding's `updatedAt` as last seen.
    #[serde(default)]
    pub updated_at: String,
}

/// What opening a case for a finding found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// A new case, opened by this call.
    New(CaseHandle),
    /// The instance's open case, which this finding joins.
    Joined {
        handle: CaseHandle,
        opened_at: String,
    },
    /// The finding belongs to a case the security team has released: a copy sent again
    /// contains nothing.
    Released { case_id: String },
}

/// A step's claim on work done once per case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This execution does it (first, or again after its own earlier attempt).
    Mine,
    /// Another execution of the case does it, or has done it (`ended`).
    Taken { by: String, at: String, ended: bool },
}

/// The case table and the clients for it (always the responder's own account).
#[derive(Debug, Clone)]
pub struct Store {
    db: aws_sdk_dynamodb::Client,
    table: String,
}

/// A step's view of its case: the store and the handle.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub store: Store,
    pub handle: CaseHandle,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn text(item: &HashMap<String, AttributeValue>, name: &str) -> Option<String> {
    item.get(name)?.as_s().ok().cloned()
}

fn instance_key(scope: &Scope, instance_id: &str) -> String {
    format!(
        "instance#{}#{}#{instance_id}",
        scope.account_id, scope.region
    )
}

fn case_key(case_id: &str) -> String {
    format!("case#{case_id}")
}

fn role_key(account_id: &str, role_name: &str) -> String {
    format!("role#{account_id}#{role_name}")
}

fn rate_key(account_id: &str) -> String {
    format!("rate#{account_id}")
}

/// The rolling window of the rate cap.
pub const RATE_WINDOW_SECS: i64 = 3600;

/// What a containment got from the rate cap ([`Store::claim_containment`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateSlot {
    /// One of the account's slots for the rolling hour, now this containment's.
    Claimed(usize),
    /// Every slot was taken within the hour; the oldest frees at this time (RFC 3339).
    Full { frees_at: Option<String> },
}

/// A token no other execution holds: the time and a random key from the standard library's
/// hasher seeds.
pub fn new_claim() -> String {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    format!("{:016x}", h.finish())
}

/// The id of a case opened now for `instance_id`: the instance and the time to the
/// millisecond (`i-...-20261201T181401123Z`), readable, sorted by time, and never the id of the
/// instance's earlier case (one case is open at a time, and a release takes longer than 1 ms).
fn new_case_id(instance_id: &str) -> String {
    let now = now_precise().replace(['-', ':', '.'], "");
    format!("{instance_id}-{now}")
}

/// Whether `s` can be a case id this tool made (`i-...-YYYYMMDDTHHMMSSmmmZ`).
pub fn is_case_id(s: &str) -> bool {
    s.len() <= 64
        && s.starts_with("i-")
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

impl Store {
    /// The same table, its requests naming `app` in their User-Agent.
    pub fn acting_as(&self, app: aws_config::AppName) -> Store {
        Store {
            db: aws_sdk_dynamodb::Client::from_conf(
                self.db.config().to_builder().app_name(app).build(),
            ),
            table: self.table.clone(),
        }
    }

    pub fn new(config: &aws_config::SdkConfig, table: impl Into<String>) -> Store {
        // A slow table never holds containment long: each call gives up after a few seconds
        // (the steps then act without a record and say so).
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(std::time::Duration::from_secs(2))
            .operation_timeout(std::time::Duration::from_secs(5))
            .build();
        let conf = aws_sdk_dynamodb::config::Builder::from(config)
            .timeout_config(timeouts)
            .interceptor(crate::aws::calls::CallMetrics)
            .build();
        Store {
            db: aws_sdk_dynamodb::Client::from_conf(conf),
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The DynamoDB client (release removes holds with it).
    pub(crate) fn db(&self) -> &aws_sdk_dynamodb::Client {
        &self.db
    }

    /// The partition key of a role's holds.
    pub(crate) fn role_key(account_id: &str, role_name: &str) -> String {
        role_key(account_id, role_name)
    }

    async fn get(
        &self,
        pk: String,
        sk: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, Error> {
        let out = self
            .db
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:GetItem", e))?;
        Ok(out.item)
    }

    /// Every item under `pk` whose sort key starts with `prefix`, read consistently.
    async fn query(
        &self,
        pk: String,
        prefix: &str,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, Error> {
        // DynamoDB refuses an empty string in a key condition: no prefix, no begins_with.
        let mut request = self
            .db
            .query()
            .table_name(&self.table)
            .expression_attribute_values(":pk", s(pk))
            .consistent_read(true);
        request = if prefix.is_empty() {
            request.key_condition_expression("pk = :pk")
        } else {
            request
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":prefix", s(prefix))
        };
        request
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:Query", e))
    }

    /// Claims one of `cap` slots of `account_id`'s automatic containments in the rolling hour,
    /// for `instance_id` (`finding_id` recorded on the slot too).
    ///
    /// A slot is an item (`rate#<account>`, `slot#<n>`) holding the time a containment took
    /// it and the instance; it is free when missing or taken more than an hour ago. Each claim
    /// is a conditional write (the slot still free), so two executions can never take one slot,
    /// and the cap is never overshot however many findings arrive at once; slots taken within
    /// the hour count whatever their number, so a cap lowered since is not overshot either. An
    /// instance that took a slot within the hour gets it again (a retried triage takes no
    /// second one). The slots are read first (one query), and the free ones tried from an
    /// offset of the instance's, so that concurrent claims spread.
    pub async fn claim_containment(
        &self,
        account_id: &str,
        cap: usize,
        instance_id: &str,
        finding_id: &str,
    ) -> Result<RateSlot, Error> {
        let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs();
        let window_start = now - RATE_WINDOW_SECS;
        // Two rounds: the slots others took while this one tried are read again before the
        // answer is "full" (and when the next one frees is told from that read).
        let mut taken = HashMap::new();
        for _ in 0..2 {
            taken = self.rate_slots(account_id).await?;
            let in_window = |at: &i64| *at > window_start;
            if let Some((slot, _)) = taken
                .iter()
                .find(|(_, (at, holder))| in_window(at) && holder == instance_id)
            {
                return Ok(RateSlot::Claimed(*slot));
            }
            if taken.values().filter(|(at, _)| in_window(at)).count() >= cap {
                break;
            }
            let mut free: Vec<usize> = (0..cap)
                .filter(|k| taken.get(k).is_none_or(|(at, _)| !in_window(at)))
                .collect();
            if free.is_empty() {
                break;
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            h.write(instance_id.as_bytes());
            let offset = (h.finish() as usize) % free.len();
            free.rotate_left(offset);
            for slot in free {
                let put = self
                    .db
                    .put_item()
                    .table_name(&self.table)
                    .item("pk", s(rate_key(account_id)))
                    .item("sk", s(format!("slot#{slot:04}")))
                    .item("taken_at", AttributeValue::N(now.to_string()))
                    .item("instance", s(instance_id))
                    .item("finding", s(finding_id))
                    .condition_expression("attribute_not_exists(pk) OR taken_at <= :window_start")
                    .expression_attribute_values(
                        ":window_start",
                        AttributeValue::N(window_start.to_string()),
                    )
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk("dynamodb:PutItem", e));
                match put {
                    Ok(_) => return Ok(RateSlot::Claimed(slot)),
                    // Another execution took it first: the next free one.
                    Err(err) if err.aws_code() == Some(CONDITION_FAILED) => continue,
                    Err(err) => return Err(err),
                }
            }
        }
        let frees_at = taken
            .values()
            .map(|(at, _)| *at)
            .filter(|at| *at > window_start)
            .min()
            .and_then(|at| {
                aws_smithy_types::DateTime::from_secs(at + RATE_WINDOW_SECS)
                    .fmt(aws_smithy_types::date_time::Format::DateTime)
                    .ok()
            });
        Ok(RateSlot::Full { frees_at })
    }

    /// The rate cap's slots of `account_id`: slot number -> when it was taken (epoch seconds)
    /// and by which instance.
    async fn rate_slots(&self, account_id: &str) -> Result<HashMap<usize, (i64, String)>, Error> {
        Ok(self
            .query(rate_key(account_id), "slot#")
            .await?
            .iter()
            .filter_map(|item| {
                let slot = text(item, "sk")?.strip_prefix("slot#")?.parse().ok()?;
                let at = item.get("taken_at")?.as_n().ok()?.parse().ok()?;
                Some((slot, (at, text(item, "instance").unwrap_or_default())))
            })
            .collect())
    }

    /// The instance's open case, if it has one (read only: triage in a dry run).
    pub async fn open_case(
        &self,
        scope: &Scope,
        instance_id: &str,
    ) -> Result<Option<(String, String)>, Error> {
        let Some(head) = self.get(instance_key(scope, instance_id), "head").await? else {
            return Ok(None);
        };
        let Some(case_id) = text(&head, "open_case") else {
            return Ok(None);
        };
        let opened_at = match self.get(case_key(&case_id), "case").await? {
            Some(header) => text(&header, "opened_at").unwrap_or_default(),
            None => String::new(),
        };
        Ok(Some((case_id, opened_at)))
    }

    /// Opens the instance's case for the finding, or joins the one open. `updated_at` is the
    /// finding's `updatedAt`: with `released_stops`, a copy of a finding of a released case
    /// (same id, same update) opens nothing, while the same finding updated since (GuardDuty
    /// updates a finding when the activity recurs) opens a new case. While the open case is
    /// being released, a finding gets a transient error (the workflow retries it once the
    /// release is over) rather than join a case that is being undone.
    ///
    /// One piece on purpose: the branches of one conditional write (new case, joined case,
    /// released case, lost race) read together, as DynamoDB decides between them.
    pub async fn open(
        &self,
        target: &Target,
        updated_at: Option<&str>,
        evidence: Option<&str>,
        released_stops: bool,
    ) -> Result<Opened, Error> {
        let head_key = instance_key(&target.scope, &target.instance_id);
        let updated_at: String = updated_at.unwrap_or("").chars().take(40).collect();
        let evidence: Option<String> = evidence.map(|e| e.chars().take(1000).collect());
        let evidence = evidence.as_deref();
        let copy = format!("{}@{updated_at}", target.finding_id);
        for _ in 0..5 {
            // The common path is one conditional write: the head takes a new case unless one is
            // open (or, for triage, unless this copy of the finding was released); a refusal
            // returns the head as it is, which says what to join.
            let case_id = new_case_id(&target.instance_id);
            let mut claim = self
                .db
                .update_item()
                .table_name(&self.table)
                .key("pk", s(head_key.clone()))
                .key("sk", s("head"))
                .update_expression("SET open_case = :case, last_case = :case ADD cases :cases")
                .expression_attribute_values(":case", s(&case_id))
                .expression_attribute_values(":cases", AttributeValue::Ss(vec![case_id.clone()]))
                .return_values_on_condition_check_failure(
                    aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
                );
            claim = if released_stops {
                claim
                    .condition_expression(
                        "attribute_not_exists(open_case) AND NOT contains(released_findings, :copy)",
                    )
                    .expression_attribute_values(":copy", s(&copy))
            } else {
                claim.condition_expression("attribute_not_exists(open_case)")
            };
            let head = match claim.send().await {
                Ok(_) => {
                    let (opened_at, ()) = futures::try_join!(
                        self.ensure_header(&case_id, target),
                        self.add_finding(&case_id, target, &updated_at, evidence)
                    )?;
                    info!(case_id, "case opened");
                    return Ok(Opened::New(CaseHandle {
                        case_id,
                        claim: new_claim(),
                        opened_at,
                    }));
                }
                Err(e) => {
                    let returned = e
                        .as_service_error()
                        .and_then(|se| match se {
                            aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => {
                                Some(c.item().cloned().unwrap_or_default())
                            }
                            _ => None,
                        });
                    match returned {
                        // A refusal without the item (older services): read the head.
                        Some(item) if item.is_empty() => self
                            .get(head_key.clone(), "head")
                            .await?
                            .unwrap_or_default(),
                        Some(item) => item,
                        None => return Err(Error::from_sdk("dynamodb:UpdateItem", e)),
                    }
                }
            };
            if let Some(case_id) = text(&head, "open_case") {
                if text(&head, "releasing").as_deref() == Some(case_id.as_str())
                    && head
                        .get("releasing_at")
                        .and_then(|v| v.as_n().ok())
                        .and_then(|n| n.parse::<i64>().ok())
                        .is_some_and(|at| epoch_secs() - at < RELEASE_LEASE_SECS)
                {
                    return Err(Error::Transient {
                        action: "dynamodb:UpdateItem",
                        code: "CaseBeingReleased".into(),
                        message: format!(
                            "the instance's case {case_id} is being released: the finding is triaged again once the release is over"
                        ),
                        source: "case being released".into(),
                    });
                }
                let (opened_at, ()) = futures::try_join!(
                    self.ensure_header(&case_id, target),
                    self.add_finding(&case_id, target, &updated_at, evidence)
                )?;
                info!(case_id, "finding joins the instance's open case");
                return Ok(Opened::Joined {
                    handle: CaseHandle {
                        case_id,
                        claim: new_claim(),
                        opened_at: opened_at.clone(),
                    },
                    opened_at,
                });
            }
            let released = head
                .get("released_findings")
                .and_then(|v| v.as_ss().ok())
                .is_some_and(|ids| ids.contains(&copy));
            if released && released_stops {
                let case_id = text(&head, "last_case").unwrap_or_default();
                return Ok(Opened::Released { case_id });
            }
            // The open case was released between the write and the read: try again.
        }
        Err(Error::Misconfigured(
            "the instance's case record changed on every try: is another tool writing the case table?".into(),
        ))
    }

    /// The case's header, written the same by whoever comes first (an execution cut short
    /// between claiming the instance and writing it is completed by the next). Returns when
    /// the case was opened.
    async fn ensure_header(&self, case_id: &str, target: &Target) -> Result<String, Error> {
        let out = self
            .db
            .update_item()
            .table_name(&self.table)
            .key("pk", s(case_key(case_id)))
            .key("sk", s("case"))
            .update_expression(
                "SET case_id = :case, account_id = :account, #region = :region, \
                 #partition = :partition, instance_id = :instance, \
                 opened_at = if_not_exists(opened_at, :now), #status = if_not_exists(#status, :open)",
            )
            .expression_attribute_names("#region", "region")
            .expression_attribute_names("#partition", "partition")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":case", s(case_id))
            .expression_attribute_values(":account", s(&target.scope.account_id))
            .expression_attribute_values(":region", s(&target.scope.region))
            .expression_attribute_values(":partition", s(&target.scope.partition))
            .expression_attribute_values(":instance", s(&target.instance_id))
            .expression_attribute_values(":now", s(now_rfc3339()))
            .expression_attribute_values(":open", s("open"))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:UpdateItem", e))?;
        Ok(out
            .attributes
            .as_ref()
            .and_then(|a| text(a, "opened_at"))
            .unwrap_or_default())
    }

    /// Records a finding in the case; `evidence` is triage's decision in words (why the
    /// instance is contained), absent when a step opens the case alone.
    async fn add_finding(
        &self,
        case_id: &str,
        target: &Target,
        updated_at: &str,
        evidence: Option<&str>,
    ) -> Result<(), Error> {
        let now = now_precise();
        self.db
            .update_item()
            .table_name(&self.table)
            .key("pk", s(case_key(case_id)))
            .key("sk", s(format!("finding#{}", target.finding_id)))
            .update_expression(
                "SET finding_id = :id, finding_type = :type, severity = :severity, updated_at = :updated, \
                 decision = :decision, evidence = :evidence, \
                 first_seen = if_not_exists(first_seen, :now), last_seen = :now ADD seen :one",
            )
            .expression_attribute_values(":updated", s(updated_at))
            .expression_attribute_values(":decision", s(if evidence.is_some() { "contain" } else { "contain (step run alone, no triage)" }))
            .expression_attribute_values(":evidence", s(evidence.unwrap_or("")))
            .expression_attribute_values(":id", s(&target.finding_id))
            .expression_attribute_values(":type", s(&target.finding_type))
            .expression_attribute_values(
                ":severity",
                AttributeValue::N(target.severity.to_string()),
            )
            .expression_attribute_values(":now", s(now))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:UpdateItem", e))?;
        Ok(())
    }

    /// The whole case, read consistently; `None` if there is no such case.
    pub async fn case(&self, case_id: &str) -> Result<Option<Case>, Error> {
        let items = self.query(case_key(case_id), "").await?;
        let Some(header) = items
            .iter()
            .find(|i| text(i, "sk").as_deref() == Some("case"))
        else {
            return Ok(None);
        };
        let mut case = Case {
            case_id: case_id.to_owned(),
            account_id: text(header, "account_id").unwrap_or_default(),
            region: text(header, "region").unwrap_or_default(),
            instance_id: text(header, "instance_id").unwrap_or_default(),
            opened_at: text(header, "opened_at").unwrap_or_default(),
            status: text(header, "status").unwrap_or_default(),
            released_at: text(header, "released_at"),
            ..Case::default()
        };
        for item in &items {
            let sk = text(item, "sk").unwrap_or_default();
            if sk.starts_with("finding#") {
                case.findings.push(CaseFinding {
                    finding_id: text(item, "finding_id").unwrap_or_default(),
                    finding_type: text(item, "finding_type").unwrap_or_default(),
                    first_seen: text(item, "first_seen").unwrap_or_default(),
                    last_seen: text(item, "last_seen").unwrap_or_default(),
                    updated_at: text(item, "updated_at").unwrap_or_default(),
                });
            } else if let Some(step) = sk.strip_prefix("step#") {
                case.steps.push((
                    step.to_owned(),
                    text(item, "last_started").unwrap_or_default(),
                    text(item, "ended").unwrap_or_default(),
                ));
            } else if sk.starts_with("previous#") {
                let state = item.get("state").cloned().ok_or_else(|| {
                    Error::Misconfigured(format!("case {case_id}: item {sk} has no state"))
                })?;
                let previous: Previous =
                    serde_dynamo::from_attribute_value(state).map_err(|e| {
                        Error::Misconfigured(format!("case {case_id}: item {sk} unreadable: {e}"))
                    })?;
                case.previous.push(previous);
            }
        }
        Ok(Some(case))
    }

    /// Marks the case released: the instance has no open case any more, and its findings
    /// contain nothing if GuardDuty sends them again.
    pub async fn mark_released(&self, case: &Case, scope: &Scope) -> Result<(), Error> {
        let now = now_rfc3339();
        self.db
            .update_item()
            .table_name(&self.table)
            .key("pk", s(case_key(&case.case_id)))
            .key("sk", s("case"))
            .update_expression("SET #status = :released, released_at = :now")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":released", s("released"))
            .expression_attribute_values(":now", s(now))
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:UpdateItem", e))?;
        let mut update = self
            .db
            .update_item()
            .table_name(&self.table)
            .key("pk", s(instance_key(scope, &case.instance_id)))
            .key("sk", s("head"))
            .condition_expression("open_case = :case")
            .expression_attribute_values(":case", s(&case.case_id));
        // Each finding as `<id>@<updatedAt>`: the same copy sent again contains nothing, the
        // same finding updated since (the activity recurred) does.
        let mut copies: Vec<String> = case
            .findings
            .iter()
            .map(|f| format!("{}@{}", f.finding_id, f.updated_at))
            .collect();
        copies.sort();
        copies.dedup();
        if copies.is_empty() {
            update = update.update_expression("REMOVE open_case, releasing, releasing_at");
        } else {
            update = update
                .update_expression(
                    "REMOVE open_case, releasing, releasing_at ADD released_findings :ids",
                )
                .expression_attribute_values(":ids", AttributeValue::Ss(copies));
        }
        // Refused: already released (a retried release), nothing more to mark.
        written("dynamodb:UpdateItem", update.send().await).map(|_| ())
    }

    /// Holds the instance's open case for a release: a finding arriving meanwhile waits (and is
    /// triaged again after it) instead of joining a case being undone. `false`: the case is
    /// no longer the instance's open case.
    pub async fn begin_release(&self, case: &Case, scope: &Scope) -> Result<bool, Error> {
        let answer = self
            .db
            .update_item()
            .table_name(&self.table)
            .key("pk", s(instance_key(scope, &case.instance_id)))
            .key("sk", s("head"))
            .update_expression("SET releasing = :case, releasing_at = :now")
            .condition_expression("open_case = :case")
            .expression_attribute_values(":case", s(&case.case_id))
            .expression_attribute_values(":now", AttributeValue::N(epoch_secs().to_string()))
            .send()
            .await;
        written("dynamodb:UpdateItem", answer)
    }

    /// Lets findings join the case again after a release that did not finish.
    pub async fn abort_release(&self, case: &Case, scope: &Scope) -> Result<(), Error> {
        let answer = self
            .db
            .update_item()
            .table_name(&self.table)
            .key("pk", s(instance_key(scope, &case.instance_id)))
            .key("sk", s("head"))
            .update_expression("REMOVE releasing, releasing_at")
            .condition_expression("releasing = :case")
            .expression_attribute_values(":case", s(&case.case_id))
            .send()
            .await;
        written("dynamodb:UpdateItem", answer).map(|_| ())
    }

    /// Records one release attempt: what was restored and what failed.
    pub async fn record_release(
        &self,
        case_id: &str,
        reason: Option<&str>,
        restored: &[String],
        failed: &[String],
    ) -> Result<(), Error> {
        let now = now_rfc3339();
        let list = |v: &[String]| AttributeValue::L(v.iter().map(|x| s(x.as_str())).collect());
        self.db
            .put_item()
            .table_name(&self.table)
            .item("pk", s(case_key(case_id)))
            .item("sk", s(format!("release#{now}#{}", new_claim())))
            .item("at", s(now))
            .item("reason", s(reason.unwrap_or("")))
            .item(
                "outcome",
                s(if failed.is_empty() {
                    "released"
                } else {
                    "incomplete"
                }),
            )
            .item("restored", list(restored))
            .item("failed", list(failed))
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:PutItem", e))?;
        Ok(())
    }

    /// Adds the instance's hold on its role (idempotent).
    pub async fn hold_role(
        &self,
        scope: &Scope,
        role_name: &str,
        instance_id: &str,
        case_id: &str,
    ) -> Result<(), Error> {
        self.db
            .put_item()
            .table_name(&self.table)
            .item("pk", s(role_key(&scope.account_id, role_name)))
            .item("sk", s(format!("hold#{instance_id}")))
            .item("case_id", s(case_id))
            .item("at", s(now_rfc3339()))
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:PutItem", e))?;
        Ok(())
    }

    /// The instances holding the role contained.
    pub async fn holds(&self, scope: &Scope, role_name: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .query(role_key(&scope.account_id, role_name), "hold#")
            .await?
            .iter()
            .filter_map(|i| text(i, "sk")?.strip_prefix("hold#").map(str::to_owned))
            .collect())
    }
}

impl Recorder {
    /// Records a state a step is about to change (or has just changed), unless the case holds
    /// it already: the first record is the state before containment, and a later run (which
    /// reads the state the containment left) never overwrites it. Returns whether it wrote.
    pub async fn remember(&self, previous: &Previous) -> Result<bool, Error> {
        let state = serde_dynamo::to_attribute_value(previous)
            .map_err(|e| Error::Misconfigured(format!("case record not encodable: {e}")))?;
        let answer = self
            .store
            .db
            .put_item()
            .table_name(&self.store.table)
            .item("pk", s(case_key(&self.handle.case_id)))
            .item("sk", s(previous.sort_key()))
            .item("state", state)
            .item("recorded_at", s(now_rfc3339()))
            .condition_expression("attribute_not_exists(sk)")
            .send()
            .await;
        written("dynamodb:PutItem", answer)
    }

    /// Records several states, eight at a time; returns how many were new.
    pub async fn remember_all(&self, previous: &[Previous]) -> Result<usize, Error> {
        let written: Vec<bool> = futures::stream::iter(previous.iter().map(|p| self.remember(p)))
            .buffer_unordered(8)
            .try_collect()
            .await?;
        Ok(written.into_iter().filter(|w| *w).count())
    }

    /// What the case recorded of this kind, read consistently.
    pub async fn recalled(&self) -> Result<Vec<Previous>, Error> {
        let items = self
            .store
            .query(case_key(&self.handle.case_id), "previous#")
            .await?;
        items
            .into_iter()
            .filter_map(|mut i| i.remove("state"))
            .map(|state| {
                serde_dynamo::from_attribute_value(state)
                    .map_err(|e| Error::Misconfigured(format!("case record unreadable: {e}")))
            })
            .collect()
    }

    /// Claims a step done once per case for this execution. A claim older than
    /// [`CLAIM_LEASE_SECS`] (an execution that died), or one whose step ended without creating
    /// anything, is taken over.
    pub async fn claim(&self, step: &str) -> Result<Claim, Error> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let answer = self
            .store
            .db
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s(case_key(&self.handle.case_id)))
            .key("sk", s(format!("step#{step}")))
            .update_expression(
                "SET claimed_by = :me, claimed_at = :now, started = if_not_exists(started, :time), \
                 last_started = :time REMOVE ended",
            )
            // Free: never claimed, claimed by this execution, claimed by one that died (the
            // lease ran out), or ended without creating anything (it failed: try again).
            .condition_expression(
                "attribute_not_exists(claimed_by) OR claimed_by = :me OR claimed_at < :stale \
                 OR (attribute_exists(ended) AND attribute_not_exists(created))",
            )
            .expression_attribute_values(":me", s(&self.handle.claim))
            .expression_attribute_values(":now", AttributeValue::N(now.to_string()))
            .expression_attribute_values(
                ":stale",
                AttributeValue::N((now - CLAIM_LEASE_SECS).to_string()),
            )
            .expression_attribute_values(":time", s(now_precise()))
            .send()
            .await;
        if written("dynamodb:UpdateItem", answer)? {
            return Ok(Claim::Mine);
        }
        let step_item = self
            .store
            .get(case_key(&self.handle.case_id), &format!("step#{step}"))
            .await?
            .unwrap_or_default();
        Ok(Claim::Taken {
            by: text(&step_item, "claimed_by").unwrap_or_default(),
            at: text(&step_item, "started").unwrap_or_default(),
            ended: step_item.contains_key("ended"),
        })
    }

    /// Records a step's start (the first, and the last). A step another execution has
    /// claimed keeps that execution's record.
    pub async fn started(&self, step: &str) -> Result<(), Error> {
        let answer = self
            .store
            .db
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s(case_key(&self.handle.case_id)))
            .key("sk", s(format!("step#{step}")))
            .update_expression("SET started = if_not_exists(started, :time), last_started = :time")
            .condition_expression("attribute_not_exists(claimed_by) OR claimed_by = :me")
            .expression_attribute_values(":time", s(now_precise()))
            .expression_attribute_values(":me", s(&self.handle.claim))
            .send()
            .await;
        written("dynamodb:UpdateItem", answer).map(|_| ())
    }

    /// Records a step's end: its outcome (`done`, `already_done`, `failed`, `skipped`, or the error's
    /// name) and its report or error (cut to [`MAX_REPORT_BYTES`]). A step another execution
    /// has claimed keeps that execution's record: this one's end is not written over it.
    pub async fn finished(&self, step: &str, outcome: &str, report: &str) -> Result<(), Error> {
        let report = cut(report, MAX_REPORT_BYTES);
        let answer = self
            .store
            .db
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s(case_key(&self.handle.case_id)))
            .key("sk", s(format!("step#{step}")))
            .update_expression(
                "SET started = if_not_exists(started, :time), ended = :time, outcome = :outcome, \
                 report = :report, attempts = if_not_exists(attempts, :zero) + :one",
            )
            .expression_attribute_values(":time", s(now_precise()))
            .expression_attribute_values(":outcome", s(outcome))
            .expression_attribute_values(":report", s(report))
            .expression_attribute_values(":zero", AttributeValue::N("0".into()))
            .expression_attribute_values(":one", AttributeValue::N("1".into()))
            .expression_attribute_values(":me", s(&self.handle.claim))
            .condition_expression("attribute_not_exists(claimed_by) OR claimed_by = :me")
            .send()
            .await;
        written("dynamodb:UpdateItem", answer).map(|_| ())
    }

    /// Records that the step is about to call its creating API (CreateSnapshots): only then
    /// may a later run take the resources found by their tags for the step's own.
    pub async fn creating(&self, step: &str) -> Result<(), Error> {
        self.store
            .db
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s(case_key(&self.handle.case_id)))
            .key("sk", s(format!("step#{step}")))
            .update_expression("SET create_called = if_not_exists(create_called, :time)")
            .expression_attribute_values(":time", s(now_rfc3339()))
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:UpdateItem", e))?;
        Ok(())
    }

    /// Whether the step has recorded calling its creating API (see [`Recorder::creating`]).
    pub async fn create_called(&self, step: &str) -> Result<bool, Error> {
        Ok(self
            .store
            .get(case_key(&self.handle.case_id), &format!("step#{step}"))
            .await?
            .is_some_and(|i| i.contains_key("create_called")))
    }

    /// Records what a step created (the snapshot set: `<snapshot> <volume> <device>` each), as
    /// soon as it exists.
    pub async fn record_created(&self, step: &str, created: &[String]) -> Result<(), Error> {
        self.store
            .db
            .update_item()
            .table_name(&self.store.table)
            .key("pk", s(case_key(&self.handle.case_id)))
            .key("sk", s(format!("step#{step}")))
            .update_expression("SET created = :created")
            .expression_attribute_values(
                ":created",
                AttributeValue::L(created.iter().map(|x| s(x.as_str())).collect()),
            )
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:UpdateItem", e))?;
        Ok(())
    }

    /// The ids a step recorded as created (the snapshot set).
    pub async fn created(&self, step: &str) -> Result<Vec<String>, Error> {
        let item = self
            .store
            .get(case_key(&self.handle.case_id), &format!("step#{step}"))
            .await?
            .unwrap_or_default();
        Ok(item
            .get("created")
            .and_then(|v| v.as_l().ok())
            .map(|l| l.iter().filter_map(|x| x.as_s().ok().cloned()).collect())
            .unwrap_or_default())
    }
}

/// Logs a record write that failed without failing the step: containment over bookkeeping.
pub fn warn_unrecorded(what: &str, err: &Error) {
    warn!(what, error = %err, "case record not written");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_id_names_the_instance_and_the_millisecond() {
        let id = new_case_id("i-0123456789abcdef0");
        assert!(is_case_id(&id), "{id}");
        // The shape deploy.sh and helper_scripts/cases.py accept: i-<id>-YYYYMMDDTHHMMSSmmmZ.
        let stamp = id.strip_prefix("i-0123456789abcdef0-").unwrap();
        assert_eq!(stamp.len(), 19, "{stamp}");
        assert_eq!(&stamp[8..9], "T");
        assert!(stamp.ends_with('Z'));
        assert!(
            stamp[..8]
                .bytes()
                .chain(stamp[9..18].bytes())
                .all(|b| b.is_ascii_digit())
        );
    }

    #[test]
    fn a_report_is_cut_on_a_character_boundary() {
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("aé", 2), "a", "é is two bytes");
        assert_eq!(cut("ééé", 4), "éé");
    }

    #[test]
    fn precise_times_order_as_strings_and_parse() {
        let a = now_precise();
        std::thread::sleep(std::time::Duration::from_millis(3));
        let b = now_precise();
        assert!(a < b, "{a} {b}");
        assert_eq!(a.len(), "2026-12-01T17:59:33.123Z".len(), "{a}");
        aws_smithy_types::DateTime::from_str(&a, aws_smithy_types::date_time::Format::DateTime)
            .unwrap();
    }

    #[test]
    fn a_case_is_busy_while_a_step_runs_or_a_finding_waits_for_its_steps() {
        let base = now_precise();
        let t = |ms: u64| format!("{}{:03}Z", &base[..base.len() - 4], ms);
        let finding = |seen: String| CaseFinding {
            finding_id: "f".into(),
            finding_type: "t".into(),
            first_seen: seen.clone(),
            last_seen: seen,
            updated_at: String::new(),
        };
        let mut case = Case {
            findings: vec![finding(t(100))],
            steps: vec![("isolate".into(), t(200), t(300))],
            ..Case::default()
        };
        assert_eq!(case.busy(), None, "every step ended after the finding came");
        case.steps.push(("snapshot".into(), t(400), t(350)));
        assert!(case.busy().unwrap().contains("snapshot"));
        case.steps.pop();
        case.findings.push(finding(t(500)));
        assert!(case.busy().unwrap().contains("joined"));
        case.findings[1].last_seen = "2020-01-01T00:00:00.000Z".into();
        assert_eq!(case.busy(), None, "old activity does not count");
    }
}
