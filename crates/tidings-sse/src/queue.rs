//! The two small queues of a stream, in place of tokio's `mpsc` channels:
//! a channel allocates a block of 32 slots and a cache-padded header up
//! front (≈ 1.6 KiB each), kept for the stream's whole life, while an idle
//! stream has nothing queued. These allocate only while something is
//! queued (a `VecDeque` grows on the first push), ≈ 0.1 KiB each when empty.
//!
//! - [`pipe`]: the stream task's output to the response body, bounded (the
//!   writer waits for room, so a client that stops reading blocks it), the
//!   writer told when the body is dropped (the client went away).
//! - [`actions`]: the actions (`POST` bodies) into the stream's session,
//!   bounded, never waited on by the senders (`try_send`).

use std::{
    collections::VecDeque,
    pin::pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Why a chunk was not queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError {
    /// The queue holds its capacity.
    Full,
    /// The receiving side is gone.
    Closed,
}

struct PipeState {
    items: VecDeque<Bytes>,
    /// The body's task, waiting for a chunk.
    reader: Option<Waker>,
    reader_gone: bool,
    writer_gone: bool,
}

struct Shared {
    state: Mutex<PipeState>,
    /// Told (all waiters) whenever the reader takes a chunk or goes away.
    changed: Notify,
    cap: usize,
}

/// The writing end of a [`pipe`].
pub(crate) struct PipeWriter(Arc<Shared>);

/// The reading end of a [`pipe`], polled by the response body.
pub(crate) struct PipeReader(Arc<Shared>);

/// A queue of at most `cap` chunks (at least 1).
pub(crate) fn pipe(cap: usize) -> (PipeWriter, PipeReader) {
    let shared = Arc::new(Shared {
        state: Mutex::new(PipeState {
            items: VecDeque::new(),
            reader: None,
            reader_gone: false,
            writer_gone: false,
        }),
        changed: Notify::new(),
        cap: cap.max(1),
    });
    (PipeWriter(shared.clone()), PipeReader(shared))
}

impl PipeWriter {
    /// Queues `chunk`, waiting while the queue is full; `Err` (with the
    /// chunk) when the reader is gone.
    pub(crate) async fn send(&self, chunk: Bytes) -> Result<(), Bytes> {
        loop {
            let mut changed = pin!(self.0.changed.notified());
            // Registered before the check, so no wake-up is lost between.
            changed.as_mut().enable();
            {
                let mut s = self.0.state.lock();
                if s.reader_gone {
                    return Err(chunk);
                }
                if s.items.len() < self.0.cap {
                    s.items.push_back(chunk);
                    let reader = s.reader.take();
                    drop(s);
                    if let Some(w) = reader {
                        w.wake();
                    }
                    return Ok(());
                }
            }
            changed.await;
        }
    }

    /// Resolves when the reader is gone.
    pub(crate) async fn closed(&self) {
        loop {
            let mut changed = pin!(self.0.changed.notified());
            changed.as_mut().enable();
            if self.0.state.lock().reader_gone {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        let reader = {
            let mut s = self.0.state.lock();
            s.writer_gone = true;
            s.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }
}

impl PipeReader {
    /// The next chunk; `None` once the writer is gone and the queue empty.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        let mut s = self.0.state.lock();
        if let Some(chunk) = s.items.pop_front() {
            if s.items.is_empty() {
                // An idle stream keeps no queue memory.
                s.items = VecDeque::new();
            }
            drop(s);
            self.0.changed.notify_waiters();
            return Poll::Ready(Some(chunk));
        }
        if s.writer_gone {
            return Poll::Ready(None);
        }
        match &mut s.reader {
            Some(w) => w.clone_from(cx.waker()),
            None => s.reader = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        {
            let mut s = self.0.state.lock();
            s.reader_gone = true;
            s.items = VecDeque::new();
        }
        self.0.changed.notify_waiters();
    }
}

impl std::fmt::Debug for PipeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipeReader")
            .field("queued", &self.0.state.lock().items.len())
            .finish()
    }
}

struct ActionState {
    items: VecDeque<Bytes>,
    receiver_gone: bool,
}

struct ActionShared {
    state: Mutex<ActionState>,
    ready: Notify,
    cap: usize,
}

/// The sending side of an [`actions`] queue (in the registry; cloned for
/// each `POST`).
#[derive(Clone)]
pub(crate) struct ActionSender(Arc<ActionShared>);

/// The receiving side, in the stream's task.
pub(crate) struct ActionReceiver(Arc<ActionShared>);

/// A queue of at most `cap` actions (at least 1).
pub(crate) fn actions(cap: usize) -> (ActionSender, ActionReceiver) {
    let shared = Arc::new(ActionShared {
        state: Mutex::new(ActionState {
            items: VecDeque::new(),
            receiver_gone: false,
        }),
        ready: Notify::new(),
        cap: cap.max(1),
    });
    (ActionSender(shared.clone()), ActionReceiver(shared))
}

impl ActionSender {
    /// Queues `action` unless the queue is full or the stream gone.
    pub(crate) fn try_send(&self, action: Bytes) -> Result<(), TrySendError> {
        {
            let mut s = self.0.state.lock();
            if s.receiver_gone {
                return Err(TrySendError::Closed);
            }
            if s.items.len() >= self.0.cap {
                return Err(TrySendError::Full);
            }
            s.items.push_back(action);
        }
        // A permit is stored when the receiver is not waiting yet.
        self.0.ready.notify_one();
        Ok(())
    }
}

impl std::fmt::Debug for ActionSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionSender")
            .field("queued", &self.0.state.lock().items.len())
            .finish()
    }
}

