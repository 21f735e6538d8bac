//! One lifecycle request, whatever way it came in: the HTTP bridge, the `runtime:stop_jobs`
//! stream and the CLI each translate their transport into a [`LifecycleRequest`], and the client
//! (`rtmanager::client`) turns it into a workflow. The workflow parses the same JSON again with
//! the same parsers, so an edge and the workflow can never disagree on what is valid.

use serde_json::Value;

use crate::{
    GameId, InvalidRequest, OpKind, OpSource, ReplaceRequest, SourceRef, StartRequest, StopRequest,
};

/// A parsed lifecycle request: the verb and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LifecycleRequest {
    /// Create and start the game's container (`StartRuntime`).
    Start(StartRequest),
    /// Stop the game's container (`StopRuntime`).
    Stop(StopRequest),
    /// A `ReplaceRequest` without an image.
    Restart(ReplaceRequest),
    /// A `ReplaceRequest` with the image to patch to.
    Patch(ReplaceRequest),
}

impl LifecycleRequest {
    /// Parses the workflow input of `kind`, with the parser the workflow itself uses.
    pub fn from_json(kind: OpKind, bytes: &[u8]) -> Result<Self, InvalidRequest> {
        Ok(match kind {
            OpKind::Start => Self::Start(StartRequest::from_json(bytes)?),
            OpKind::Stop => Self::Stop(StopRequest::from_json(bytes)?),
            OpKind::Restart => Self::Restart(ReplaceRequest::restart_from_json(bytes)?),
            OpKind::Patch => Self::Patch(ReplaceRequest::patch_from_json(bytes)?),
        })
    }

    /// The verb.
    pub fn kind(&self) -> OpKind {
        match self {
            Self::Start(_) => OpKind::Start,
            Self::Stop(_) => OpKind::Stop,
            Self::Restart(_) => OpKind::Restart,
            Self::Patch(_) => OpKind::Patch,
        }
    }

    /// The game the request is about.
    pub fn game_id(&self) -> &GameId {
        match self {
            Self::Start(r) => &r.game_id,
            Self::Stop(r) => &r.game_id,
            Self::Restart(r) | Self::Patch(r) => &r.game_id,
        }
    }

    /// How the request came in.
    pub fn op_source(&self) -> OpSource {
        match self {
            Self::Start(r) => r.op_source,
            Self::Stop(r) => r.op_source,
            Self::Restart(r) | Self::Patch(r) => r.op_source,
        }
    }

    /// The caller's reference, if any (the idempotency key of the HTTP bridge and the stream).
    pub fn source_ref(&self) -> Option<&SourceRef> {
        match self {
            Self::Start(r) => r.source_ref.as_ref(),
            Self::Stop(r) => r.source_ref.as_ref(),
            Self::Restart(r) | Self::Patch(r) => r.source_ref.as_ref(),
        }
    }

    /// The workflow input: exactly what a `temporal` CLI user would send.
    pub fn to_json(&self) -> Value {
        match self {
            Self::Start(r) => r.to_json(),
            Self::Stop(r) => r.to_json(),
            Self::Restart(r) | Self::Patch(r) => r.to_json(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_verb_round_trips_through_its_workflow_input() {
        let inputs = [
            (
                OpKind::Start,
                r#"{"game_id":"g-1","image_ref":"img:1","op_source":"rest","source_ref":"r-1"}"#,
            ),
            (
                OpKind::Stop,
                r#"{"game_id":"g-1","reason":"admin","op_source":"stream"}"#,
            ),
            (OpKind::Restart, r#"{"game_id":"g-1","op_source":"admin"}"#),
            (
                OpKind::Patch,
                r#"{"game_id":"g-1","image_ref":"img:2","op_source":"admin"}"#,
            ),
        ];
        for (kind, json) in inputs {
            let request = LifecycleRequest::from_json(kind, json.as_bytes()).unwrap();
            assert_eq!(request.kind(), kind);
            assert_eq!(request.game_id().as_str(), "g-1");
            let again = request.to_json().to_string();
            assert_eq!(
                LifecycleRequest::from_json(kind, again.as_bytes()).unwrap(),
                request
            );
        }
    }

    #[test]
    fn a_field_of_another_verb_is_refused() {
        let stop_with_image =
            r#"{"game_id":"g","reason":"admin","op_source":"rest","image_ref":"x"}"#;
        assert!(LifecycleRequest::from_json(OpKind::Stop, stop_with_image.as_bytes()).is_err());
        let restart_with_image = r#"{"game_id":"g","op_source":"rest","image_ref":"x"}"#;
        assert!(
            LifecycleRequest::from_json(OpKind::Restart, restart_with_image.as_bytes()).is_err()
        );
    }
}
