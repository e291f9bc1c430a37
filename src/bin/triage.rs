//! Lambda function: triage, the workflow's first state. Input: a GuardDuty finding event.
use ec2_quarantine::{Ctx, domain::finding};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let ctx = &Ctx::load().await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move {
            let finding = finding::parse_event(event.payload)?;
            // Reported like every step's result, with a status (always done).
            ec2_quarantine::steps::triage::triage(ctx, &finding)
                .await
                .map(ec2_quarantine::Outcome::Done)
        },
    ))
    .await
}
