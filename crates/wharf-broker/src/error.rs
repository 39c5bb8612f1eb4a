//! Broker errors, each with a stable machine-readable code.

/// Errors of the broker and of every [`crate::Engine`]. [`BrokerError::code`] is the stable
/// snake_case code the server puts on the wire; the `Display` text is for people.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A topic or subscription name that breaks the naming rule.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// `"topic"` or `"subscription"`.
        what: &'static str,
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A request field out of range or inconsistent.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No such topic.
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    /// The topic exists with other settings.
    #[error("topic {0:?} already exists with different settings")]
    TopicExists(String),
    /// No such subscription.
    #[error("subscription {subscription:?} of topic {topic:?} does not exist")]
    SubscriptionNotFound {
        /// The topic.
        topic: String,
        /// The subscription.
        subscription: String,
    },
    /// The subscription exists with other settings.
    #[error(
        "subscription {subscription:?} of topic {topic:?} already exists with different settings"
    )]
    SubscriptionExists {
        /// The topic.
        topic: String,
        /// The subscription.
        subscription: String,
    },
    /// A partition number the topic does not have.
    #[error("topic {topic:?} has no partition {partition} (it has {partitions})")]
    PartitionNotFound {
        /// The topic.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many partitions the topic has.
        partitions: u32,
    },
    /// A message over the topic's size limit.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// Encoded size of the message.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// An offset the partition does not (or no longer) hold.
    #[error(
        "offset {requested} of {topic:?} partition {partition} is out of range: it holds [{start}, {end})"
    )]
    OffsetOutOfRange {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset asked for.
        requested: u64,
        /// First offset held.
        start: u64,
        /// One past the last offset held.
        end: u64,
    },
    /// A member id the subscription does not know (never joined, left, or timed out).
    #[error(
        "member {member:?} is not in subscription {subscription:?}: it left or missed its heartbeats; join again"
    )]
    UnknownMember {
        /// The subscription.
        subscription: String,
        /// The member id.
        member: String,
    },
    /// A member acting on a partition it does not own in the current generation.
    #[error(
        "member {member:?} does not own partition {partition} in generation {generation}: the group rebalanced; heartbeat to get the new assignment"
    )]
    NotAssigned {
        /// The member id.
        member: String,
        /// The partition.
        partition: u32,
        /// The current generation.
        generation: u64,
    },
    /// An `ack_id` whose lease expired or whose message was delivered again since.
    #[error("the lease of this delivery expired, or the message was delivered again since")]
    LeaseExpired,
    /// An `ack_id` that is not one the broker issued.
    #[error("malformed ack_id {0:?}")]
    BadAckId(String),
    /// The storage refuses writes (failed fsync, full disk); reads keep working.
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    /// The external engine cannot be reached.
    #[error("engine unavailable: {0}")]
    EngineUnavailable(String),
    /// An operation this engine does not (yet) support.
    #[error("{what} is not supported by the {engine} engine yet")]
    NotSupported {
        /// The operation.
        what: &'static str,
        /// The engine's name.
        engine: &'static str,
    },
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    Closed,
    /// A bug: the broker found its own state inconsistent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BrokerError {
    /// The stable, machine-readable code of this error.
    pub fn code(&self) -> &'static str {
        match self {
            BrokerError::InvalidName { .. } => "invalid_name",
            BrokerError::InvalidArgument { .. } => "invalid_argument",
            BrokerError::TopicNotFound(_) => "topic_not_found",
            BrokerError::TopicExists(_) => "topic_exists",
            BrokerError::SubscriptionNotFound { .. } => "subscription_not_found",
            BrokerError::SubscriptionExists { .. } => "subscription_exists",
            BrokerError::PartitionNotFound { .. } => "partition_not_found",
            BrokerError::MessageTooLarge { .. } => "message_too_large",
            BrokerError::OffsetOutOfRange { .. } => "offset_out_of_range",
            BrokerError::UnknownMember { .. } => "unknown_member",
            BrokerError::NotAssigned { .. } => "not_assigned",
            BrokerError::LeaseExpired => "lease_expired",
            BrokerError::BadAckId(_) => "bad_ack_id",
            BrokerError::StorageUnavailable(_) => "storage_unavailable",
            BrokerError::EngineUnavailable(_) => "engine_unavailable",
            BrokerError::NotSupported { .. } => "not_supported",
            BrokerError::Closed => "closed",
            BrokerError::Internal(_) => "internal",
        }
    }

    /// `invalid_argument` for `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        BrokerError::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<wharf_log::Error> for BrokerError {
    fn from(e: wharf_log::Error) -> Self {
        match e {
            wharf_log::Error::Closed => BrokerError::Closed,
            wharf_log::Error::BatchTooLarge { size, limit } => {
                BrokerError::MessageTooLarge { size, limit }
            }
            wharf_log::Error::InvalidConfig { key, reason } => {
                BrokerError::InvalidArgument { field: key, reason }
            }
            other => BrokerError::StorageUnavailable(other.to_string()),
        }
    }
}

/// The broker's result type.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
