//! Room and client identifiers as they appear in AppRTC URLs and Collider frames.
//! One validation rule for every entry point, so a bad id is refused the same way everywhere.

use thiserror::Error;

/// The longest room or client id we accept. AppRTC routes accept any length; we cap it
/// so that a peer cannot make us store arbitrarily long keys.
pub const MAX_ID_LEN: usize = 64;

/// Why an id was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum IdError {
    /// The id is empty.
    #[error("empty id")]
    Empty,
    /// The id is longer than [`MAX_ID_LEN`].
    #[error("id longer than {MAX_ID_LEN} characters")]
    TooLong,
    /// The id holds a character outside `[A-Za-z0-9_-]`.
    #[error("id may only hold A-Z, a-z, 0-9, '_' and '-'")]
    BadChar,
}

/// Checks a room or client id against `[A-Za-z0-9_-]{1,64}`.
pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(())
    } else {
        Err(IdError::BadChar)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_apprtc_alphabet() {
        for ok in ["a", "R1", "room_1-x", "LOOPBACK_CLIENT_ID", &"x".repeat(64)] {
            assert_eq!(validate_id(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        assert_eq!(validate_id(""), Err(IdError::Empty));
        assert_eq!(validate_id(&"x".repeat(65)), Err(IdError::TooLong));
        for bad in ["a b", "a/b", "é", "a.b", "<script>", "a%20"] {
            assert_eq!(validate_id(bad), Err(IdError::BadChar), "{bad}");
        }
    }
}
