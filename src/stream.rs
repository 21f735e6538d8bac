//! The `runtime:stop_jobs` consumer: the platform's asynchronous way in.
//!
//! Entries are read through a consumer group (created if missing), so several rtmanager
//! processes share the stream. Each entry becomes one `StopRuntime` workflow whose id derives
//! from the entry id (its `source_ref`): a redelivered or re-claimed entry joins the same
//! workflow and never stops twice. An entry is acknowledged only once its operation is over;
//! while it runs, the consumer keeps the entry's idle time fresh so nobody else claims it, and
//! entries a dead consumer left pending are claimed after `claim_idle`.
//!
//! A malformed entry still goes through the workflow, which records `invalid_request`; then it
//! is acknowledged, never redelivered forever. A stop that meets `conflict` (another operation
//! holds the game's lease) waits and retries, bounded, instead of being dropped.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use redis::{
    aio::MultiplexedConnection,
    streams::{
        StreamAutoClaimOptions, StreamAutoClaimReply, StreamClaimOptions, StreamId,
        StreamReadOptions, StreamReadReply,
    },
    AsyncCommands,
};
use serde_json::{Map, Value};
use temporalio_client::Client;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use rtmanager_domain::{
    truncate_chars, ErrorCode, LifecycleRequest, OpKind, OperationOutput, SourceRef,
};

use crate::client::{self, Operation, Origin, Router};

/// Longest field value passed on to the workflow; longer ones are cut (and then fail its
/// validation as they would have anyway).
const FIELD_MAX_BYTES: usize = 1024;

/// How the consumer reads and retries.
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// The stream, `runtime:stop_jobs` by contract.
    pub stream: String,
    /// The consumer group several processes share (created if missing).
    pub group: String,
    /// Unique per process: `<hostname or rtmanager>-<pid>-<random>`.
    pub consumer: String,
    /// A pending entry idle this long belongs to a dead consumer and is claimed.
    pub claim_idle: Duration,
    /// Retries of a stop that met `conflict`.
    pub conflict_retries: u32,
    /// First wait before such a retry; doubles up to 10 s.
    pub conflict_backoff: Duration,
    /// Entries processed at once by this consumer.
    pub concurrency: usize,
}

/// The consumer's collaborators.
pub struct Consumer {
    settings: StreamSettings,
    client: Client,
    router: Router,
    redis: redis::Client,
    in_flight: Mutex<HashSet<String>>,
}

impl Consumer {
    /// A consumer for `settings` that starts its stops through `client`, routed by `router`.
    pub fn new(
        settings: StreamSettings,
        client: Client,
        router: Router,
        redis_url: &str,
    ) -> anyhow::Result<Arc<Self>> {
        Ok(Arc::new(Self {
            settings,
            client,
            router,
            redis: rtmanager_activities::redis_store::redis_client(redis_url)?,
            in_flight: Mutex::new(HashSet::new()),
        }))
    }

