//! Value parsers shared by the components' command-line flags (each component's `Args`).

use std::time::Duration;

/// A duration flag: more than zero and at most a day (`500ms`, `10s`, `5m`).
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    // One line of guidance: humantime's own message lists every unit it knows.
    let d = humantime::parse_duration(text).map_err(|_| {
        "not a duration: a number and a unit, such as 500ms, 10s, 5m or 1h".to_owned()
    })?;
    if d.is_zero() {
        return Err("must be more than zero".to_owned());
    }
    if d > Duration::from_secs(86_400) {
        return Err("must be at most 24h".to_owned());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_bounded() {
        assert_eq!(positive_duration("10s"), Ok(Duration::from_secs(10)));
        assert!(
            positive_duration("0s")
                .unwrap_err()
                .contains("more than zero")
        );
        assert!(positive_duration("2d").unwrap_err().contains("at most 24h"));
        for bad in ["ten", "5x", ""] {
            let e = positive_duration(bad).unwrap_err();
            assert_eq!(e.matches("500ms").count(), 1, "{e}");
            assert!(!e.contains("supported units"), "{e}");
        }
    }
}
