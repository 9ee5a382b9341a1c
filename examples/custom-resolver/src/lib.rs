//! A custom identity resolver: trust the user that an authenticating reverse
//! proxy (oauth2-proxy, an SSO gateway, nginx `auth_request`) puts in a
//! header, but only when the request really came from that proxy.
//!
//! This is the whole "swap in your own resolver" seam: implement
//! [`IdentityResolver`] and hand it to the gateway builder (see
//! `src/main.rs` for the binary, `docs/custom-resolver.md` for the walk
//! through).

use std::net::IpAddr;

use tidings_identity::{
    BoxFuture, Identity, IdentityResolver, Rejection, Resolution, UpgradeRequest,
};

/// Identifies sockets by the `X-Forwarded-User` (and optional
/// `X-Forwarded-Groups`, comma-separated) headers of a trusted proxy.
///
/// The headers are believed only when the TCP connection itself comes from
/// one of `trusted_proxies` ([`UpgradeRequest::peer`], never derived from a
/// header): a client that reaches the gateway directly, or that sends its
/// own `X-Forwarded-For`, cannot assert a user.
#[derive(Debug, Clone)]
pub struct ProxyHeaderResolver {
    /// TCP peers allowed to assert a user (the proxy's own addresses).
    pub trusted_proxies: Vec<IpAddr>,
}

impl IdentityResolver for ProxyHeaderResolver {
    fn resolve<'a>(&'a self, req: &'a UpgradeRequest) -> BoxFuture<'a, Resolution> {
        Box::pin(async move {
            let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
            let Some(user) = header("x-forwarded-user") else {
                // Nothing asserted: let the next resolver (or the anonymous
                // policy) decide.
                return Resolution::Unrecognized;
            };
            // The real TCP peer (a dual-stack listener shows IPv4 peers as
            // `::ffff:a.b.c.d`), not `req.client_ip`, which a client can
            // influence through X-Forwarded-For.
            if !self.trusted_proxies.contains(&req.peer.ip().to_canonical()) {
                // Anyone can send a header; only the proxy may be believed.
                return Resolution::Rejected(Rejection::forbidden(
                    "X-Forwarded-User is only accepted from the trusted proxy",
                ));
            }
            let mut identity = Identity::user(user);
            identity.groups = header("x-forwarded-groups")
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            Resolution::Identified(identity)
        })
    }
}
