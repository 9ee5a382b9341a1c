//! The `[routing]` configuration section.

use serde::{Deserialize, Serialize};
use tidings_core::config::ConfigError;

use crate::{Router, Rule};

/// The `[routing]` section: the channel rules, as `[[routing.rules]]`
/// tables. Unknown keys are refused; left out, the rules are
/// [`Rule::defaults`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        Self {
            rules: Rule::defaults(),
        }
    }
}

impl RoutingSettings {
    /// The compiled [`Router`]; an unusable rule is reported under the key
    /// `rules`.
    pub fn router(&self) -> Result<Router, ConfigError> {
        Router::new(self.rules.clone()).map_err(|e| ConfigError::new("rules", e.to_string()))
    }

    /// Checks the rules (see [`RoutingSettings::router`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.router().map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_section_gives_the_default_rules() {
        let s: RoutingSettings = toml::from_str("").unwrap();
        assert_eq!(s, RoutingSettings::default());
        assert!(s.validate().is_ok());
    }

    #[test]
    fn rules_are_read_and_checked() {
        let s: RoutingSettings =
            toml::from_str("[[rules]]\nchannel = \"/app/room/{attr.room}\"\nsubscribe = true\n")
                .unwrap();
        assert_eq!(s.rules.len(), 1);
        assert!(s.validate().is_ok());
        let bad: RoutingSettings = toml::from_str("[[rules]]\nchannel = \"/app/x\"\n").unwrap();
        let e = bad.validate().unwrap_err();
        assert_eq!(e.key(), "rules");
        let unknown = toml::from_str::<RoutingSettings>("rule = []").unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `rule`"),
            "{unknown}"
        );
    }
}
