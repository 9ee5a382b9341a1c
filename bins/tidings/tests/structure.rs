//! The workspace's structure, as a regression guard:
//!
//! - no import circle between the files of one library crate: every
//!   `crate::<module>` reference in a crate's `src/*.rs` (grouped
//!   `use crate::{a::X, b}` included, and names the crate root re-exports
//!   resolved to the file that defines them) is an edge from that file to
//!   the module's file, and the graph must have no cycle;
//! - no library crate depends (in its `Cargo.toml`, dev-dependencies aside)
//!   on a crate above it in the layering
//!   `core < identity, routing, bridge, history < session < admission, rpc, control
//!   < wire adapters (transport = WebSocket, sse, ...) < binaries`;
//! - no wire adapter depends on (or names in its sources) a crate of
//!   another wire protocol: adding a wire protocol touches no file of
//!   another one.
//!
//! Unit-test modules (everything from a file's first `#[cfg(test)]` on) are
//! left out: tests may use the crate's public API from anywhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn library_crates() -> Vec<PathBuf> {
    let mut crates: Vec<PathBuf> = fs::read_dir(workspace().join("crates"))
        .expect("crates/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    crates
}

/// The source without comments, up to its unit tests.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The first path segment of every item of a `{...}` group starting at
/// `s` (just after the `{`), at the group's top level.
fn group_heads(s: &str) -> Vec<&str> {
    let mut heads = Vec::new();
    let mut depth = 0usize;
    let mut item_start = Some(0);
    for (i, c) in s.char_indices() {
        if let Some(start) = item_start {
            let rest = s[start..i + c.len_utf8()].trim_start();
            if !rest.is_empty() {
                let off = s.len() - s[start..].trim_start().len();
                heads.push(ident_at(&s[off..]));
                item_start = None;
            }
        }
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => item_start = Some(i + 1),
            _ => {}
        }
    }
    heads
}

/// Every name referred to as `crate::<name>` in `code`.
fn crate_refs(code: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        if i > 0 {
            let before = code[..i].chars().next_back().unwrap_or(' ');
            if before.is_alphanumeric() || before == '_' {
                continue; // `tidings_crate::`, not ours
            }
        }
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            refs.extend(group_heads(group).into_iter().map(str::to_owned));
        } else {
            refs.insert(ident_at(rest).to_owned());
        }
    }
    refs.retain(|r| !r.is_empty() && r != "self");
    refs
}

/// What the crate root re-exports: name -> module it comes from.
fn reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(at) = stmt.find("pub use ") else {
            continue;
        };
        let path = stmt[at + "pub use ".len()..].trim();
        let path = path
            .strip_prefix("crate::")
            .or_else(|| path.strip_prefix("self::"))
            .unwrap_or(path);
        let module = ident_at(path);
        if !modules.contains(module) {
            continue;
        }
        let names = &path[module.len()..];
        for name in names
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .filter(|n| !n.is_empty() && *n != "self")
        {
            map.insert(name.to_owned(), module.to_owned());
        }
    }
    map
}

/// The file graph of one crate: module -> modules it imports.
fn file_graph(krate: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let src = krate.join("src");
    let mut sources = BTreeMap::new();
    for entry in fs::read_dir(&src).expect("src/") {
        let path = entry.expect("entry").path();
        assert!(
            !path.is_dir(),
            "{}: nested modules are not covered by this test yet; extend it",
            path.display()
        );
        if path.extension().is_some_and(|e| e == "rs") {
            let name = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            sources.insert(name, code(&fs::read_to_string(&path).expect("read")));
        }
    }
    let lib = sources.remove("lib").unwrap_or_default();
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let roots = reexports(&lib, &modules);
    sources
        .iter()
        .map(|(name, code)| {
            let deps = crate_refs(code)
                .into_iter()
                .filter_map(|r| {
                    if modules.contains(&r) {
                        Some(r)
                    } else {
                        roots.get(&r).cloned()
                    }
                })
                .filter(|m| m != name)
                .collect();
            (name.clone(), deps)
        })
        .collect()
}

/// A cycle of `graph`, if it has one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn no_import_circle_between_the_files_of_a_crate() {
    let mut cycles = Vec::new();
    for krate in library_crates() {
        let graph = file_graph(&krate);
        assert!(!graph.is_empty(), "{}: no modules found", krate.display());
        if let Some(cycle) = find_cycle(&graph) {
            cycles.push(format!(
                "{}: {}",
                krate.file_name().expect("name").to_string_lossy(),
                cycle.join(" -> ")
            ));
        }
    }
    assert!(cycles.is_empty(), "import circles:\n{}", cycles.join("\n"));
}

#[test]
fn the_checker_sees_a_circle() {
    let a = code("use crate::{b::X, c};\nfn f() { crate::d::g() } // crate::e\n");
    let refs: Vec<_> = crate_refs(&a).into_iter().collect();
    assert_eq!(refs, ["b", "c", "d"]);
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", &["b"][..]),
        ("b", &["c"][..]),
        ("c", &["a"][..]),
        ("d", &[][..]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.iter().map(|s| s.to_string()).collect()))
    .collect();
    assert_eq!(find_cycle(&graph).expect("cycle"), ["a", "b", "c", "a"]);
    let modules = ["broker".to_owned()].into_iter().collect();
    let roots = reexports("pub use broker::{Broker, Inbound};", &modules);
    assert_eq!(roots.get("Inbound").map(String::as_str), Some("broker"));
}

