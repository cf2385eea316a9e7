//! Containers as the runtime keeps them: ids, the on-disk state under
//! `--root`, bundles, the shared directory and VM sizing.

pub mod bundle;
pub mod share;
pub mod sizing;
pub mod state;

pub use state::{State, Status, Store};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    // runc's wording (libcontainer.ErrInvalidID).
    #[error("invalid container ID format")]
    Invalid(String),
}

/// runc's rule: `^[\w+\-.]+$`, and not `.` or `..` (the id names a directory).
pub fn validate_id(id: &str) -> Result<(), IdError> {
    let ok = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(IdError::Invalid(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for good in ["a", "abc-123", "x.y_z+1", "A"] {
            assert_eq!(validate_id(good), Ok(()));
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é", "a\0b"] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }
}
