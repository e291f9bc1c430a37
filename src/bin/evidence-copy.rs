//! Lambda function: the `evidence-copy` step, one pass of copying an instance's forensic
//! snapshots to the forensic account. Input: one target of triage's plan and the pass's number.
use ec2_quarantine::Ctx;
use ec2_quarantine::domain::forensic::ForensicAccount;
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ec2_quarantine::telemetry::init_logging();
    let ctx = &Ctx::load().await?;
    let forensic = &ForensicAccount::from_env()?;
    ec2_quarantine::telemetry::serve(
        "evidence-copy",
        |event: LambdaEvent<serde_json::Value>| async move {
            ec2_quarantine::steps::evidence_copy::copy_evidence(
                ctx,
                forensic.as_ref(),
                event.payload,
            )
            .await
        },
    )
    .await
}
