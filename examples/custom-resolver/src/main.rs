//! Your own gateway binary: the Tidings library crates, your resolver, a
//! few lines of wiring. Run it with
//! `cargo run -p tidings-example-custom-resolver -- 127.0.0.1:8090 127.0.0.1`
//! (the listen address, then the address your authenticating proxy
//! connects from).

use std::sync::Arc;

use tidings_bridge::Bridge;
use tidings_example_custom_resolver::ProxyHeaderResolver;
use tidings_identity::{AnonymousPolicy, Chain};
use tidings_routing::{Router, Rule};
use tidings_transport::{serve, text_response, Gateway, StatusCode};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    // The proxy's own address, as the gateway sees the TCP connection.
    let proxy = args.next().unwrap_or_else(|| "127.0.0.1".into());

    // Who is this socket? Our proxy says so; nobody else gets in.
    let resolver = Chain::new()
        .with(
            "proxy_header",
            Arc::new(ProxyHeaderResolver {
                trusted_proxies: vec![proxy.parse()?],
            }),
        )
        .anonymous(AnonymousPolicy::Refuse);

    // What may it see? The default rules, plus one channel per group.
    let mut rules = Rule::defaults();
    rules.push(Rule {
        channel: "/app/group/{group}".into(),
        join: true,
        subscribe: true,
        publish: false,
        anonymous: false,
        history: None,
        sharded: false,
        presence: None,
    });

    // In-process broker here; `Bridge::redis(RedisConfig::new(url))?` for Redis
    // (with tidings-bridge's `redis` feature).
    let gateway = Gateway::builder(Bridge::in_process())
        .resolver(Arc::new(resolver))
        .router(Router::new(rules)?)
        .build();

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // Requests other than the WebSocket upgrade: yours to serve.
    let http = |_req, _peer| async { text_response(StatusCode::NOT_FOUND, "not found\n") };
    serve(listener, gateway, http, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
