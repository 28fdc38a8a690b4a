//! The one backoff policy for reconnecting to what clusterscope depends on (the API server at
//! start, the history database): 1 s, doubling, at most 30 s, for ever, with jitter so that
//! replicas started together do not retry in step. kube-runtime's watchers keep their own
//! (`default_backoff`); a delivery's retries follow its lane's policy (`delivery::queue`).

use std::time::Duration;

use backon::BackoffBuilder;

/// The delays between reconnection attempts, one per failure.
pub fn reconnect() -> impl Iterator<Item = Duration> + Send {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .with_factor(2.0)
        .without_max_times()
        .with_jitter()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_at_a_second_double_and_stay_under_a_minute() {
        let delays: Vec<Duration> = reconnect().take(12).collect();
        assert_eq!(delays.len(), 12, "it never gives up");
        // With jitter each delay is its step plus up to as much again.
        assert!(delays[0] >= Duration::from_secs(1) && delays[0] <= Duration::from_secs(2));
        assert!(delays[3] >= Duration::from_secs(8));
        assert!(delays[11] >= Duration::from_secs(30) && delays[11] <= Duration::from_secs(60));
    }
}
