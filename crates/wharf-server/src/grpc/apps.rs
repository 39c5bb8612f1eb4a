//! `Apps`: the app registry over gRPC (the SDK's and the CLI's way to register instances).
//! Same checks and scopes as `/v1/apps`.

use tonic::{Request, Response, Status};
use wharf_invoke::{AppConfig, AppStatus, InstanceConfig, InstanceStatus, Policy, Registration};
use wharf_proto::v1;

use super::{Ctx, Grpc};
use crate::auth::Scope;
use crate::error::ApiError;

fn policy_in(p: Option<&v1::AppPolicy>) -> ApiResult<Policy> {
    let mut out = Policy::default();
    let Some(p) = p else {
        return Ok(out);
    };
    if let Some(v) = p.timeout_ms {
        out.timeout_ms = v;
    }
    if let Some(v) = p.per_try_timeout_ms {
        out.per_try_timeout_ms = v;
    }
    if let Some(v) = p.max_concurrency {
        out.max_concurrency = usize::try_from(v)
            .map_err(|_| ApiError::invalid("policy.max_concurrency", "too large"))?;
    }
    if let Some(v) = p.rate_limit_per_second {
        out.rate_limit_per_second = v;
    }
    let r = &mut out.retry;
    if let Some(v) = p.retry_max_attempts {
        r.max_attempts = v;
    }
    if let Some(v) = p.retry_backoff_base_ms {
        r.backoff_base_ms = v;
    }
    if let Some(v) = p.retry_backoff_max_ms {
        r.backoff_max_ms = v;
    }
    if let Some(v) = p.retry_jitter {
        r.jitter = v;
    }
    if let Some(v) = p.retry_budget_ratio {
        r.budget_ratio = v;
    }
    if let Some(v) = p.retry_budget_min_per_second {
        r.budget_min_per_second = v;
    }
    r.idempotent_routes.clone_from(&p.idempotent_routes);
    let b = &mut out.breaker;
    if let Some(v) = p.breaker_consecutive_failures {
        b.consecutive_failures = v;
    }
    if let Some(v) = p.breaker_ejection_ms {
        b.ejection_ms = v;
    }
    if let Some(v) = p.breaker_max_ejection_ms {
        b.max_ejection_ms = v;
    }
    Ok(out)
}

fn policy_out(p: &Policy) -> v1::AppPolicy {
    v1::AppPolicy {
        timeout_ms: Some(p.timeout_ms),
        per_try_timeout_ms: Some(p.per_try_timeout_ms),
        max_concurrency: Some(p.max_concurrency as u64),
        rate_limit_per_second: Some(p.rate_limit_per_second),
        retry_max_attempts: Some(p.retry.max_attempts),
        retry_backoff_base_ms: Some(p.retry.backoff_base_ms),
        retry_backoff_max_ms: Some(p.retry.backoff_max_ms),
        retry_jitter: Some(p.retry.jitter),
        retry_budget_ratio: Some(p.retry.budget_ratio),
        retry_budget_min_per_second: Some(p.retry.budget_min_per_second),
        idempotent_routes: p.retry.idempotent_routes.clone(),
        breaker_consecutive_failures: Some(p.breaker.consecutive_failures),
        breaker_ejection_ms: Some(p.breaker.ejection_ms),
        breaker_max_ejection_ms: Some(p.breaker.max_ejection_ms),
    }
}

fn instance_out(i: InstanceStatus) -> v1::Instance {
    v1::Instance {
        id: i.id,
        address: i.address,
        http2: i.http2,
        expires_in_ms: i.expires_in_ms.unwrap_or(0),
        state: i.state.to_owned(),
        ejected_for_ms: i.ejected_for_ms.unwrap_or(0),
        latency_ewma_ms: i.latency_ewma_ms,
        in_flight: i.in_flight,
        consecutive_failures: i.consecutive_failures,
        attempts: i.attempts,
        failures: i.failures,
    }
}

