//! What a subscription's status says: `Accepted` (within the admin's ceiling, or the refusal's
//! reason and message), `Ready` (delivering), the generation they speak of, and the copies
//! delivered. Conditions keep their transition time while their status stays the same, as
//! `meta.SetStatusCondition` does.

use std::time::SystemTime;

use super::{Condition, Refusal, Subscription, SubscriptionSpec, SubscriptionStatus};

/// The status `subscription` should have, judged `verdict`, with `delivered` copies in total
/// (the last at `last`), at `now`.
pub fn desired(
    subscription: &Subscription,
    verdict: &Result<(), Refusal>,
    delivered: u64,
    last: Option<SystemTime>,
    now: SystemTime,
) -> SubscriptionStatus {
    let generation = subscription.metadata.generation;
    let old = subscription.status.clone().unwrap_or_default();
    let (accepted, ready) = match verdict {
        Ok(()) => (
            (
                "True",
                "Accepted",
                "within the cluster admin's ceiling".to_owned(),
            ),
            ("True", "Delivering", delivering(&subscription.spec)),
        ),
        Err(refusal) => (
            ("False", refusal.reason(), refusal.to_string()),
            (
                "False",
                "NotAccepted",
                "nothing is delivered for it: see the Accepted condition".to_owned(),
            ),
        ),
    };
    let conditions = [("Accepted", accepted), ("Ready", ready)]
        .into_iter()
        .map(|(type_, (status, reason, message))| {
            let kept = old
                .conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status);
            Condition {
                type_: type_.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message,
                last_transition_time: kept
                    .map_or_else(|| rfc3339(now), |c| c.last_transition_time.clone()),
                observed_generation: generation,
            }
        })
        .collect();
    SubscriptionStatus {
        observed_generation: generation,
        conditions,
        delivered,
        last_delivery: last.map(rfc3339).or(old.last_delivery),
    }
}

/// What an accepted subscription delivers, in words.
fn delivering(spec: &SubscriptionSpec) -> String {
    let kinds = if spec.kinds.is_empty() {
        format!("every kind relation {} covers", spec.relation.as_str())
    } else {
        spec.kinds.join(", ")
    };
    let types = match spec.types.as_slice() {
        [one] => format!("{} ", one.as_str()),
        _ => String::new(),
    };
    let reasons = if spec.reasons.is_empty() {
        String::new()
    } else {
        format!(" with reason {}", spec.reasons.join(" or "))
    };
    format!(
        "{types}events about {kinds}{reasons} tied to this namespace ({}) are copied here",
        match spec.relation {
            super::Relation::Owned => "objects it owns",
            super::Relation::Nodes => "the Nodes running its pods",
        }
    )
}

/// `2026-12-05T18:00:00Z`, as Kubernetes writes times (seconds).
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t).replace_nanosecond(0);
    match t {
        Ok(t) => t
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscription::{EventType, Relation};
    use std::time::Duration;

    fn subscription(generation: i64, status: Option<SubscriptionStatus>) -> Subscription {
        let mut s = Subscription::new(
            "node-warnings",
            SubscriptionSpec {
                relation: Relation::Nodes,
                kinds: vec!["Node".into()],
                types: vec![EventType::Warning],
                reasons: vec!["Failed*".into()],
                history: false,
            },
        );
        s.metadata.generation = Some(generation);
        s.status = status;
        s
    }

    #[test]
    fn accepted_and_ready_speak_of_the_generation_and_say_what_is_delivered() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let s = desired(&subscription(3, None), &Ok(()), 0, None, now);
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.conditions.len(), 2);
        assert!(s.conditions.iter().all(|c| c.status == "True"
            && c.observed_generation == Some(3)
            && c.last_transition_time == "2027-01-15T08:00:00Z"));
        assert_eq!(
            s.conditions[1].message,
            "Warning events about Node with reason Failed* tied to this namespace (the Nodes running its pods) are copied here"
        );
    }

    #[test]
    fn a_refusal_gives_its_reason_and_transition_times_move_only_on_change() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t1 = t0 + Duration::from_secs(60);
        let first = desired(&subscription(1, None), &Ok(()), 0, None, t0);
        let same = desired(
            &subscription(2, Some(first.clone())),
            &Ok(()),
            5,
            Some(t1),
            t1,
        );
        assert_eq!(
            same.conditions[0].last_transition_time,
            first.conditions[0].last_transition_time
        );
        assert_eq!(same.delivered, 5);
        assert_eq!(same.last_delivery.as_deref(), Some("2027-01-15T08:01:00Z"));
        let refused = desired(
            &subscription(3, Some(same)),
            &Err(Refusal::History),
            5,
            None,
            t1,
        );
        let accepted = &refused.conditions[0];
        assert_eq!(
            (accepted.status.as_str(), accepted.reason.as_str()),
            ("False", "HistoryNotAllowed")
        );
        assert_eq!(accepted.last_transition_time, "2027-01-15T08:01:00Z");
        assert_eq!(refused.conditions[1].reason, "NotAccepted");
        // The last delivery stays known.
        assert_eq!(
            refused.last_delivery.as_deref(),
            Some("2027-01-15T08:01:00Z")
        );
    }
}
