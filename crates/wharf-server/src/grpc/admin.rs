//! `Topics`, `Subscriptions` and `Operations`: the resources and their settings.

use tonic::{Request, Response, Status};
use wharf_broker::{Committed, Position, ResetTo};
use wharf_proto::v1;

use super::convert::{self, edge};
use super::{Ctx, Grpc};
use crate::auth::Scope;
use crate::error::ApiError;
use crate::routes::subscriptions::{read_dead_letters, redrive_checked};
use crate::routes::topics::topic_config;

#[tonic::async_trait]
impl v1::topics_server::Topics for Grpc {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::Topic>, Status> {
        self.call(
            "/wharf.v1.Topics/CreateTopic",
            request,
            |c: Ctx, r| async move {
                c.caller.require(Scope::Admin, &r.name)?;
                let settings = convert::topic_settings(r.config.as_ref())?;
                let config = topic_config(&c.s, &settings)?;
                Ok(convert::topic_out(
                    c.s.engine.create_topic(&r.name, config).await?,
                ))
            },
        )
        .await
    }

    async fn get_topic(
        &self,
        request: Request<v1::GetTopicRequest>,
    ) -> Result<Response<v1::Topic>, Status> {
        self.call(
            "/wharf.v1.Topics/GetTopic",
            request,
            |c: Ctx, r| async move {
                if !c.caller.sees(&r.name) {
                    c.caller.require(Scope::Consume, &r.name)?;
                }
                Ok(convert::topic_out(
                    c.s.engine.describe_topic(&r.name).await?,
                ))
            },
        )
        .await
    }

    async fn list_topics(
        &self,
        request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        self.call(
            "/wharf.v1.Topics/ListTopics",
            request,
            |c: Ctx, _| async move {
                let topics = c.s.engine.list_topics().await?;
                Ok(v1::ListTopicsResponse {
                    topics: topics
                        .into_iter()
                        .filter(|t| c.caller.sees(&t.name))
                        .map(convert::topic_out)
                        .collect(),
                })
            },
        )
        .await
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        self.call(
            "/wharf.v1.Topics/DeleteTopic",
            request,
            |c: Ctx, r| async move {
                c.caller.require(Scope::Admin, &r.name)?;
                c.s.engine.delete_topic(&r.name).await?;
                Ok(v1::DeleteTopicResponse {})
            },
        )
        .await
    }

    async fn create_queue(
        &self,
        request: Request<v1::CreateQueueRequest>,
    ) -> Result<Response<v1::Queue>, Status> {
        self.call(
            "/wharf.v1.Topics/CreateQueue",
            request,
            |c: Ctx, r| async move {
                let shared = r.shared.unwrap_or_default();
                if shared.start.is_some() {
                    return Err(ApiError::invalid(
                        "shared.start",
                        "a queue's subscription starts at the beginning of its topic",
                    ));
                }
                let (topic, sub) = crate::routes::queues::create_queue(
                    &c.s,
                    &c.caller,
                    &r.name,
                    &convert::topic_settings(r.topic.as_ref())?,
                    &convert::shared_settings(&shared)?,
                )
                .await?;
                Ok(v1::Queue {
                    topic: Some(convert::topic_out(topic)),
                    subscription: Some(convert::subscription_out(sub)),
                })
            },
        )
        .await
    }
}

#[tonic::async_trait]
impl v1::subscriptions_server::Subscriptions for Grpc {
    async fn create_subscription(
        &self,
        request: Request<v1::CreateSubscriptionRequest>,
    ) -> Result<Response<v1::Subscription>, Status> {
        let route = "/wharf.v1.Subscriptions/CreateSubscription";
        self.call(route, request, |c: Ctx, r| async move {
            use v1::create_subscription_request::Config;
            c.caller.require(Scope::Admin, &r.topic)?;
            let settings = match &r.config {
                Some(Config::Stream(s)) => convert::stream_settings(s)?,
                Some(Config::Shared(s)) => convert::shared_settings(s)?,
                None => {
                    return Err(ApiError::invalid(
                        "config",
                        "set stream or shared (the subscription's kind)",
                    ));
                }
            };
            let info =
                c.s.engine
                    .create_subscription(&r.topic, &r.name, settings.to_config()?)
                    .await?;
            Ok(convert::subscription_out(info))
        })
        .await
    }

    async fn get_subscription(
        &self,
        request: Request<v1::GetSubscriptionRequest>,
    ) -> Result<Response<v1::Subscription>, Status> {
        let route = "/wharf.v1.Subscriptions/GetSubscription";
        self.call(route, request, |c: Ctx, r| async move {
            if !c.caller.sees(&r.topic) {
                c.caller.require(Scope::Consume, &r.topic)?;
            }
            let info = c.s.engine.describe_subscription(&r.topic, &r.name).await?;
            Ok(convert::subscription_out(info))
        })
        .await
    }

