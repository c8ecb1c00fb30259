//! Any bytes as a policy file: a diagnostic or a policy, never a panic; a loaded policy evaluates
//! flows without panicking and enforcement agrees with `explain`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_rules::{Env, Flow, MemLoader, Name, Protocol, load_str};
use std::net::Ipv4Addr;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let loader = MemLoader::default().with("base.yaml", text.to_string());
    let Ok(loaded) = load_str("policy.yaml", text, &loader) else { return };
    let policy = loaded.config.policy;
    let env = Env::default();
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Icmp, Protocol::Http, Protocol::Https] {
        for port in [0u16, 22, 80, 443, 65535] {
            let flow = Flow {
                source: Ipv4Addr::new(198, 18, 1, 10),
                destination_ip: Some(Ipv4Addr::new(203, 0, 113, 9)),
                destination_name: Name::parse("a.example.com").ok(),
                port,
                protocol,
                host_port: None,
            };
            let mut explained = policy.explain(&flow, &env);
            explained.trace.clear();
            assert_eq!(policy.decide(&flow, &env), explained);
        }
    }
});
