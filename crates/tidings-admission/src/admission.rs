//! Admission: whether a connection may open, and as whom. Written once for
//! every wire adapter (see the [crate docs](crate)).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode, Uri};
use tidings_core::Identity;
use tidings_identity::{IdentityResolver, Rejection, Resolution, UpgradeRequest};
use tidings_session::{IdentityOutcome, RejectReason, RpcHandler, TransportStats};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    limits::{Counts, LimitHit, Limits, Slot},
    origin,
};

/// What admission checks against.
#[derive(Debug, Clone, Default)]
pub struct AdmissionConfig {
    /// Origins allowed to open a connection (empty: same origin only;
    /// `"*"`: any). Requests without an `Origin` are always allowed.
    pub allowed_origins: Vec<String>,
    /// Connection limits.
    pub limits: Limits,
}

struct Inner {
    config: AdmissionConfig,
    resolver: Arc<dyn IdentityResolver>,
    stats: Arc<TransportStats>,
    rpc: Option<Arc<dyn RpcHandler>>,
    /// The (empty) credentials of every connection when RPC is off.
    no_credentials: Arc<HeaderMap>,
    /// Cancelled when draining begins: new connections are refused.
    draining: CancellationToken,
    counts: Arc<Counts>,
    sessions: TaskTracker,
}

/// The gate every connection of every wire format passes. Cheap to clone.
#[derive(Clone)]
pub struct Admission {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("config", &self.inner.config)
            .field("draining", &self.inner.draining.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Why a connection (or a request) was refused: an HTTP status and text,
/// counted once in the stats under its reason when it was made.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The status to answer with.
    pub status: StatusCode,
    /// The text (never a credential, never client data beyond a reason).
    pub message: String,
    /// What the counters recorded.
    pub reason: RejectReason,
    /// `Retry-After`, in seconds, when retrying makes sense.
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// The refusal as a plain-text response with body type `B`.
    pub fn response<B>(&self, body: impl FnOnce(Bytes) -> B) -> Response<B> {
        let mut res = Response::new(body(Bytes::from(format!("{}\n", self.message))));
        *res.status_mut() = self.status;
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if let Some(after) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(after));
        }
        res
    }
}

/// A connection past the checks that need no identity, holding its place
/// in the connection counts (given back when dropped). See
/// [`Ticket::admit`].
#[derive(Debug)]
pub struct Ticket {
    admission: Admission,
    slot: Slot,
    peer: SocketAddr,
    client_ip: IpAddr,
}

/// An admitted connection: everything a session needs to open.
#[derive(Debug)]
pub struct Admitted {
    /// Who it is.
    pub identity: Arc<Identity>,
    /// What RPC calls will carry (empty without RPC).
    pub credentials: Arc<HeaderMap>,
    /// The TCP peer.
    pub peer: SocketAddr,
    /// The client's address through trusted proxies (what the per-address
    /// limit counts).
    pub client_ip: IpAddr,
    /// The connection's place in the counts: keep it for the connection's
    /// life.
    pub slot: Slot,
}

impl Admitted {
    /// The client's address with the TCP peer's port (what RPC calls
    /// forward in `X-Forwarded-For`).
    pub fn client(&self) -> SocketAddr {
        SocketAddr::new(self.client_ip, self.peer.port())
    }
}

impl Admission {
    /// An admission over `config`, asking `resolver` who connections are,
    /// counting in `stats`, and keeping RPC credentials when `rpc` is set.
    pub fn new(
        config: AdmissionConfig,
        resolver: Arc<dyn IdentityResolver>,
        stats: Arc<TransportStats>,
        rpc: Option<Arc<dyn RpcHandler>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                resolver,
                stats,
                rpc,
                no_credentials: Arc::default(),
                draining: CancellationToken::new(),
                counts: Arc::default(),
                sessions: TaskTracker::new(),
            }),
        }
    }

    /// What it checks against.
    pub fn config(&self) -> &AdmissionConfig {
        &self.inner.config
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<TransportStats> {
        &self.inner.stats
    }

    /// Whether draining has begun (new connections are refused).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// Begins draining: new connections are refused with 503.
    pub fn begin_drain(&self) {
        self.inner.draining.cancel();
    }

    /// The tracker every adapter spawns its session tasks on; shutdown
    /// waits for it.
    pub fn sessions(&self) -> &TaskTracker {
        &self.inner.sessions
    }

    /// A refusal, counted under `reason` and logged at debug.
    pub fn refuse(
        &self,
        status: StatusCode,
        why: impl Into<String>,
        reason: RejectReason,
        peer: SocketAddr,
    ) -> Refusal {
        let message = why.into();
        self.inner.stats.rejected(reason);
        tracing::debug!(%peer, status = %status, reason = %message, "connection refused");
        Refusal {
            status,
            message,
            reason,
            retry_after: None,
        }
    }

    /// Checks the `Origin` of a request (also for adapters' actions).
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), origin::OriginError> {
        origin::check(&self.inner.config.allowed_origins, headers)
    }

    /// The checks that need no identity, in order: draining (503), Origin
    /// (403), the total (503) and per-address (429) limits. Gives the
    /// connection's place in the counts.
    pub fn check(&self, headers: &HeaderMap, peer: SocketAddr) -> Result<Ticket, Refusal> {
        if self.is_draining() {
            let mut r = self.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "server is shutting down",
                RejectReason::ShuttingDown,
                peer,
            );
            r.retry_after = Some(1);
            return Err(r);
        }
        if let Err(e) = self.check_origin(headers) {
            return Err(self.refuse(
                StatusCode::FORBIDDEN,
                e.as_str(),
                RejectReason::Origin,
                peer,
            ));
        }
        let limits = &self.inner.config.limits;
        let client_ip = limits.client_ip(peer.ip(), headers);
        match self.inner.counts.admit(limits, client_ip) {
            Ok(slot) => Ok(Ticket {
                admission: self.clone(),
                slot,
                peer,
                client_ip,
            }),
            Err(LimitHit::Total) => {
                let mut r = self.refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server at connection capacity",
                    RejectReason::LimitTotal,
                    peer,
                );
                r.retry_after = Some(5);
                Err(r)
            }
            Err(_) => Err(self.refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from this address",
                RejectReason::LimitPerIp,
                peer,
            )),
        }
    }

    /// Asks the resolver who a request is, without counting it in the
    /// stats (a re-check of a connection already admitted, for example an
    /// adapter's action request).
    pub async fn recheck(&self, req: &UpgradeRequest) -> Resolution {
        self.inner.resolver.resolve(req).await
    }

    /// The client address of a request from `peer`, through the trusted
    /// proxies.
    pub fn client_ip(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        self.inner.config.limits.client_ip(peer.ip(), headers)
    }
}

