//! The open streams an action (POST) may address: connection id -> its
//! secret and the queue into its session.

use std::{collections::HashMap, sync::Arc};

use parking_lot::Mutex;

use crate::queue::ActionSender;

/// One stream's entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The secret handed out in the stream's first event.
    pub(crate) token: Arc<str>,
    /// The user the stream was opened as.
    pub(crate) user: Option<Arc<str>>,
    /// Actions into the session.
    pub(crate) actions: ActionSender,
}

/// The open streams.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<u64, Entry>>,
}

impl Registry {
    pub(crate) fn insert(&self, id: u64, entry: Entry) {
        self.map.lock().insert(id, entry);
    }

    pub(crate) fn remove(&self, id: u64) {
        self.map.lock().remove(&id);
    }

    /// The stream `id`, if `token` is its secret (compared in constant
    /// time).
    pub(crate) fn get(&self, id: u64, token: &str) -> Option<Entry> {
        let entry = self.map.lock().get(&id).cloned()?;
        same(entry.token.as_bytes(), token.as_bytes()).then_some(entry)
    }

    pub(crate) fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// Whether `a == b`, in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh secret: 32 random bytes, hex.
pub(crate) fn secret() -> Arc<str> {
    let mut bytes = [0u8; 32];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random generator failed");
    let mut s = String::with_capacity(64);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    Arc::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_secret_finds_a_stream() {
        let r = Registry::default();
        let (tx, _rx) = crate::queue::actions(1);
        let token = secret();
        assert_eq!(token.len(), 64);
        r.insert(
            7,
            Entry {
                token: token.clone(),
                user: None,
                actions: tx,
            },
        );
        assert!(r.get(7, &token).is_some());
        assert!(r.get(7, &secret()).is_none());
        assert!(r.get(7, "").is_none());
        assert!(r.get(8, &token).is_none());
        r.remove(7);
        assert_eq!(r.len(), 0);
    }
}
