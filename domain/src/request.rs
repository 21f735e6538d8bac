//! Workflow requests, parsed from raw JSON bytes.
//!
//! Workflows take their input as raw payloads and parse it here, instead of letting the SDK
//! deserialize a typed struct: input the SDK cannot deserialize leaves a workflow stuck in
//! workflow-task failures, while a parse error here completes it with `invalid_request`.
//! [`InvalidRequest`] keeps a lenient echo of the fields that could be read so the audit row
//! still names the game and the source.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{stop_timeout_secs, truncate_chars, GameId, HostId, OpSource, StopReason, StopSignal};

/// Longest `source_ref` accepted (stream entry ids, request ids, user ids are far shorter).
pub const SOURCE_REF_MAX_LEN: usize = 256;
/// Longest lease token accepted.
pub const LEASE_TOKEN_MAX_LEN: usize = 256;
/// Largest workflow input accepted, in bytes.
pub const REQUEST_MAX_BYTES: usize = 16 * 1024;

/// An opaque per-source correlation reference (stream entry id, HTTP request id, admin id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceRef(String);

impl SourceRef {
    /// Rejects empty, over-long and control-character values: the reference is echoed into logs
    /// and audit rows.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.chars().count() > SOURCE_REF_MAX_LEN {
            return Err(format!(
                "source_ref must be 1-{SOURCE_REF_MAX_LEN} characters"
            ));
        }
        if raw.chars().any(char::is_control) {
            return Err("source_ref must not contain control characters".into());
        }
        Ok(Self(raw.to_owned()))
    }

    /// As the caller gave it; stored verbatim in the audit row's `source_ref`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The token of a held per-game lease. Only the holder knows it; it is passed from a parent
/// workflow to its children so they run under the parent's lease.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// Checks the shape only (any printable ASCII, issued by rtmanager or not); whether Redis
    /// holds it is `CheckLease`'s question.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty()
            || raw.len() > LEASE_TOKEN_MAX_LEN
            || !raw.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(format!(
                "lease_token must be 1-{LEASE_TOKEN_MAX_LEN} printable ASCII characters"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The whole token, as stored in the lease key: a capability, so keep it out of logs.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The token rtmanager issues for a lease it granted: `<fence>:<secret>`.
    pub fn issued(fence: u64, secret: &str) -> Self {
        Self(format!("{fence}:{secret}"))
    }

    /// The monotonic fence of an rtmanager-issued token; `None` for any other string.
    pub fn fence(&self) -> Option<u64> {
        let (fence, secret) = self.0.split_once(':')?;
        (!secret.is_empty()).then_some(())?;
        fence.parse().ok().filter(|f| *f > 0)
    }

    /// The secret part stored in Redis (the whole token when it carries no fence).
    pub fn secret(&self) -> &str {
        match self.0.split_once(':') {
            Some((_, secret)) if self.fence().is_some() => secret,
            _ => &self.0,
        }
    }
}

impl std::fmt::Debug for LeaseToken {
    /// Tokens are capabilities: logs show only a prefix.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeaseToken({}…)", truncate_chars(&self.0, 6))
    }
}

/// Longest image reference accepted.
pub const IMAGE_REF_MAX_LEN: usize = 512;

/// A Docker image reference, `[domain[:port]/]path[:tag][@digest]`, as given by the platform.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ImageRef(String);

/// Longest repository name Docker accepts (domain and path).
pub const IMAGE_NAME_MAX_LEN: usize = 255;

/// The same grammar as a regular expression, for the OpenAPI document: Docker's reference
/// grammar (distribution's `reference` package). `image_refs_follow_the_docker_grammar` checks
/// that the parser and this pattern agree.
pub const IMAGE_REF_PATTERN: &str = concat!(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]",
    r"*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-",
    r"z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?",
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$",
);

impl ImageRef {
    /// Parses a reference with Docker's grammar and limits (at most 512 characters, a name of
    /// at most 255, a tag of at most 128), so that every edge refuses what Docker would, before
    /// any workflow runs. Whether the engine has the image is Docker's answer.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() || raw.len() > IMAGE_REF_MAX_LEN {
            return Err(format!(
                "image_ref must be 1-{IMAGE_REF_MAX_LEN} characters"
            ));
        }
        check_reference(raw).map_err(|why| {
            format!(
                "image_ref {:?} is not a Docker image reference: {why}",
                truncate_chars(raw, 80)
            )
        })?;
        Ok(Self(raw.to_owned()))
    }

    /// Handed to Docker verbatim.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Docker's reference grammar: `name[:tag][@digest]`, the name `[domain/]component(/component)*`.
