//! A configuration as people hand it to `check-config` and `explain --config`: the file itself,
//! the ConfigMap that ships it (its `config.yaml` key), or the many documents `kubectl
//! kustomize` renders (the ConfigMap among them). Errors inside a ConfigMap's key point at the
//! line and column of the file given, not of the key's text.

use serde_json::Value;

use super::{Config, ConfigError};

/// The key of the ConfigMap that holds the configuration.
pub const KEY: &str = "config.yaml";
/// The ConfigMap the manifests ship it in.
pub const CONFIGMAP: &str = "clusterscope-config";

/// One YAML document of a file: its text and the line it starts on (1-based).
struct Document<'a> {
    text: &'a str,
    first_line: u64,
}

/// The documents of `text`, split at `---` lines.
fn documents(text: &str) -> Vec<Document<'_>> {
    let mut out = Vec::new();
    let (mut start, mut first_line, mut offset) = (0, 1, 0);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let separator = line.trim_end() == "---" || line.starts_with("--- ");
        if separator {
            out.push(Document {
                text: &text[start..offset],
                first_line,
            });
            start = offset + line.len();
            first_line = i as u64 + 2;
        }
        offset += line.len();
    }
    out.push(Document {
        text: &text[start..],
        first_line,
    });
    out.retain(|d| d.text.lines().any(|l| !is_blank_or_comment(l)));
    out
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

/// A configuration, a ConfigMap holding one under `config.yaml`, or documents with such a
/// ConfigMap among them (the one named `clusterscope-config` when there are several); `source`
/// names the file in errors and in the summary.
pub fn from_document(text: &str, source: &str) -> Result<Config, ConfigError> {
    let docs = documents(text);
    let probes: Vec<(usize, Value)> = docs
        .iter()
        .enumerate()
        .filter_map(|(i, d)| serde_saphyr::from_str::<Value>(d.text).ok().map(|v| (i, v)))
        .collect();
    let kind_of = |v: &Value| v["kind"].as_str().map(str::to_owned);
    let plain = docs.len() <= 1 && probes.first().is_none_or(|(_, v)| kind_of(v).is_none());
    if plain {
        return Config::from_yaml(text, source);
    }
    let holders: Vec<&(usize, Value)> = probes
        .iter()
        .filter(|(_, v)| v["kind"] == "ConfigMap" && v["data"][KEY].is_string())
        .collect();
    let chosen = match holders.as_slice() {
        [one] => *one,
        [] => return Err(no_holder(source, &docs, &probes)),
        many => many
            .iter()
            .find(|(_, v)| v["metadata"]["name"] == CONFIGMAP)
            .copied()
            .ok_or_else(|| {
                whole(
                    source,
                    format!(
                        "{} ConfigMaps have a {KEY} key and none is named {CONFIGMAP}: give the file of one",
                        many.len()
                    ),
                )
            })?,
    };
    let (index, value) = chosen;
    let doc = &docs[*index];
    let name = value["metadata"]["name"].as_str().unwrap_or("(no name)");
    let inner = value["data"][KEY].as_str().unwrap_or_default();
    let mut config = Config::from_yaml(inner, source).map_err(|e| in_key(e, doc, name))?;
    config.source = format!("{source} (ConfigMap {name}, key {KEY})");
    // Routes name their lines (explain, warnings): lines of the file given.
    if let Some((key_line, _)) = literal_block(doc.text) {
        for route in &mut config.routes {
            route.line += doc.first_line + key_line - 1;
        }
    }
    Ok(config)
}

/// An error of the whole file.
fn whole(source: &str, reason: String) -> ConfigError {
    ConfigError {
        source: source.to_owned(),
        line: 0,
        column: 0,
        reason,
    }
}