fn app_out(a: AppStatus) -> v1::App {
    v1::App {
        policy: Some(policy_out(&a.policy)),
        name: a.name,
        grpc_services: a.grpc_services,
        breaker: a.breaker.to_owned(),
        instances: a.instances.into_iter().map(instance_out).collect(),
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn sees(c: &Ctx, app: &str) -> bool {
    c.caller.allows(Scope::Invoke, app) || c.caller.allows(Scope::Admin, app)
}

#[tonic::async_trait]
impl v1::apps_server::Apps for Grpc {
    async fn put_app(
        &self,
        request: Request<v1::PutAppRequest>,
    ) -> Result<Response<v1::App>, Status> {
        self.call("/wharf.v1.Apps/PutApp", request, |c: Ctx, r| async move {
            c.caller.require(Scope::Admin, &r.name)?;
            let config = AppConfig {
                policy: policy_in(r.policy.as_ref())?,
                grpc_services: r.grpc_services,
                instances: r
                    .instances
                    .into_iter()
                    .map(|i| InstanceConfig {
                        id: i.id,
                        address: i.address,
                        http2: i.http2,
                    })
                    .collect(),
            };
            Ok(app_out(c.s.invoker.put_app(&r.name, config)?))
        })
        .await
    }

    async fn get_app(
        &self,
        request: Request<v1::GetAppRequest>,
    ) -> Result<Response<v1::App>, Status> {
        self.call("/wharf.v1.Apps/GetApp", request, |c: Ctx, r| async move {
            if !sees(&c, &r.name) {
                c.caller.require(Scope::Admin, &r.name)?;
            }
            Ok(app_out(c.s.invoker.get(&r.name)?))
        })
        .await
    }

    async fn list_apps(
        &self,
        request: Request<v1::ListAppsRequest>,
    ) -> Result<Response<v1::ListAppsResponse>, Status> {
        self.call(
            "/wharf.v1.Apps/ListApps",
            request,
            |c: Ctx, _r| async move {
                Ok(v1::ListAppsResponse {
                    apps: c
                        .s
                        .invoker
                        .list()
                        .into_iter()
                        .filter(|a| sees(&c, &a.name))
                        .map(app_out)
                        .collect(),
                })
            },
        )
        .await
    }

    async fn delete_app(
        &self,
        request: Request<v1::DeleteAppRequest>,
    ) -> Result<Response<v1::DeleteAppResponse>, Status> {
        self.call(
            "/wharf.v1.Apps/DeleteApp",
            request,
            |c: Ctx, r| async move {
                c.caller.require(Scope::Admin, &r.name)?;
                if c.s.invoker.delete_app(&r.name) {
                    Ok(v1::DeleteAppResponse {})
                } else {
                    Err(wharf_invoke::InvokeError::UnknownApp(r.name).into())
                }
            },
        )
        .await
    }

    async fn register_instance(
        &self,
        request: Request<v1::RegisterInstanceRequest>,
    ) -> Result<Response<v1::Instance>, Status> {
        self.call(
            "/wharf.v1.Apps/RegisterInstance",
            request,
            |c: Ctx, r| async move {
                c.caller.require(Scope::Admin, &r.app)?;
                let registration = Registration {
                    address: r.address,
                    ttl: (r.ttl_ms > 0).then(|| std::time::Duration::from_millis(r.ttl_ms)),
                    http2: r.http2,
                };
                Ok(instance_out(c.s.invoker.register(
                    &r.app,
                    &r.id,
                    registration,
                )?))
            },
        )
        .await
    }

    async fn deregister_instance(
        &self,
        request: Request<v1::DeregisterInstanceRequest>,
    ) -> Result<Response<v1::DeregisterInstanceResponse>, Status> {
        self.call(
            "/wharf.v1.Apps/DeregisterInstance",
            request,
            |c: Ctx, r| async move {
                c.caller.require(Scope::Admin, &r.app)?;
                if c.s.invoker.deregister(&r.app, &r.id) {
                    Ok(v1::DeregisterInstanceResponse {})
                } else {
                    Err(ApiError::new(
                        "app_not_found",
                        format!("app {:?} has no instance {:?}", r.app, r.id),
                    ))
                }
            },
        )
        .await
    }
}
