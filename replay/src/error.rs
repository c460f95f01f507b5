//! The replay crate's one error type, and its single mapping to gRPC status
//! codes. Every variant picks its code here and nowhere else.

use std::time::Duration;

use crate::validate::{Signature, ValidationError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid replay config: {0}")]
    Config(String),
    #[error("no table named {0:?}")]
    UnknownTable(String),
    #[error("invalid sequence: {0}")]
    InvalidSequence(#[from] ValidationError),
    #[error("sequence does not match table {table:?}: the table holds {expected}, the sequence has {found}")]
    SignatureMismatch {
        table: String,
        expected: Box<Signature>,
        found: Box<Signature>,
    },
    #[error("invalid insert: {0}")]
    InvalidInsert(String),
    /// A request of a stream that could not be read: larger than
    /// `replay.max_message_bytes`, not a valid message, or a broken
    /// connection. Keeps the status tonic reported (and its code).
    #[error("could not read the next request of the stream: {}", .0.message())]
    Request(tonic::Status),
    #[error("an insert stream may continue items for at most {0} writers")]
    TooManyWriters(usize),
    #[error("invalid sample request: {0}")]
    InvalidSampleRequest(String),
    #[error("invalid priority update for key {key}: priority {priority} is not a finite number >= 0")]
    InvalidPriority { key: u64, priority: f64 },
    #[error("table {table:?} could not serve a batch of {wanted} items within {waited:?} (min_size_to_sample {min_size})")]
    SampleTimeout {
        table: String,
        wanted: usize,
        min_size: usize,
        waited: Duration,
    },
    #[error("sequence of {bytes} bytes exceeds table {table:?}'s whole byte budget max_bytes = {max_bytes}")]
    TooLarge { table: String, bytes: u64, max_bytes: u64 },
    #[error(
        "a batch of {items} items from table {table:?} would be a message of {bytes} bytes, more than the \
         {max_bytes} bytes replay.max_message_bytes allows; the items stay in the table (ask for smaller \
         batches or raise max_message_bytes)"
    )]
    BatchTooLarge {
        table: String,
        items: usize,
        bytes: usize,
        max_bytes: usize,
    },
    #[error("timed out after {waited:?} waiting for room in full table {table:?}")]
    InsertTimeout { table: String, waited: Duration },
    #[error("table {table:?} has issued every key of this start; restart replay to take new keys")]
    KeysExhausted { table: String },
    #[error("replay checkpoint: {0}")]
    Checkpoint(String),
    /// A checkpoint's files on disk: writing them, or reading them back
    /// against their manifest.
    #[error("replay checkpoint: {0}")]
    CheckpointFiles(#[from] fleet_checkpoint::Error),
    #[error("replay compression: {0}")]
    Compression(String),
    /// The write-ahead log: writing, syncing, or reading it back at start.
    #[error("replay write-ahead log: {0}")]
    Wal(String),
    #[error("checkpoints are off: set replay.checkpoint_dir")]
    CheckpointsDisabled,
    #[error("the replay service is shutting down")]
    Shutdown,
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        use tonic::Code;
        let code = match &error {
            Error::Config(_) => Code::Internal,
            Error::UnknownTable(_) => Code::NotFound,
            Error::InvalidSequence(_)
            | Error::SignatureMismatch { .. }
            | Error::InvalidInsert(_)
            | Error::InvalidSampleRequest(_)
            | Error::InvalidPriority { .. } => Code::InvalidArgument,
            Error::TooLarge { .. } | Error::TooManyWriters(_) | Error::BatchTooLarge { .. } | Error::KeysExhausted { .. } => {
                Code::ResourceExhausted
            }
            Error::SampleTimeout { .. } | Error::InsertTimeout { .. } => Code::DeadlineExceeded,
            Error::Checkpoint(_) | Error::CheckpointFiles(_) | Error::Compression(_) => Code::Internal,
            Error::CheckpointsDisabled => Code::FailedPrecondition,
            // The insert was not made durable; it may be retried elsewhere or later.
            Error::Wal(_) => Code::Unavailable,
            Error::Request(status) => status.code(),
            Error::Shutdown => Code::Unavailable,
            Error::Transport(_) => Code::Internal,
        };
        tonic::Status::new(code, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn codes() {
        let status = |e: Error| tonic::Status::from(e).code();
        assert_eq!(status(Error::UnknownTable("x".into())), Code::NotFound);
        assert_eq!(
            status(Error::InvalidSequence(ValidationError::Missing("actions"))),
            Code::InvalidArgument
        );
        assert_eq!(status(Error::InvalidPriority { key: 1, priority: -1.0 }), Code::InvalidArgument);
        assert_eq!(status(Error::InvalidSampleRequest("b".into())), Code::InvalidArgument);
        let timeout = Error::SampleTimeout {
            table: "q".into(),
            wanted: 3,
            min_size: 1,
            waited: Duration::from_millis(5),
        };
        assert_eq!(status(timeout), Code::DeadlineExceeded);
        assert_eq!(status(Error::Shutdown), Code::Unavailable);
        let unread = tonic::Status::from(Error::Request(tonic::Status::out_of_range("message length too large")));
        assert_eq!(unread.code(), Code::OutOfRange);
        assert!(unread.message().contains("message length too large"), "{unread:?}");
        let too_large = Error::TooLarge {
            table: "q".into(),
            bytes: 10,
            max_bytes: 5,
        };
        assert_eq!(status(too_large), Code::ResourceExhausted);
        let message = tonic::Status::from(Error::InvalidSequence(ValidationError::Missing("actions")))
            .message()
            .to_owned();
        assert_eq!(message, "invalid sequence: actions is missing");
    }
}
