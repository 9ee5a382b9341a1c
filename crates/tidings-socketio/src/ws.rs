//! The WebSocket transport: a session opened over it directly, or an
//! upgrade from long-polling (`2probe`/`3probe`, a noop to end the pending
//! poll, then `5`).

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use fastwebsockets::{
    upgrade::UpgradeFut, FragmentCollectorRead, Frame, OpCode, Payload, WebSocketWrite,
};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::{
    io::WriteHalf,
    sync::{mpsc, Mutex},
    time::timeout,
};

use crate::{
    engine::{self, NOOP},
    store::{Inbound, Mode, Shared},
};

type Writer = Arc<Mutex<WebSocketWrite<WriteHalf<TokioIo<Upgraded>>>>>;

/// How long a probing client may take between its steps.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one WebSocket for `shared`: `open` is the open packet to send
/// first (a session opened over this WebSocket); without it, this is an
/// upgrade from long-polling.
pub(crate) async fn serve(
    upgrade: UpgradeFut,
    shared: Arc<Shared>,
    open: Option<Bytes>,
    max_payload: usize,
    write_timeout: Duration,
) {
    let mut ws = match upgrade.await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(error = %e, "socket.io upgrade did not complete");
            if open.is_some() {
                let _ = shared.inbound.send(Inbound::Gone).await;
            }
            return;
        }
    };
    // Larger messages end the connection as they are read, never buffered.
    ws.set_max_message_size(max_payload);
    let (read, write) = ws.split(tokio::io::split);
    let mut read = FragmentCollectorRead::new(read);
    let writer: Writer = Arc::new(Mutex::new(write));
    let (in_tx, mut ws_in) = mpsc::channel::<String>(16);
    let reader = {
        let writer = writer.clone();
        tokio::spawn(async move {
            loop {
                let frame = read
                    .read_frame(&mut |f| {
                        let writer = writer.clone();
                        async move { writer.lock().await.write_frame(f).await }
                    })
                    .await;
                let text = match frame {
                    Ok(f) if f.opcode == OpCode::Text => {
                        if f.payload.len() > max_payload {
                            break;
                        }
                        match String::from_utf8(f.payload.to_vec()) {
                            Ok(t) => t,
                            Err(_) => break,
                        }
                    }
                    // Binary packets are not supported; anything else ends it.
                    _ => break,
                };
                if in_tx.send(text).await.is_err() {
                    break;
                }
            }
        })
    };
    let write = |bytes: Bytes| {
        let writer = writer.clone();
        async move {
            let mut w = writer.lock().await;
            matches!(
                timeout(
                    write_timeout,
                    w.write_frame(Frame::text(Payload::Borrowed(&bytes)))
                )
                .await,
                Ok(Ok(()))
            )
        }
    };
    if let Some(open) = open {
        if !write(open).await {
            let _ = shared.inbound.send(Inbound::Gone).await;
            reader.abort();
            return;
        }
    } else if !probe(&shared, &mut ws_in, &write).await {
        if shared.mode() == Mode::Upgrading {
            shared.set_mode(Mode::Polling);
        }
        reader.abort();
        return;
    }
    shared.set_mode(Mode::WebSocket);
    // From now on this WebSocket carries every packet.
    let mut outbound = shared.outbound.lock().await;
    loop {
        tokio::select! {
            biased;
            text = ws_in.recv() => match text {
                Some(t) => {
                    if shared.inbound.send(Inbound::Packet(t)).await.is_err() {
                        break;
                    }
                }
                None => {
                    let _ = shared.inbound.send(Inbound::Gone).await;
                    break;
                }
            },
            packet = outbound.recv() => match packet {
                Some(p) => {
                    if !write(p).await {
                        let _ = shared.inbound.send(Inbound::Gone).await;
                        break;
                    }
                }
                None => break,
            },
            () = shared.closed.cancelled() => {
                while let Ok(p) = outbound.try_recv() {
                    if !write(p).await {
                        break;
                    }
                }
                let mut w = writer.lock().await;
                let _ = timeout(write_timeout, w.write_frame(Frame::close(1000, b""))).await;
                break;
            }
        }
    }
    reader.abort();
}

/// The upgrade handshake: `2probe` -> `3probe`, a noop for the pending
/// poll, then `5`. False when the client did something else.
async fn probe<F, Fut>(shared: &Shared, ws_in: &mut mpsc::Receiver<String>, write: &F) -> bool
where
    F: Fn(Bytes) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    if next(ws_in).await.as_deref() != Some("2probe") {
        return false;
    }
    if shared.mode() != Mode::Polling {
        return false;
    }
    shared.set_mode(Mode::Upgrading);
    if !write(Bytes::from_static(b"3probe")).await {
        return false;
    }
    // The client pauses polling: the poll it has pending ends with a noop.
    if shared.out_tx.try_send(engine::packet(NOOP)).is_err() {
        return false;
    }
    next(ws_in).await.as_deref() == Some("5")
}

/// The next text the client sends during the probe, if it comes in time.
async fn next(ws_in: &mut mpsc::Receiver<String>) -> Option<String> {
    timeout(PROBE_TIMEOUT, ws_in.recv()).await.ok().flatten()
}
