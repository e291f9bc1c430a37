//! Shared fixtures for the tests that run against the local AWS emulator (moto server).
//!
//! Each test gets its own emulated AWS account (moto keeps separate state per account behind
//! AssumeRole), so tests run in parallel without seeing each other's resources.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

use aws_config::{BehaviorVersion, Region, SdkConfig, retry::RetryConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, IamInstanceProfileSpecification,
    InstanceNetworkInterfaceSpecification, IpPermission, IpRange,
};
use ec2_quarantine::Ctx;
use ec2_quarantine::domain::finding::{FindingEvent, parse_event};

pub const REGION: &str = "us-east-1";
const IMAGE_ID: &str = "ami-1e749f67";

/// The emulator's address, set by `helper_scripts/test.sh`.
pub fn endpoint() -> String {
    std::env::var("MOTO_ENDPOINT").unwrap_or_else(|_| {
        panic!("MOTO_ENDPOINT is not set: run the tests with helper_scripts/test.sh, which starts the emulator")
    })
}

static NEXT_ACCOUNT: AtomicU32 = AtomicU32::new(1);

/// A 12-digit account id no other test of this run uses.
pub fn fresh_account_id() -> String {
    let n = NEXT_ACCOUNT.fetch_add(1, Ordering::SeqCst);
    format!("7{:05}{:06}", std::process::id() % 100_000, n)
}

/// SDK configuration for the emulator, with SDK retries off: moto answers unimplemented calls
/// with HTTP 500, which a retrying client would hide.
pub async fn emulator_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(endpoint())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .retry_config(RetryConfig::disabled())
        .load()
        .await
}

/// SDK configuration acting in a fresh emulated account.
pub async fn account_config() -> (SdkConfig, String) {
    let account = fresh_account_id();
    (config_in(&account).await, account)
}

/// SDK configuration acting in the emulated `account`.
pub async fn config_in(account: &str) -> SdkConfig {
    let base = emulator_config().await;
    let assumed = aws_sdk_sts::Client::new(&base)
        .assume_role()
        .role_arn(format!("arn:aws:iam::{account}:role/test-runner"))
        .role_session_name("tests")
        .send()
        .await
        .expect("sts:AssumeRole on the emulator");
    let c = assumed.credentials().expect("credentials");
    let creds = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_owned()),
        None,
        "assumed",
    );
    base.into_builder()
        .credentials_provider(SharedCredentialsProvider::new(creds))
        .build()
}

/// The responder's case table in the account of `config`, keyed as `template.yaml` declares it
/// (`tests/workflow/test_least_privilege.py` checks that the two agree).
pub async fn create_case_table(config: &SdkConfig) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .unwrap()
    };
    let attribute = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .unwrap()
    };
    let created = aws_sdk_dynamodb::Client::new(config)
        .create_table()
        .table_name(ec2_quarantine::case::DEFAULT_TABLE)
        .key_schema(key("pk", KeyType::Hash))
        .key_schema(key("sk", KeyType::Range))
        .attribute_definitions(attribute("pk"))
        .attribute_definitions(attribute("sk"))
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    if let Err(e) = created {
        let already = e
            .as_service_error()
            .is_some_and(|e| e.is_resource_in_use_exception());
        assert!(already, "dynamodb:CreateTable on the emulator: {e:?}");
    }
}

/// The user's test stack, on the emulator: a VPC and subnet, a group open to SSH and a web
/// group, a role with its instance profile, and an instance with two network interfaces and two
/// volumes.
pub struct Fixture {
    pub account: String,
    pub config: SdkConfig,
    pub ctx: Ctx,
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    pub vpc_id: String,
    pub subnet_id: String,
    pub ssh_group: String,
    pub web_group: String,
    pub role_name: String,
    pub profile_arn: String,
    pub instance_id: String,
    pub interfaces: Vec<String>,
    pub volumes: Vec<String>,
}

pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

impl Fixture {
    pub async fn new() -> Fixture {
        Fixture::build(false, false).await
    }

    /// The same stack in a dual-stack (IPv4 and IPv6) VPC.
    pub async fn dual_stack() -> Fixture {
        Fixture::build(true, false).await
    }

    /// The same stack with a Spot instance (`InstanceLifecycle=spot`).
    pub async fn spot() -> Fixture {
        Fixture::build(false, true).await
    }