    /// Consumes until `shutdown` is cancelled, then waits for the entries in progress. Redis
    /// outages are waited out (logged, retried), never fatal.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        tracing::info!(
            stream = %self.settings.stream,
            group = %self.settings.group,
            consumer = %self.settings.consumer,
            "stop_jobs consumer started"
        );
        // Two connections: a blocking XREADGROUP holds its connection for up to a second, and
        // acknowledgements and claim refreshes must not wait behind it.
        let mut conn: Option<(MultiplexedConnection, MultiplexedConnection)> = None;
        let mut next_claim = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            while tasks.try_join_next().is_some() {}
            let (reader, connection) = match &conn {
                Some(c) => c.clone(),
                None => match self.connect().await {
                    Ok(c) => {
                        conn = Some(c.clone());
                        c
                    }
                    Err(err) => {
                        tracing::warn!(err = %err, "stop_jobs consumer: redis unavailable");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        }
                    }
                },
            };
            let mut entries = Vec::new();
            if tokio::time::Instant::now() >= next_claim {
                next_claim = tokio::time::Instant::now() + self.settings.claim_idle / 2;
                match self.claim_stale(connection.clone()).await {
                    Ok(claimed) => entries.extend(claimed),
                    Err(err) => tracing::warn!(err = %err, "claim pending stop_jobs"),
                }
            }
            let read = tokio::select! {
                _ = shutdown.cancelled() => break,
                read = self.read_new(reader) => read,
            };
            match read {
                Ok(new) => entries.extend(new),
                Err(err) => {
                    tracing::warn!(err = %err, "read stop_jobs");
                    conn = None;
                    continue;
                }
            }
            for entry in entries {
                if !self
                    .in_flight
                    .lock()
                    .expect("in_flight lock")
                    .insert(entry.id.clone())
                {
                    continue;
                }
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.in_flight.lock().expect("in_flight lock").remove(&entry.id);
                        break;
                    }
                    permit = permits.clone().acquire_owned() => permit.expect("never closed"),
                };
                let this = self.clone();
                let connection = connection.clone();
                tasks.spawn(async move {
                    this.handle(connection, entry).await;
                    drop(permit);
                });
            }
        }
        tracing::info!(in_flight = tasks.len(), "stop_jobs consumer draining");
        while tasks.join_next().await.is_some() {}
        Ok(())
    }

    async fn connect(&self) -> anyhow::Result<(MultiplexedConnection, MultiplexedConnection)> {
        // No response timeout on the reader: its XREADGROUP blocks for up to a second.
        let reader = self
            .redis
            .get_multiplexed_async_connection_with_config(
                &redis::AsyncConnectionConfig::new().set_response_timeout(None),
            )
            .await?;
        let mut conn = self.redis.get_multiplexed_async_connection().await?;
        let created: redis::RedisResult<()> = conn
            .xgroup_create_mkstream(&self.settings.stream, &self.settings.group, "0")
            .await;
        if let Err(err) = created {
            if err.code() != Some("BUSYGROUP") {
                return Err(err.into());
            }
        }
        Ok((reader, conn))
    }

    async fn read_new(&self, mut conn: MultiplexedConnection) -> redis::RedisResult<Vec<StreamId>> {
        let options = StreamReadOptions::default()
            .group(&self.settings.group, &self.settings.consumer)
            .count(self.settings.concurrency.clamp(1, 64))
            .block(1000);
        let reply: Option<StreamReadReply> = conn
            .xread_options(&[&self.settings.stream], &[">"], &options)
            .await?;
        Ok(reply
            .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
            .unwrap_or_default())
    }

    /// Entries pending for longer than `claim_idle` (a dead consumer's, or our own after a
    /// restart) are taken over.
    async fn claim_stale(
        &self,
        mut conn: MultiplexedConnection,
    ) -> redis::RedisResult<Vec<StreamId>> {
        let reply: StreamAutoClaimReply = conn
            .xautoclaim_options(
                &self.settings.stream,
                &self.settings.group,
                &self.settings.consumer,
                self.settings.claim_idle.as_millis() as u64,
                "0-0",
                StreamAutoClaimOptions::default().count(64),
            )
            .await?;
        if !reply.claimed.is_empty() {
            tracing::info!(count = reply.claimed.len(), "claimed pending stop_jobs");
        }
        Ok(reply.claimed)
    }

    /// One entry, from workflow start to acknowledgement.
    async fn handle(&self, conn: MultiplexedConnection, entry: StreamId) {
        let id = entry.id.clone();
        let keep_alive = self.keep_claimed(conn.clone(), id.clone());
        let outcome = tokio::select! {
            outcome = self.stop(&entry) => outcome,
            () = keep_alive => unreachable!("keep-alive never ends"),
        };
        match outcome {
            Ok((output, operation)) => {
                // The entry's lines carry the operation's fields too.
                let (game_id, workflow_id, op) = (
                    operation.game_id_str(),
                    operation.workflow_id(),
                    operation.workflow_type(),
                );
                let mut conn = conn;
                let acked: redis::RedisResult<i64> = conn
                    .xack(&self.settings.stream, &self.settings.group, &[&id])
                    .await;
                if let Err(err) = acked {
                    tracing::warn!(entry_id = %id, game_id, workflow_id, op, err = %err, "ack stop_job (it will be redelivered and joined)");
                }
                tracing::info!(
                    entry_id = %id,
                    game_id,
                    workflow_id,
                    op,
                    outcome = %output.outcome,
                    error_code = output.error_code.map(ErrorCode::as_str).unwrap_or(""),
                    "stop_job done"
                );
            }
            // Not acknowledged: claimed again after `claim_idle`, joining the same workflow.
            Err(err) => {
                tracing::warn!(entry_id = %id, err = %format!("{err:#}"), "stop_job left pending")
            }
        }
        self.in_flight.lock().expect("in_flight lock").remove(&id);
    }

    /// Runs the entry's stop, retrying after `conflict` with fresh workflow ids. An entry that
    /// does not parse still runs, so that the workflow audits it as `invalid_request`.
    async fn stop(&self, entry: &StreamId) -> anyhow::Result<(OperationOutput, Operation)> {
        let input = entry_input(&entry.id, &entry.map);
        let request = LifecycleRequest::from_json(OpKind::Stop, input.to_string().as_bytes());
        let mut backoff = self.settings.conflict_backoff;
        let mut attempt = 0;
        // A request id that does not parse is no request id: the entry keeps its own key.
        let request_id = entry
            .map
            .get("request_id")
            .and_then(|value| redis::from_redis_value::<String>(value.clone()).ok())
            .and_then(|raw| SourceRef::parse(&raw).ok())
            .filter(|id| id.as_str().chars().all(|c| c.is_ascii_graphic()));
        loop {
            let origin = Origin::Stream {
                stream: self.settings.stream.clone(),
                entry_id: entry.id.clone(),
                attempt,
                request_id: request_id.clone(),
            };
            let operation = match &request {
                Ok(request) => Operation::new(request, &origin),
                Err(_) => Operation::unparsed(OpKind::Stop, input.clone(), &origin),
            };
            let output = client::run(&self.client, &self.router, &operation).await?;
            if output.error_code != Some(ErrorCode::Conflict)
                || attempt >= self.settings.conflict_retries
            {
                return Ok((output, operation));
            }
            attempt += 1;
            tracing::info!(entry_id = %entry.id, attempt, "stop_job met a held lease; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Resets the entry's idle time while it is being processed, so no other consumer claims it.
    async fn keep_claimed(&self, mut conn: MultiplexedConnection, id: String) {
        let every = (self.settings.claim_idle / 3).max(Duration::from_millis(200));
        loop {
            tokio::time::sleep(every).await;
            let claimed: redis::RedisResult<redis::Value> = conn
                .xclaim_options(
                    &self.settings.stream,
                    &self.settings.group,
                    &self.settings.consumer,
                    0,
                    &[&id],
                    StreamClaimOptions::default().with_justid(),
                )
                .await;
            if let Err(err) = claimed {
                tracing::debug!(entry_id = %id, err = %err, "refresh stop_job claim");
            }
        }
    }
}

/// The workflow input for an entry: whatever fields it has (the workflow validates them), with
/// `op_source: stream` and the entry id as `source_ref`.
pub fn entry_input(entry_id: &str, fields: &HashMap<String, redis::Value>) -> Value {
    let mut input = Map::new();
    for name in ["game_id", "reason", "signal"] {
        if let Some(value) = fields.get(name) {
            input.insert(name.to_owned(), Value::String(field_text(value)));
        }
    }
    // Stream fields are strings: digits become the number the workflow takes; anything else
    // goes as it came, for the workflow to refuse as `invalid_request`.
    if let Some(value) = fields.get("timeout_secs") {
        let text = field_text(value);
        let number = text.parse::<u64>().ok().map(Value::from);
        input.insert(
            "timeout_secs".to_owned(),
            number.unwrap_or(Value::String(text)),
        );
    }
    input.insert("op_source".into(), "stream".into());
    input.insert("source_ref".into(), truncate_chars(entry_id, 256).into());
    Value::Object(input)
}

/// A stream field as text: at most `FIELD_MAX_BYTES`, invalid UTF-8 replaced.
fn field_text(value: &redis::Value) -> String {
    let raw: Vec<u8> = redis::from_redis_value(value.clone()).unwrap_or_default();
    String::from_utf8_lossy(&raw[..raw.len().min(FIELD_MAX_BYTES)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_map_to_stream_inputs_whatever_their_fields() {
        let fields = HashMap::from([
            (
                "game_id".to_owned(),
                redis::Value::BulkString(b"g-1".to_vec()),
            ),
            (
                "reason".to_owned(),
                redis::Value::BulkString(vec![0xff, b'x']),
            ),
            ("other".to_owned(), redis::Value::Int(3)),
            (
                "request_id".to_owned(),
                redis::Value::BulkString(b"r".to_vec()),
            ),
        ]);
        let input = entry_input("1-0", &fields);
        assert_eq!(input["game_id"], "g-1");
        assert_eq!(
            input["reason"], "\u{fffd}x",
            "invalid UTF-8 is replaced, then refused by the workflow"
        );
        assert_eq!(input["op_source"], "stream");
        assert_eq!(input["source_ref"], "1-0");
        assert!(input.get("other").is_none());

        let long = HashMap::from([(
            "game_id".to_owned(),
            redis::Value::BulkString(vec![b'a'; 100_000]),
        )]);
        assert_eq!(
            entry_input("2-0", &long)["game_id"].as_str().unwrap().len(),
            FIELD_MAX_BYTES
        );
        assert!(entry_input("3-0", &HashMap::new()).get("game_id").is_none());
    }
}
