//! Shared pieces of the crates' configuration sections.
//!
//! Each Tidings crate owns the configuration of what it does: a section
//! type that deserializes itself with serde (unknown keys refused, every key
//! defaulted) and checks itself with a `validate`-style method returning a
//! [`ConfigError`] that names the offending key relative to the section. An
//! application (the `tidings` binary, or yours) reads its sources, hands each
//! crate its section, and prefixes the section's place in the whole file
//! with [`ConfigError::within`].
//!
//! Durations are written as `*_secs` numbers (fractions allowed) and checked
//! with [`positive_secs`] or [`non_negative_secs`]; secrets are [`Secret`]s,
//! which never print.

use std::{fmt, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A configuration value that cannot be used: the key (a dotted path,
/// relative to the section that checked it) and what is wrong with it.
///
/// The reason never repeats a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key `{key}`: {reason}")]
pub struct ConfigError {
    key: String,
    reason: String,
}

impl ConfigError {
    /// `key` (dotted, relative to the section) is wrong because of `reason`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// The same error with the key placed under `section` (`"redis"` turns
    /// `pool_size` into `redis.pool_size`).
    #[must_use]
    pub fn within(mut self, section: &str) -> Self {
        if !section.is_empty() {
            self.key = if self.key.is_empty() {
                section.to_owned()
            } else {
                format!("{section}.{}", self.key)
            };
        }
        self
    }

    /// The offending key, as a dotted path.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// `secs` as a [`Duration`], if it is a finite number of seconds above zero
/// (and below a billion); otherwise an error naming `key`.
pub fn positive_secs(key: &str, secs: f64) -> Result<Duration, ConfigError> {
    if secs.is_finite() && secs > 0.0 && secs < 1e9 {
        Ok(Duration::from_secs_f64(secs))
    } else {
        Err(ConfigError::new(
            key,
            format!("must be a positive number of seconds, got {secs}"),
        ))
    }
}

/// Like [`positive_secs`], and zero is allowed.
pub fn non_negative_secs(key: &str, secs: f64) -> Result<Duration, ConfigError> {
    if secs == 0.0 {
        Ok(Duration::ZERO)
    } else {
        positive_secs(key, secs)
    }
}

/// A secret string (a key, a URL with a password): shown and serialized as
/// `"<redacted>"`, never printed.
///
/// It deserializes from any scalar, so an all-digit value that an
/// environment-variable source reads as a number is still taken as text.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            S(String),
            I(i128),
            U(u128),
            F(f64),
        }
        Ok(Secret(match Scalar::deserialize(d)? {
            Scalar::S(s) => s,
            Scalar::I(i) => i.to_string(),
            Scalar::U(u) => u.to_string(),
            Scalar::F(f) => f.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_under_its_section() {
        let e = ConfigError::new("pool_size", "must be between 1 and 64, got 0").within("redis");
        assert_eq!(e.key(), "redis.pool_size");
        assert_eq!(
            e.to_string(),
            "config key `redis.pool_size`: must be between 1 and 64, got 0"
        );
        assert_eq!(ConfigError::new("", "x").within("token").key(), "token");
    }

    #[test]
    fn seconds_must_be_positive_and_finite() {
        assert_eq!(positive_secs("a", 1.5), Ok(Duration::from_millis(1500)));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e10] {
            let e = positive_secs("a_secs", bad).unwrap_err();
            assert_eq!(e.key(), "a_secs");
            assert!(e
                .reason()
                .starts_with("must be a positive number of seconds"));
        }
        assert_eq!(non_negative_secs("a", 0.0), Ok(Duration::ZERO));
        assert!(non_negative_secs("a", -0.5).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s: Secret = serde_json::from_str("\"hunter2-hunter2-hunter2\"").unwrap();
        assert_eq!(s.expose(), "hunter2-hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "<redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        // Digits read as a number are kept as text.
        let n: Secret = serde_json::from_str("1234567890123456").unwrap();
        assert_eq!(n.expose(), "1234567890123456");
    }
}
