//! The in-process broker: zero setup, one process.

use bytes::Bytes;
use tidings_core::{ChannelName, Message};

use crate::broker::{BoxFuture, Broker, BrokerError, Inbound, Topic};

/// A broker that lives inside the gateway process.
///
/// Publishing delivers straight to this process's sockets (exact channels
/// and matching patterns). It needs no setup and is always ready, which
/// makes it the zero-setup default and the broker tests embed. It does not
/// reach other gateway instances: run several instances against Redis.
#[derive(Debug, Clone)]
pub struct LocalBroker {
    inbound: Inbound,
}

impl LocalBroker {
    /// A broker delivering through `inbound`.
    pub fn new(inbound: Inbound) -> Self {
        Self { inbound }
    }
}

impl Broker for LocalBroker {
    fn publish(
        &self,
        channel: &ChannelName,
        payload: Bytes,
    ) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inbound
            .message_everywhere(&Message::new(channel.clone(), payload));
        Box::pin(async { Ok(()) })
    }

    fn subscribe<'a>(&'a self, _topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn unsubscribe<'a>(&'a self, _topics: &'a [Topic]) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "in-process"
    }
}