    async fn list_subscriptions(
        &self,
        request: Request<v1::ListSubscriptionsRequest>,
    ) -> Result<Response<v1::ListSubscriptionsResponse>, Status> {
        let route = "/wharf.v1.Subscriptions/ListSubscriptions";
        self.call(route, request, |c: Ctx, r| async move {
            if !c.caller.sees(&r.topic) {
                c.caller.require(Scope::Consume, &r.topic)?;
            }
            let subs = c.s.engine.list_subscriptions(&r.topic).await?;
            Ok(v1::ListSubscriptionsResponse {
                subscriptions: subs.into_iter().map(convert::subscription_out).collect(),
            })
        })
        .await
    }

    async fn delete_subscription(
        &self,
        request: Request<v1::DeleteSubscriptionRequest>,
    ) -> Result<Response<v1::DeleteSubscriptionResponse>, Status> {
        let route = "/wharf.v1.Subscriptions/DeleteSubscription";
        self.call(route, request, |c: Ctx, r| async move {
            c.caller.require(Scope::Admin, &r.topic)?;
            c.s.engine.delete_subscription(&r.topic, &r.name).await?;
            Ok(v1::DeleteSubscriptionResponse {})
        })
        .await
    }

    async fn reset_subscription(
        &self,
        request: Request<v1::ResetSubscriptionRequest>,
    ) -> Result<Response<v1::CommitResponse>, Status> {
        let route = "/wharf.v1.Subscriptions/ResetSubscription";
        self.call(route, request, |c: Ctx, r| async move {
            use v1::reset_subscription_request::To;
            c.caller.require(Scope::Admin, &r.topic)?;
            let to = match r.to {
                Some(To::Edge(e)) => match edge("edge", e)? {
                    Some(Position::Latest) => ResetTo::Latest,
                    Some(_) => ResetTo::Earliest,
                    None => return Err(ApiError::invalid("edge", "must be earliest or latest")),
                },
                Some(To::TimestampMs(t)) => ResetTo::Timestamp(t),
                Some(To::Offsets(o)) => {
                    if o.offsets.is_empty() {
                        return Err(ApiError::invalid("offsets", "give at least one partition"));
                    }
                    ResetTo::Offsets(o.offsets.iter().map(|c| (c.partition, c.offset)).collect())
                }
                None => {
                    return Err(ApiError::invalid("to", "set edge, timestamp_ms or offsets"));
                }
            };
            let offsets: Vec<Committed> = c.s.engine.reset(&r.topic, &r.name, to).await?;
            Ok(convert::committed_out(offsets))
        })
        .await
    }

    async fn list_dead_letters(
        &self,
        request: Request<v1::ListDeadLettersRequest>,
    ) -> Result<Response<v1::ReadResponse>, Status> {
        let route = "/wharf.v1.Subscriptions/ListDeadLetters";
        self.call(route, request, |c: Ctx, r| async move {
            let read = read_dead_letters(
                &c.s,
                &c.caller,
                &r.topic,
                &r.subscription,
                r.offset,
                ("max_messages", r.max_messages),
            )
            .await?;
            Ok(convert::read_out(read))
        })
        .await
    }

    async fn redrive(
        &self,
        request: Request<v1::RedriveRequest>,
    ) -> Result<Response<v1::RedriveResponse>, Status> {
        self.call(
            "/wharf.v1.Subscriptions/Redrive",
            request,
            |c: Ctx, r| async move {
                let redriven =
                    redrive_checked(&c.s, &c.caller, &r.topic, &r.subscription, r.max).await?;
                Ok(v1::RedriveResponse { redriven })
            },
        )
        .await
    }
}

#[tonic::async_trait]
impl v1::operations_server::Operations for Grpc {
    async fn get_stats(
        &self,
        request: Request<v1::GetStatsRequest>,
    ) -> Result<Response<v1::Stats>, Status> {
        self.call(
            "/wharf.v1.Operations/GetStats",
            request,
            |c: Ctx, _| async move {
                c.caller.require_metrics()?;
                let stats = crate::routes::ops::collect_stats(&c.s).await?;
                Ok(v1::Stats {
                    engine: stats.engine,
                    writable: stats.writable,
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    topics: stats
                        .topics
                        .into_iter()
                        .map(|t| v1::TopicStats {
                            name: t.name,
                            partitions: t.partitions,
                            messages: t.messages,
                            subscriptions: t
                                .subscriptions
                                .into_iter()
                                .map(|s| v1::SubscriptionStats {
                                    name: s.name,
                                    kind: match s.kind {
                                        crate::wire::SubscriptionKind::Stream => "stream".into(),
                                        crate::wire::SubscriptionKind::Shared => "shared".into(),
                                    },
                                    lag: s.lag,
                                    in_flight: s.in_flight,
                                    delayed: s.delayed,
                                    dead_lettered: s.dead_lettered,
                                    members: s.members,
                                })
                                .collect(),
                        })
                        .collect(),
                })
            },
        )
        .await
    }
}
