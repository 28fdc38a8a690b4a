//! Review throughput: AdmissionReview bytes in, response bytes out, on one thread.
//!
//! The fixtures are minified first, as the API server sends them (~1.4 KB for the Node event).
//! Run: `cargo bench --bench review`.

use std::hint::black_box;
use std::sync::Arc;

use clusterscope::admission::Reviewer;
use clusterscope::classify::ScopeResolver;
use clusterscope::config::Config;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn compact(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let value: serde_json::Value =
        serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::to_vec(&value).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn bench(c: &mut Criterion) {
    let reviewer = Reviewer::new(
        Arc::new(Config::embedded_default()),
        Arc::new(ScopeResolver::new()),
    );
    let mut group = c.benchmark_group("review");
    for (label, fixture) in [
        ("node-event-patched", "kubelet-node-not-ready"),
        ("node-event-already-labelled", "already-labelled"),
        ("namespaced-event-skipped", "namespaced-pod-event"),
        ("eventsv1-converted", "eventsv1-converted-to-core"),
    ] {
        let body = compact(fixture);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{label} ({} B)", body.len()), |b| {
            b.iter(|| {
                let reviewed = reviewer
                    .review(black_box(&body))
                    .unwrap_or_else(|e| panic!("{e}"));
                black_box(reviewed.response)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
