//! Synthetic policies of a given size for the benches: AKS-like rule mixes with distinct addresses,
//! ports and names, so no rule shadows the others and lookups must really search.

use std::fmt::Write as _;

/// A policy with `n` rules: ~60 % network rules (allow and deny collections interleaved), ~40 %
/// application rules (exact names and wildcards), 100 rules per collection, 10 collections per group.
pub fn synthetic_policy(n: usize) -> String {
    let mut s = String::from("policy:\n  ipGroups:\n    nodes: [198.18.0.0/16]\n  ruleCollectionGroups:\n");
    let per_rc = 100;
    let net = n * 6 / 10;
    let app = n - net;
    let mut emitted = 0;
    let mut group = 0;
    while emitted < n {
        group += 1;
        let _ = write!(
            s,
            "    - name: g{group}\n      priority: {}\n      ruleCollections:\n",
            100 + group
        );
        for c in 0..10 {
            if emitted >= n {
                break;
            }
            let is_net = emitted < net;
            let count = per_rc.min(if is_net { net - emitted } else { n - emitted });
            let action = if c % 3 == 2 { "Deny" } else { "Allow" };
            let _ = write!(
                s,
                "      - ruleCollectionType: FirewallPolicyFilterRuleCollection\n        name: c{group}-{c}\n        priority: {}\n        action: {{type: {action}}}\n        rules:\n",
                100 + c
            );
            for _ in 0..count {
                let i = emitted;
                if is_net {
                    let (a, b) = ((i / 250) % 250, i % 250);
                    let port = 1000 + (i % 30000);
                    let _ = writeln!(
                        s,
                        "          - {{ruleType: NetworkRule, name: n{i}, ipProtocols: [TCP, UDP], sourceIpGroups: [nodes], destinationAddresses: [\"203.{a}.{b}.0/24\"], destinationPorts: [\"{port}\", \"{}-{}\"]}}",
                        port + 40000 - 30000,
                        port + 40000 - 30000 + 5
                    );
                } else {
                    let j = i - net;
                    let target = match j % 3 {
                        0 => format!("svc{j}.example.com"),
                        1 => format!("*.tenant{j}.example.net"),
                        _ => format!("*api{j}.example.org"),
                    };
                    let _ = writeln!(
                        s,
                        "          - {{ruleType: ApplicationRule, name: a{i}, sourceIpGroups: [nodes], protocols: [{{protocolType: Https, port: 443}}], targetFqdns: [\"{target}\"]}}"
                    );
                }
                emitted += 1;
            }
        }
    }
    let _ = app;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_policies_load_with_the_requested_size() {
        for n in [10, 1000] {
            let text = synthetic_policy(n);
            let loaded = portcullis_rules::load_str("synthetic.yaml", &text, &portcullis_rules::MemLoader::default())
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(loaded.config.policy.rules.len(), n);
        }
    }
}
