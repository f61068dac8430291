use arqon_protocol::{ClientId, ErrorCode, ProtocolError};
use arqon_storage::StorageError;

/// Everything that can go wrong in the routing layer.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// A frame or command was refused; reported to the client as is.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The storage backend failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A client with this id is already connected.
    #[error("client {0} is already connected")]
    DuplicateClient(ClientId),
}

impl RoutingError {
    /// The one place where routing failures become wire errors.
    pub(crate) fn into_protocol(self) -> ProtocolError {
        match self {
            RoutingError::Protocol(e) => e,
            RoutingError::Storage(StorageError::UnknownCursor(id)) => {
                ProtocolError::new(ErrorCode::NotFound, format!("message {id} is not in the kept history"))
            }
            RoutingError::Storage(StorageError::Unavailable(reason)) => {
                ProtocolError::new(ErrorCode::StorageUnavailable, format!("history is unavailable: {reason}"))
            }
            RoutingError::Storage(e @ StorageError::Backend(_)) => {
                tracing::error!(error = %e, "storage backend error");
                ProtocolError::new(ErrorCode::Internal, "internal error")
            }
            RoutingError::DuplicateClient(id) => {
                ProtocolError::new(ErrorCode::Forbidden, format!("client {id} is already connected"))
            }
        }
    }
}
