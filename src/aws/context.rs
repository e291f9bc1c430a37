//! The one context a function loads at init and lends to every invocation.
//!
//! The SDK configuration is read once from the standard environment (credentials, region,
//! `AWS_ENDPOINT_URL`), so the same binary runs against AWS and against a local emulator. Clients
//! for a finding are made per target: every call of a containment step goes to the finding's own
//! account and region. In the responder's own account the function's credentials are used; in a
//! member account, credentials of the member role, assumed once per step with a session named
//! after the finding. Clients share the configuration's HTTP client, so making them opens no
//! connection.

use aws_config::{AppName, BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use tracing::info;

use crate::aws::calls::CallMetrics;
use crate::domain::finding::{Scope, is_role_name};
use crate::domain::outcome::Plan;
use crate::domain::settings::Settings;
use crate::error::Error;

/// Who the responder may act for, read once at init from the function's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrgSettings {
    /// The responder's own account (`RESPONDER_ACCOUNT_ID`); findings of any other account are
    /// member-account findings.
    pub responder_account: Option<String>,
    /// The role to assume in member accounts (`MEMBER_ROLE_NAME`); none: act in the own account only.
    pub member_role_name: Option<String>,
    /// The external id the member role's trust policy requires (`MEMBER_ROLE_EXTERNAL_ID`).
    pub external_id: Option<String>,
    /// Member accounts acted on (`MEMBER_ACCOUNTS_ALLOW`, comma-separated); empty: all of them.
    pub allow: Vec<String>,
    /// Accounts never acted on, the own one included (`MEMBER_ACCOUNTS_DENY`, comma-separated).
    pub deny: Vec<String>,
}

impl OrgSettings {
    pub fn from_env() -> Result<OrgSettings, Error> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let accounts = |name: &str| -> Result<Vec<String>, Error> {
            var(name)
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    if is_account_id(a) {
                        Ok(a.to_owned())
                    } else {
                        Err(Error::Misconfigured(format!(
                            "{name}: {a:?} is not a 12-digit account id"
                        )))
                    }
                })
                .collect()
        };
        let settings = OrgSettings {
            responder_account: var("RESPONDER_ACCOUNT_ID"),
            member_role_name: var("MEMBER_ROLE_NAME"),
            external_id: var("MEMBER_ROLE_EXTERNAL_ID"),
            allow: accounts("MEMBER_ACCOUNTS_ALLOW")?,
            deny: accounts("MEMBER_ACCOUNTS_DENY")?,
        };
        if let Some(a) = &settings.responder_account
            && !is_account_id(a)
        {
            return Err(Error::Misconfigured(format!(
                "RESPONDER_ACCOUNT_ID {a:?} is not a 12-digit account id"
            )));
        }
        if let Some(r) = &settings.member_role_name
            && !is_role_name(r)
        {
            return Err(Error::Misconfigured(format!(
                "MEMBER_ROLE_NAME {r:?} is not an IAM role name"
            )));
        }
        Ok(settings)
    }

    pub fn is_own(&self, account: &str) -> bool {
        self.responder_account
            .as_deref()
            .is_none_or(|own| own == account)
    }

    /// Why the responder must not act in `account`, if it must not.
    pub fn refusal(&self, account: &str) -> Option<String> {
        if self.deny.iter().any(|a| a == account) {
            return Some(format!("account {account} is on the responder's deny-list"));
        }
        if self.is_own(account) {
            return None;
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|a| a == account) {
            return Some(format!(
                "member account {account} is not on the responder's allow-list"
            ));
        }
        if self.member_role_name.is_none() {
            return Some(format!(
                "account {account} is not the responder's own and no member role is configured"
            ));
        }
        None
    }
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

#[derive(Debug, Clone)]
pub struct Ctx {
    config: SdkConfig,
    sts: aws_sdk_sts::Client,
    org: OrgSettings,
    settings: Settings,
    cases: crate::case::Store,
    /// The pause switch, in the responder's own account (none without `PAUSE_PARAMETER`).
    pause: Option<crate::aws::pause::PauseSwitch>,
    /// The evidence bucket, in the responder's own account (none without `EVIDENCE_BUCKET`).
    evidence: Option<crate::aws::evidence::EvidenceStore>,
}

