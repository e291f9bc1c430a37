//! Lambda function: the `collect` step, one pass of the volatile-evidence collection on an
//! instance that waits for approval. Input: one target of triage's plan, the approval's id and
//! the pass's number.
use ec2_quarantine::Ctx;
use ec2_quarantine::steps::collect::Collector;
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ec2_quarantine::telemetry::init_logging();
    let ctx = &Ctx::load().await?.acting_as("collect");
    let collector = &Collector::from_env()?;
    let imager = &ec2_quarantine::steps::memory::Imager::from_env()?;
    // Systems Manager in the function's own account and region: the only place it collects.
    let ssm = &aws_sdk_ssm::Client::new(ctx.config());
    ec2_quarantine::telemetry::serve(
        "collect",
        |event: LambdaEvent<serde_json::Value>| async move {
            ec2_quarantine::steps::collect::collect(
                ctx,
                collector.as_ref(),
                imager.as_ref(),
                ssm,
                event.payload,
            )
            .await
        },
    )
    .await
}
