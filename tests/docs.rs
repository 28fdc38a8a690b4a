//! The README is a front page and the documentation behind it holds together: every relative
//! link leads to a file (and a heading) that exists, the two commands a new user needs are on
//! the first screen, and the architecture names code that production really runs.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

/// GitHub's anchor of a heading.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(page).unwrap();
    let mut in_code = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') {
            out.push(slug(line.trim_start_matches('#')));
        }
    }
    out
}

/// The `[text](target)` links of `text`, outside code blocks.
fn links(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        for part in line.split("](").skip(1) {
            if let Some(target) = part.split(')').next() {
                out.push(target.to_owned());
            }
        }
    }
    out
}

#[test]
fn every_relative_link_leads_somewhere() {
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") {
                continue;
            }
            let (file, anchor) = link.split_once('#').unwrap_or((&link, ""));
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            assert!(
                target.exists(),
                "{}: link {link:?} leads to nothing",
                page.display()
            );
            if !anchor.is_empty() {
                assert!(
                    anchors(&target).iter().any(|a| a == anchor),
                    "{}: link {link:?}: no such heading in {}",
                    page.display(),
                    target.display()
                );
            }
        }
    }
}

/// A front page: at most about 200 lines, and the two commands (run on the embedded defaults,
/// run the tests) on its first screen.
#[test]
fn the_readme_is_a_front_page() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let lines: Vec<&str> = readme.lines().collect();
    assert!(lines.len() <= 200, "README.md has {} lines", lines.len());
    let first_screen = lines[..40.min(lines.len())].join("\n");
    for command in ["cargo run -- serve", "cargo test --locked"] {
        assert!(
            first_screen.contains(command),
            "{command} is not on the first screen"
        );
    }
    // Every page under docs/ is linked from the README.
    for page in pages()
        .iter()
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("docs")))
    {
        let name = page.file_name().unwrap().to_string_lossy();
        assert!(
            readme.contains(&format!("](docs/{name})")),
            "docs/{name} is not linked from the README"
        );
    }
}

/// Whether `name` is declared (fn, struct, enum, trait, type, mod, const) under `dir`.
fn declared(name: &str, module: &Path) -> bool {
    let files: Vec<PathBuf> = if module.is_dir() {
        walk(module)
    } else {
        vec![module.with_extension("rs")]
    };
    files.iter().any(|f| {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        ["fn", "struct", "enum", "trait", "type", "mod", "const"]
            .iter()
            .any(|k| {
                text.contains(&format!("{k} {name}")) || text.contains(&format!("{k} {name}<"))
            })
    })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Every `module::…::name` the architecture page names is declared in that module.
#[test]
fn the_architecture_names_real_code() {
    let text = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let mut checked = 0;
    for token in text.split('`').skip(1).step_by(2) {
        let parts: Vec<&str> = token.split("::").collect();
        if parts.len() < 2
            || !parts
                .iter()
                .all(|p| p.chars().all(|c| c.is_alphanumeric() || c == '_'))
        {
            continue;
        }
        let module = root().join("src").join(parts[0]);
        if !module.is_dir() && !module.with_extension("rs").exists() {
            continue;
        }
        let name = parts[parts.len() - 1];
        assert!(
            declared(name, &module),
            "docs/architecture.md names `{token}`: no {name} in src/{}",
            parts[0]
        );
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} names checked");
}

/// The metric names of an exposition: `# TYPE <name> <type>` lines, counters with `_total`
/// (as scraped).
fn exported_metrics(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let (name, kind) = (words.next()?, words.next()?);
            Some(if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            })
        })
        .collect()
}

/// Every metric `/metrics` exports has its row in docs/operations.md's table, and every row
/// names a metric that is exported: an operator reads there what each one means.
#[test]
fn every_exported_metric_is_documented_and_every_documented_one_exported() {
    let metrics = clusterscope::metrics::Metrics::new();
    // The families whose series come with their first value.
    metrics.channels(["nodes"]);
    metrics
        .admission
        .classified("Node", Some("Node"), "NodeNotReady", "nodes");
    metrics.owners.state(
        &[("pods".to_owned(), 1)],
        &[("Widget.example.com".to_owned(), 1)],
    );
    metrics
        .subscriptions
        .standing(&[("accepted", "Accepted", 1)]);
    let exported = exported_metrics(&metrics.encode());
    assert!(exported.len() > 40, "{exported:?}");
    let page = std::fs::read_to_string(root().join("docs/operations.md")).unwrap();
    let documented: std::collections::BTreeSet<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix("| `clusterscope_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| format!("clusterscope_{name}"))
        .collect();
    let undocumented: Vec<&String> = exported.difference(&documented).collect();
    let gone: Vec<&String> = documented.difference(&exported).collect();
    assert!(
        undocumented.is_empty() && gone.is_empty(),
        "exported but not in docs/operations.md: {undocumented:?}; in docs/operations.md but not exported: {gone:?}"
    );
}
