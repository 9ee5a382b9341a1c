//! Resolvers tried in order, and what happens to visitors none recognises.

use std::{fmt, sync::Arc};

use crate::{BoxFuture, Identity, IdentityResolver, Rejection, Resolution, UpgradeRequest};

/// What a socket that no resolver recognised may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnonymousPolicy {
    /// Connect as an anonymous visitor; the routing rules decide what it sees
    /// (by default only the broadcast channel).
    #[default]
    Allow,
    /// Refuse the upgrade with 401.
    Refuse,
}

/// Resolvers tried in order: the first that identifies the socket or
/// rejects it decides; when every one says [`Resolution::Unrecognized`], the
/// [`AnonymousPolicy`] does (seed 001: the cookie proxy, then the one-time
/// token, then anonymous).
///
/// The policy also applies to an *anonymous* identity a resolver returns
/// (`"user": null`, for example a one-time token minted for nobody): with
/// [`AnonymousPolicy::Refuse`] such a socket is refused with 401 like any
/// other visitor nobody recognised, whichever resolver vouched for it.
#[derive(Clone, Default)]
pub struct Chain {
    resolvers: Vec<(&'static str, Arc<dyn IdentityResolver>)>,
    anonymous: AnonymousPolicy,
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field(
                "resolvers",
                &self.resolvers.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            )
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

impl Chain {
    /// An empty chain: every socket is anonymous, allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `resolver`, named `name` in logs.
    pub fn with(mut self, name: &'static str, resolver: Arc<dyn IdentityResolver>) -> Self {
        self.resolvers.push((name, resolver));
        self
    }

    /// Sets the policy for sockets no resolver recognises.
    pub fn anonymous(mut self, policy: AnonymousPolicy) -> Self {
        self.anonymous = policy;
        self
    }
}

impl IdentityResolver for Chain {
    fn resolve<'a>(&'a self, req: &'a UpgradeRequest) -> BoxFuture<'a, Resolution> {
        Box::pin(async move {
            for (name, resolver) in &self.resolvers {
                match resolver.resolve(req).await {
                    Resolution::Unrecognized => continue,
                    Resolution::Identified(identity)
                        if identity.is_anonymous() && self.anonymous == AnonymousPolicy::Refuse =>
                    {
                        tracing::debug!(
                            resolver = name,
                            "upgrade refused: an anonymous identity, and anonymous visitors are refused"
                        );
                        return Resolution::Rejected(Rejection::unauthorized("sign in first"));
                    }
                    Resolution::Identified(identity) => {
                        tracing::debug!(
                            resolver = name,
                            user = identity.user.as_deref(),
                            "identified"
                        );
                        return Resolution::Identified(identity);
                    }
                    Resolution::Rejected(rejection) => {
                        tracing::debug!(resolver = name, status = %rejection.status, reason = %rejection.reason, "upgrade refused");
                        return Resolution::Rejected(rejection);
                    }
                }
            }
            match self.anonymous {
                AnonymousPolicy::Allow => Resolution::Identified(Identity::anonymous()),
                AnonymousPolicy::Refuse => {
                    Resolution::Rejected(Rejection::unauthorized("sign in first"))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identifies every socket as `identity`.
    struct Fixed(Identity);

    impl IdentityResolver for Fixed {
        fn resolve<'a>(&'a self, _req: &'a UpgradeRequest) -> BoxFuture<'a, Resolution> {
            Box::pin(async move { Resolution::Identified(self.0.clone()) })
        }
    }

    fn req() -> UpgradeRequest {
        UpgradeRequest::new(
            http::HeaderMap::new(),
            http::Uri::from_static("/ws"),
            "127.0.0.1:1".parse().unwrap(),
        )
    }

    #[tokio::test]
    async fn an_anonymous_identity_obeys_the_anonymous_policy() {
        let anonymous = Arc::new(Fixed(Identity::anonymous()));
        let refuse = Chain::new()
            .with("fixed", anonymous.clone())
            .anonymous(AnonymousPolicy::Refuse);
        match refuse.resolve(&req()).await {
            Resolution::Rejected(r) => assert_eq!(r.status, http::StatusCode::UNAUTHORIZED),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let allow = Chain::new().with("fixed", anonymous);
        assert_eq!(
            allow.resolve(&req()).await,
            Resolution::Identified(Identity::anonymous())
        );
        let user = Chain::new()
            .with("fixed", Arc::new(Fixed(Identity::user("7"))))
            .anonymous(AnonymousPolicy::Refuse);
        assert_eq!(
            user.resolve(&req()).await,
            Resolution::Identified(Identity::user("7"))
        );
    }
}