impl Ticket {
    /// The client's address through trusted proxies.
    pub fn client_ip(&self) -> IpAddr {
        self.client_ip
    }

    /// A refusal of the adapter's own (a bad handshake, a bad parameter),
    /// counted like the others; the ticket's place is given back.
    pub fn refuse(
        self,
        status: StatusCode,
        why: impl Into<String>,
        reason: RejectReason,
    ) -> Refusal {
        self.admission.refuse(status, why, reason, self.peer)
    }

    /// Resolves who the connection is (counted with its latency), applies
    /// the per-user limit, and keeps the credentials RPC calls will carry.
    /// Call it last: a one-time token is spent here.
    pub async fn admit(mut self, headers: HeaderMap, uri: Uri) -> Result<Admitted, Refusal> {
        let adm = self.admission.clone();
        let inner = &adm.inner;
        let stats = &inner.stats;
        let peer = self.peer;
        // The resolver gets the real TCP peer (to decide whether to believe
        // headers a proxy sets) and, separately, the client address derived
        // through the trusted proxies' X-Forwarded-For.
        let parts = UpgradeRequest {
            headers,
            uri,
            peer,
            client_ip: self.client_ip,
        };
        let started = std::time::Instant::now();
        let resolution = inner.resolver.resolve(&parts).await;
        let took = started.elapsed();
        let identity = match resolution {
            Resolution::Identified(identity) => {
                let outcome = if identity.is_anonymous() {
                    IdentityOutcome::Anonymous
                } else {
                    IdentityOutcome::User
                };
                stats.identity(outcome, took);
                identity
            }
            Resolution::Unrecognized => {
                stats.identity(IdentityOutcome::Refused, took);
                return Err(adm.refuse(
                    StatusCode::UNAUTHORIZED,
                    "no credentials",
                    RejectReason::Identity,
                    peer,
                ));
            }
            Resolution::Rejected(Rejection {
                status,
                reason,
                retry_after,
            }) => {
                let unavailable = status == StatusCode::SERVICE_UNAVAILABLE;
                stats.identity(
                    if unavailable {
                        IdentityOutcome::Unavailable
                    } else {
                        IdentityOutcome::Refused
                    },
                    took,
                );
                let mut r = adm.refuse(
                    status,
                    reason,
                    if unavailable {
                        RejectReason::IdentityUnavailable
                    } else {
                        RejectReason::Identity
                    },
                    peer,
                );
                r.retry_after = retry_after.map(|d: Duration| d.as_secs().max(1));
                return Err(r);
            }
        };
        if let Some(user) = &identity.user {
            if self.slot.for_user(&inner.config.limits, user).is_err() {
                return Err(adm.refuse(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many connections for this user",
                    RejectReason::LimitPerUser,
                    peer,
                ));
            }
        }
        // What RPC calls will carry: only what the handler asks to keep
        // (and nothing at all, not even an allocation, without RPC).
        let credentials = match &inner.rpc {
            Some(rpc) => Arc::new(rpc.credentials(&parts.headers)),
            None => inner.no_credentials.clone(),
        };
        Ok(Admitted {
            identity: Arc::new(identity),
            credentials,
            peer,
            client_ip: self.client_ip,
            slot: self.slot,
        })
    }
}

/// Where in the drain window connection `id` closes at shutdown: spread
/// evenly over the window by a hash of the id (ids are sequential, so a
/// multiplicative hash scatters neighbours). Every wire adapter uses it, so
/// a fleet of clients of every kind does not reconnect all at once.
pub fn drain_offset(id: u64, window: Duration) -> Duration {
    let frac = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64;
    Duration::try_from_secs_f64(window.as_secs_f64() * frac)
        .unwrap_or(window)
        .min(window)
}
