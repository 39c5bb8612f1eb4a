//! Wharf's settings on RabbitMQ: a replicated state machine ([`crate::rsm`]) on the stream
//! `{prefix}.meta`.
//!
//! AMQP 0.9.1 cannot list queues or read a queue's arguments back, and RabbitMQ has no
//! key-value store, so the settings of topics and subscriptions live in a Wharf-owned stream.
//! Every change is a record appended to it; every node applies the records in stream order,
//! so all nodes agree, and conflicts are decided by that order (the first create of a name
//! wins; a later create of the same name finds it taken).
//!
//! Besides the users' topics the settings hold the topics Wharf makes for a shared
//! subscription: its dead-letter topic `wharf.dlq.{topic}.{sub}` (listed, readable) and its
//! retry topic (hidden: what redrive puts back, for this subscription only). Both are created
//! and deleted by the subscription's records, in the same step.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::Connection;
use serde::{Deserialize, Serialize};
use wharf_broker::{Result, SubscriptionConfig, TopicConfig};

use crate::rsm::{self, Machine, Rsm};

/// How long opening may take to read the settings stream up to now.
pub(crate) const OPEN_BUDGET: Duration = Duration::from_secs(60);

/// One change to the settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Change {
    /// Creates a topic unless one of that name exists.
    CreateTopic {
        name: String,
        config: TopicConfig,
        created_ms: i64,
    },
    /// Deletes the topic of that generation (a later one of the same name stays), with its
    /// subscriptions and their topics.
    DeleteTopic { name: String, generation: u64 },
    /// Creates a subscription on the topic of that generation unless one of that name
    /// exists (a shared one with its dead-letter and retry topics).
    CreateSubscription {
        topic: String,
        topic_generation: u64,
        name: String,
        config: SubscriptionConfig,
        /// Where each partition starts (resolved by the creator from `config.start`).
        initial: Vec<u64>,
        created_ms: i64,
    },
    /// Deletes the subscription of that generation, with its topics.
    DeleteSubscription {
        topic: String,
        name: String,
        generation: u64,
    },
    /// Changes nothing: marks a point in the stream (see [`Rsm::sync`]).
    Fence,
}

/// What a topic is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Role {
    /// A user's topic.
    Topic,
    /// The dead-letter topic of a shared subscription: written by Wharf only.
    DeadLetters { topic: String, sub: String },
    /// The retry topic of a shared subscription (redriven messages): hidden.
    Retry,
}

/// A topic as the settings stream knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TopicState {
    pub(crate) config: TopicConfig,
    /// The stream offset of the record that created it: part of its streams' names, so a
    /// topic deleted and created again never shares a stream with its earlier self.
    pub(crate) generation: u64,
    pub(crate) created_ms: i64,
    pub(crate) role: Role,
    /// Its subscriptions, by name.
    pub(crate) subs: BTreeMap<String, SubState>,
}

/// A subscription as the settings stream knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubState {
    pub(crate) config: SubscriptionConfig,
    /// The offset of the record that created it (in its state stream's name and its ack ids).
    pub(crate) generation: u64,
    pub(crate) initial: Vec<u64>,
}

/// The retry topic of shared subscription `sub` on `topic` (hidden; `wharf.` is reserved).
pub(crate) fn retry_topic(topic: &str, sub: &str) -> String {
    format!("wharf.retry.{topic}.{sub}")
}

/// Settings of the topics Wharf makes for a shared subscription: one partition, room for the
/// largest message any topic takes plus the dead-letter headers (so a poison message can
/// always be moved out of the way). The dead-letter topic dedups (the ids that make moving a
/// message idempotent); the retry topic does not (a message dead-lettered and redriven twice
/// carries its producer's id twice, and must come back both times).
pub(crate) fn side_topic_config(role: &Role) -> TopicConfig {
    let config = wharf_broker::dlq::topic_config();
    match role {
        Role::Retry => TopicConfig {
            dedup_window_ms: 0,
            ..config
        },
        _ => config,
    }
}

/// What the settings stream says.
#[derive(Default)]
pub(crate) struct Settings {
    pub(crate) topics: BTreeMap<String, TopicState>,
}

impl Settings {
    fn side_topic(&self, created_ms: i64, generation: u64, role: Role) -> TopicState {
        TopicState {
            config: side_topic_config(&role),
            generation,
            created_ms,
            role,
            subs: BTreeMap::new(),
        }
    }

    /// Removes a subscription's topics (a shared one has two).
    fn drop_side_topics(&mut self, topic: &str, sub: &str) {
        let dlq = wharf_broker::names::dlq_topic(topic, sub);
        if self.topics.get(&dlq).is_some_and(|t| {
            t.role
                == Role::DeadLetters {
                    topic: topic.to_owned(),
                    sub: sub.to_owned(),
                }
        }) {
            self.topics.remove(&dlq);
        }
        let retry = retry_topic(topic, sub);
        if self
            .topics
            .get(&retry)
            .is_some_and(|t| t.role == Role::Retry)
        {
            self.topics.remove(&retry);
        }
    }
}