/// The clients a containment step uses, bound to the finding's account and region, and the
/// settings it acts by.
#[derive(Debug, Clone)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub elbv2: aws_sdk_elasticloadbalancingv2::Client,
    pub elb: aws_sdk_elasticloadbalancing::Client,
    pub settings: Settings,
    plan: Option<std::sync::Arc<Plan>>,
    /// The case this step records in (none in a dry run, or when the case table could not be
    /// reached: the step then acts all the same and says so).
    pub case: Option<crate::case::Recorder>,
    /// Why there is no case, when there should be one.
    pub case_unavailable: Option<String>,
    /// The evidence bucket (the responder's own, whatever account the clients act in).
    pub evidence: Option<crate::aws::evidence::EvidenceStore>,
}

/// The EC2 client of a step, tracing its calls when the benchmarks ask
/// ([`crate::aws::calls`]).
fn ec2_client(config: &SdkConfig) -> aws_sdk_ec2::Client {
    let mut conf = aws_sdk_ec2::config::Builder::from(config).interceptor(CallMetrics);
    if crate::aws::calls::enabled() {
        conf = conf.interceptor(crate::aws::calls::CallTrace);
    }
    aws_sdk_ec2::Client::from_conf(conf.build())
}

/// A client of `$service` whose calls count in the invocation's metrics.
macro_rules! counted {
    ($service:ident, $config:expr) => {
        $service::Client::from_conf(
            $service::config::Builder::from($config)
                .interceptor(CallMetrics)
                .build(),
        )
    };
}

impl Clients {
    /// Clients of every service for one configuration (one account and region).
    pub fn new(config: &SdkConfig, settings: Settings) -> Clients {
        Clients {
            ec2: ec2_client(config),
            iam: counted!(aws_sdk_iam, config),
            autoscaling: counted!(aws_sdk_autoscaling, config),
            elbv2: counted!(aws_sdk_elasticloadbalancingv2, config),
            elb: counted!(aws_sdk_elasticloadbalancing, config),
            plan: settings.dry_run.then(Default::default),
            settings,
            case: None,
            case_unavailable: None,
            evidence: None,
        }
    }

    /// In a dry run, where the step's changes are collected instead of made.
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_deref()
    }
}

/// The access key id of the emulator's test credentials (deploy.sh emulator's commands).
const EMULATOR_ACCESS_KEY: &str = "testing";

/// The local emulator `sam local invoke` points the function at (`SAM_LOCAL_ENDPOINT_URL`, which
/// the template declares empty so that an `--env-vars` file can set it: SAM passes only the
/// variables a function declares). Honoured only inside SAM's container (`AWS_SAM_LOCAL=true`,
/// which SAM sets and Lambda never does); set anywhere else, the function refuses to start
/// rather than send a deployed function's calls elsewhere than AWS.
fn sam_local_endpoint(
    url: Option<&str>,
    sam_local: Option<&str>,
    access_key: Option<&str>,
) -> Result<Option<String>, Error> {
    let Some(url) = url.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if sam_local != Some("true") {
        return Err(Error::Misconfigured(
            "SAM_LOCAL_ENDPOINT_URL is for sam local invoke only (AWS_SAM_LOCAL=true): leave it empty in a deployed function".into(),
        ));
    }
    // The emulator's test credentials only: a caller's real keys (a `--profile` SAM was given)
    // are never sent, even signed, to a local endpoint.
    if access_key != Some(EMULATOR_ACCESS_KEY) {
        return Err(Error::Misconfigured(format!(
            "SAM_LOCAL_ENDPOINT_URL is set but the credentials are not the emulator's ({EMULATOR_ACCESS_KEY}): run the command deploy.sh emulator prints, without --profile"
        )));
    }
    let shaped = (url.starts_with("http://") || url.starts_with("https://"))
        && url.len() <= 200
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if !shaped {
        return Err(Error::Misconfigured(format!(
            "SAM_LOCAL_ENDPOINT_URL must be an http:// or https:// address, got {:?}",
            url.chars().take(80).collect::<String>()
        )));
    }
    Ok(Some(url.to_owned()))
}

