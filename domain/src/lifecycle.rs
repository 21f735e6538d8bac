//! One lifecycle request, whatever way it came in: the HTTP bridge, the `runtime:stop_jobs`
//! stream and the CLI each translate their transport into a [`LifecycleRequest`], and the client
//! (`rtmanager::client`) turns it into a workflow. The workflow parses the same JSON again with
//! the same parsers, so an edge and the workflow can never disagree on what is valid.

use serde_json::Value;

use crate::{
    request::{Addressed, Who},
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

impl Addressed for LifecycleRequest {
    fn who(&self) -> Who<'_> {
        match self {
            Self::Start(r) => r.who(),
            Self::Stop(r) => r.who(),
            Self::Restart(r) | Self::Patch(r) => r.who(),
        }
    }
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
        self.who().game_id
    }

    /// How the request came in.
    pub fn op_source(&self) -> OpSource {
        self.who().op_source
    }

    /// The caller's reference, if any (the idempotency key of the HTTP bridge and the stream).
    pub fn source_ref(&self) -> Option<&SourceRef> {
        self.who().source_ref
    }

    /// One line that tells an operator what was asked, for the Web UI (the workflow's static
    /// summary): `stop demo-1 · reason admin · SIGUSR1, 30 s · via rest · ref r-9`.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("{} {}", self.kind(), self.game_id().as_str())];
        match self {
            Self::Start(r) => {
                parts.push(format!("image {}", r.image_ref));
                if let Some(host) = &r.host {
                    parts.push(format!("on host {}", host.as_str()));
                }
            }
            Self::Stop(r) => {
                parts.push(format!("reason {}", r.reason));
                match (r.signal, r.timeout_secs) {
                    (None, None) => {}
                    (signal, timeout) => parts.push(format!(
                        "{}, {}",
                        signal.map_or("signal from labels", |s| s.as_str()),
                        timeout.map_or("timeout from labels".to_owned(), |t| format!("{t} s")),
                    )),
                }
            }
            Self::Patch(r) => {
                if let Some(image) = &r.image_ref {
                    parts.push(format!("to image {image}"));
                }
            }
            Self::Restart(_) => {}
        }
        parts.push(format!("via {}", self.op_source()));
        if let Some(source_ref) = self.source_ref() {
            parts.push(format!("ref {}", source_ref.as_str()));
        }
        if self.inherits_lease() {
            parts.push("under its parent's lease".to_owned());
        }
        parts.join(" · ")
    }

    /// The request's fields as a Markdown code block, for the Web UI (the workflow's static
    /// details): the input without the lease token, which is a capability.
    pub fn details(&self) -> String {
        let mut input = self.to_json();
        if let Value::Object(map) = &mut input {
            map.remove("lease_token");
        }
        let pretty = serde_json::to_string_pretty(&input).unwrap_or_default();
        format!("```json\n{pretty}\n```")
    }

    /// Whether a parent's lease token came with the request (the seed's `Run`).
    fn inherits_lease(&self) -> bool {
        match self {
            Self::Start(r) => r.lease_token.is_some(),
            Self::Stop(r) => r.lease_token.is_some(),
            Self::Restart(_) | Self::Patch(_) => false,
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
    fn the_summary_and_details_tell_the_request_without_its_lease() {
        let json = r#"{"game_id":"g-1","reason":"admin","op_source":"rest","source_ref":"r-9","signal":"SIGUSR1","timeout_secs":30,"lease_token":"7:secret"}"#;
        let request = LifecycleRequest::from_json(OpKind::Stop, json.as_bytes()).unwrap();
        assert_eq!(
            request.summary(),
            "stop g-1 · reason admin · SIGUSR1, 30 s · via rest · ref r-9 · under its parent's lease"
        );
        let details = request.details();
        assert!(details.contains("\"signal\": \"SIGUSR1\""), "{details}");
        assert!(!details.contains("secret"), "{details}");
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
