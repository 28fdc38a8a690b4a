//! The one retry policy type, [`RetryPolicy`]: the delay after each failure and the cap on
//! tries. Three uses, one type:
//!
//! - reconnecting to what clusterscope depends on (the API server at start, the history
//!   database): [`RetryPolicy::reconnect`], 1 s doubling to 30 s, for ever, every delay
//!   jittered so that replicas started together do not retry in step;
//! - a delivery's retries, per key in its lane (`delivery::queue`): each lane's own numbers
//!   (client-go's recorder: 12 tries 10 s apart, the first sleep a random part of it; the
//!   mirror: doubling from `--retry-base`);
//! - the mirror's label patches, through the controller's work queue, as the mirror's lanes.
//!
//! kube-runtime's watchers keep their own backoff (`default_backoff`: 800 ms doubling to 30 s,
//! reset once a watch has been healthy for two minutes); a reset needs the stream's state,
//! which this type does not hold, so `follow` leaves it to kube.

use std::time::Duration;

/// How delays are spread, so that writers failing together do not all retry at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Every delay as computed.
    None,
    /// The first delay is a random part of `base` (client-go's recorder); the rest as computed.
    First,
    /// Every delay plus a random part of itself (up to twice the computed delay).
    Every,
}

/// Retry delays and the cap on tries.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failure.
    pub base: Duration,
    /// Each further failure multiplies the delay by this (1: a constant delay).
    pub factor: u32,
    pub max_delay: Duration,
    /// Tries before giving up ([`FOREVER`]: never). In a lane, a newer value of the key starts
    /// over.
    pub max_attempts: u32,
    pub jitter: Jitter,
}

/// [`RetryPolicy::max_attempts`] of a policy that never gives up.
pub const FOREVER: u32 = u32::MAX;

impl RetryPolicy {
    /// Reconnecting: 1 s, doubling, at most 30 s (each plus up to as much again), for ever.
    pub fn reconnect() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            factor: 2,
            max_delay: Duration::from_secs(30),
            max_attempts: FOREVER,
            jitter: Jitter::Every,
        }
    }

    /// The delay after `failures` failures (1 for the first).
    pub fn delay(&self, failures: u32) -> Duration {
        if failures <= 1 && self.jitter == Jitter::First {
            return self.base.mul_f64(fastrand::f64()).min(self.max_delay);
        }
        let steps = failures.saturating_sub(1).min(20);
        let delay = self
            .base
            .saturating_mul(self.factor.max(1).saturating_pow(steps))
            .min(self.max_delay);
        match self.jitter {
            Jitter::Every => delay + delay.mul_f64(fastrand::f64()),
            Jitter::None | Jitter::First => delay,
        }
    }

    /// The delays one after another, one per failure, as many as tries are allowed.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let policy = self.clone();
        (1..=self.max_attempts).map(move |failures| policy.delay(failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnecting_starts_at_a_second_doubles_and_stays_under_a_minute() {
        let delays: Vec<Duration> = RetryPolicy::reconnect().delays().take(12).collect();
        assert_eq!(delays.len(), 12, "it never gives up");
        // With jitter each delay is its step plus up to as much again.
        assert!(delays[0] >= Duration::from_secs(1) && delays[0] <= Duration::from_secs(2));
        assert!(delays[3] >= Duration::from_secs(8));
        assert!(delays[11] >= Duration::from_secs(30) && delays[11] <= Duration::from_secs(60));
        let again: Vec<Duration> = RetryPolicy::reconnect().delays().take(12).collect();
        assert_ne!(delays, again, "jittered: replicas do not retry in step");
    }

    #[test]
    fn delays_grow_by_the_factor_up_to_the_cap() {
        let p = RetryPolicy {
            base: Duration::from_secs(1),
            factor: 2,
            max_delay: Duration::from_secs(300),
            max_attempts: 12,
            jitter: Jitter::None,
        };
        assert_eq!(p.delay(1), Duration::from_secs(1));
        assert_eq!(p.delay(4), Duration::from_secs(8));
        assert_eq!(p.delay(12), Duration::from_secs(300));
        assert_eq!(
            p.delays().count(),
            12,
            "as many delays as tries are allowed"
        );
        let constant = RetryPolicy { factor: 1, ..p };
        assert_eq!(constant.delay(7), Duration::from_secs(1));
        // client-go's recorder: the first delay a random part of the base, then the base.
        let jittered = RetryPolicy {
            jitter: Jitter::First,
            ..constant
        };
        let firsts: Vec<Duration> = (0..50).map(|_| jittered.delay(1)).collect();
        assert!(firsts.iter().all(|d| *d <= Duration::from_secs(1)));
        assert!(firsts.windows(2).any(|w| w[0] != w[1]), "{firsts:?}");
        assert_eq!(jittered.delay(2), Duration::from_secs(1));
    }
}