fn check_reference(raw: &str) -> Result<(), &'static str> {
    let (rest, digest) = match raw.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (raw, None),
    };
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':').ok_or("a digest is algorithm:hex")?;
        let algorithm_ok = algorithm.split(['-', '_', '+', '.']).all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && part.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if !algorithm_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("a digest is algorithm:hex with at least 32 hex digits");
        }
    }
    // A tag follows the last ':' after the last '/' (a ':' before it is a registry port).
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        let ok = tag.len() <= 128
            && tag.chars().next().is_some_and(word)
            && tag.chars().all(|c| word(c) || c == '.' || c == '-');
        if !ok {
            return Err("a tag is 1-128 of [A-Za-z0-9_.-], not starting with . or -");
        }
    }
    if name.is_empty() || name.len() > IMAGE_NAME_MAX_LEN {
        return Err("the name must be 1-255 characters");
    }
    let mut components: Vec<&str> = name.split('/').collect();
    let first = components[0];
    let is_domain = components.len() > 1
        && (first.contains(['.', ':'])
            || first == "localhost"
            || first.chars().any(|c| c.is_ascii_uppercase()));
    if is_domain {
        check_domain(first)?;
        components.remove(0);
    }
    if components.iter().all(|c| path_component(c)) {
        Ok(())
    } else {
        Err("a path component is lowercase letters and digits, separated by '.', '_', '__' or '-'")
    }
}

/// `[a-z0-9]+` separated by `.`, `_`, `__` or runs of `-`.
fn path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(&bytes[0]) || !alnum(&bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.chars().all(|c| c == '-');
        if !ok {
            return false;
        }
    }
    true
}

/// `host[:port]`, the host DNS labels (letters, digits, inner hyphens). IPv6 literals are not
/// accepted: the OpenAPI document's pattern could not state them to every client's regex engine.
fn check_domain(domain: &str) -> Result<(), &'static str> {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (Some(host), Some(port)),
        None => (Some(domain), None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
            return Err("a registry port is digits");
        }
    }
    let label = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    match host {
        Some(host) if !host.split('.').all(label) => Err("a registry host is DNS labels"),
        _ => Ok(()),
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What could be read from a request that failed to parse, for the audit row and the logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEcho {
    /// The raw game id (truncated), empty when absent or not a string.
    pub game_id: String,
    /// The raw op_source (truncated), empty when absent or not a string.
    pub op_source: String,
    /// The raw source_ref (truncated), if it was a string.
    pub source_ref: Option<String>,
    /// The raw reason (truncated), if it was a string.
    pub reason: Option<String>,
    /// The raw image_ref (truncated), if it was a string.
    pub image_ref: Option<String>,
}

/// A request that does not parse: the `invalid_request` message plus what could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidRequest {
    /// Every problem found, `; `-separated; becomes the output's `error_message`.
    pub message: String,
    /// What could be read; boxed so that `Result<_, InvalidRequest>` stays small.
    pub echo: Box<RequestEcho>,
}

/// What every request names, whatever its verb: the game, who asked, and the caller's
/// reference. The audit row, the metrics and the workflow id are made from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who<'a> {
    /// The game the request is about.
    pub game_id: &'a GameId,
    /// How the request came in.
    pub op_source: OpSource,
    /// The caller's reference, if any.
    pub source_ref: Option<&'a SourceRef>,
}

/// A request that names a game, a source and maybe a reference.
pub trait Addressed {
    /// The request's [`Who`].
    fn who(&self) -> Who<'_>;
}

macro_rules! addressed {
    ($($request:ty),+) => {$(
        impl Addressed for $request {
            fn who(&self) -> Who<'_> {
                let (game_id, op_source) = (&self.game_id, self.op_source);
                Who { game_id, op_source, source_ref: self.source_ref.as_ref() }
            }
        }
    )+};
}

