//! Diesel table definitions, matching `migrations/`.

diesel::table! {
    runtime_records (game_id) {
        game_id -> Text,
        status -> Text,
        current_container_id -> Nullable<Text>,
        current_image_ref -> Nullable<Text>,
        started_at -> Nullable<Timestamptz>,
        stopped_at -> Nullable<Timestamptz>,
        removed_at -> Nullable<Timestamptz>,
        last_op_at -> Timestamptz,
        last_op_id -> Nullable<Text>,
        fence -> Int8,
        last_container_id -> Nullable<Text>,
        host_id -> Text,
    }
}

diesel::table! {
    operation_log (id) {
        id -> Int8,
        operation_id -> Text,
        game_id -> Text,
        op_kind -> Text,
        op_source -> Text,
        source_ref -> Nullable<Text>,
        image_ref -> Nullable<Text>,
        container_id -> Nullable<Text>,
        outcome -> Text,
        error_code -> Nullable<Text>,
        error_message -> Nullable<Text>,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        stop_signal -> Nullable<Text>,
        stop_timeout_secs -> Nullable<Int4>,
        stop_ended -> Nullable<Text>,
    }
}

diesel::table! {
    health_snapshots (game_id) {
        game_id -> Text,
        container_id -> Nullable<Text>,
        event_type -> Text,
        occurred_at -> Timestamptz,
        details -> Jsonb,
    }
}

diesel::table! {
    hosts (id) {
        id -> Text,
        task_queue -> Text,
        capacity -> Int4,
        labels -> Jsonb,
        state -> Text,
        draining -> Bool,
        docker_host -> Nullable<Text>,
        registered_at -> Timestamptz,
        last_heartbeat_at -> Timestamptz,
        events_since_ns -> Nullable<Int8>,
    }
}
