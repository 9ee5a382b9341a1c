//! Channel names and patterns.

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize};

/// The longest channel name or pattern accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 512;

/// Why a string is not a valid channel name or pattern.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The name is empty.
    #[error("channel name is empty")]
    Empty,
    /// The name is longer than [`MAX_CHANNEL_LEN`] bytes.
    #[error("channel name is longer than {MAX_CHANNEL_LEN} bytes")]
    TooLong,
    /// The name contains a control character (U+0000 to U+001F or U+007F).
    #[error("channel name contains a control character")]
    ControlCharacter,
    /// An exact channel name contains a glob character (`*`, `?`, `[`, `]` or `\`).
    #[error("channel name contains a glob character (* ? [ ] \\); patterns are not channels")]
    GlobCharacter,
}

fn check_common(s: &str) -> Result<(), ChannelError> {
    if s.is_empty() {
        return Err(ChannelError::Empty);
    }
    if s.len() > MAX_CHANNEL_LEN {
        return Err(ChannelError::TooLong);
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(ChannelError::ControlCharacter);
    }
    Ok(())
}

/// Whether `c` has a meaning in a Redis glob pattern.
pub fn is_glob_char(c: char) -> bool {
    matches!(c, '*' | '?' | '[' | ']' | '\\')
}

/// A validated, exact channel name, cheap to clone.
///
/// A channel name is 1 to [`MAX_CHANNEL_LEN`] bytes of UTF-8 with no control
/// characters and none of the glob characters `* ? [ ] \`, so that an exact
/// name can never be mistaken for a pattern.
///
/// ```
/// use tidings_core::ChannelName;
/// let c: ChannelName = "/app/user/42/notifications".parse().unwrap();
/// assert_eq!(c.as_str(), "/app/user/42/notifications");
/// assert!("/app/*".parse::<ChannelName>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    /// Validates `name` as an exact channel name.
    pub fn new(name: &str) -> Result<Self, ChannelError> {
        check_common(name)?;
        if name.chars().any(is_glob_char) {
            return Err(ChannelError::GlobCharacter);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for ChannelName {
    type Err = ChannelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for ChannelName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ChannelName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for ChannelName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ChannelName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ChannelName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A channel pattern with Redis `PSUBSCRIBE` glob semantics: `*` matches any
/// run of characters (including `/`), `?` one character, `[abc]` / `[a-z]` /
/// `[^a]` a class, and `\` escapes the next character.
///
/// ```
/// use tidings_core::ChannelPattern;
/// let p: ChannelPattern = "socketio_*".parse().unwrap();
/// assert!(p.matches("socketio_news"));
/// assert!(!p.matches("other"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelPattern(Arc<str>);

impl ChannelPattern {
    /// Validates `pattern` (same length and character rules as a channel
    /// name, but glob characters are allowed).
    pub fn new(pattern: &str) -> Result<Self, ChannelError> {
        check_common(pattern)?;
        Ok(Self(Arc::from(pattern)))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the pattern contains any glob character at all.
    pub fn is_glob(&self) -> bool {
        self.0.chars().any(is_glob_char)
    }

    /// Whether `channel` matches this pattern, as Redis would decide it.
    pub fn matches(&self, channel: &str) -> bool {
        glob_match(self.0.as_bytes(), channel.as_bytes())
    }
}

impl std::str::FromStr for ChannelPattern {
    type Err = ChannelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::borrow::Borrow<str> for ChannelPattern {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for ChannelPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// What a subscription is for: one exact channel, or every channel matching
/// a pattern (Redis `PSUBSCRIBE` semantics).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// An exact channel.
    Channel(ChannelName),
    /// A glob pattern.
    Pattern(ChannelPattern),
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topic::Channel(c) => c.fmt(f),
            Topic::Pattern(p) => p.fmt(f),
        }
    }
}

/// Byte-wise glob matching with Redis' `stringmatchlen` semantics.
///
/// Iterative with single-star backtracking, so the cost is bounded by
/// `O(pattern.len() * text.len())` with no recursion.
fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // Where to resume after the most recent `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    while p < pat.len() && pat[p] == b'*' {
                        p += 1;
                    }
                    if p == pat.len() {
                        return true;
                    }
                    star = Some((p, t));
                    continue;
                }
                b'?' => {
                    p += 1;
                    t += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class_match(pat, p, text[t]) {
                        if matched {
                            p = next;
                            t += 1;
                            continue;
                        }
                    }
                }
                b'\\' if p + 1 < pat.len() => {
                    if pat[p + 1] == text[t] {
                        p += 2;
                        t += 1;
                        continue;
                    }
                }
                c => {
                    if c == text[t] {
                        p += 1;
                        t += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                p = sp;
                t = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

/// Matches `c` against the class starting at `pat[start] == b'['`.
/// Returns whether it matched and the index after the class.
fn class_match(pat: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < pat.len() && pat[i] == b'^';
    if negate {
        i += 1;
    }
    let mut matched = false;
    loop {
        if i >= pat.len() {
            // Unterminated class: Redis treats the end of the pattern as the end of the class.
            break;
        }
        match pat[i] {
            b']' => {
                i += 1;
                break;
            }
            b'\\' if i + 1 < pat.len() => {
                if pat[i + 1] == c {
                    matched = true;
                }
                i += 2;
            }
            lo if i + 2 < pat.len() && pat[i + 1] == b'-' && pat[i + 2] != b']' => {
                let hi = pat[i + 2];
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                if (lo..=hi).contains(&c) {
                    matched = true;
                }
                i += 3;
            }
            x => {
                if x == c {
                    matched = true;
                }
                i += 1;
            }
        }
    }
    Some((matched != negate, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert_eq!(ChannelName::new(""), Err(ChannelError::Empty));
        assert_eq!(
            ChannelName::new("a\nb"),
            Err(ChannelError::ControlCharacter)
        );
        assert_eq!(ChannelName::new("a*"), Err(ChannelError::GlobCharacter));
        assert_eq!(
            ChannelName::new(&"x".repeat(513)),
            Err(ChannelError::TooLong)
        );
        assert!(ChannelName::new(&"x".repeat(512)).is_ok());
        assert!(ChannelName::new("/app/user/42/notifications").is_ok());
    }

    #[test]
    fn glob_semantics_follow_redis() {
        let m = |p: &str, t: &str| ChannelPattern::new(p).unwrap().matches(t);
        assert!(m("socketio_*", "socketio_"));
        assert!(m("socketio_*", "socketio_a/b"));
        assert!(!m("socketio_*", "socketio"));
        assert!(m("/app/room/*", "/app/room/1"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-c]llo", "hbllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("*a*b*c*", "xxaxxcxxbxx"));
        assert!(m("*", ""));
        assert!(!m("a", ""));
    }

    #[test]
    fn pathological_patterns_stay_cheap() {
        let p = ChannelPattern::new(&"*a".repeat(100)).unwrap();
        let text = "a".repeat(99) + "b";
        assert!(!p.matches(&text));
    }
}
