//! Tenant Subscriptions: where they stand, and the copies written for them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::gauge_value;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// `accepted` or `refused`.
    pub state: String,
    /// `Accepted`, or the refusal's condition reason.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug)]
pub struct SubscriptionMetrics {
    standing: Family<SubscriptionLabels, Gauge>,
    deliveries: Family<OutcomeLabels, Counter>,
}

impl SubscriptionMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let standing = Family::<SubscriptionLabels, Gauge>::default();
        registry.register(
            "subscriptions",
            "Tenant Subscriptions by state (accepted, refused) and condition reason",
            standing.clone(),
        );
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "subscription_deliveries",
            "Subscription copies by outcome: delivered (written), deferred (held back by the namespace's deliveriesPerSecond, planned again a second later)",
            deliveries.clone(),
        );
        for outcome in ["delivered", "deferred"] {
            drop(deliveries.get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            }));
        }
        SubscriptionMetrics {
            standing,
            deliveries,
        }
    }

    /// How many subscriptions stand where: (state, reason, how many), every reason given (a
    /// reason none has now reads 0).
    pub fn standing(&self, counts: &[(&str, &str, usize)]) {
        for (state, reason, n) in counts {
            self.standing
                .get_or_create(&SubscriptionLabels {
                    state: (*state).to_owned(),
                    reason: (*reason).to_owned(),
                })
                .set(gauge_value(*n));
        }
    }

    /// `n` subscription copies with `outcome` (`delivered`, `deferred`).
    pub fn deliveries(&self, outcome: &str, n: usize) {
        self.deliveries
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc_by(n as u64);
    }
}
