//! The documentation cannot drift from the code.
//!
//! - Every configuration key the binary knows appears in
//!   `docs/configuration.md`: the keys are read from `tidings check-config`
//!   (the effective configuration) and, for optional keys that
//!   `check-config` leaves out while unset, from the list of accepted fields
//!   the binary gives when it meets an unknown key. New keys and sections are
//!   picked up without touching this test.
//! - Every error code and close code defined in
//!   `crates/tidings-core/src/protocol.rs` appears in `docs/protocol.md`.

mod common;
use common::tidings;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// A key name no configuration will ever accept.
const PROBE: &str = "docs_probe_key";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    let path = repo_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The environment variable for the key `path` (`["websocket", "x"]` gives
/// `TIDINGS_WEBSOCKET__X`).
fn env_var(path: &[String]) -> String {
    format!("TIDINGS_{}", path.join("__").to_ascii_uppercase())
}

/// The field names the binary accepts where `var` points, read from the
/// "unknown field ... expected ..." error it gives for `var=value`. `None`
/// when the binary answers something else (the key is not a table).
fn accepted_fields(var: &str, value: &str) -> Option<BTreeSet<String>> {
    let (ok, out, err) = tidings(&["check-config"], &[(var, value)]);
    assert!(!ok, "{var}={value} must be refused, got:\n{out}");
    let line = err
        .lines()
        .find(|l| l.contains("unknown field") && l.contains(PROBE))?;
    let (_, expected) = line.split_once("expected")?;
    Some(
        expected
            .split('`')
            .filter(|s| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
            .map(str::to_owned)
            .collect(),
    )
}

/// Every key, as a dotted path, and whether it is a table (a TOML section).
#[derive(Default)]
struct Keys {
    keys: BTreeMap<String, bool>,
    /// For each array of tables (`routing.rules`): the field names of its
    /// entries.
    entry_fields: BTreeMap<String, BTreeSet<String>>,
}

impl Keys {
    /// Collects the keys of `table`, found at `path`.
    fn collect(&mut self, path: &[String], table: &toml::Table) {
        for (name, value) in table {
            let mut here = path.to_vec();
            here.push(name.clone());
            let dotted = here.join(".");
            match value {
                toml::Value::Table(t) => {
                    self.keys.insert(dotted, true);
                    self.collect(&here, t);
                }
                toml::Value::Array(items)
                    if !items.is_empty() && items.iter().all(toml::Value::is_table) =>
                {
                    self.keys.insert(dotted.clone(), false);
                    self.array_of_tables(&here, items);
                }
                _ => {
                    self.keys.insert(dotted, false);
                }
            }
        }
        self.unset_keys(path, table);
    }

    /// Entries of an array of tables: only their field names count.
    fn array_of_tables(&mut self, path: &[String], items: &[toml::Value]) {
        let fields = self.entry_fields.entry(path.join(".")).or_default();
        for item in items {
            if let toml::Value::Table(t) = item {
                fields.extend(t.keys().cloned());
            }
        }
        // Fields every entry may have, even those no entry sets now.
        let var = env_var(path);
        let accepted = accepted_fields(&var, &format!("[{{ {PROBE} = 1 }}]"))
            .unwrap_or_else(|| panic!("{var} with an unknown entry field must name the fields"));
        fields.extend(accepted);
    }

    /// Keys the binary accepts in the table at `path` but `check-config`
    /// did not print (optional keys that are unset, like `api_key`).
    fn unset_keys(&mut self, path: &[String], table: &toml::Table) {
        let mut probe = path.to_vec();
        probe.push(PROBE.to_owned());
        let var = env_var(&probe);
        let accepted = accepted_fields(&var, "1").unwrap_or_else(|| {
            panic!("{var}=1 must be refused as an unknown key naming the accepted ones")
        });
        for printed in table.keys() {
            assert!(
                accepted.contains(printed),
                "the accepted keys read from the error for {var} miss `{printed}`: {accepted:?}"
            );
        }
        for name in accepted.iter().filter(|n| !table.contains_key(*n)) {
            let mut here = path.to_vec();
            here.push(name.clone());
            // An unset optional section: ask for its own fields.
            let mut inner = here.clone();
            inner.push(PROBE.to_owned());
            match accepted_fields(&env_var(&inner), "1") {
                Some(_) => {
                    self.keys.insert(here.join("."), true);
                    self.unset_keys(&here, &toml::Table::new());
                }
                None => {
                    self.keys.insert(here.join("."), false);
                }
            }
        }
    }
}

#[test]
fn every_config_key_is_documented() {
    let doc = read("docs/configuration.md");
    let (ok, out, err) = tidings(&["check-config"], &[]);
    assert!(ok, "check-config failed: {err}");
    let effective: toml::Table = out
        .parse()
        .unwrap_or_else(|e| panic!("check-config prints TOML: {e}\n{out}"));

    let mut keys = Keys::default();
    keys.collect(&[], &effective);

    // Sanity: the walk found the keys we know are there.
    for known in [
        "listen",
        "api_key",
        "websocket.ping_interval_secs",
        "routing.rules",
    ] {
        assert!(keys.keys.contains_key(known), "key walk missed `{known}`");
    }
    let rule_fields = keys.entry_fields.get("routing.rules").cloned();
    let rule_fields = rule_fields.expect("routing.rules is an array of tables");
    for field in ["channel", "join", "subscribe", "publish", "anonymous"] {
        assert!(
            rule_fields.contains(field),
            "routing rules no longer have `{field}`: update docs/configuration.md and this test"
        );
    }

    let mut missing = Vec::new();
    for (key, is_table) in &keys.keys {
        let wanted = if *is_table {
            format!("`[{key}]`")
        } else {
            format!("`{key}`")
        };
        if !doc.contains(&wanted) {
            missing.push(wanted);
        }
    }
    for (array, fields) in &keys.entry_fields {
        for field in fields {
            let wanted = format!("`{field}`");
            if !doc.contains(&wanted) {
                missing.push(format!("{wanted} (a field of `{array}` entries)"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document:\n  {}",
        missing.join("\n  ")
    );
}

/// The text between `start` and the next line that is exactly `}` (the end
/// of a top-level item).
fn item<'a>(source: &'a str, start: &str) -> &'a str {
    let from = source
        .find(start)
        .unwrap_or_else(|| panic!("protocol.rs has no `{start}`"));
    let rest = &source[from..];
    let end = rest.find("\n}\n").map_or(rest.len(), |i| i + 2);
    &rest[..end]
}

#[test]
fn every_error_code_and_close_code_is_documented() {
    let source = read("crates/tidings-core/src/protocol.rs");
    let doc = read("docs/protocol.md");

    // `pub const NAME: u16 = 1000;` in `pub mod close`.
    let close_codes: Vec<String> = item(&source, "pub mod close {")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter(|l| l.contains(": u16"))
        .filter_map(|l| l.split_once('=').map(|(_, v)| v))
        .map(|v| v.trim().trim_end_matches(';').trim().to_owned())
        .collect();
    let declared = item(&source, "pub mod close {")
        .matches("pub const ")
        .count();
    assert!(
        !close_codes.is_empty(),
        "no close codes found in protocol.rs"
    );
    assert_eq!(
        close_codes.len(),
        declared,
        "could not read every close code: {close_codes:?}"
    );

    // `Self::BadJson => "bad_json",` in `ErrorCode::as_str`.
    let error_codes: Vec<String> = item(&source, "impl ErrorCode {")
        .lines()
        .filter_map(|l| l.split_once("=> \""))
        .filter_map(|(_, rest)| rest.split_once('"').map(|(code, _)| code.to_owned()))
        .collect();
    let variants = item(&source, "pub enum ErrorCode {")
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.ends_with(',')
                && l[..l.len() - 1]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .count();
    assert!(
        !error_codes.is_empty(),
        "no error codes found in protocol.rs"
    );
    assert_eq!(
        error_codes.len(),
        variants,
        "could not read every error code: {error_codes:?}"
    );

    let missing: Vec<String> = close_codes
        .iter()
        .chain(&error_codes)
        .map(|c| format!("`{c}`"))
        .filter(|c| !doc.contains(c))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/protocol.md does not document: {}",
        missing.join(", ")
    );
}

/// The environment variable names `source` reads with `os.environ.get("X"`
/// or `os.environ["X"]`.
fn python_env_vars(source: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for opener in ["os.environ.get(\"", "os.environ[\"", "os.getenv(\""] {
        for (at, _) in source.match_indices(opener) {
            let rest = &source[at + opener.len()..];
            if let Some((name, _)) = rest.split_once('"') {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

#[test]
fn the_demo_django_apps_variables_do_not_stop_a_gateway() {
    // Every TIDINGS_* variable belongs to the gateway, which refuses the
    // ones it does not know: the Django app of the tests (and of the
    // recipe) must not read any, or exporting its settings in a shell stops
    // a gateway started from the same shell.
    let settings = read("tests/django/demo/settings.py");
    let names = python_env_vars(&settings);
    assert!(
        names.contains("REDIS_URL"),
        "could not read the variables of settings.py: {names:?}"
    );
    for name in &names {
        let (ok, _, err) = tidings(&["check-config"], &[(name, "1")]);
        assert!(
            ok,
            "the Django app reads {name}, which stops the gateway: {err}"
        );
    }
    // The variables its README exports before running it by hand.
    let readme = read("tests/django/README.md");
    for line in readme.lines().filter(|l| l.starts_with("export ")) {
        let vars: Vec<(&str, &str)> = line["export ".len()..]
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let (ok, _, err) = tidings(&["check-config"], &vars);
        assert!(ok, "`{line}` stops the gateway: {err}");
    }
}
