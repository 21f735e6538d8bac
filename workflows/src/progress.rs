//! What the `progress` query answers about a running lifecycle operation.

use serde::{Deserialize, Serialize};

/// Where an operation is. Updated by [`crate::operation::Op`] as the operation moves; the
/// workflow's `progress` query returns the latest. A local activity's retries are not visible
/// to the workflow while they run, so there is no attempt count: a step that stays current for
/// long is retrying or waiting on its dependency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The verb.
    pub op_kind: Option<String>,
    /// The game, once the input parsed.
    pub game_id: Option<String>,
    /// The step in flight (an activity name, e.g. `StopContainer`), or `done` once the
    /// operation's output is known.
    pub step: String,
    /// How many steps the operation has begun so far.
    pub steps_begun: u32,
    /// The Docker host its Docker steps run on, once known.
    pub host: Option<String>,
    /// The container it acts on, once known.
    pub container_id: Option<String>,
    /// The fence of the lease it holds (or inherited).
    pub fence: Option<u64>,
    /// The child workflow in flight (restart and patch: `<id>/stop`, `<id>/start`).
    pub child: Option<String>,
    /// `success` or `failure` once the operation ended.
    pub outcome: Option<String>,
}

impl Progress {
    /// One line for the Web UI's "current details": the step, then what is known.
    pub fn line(&self) -> String {
        let mut parts = vec![match &self.outcome {
            Some(outcome) => format!("done: {outcome}"),
            None => format!("step {} (#{})", self.step, self.steps_begun),
        }];
        let known = [
            ("game", self.game_id.clone()),
            ("host", self.host.clone()),
            (
                "container",
                self.container_id
                    .as_ref()
                    .map(|c| c.chars().take(12).collect()),
            ),
            ("fence", self.fence.map(|f| f.to_string())),
            ("child", self.child.clone()),
        ];
        parts.extend(
            known
                .into_iter()
                .filter_map(|(name, value)| Some(format!("{name} {}", value?))),
        );
        parts.join(" · ")
    }
}
