//! The runtime record: rtmanager's durable view of one game's container.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{GameId, RuntimeStatus};

/// One row of `runtime_records`, in the contract's JSON shape. A `removed` record has no
/// container id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeRecord {
    pub game_id: GameId,
    pub status: RuntimeStatus,
    pub current_container_id: Option<String>,
    pub current_image_ref: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub removed_at: Option<DateTime<Utc>>,
    pub last_op_at: DateTime<Utc>,
}
