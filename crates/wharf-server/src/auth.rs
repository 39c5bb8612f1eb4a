//! Bearer tokens with scopes on name patterns.
//!
//! A token grants scopes (`publish`, `consume`, `admin`, `invoke`), each on the names that
//! match a pattern (`*` matches any run of characters). Scopes are independent: `admin` (create
//! and delete topics and subscriptions, reset, redrive, stats, metrics) does not imply
//! `publish` or `consume`. With no tokens configured, every request is allowed.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::config::TokenConfig;
use crate::error::ApiError;

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Publish to topics (and create a queue by publishing to it).
    Publish,
    /// Read topics and consume subscriptions (fetch, commit, receive, ack, SSE, dead letters).
    Consume,
    /// Create and delete topics and subscriptions; reset; redrive; stats and metrics.
    Admin,
    /// Call apps (invocation).
    Invoke,
    /// Read `/metrics` and `/v1/stats` (for a Prometheus scraper; `admin` may too).
    Metrics,
}

impl Scope {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "publish" => Scope::Publish,
            "consume" => Scope::Consume,
            "admin" => Scope::Admin,
            "invoke" => Scope::Invoke,
            "metrics" => Scope::Metrics,
            _ => return None,
        })
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Consume => "consume",
            Scope::Admin => "admin",
            Scope::Invoke => "invoke",
            Scope::Metrics => "metrics",
        }
    }
}

/// One scope on one name pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    scope: Scope,
    pattern: String,
}

impl Grant {
    /// Parses `scope` or `scope:pattern`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (scope, pattern) = match s.split_once(':') {
            Some((scope, pattern)) => (scope, pattern),
            None => (s, "*"),
        };
        let scope = Scope::parse(scope).ok_or_else(|| {
            format!("{s:?}: unknown scope {scope:?} (publish, consume, admin, invoke or metrics)")
        })?;
        if pattern.is_empty()
            || !pattern
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-*".contains(c))
        {
            return Err(format!(
                "{s:?}: the pattern must be a name with '*' wildcards (a-z 0-9 . _ - *)"
            ));
        }
        Ok(Self {
            scope,
            pattern: pattern.to_owned(),
        })
    }

    fn allows(&self, scope: Scope, name: &str) -> bool {
        self.scope == scope && glob(&self.pattern, name)
    }
}

/// `*` matches any run of characters (including none); everything else matches itself.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if Some(&c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or_default().iter().all(|&c| c == b'*')
}

/// Who is calling.
#[derive(Clone, Debug)]
pub enum Caller {
    /// Authentication is off: everything is allowed.
    Anonymous,
    /// A configured token.
    Token {
        /// The token's name.
        name: Arc<str>,
        /// What it may do.
        grants: Arc<[Grant]>,
    },
}

impl Caller {
    /// Succeeds if the caller may do `scope` on `name`; else `403 forbidden`.
    pub fn require(&self, scope: Scope, name: &str) -> Result<(), ApiError> {
        if self.allows(scope, name) {
            Ok(())
        } else {
            Err(self.forbidden(scope, name))
        }
    }

    /// Succeeds if the caller may read metrics and stats: `metrics` or `admin` on any name.
    pub fn require_metrics(&self) -> Result<(), ApiError> {
        self.require_any(Scope::Metrics)
            .or_else(|_| self.require_any(Scope::Admin))
    }

    /// Succeeds if the caller has `scope` on any name.
    pub fn require_any(&self, scope: Scope) -> Result<(), ApiError> {
        match self {
            Caller::Anonymous => Ok(()),
            Caller::Token { grants, .. } if grants.iter().any(|g| g.scope == scope) => Ok(()),
            Caller::Token { .. } => Err(self.forbidden(scope, "*")),
        }
    }

    /// Whether the caller may do `scope` on `name`.
    pub fn allows(&self, scope: Scope, name: &str) -> bool {
        match self {
            Caller::Anonymous => true,
            Caller::Token { grants, .. } => grants.iter().any(|g| g.allows(scope, name)),
        }
    }

    /// Whether the caller has any scope on `name` (enough to see it in lists).
    pub fn sees(&self, name: &str) -> bool {
        [Scope::Publish, Scope::Consume, Scope::Admin]
            .into_iter()
            .any(|s| self.allows(s, name))
    }

