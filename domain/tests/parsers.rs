//! Property tests of every parser at the edges: arbitrary input never panics, whatever is
//! accepted satisfies the contract, and accepted requests round-trip.

use proptest::prelude::*;
use rtmanager_domain::{
    GameId, ImageRef, LeaseToken, ReplaceRequest, SourceRef, StartRequest, StopRequest,
};
use serde_json::{json, Value};

fn contract_game_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().next().unwrap().is_ascii_alphanumeric()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
}

/// Arbitrary JSON values, biased toward the fields the requests know.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("admin"),
            Just("finished"),
            Just("rest"),
            Just("stream"),
            Just("g-1"),
            Just("img:1")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("game_id".to_string()),
                    Just("reason".to_string()),
                    Just("op_source".to_string()),
                    Just("source_ref".to_string()),
                    Just("lease_token".to_string()),
                    Just("image_ref".to_string()),
                    "[a-z_]{1,10}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn game_id_accepts_exactly_the_contract_alphabet(raw in ".{0,140}") {
        prop_assert_eq!(GameId::parse(&raw).is_ok(), contract_game_id(&raw));
    }

    #[test]
    fn game_ids_made_of_the_alphabet_parse(raw in "[A-Za-z0-9][A-Za-z0-9._-]{0,127}") {
        let parsed = GameId::parse(&raw).unwrap();
        prop_assert_eq!(parsed.as_str(), raw.as_str());
    }

    #[test]
    fn small_parsers_never_panic(raw in ".{0,600}") {
        let _ = SourceRef::parse(&raw);
        let _ = LeaseToken::parse(&raw).map(|t| (t.fence(), t.secret().len()));
        let _ = ImageRef::parse(&raw);
    }

    #[test]
    fn requests_from_arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = StopRequest::from_json(&bytes);
        let _ = StartRequest::from_json(&bytes);
        let _ = ReplaceRequest::restart_from_json(&bytes);
        let _ = ReplaceRequest::patch_from_json(&bytes);
    }

    #[test]
    fn accepted_requests_satisfy_the_contract_and_round_trip(value in json_value()) {
        let bytes = value.to_string().into_bytes();
        match StopRequest::from_json(&bytes) {
            Ok(req) => {
                prop_assert!(contract_game_id(req.game_id.as_str()));
                prop_assert_eq!(StopRequest::from_json(req.to_json().to_string().as_bytes()).unwrap(), req);
            }
            Err(invalid) => prop_assert!(!invalid.message.is_empty()),
        }
        if let Ok(req) = StartRequest::from_json(&bytes) {
            prop_assert_eq!(StartRequest::from_json(req.to_json().to_string().as_bytes()).unwrap(), req);
        }
        if let Ok(req) = ReplaceRequest::patch_from_json(&bytes) {
            prop_assert!(req.image_ref.is_some());
            prop_assert_eq!(ReplaceRequest::patch_from_json(req.to_json().to_string().as_bytes()).unwrap(), req);
        }
    }

    #[test]
    fn a_valid_stop_with_one_field_broken_is_refused(field in 0usize..3, junk in ".{0,20}") {
        let mut value = json!({"game_id": "g-1", "reason": "admin", "op_source": "rest"});
        let key = ["game_id", "reason", "op_source"][field];
        let valid_anyway = match key {
            "game_id" => contract_game_id(&junk),
            "reason" => ["finished", "cancelled", "admin", "timeout", "restart", "patch"].contains(&junk.as_str()),
            _ => ["stream", "rest", "admin", "reconciler"].contains(&junk.as_str()),
        };
        value[key] = Value::from(junk.clone());
        prop_assert_eq!(StopRequest::from_json(value.to_string().as_bytes()).is_ok(), valid_anyway);
    }
}
