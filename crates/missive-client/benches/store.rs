//! The client's local cost per message: the send path's write transaction
//! (load session, encrypt, store) and the receive path's (decrypt, store
//! session, history row, processed tag; then mark shown). The network is
//! not involved. Figures in docs/BENCHMARKS.md ("missive-client").
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use missive_client::fuzzing::Fixture;

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut fixture = Fixture::create(&dir.path().join("alice")).unwrap();
    let text = "x".repeat(100);
    c.bench_function(
        "client send: encrypt in one write transaction (100 B)",
        |b| b.iter(|| fixture.encrypt_for_bob(text.as_bytes()).unwrap()),
    );
    c.bench_function(
        "client receive: store, mark acknowledged, show (100 B)",
        |b| {
            b.iter_custom(|iters| {
                let envelopes: Vec<_> = (0..iters).map(|_| fixture.next_from_bob(&text)).collect();
                let start = Instant::now();
                for env in &envelopes {
                    fixture.receive(env).unwrap();
                }
                start.elapsed()
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