    async fn build(dual_stack: bool, spot: bool) -> Fixture {
        let (config, account) = account_config().await;
        create_case_table(&config).await;
        let ec2 = aws_sdk_ec2::Client::new(&config);
        let iam = aws_sdk_iam::Client::new(&config);

        let vpc_id = ec2
            .create_vpc()
            .cidr_block("10.0.0.0/16")
            .amazon_provided_ipv6_cidr_block(dual_stack)
            .send()
            .await
            .unwrap()
            .vpc
            .unwrap()
            .vpc_id
            .unwrap();
        let subnet_id = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block("10.0.1.0/24")
            .availability_zone("us-east-1a")
            .send()
            .await
            .unwrap()
            .subnet
            .unwrap()
            .subnet_id
            .unwrap();
        let ssh_group = create_group(&ec2, &vpc_id, "ssh-open").await;
        ec2.authorize_security_group_ingress()
            .group_id(&ssh_group)
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(22)
                    .to_port(22)
                    .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let web_group = create_group(&ec2, &vpc_id, "web").await;

        let role_name = "compromised-instance-role".to_owned();
        iam.create_role()
            .role_name(&role_name)
            .assume_role_policy_document(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
            )
            .send()
            .await
            .unwrap();
        // What the user's test role had: read-only S3 (and SSM) access.
        let read_only = iam
            .create_policy()
            .policy_name("s3-read-only")
            .policy_document(
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:Get*","s3:List*","ssm:GetParameter"],"Resource":"*"}]}"#,
            )
            .send()
            .await
            .unwrap()
            .policy
            .unwrap()
            .arn
            .unwrap();
        iam.attach_role_policy()
            .role_name(&role_name)
            .policy_arn(read_only)
            .send()
            .await
            .unwrap();
        let profile_arn = iam
            .create_instance_profile()
            .instance_profile_name("compromised-instance-profile")
            .send()
            .await
            .unwrap()
            .instance_profile
            .unwrap()
            .arn;
        iam.add_role_to_instance_profile()
            .instance_profile_name("compromised-instance-profile")
            .role_name(&role_name)
            .send()
            .await
            .unwrap();

        let instance_id =
            launch(&ec2, &subnet_id, &ssh_group, &web_group, &profile_arn, spot).await;
        let mut fixture = Fixture {
            ctx: Ctx::from_config(config.clone()),
            account,
            config,
            ec2,
            iam,
            vpc_id,
            subnet_id,
            ssh_group,
            web_group,
            role_name,
            profile_arn,
            instance_id,
            interfaces: Vec::new(),
            volumes: Vec::new(),
        };
        let inst = fixture.instance().await;
        fixture.interfaces = inst
            .network_interfaces()
            .iter()
            .map(|n| n.network_interface_id().unwrap().to_owned())
            .collect();
        fixture.volumes = inst
            .block_device_mappings()
            .iter()
            .map(|m| m.ebs().unwrap().volume_id().unwrap().to_owned())
            .collect();
        assert_eq!(fixture.interfaces.len(), 2, "fixture has two interfaces");
        assert_eq!(fixture.volumes.len(), 2, "fixture has two volumes");
        fixture
    }

    /// Another instance with the same profile (a role shared by a healthy instance).
    pub async fn launch_sibling(&self) -> String {
        launch(
            &self.ec2,
            &self.subnet_id,
            &self.ssh_group,
            &self.web_group,
            &self.profile_arn,
            false,
        )
        .await
    }

    /// `n` more instances with the same profile, in one call (a role shared across a fleet).
    pub async fn launch_many(&self, n: i32) -> usize {
        // A subnet of their own, large enough for a fleet.
        let subnet = self
            .ec2
            .create_subnet()
            .vpc_id(&self.vpc_id)
            .cidr_block("10.0.16.0/20")
            .availability_zone("us-east-1a")
            .send()
            .await
            .unwrap()
            .subnet
            .unwrap()
            .subnet_id
            .unwrap();
        let launched = self
            .ec2
            .run_instances()
            .image_id(IMAGE_ID)
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(n)
            .max_count(n)
            .subnet_id(&subnet)
            .iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .arn(&self.profile_arn)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        // AWS gives each instance of the call the profile; the emulator only the first
        // (tests/README.md): the others get theirs here.
        let ids: Vec<String> = launched
            .instances()
            .iter()
            .filter_map(|i| i.instance_id().map(str::to_owned))
            .collect();
        for id in ids.iter().skip(1) {
            let associated = ec2_quarantine::aws::profile::association(&self.ec2, id)
                .await
                .unwrap();
            if associated.is_none() {
                self.ec2
                    .associate_iam_instance_profile()
                    .instance_id(id)
                    .iam_instance_profile(
                        IamInstanceProfileSpecification::builder()
                            .arn(&self.profile_arn)
                            .build(),
                    )
                    .send()
                    .await
                    .unwrap();
            }
        }
        ids.len()
    }

