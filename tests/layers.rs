//! The module graph has layers: a module may use only modules of lower layers (and its own
//! submodules). Tests at the end of a file (`#[cfg(test)]` onwards) are not counted. A new
//! module must be given a layer here, which is where its place in the architecture is decided.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Layer of every top-level module under `src/`, lowest first.
const LAYERS: &[(&str, u8)] = &[
    // How errors are said, which every layer uses.
    ("errors", 0),
    ("locks", 1),
    ("backoff", 1),
    ("follow", 1),
    ("flags", 1),
    // Leaves: know nothing of the rest.
    ("event", 2),
    ("labels", 2),
    ("telemetry", 2),
    ("watch", 2),
    ("status", 2),
    ("leader", 2),
    ("route", 2),
    ("owners", 2),
    // Plain services over the leaves.
    ("delivery", 3),
    ("metrics", 3),
    ("classify", 3),
    ("config", 3),
    // The decision, and what feeds or reloads it; the recorder over the delivery engine.
    ("recorder", 4),
    ("decide", 4),
    ("subscription", 4),
    ("discovery", 4),
    ("tls", 4),
    ("history", 4),
    ("otlp", 4),
    ("tasks", 4),
    // Uses of the decision.
    ("admission", 5),
    ("explain", 5),
    ("certs", 5),
    ("mirror", 5),
    ("reload", 5),
    // What runs beside the webhook, then the server, then the commands.
    ("cluster", 6),
    ("server", 7),
    ("runtime", 8),
    ("cli", 9),
];

fn src() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Top-level module of a file under src/ (`mirror/sync.rs` → `mirror`).
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_owned()
}

/// `crate::x` references in the non-test part of `text`.
fn uses(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_only_use_lower_layers() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut wrong = Vec::new();
    for path in all {
        let module = module_of(&path);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(&own) = layer.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` has no layer in tests/layers.rs",
                path.display()
            ));
            continue;
        };
        for used in uses(&std::fs::read_to_string(&path).unwrap()) {
            if used == module {
                continue;
            }
            match layer.get(used.as_str()) {
                Some(&l) if l < own => {}
                Some(&l) => wrong.push(format!(
                    "{}: `{module}` (layer {own}) uses `{used}` (layer {l})",
                    path.display()
                )),
                None => wrong.push(format!(
                    "{}: uses `crate::{used}`, which has no layer",
                    path.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn the_checker_sees_a_use_and_skips_tests_and_comments() {
    let text =
        "use crate::config::Config;\n// crate::server\nfn f() {}\n#[cfg(test)]\nuse crate::cli;";
    assert_eq!(uses(text), ["config"]);
}

/// The submodules of one module (`recorder/pipeline.rs`, `recorder/sink.rs`...) a file uses,
/// as `super::x` or `crate::module::x`, in the non-test part of `text`.
fn sibling_uses(module: &str, text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = Vec::new();
    for line in code.lines().map(str::trim_start) {
        if line.starts_with("//") {
            continue;
        }
        for prefix in ["super::".to_owned(), format!("crate::{module}::")] {
            let mut rest = line;
            while let Some(i) = rest.find(&prefix) {
                rest = &rest[i + prefix.len()..];
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                // `super::Row` names an item of the parent, not a sibling module.
                if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                    out.push(name);
                }
            }
        }
    }
    out
}

/// Within each module, the submodules do not use each other in a circle (pipeline and sink,
/// say): each is readable on top of the ones it uses.
#[test]
fn submodules_of_a_module_form_no_circle() {
    let mut circles = Vec::new();
    for entry in std::fs::read_dir(src()).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let module = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut edges: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.extension().is_none_or(|e| e != "rs") || name == "mod" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let mut uses = sibling_uses(&module, &text);
            uses.retain(|u| *u != name && dir.join(format!("{u}.rs")).is_file());
            uses.sort();
            uses.dedup();
            edges.insert(name, uses);
        }
        // A circle: some submodule reaches itself.
        for start in edges.keys() {
            let mut seen = std::collections::BTreeSet::new();
            let mut todo = edges[start].clone();
            while let Some(next) = todo.pop() {
                if next == *start {
                    circles.push(format!("{module}: {start} reaches itself ({edges:?})"));
                    break;
                }
                if seen.insert(next.clone()) {
                    todo.extend(edges.get(&next).cloned().unwrap_or_default());
                }
            }
        }
    }
    assert!(circles.is_empty(), "\n{}", circles.join("\n"));
}

#[test]
fn the_sibling_checker_sees_super_and_crate_paths_but_not_parent_items() {
    let text = "use super::queue::X;\nuse crate::delivery::error::E;\nuse super::Row;\n#[cfg(test)]\nuse super::sink;";
    assert_eq!(sibling_uses("delivery", text), ["queue", "error"]);
}