impl Machine for Settings {
    type Op = Change;
    type Outcome = ();
    type Snap = BTreeMap<String, TopicState>;

    fn fence() -> Change {
        Change::Fence
    }

    fn snapshot(&self) -> Self::Snap {
        self.topics.clone()
    }

    fn restore(&mut self, snap: Self::Snap) -> bool {
        self.topics = snap;
        true
    }

    fn apply(&mut self, offset: u64, change: Change) {
        match change {
            Change::CreateTopic {
                name,
                config,
                created_ms,
            } => {
                self.topics.entry(name).or_insert(TopicState {
                    config,
                    generation: offset,
                    created_ms,
                    role: Role::Topic,
                    subs: BTreeMap::new(),
                });
            }
            Change::DeleteTopic { name, generation } => {
                if let Some(t) = self.topics.get(&name)
                    && t.generation == generation
                {
                    let subs: Vec<String> = t.subs.keys().cloned().collect();
                    self.topics.remove(&name);
                    for sub in subs {
                        self.drop_side_topics(&name, &sub);
                    }
                }
            }
            Change::CreateSubscription {
                topic,
                topic_generation,
                name,
                config,
                initial,
                created_ms,
            } => {
                let shared = matches!(config, SubscriptionConfig::Shared(_));
                let dlq = wharf_broker::names::dlq_topic(&topic, &name);
                let retry = retry_topic(&topic, &name);
                // `wharf.dlq.a.b.c` is both (a, b.c) and (a.b, c): the first wins.
                if shared && (self.topics.contains_key(&dlq) || self.topics.contains_key(&retry)) {
                    return;
                }
                let Some(t) = self.topics.get_mut(&topic) else {
                    return;
                };
                if t.generation != topic_generation
                    || t.role != Role::Topic
                    || t.subs.contains_key(&name)
                {
                    return;
                }
                t.subs.insert(
                    name.clone(),
                    SubState {
                        config,
                        generation: offset,
                        initial,
                    },
                );
                if shared {
                    let dead = self.side_topic(
                        created_ms,
                        offset,
                        Role::DeadLetters {
                            topic: topic.clone(),
                            sub: name.clone(),
                        },
                    );
                    self.topics.insert(dlq, dead);
                    let retry_state = self.side_topic(created_ms, offset, Role::Retry);
                    self.topics.insert(retry, retry_state);
                }
            }
            Change::DeleteSubscription {
                topic,
                name,
                generation,
            } => {
                if let Some(t) = self.topics.get_mut(&topic)
                    && t.subs
                        .get(&name)
                        .is_some_and(|s| s.generation == generation)
                {
                    t.subs.remove(&name);
                    self.drop_side_topics(&topic, &name);
                }
            }
            Change::Fence => {}
        }
    }
}

/// The settings stream of one node's session.
pub(crate) struct Meta {
    rsm: Rsm<Settings>,
}

impl Meta {
    /// Declares the settings stream (a stream queue: this is where a RabbitMQ without
    /// streams, older than 3.9, is refused), starts applying it, and syncs.
    pub(crate) async fn open(
        conn: &Connection,
        queue: String,
        node: String,
        timeout: Duration,
        policy: rsm::Policy,
    ) -> Result<Self> {
        rsm::declare_stream(conn, &queue).await?;
        let rsm = Rsm::open(
            conn,
            queue,
            node,
            Settings::default(),
            timeout,
            OPEN_BUDGET,
            policy,
        )
        .await?;
        Ok(Self { rsm })
    }

    /// Appends a change; returns its offset in the stream once this node has applied it
    /// (and every record before it).
    pub(crate) async fn append(&self, change: Change) -> Result<u64> {
        Ok(self.rsm.propose(change).await?.0)
    }

    /// Waits until this node's view holds every change acknowledged before the call.
    pub(crate) async fn sync(&self) -> Result<()> {
        self.rsm.sync().await
    }

    /// The topic's settings as this node knows them (see [`Meta::sync`]).
    pub(crate) fn topic(&self, name: &str) -> Option<TopicState> {
        self.rsm.view(|s| s.topics.get(name).cloned())
    }

    /// Every topic this node knows, by name.
    pub(crate) fn topics(&self) -> Vec<(String, TopicState)> {
        self.rsm.view(|s| {
            s.topics
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
    }

    /// Whether the reader still runs and the writing channel is open.
    pub(crate) fn alive(&self) -> bool {
        self.rsm.alive()
    }

    /// Records applied by this copy.
    pub(crate) fn applied(&self) -> u64 {
        self.rsm.applied()
    }
}
