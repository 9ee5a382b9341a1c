//! The axum app with Tidings on `/ws`. Run it with
//! `cargo run -p tidings-example-axum-embed -- 127.0.0.1:8095` and open
//! the address in a browser.

use tidings_bridge::Bridge;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8095".into());
    // In-process broker here; `Bridge::redis(RedisConfig::new(url))?` to
    // share messages between instances (and with anything that PUBLISHes).
    let state = tidings_example_axum_embed::state(Bridge::in_process());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    tidings_example_axum_embed::run(listener, state, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