addressed!(StopRequest, StartRequest, ReplaceRequest);

/// A parsed `StopRuntime` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopRequest {
    /// Keys the lease, the record and the container label the stop checks.
    pub game_id: GameId,
    /// An audit and metric label only: every reason stops the same way.
    pub reason: StopReason,
    /// Who asked; recorded on the audit row and as a metric label.
    pub op_source: OpSource,
    /// The caller's correlation id, copied to the audit row; `None` when it gave none.
    pub source_ref: Option<SourceRef>,
    /// Set only by a parent workflow that already holds the game's lease (the seed's `Run`).
    pub lease_token: Option<LeaseToken>,
    /// How long Docker waits after the signal before it kills; `None`: the container's
    /// `rtmanager.stop_timeout` label, else the worker's default.
    pub timeout_secs: Option<u32>,
    /// The signal sent first; `None`: the container's `rtmanager.stop_signal` label, else
    /// `SIGTERM`.
    pub signal: Option<StopSignal>,
}

impl StopRequest {
    /// A stop with the container's own (or the worker's) signal and timeout.
    pub fn new(
        game_id: GameId,
        reason: StopReason,
        op_source: OpSource,
        source_ref: Option<SourceRef>,
    ) -> Self {
        Self {
            game_id,
            reason,
            op_source,
            source_ref,
            lease_token: None,
            timeout_secs: None,
            signal: None,
        }
    }

    /// Parses `{"game_id", "reason", "op_source", "source_ref"?, "lease_token"?,
    /// "timeout_secs"?, "signal"?}`; unknown fields are rejected so a misspelt optional field
    /// is not silently dropped.
    pub fn from_json(bytes: &[u8]) -> Result<Self, InvalidRequest> {
        let mut fields = Fields::parse(bytes)?;
        let game_id = fields.game_id();
        let reason = fields.required_enum::<StopReason>("reason");
        let op_source = fields.required_enum::<OpSource>("op_source");
        let source_ref = fields.optional_with("source_ref", SourceRef::parse);
        let lease_token = fields.optional_with("lease_token", LeaseToken::parse);
        let timeout_secs = fields.optional_integer("timeout_secs", stop_timeout_secs);
        let signal = fields.optional_with("signal", |raw| {
            raw.parse::<StopSignal>().map_err(|err| err.to_string())
        });
        fields.finish(&[
            "game_id",
            "reason",
            "op_source",
            "source_ref",
            "lease_token",
            "timeout_secs",
            "signal",
        ])?;
        Ok(Self {
            game_id: game_id.expect("checked by finish"),
            reason: reason.expect("checked by finish"),
            op_source: op_source.expect("checked by finish"),
            source_ref: source_ref.expect("checked by finish"),
            lease_token: lease_token.expect("checked by finish"),
            timeout_secs: timeout_secs.expect("checked by finish"),
            signal: signal.expect("checked by finish"),
        })
    }

    /// The JSON a client sends to start the workflow.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("game_id".into(), self.game_id.as_str().into());
        map.insert("reason".into(), self.reason.as_str().into());
        map.insert("op_source".into(), self.op_source.as_str().into());
        if let Some(source_ref) = &self.source_ref {
            map.insert("source_ref".into(), source_ref.as_str().into());
        }
        if let Some(token) = &self.lease_token {
            map.insert("lease_token".into(), token.as_str().into());
        }
        if let Some(secs) = self.timeout_secs {
            map.insert("timeout_secs".into(), secs.into());
        }
        insert_optional(&mut map, "signal", self.signal.map(StopSignal::as_str));
        Value::Object(map)
    }
}

/// A parsed `StartRuntime` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// Keys the lease and the record, and labels the container the start creates.
    pub game_id: GameId,
    /// A record already running this image makes the start a `replay_no_op`; another image is a
    /// `conflict` (patch instead).
    pub image_ref: ImageRef,
    /// Who asked; recorded on the audit row and as a metric label.
    pub op_source: OpSource,
    /// The caller's correlation id, copied to the audit row; `None` when it gave none.
    pub source_ref: Option<SourceRef>,
    /// Set only by a parent workflow that already holds the game's lease.
    pub lease_token: Option<LeaseToken>,
    /// The host to place a new game on; without it the placement policy picks one. A game
    /// that already has a container keeps its host.
    pub host: Option<HostId>,
}