impl ActionReceiver {
    /// The next action, waiting for one (cancel-safe: nothing is taken
    /// from the queue unless returned).
    pub(crate) async fn recv(&mut self) -> Bytes {
        loop {
            {
                let mut s = self.0.state.lock();
                if let Some(a) = s.items.pop_front() {
                    if s.items.is_empty() {
                        s.items = VecDeque::new();
                    }
                    return a;
                }
            }
            self.0.ready.notified().await;
        }
    }
}

impl Drop for ActionReceiver {
    fn drop(&mut self) {
        let mut s = self.0.state.lock();
        s.receiver_gone = true;
        s.items = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, time::Duration};

    use super::*;

    #[tokio::test]
    async fn the_pipe_is_bounded_ordered_and_reports_either_end_gone() {
        let (w, mut r) = pipe(2);
        w.send(Bytes::from_static(b"a")).await.unwrap();
        w.send(Bytes::from_static(b"b")).await.unwrap();
        // Full: the third waits until the reader takes one.
        let third =
            tokio::time::timeout(Duration::from_millis(50), w.send(Bytes::from_static(b"c")));
        assert!(
            third.await.is_err(),
            "a full pipe must make the writer wait"
        );
        let send_c = tokio::spawn(async move {
            w.send(Bytes::from_static(b"c")).await.unwrap();
            w
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(poll_fn(|cx| r.poll_recv(cx)).await.unwrap(), "a");
        let w = send_c.await.unwrap();
        assert_eq!(poll_fn(|cx| r.poll_recv(cx)).await.unwrap(), "b");
        assert_eq!(poll_fn(|cx| r.poll_recv(cx)).await.unwrap(), "c");
        // The reader waits for the writer, and sees its end.
        let reader = tokio::spawn(async move {
            let got = poll_fn(|cx| r.poll_recv(cx)).await;
            let end = poll_fn(|cx| r.poll_recv(cx)).await;
            (got, end)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        w.send(Bytes::from_static(b"d")).await.unwrap();
        drop(w);
        let (got, end) = reader.await.unwrap();
        assert_eq!(got.unwrap(), "d");
        assert!(end.is_none());

        // The writer learns the reader is gone, waiting or not.
        let (w, r) = pipe(1);
        w.send(Bytes::from_static(b"x")).await.unwrap();
        let blocked = tokio::spawn(async move {
            let res = w.send(Bytes::from_static(b"y")).await;
            (res.is_err(), w)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(r);
        let (refused, w) = blocked.await.unwrap();
        assert!(refused, "a send to a dropped reader must fail");
        tokio::time::timeout(Duration::from_secs(1), w.closed())
            .await
            .expect("closed() resolves once the reader is gone");
    }

    #[tokio::test]
    async fn actions_are_bounded_and_refused_after_the_stream() {
        let (tx, mut rx) = actions(2);
        let waiting = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(Bytes::from_static(b"1")).unwrap();
        let (first, mut rx) = waiting.await.unwrap();
        assert_eq!(first, "1");
        tx.try_send(Bytes::from_static(b"2")).unwrap();
        tx.clone().try_send(Bytes::from_static(b"3")).unwrap();
        assert_eq!(
            tx.try_send(Bytes::from_static(b"4")),
            Err(TrySendError::Full)
        );
        assert_eq!(rx.recv().await, "2");
        assert_eq!(rx.recv().await, "3");
        drop(rx);
        assert_eq!(
            tx.try_send(Bytes::from_static(b"5")),
            Err(TrySendError::Closed)
        );
    }
}
