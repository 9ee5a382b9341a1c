//! Channel templates: literal text with `{placeholder}`s.

use tidings_core::{channel::is_glob_char, Identity};

/// The longest identity value accepted in a placeholder, in bytes.
pub const MAX_VALUE_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Part {
    Literal(String),
    User,
    Session,
    Group,
    Attr(String),
}

#[derive(Debug, Clone)]
pub(crate) struct Template {
    parts: Vec<Part>,
    /// Whether the literal text holds glob characters (a pattern rule).
    pub(crate) is_pattern: bool,
}

pub(crate) fn parse(template: &str) -> Result<Template, String> {
    let mut parts = Vec::new();
    let mut rest = template;
    let mut literal = String::new();
    while let Some(open) = rest.find(['{', '}']) {
        if rest.as_bytes()[open] == b'}' {
            return Err("unbalanced '}'".into());
        }
        literal.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after.find('}').ok_or("unclosed '{'")?;
        let name = &after[..close];
        let part = match name {
            "user" => Part::User,
            "session" => Part::Session,
            "group" => Part::Group,
            n if n.starts_with("attr.") && n.len() > 5 => Part::Attr(n[5..].to_owned()),
            other => {
                return Err(format!(
                    "unknown placeholder {{{other}}} (expected {{user}}, {{session}}, {{group}} or {{attr.NAME}})"
                ))
            }
        };
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        parts.push(part);
        rest = &after[close + 1..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    if parts.is_empty() {
        return Err("channel template is empty".into());
    }
    let is_pattern = parts
        .iter()
        .any(|p| matches!(p, Part::Literal(l) if l.chars().any(is_glob_char)));
    Ok(Template { parts, is_pattern })
}

/// Whether `value` may be put into a channel name without changing its meaning.
pub(crate) fn safe_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_VALUE_LEN
        && value != "."
        && value != ".."
        && !value
            .chars()
            .any(|c| c == '/' || c == '{' || c == '}' || is_glob_char(c) || c.is_control())
}

impl Template {
    /// Whether the concrete channel `channel` is one this template can
    /// expand to for *some* identity (every placeholder standing for one
    /// safe value, see [`safe_value`]). A pattern template matches the
    /// channels its glob matches with each placeholder read as `*`.
    pub(crate) fn covers(&self, channel: &str) -> bool {
        if self.is_pattern {
            let glob: String = self
                .parts
                .iter()
                .map(|p| match p {
                    Part::Literal(l) => l.as_str(),
                    _ => "*",
                })
                .collect();
            return tidings_core::ChannelPattern::new(&glob).is_ok_and(|p| p.matches(channel));
        }
        covers_parts(&self.parts, channel)
    }

    /// Every string this template stands for, for `identity`. Empty when a
    /// value is missing or unsafe.
    pub(crate) fn expand(&self, identity: &Identity) -> Vec<String> {
        let mut out = vec![String::new()];
        for part in &self.parts {
            let values: Vec<&str> = match part {
                Part::Literal(l) => {
                    for s in &mut out {
                        s.push_str(l);
                    }
                    continue;
                }
                Part::User => identity.user.as_deref().into_iter().collect(),
                Part::Session => identity.session.as_deref().into_iter().collect(),
                Part::Group => identity.groups.iter().map(String::as_str).collect(),
                Part::Attr(name) => identity
                    .attributes
                    .get(name)
                    .map(String::as_str)
                    .into_iter()
                    .collect(),
            };
            let values: Vec<&str> = values.into_iter().filter(|v| safe_value(v)).collect();
            if values.is_empty() {
                return Vec::new();
            }
            out = out
                .iter()
                .flat_map(|prefix| values.iter().map(move |v| format!("{prefix}{v}")))
                .collect();
        }
        out
    }
}

fn covers_parts(parts: &[Part], rest: &str) -> bool {
    match parts.split_first() {
        None => rest.is_empty(),
        Some((Part::Literal(l), tail)) => rest
            .strip_prefix(l.as_str())
            .is_some_and(|r| covers_parts(tail, r)),
        Some((_, tail)) => {
            // A placeholder: one safe value (never containing '/'), then the rest.
            let limit = rest.find('/').unwrap_or(rest.len());
            (1..=limit.min(MAX_VALUE_LEN))
                .rev()
                .filter(|&n| rest.is_char_boundary(n))
                .any(|n| safe_value(&rest[..n]) && covers_parts(tail, &rest[n..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_placeholders() {
        let t = parse("/app/user/{user}/notifications").unwrap();
        assert_eq!(
            t.parts,
            vec![
                Part::Literal("/app/user/".into()),
                Part::User,
                Part::Literal("/notifications".into())
            ]
        );
        assert!(!t.is_pattern);
        assert!(parse("/a/{nope}").is_err());
        assert!(parse("/a/{user").is_err());
        assert!(parse("/a/}").is_err());
        assert!(parse("").is_err());
        assert!(parse("/app/room/*").unwrap().is_pattern);
        let t = parse("/app/user/{user}/notifications").unwrap();
        assert!(t.covers("/app/user/42/notifications"));
        assert!(!t.covers("/app/user/4/2/notifications"));
        assert!(!t.covers("/app/user//notifications"));
        assert!(!t.covers("/app/user/42/notifications/x"));
        assert!(parse("/a/{user}-{session}").unwrap().covers("/a/x-y-z"));
        assert!(parse("/app/room/*").unwrap().covers("/app/room/7"));
        assert!(parse("/app/{user}/*").unwrap().covers("/app/1/7"));
        assert!(!parse("/app/room/*").unwrap().covers("/app/hall/7"));
        assert_eq!(
            parse("/x/{attr.team}").unwrap().parts[1],
            Part::Attr("team".into())
        );
    }

    #[test]
    fn expands_groups_and_refuses_unsafe_values() {
        let t = parse("/g/{group}").unwrap();
        let mut id = Identity::user("1");
        id.groups = vec!["a".into(), "b/../c".into(), "c".into()];
        assert_eq!(t.expand(&id), vec!["/g/a", "/g/c"]);
        for bad in [
            "",
            ".",
            "..",
            "4/2",
            "*",
            "a?",
            "[x]",
            "a\\b",
            "a\u{0}",
            "{user}",
            &"x".repeat(129),
        ] {
            let u = parse("/u/{user}").unwrap();
            assert!(
                u.expand(&Identity::user(bad)).is_empty(),
                "{bad:?} must not expand"
            );
        }
        assert!(parse("/u/{user}")
            .unwrap()
            .expand(&Identity::anonymous())
            .is_empty());
    }
}
