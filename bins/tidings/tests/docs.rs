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

/// A fenced code block of a Markdown page: its language and its lines, and
/// the heading it is under.
struct Block {
    lang: String,
    lines: Vec<String>,
    heading: String,
}

fn code_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut heading = String::new();
    let mut open: Option<Block> = None;
    for line in markdown.lines() {
        if let Some(fence) = line.strip_prefix("```") {
            match open.take() {
                Some(block) => blocks.push(block),
                None => {
                    open = Some(Block {
                        lang: fence.trim().to_owned(),
                        lines: Vec::new(),
                        heading: heading.clone(),
                    })
                }
            }
        } else if let Some(block) = &mut open {
            block.lines.push(line.to_owned());
        } else if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_owned();
        }
    }
    blocks
}

/// Splits a shell command line into words, honouring single quotes.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut quoted, mut any) = (false, false);
    for c in line.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(word);
    }
    words
}

/// Runs `tidings` in `dir` with exactly `env` as its `TIDINGS_*` variables.
fn tidings_in(dir: &Path, args: &[String], env: &[(String, String)]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TIDINGS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .current_dir(dir)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().expect("run tidings");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh empty directory.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tidings-docs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_quoted_error_messages_are_the_binarys() {
    // Every unlabelled block of docs/configuration.md that shows a shell
    // session (`$ cat FILE` and its body, then `$ [VAR=value...] tidings
    // [args]` and what it prints) is replayed, and what the binary prints
    // must be exactly what the page quotes (an ellipsis `…` in a quote
    // stands for any text). Commands without a subcommand
    // are run as `check-config`: the configuration is loaded, and its
    // errors reported, the same way before either command starts.
    let doc = read("docs/configuration.md");
    let mut replayed = 0;
    for (n, block) in code_blocks(&doc).into_iter().enumerate() {
        if !block.lang.is_empty() || !block.lines.iter().any(|l| l.starts_with("$ ")) {
            continue;
        }
        let dir = scratch_dir(&format!("session-{n}"));
        let mut lines = block.lines.iter().peekable();
        while let Some(line) = lines.next() {
            let command = line.strip_prefix("$ ").unwrap_or_else(|| {
                panic!("under \"{}\": `{line}` is not a command", block.heading)
            });
            // What follows, up to the next command.
            let mut output = Vec::new();
            while let Some(next) = lines.next_if(|l| !l.starts_with("$ ")) {
                output.push(next.as_str());
            }
            let words = shell_words(command);
            if words[0] == "cat" {
                std::fs::write(dir.join(&words[1]), output.join("\n") + "\n").unwrap();
                continue;
            }
            let mut env = Vec::new();
            let mut words = words.into_iter();
            let program = loop {
                let word = words.next().expect("a command");
                match word.split_once('=') {
                    Some((k, v)) if k.chars().all(|c| c.is_ascii_uppercase() || c == '_') => {
                        env.push((k.to_owned(), v.to_owned()));
                    }
                    _ => break word,
                }
            };
            assert_eq!(
                program, "tidings",
                "under \"{}\": `{command}`",
                block.heading
            );
            let mut args: Vec<String> = words.collect();
            if !args.iter().any(|a| a == "check-config" || a == "run") {
                args.push("check-config".to_owned());
            }
            let (ok, _, err) = tidings_in(&dir, &args, &env);
            assert!(!ok, "`{command}` succeeds, the page shows an error");
            let quoted = output.join("\n");
            assert!(
                matches_quote(err.trim_end(), quoted.trim_end()),
                "docs/configuration.md, under \"{}\": `{command}` prints\n{}\nbut the page quotes\n{}",
                block.heading,
                err.trim_end(),
                quoted.trim_end(),
            );
            replayed += 1;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(replayed >= 5, "only {replayed} commands found to replay");
}

/// Whether `actual` is what `quoted` shows, where an ellipsis `…` in the
/// quote stands for any text (a long list of accepted keys, shortened).
fn matches_quote(actual: &str, quoted: &str) -> bool {
    let mut pieces = quoted.split('…');
    let first = pieces.next().unwrap_or_default();
    let Some(mut rest) = actual.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = pieces.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// The first TOML block after the text `after`, still under the heading
/// `heading` (or under no heading after `after`).
fn block_after(doc: &str, heading: &str, after: &str) -> String {
    let from = doc
        .find(after)
        .unwrap_or_else(|| panic!("docs/configuration.md no longer says `{after}`"));
    code_blocks(&doc[from..])
        .into_iter()
        .find(|b| b.lang == "toml" && (b.heading.is_empty() || b.heading == heading))
        .map(|b| b.lines.join("\n") + "\n")
        .unwrap_or_else(|| panic!("no TOML block after `{after}`"))
}

#[test]
fn the_defaults_shown_are_what_check_config_prints() {
    let doc = read("docs/configuration.md");
    let shown = block_after(
        &doc,
        "`tidings check-config`",
        "With nothing configured, `tidings check-config` prints the defaults:",
    );
    let (ok, out, err) = tidings(&["check-config"], &[]);
    assert!(ok, "{err}");
    assert_eq!(
        shown.trim_end(),
        out.trim_end(),
        "docs/configuration.md's defaults differ from `tidings check-config`"
    );
}

/// The value at the dotted `key` of `table`, if set.
fn lookup<'a>(table: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let mut parts = key.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

#[test]
fn the_complete_example_sets_every_key_and_is_accepted() {
    let doc = read("docs/configuration.md");
    let example = block_after(
        &doc,
        "A complete example file",
        "## A complete example file",
    );
    let parsed: toml::Table = example
        .parse()
        .unwrap_or_else(|e| panic!("the complete example is not TOML: {e}"));

    // The binary accepts it as it is.
    let dir = scratch_dir("example");
    std::fs::write(dir.join("tidings.toml"), &example).unwrap();
    let args = ["--config", "tidings.toml", "check-config"].map(String::from);
    let (ok, _, err) = tidings_in(&dir, &args, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(ok, "the complete example is refused: {err}");

    // And it sets every key the binary knows.
    let (ok, out, err) = tidings(&["check-config"], &[]);
    assert!(ok, "{err}");
    let mut keys = Keys::default();
    keys.collect(&[], &out.parse().expect("check-config prints TOML"));
    let mut missing: Vec<String> = keys
        .keys
        .iter()
        .filter(|(key, is_table)| !**is_table && lookup(&parsed, key).is_none())
        .map(|(key, _)| format!("`{key}`"))
        .collect();
    for (array, fields) in &keys.entry_fields {
        let entries = lookup(&parsed, array)
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        for field in fields {
            if !entries
                .iter()
                .any(|e| e.as_table().is_some_and(|t| t.contains_key(field)))
            {
                missing.push(format!("`{field}` (in no `{array}` entry)"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/configuration.md's complete example does not set:\n  {}",
        missing.join("\n  ")
    );
}
