//! The game identifier. It ends up in Redis keys, workflow ids and container names, so it is
//! parsed once at every edge into a type that cannot hold anything else.

use serde::{Deserialize, Serialize};

/// Maximum length of a game id, in characters (all ASCII, so also bytes).
pub const GAME_ID_MAX_LEN: usize = 128;

/// A validated game id: 1-128 characters from `[A-Za-z0-9._-]`, first character alphanumeric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GameId(String);

/// Why a string is not a game id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GameIdError {
    #[error("game_id must not be empty")]
    /// Nothing to key on: an empty id would yield keys such as `lease:`.
    Empty,
    #[error("game_id is longer than {GAME_ID_MAX_LEN} characters")]
    /// Over [`GAME_ID_MAX_LEN`]; the cap keeps Redis keys and container names bounded.
    TooLong,
    #[error("game_id must start with a letter or digit")]
    /// Starts with `.`, `_` or `-`, which Docker refuses in names and CLIs read as flags.
    BadFirstChar,
    #[error("game_id may only contain letters, digits, '.', '_' and '-'")]
    /// A character outside `[A-Za-z0-9._-]`; separators such as `:` or `/` could forge keys.
    BadChar,
}

impl GameId {
    /// Parses a game id, rejecting anything outside the contract's alphabet.
    pub fn parse(raw: &str) -> Result<Self, GameIdError> {
        let first = raw.chars().next().ok_or(GameIdError::Empty)?;
        if raw.len() > GAME_ID_MAX_LEN {
            return Err(GameIdError::TooLong);
        }
        if !first.is_ascii_alphanumeric() {
            return Err(GameIdError::BadFirstChar);
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(GameIdError::BadChar);
        }
        Ok(Self(raw.to_owned()))
    }
}

string_id!(GameId, GameIdError);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_contract_alphabet() {
        for ok in ["a", "Game-1", "9.x_y-z", &"a".repeat(128)] {
            assert_eq!(GameId::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(GameId::parse(""), Err(GameIdError::Empty));
        assert_eq!(GameId::parse(&"a".repeat(129)), Err(GameIdError::TooLong));
        assert_eq!(GameId::parse("-a"), Err(GameIdError::BadFirstChar));
        assert_eq!(GameId::parse(".a"), Err(GameIdError::BadFirstChar));
        for bad in ["a b", "a/b", "a:b", "a*", "é", "a\n", "a\u{0}"] {
            assert!(GameId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn deserialize_validates() {
        assert!(serde_json::from_str::<GameId>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<GameId>("\"no way\"").is_err());
    }
}
