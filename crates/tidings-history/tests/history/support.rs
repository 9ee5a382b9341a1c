//! Real `redis-server` processes on free ports and a minimal RESP client
//! (the end-to-end crate's, `tidings_e2e::redis`), and a fred pool.

use std::time::Duration;

use fred::{
    clients::Pool,
    interfaces::ClientLike,
    types::{
        config::{Config, ReconnectPolicy},
        Builder,
    },
};
pub(crate) use tidings_e2e::redis::{RedisServer, Reply};

/// A connected fred pool of two connections to `server` that reconnects
/// quickly and never repeats a command (a repeated publish would publish
/// twice).
pub(crate) async fn pool(server: &RedisServer) -> Pool {
    let config = Config::from_url(&server.url()).expect("url");
    let pool = Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_constant(0, 50))
        .with_connection_config(|c| {
            c.max_command_attempts = 1;
            c.connection_timeout = Duration::from_secs(2);
        })
        .build_pool(2)
        .expect("pool");
    pool.init().await.expect("connect");
    pool
}
