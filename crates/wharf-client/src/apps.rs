//! The app registry: apps Wharf calls (invocation and push delivery), and keeping an instance
//! registered while it runs.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use wharf_proto::v1 as proto;
use wharf_proto::v1::apps_client::AppsClient;

use crate::client::{Client, GrpcChannel, MAX_DECODE_BYTES};
use crate::error::Result;

/// An instance registration, as [`Client::register_instance`] takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// `http://host:port` where the instance listens.
    pub address: String,
    /// Dropped unless registered again within this time; `None` = until deregistered.
    pub ttl: Option<Duration>,
    /// Speak HTTP/2 (h2c) to it for plain HTTP calls too (gRPC always uses HTTP/2).
    pub http2: bool,
}

impl Instance {
    /// An instance at `address` that stays registered only while it renews within `ttl`.
    pub fn new(address: impl Into<String>, ttl: Duration) -> Self {
        Self {
            address: address.into(),
            ttl: Some(ttl),
            http2: false,
        }
    }
}

impl Client {
    /// The generated `Apps` client on this connection.
    pub fn apps_service(&self) -> AppsClient<GrpcChannel> {
        AppsClient::with_interceptor(self.channel(), self.auth())
            .max_decoding_message_size(MAX_DECODE_BYTES)
    }

    /// Creates an app or replaces its policy, gRPC services and static instances (registered
    /// instances are kept). Needs the admin scope.
    pub async fn put_app(&self, request: proto::PutAppRequest) -> Result<proto::App> {
        let t = self.call_timeout(Duration::ZERO);
        Self::run(t, self.apps_service().put_app(self.request(request, t))).await
    }

    /// One app with its instances' health and the breaker state.
    pub async fn get_app(&self, name: impl Into<String>) -> Result<proto::App> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::GetAppRequest { name: name.into() };
        Self::run(t, self.apps_service().get_app(self.request(req, t))).await
    }

    /// Every app.
    pub async fn list_apps(&self) -> Result<Vec<proto::App>> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::ListAppsRequest {};
        Ok(
            Self::run(t, self.apps_service().list_apps(self.request(req, t)))
                .await?
                .apps,
        )
    }

    /// Deletes an app and its instances.
    pub async fn delete_app(&self, name: impl Into<String>) -> Result<()> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::DeleteAppRequest { name: name.into() };
        Self::run(t, self.apps_service().delete_app(self.request(req, t))).await?;
        Ok(())
    }

    /// Registers an instance of `app` (created with the default policy if it does not exist)
    /// or renews its TTL. Needs the admin scope on the app.
    pub async fn register_instance(
        &self,
        app: impl Into<String>,
        id: impl Into<String>,
        instance: &Instance,
    ) -> Result<proto::Instance> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::RegisterInstanceRequest {
            app: app.into(),
            id: id.into(),
            address: instance.address.clone(),
            ttl_ms: instance.ttl.map_or(0, |d| d.as_millis() as u64),
            http2: instance.http2,
        };
        Self::run(
            t,
            self.apps_service().register_instance(self.request(req, t)),
        )
        .await
    }

    /// Removes an instance.
    pub async fn deregister_instance(
        &self,
        app: impl Into<String>,
        id: impl Into<String>,
    ) -> Result<()> {
        let t = self.call_timeout(Duration::ZERO);
        let req = proto::DeregisterInstanceRequest {
            app: app.into(),
            id: id.into(),
        };
        Self::run(
            t,
            self.apps_service()
                .deregister_instance(self.request(req, t)),
        )
        .await?;
        Ok(())
    }

    /// Registers an instance with a TTL and keeps it registered: a background task renews it
    /// three times per TTL (a failed renewal is retried at the next tick; the server drops the
    /// instance only if a whole TTL passes without one). [`Registration::close`] deregisters
    /// it; dropping the handle stops renewing (the server then drops it after the TTL).
    ///
    /// ```no_run
    /// # async fn f(client: wharf_client::Client) -> wharf_client::Result<()> {
    /// use std::time::Duration;
    /// use wharf_client::Instance;
    ///
    /// let me = Instance::new("http://127.0.0.1:8081", Duration::from_secs(10));
    /// let registration = client.keep_registered("orders", "orders-1", me).await?;
    /// // ... serve ...
    /// registration.close().await?;
    /// # Ok(()) }
    /// ```
    pub async fn keep_registered(
        &self,
        app: impl Into<String>,
        id: impl Into<String>,
        instance: Instance,
    ) -> Result<Registration> {
        let (app, id) = (app.into(), id.into());
        let ttl = instance
            .ttl
            .ok_or_else(|| crate::Error::invalid("keep_registered needs an instance with a ttl"))?;
        self.register_instance(app.clone(), id.clone(), &instance)
            .await?;
        let (stop, mut stopped) = watch::channel(false);
        let client = self.clone();
        let (task_app, task_id) = (app.clone(), id.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        // A failure is retried at the next tick.
                        let _ = client
                            .register_instance(task_app.clone(), task_id.clone(), &instance)
                            .await;
                    }
                    _ = stopped.changed() => return,
                }
            }
        });
        Ok(Registration {
            client: self.clone(),
            app,
            id,
            stop,
            task: Some(task),
        })
    }
}

/// An instance kept registered by [`Client::keep_registered`].
#[derive(Debug)]
pub struct Registration {
    client: Client,
    app: String,
    id: String,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Registration {
    /// Stops renewing and deregisters the instance.
    pub async fn close(mut self) -> Result<()> {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.client
            .deregister_instance(self.app.clone(), self.id.clone())
            .await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