impl StartRequest {
    /// Parses `{"game_id", "image_ref", "op_source", "source_ref"?, "lease_token"?, "host"?}`.
    pub fn from_json(bytes: &[u8]) -> Result<Self, InvalidRequest> {
        let mut fields = Fields::parse(bytes)?;
        let game_id = fields.game_id();
        let image_ref = fields.required_with("image_ref", ImageRef::parse);
        let op_source = fields.required_enum::<OpSource>("op_source");
        let source_ref = fields.optional_with("source_ref", SourceRef::parse);
        let lease_token = fields.optional_with("lease_token", LeaseToken::parse);
        let host = fields.optional_with("host", HostId::parse);
        fields.finish(&[
            "game_id",
            "image_ref",
            "op_source",
            "source_ref",
            "lease_token",
            "host",
        ])?;
        Ok(Self {
            game_id: game_id.expect("checked by finish"),
            image_ref: image_ref.expect("checked by finish"),
            op_source: op_source.expect("checked by finish"),
            source_ref: source_ref.expect("checked by finish"),
            lease_token: lease_token.expect("checked by finish"),
            host: host.expect("checked by finish"),
        })
    }

    /// The JSON a client sends to start the workflow; [`Self::from_json`] reads it back.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("game_id".into(), self.game_id.as_str().into());
        map.insert("image_ref".into(), self.image_ref.as_str().into());
        map.insert("op_source".into(), self.op_source.as_str().into());
        insert_optional(
            &mut map,
            "source_ref",
            self.source_ref.as_ref().map(SourceRef::as_str),
        );
        insert_optional(
            &mut map,
            "lease_token",
            self.lease_token.as_ref().map(LeaseToken::as_str),
        );
        insert_optional(&mut map, "host", self.host.as_ref().map(HostId::as_str));
        Value::Object(map)
    }
}

/// A parsed `RestartRuntime` (no `image_ref`) or `PatchRuntime` (with `image_ref`) input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaceRequest {
    /// Keys the lease the parent holds across both children.
    pub game_id: GameId,
    /// The image to run afterwards: `None` for a restart (the current image).
    pub image_ref: Option<ImageRef>,
    /// Who asked; handed to the children, so all three audit rows carry it.
    pub op_source: OpSource,
    /// Shared by all three audit rows; when `None`, the workflow uses its own workflow id.
    pub source_ref: Option<SourceRef>,
}

impl ReplaceRequest {
    /// Parses `{"game_id", "op_source", "source_ref"?}`.
    pub fn restart_from_json(bytes: &[u8]) -> Result<Self, InvalidRequest> {
        Self::from_json(bytes, false)
    }

    /// Parses `{"game_id", "image_ref", "op_source", "source_ref"?}`.
    pub fn patch_from_json(bytes: &[u8]) -> Result<Self, InvalidRequest> {
        Self::from_json(bytes, true)
    }

    fn from_json(bytes: &[u8], patch: bool) -> Result<Self, InvalidRequest> {
        let mut fields = Fields::parse(bytes)?;
        let game_id = fields.game_id();
        let image_ref = if patch {
            fields.required_with("image_ref", ImageRef::parse).map(Some)
        } else {
            Some(None)
        };
        let op_source = fields.required_enum::<OpSource>("op_source");
        let source_ref = fields.optional_with("source_ref", SourceRef::parse);
        let known: &[&str] = if patch {
            &["game_id", "image_ref", "op_source", "source_ref"]
        } else {
            &["game_id", "op_source", "source_ref"]
        };
        fields.finish(known)?;
        Ok(Self {
            game_id: game_id.expect("checked by finish"),
            image_ref: image_ref.expect("checked by finish"),
            op_source: op_source.expect("checked by finish"),
            source_ref: source_ref.expect("checked by finish"),
        })
    }

    /// The JSON a client sends to start the workflow; the `*_from_json` parsers read it back.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("game_id".into(), self.game_id.as_str().into());
        insert_optional(
            &mut map,
            "image_ref",
            self.image_ref.as_ref().map(ImageRef::as_str),
        );
        map.insert("op_source".into(), self.op_source.as_str().into());
        insert_optional(
            &mut map,
            "source_ref",
            self.source_ref.as_ref().map(SourceRef::as_str),
        );
        Value::Object(map)
    }
}