/// The layer of a workspace crate (`None`: not a workspace crate).
fn layer(name: &str) -> Option<u32> {
    if wire_protocol(name).is_some() {
        return Some(4);
    }
    Some(match name {
        "tidings-core" => 0,
        "tidings-identity" | "tidings-routing" | "tidings-bridge" | "tidings-history" => 1,
        "tidings-session" => 2,
        "tidings-admission" | "tidings-rpc" | "tidings-control" => 3,
        "tidings" | "tidings-bench" => 5,
        _ => return None,
    })
}

/// The wire protocol a wire adapter crate speaks (crates of one protocol,
/// such as a transport and the protocol over it, share a name); `None`
/// for crates that are not wire adapters.
fn wire_protocol(name: &str) -> Option<&'static str> {
    Some(match name {
        "tidings-transport" => "websocket",
        "tidings-sse" => "sse",
        "tidings-engineio" | "tidings-socketio" => "socket.io",
        "tidings-pusher" => "pusher",
        _ => return None,
    })
}

/// The `tidings-*` crates `manifest` depends on (dev-dependencies aside).
fn workspace_deps(manifest: &str) -> Vec<String> {
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            let section = line.trim_matches(|c| c == '[' || c == ']');
            in_deps = section.ends_with("dependencies") && !section.ends_with("dev-dependencies");
            continue;
        }
        if in_deps && line.starts_with("tidings") {
            let name = line
                .split(|c: char| c == '=' || c == '.' || c.is_whitespace())
                .next()
                .unwrap_or("");
            deps.push(name.to_owned());
        }
    }
    deps
}

#[test]
fn no_library_crate_depends_on_a_crate_above_it() {
    let mut wrong = Vec::new();
    for krate in library_crates() {
        let name = krate
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let Some(own) = layer(&name) else {
            panic!("{name} has no place in the layering of this test: add it");
        };
        let manifest = fs::read_to_string(krate.join("Cargo.toml")).expect("Cargo.toml");
        for dep in workspace_deps(&manifest) {
            match layer(&dep) {
                Some(l) if l > own => wrong.push(format!("{name} depends on {dep}, above it")),
                Some(_) => {}
                None => wrong.push(format!("{name} depends on {dep}, not in the layering")),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every `tidings-*` crate named in `manifest`, dev-dependencies included.
fn all_workspace_deps(manifest: &str) -> Vec<String> {
    let mut deps = Vec::new();
    let mut in_deps = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_deps = line
                .trim_matches(|c| c == '[' || c == ']')
                .ends_with("dependencies");
            continue;
        }
        if in_deps && line.starts_with("tidings") {
            let name = line
                .split(|c: char| c == '=' || c == '.' || c.is_whitespace())
                .next()
                .unwrap_or("");
            deps.push(name.to_owned());
        }
    }
    deps
}

#[test]
fn no_wire_adapter_depends_on_another_wire_protocol() {
    let mut wrong = Vec::new();
    for krate in library_crates() {
        let name = krate
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let Some(own) = wire_protocol(&name) else {
            continue;
        };
        let manifest = fs::read_to_string(krate.join("Cargo.toml")).expect("Cargo.toml");
        for dep in all_workspace_deps(&manifest) {
            if wire_protocol(&dep).is_some_and(|p| p != own) {
                wrong.push(format!(
                    "{name} ({own}) depends on {dep}, another wire protocol"
                ));
            }
        }
        // Nor through a path, a re-export or a doc link in its sources.
        let others: Vec<String> = library_crates()
            .iter()
            .filter_map(|k| k.file_name().map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| wire_protocol(n).is_some_and(|p| p != own))
            .map(|n| n.replace('-', "_"))
            .collect();
        for entry in fs::read_dir(krate.join("src")).expect("src/") {
            let path = entry.expect("entry").path();
            let text = fs::read_to_string(&path).unwrap_or_default();
            for other in &others {
                if text.contains(&format!("{other}::")) {
                    wrong.push(format!("{} names {other}", path.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_wire_crate_has_a_protocol() {
    // A crate under crates/ that serves a wire format by a name this test
    // does not know would escape the check above: name it here.
    for krate in library_crates() {
        let name = krate
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let lib = fs::read_to_string(krate.join("src/lib.rs")).unwrap_or_default();
        let serves = lib.contains("impl Endpoint for") || {
            fs::read_dir(krate.join("src"))
                .expect("src/")
                .filter_map(|e| fs::read_to_string(e.expect("entry").path()).ok())
                .any(|t| t.contains("impl Endpoint for"))
        };
        assert!(
            !serves || wire_protocol(&name).is_some(),
            "{name} implements tidings_admission::Endpoint: give it a wire protocol in wire_protocol()"
        );
    }
}