    /// The role's inline policy `name`, decoded from the URL-encoded JSON IAM returns.
    pub async fn inline_policy(&self, name: &str) -> serde_json::Value {
        let out = self
            .iam
            .get_role_policy()
            .role_name(&self.role_name)
            .policy_name(name)
            .send()
            .await
            .unwrap();
        serde_json::from_str(
            &percent_encoding::percent_decode_str(out.policy_document()).decode_utf8_lossy(),
        )
        .unwrap()
    }

    /// A target group of `kind` in `vpc`, with `target` registered on `port`; its ARN.
    pub async fn target_group_with(
        &self,
        name: &str,
        vpc: &str,
        kind: aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum,
        target: &str,
        port: i32,
    ) -> String {
        let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&self.config);
        let arn = elbv2
            .create_target_group()
            .name(name)
            .protocol(aws_sdk_elasticloadbalancingv2::types::ProtocolEnum::Http)
            .port(port)
            .vpc_id(vpc)
            .target_type(kind)
            .send()
            .await
            .unwrap()
            .target_groups()[0]
            .target_group_arn()
            .unwrap()
            .to_owned();
        elbv2
            .register_targets()
            .target_group_arn(&arn)
            .targets(
                aws_sdk_elasticloadbalancingv2::types::TargetDescription::builder()
                    .id(target)
                    .port(port)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        arn
    }

    /// A sample event from `events/`, pointed at this fixture's account, instance and role.
    pub fn event(&self, name: &str) -> FindingEvent {
        parse_event(self.event_json(name)).expect("sample event parses")
    }

