//! Containers as the runtime keeps them: ids, the on-disk state under
//! `--root`, bundles, the shared directory and VM sizing.

pub mod bundle;
pub mod mountfd;
mod mountpoints;
pub mod share;
pub mod sizing;
pub mod state;

pub use state::{State, Status, Store};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    // runc's wording (libcontainer.ErrInvalidID).
    #[error("invalid container ID format")]
    Invalid(String),
    // runc checks this before the format, in every command.
    #[error("container id cannot be empty")]
    Empty,
}

pub fn validate_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        Err(IdError::Empty)
    } else if husk_protocol::valid_container_id(id) {
        Ok(())
    } else {
        Err(IdError::Invalid(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_wording() {
        assert_eq!(validate_id("ok-1"), Ok(()));
        assert_eq!(
            validate_id("a/b").unwrap_err().to_string(),
            "invalid container ID format"
        );
        assert_eq!(
            validate_id("").unwrap_err().to_string(),
            "container id cannot be empty"
        );
    }
}
