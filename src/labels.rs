//! Kubernetes name rules for label keys, label values and namespaces, as the API server
//! enforces them (k8s.io/apimachinery `pkg/util/validation`), and the derivation of a label
//! value that is always accepted from an arbitrary string.

use std::borrow::Cow;
use std::hash::Hasher;

/// Longest label value, and longest name part of a label key.
pub const MAX_LABEL_VALUE_LEN: usize = 63;
/// Longest DNS-1123 subdomain (namespaces of events, label key prefixes).
pub const MAX_SUBDOMAIN_LEN: usize = 253;

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]` with at most 63 bytes: the name part of a
/// label key and any non-empty label value.
fn check_name_part(s: &str, what: &str) -> Result<(), String> {
    let b = s.as_bytes();
    if b.len() > MAX_LABEL_VALUE_LEN {
        return Err(format!(
            "{what} {s:?} is {} characters long, at most {MAX_LABEL_VALUE_LEN} are allowed",
            b.len()
        ));
    }
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return Err(format!("{what} must not be empty"));
    };
    if !is_alnum(first) || !is_alnum(last) {
        return Err(format!(
            "{what} {s:?} must begin and end with a letter or digit"
        ));
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{what} {s:?} contains {bad:?}; only letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    Ok(())
}

/// A label value: empty, or a name part of at most 63 characters.
pub fn check_label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    check_name_part(s, "label value")
}

/// A label or annotation key: `[prefix/]name`, prefix a DNS-1123 subdomain.
pub fn check_qualified_name(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            if prefix.is_empty() {
                return Err(format!("key {key:?} has an empty prefix before '/'"));
            }
            check_dns1123_subdomain(prefix).map_err(|e| format!("key {key:?}: prefix {e}"))?;
            check_name_part(name, "key name").map_err(|e| format!("key {key:?}: {e}"))
        }
        None => check_name_part(key, "key"),
    }
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` with at most 63 characters (namespace names, channel names).
pub fn check_dns1123_label(s: &str) -> Result<(), String> {
    check_dns_part(s, MAX_LABEL_VALUE_LEN, false)
}

/// Dot-separated DNS-1123 labels, at most 253 characters.
pub fn check_dns1123_subdomain(s: &str) -> Result<(), String> {
    check_dns_part(s, MAX_SUBDOMAIN_LEN, true)
}

fn check_dns_part(s: &str, max: usize, dots: bool) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.len() > max {
        return Err(format!(
            "{s:?} is {} characters long, at most {max} are allowed",
            s.len()
        ));
    }
    let parts: Box<dyn Iterator<Item = &str>> = if dots {
        Box::new(s.split('.'))
    } else {
        Box::new(std::iter::once(s))
    };
    for part in parts {
        let b = part.as_bytes();
        let ok_inner = b
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
        let ok_ends = matches!((b.first(), b.last()), (Some(f), Some(l))
            if (f.is_ascii_lowercase() || f.is_ascii_digit()) && (l.is_ascii_lowercase() || l.is_ascii_digit()));
        if !ok_inner || !ok_ends {
            return Err(format!(
                "{s:?} must consist of lower case letters, digits and '-'{}, starting and ending with a letter or digit",
                if dots { " in dot-separated parts" } else { "" }
            ));
        }
    }
    Ok(())
}

/// A label value the API server always accepts, derived deterministically from `raw`.
///
/// A valid value is returned unchanged (and borrowed). Otherwise characters outside
/// `[-A-Za-z0-9_.]` become `-`, the ends are trimmed to letters or digits, and when anything
/// changed a short hash of the original is appended so that two different originals do not
/// collapse into one value. The result never exceeds 63 characters.
pub fn safe_label_value(raw: &str) -> Cow<'_, str> {
    if check_label_value(raw).is_ok() {
        return Cow::Borrowed(raw);
    }
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(raw.as_bytes());
    let suffix = format!("{:08x}", hasher.finish() as u32);
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    Cow::Owned(
        with_suffix(trimmed, MAX_LABEL_VALUE_LEN, '-', &suffix)
            .unwrap_or_else(|| format!("x-{suffix}")),
    )
}

/// `<head><sep><suffix>` in at most `max` bytes: the longest start of `text` that fits, ending
/// on an ASCII alphanumeric character (so the result is a valid name when `text` was made of
/// valid characters). `None` when no such start is left.
pub fn with_suffix(text: &str, max: usize, sep: char, suffix: &str) -> Option<String> {
    let mut end = max.saturating_sub(1 + suffix.len()).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = text[..end].trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    (!head.is_empty()).then(|| format!("{head}{sep}{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_suffix_fits_and_ends_on_alphanumerics() {
        assert_eq!(with_suffix("abc", 10, '.', "ff"), Some("abc.ff".into()));
        assert_eq!(
            with_suffix("abcdef-", 9, '.', "ff"),
            Some("abcdef.ff".into())
        );
        assert_eq!(with_suffix("abcd-ef", 8, '.', "ff"), Some("abcd.ff".into()));
        assert_eq!(with_suffix("---", 10, '.', "ff"), None);
        // Never cuts inside a character, never longer than asked.
        let out = with_suffix(&"é".repeat(100), 20, '-', "ff").unwrap_or_default();
        assert!(out.len() <= 20);
    }

    #[test]
    fn label_values() {
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("Node").is_ok());
        assert!(check_label_value("a.b_c-d").is_ok());
        assert!(check_label_value("-a").is_err());
        assert!(check_label_value("a-").is_err());
        assert!(check_label_value("a b").is_err());
        assert!(check_label_value(&"a".repeat(63)).is_ok());
        assert!(check_label_value(&"a".repeat(64)).is_err());
    }

    #[test]
    fn qualified_names() {
        assert!(check_qualified_name("clusterscope.dev/kind").is_ok());
        assert!(check_qualified_name("app").is_ok());
        assert!(check_qualified_name("/app").is_err());
        assert!(check_qualified_name("Example.com/app").is_err());
        assert!(check_qualified_name("example.com/").is_err());
        assert!(check_qualified_name("a/b/c").is_err());
        assert!(check_qualified_name(&format!("x/{}", "a".repeat(64))).is_err());
    }

    #[test]
    fn dns_names() {
        assert!(check_dns1123_label("team-a").is_ok());
        assert!(check_dns1123_label("Team").is_err());
        assert!(check_dns1123_label("a.b").is_err());
        assert!(check_dns1123_subdomain("a.b-c.d").is_ok());
        assert!(check_dns1123_subdomain("a..b").is_err());
        assert!(check_dns1123_subdomain(&"a".repeat(254)).is_err());
    }

    #[test]
    fn safe_values_are_always_valid_and_stable() {
        for raw in [
            "Node",
            "",
            "weird kind!",
            "-leading",
            "ÜnicodeKind",
            "???",
            &"VeryLongKind".repeat(10),
            "a/b",
        ] {
            let v = safe_label_value(raw);
            assert!(check_label_value(&v).is_ok(), "{raw:?} -> {v:?}");
            assert_eq!(v, safe_label_value(raw));
        }
        assert!(matches!(safe_label_value("Node"), Cow::Borrowed("Node")));
        assert_ne!(safe_label_value("a b"), safe_label_value("a!b"));
        assert_eq!(
            safe_label_value(&"K".repeat(100)).len(),
            MAX_LABEL_VALUE_LEN
        );
    }
}
