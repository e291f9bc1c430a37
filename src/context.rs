//! The one context a function loads at init and lends to every invocation.
//!
//! The SDK configuration is read once from the standard environment (credentials, region,
//! `AWS_ENDPOINT_URL`), so the same binary runs against AWS and against a local emulator. Clients
//! for a finding are made per [`Scope`]: the calls of a containment step go to the finding's own
//! region. They share the configuration's HTTP client and credentials cache, so making them is
//! cheap and opens no connection.

use aws_config::{BehaviorVersion, Region, SdkConfig};

use crate::error::Error;
use crate::finding::Scope;

#[derive(Debug, Clone)]
pub struct Ctx {
    config: SdkConfig,
}

/// The clients a containment step uses, bound to the finding's account and region.
#[derive(Debug, Clone)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
}

impl Ctx {
    /// Loads the SDK configuration from the environment. Makes no network call.
    pub async fn load() -> Ctx {
        Ctx::from_config(aws_config::load_defaults(BehaviorVersion::latest()).await)
    }

    pub fn from_config(config: SdkConfig) -> Ctx {
        Ctx { config }
    }

    pub fn config(&self) -> &SdkConfig {
        &self.config
    }

    /// Clients for the finding's account and region.
    ///
    /// Today the responder acts with its own credentials, so the finding's account must be the
    /// responder's (calls in any other account fail with AWS's own error). This is the one place
    /// where acting in a member account through an assumed role belongs; it is async for that.
    pub async fn clients(&self, scope: &Scope) -> Result<Clients, Error> {
        let region = Region::new(scope.region.clone());
        let ec2 = aws_sdk_ec2::config::Builder::from(&self.config)
            .region(region.clone())
            .build();
        let iam = aws_sdk_iam::config::Builder::from(&self.config)
            .region(region)
            .build();
        Ok(Clients {
            ec2: aws_sdk_ec2::Client::from_conf(ec2),
            iam: aws_sdk_iam::Client::from_conf(iam),
        })
    }

    /// A client for the responder's own SNS topic, in the region named by its ARN.
    pub fn sns_for_topic(&self, topic_arn: &str) -> aws_sdk_sns::Client {
        let mut builder = aws_sdk_sns::config::Builder::from(&self.config);
        if let Some(region) = topic_arn.split(':').nth(3).filter(|r| !r.is_empty()) {
            builder = builder.region(Region::new(region.to_owned()));
        }
        aws_sdk_sns::Client::from_conf(builder.build())
    }
}