fn insert_optional(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        map.insert(key.into(), value.into());
    }
}

/// A JSON object being read field by field; collects the first error per field so the message
/// names every problem at once.
struct Fields {
    map: Map<String, Value>,
    errors: Vec<String>,
    echo: Box<RequestEcho>,
}

impl Fields {
    fn parse(bytes: &[u8]) -> Result<Self, InvalidRequest> {
        let invalid = |message: String| InvalidRequest {
            message,
            echo: Box::default(),
        };
        if bytes.len() > REQUEST_MAX_BYTES {
            return Err(invalid(format!(
                "request is {} bytes, more than the {REQUEST_MAX_BYTES} accepted",
                bytes.len()
            )));
        }
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|err| invalid(format!("request is not valid JSON: {err}")))?;
        let Value::Object(map) = value else {
            return Err(invalid("request must be a JSON object".into()));
        };
        let raw = |name: &str| {
            map.get(name)
                .and_then(Value::as_str)
                .map(|s| truncate_chars(s, 160))
        };
        let echo = RequestEcho {
            game_id: raw("game_id").unwrap_or_default(),
            op_source: raw("op_source").unwrap_or_default(),
            source_ref: raw("source_ref"),
            reason: raw("reason"),
            image_ref: raw("image_ref"),
        };
        Ok(Self {
            map,
            errors: Vec::new(),
            echo: Box::new(echo),
        })
    }

    fn required_str(&mut self, name: &str) -> Option<String> {
        match self.map.get(name) {
            None | Some(Value::Null) => {
                self.errors.push(format!("{name} is required"));
                None
            }
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.errors.push(format!("{name} must be a string"));
                None
            }
        }
    }

    fn game_id(&mut self) -> Option<GameId> {
        let raw = self.required_str("game_id")?;
        GameId::parse(&raw)
            .map_err(|err| self.errors.push(err.to_string()))
            .ok()
    }

    fn required_enum<T>(&mut self, name: &str) -> Option<T>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        let raw = self.required_str(name)?;
        raw.parse::<T>()
            .map_err(|err| self.errors.push(err.to_string()))
            .ok()
    }

    fn required_with<T>(
        &mut self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let raw = self.required_str(name)?;
        parse(&raw).map_err(|err| self.errors.push(err)).ok()
    }

    /// `Some(None)` when absent or null, `Some(Some(v))` when valid, `None` after an error.
    fn optional_with<T>(
        &mut self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match self.map.get(name) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => match parse(s) {
                Ok(v) => Some(Some(v)),
                Err(err) => {
                    self.errors.push(err);
                    None
                }
            },
            Some(_) => {
                self.errors.push(format!("{name} must be a string"));
                None
            }
        }
    }

    /// Like [`Self::optional_with`], for a whole number (JSON number, not string).
    fn optional_integer<T>(
        &mut self,
        name: &str,
        parse: impl Fn(u64) -> Result<T, String>,
    ) -> Option<Option<T>> {
        match self.map.get(name) {
            None | Some(Value::Null) => Some(None),
            Some(value) => match value.as_u64().map(&parse) {
                Some(Ok(v)) => Some(Some(v)),
                Some(Err(err)) => {
                    self.errors.push(err);
                    None
                }
                None => {
                    self.errors.push(format!(
                        "{name} must be a whole number of seconds, 0 or more"
                    ));
                    None
                }
            },
        }
    }

    fn finish(self, known: &[&str]) -> Result<(), InvalidRequest> {
        let known: BTreeSet<&str> = known.iter().copied().collect();
        let mut errors = self.errors;
        let unknown: Vec<String> = self
            .map
            .keys()
            .filter(|k| !known.contains(k.as_str()))
            .map(|k| format!("{:?}", truncate_chars(k, 40)))
            .collect();
        if !unknown.is_empty() {
            errors.push(format!("unknown field(s): {}", unknown.join(", ")));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(InvalidRequest {
                message: errors.join("; "),
                echo: self.echo,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD_REFS: &[&str] = &[
        "rtmanager-game:dev",
        "busybox",
        "library/busybox:1.36",
        "registry.local/game:1.2@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "localhost:5000/team/game-server",
        "Registry.Example.com/a/b__c/d.e-f:v_1.2-rc",
        "game@sha256:0123456789abcdef0123456789abcdef",
    ];
    const BAD_REFS: &[&str] = &[
        "[::1]:5000/game",
        "",
        "Game",
        "game:",
        "game:.tag",
        "-game",
        "game-",
        "ga..me",
        "a/b/",
        "a//b",
        "registry:port/game",
        "-bad.registry/game",
        "game@sha256:abc",
        "game@:0123456789abcdef0123456789abcdef",
        "game name",
        "game\nname",
    ];

    #[test]
    fn image_refs_follow_the_docker_grammar() {
        let pattern = regex::Regex::new(IMAGE_REF_PATTERN).unwrap();
        for good in GOOD_REFS {
            assert!(
                ImageRef::parse(good).is_ok(),
                "{good}: {:?}",
                ImageRef::parse(good)
            );
            assert!(pattern.is_match(good), "the pattern refuses {good}");
        }
        for bad in BAD_REFS {
            assert!(ImageRef::parse(bad).is_err(), "{bad} accepted");
            assert!(!pattern.is_match(bad), "the pattern accepts {bad}");
        }
        // The limits: a tag of 128, a name of 255, a reference of 512.
        assert!(ImageRef::parse(&format!("g:{}", "t".repeat(128))).is_ok());
        assert!(ImageRef::parse(&format!("g:{}", "t".repeat(129))).is_err());
        assert!(ImageRef::parse(&"g".repeat(255)).is_ok());
        assert!(ImageRef::parse(&"g".repeat(256)).is_err());
        let long = format!("g@sha256:{}", "a".repeat(600));
        assert!(ImageRef::parse(&long).is_err());
    }

    #[test]
    fn the_openapi_document_states_the_same_grammar() {
        let doc: Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
        for verb in ["start", "patch"] {
            let path = format!("/api/v1/internal/runtimes/{{game_id}}/{verb}");
            let schema = &doc["paths"][path.as_str()]["post"]["requestBody"]["content"]
                ["application/json"]["schema"]["properties"]["image_ref"];
            assert_eq!(schema["pattern"], IMAGE_REF_PATTERN, "{verb}");
            assert_eq!(schema["maxLength"], IMAGE_REF_MAX_LEN, "{verb}");
        }
    }

    fn parse(json: &str) -> Result<StopRequest, InvalidRequest> {
        StopRequest::from_json(json.as_bytes())
    }

    #[test]
    fn parses_a_full_request_and_round_trips() {
        let req = parse(
            r#"{"game_id":"g-1","reason":"admin","op_source":"rest","source_ref":"r1","lease_token":"t"}"#,
        )
        .unwrap();
        assert_eq!(req.game_id.as_str(), "g-1");
        assert_eq!(req.reason, StopReason::Admin);
        assert_eq!(req.op_source, OpSource::Rest);
        assert_eq!(req.source_ref.as_ref().unwrap().as_str(), "r1");
        let again = StopRequest::from_json(req.to_json().to_string().as_bytes()).unwrap();
        assert_eq!(again, req);
    }

    #[test]
    fn a_stop_signal_and_timeout_parse_within_their_limits() {
        let req = parse(
            r#"{"game_id":"g","reason":"admin","op_source":"rest","timeout_secs":3600,"signal":"SIGUSR1"}"#,
        )
        .unwrap();
        assert_eq!(req.timeout_secs, Some(3600));
        assert_eq!(req.signal, Some(StopSignal::Usr1));
        let again = StopRequest::from_json(req.to_json().to_string().as_bytes()).unwrap();
        assert_eq!(again, req);
        let zero = parse(r#"{"game_id":"g","reason":"admin","op_source":"rest","timeout_secs":0}"#);
        assert_eq!(zero.unwrap().timeout_secs, Some(0));
        for (bad, needle) in [
            (r#""timeout_secs":3601"#, "timeout_secs must be 0-3600"),
            (r#""timeout_secs":-1"#, "whole number"),
            (r#""timeout_secs":1.5"#, "whole number"),
            (r#""timeout_secs":"10""#, "whole number"),
            (r#""signal":"SIGKILL""#, "signal \"SIGKILL\" is unsupported"),
            (r#""signal":"sigterm""#, "signal"),
            (r#""signal":15"#, "signal must be a string"),
        ] {
            let json = format!(r#"{{"game_id":"g","reason":"admin","op_source":"rest",{bad}}}"#);
            let err = parse(&json).unwrap_err();
            assert!(err.message.contains(needle), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn optional_fields_may_be_absent_or_null() {
        let req =
            parse(r#"{"game_id":"g","reason":"finished","op_source":"stream","source_ref":null}"#)
                .unwrap();
        assert!(req.source_ref.is_none() && req.lease_token.is_none());
    }

    #[test]
    fn every_problem_is_named_and_the_echo_kept() {
        let err =
            parse(r#"{"game_id":"bad id","reason":"reboot","op_source":7,"extra":1}"#).unwrap_err();
        for needle in [
            "game_id",
            "reason",
            "op_source must be a string",
            "unknown field",
        ] {
            assert!(
                err.message.contains(needle),
                "{needle} missing in {}",
                err.message
            );
        }
        assert_eq!(err.echo.game_id, "bad id");
        assert_eq!(err.echo.reason.as_deref(), Some("reboot"));
    }

    #[test]
    fn non_objects_and_garbage_are_invalid() {
        for bad in ["", "null", "[]", "\"x\"", "{", "{\"game_id\":}"] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let big = format!(r#"{{"game_id":"{}"}}"#, "a".repeat(REQUEST_MAX_BYTES));
        assert!(parse(&big).unwrap_err().message.contains("bytes"));
    }

    #[test]
    fn missing_fields_are_required() {
        let err = parse("{}").unwrap_err();
        assert!(err.message.contains("game_id is required"));
        assert!(err.message.contains("reason is required"));
        assert!(err.message.contains("op_source is required"));
    }

    #[test]
    fn start_restart_and_patch_requests_parse() {
        let start = StartRequest::from_json(
            br#"{"game_id":"g","image_ref":"registry.local/game:1.2@sha256:0123456789abcdef0123456789abcdef","op_source":"rest"}"#,
        )
        .unwrap();
        assert_eq!(
            start.image_ref.as_str(),
            "registry.local/game:1.2@sha256:0123456789abcdef0123456789abcdef"
        );
        assert_eq!(
            StartRequest::from_json(start.to_json().to_string().as_bytes()).unwrap(),
            start
        );
        assert!(StartRequest::from_json(
            br#"{"game_id":"g","image_ref":"a b","op_source":"rest"}"#
        )
        .is_err());
        assert!(StartRequest::from_json(br#"{"game_id":"g","op_source":"rest"}"#).is_err());

        let restart =
            ReplaceRequest::restart_from_json(br#"{"game_id":"g","op_source":"admin"}"#).unwrap();
        assert_eq!(restart.image_ref, None);
        let err = ReplaceRequest::restart_from_json(
            br#"{"game_id":"g","op_source":"admin","image_ref":"x"}"#,
        )
        .unwrap_err();
        assert!(err.message.contains("unknown field"), "{}", err.message);
        let patch = ReplaceRequest::patch_from_json(
            br#"{"game_id":"g","image_ref":"x:2","op_source":"admin"}"#,
        )
        .unwrap();
        assert_eq!(patch.image_ref.unwrap().as_str(), "x:2");
        assert!(
            ReplaceRequest::patch_from_json(br#"{"game_id":"g","op_source":"admin"}"#).is_err()
        );
    }

    #[test]
    fn issued_lease_tokens_carry_their_fence() {
        let token = LeaseToken::issued(42, "abc");
        assert_eq!(token.fence(), Some(42));
        assert_eq!(token.secret(), "abc");
        assert_eq!(LeaseToken::parse("opaque").unwrap().fence(), None);
        assert_eq!(LeaseToken::parse("0:abc").unwrap().fence(), None);
        assert_eq!(LeaseToken::parse("7:").unwrap().fence(), None);
    }

    #[test]
    fn lease_token_debug_hides_the_secret() {
        let token = LeaseToken::parse("abcdefghijklmnop").unwrap();
        assert!(!format!("{token:?}").contains("ghijkl"));
    }
}
