//! The write budget: how many copies a second the mirror may ask of the API server. A burst of
//! Node Warnings copied into 30 namespaces each asks for thousands of writes a second; on a real
//! API server (2 cores shared with etcd) 6,000 asked a second were written at about 1,100-1,200
//! a second, the API server spending 5 CPU-seconds for each one clusterscope spent, and the last
//! copy landed 40-52 s after its source. A budget keeps what clusterscope asks below what the
//! control plane can give without crowding its own work: writes past it wait in their lane
//! (Warnings first, each copy at its newest state), none is dropped that the lane can hold.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::metrics::MirrorMetrics;

/// Writes a second when nothing else is said: about a sixth of what a 2-core control plane
/// wrote at saturation, so that copies never take more than a small part of it.
pub const DEFAULT_PER_SECOND: u32 = 200;

/// What the copy sink may write a second; shared by the sink (which takes from it) and the
/// controller (which sets it). No budget until set, and none for 0.
#[derive(Default)]
pub struct WriteBudget {
    state: arc_swap::ArcSwapOption<Budgeted>,
}

struct Budgeted {
    limiter: DefaultDirectRateLimiter,
    metrics: MirrorMetrics,
}

impl WriteBudget {
    /// `per_second` writes a second (0: unlimited), said and counted in `metrics`. Bursts are
    /// a twentieth of a second's worth, so that no second sees much more than the budget.
    pub fn set(&self, per_second: u32, metrics: MirrorMetrics) {
        metrics.write_budget.set(i64::from(per_second));
        let budgeted = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(per_second / 20).unwrap_or(NonZeroU32::MIN);
            Arc::new(Budgeted {
                limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
                metrics,
            })
        });
        self.state.store(budgeted);
    }

    /// Waits until one more write fits the budget, and counts it.
    pub async fn take(&self) {
        let Some(budget) = self.state.load_full() else {
            return;
        };
        let started = Instant::now();
        while let Err(not_until) = budget.limiter.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
        budget.metrics.budgeted_write(started.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_past_the_budget_wait_and_none_is_refused() {
        let metrics = crate::metrics::Metrics::new();
        let budget = WriteBudget::default();
        budget.set(40, metrics.mirror.clone());
        let started = Instant::now();
        for _ in 0..22 {
            budget.take().await;
        }
        // Two at once (a twentieth of 40), then one every 25 ms: 20 more take about 0.5 s.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(450), "{took:?}");
        let text = metrics.encode();
        assert!(
            text.contains("clusterscope_write_budget_per_second 40"),
            "{text}"
        );
        assert!(
            text.contains("clusterscope_budgeted_writes_total 22"),
            "{text}"
        );
        // Unlimited: nothing waits.
        budget.set(0, metrics.mirror.clone());
        let started = Instant::now();
        for _ in 0..1_000 {
            budget.take().await;
        }
        assert!(started.elapsed() < Duration::from_millis(450));
    }
}