impl Ctx {
    /// Loads the SDK configuration and the organization settings from the environment. Makes
    /// no network call; bad settings fail here, at init, with a clear message.
    pub async fn load() -> Result<Ctx, Error> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(endpoint) = sam_local_endpoint(
            std::env::var("SAM_LOCAL_ENDPOINT_URL").ok().as_deref(),
            std::env::var("AWS_SAM_LOCAL").ok().as_deref(),
            std::env::var("AWS_ACCESS_KEY_ID").ok().as_deref(),
        )? {
            info!(%endpoint, "sam local invoke: every AWS call goes to the local emulator");
            loader = loader.endpoint_url(endpoint);
        }
        let config = loader.load().await;
        let table = std::env::var("CASE_TABLE")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| crate::case::DEFAULT_TABLE.to_owned());
        let pause = match std::env::var("PAUSE_PARAMETER") {
            Ok(name) if !name.trim().is_empty() => Some(crate::aws::pause::PauseSwitch::new(
                counted!(aws_sdk_ssm, &config),
                &name,
            )?),
            _ => None,
        };
        let evidence = match std::env::var("EVIDENCE_BUCKET") {
            Ok(bucket) if !bucket.trim().is_empty() => Some(
                crate::aws::evidence::EvidenceStore::new(&config, bucket.trim()),
            ),
            _ => None,
        };
        let mut ctx = Ctx::new(config, OrgSettings::from_env()?)
            .with_settings(Settings::from_env()?)
            .with_case_table(table.trim());
        ctx.pause = pause;
        ctx.evidence = evidence;
        Ok(ctx)
    }

    pub fn new(config: SdkConfig, org: OrgSettings) -> Ctx {
        let sts = counted!(aws_sdk_sts, &config);
        let cases = crate::case::Store::new(&config, crate::case::DEFAULT_TABLE);
        Ctx {
            config,
            sts,
            org,
            settings: Settings::default(),
            cases,
            pause: None,
            evidence: None,
        }
    }

    /// The same context writing evidence to `bucket` (a name S3 would refuse makes every
    /// manifest a warning: the snapshots are taken all the same).
    pub fn with_evidence_bucket(mut self, bucket: &str) -> Ctx {
        self.evidence = Some(crate::aws::evidence::EvidenceStore::new(
            &self.config,
            bucket,
        ));
        self
    }

    /// The same context with a pause switch (tests give one on the emulator or mocked).
    pub fn with_pause_switch(mut self, switch: crate::aws::pause::PauseSwitch) -> Ctx {
        self.pause = Some(switch);
        self
    }

    /// What the pause switch says now ([`crate::aws::pause`]); running when there is none. An
    /// error only when SSM failed transiently and no recent value stands in (retryable).
    pub async fn pause(&self) -> Result<crate::aws::pause::Pause, Error> {
        match &self.pause {
            Some(switch) => switch.read().await,
            None => Ok(crate::aws::pause::Pause::Running),
        }
    }

    /// The same context keeping its cases in another table.
    pub fn with_case_table(mut self, table: &str) -> Ctx {
        self.cases = crate::case::Store::new(&self.config, table);
        self
    }

    /// The evidence bucket, when `EVIDENCE_BUCKET` names one.
    pub fn evidence(&self) -> Option<&crate::aws::evidence::EvidenceStore> {
        self.evidence.as_ref()
    }

    /// The case table, in the responder's own account whatever account a finding names.
    pub fn cases(&self) -> &crate::case::Store {
        &self.cases
    }

    /// The same context acting by other settings.
    pub fn with_settings(mut self, settings: Settings) -> Ctx {
        self.settings = settings;
        self
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The same context for one function: its name goes into every request's User-Agent
    /// (`app/<function>`, the SDK's app id), which CloudTrail records as `userAgent`. In a member
    /// account every step shares the member role's session: the app id tells which step made a
    /// call. The name is one of the binaries' (`triage`, `isolate`, `deny-role`...).
    pub fn acting_as(&self, function: &'static str) -> Ctx {
        let Ok(app) = AppName::new(function) else {
            return self.clone();
        };
        let config = self.config.to_builder().app_name(app.clone()).build();
        let sts = aws_sdk_sts::Client::from_conf(
            self.sts.config().to_builder().app_name(app.clone()).build(),
        );
        Ctx {
            sts,
            pause: self.pause.as_ref().map(|p| p.acting_as(app.clone())),
            evidence: self.evidence.as_ref().map(|e| e.acting_as(app.clone())),
            cases: self.cases.acting_as(app),
            config,
            ..self.clone()
        }
    }

    /// A context acting only in the account of its own credentials.
    pub fn from_config(config: SdkConfig) -> Ctx {
        Ctx::new(config, OrgSettings::default())
    }

    /// The same context with another STS client (tests use a mocked one).
    pub fn with_sts(mut self, sts: aws_sdk_sts::Client) -> Ctx {
        self.sts = sts;
        self
    }

    pub fn config(&self) -> &SdkConfig {
        &self.config
    }

    pub fn org(&self) -> &OrgSettings {
        &self.org
    }

    /// Clients for an account and region: the function's own credentials in its own account,
    /// the member role's in a member account (the caller checks `org().refusal` first), in a
    /// session named after what the clients act on (`on_behalf_of`: the finding, or the release),
    /// as the member account's CloudTrail shows it.
    pub async fn clients(&self, scope: &Scope, on_behalf_of: &str) -> Result<Clients, Error> {
        let config = self.scoped_config(scope, on_behalf_of).await?;
        let mut clients = Clients::new(&config, self.settings.clone());
        clients.evidence = self.evidence.clone();
        Ok(clients)
    }

    /// The SDK configuration for an account and region, as [`Ctx::clients`] uses it: for a
    /// service the containment steps do not share.
    pub async fn scoped_config(
        &self,
        scope: &Scope,
        on_behalf_of: &str,
    ) -> Result<SdkConfig, Error> {
        let mut config = self.config.to_builder();
        config.set_region(Some(Region::new(scope.region.clone())));
        if !self.org.is_own(&scope.account_id) {
            let credentials = self.assume_member_role(scope, on_behalf_of).await?;
            config.set_credentials_provider(Some(SharedCredentialsProvider::new(credentials)));
        }
        Ok(config.build())
    }

    async fn assume_member_role(
        &self,
        scope: &Scope,
        on_behalf_of: &str,
    ) -> Result<Credentials, Error> {
        let role_name = self.org.member_role_name.as_deref().unwrap_or_default();
        let role_arn = format!(
            "arn:{}:iam::{}:role/{role_name}",
            scope.partition, scope.account_id
        );
        // Boxed: the SDK's futures nest deep enough to exceed rustc's layout depth limit otherwise.
        let credentials =
            Box::pin(self.assume(&role_arn, on_behalf_of, self.org.external_id.clone()))
                .await
                .map_err(|err| {
                    if err.name().is_retryable() {
                        err
                    } else {
                        Error::MemberRoleUnavailable {
                            role_arn: role_arn.clone(),
                            reason: err.to_string(),
                        }
                    }
                })?;
        info!(role = %role_arn, "acting in member account");
        Ok(credentials)
    }

    /// Credentials of `role_arn` for 15 minutes, in a session named after what they act on
    /// (`on_behalf_of`), as the role's account's CloudTrail shows it.
    async fn assume(
        &self,
        role_arn: &str,
        on_behalf_of: &str,
        external_id: Option<String>,
    ) -> Result<Credentials, Error> {
        let session: String = format!("ec2-quarantine-{on_behalf_of}")
            .chars()
            .take(64)
            .collect();
        let out = self
            .sts
            .assume_role()
            .role_arn(role_arn)
            .role_session_name(&session)
            .set_external_id(external_id)
            .duration_seconds(900)
            .send()
            .await
            .map_err(|e| Error::from_sdk("sts:AssumeRole", e))?;
        let c = out.credentials().ok_or_else(|| Error::Aws {
            action: "sts:AssumeRole",
            code: "NoCredentials".into(),
            message: "sts:AssumeRole returned no credentials".into(),
            source: "no credentials".into(),
        })?;
        Ok(Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_owned()),
            std::time::SystemTime::try_from(*c.expiration()).ok(),
            "ec2-quarantine-assumed-role",
        ))
    }

    /// An EC2 client acting in the forensic account, in its key's region, through the role
    /// that receives copies there (`helper_scripts/forensic-account.yaml`).
    pub async fn forensic_ec2(
        &self,
        forensic: &crate::domain::forensic::ForensicAccount,
        on_behalf_of: &str,
    ) -> Result<aws_sdk_ec2::Client, Error> {
        let credentials = Box::pin(self.assume(&forensic.role_arn(), on_behalf_of, None)).await?;
        info!(role = %forensic.role_arn(), "acting in the forensic account");
        let mut config = self.config.to_builder();
        config.set_region(Some(Region::new(forensic.region.clone())));
        config.set_credentials_provider(Some(SharedCredentialsProvider::new(credentials)));
        Ok(counted!(aws_sdk_ec2, &config.build()))
    }

    /// A client for the responder's own SNS topic, in the region named by its ARN.
    pub fn sns_for_topic(&self, topic_arn: &str) -> aws_sdk_sns::Client {
        let mut builder = aws_sdk_sns::config::Builder::from(&self.config);
        if let Some(region) = topic_arn.split(':').nth(3).filter(|r| !r.is_empty()) {
            builder = builder.region(Region::new(region.to_owned()));
        }
        aws_sdk_sns::Client::from_conf(builder.interceptor(CallMetrics).build())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_sam_local_endpoint_is_taken_only_inside_sam_local() {
        let key = Some("testing");
        assert_eq!(sam_local_endpoint(None, Some("true"), key).unwrap(), None);
        assert_eq!(sam_local_endpoint(Some(" "), None, None).unwrap(), None);
        assert_eq!(
            sam_local_endpoint(Some("http://172.17.0.1:5000"), Some("true"), key).unwrap(),
            Some("http://172.17.0.1:5000".to_owned())
        );
        // A deployed function (no AWS_SAM_LOCAL) with it set refuses to start.
        assert!(sam_local_endpoint(Some("http://172.17.0.1:5000"), None, key).is_err());
        assert!(sam_local_endpoint(Some("http://x:1"), Some("1"), key).is_err());
        assert!(sam_local_endpoint(Some("ftp://x"), Some("true"), key).is_err());
        assert!(sam_local_endpoint(Some("http://x y"), Some("true"), key).is_err());
        // A caller's real keys in the container: refused, nothing sent.
        assert!(sam_local_endpoint(Some("http://x:1"), Some("true"), Some("AKIAEXAMPLE")).is_err());
        assert!(sam_local_endpoint(Some("http://x:1"), Some("true"), None).is_err());
    }

    use super::*;

    fn org() -> OrgSettings {
        OrgSettings {
            responder_account: Some("111111111111".into()),
            member_role_name: Some("ec2-quarantine-member".into()),
            external_id: Some("x".into()),
            allow: vec![],
            deny: vec![],
        }
    }

    #[test]
    fn own_account_is_always_acted_on_unless_denied() {
        let mut o = org();
        o.allow = vec!["222222222222".into()];
        assert_eq!(o.refusal("111111111111"), None);
        o.deny = vec!["111111111111".into()];
        assert!(o.refusal("111111111111").unwrap().contains("deny-list"));
    }

    #[test]
    fn member_accounts_follow_the_lists() {
        let mut o = org();
        assert_eq!(
            o.refusal("222222222222"),
            None,
            "no allow-list: every member"
        );
        o.allow = vec!["222222222222".into()];
        assert_eq!(o.refusal("222222222222"), None);
        assert!(
            o.refusal("333333333333")
                .unwrap()
                .contains("not on the responder's allow-list")
        );
        o.deny = vec!["222222222222".into()];
        assert!(o.refusal("222222222222").unwrap().contains("deny-list"));
    }

    #[test]
    fn without_a_member_role_only_the_own_account_is_acted_on() {
        let mut o = org();
        o.member_role_name = None;
        assert_eq!(o.refusal("111111111111"), None);
        assert!(
            o.refusal("222222222222")
                .unwrap()
                .contains("no member role is configured")
        );
        // Without a known own account, every finding is taken as the own account's.
        assert_eq!(OrgSettings::default().refusal("222222222222"), None);
    }
}
