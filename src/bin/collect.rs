//! Lambda function: the `collect` step, one pass of the volatile-evidence collection on an
//! instance that waits for approval. Input: one target of triage's plan, the approval's id and
//! the pass's number.
use ec2_quarantine::Ctx;
use ec2_quarantine::steps::collect::Collector;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let ctx = &Ctx::load().await?;
    let collector = &Collector::from_env()?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move {
            ec2_quarantine::steps::collect::collect(ctx, collector.as_ref(), None, event.payload)
                .await
        },
    ))
    .await
}
