//! The runtime record: rtmanager's durable view of one game's container.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{GameId, HostId, RuntimeStatus};

/// One row of `runtime_records`, in the contract's JSON shape. A `removed` record has no
/// container id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeRecord {
    /// Primary key; also the `rtmanager.game_id` label every managed container carries.
    pub game_id: GameId,
    /// Lifecycle writes move it only by compare-and-swap, guarded by the writer's lease fence.
    pub status: RuntimeStatus,
    /// Kept while `stopped` (a later start removes that container); cleared on `removed`.
    pub current_container_id: Option<String>,
    /// Kept after a stop or removal: a restart runs it again and a failed patch rolls back to it.
    pub current_image_ref: Option<String>,
    /// Set each time the record moves to `running`; never cleared.
    pub started_at: Option<DateTime<Utc>>,
    /// Set on the move to `stopped`; cleared when a start records a new container.
    pub stopped_at: Option<DateTime<Utc>>,
    /// Set on the move to `removed`; cleared when a start records a new container.
    pub removed_at: Option<DateTime<Utc>>,
    /// When any operation last wrote the row (microsecond precision, as PostgreSQL stores it).
    pub last_op_at: DateTime<Utc>,
    /// The Docker host the game's container lives on: its Docker steps run there and nowhere
    /// else. Histories recorded before hosts existed carry none: the default host.
    #[serde(default)]
    pub host_id: HostId,
}
