//! Stream subscriptions (consumer groups) on NATS: built by Wharf, state in the KV bucket.

use wharf_broker::{
    BrokerError, Committed, FetchRequest, Membership, ResetTo, Result, StoredMessage, StreamConfig,
    SubscriptionInfo,
};

use crate::NatsEngine;

fn not_yet() -> BrokerError {
    BrokerError::NotSupported {
        what: "stream subscriptions",
        engine: "nats",
    }
}

impl NatsEngine {
    pub(crate) async fn group_create(
        &self,
        _topic: &str,
        _name: &str,
        _config: &StreamConfig,
        _partitions: u32,
        _fresh: bool,
    ) -> Result<()> {
        Err(not_yet())
    }

    pub(crate) async fn group_delete(&self, _topic: &str, _name: &str) -> Result<()> {
        Ok(())
    }

    pub(crate) async fn group_info(
        &self,
        _topic: &str,
        _name: &str,
        _config: &StreamConfig,
    ) -> Result<SubscriptionInfo> {
        Err(not_yet())
    }

    pub(crate) async fn group_join(
        &self,
        _topic: &str,
        _sub: &str,
        _member: Option<&str>,
    ) -> Result<Membership> {
        Err(not_yet())
    }

    pub(crate) async fn group_heartbeat(
        &self,
        _topic: &str,
        _sub: &str,
        _member: &str,
    ) -> Result<Membership> {
        Err(not_yet())
    }

    pub(crate) async fn group_leave(&self, _topic: &str, _sub: &str, _member: &str) -> Result<()> {
        Err(not_yet())
    }

    pub(crate) async fn group_fetch(
        &self,
        _topic: &str,
        _sub: &str,
        _member: &str,
        _request: FetchRequest,
    ) -> Result<Vec<StoredMessage>> {
        Err(not_yet())
    }

    pub(crate) async fn group_commit(
        &self,
        _topic: &str,
        _sub: &str,
        _member: &str,
        _offsets: Vec<Committed>,
    ) -> Result<Vec<Committed>> {
        Err(not_yet())
    }

    pub(crate) async fn group_reset(
        &self,
        _topic: &str,
        _sub: &str,
        _to: ResetTo,
    ) -> Result<Vec<Committed>> {
        Err(not_yet())
    }
}
