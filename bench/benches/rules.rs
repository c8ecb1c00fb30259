//! Policy engine speed: load (parse + validate + compile) of large policies, and per-flow evaluation
//! at 10 and 10,000 rules — with the trace `explain` prints and without (enforcement).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis_bench::synthetic_policy;
use portcullis_rules::{Env, Flow, MemLoader, Name, Protocol, load_str};
use std::hint::black_box;
use std::net::Ipv4Addr;

fn load(n: usize) -> portcullis_rules::Policy {
    load_str("synthetic.yaml", &synthetic_policy(n), &MemLoader::default())
        .expect("synthetic policy loads")
        .config
        .policy
}

fn bench_compile(c: &mut Criterion) {
    let mut g = c.benchmark_group("compile");
    g.sample_size(10);
    for n in [10usize, 1_000, 10_000] {
        let text = synthetic_policy(n);
        g.bench_with_input(BenchmarkId::from_parameter(n), &text, |b, text| {
            b.iter(|| load_str("synthetic.yaml", black_box(text), &MemLoader::default()).expect("loads"))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("tables");
    g.sample_size(10);
    for n in [10usize, 10_000] {
        let policy = load(n);
        g.bench_function(BenchmarkId::new("fast_path_build", n), |b| {
            b.iter(|| black_box(&policy).fast_path())
        });
    }
    g.finish();
}

fn flows() -> Vec<(&'static str, Flow)> {
    let src = Ipv4Addr::new(198, 18, 1, 10);
    vec![
        // Decided by the last network rules or by nothing: the linear evaluator's worst cases.
        (
            "network-miss",
            Flow {
                source: src,
                destination_ip: Some(Ipv4Addr::new(198, 51, 100, 1)),
                destination_name: None,
                port: 22,
                protocol: Protocol::Tcp,
                host_port: None,
            },
        ),
        (
            "application-last",
            Flow {
                source: src,
                destination_ip: None,
                destination_name: Name::parse("x.tenant3997.example.net").ok(),
                port: 443,
                protocol: Protocol::Https,
                host_port: None,
            },
        ),
        (
            "network-first",
            Flow {
                source: src,
                destination_ip: Some(Ipv4Addr::new(203, 0, 0, 9)),
                destination_name: None,
                port: 1000,
                protocol: Protocol::Tcp,
                host_port: None,
            },
        ),
    ]
}

fn bench_evaluate(c: &mut Criterion) {
    let mut g = c.benchmark_group("evaluate");
    for n in [10usize, 10_000] {
        let policy = load(n);
        let fast = policy.fast_path();
        let env = Env::default();
        for (name, flow) in flows() {
            g.bench_with_input(BenchmarkId::new(format!("decide/{name}"), n), &flow, |b, f| {
                b.iter(|| policy.decide(black_box(f), &env))
            });
            g.bench_with_input(BenchmarkId::new(format!("decide_fast/{name}"), n), &flow, |b, f| {
                b.iter(|| policy.decide_fast(&fast, black_box(f), &env))
            });
            g.bench_with_input(BenchmarkId::new(format!("explain/{name}"), n), &flow, |b, f| {
                b.iter(|| policy.explain(black_box(f), &env))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_compile, bench_evaluate);
criterion_main!(benches);