    pub fn event_json(&self, name: &str) -> serde_json::Value {
        let path = format!("{}/events/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["account"] = self.account.clone().into();
        let d = &mut v["detail"];
        d["accountId"] = self.account.clone().into();
        // The finding's ARN names its account too, as GuardDuty writes it.
        if let Some(arn) = d["arn"].as_str() {
            let arn = arn.replace(":123456789012:", &format!(":{}:", self.account));
            d["arn"] = arn.into();
        }
        let r = &mut d["resource"];
        if let Some(k) = r.get_mut("accessKeyDetails").filter(|k| k.is_object()) {
            k["principalId"] = format!("AROAEXAMPLEROLEID1234:{}", self.instance_id).into();
            k["userName"] = self.role_name.clone().into();
        }
        if let Some(i) = r.get_mut("instanceDetails").filter(|i| i.is_object()) {
            i["instanceId"] = self.instance_id.clone().into();
            i["iamInstanceProfile"]["arn"] = self.profile_arn.clone().into();
        }
        v
    }

    pub async fn instance(&self) -> aws_sdk_ec2::types::Instance {
        self.ec2
            .describe_instances()
            .instance_ids(&self.instance_id)
            .send()
            .await
            .unwrap()
            .reservations()[0]
            .instances()[0]
            .clone()
    }

    /// Each interface's groups, as DescribeNetworkInterfaces reports them.
    pub async fn interface_groups(&self) -> BTreeMap<String, Vec<String>> {
        let out = self
            .ec2
            .describe_network_interfaces()
            .set_network_interface_ids(Some(self.interfaces.clone()))
            .send()
            .await
            .unwrap();
        out.network_interfaces()
            .iter()
            .map(|n| {
                let mut groups: Vec<String> = n
                    .groups()
                    .iter()
                    .map(|g| g.group_id().unwrap().to_owned())
                    .collect();
                groups.sort();
                (n.network_interface_id().unwrap().to_owned(), groups)
            })
            .collect()
    }

    pub async fn security_groups_named(
        &self,
        name: &str,
    ) -> Vec<aws_sdk_ec2::types::SecurityGroup> {
        self.ec2
            .describe_security_groups()
            .filters(filter("vpc-id", &self.vpc_id))
            .filters(filter("group-name", name))
            .send()
            .await
            .unwrap()
            .security_groups()
            .to_vec()
    }

    /// Snapshots of the fixture's volumes (the emulator also lists its AMIs' snapshots as own).
    pub async fn snapshots(&self) -> Vec<aws_sdk_ec2::types::Snapshot> {
        self.ec2
            .describe_snapshots()
            .filters(
                Filter::builder()
                    .name("volume-id")
                    .set_values(Some(self.volumes.clone()))
                    .build(),
            )
            .send()
            .await
            .unwrap()
            .snapshots()
            .to_vec()
    }

    pub async fn attached_policies(&self) -> Vec<String> {
        let mut arns: Vec<String> = self
            .iam
            .list_attached_role_policies()
            .role_name(&self.role_name)
            .send()
            .await
            .unwrap()
            .attached_policies()
            .iter()
            .map(|p| p.policy_arn().unwrap().to_owned())
            .collect();
        arns.sort();
        arns
    }

    /// How many times the DenyAll policy is attached to the fixture's role (0 or 1 in IAM).
    pub async fn deny_all_attachments(&self) -> usize {
        let arn = ec2_quarantine::steps::role::deny_all_policy_arn("aws", &self.account);
        self.attached_policies()
            .await
            .iter()
            .filter(|p| **p == arn)
            .count()
    }

    pub async fn inline_policies(&self) -> Vec<String> {
        self.iam
            .list_role_policies()
            .role_name(&self.role_name)
            .send()
            .await
            .unwrap()
            .policy_names()
            .to_vec()
    }

    /// The instance's open case, as release reads it.
    pub async fn case(&self) -> ec2_quarantine::case::Case {
        self.case_in(&self.ctx)
            .await
            .expect("the instance has an open case")
    }

    /// The instance's open case in the case table of `ctx`, if it has one.
    pub async fn case_in(&self, ctx: &Ctx) -> Option<ec2_quarantine::case::Case> {
        let scope = ec2_quarantine::domain::finding::Scope {
            account_id: self.account.clone(),
            region: REGION.into(),
            partition: "aws".into(),
        };
        let (id, _) = ctx
            .cases()
            .open_case(&scope, &self.instance_id)
            .await
            .expect("case table")?;
        ctx.cases().case(&id).await.expect("case table")
    }

    pub async fn tags(&self) -> BTreeMap<String, String> {
        self.instance()
            .await
            .tags()
            .iter()
            .map(|t| (t.key().unwrap().to_owned(), t.value().unwrap().to_owned()))
            .collect()
    }
}

async fn create_group(ec2: &aws_sdk_ec2::Client, vpc_id: &str, name: &str) -> String {
    ec2.create_security_group()
        .group_name(name)
        .description(format!("fixture group {name}"))
        .vpc_id(vpc_id)
        .send()
        .await
        .unwrap()
        .group_id
        .unwrap()
}

async fn launch(
    ec2: &aws_sdk_ec2::Client,
    subnet_id: &str,
    ssh_group: &str,
    web_group: &str,
    profile_arn: &str,
    spot: bool,
) -> String {
    let image = ec2
        .describe_images()
        .image_ids(IMAGE_ID)
        .send()
        .await
        .unwrap();
    let root = image.images()[0]
        .root_device_name()
        .unwrap_or("/dev/sda1")
        .to_owned();
    // Interfaces are given with their own groups (not SecurityGroupIds), as on AWS for
    // multi-interface instances; the root device is listed or the emulator drops it.
    // Instance tags in instance metadata, as many real instances have them: EC2 then refuses
    // tag keys with `/` or spaces on the instance (the strict proxy enforces it).
    let out = ec2
        .run_instances()
        .image_id(IMAGE_ID)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .min_count(1)
        .max_count(1)
        .metadata_options(
            aws_sdk_ec2::types::InstanceMetadataOptionsRequest::builder()
                .instance_metadata_tags(aws_sdk_ec2::types::InstanceMetadataTagsState::Enabled)
                .build(),
        )
        .set_instance_market_options(spot.then(|| {
            aws_sdk_ec2::types::InstanceMarketOptionsRequest::builder()
                .market_type(aws_sdk_ec2::types::MarketType::Spot)
                .build()
        }))
        .iam_instance_profile(
            IamInstanceProfileSpecification::builder()
                .arn(profile_arn)
                .build(),
        )
        .network_interfaces(
            InstanceNetworkInterfaceSpecification::builder()
                .device_index(0)
                .subnet_id(subnet_id)
                .groups(ssh_group)
                .build(),
        )
        .network_interfaces(
            InstanceNetworkInterfaceSpecification::builder()
                .device_index(1)
                .subnet_id(subnet_id)
                .groups(web_group)
                .groups(ssh_group)
                .build(),
        )
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(root)
                .ebs(
                    EbsBlockDevice::builder()
                        .volume_size(8)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name("/dev/sdf")
                .ebs(
                    EbsBlockDevice::builder()
                        .volume_size(10)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    out.instances()[0].instance_id().unwrap().to_owned()
}

/// A request to release the fixture's instance.
pub fn release_request(f: &Fixture) -> ec2_quarantine::steps::release::ReleaseRequest {
    ec2_quarantine::steps::release::ReleaseRequest {
        instance_id: f.instance_id.clone(),
        account_id: Some(f.account.clone()),
        region: Some(REGION.into()),
        partition: None,
        case_id: None,
        reason: Some("investigation closed".into()),
        release_credentials: false,
    }
}

/// A context for the fixture's account with the SDK's standard retries (as deployed), with a
/// short backoff so injected transient faults are retried quickly.
pub fn retrying_ctx(config: &SdkConfig) -> Ctx {
    Ctx::from_config(retrying(config))
}

/// The same, with a per-attempt timeout that an injected delay (6 s) overruns.
pub fn impatient_ctx(config: &SdkConfig) -> Ctx {
    let config = retrying(config)
        .to_builder()
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(std::time::Duration::from_secs(3))
                .build(),
        )
        .build();
    Ctx::from_config(config)
}

fn retrying(config: &SdkConfig) -> SdkConfig {
    config
        .to_builder()
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(std::time::Duration::from_millis(20)),
        )
        .build()
}

/// The access key id the fixture's account signs with (the fault proxy keys its rules on it).
pub async fn access_key(config: &SdkConfig) -> String {
    use aws_credential_types::provider::ProvideCredentials;
    config
        .credentials_provider()
        .expect("credentials")
        .provide_credentials()
        .await
        .expect("credentials")
        .access_key_id()
        .to_owned()
}

fn proxy_post(path: &str, body: serde_json::Value) {
    let url = format!("{}/__proxy__/{path}", endpoint());
    ureq::post(&url)
        .header("content-type", "application/json")
        .send(body.to_string().as_str())
        .unwrap_or_else(|e| {
            panic!("the fault proxy at {url} did not answer ({e}): run the tests with helper_scripts/test.sh")
        });
}

/// Makes the proxy answer `action` calls signed with `key` with `fault` (`times`: None = always).
pub fn inject(key: &str, action: &str, fault: &str, times: Option<u32>) {
    let mut rule =
        serde_json::json!({"access_key": key, "action": action, "fault": fault, "seconds": 6});
    if let Some(t) = times {
        rule["times"] = t.into();
    }
    proxy_post("faults", rule);
}

/// Adds a fault rule as the proxy takes it (see tests/tools/fault_proxy.py).
pub fn inject_rule(rule: serde_json::Value) {
    proxy_post("faults", rule);
}

/// Counts a conclusion in the proxy's summary ("contained", "honest_failure", ...).
pub fn record_outcome(kind: &str) {
    proxy_post("outcome", serde_json::json!({"kind": kind}));
}

/// The calls the fault proxy saw signed with `key`, oldest first.
pub fn proxy_log(key: &str) -> Vec<serde_json::Value> {
    let url = format!("{}/__proxy__/log", endpoint());
    let text = ureq::get(&url)
        .call()
        .unwrap_or_else(|e| panic!("the fault proxy at {url} did not answer ({e})"))
        .body_mut()
        .read_to_string()
        .unwrap();
    let log: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    log.into_iter().filter(|e| e["access_key"] == key).collect()
}

/// An EC2 client that bypasses the fault proxy, for test set-up that is itself destructive
/// (terminating a fixture): the proxy's log then shows what the code under test called.
pub fn direct_ec2(config: &SdkConfig) -> aws_sdk_ec2::Client {
    let direct = std::env::var("MOTO_DIRECT").unwrap_or_else(|_| endpoint());
    aws_sdk_ec2::Client::new(&config.to_builder().endpoint_url(direct).build())
}

/// An S3 client that bypasses the fault proxy (path-style, as the emulator needs), for set-up and
/// for checks of what the code under test left.
pub fn direct_s3(config: &SdkConfig) -> aws_sdk_s3::Client {
    let direct = std::env::var("MOTO_DIRECT").unwrap_or_else(|_| endpoint());
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config.to_builder().endpoint_url(direct).build())
            .force_path_style(true)
            .build(),
    )
}

