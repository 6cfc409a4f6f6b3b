//! What a batch job's worker is handed when it spends its bootstrap token.

/// What a batch job's worker gets for its bootstrap token: its task and session. Opaque to the
/// HTTP layer, which only serializes it.
#[derive(Debug, serde::Serialize)]
#[serde(transparent)]
pub struct WorkerAssignment(pub(crate) tresor_executors::WorkerTask);
