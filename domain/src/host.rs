//! Docker hosts. A worker serves exactly one Docker engine, named by its host id, and polls that
//! host's own task queue; every game lives on one host.

use serde::{Deserialize, Serialize};

use crate::GameId;

/// The host a one-host install runs on, and the one existing records are given by the migration
/// that introduced hosts.
pub const DEFAULT_HOST: &str = "local";

/// A validated host id: the game id's alphabet (`[A-Za-z0-9._-]`, 1-128 characters, first one
/// alphanumeric), because it is spliced into task queue names the same way.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostId(String);

impl HostId {
    /// Parses a host id, with the game id's rules and a message that names the host.
    pub fn parse(raw: &str) -> Result<Self, String> {
        GameId::parse(raw)
            .map(|_| Self(raw.to_owned()))
            .map_err(|err| format!("host {raw:?} is not a host id: {}", host_words(&err)))
    }

    /// The task queue the worker of this host polls, in the deployment whose shared task queue
    /// is `shared` (`rtmanager` by default): workflows whose Docker steps run on this host go
    /// there. `@` cannot occur in a host id, so the name splits back unambiguously.
    pub fn task_queue(&self, shared: &str) -> String {
        format!("{shared}@{}", self.0)
    }
}

impl Default for HostId {
    fn default() -> Self {
        Self(DEFAULT_HOST.to_owned())
    }
}

fn host_words(err: &crate::GameIdError) -> String {
    err.to_string().replace("game_id", "a host id")
}

string_id!(HostId, String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ids_follow_the_game_id_alphabet() {
        assert_eq!(HostId::parse("b-2.east").unwrap().as_str(), "b-2.east");
        for bad in ["", "-b", "a@b", "a b", "a/b", &"h".repeat(129)] {
            let err = HostId::parse(bad).unwrap_err();
            assert!(err.contains("is not a host id"), "{bad:?}: {err}");
            assert!(!err.contains("game_id"), "{err}");
        }
    }

    #[test]
    fn a_host_queue_is_named_after_the_shared_queue() {
        let host = HostId::parse("b").unwrap();
        assert_eq!(host.task_queue("rtmanager"), "rtmanager@b");
        assert_eq!(HostId::default().task_queue("q"), "q@local");
    }
}