    /// The token's name, for logs.
    pub fn name(&self) -> &str {
        match self {
            Caller::Anonymous => "anonymous",
            Caller::Token { name, .. } => name,
        }
    }

    fn forbidden(&self, scope: Scope, name: &str) -> ApiError {
        ApiError::new(
            "forbidden",
            format!(
                "token {:?} lacks the {:?} scope for {name:?}",
                self.name(),
                scope.as_str()
            ),
        )
    }
}

/// The configured tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    tokens: Vec<(Vec<u8>, Caller)>,
}

impl Tokens {
    /// From validated config.
    pub fn new(configs: &[TokenConfig]) -> Result<Self, String> {
        let mut tokens = Vec::with_capacity(configs.len());
        for t in configs {
            let grants = t
                .scopes
                .iter()
                .map(|s| Grant::parse(s))
                .collect::<Result<Vec<_>, _>>()?;
            tokens.push((
                t.token.as_bytes().to_vec(),
                Caller::Token {
                    name: t.name.as_str().into(),
                    grants: grants.into(),
                },
            ));
        }
        Ok(Self { tokens })
    }

    /// Whether authentication is on.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The caller presenting `authorization` (the header's value, if any).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, ApiError> {
        if !self.enabled() {
            return Ok(Caller::Anonymous);
        }
        let Some(header) = authorization else {
            return Err(ApiError::new(
                "unauthenticated",
                "this server needs a bearer token: Authorization: Bearer <token>",
            ));
        };
        let presented = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    "unauthenticated",
                    "the Authorization header must be \"Bearer <token>\"",
                )
            })?;
        // Compare against every token without stopping early, in constant time per token.
        let mut found = None;
        for (secret, caller) in &self.tokens {
            if constant_time_eq(secret, presented) && found.is_none() {
                found = Some(caller);
            }
        }
        found
            .cloned()
            .ok_or_else(|| ApiError::new("unauthenticated", "unknown bearer token"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::new("internal", "the auth layer did not run"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("*", "orders.created"));
        assert!(glob("orders.*", "orders.created"));
        assert!(!glob("orders.*", "orders"));
        assert!(glob("orders*", "orders"));
        assert!(glob("*.created", "orders.created"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
    }

    fn tokens() -> Tokens {
        Tokens::new(&[TokenConfig {
            name: "svc".into(),
            token: "0123456789abcdef".into(),
            scopes: vec!["publish:orders.*".into(), "consume".into()],
        }])
        .expect("valid")
    }

    #[test]
    fn authenticates_and_checks_scopes() {
        let t = tokens();
        assert_eq!(t.authenticate(None).unwrap_err().code, "unauthenticated");
        assert_eq!(
            t.authenticate(Some(b"Bearer wrong-token-123456"))
                .unwrap_err()
                .code,
            "unauthenticated"
        );
        assert_eq!(
            t.authenticate(Some(b"Basic abc")).unwrap_err().code,
            "unauthenticated"
        );
        let c = t
            .authenticate(Some(b"Bearer 0123456789abcdef"))
            .expect("known");
        assert!(c.require(Scope::Publish, "orders.created").is_ok());
        assert_eq!(
            c.require(Scope::Publish, "payments").unwrap_err().code,
            "forbidden"
        );
        assert!(c.require(Scope::Consume, "payments").is_ok());
        assert!(c.require(Scope::Admin, "orders.created").is_err());
        assert!(c.require_any(Scope::Admin).is_err());
        assert!(c.require_metrics().is_err());
        let scraper = Tokens::new(&[TokenConfig {
            name: "prometheus".into(),
            token: "fedcba9876543210".into(),
            scopes: vec!["metrics".into()],
        }])
        .expect("valid")
        .authenticate(Some(b"Bearer fedcba9876543210"))
        .expect("known");
        assert!(scraper.require_metrics().is_ok());
        assert!(scraper.require(Scope::Admin, "orders").is_err());
        assert!(Caller::Anonymous.require(Scope::Admin, "x").is_ok());
    }

    #[test]
    fn grant_syntax() {
        assert!(Grant::parse("admin").is_ok());
        assert!(Grant::parse("invoke:billing").is_ok());
        assert!(Grant::parse("publish:").is_err());
        assert!(Grant::parse("publish:Orders").is_err());
        assert!(Grant::parse("write").is_err());
    }
}