/// The responder's evidence bucket in the account of `config`, as `template.yaml` declares it:
/// Object Lock on, versioned, a default retention of governance for 90 days (the snapshot lock's
/// defaults). Named as `tests/tools/iam_check.py` names it (`evidence_bucket`).
pub async fn evidence_bucket(config: &SdkConfig, account: &str) -> String {
    use aws_sdk_s3::types::{
        DefaultRetention, ObjectLockConfiguration, ObjectLockEnabled, ObjectLockRetentionMode,
        ObjectLockRule,
    };
    let name = format!("ec2-quarantine-evidence-{account}");
    let s3 = direct_s3(config);
    s3.create_bucket()
        .bucket(&name)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .expect("s3:CreateBucket on the emulator");
    s3.put_object_lock_configuration()
        .bucket(&name)
        .object_lock_configuration(
            ObjectLockConfiguration::builder()
                .object_lock_enabled(ObjectLockEnabled::Enabled)
                .rule(
                    ObjectLockRule::builder()
                        .default_retention(
                            DefaultRetention::builder()
                                .mode(ObjectLockRetentionMode::Governance)
                                .days(90)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("s3:PutObjectLockConfiguration on the emulator");
    name
}

/// Makes the proxy answer one `action` call signed with `key` with an AWS error `code`.
pub fn inject_error(key: &str, action: &str, code: &str, status: u16) {
    inject_error_times(key, action, code, status, 1);
}

/// EC2's error `code` for the next `times` calls of `action`.
pub fn inject_error_times(key: &str, action: &str, code: &str, status: u16, times: u32) {
    proxy_post(
        "faults",
        serde_json::json!({"access_key": key, "action": action, "fault": "error", "code": code, "status": status, "times": times}),
    );
}

/// A topic with an SQS queue subscribed to it: what a subscriber of the alert topic receives.
pub struct Subscriber {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub topic_arn: String,
}

impl Subscriber {
    /// The topic `topic_name` and a queue subscribed to it, in the account of `config`.
    pub async fn new(config: &SdkConfig, topic_name: &str) -> Subscriber {
        let sns = aws_sdk_sns::Client::new(config);
        let sqs = aws_sdk_sqs::Client::new(config);
        let topic_arn = sns
            .create_topic()
            .name(topic_name)
            .send()
            .await
            .unwrap()
            .topic_arn
            .unwrap();
        let queue_url = sqs
            .create_queue()
            .queue_name("security-team")
            .send()
            .await
            .unwrap()
            .queue_url
            .unwrap();
        let attrs = sqs
            .get_queue_attributes()
            .queue_url(&queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap();
        let queue_arn =
            attrs.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn].clone();
        sns.subscribe()
            .topic_arn(&topic_arn)
            .protocol("sqs")
            .endpoint(queue_arn)
            .send()
            .await
            .unwrap();
        Subscriber {
            sqs,
            queue_url,
            topic_arn,
        }
    }

    /// The SNS envelopes the queue received.
    pub async fn received(&self) -> Vec<serde_json::Value> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        out.messages()
            .iter()
            .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
            .collect()
    }
}

/// Runs an async test on a thread of its own with 16 MiB of stack. The debug build's futures of
/// a whole step (its SDK calls' deserializers, the step's own state) need more than a test
/// thread's 2 MiB where a test runs several steps in one future; a Lambda function's main
/// thread has 8 MiB for the release build's much smaller frames.
pub fn on_a_big_stack<F: std::future::Future<Output = ()> + 'static>(test: fn() -> F) {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(test())
        })
        .expect("a test thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
}
