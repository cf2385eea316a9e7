//! Errors of the task service, mapped onto the ttrpc status codes containerd
//! turns back into its errdefs (NotFound, AlreadyExists, FailedPrecondition...).

use containerd_shim::protos::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Unimplemented(String),
    /// Anything the host or the VM could not do.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn internal(what: &str, e: impl std::fmt::Display) -> Error {
        Error::Internal(format!("{what}: {e}"))
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        let code = match &e {
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            Error::Internal(_) => Code::UNKNOWN,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

impl From<husk::vm::VmError> for Error {
    fn from(e: husk::vm::VmError) -> Error {
        Error::Internal(e.to_string())
    }
}

impl From<husk::container::share::ShareError> for Error {
    fn from(e: husk::container::share::ShareError) -> Error {
        Error::Internal(e.to_string())
    }
}
