//! The audit trail's background work in a running gateway: signing checkpoints of the chain head
//! on a timer, and the retention purge.

use std::time::Duration;

use aegis_seal_crds::SecretValue;
use aegis_seal_crds::gateway::AuditSettings;
use tokio::task::JoinHandle;

use super::Database;
use super::audit_checkpoint::CheckpointSigner;

/// The configured signing key, or a key of this process's own, whose public half is logged so
/// that checkpoints can still be checked against it (`audit verify --public-key`).
pub fn checkpoint_signer(settings: &AuditSettings) -> Result<CheckpointSigner, String> {
    match &settings.checkpoint_signing_key_pem {
        Some(SecretValue::Literal(pem)) => CheckpointSigner::from_pem(pem)
            .map_err(|e| format!("spec.audit.checkpoint_signing_key_pem: {e}")),
        Some(SecretValue::FromSecret { .. }) => Err(
            "spec.audit.checkpoint_signing_key_pem: secret_key_ref is only understood in a SealGateway resource"
                .into(),
        ),
        Some(SecretValue::Invalid(_)) => Err(format!(
            "spec.audit.checkpoint_signing_key_pem: {}",
            SecretValue::INVALID
        )),
        None => {
            let signer = CheckpointSigner::generate()?;
            tracing::warn!(
                public_key = %signer.public_key_b64(),
                "no audit.checkpoint_signing_key_pem configured: audit checkpoints are signed with a key generated for this process; keep its public key to verify them:\n{}",
                signer.public_key_pem()
            );
            Ok(signer)
        }
    }
}

pub struct AuditTasks {
    signer: CheckpointSigner,
    checkpoints: JoinHandle<()>,
    retention: Option<JoinHandle<()>>,
}

impl AuditTasks {
    pub fn start(settings: &AuditSettings, db: Database) -> Result<Self, String> {
        let signer = checkpoint_signer(settings)?;
        let checkpoints = tokio::spawn(checkpoint_loop(
            db.clone(),
            signer.clone(),
            Duration::from_secs(settings.checkpoint_interval_secs),
        ));
        let retention = settings.retention_days.map(|days| {
            tokio::spawn(retention_loop(
                db,
                signer.clone(),
                chrono::Duration::days(i64::from(days)),
                Duration::from_secs(settings.purge_interval_secs),
                settings.purge_batch_size,
            ))
        });
        Ok(Self {
            signer,
            checkpoints,
            retention,
        })
    }

    /// Stops the timers and signs the head one last time.
    pub async fn stop(self, db: &Database) {
        self.checkpoints.abort();
        if let Some(retention) = self.retention {
            retention.abort();
        }
        if let Err(e) = db.checkpoint_audit(&self.signer).await {
            tracing::warn!(error = %e, "final audit checkpoint failed");
        }
    }
}

async fn checkpoint_loop(db: Database, signer: CheckpointSigner, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match db.checkpoint_audit(&signer).await {
            Ok(Some(id)) => tracing::debug!(last_event_id = id, "audit checkpoint signed"),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "audit checkpoint failed"),
        }
    }
}

async fn retention_loop(
    db: Database,
    signer: CheckpointSigner,
    keep: chrono::Duration,
    every: Duration,
    batch: u32,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // A retention longer than the calendar reaches back keeps everything.
        let before = chrono::Utc::now()
            .checked_sub_signed(keep)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        if let Err(e) = db.purge_audit(before, batch, &signer).await {
            tracing::warn!(error = %e, "audit retention purge failed");
        }
    }
}