/// Why no document could be used: what the file holds instead.
fn no_holder(source: &str, docs: &[Document<'_>], probes: &[(usize, Value)]) -> ConfigError {
    let kinds: Vec<String> = probes
        .iter()
        .map(|(_, v)| v["kind"].as_str().unwrap_or("(no kind)").to_owned())
        .collect();
    whole(
        source,
        format!(
            "not a clusterscope configuration, and none of its {} document(s) ({}) is a ConfigMap with a {KEY} key; give the configuration file, the ConfigMap that holds it, or the output of kubectl kustomize",
            docs.len(),
            kinds.join(", ")
        ),
    )
}

/// `error` from the text of the `config.yaml` key of ConfigMap `name` in `doc`, placed in the
/// file: a literal block (`config.yaml: |`) keeps its lines, so line and column move by where
/// it starts; elsewhere the key's line is given and the place inside it said in words.
fn in_key(error: ConfigError, doc: &Document<'_>, name: &str) -> ConfigError {
    let place = literal_block(doc.text);
    let context = format!("(ConfigMap {name}, key {KEY})");
    match place {
        Some((key_line, indent)) if error.line > 0 => ConfigError {
            line: doc.first_line + key_line + error.line - 1,
            column: error.column + indent,
            reason: format!("{} {context}", error.reason),
            ..error
        },
        Some((key_line, _)) => ConfigError {
            line: doc.first_line + key_line - 1,
            column: 1,
            reason: format!("{} {context}", error.reason),
            ..error
        },
        None => ConfigError {
            line: 0,
            column: 0,
            reason: format!(
                "{} {context} at line {}, column {} of the key's text",
                error.reason, error.line, error.column
            ),
            ..error
        },
    }
}

/// Where `config.yaml: |` is in `doc` (its 1-based line) and how far its text is indented.
fn literal_block(doc: &str) -> Option<(u64, u64)> {
    let lines: Vec<&str> = doc.lines().collect();
    let at = lines.iter().position(|l| {
        let t = l.trim_start();
        let value = t
            .strip_prefix(KEY)
            .or_else(|| t.strip_prefix("\"config.yaml\""))
            .and_then(|rest| rest.trim_start().strip_prefix(':'));
        value.is_some_and(|v| {
            let v = v.split('#').next().unwrap_or("").trim();
            v.starts_with('|')
                && v[1..]
                    .chars()
                    .all(|c| c == '-' || c == '+' || c.is_ascii_digit())
        })
    })?;
    let indent = lines[at + 1..]
        .iter()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())?;
    Some((at as u64 + 1, indent as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIGMAP_TEXT: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: clusterscope-config\ndata:\n  # a comment\n  config.yaml: |\n    channels:\n      - name: nodes\n    routes:\n      - channel: nodez\n";

    #[test]
    fn a_configmap_is_read_from_its_key_and_errors_point_into_the_file() {
        let e = from_document(CONFIGMAP_TEXT, "cm.yaml").unwrap_err();
        // `channel: nodez` is line 11 of the file; its value starts at column 16.
        assert_eq!((e.line, e.column), (11, 18), "{e}");
        assert!(
            e.reason
                .ends_with("(ConfigMap clusterscope-config, key config.yaml)"),
            "{e}"
        );
        let good = CONFIGMAP_TEXT.replace("nodez", "nodes");
        let config = from_document(&good, "cm.yaml").unwrap();
        assert_eq!(
            config.source,
            "cm.yaml (ConfigMap clusterscope-config, key config.yaml)"
        );
    }

    #[test]
    fn kustomize_output_is_searched_for_the_configmap() {
        let text = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: clusterscope-system\n---\n{}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: x\n",
            CONFIGMAP_TEXT.replace("nodez", "nodes").replace(
                "name: clusterscope-config",
                "name: clusterscope-config\n  namespace: clusterscope-system"
            )
        );
        assert!(from_document(&text, "all.yaml").is_ok());
        let broken = text.replacen("- channel: nodes", "- channel: nodez", 1);
        let e = from_document(&broken, "all.yaml").unwrap_err();
        let line = broken.lines().position(|l| l.contains("nodez")).unwrap() as u64 + 1;
        assert_eq!(e.line, line, "{e}");
    }

    #[test]
    fn documents_without_a_configuration_say_what_they_hold() {
        let e = from_document(
            "apiVersion: v1\nkind: Service\n---\nkind: Deployment\n",
            "x.yaml",
        )
        .unwrap_err();
        assert!(e.reason.contains("(Service, Deployment)"), "{e}");
        assert!(e.reason.contains("kubectl kustomize"), "{e}");
    }

    #[test]
    fn a_plain_configuration_is_read_as_it_is() {
        let config = from_document("channels:\n  - name: a\n", "c.yaml").unwrap();
        assert_eq!(config.source, "c.yaml");
    }
}
