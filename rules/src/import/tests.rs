use serde_json::{Value, json};
use yaml_rust2::YamlLoader;

use super::arm::{Evaluator, ExprError};
use super::*;

fn fixture(name: &str) -> String {
    let path = format!("{}/../tests/fixtures/import/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).expect("fixture is JSON")
}

const STRICT: ImportOptions = ImportOptions {
    skip_unsupported: false,
};
const SKIP: ImportOptions = ImportOptions { skip_unsupported: true };

fn run(docs: &[(&str, &Value)], opts: &ImportOptions) -> Result<Imported, ImportError> {
    let docs: Vec<(String, String)> = docs.iter().map(|(f, v)| ((*f).to_owned(), v.to_string())).collect();
    import_documents(&docs, opts)
}

fn ok(docs: &[(&str, &Value)]) -> Imported {
    run(docs, &STRICT).unwrap_or_else(|e| panic!("import failed: {e}"))
}

fn fail(docs: &[(&str, &Value)]) -> String {
    match run(docs, &STRICT) {
        Ok(i) => panic!("import should fail; got:\n{}", i.yaml),
        Err(e) => e.to_string(),
    }
}

/// The YAML without its leading comment lines.
fn body(yaml: &str) -> String {
    yaml.lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Parses the output with our YAML parser and returns it as JSON, for structural assertions.
fn parsed(yaml: &str) -> Value {
    fn conv(y: &yaml_rust2::Yaml) -> Value {
        use yaml_rust2::Yaml;
        match y {
            Yaml::String(s) => Value::String(s.clone()),
            Yaml::Integer(i) => Value::from(*i),
            Yaml::Boolean(b) => Value::Bool(*b),
            Yaml::Array(a) => Value::Array(a.iter().map(conv).collect()),
            Yaml::Hash(h) => Value::Object(
                h.iter()
                    .map(|(k, v)| (k.as_str().expect("string key").to_owned(), conv(v)))
                    .collect(),
            ),
            Yaml::Null => Value::Null,
            other => panic!("unexpected YAML node {other:?}"),
        }
    }
    let docs = YamlLoader::load_from_str(yaml).expect("output parses as YAML");
    conv(&docs[0])
}

fn rule_names(out: &Value, rcg: usize, rc: usize) -> Vec<String> {
    out["policy"]["ruleCollectionGroups"][rcg]["ruleCollections"][rc]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| r["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// ------------------------------------------------------------------------------ small builders

fn policy(name: &str, props: Value) -> Value {
    json!({"name": name, "type": "Microsoft.Network/firewallPolicies", "properties": props})
}

fn rcg(name: &str, priority: i64, collections: Value) -> Value {
    json!({"name": name, "properties": {"priority": priority, "ruleCollections": collections}})
}

fn filter_rc(name: &str, priority: i64, action: &str, rules: Value) -> Value {
    json!({"ruleCollectionType": "FirewallPolicyFilterRuleCollection", "name": name,
           "priority": priority, "action": {"type": action}, "rules": rules})
}

fn net_rule(name: &str) -> Value {
    json!({"ruleType": "NetworkRule", "name": name, "ipProtocols": ["TCP"],
           "sourceAddresses": ["10.42.1.0/24"], "destinationAddresses": ["192.0.2.1"],
           "destinationPorts": ["443"]})
}

fn app_rule(name: &str, extra: Value) -> Value {
    let mut r = json!({"ruleType": "ApplicationRule", "name": name,
                       "sourceAddresses": ["10.42.1.0/24"],
                       "protocols": [{"protocolType": "Https", "port": 443}],
                       "targetFqdns": ["www.contoso.com"]});
    if let (Value::Object(r), Value::Object(extra)) = (&mut r, extra) {
        for (k, v) in extra {
            r.insert(k, v);
        }
    }
    r
}

/// One policy plus one group with one collection holding `rules`.
fn simple(action: &str, rules: Value) -> Value {
    json!([
        policy("fwp-lab", json!({"threatIntelMode": "Alert"})),
        rcg("rcg-lab", 200, json!([filter_rc("rc-lab", 100, action, rules)]))
    ])
}

// ------------------------------------------------------------------------------ input shapes

#[test]
fn arm_export_matches_expected_yaml_exactly() {
    let out = import_documents(
        &[("aks-arm-export.json".into(), fixture("aks-arm-export.json"))],
        &STRICT,
    )
    .expect("import");
    assert_eq!(out.yaml, fixture("aks-expected.yaml"));
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
}

#[test]
fn rest_and_azcli_exports_give_the_same_yaml() {
    let expected = fixture("aks-expected.yaml");
    for file in ["aks-rest.json", "aks-azcli.json"] {
        let out = import_documents(&[(file.into(), fixture(file))], &STRICT).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            out.yaml.lines().next(),
            Some(format!("# Imported from {file} by portcullis import").as_str())
        );
        assert_eq!(body(&out.yaml), body(&expected), "{file}");
        // Only the first (source) comment line differs.
        assert_eq!(
            out.yaml.lines().skip(1).collect::<Vec<_>>(),
            expected.lines().skip(1).collect::<Vec<_>>()
        );
        assert!(out.warnings.is_empty(), "{file}: {:?}", out.warnings);
    }
}

#[test]
fn output_round_trips_through_yaml_rust2() {
    let out = ok(&[("rest.json", &fixture_json("aks-rest.json"))]);
    let v = parsed(&out.yaml);
    let groups = v["policy"]["ruleCollectionGroups"].as_array().expect("groups");
    assert_eq!(groups.len(), 3);
    let rule = &groups[1]["ruleCollections"][0]["rules"][0];
    assert_eq!(rule["destinationPorts"], json!(["1194"]), "ports stay strings");
    assert_eq!(
        groups[2]["ruleCollections"][0]["rules"][0]["protocols"][0],
        json!({"protocolType": "Http", "port": 80})
    );
    assert_eq!(
        groups[0]["ruleCollections"][0]["rules"][0]["translatedPort"],
        json!("443")
    );
}

#[test]
fn several_documents_are_merged() {
    let rest = fixture_json("aks-rest.json");
    let items = rest.as_array().expect("array");
    let names: Vec<String> = (0..items.len()).map(|i| format!("part{i}.json")).collect();
    let docs: Vec<(&str, &Value)> = names.iter().map(String::as_str).zip(items).collect();
    let out = ok(&docs);
    assert_eq!(body(&out.yaml), body(&fixture("aks-expected.yaml")));
    assert!(out.yaml.starts_with(
        "# Imported from part0.json, part1.json, part2.json, part3.json, part4.json by portcullis import\n"
    ));
}

#[test]
fn list_response_with_value_array() {
    let rest = fixture_json("aks-rest.json");
    let list = json!({"value": rest, "nextLink": "https://management.azure.com/next?page=2"});
    let out = ok(&[("list.json", &list)]);
    assert_eq!(body(&out.yaml), body(&fixture("aks-expected.yaml")));
    assert_eq!(out.warnings.len(), 1);
    assert!(out.warnings[0].starts_with("list.json: (top level): the list response is paged"));
}

#[test]
fn policy_with_inline_rule_collection_groups_as_in_the_spec() {
    // The behaviour spec's readable shape: `ruleCollectionGroups` next to `properties`.
    let rest = fixture_json("aks-rest.json");
    let items = rest.as_array().expect("array");
    let mut pol = items[0].clone();
    pol["properties"]
        .as_object_mut()
        .expect("props")
        .remove("ruleCollectionGroups");
    let inline: Vec<Value> = items[1..4]
        .iter()
        .map(|r| json!({"name": r["name"], "properties": r["properties"]}))
        .collect();
    pol["ruleCollectionGroups"] = Value::Array(inline.clone());
    let out = ok(&[("spec.json", &json!([pol, items[4]]))]);
    assert_eq!(body(&out.yaml), body(&fixture("aks-expected.yaml")));

    // Inline under properties, flattened (no properties wrapper at all).
    let mut flat = pol.clone();
    let flat_obj = flat.as_object_mut().expect("obj");
    flat_obj.remove("ruleCollectionGroups");
    let mut props = flat_obj.remove("properties").expect("props");
    props["ruleCollectionGroups"] = json!(
        items[1..4]
            .iter()
            .map(|r| {
                let mut m = r["properties"].clone();
                m["name"] = r["name"].clone();
                m
            })
            .collect::<Vec<_>>()
    );
    for (k, v) in props.as_object().expect("props") {
        flat_obj.insert(k.clone(), v.clone());
    }
    let out = ok(&[("flat.json", &json!([flat, items[4]]))]);
    assert_eq!(body(&out.yaml), body(&fixture("aks-expected.yaml")));
}

#[test]
fn arm_child_resources_nested_under_the_policy() {
    let mut arm = fixture_json("aks-arm-export.json");
    let resources = arm["resources"].as_array().expect("resources").clone();
    let mut pol = resources[0].clone();
    let mut children = Vec::new();
    let mut rest = vec![resources[1].clone()];
    for r in &resources[2..] {
        let mut c = r.clone();
        let name = c["name"].as_str().expect("name").to_owned();
        // "[concat(parameters('…'), '/rcg-aks-network')]" → relative "rcg-aks-network"
        let short = name
            .rsplit('/')
            .next()
            .expect("segment")
            .trim_end_matches(&['\'', ')', ']'][..])
            .to_owned();
        c["name"] = json!(short);
        c["type"] = json!("ruleCollectionGroups");
        children.push(c);
    }
    pol["resources"] = Value::Array(children);
    rest.insert(0, pol);
    arm["resources"] = Value::Array(rest);
    let out = ok(&[("aks-arm-export.json", &arm)]);
    assert_eq!(out.yaml, fixture("aks-expected.yaml"));
}

#[test]
fn arm_language_version_2_symbolic_resources_and_conditions() {
    let arm = json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "languageVersion": "2.0",
        "contentVersion": "1.0.0.0",
        "parameters": {"deployDraft": {"type": "bool", "defaultValue": false}},
        "resources": {
            "pol": {"type": "Microsoft.Network/firewallPolicies", "apiVersion": "2024-05-01",
                    "name": "fwp-lab", "location": "[resourceGroup().location]",
                    "properties": {"threatIntelMode": "Off"}},
            "other": {"type": "Microsoft.Network/publicIPAddresses", "apiVersion": "2024-05-01",
                      "name": "pip-fw", "properties": {}},
            "skipped": {"condition": "[parameters('deployDraft')]",
                        "type": "Microsoft.Network/firewallPolicies", "name": "fwp-draft",
                        "properties": {}},
            "kv": {"existing": true, "type": "Microsoft.Network/firewallPolicies", "name": "fwp-existing"},
            "grp": {"type": "Microsoft.Network/firewallPolicies/ruleCollectionGroups",
                    "name": "fwp-lab/rcg-lab",
                    "properties": {"priority": 100, "ruleCollections": []}}
        }
    });
    let out = ok(&[("v2.json", &arm)]);
    let v = parsed(&out.yaml);
    assert_eq!(v["policy"]["threatIntelMode"], "Off");
    assert_eq!(v["policy"]["ruleCollectionGroups"][0]["name"], "rcg-lab");
    assert_eq!(
        out.warnings,
        vec![
            "v2.json: resources.other: ignored resource pip-fw of type \
             Microsoft.Network/publicIPAddresses"
        ]
    );
}

#[test]
fn rule_collection_groups_without_a_policy() {
    let rest = fixture_json("aks-rest.json");
    let items = rest.as_array().expect("array");
    let out = ok(&[("rcgs.json", &json!([items[2], items[3], items[4]]))]);
    let v = parsed(&out.yaml);
    assert!(out.yaml.contains("# No firewall policy in the input"));
    let pol = v["policy"].as_object().expect("policy");
    assert_eq!(pol.keys().collect::<Vec<_>>(), vec!["ipGroups", "ruleCollectionGroups"]);
    assert_eq!(v["policy"]["ruleCollectionGroups"][0]["name"], "rcg-aks-network");
    assert!(out.warnings[0].contains("no firewall policy in the input"));
}

#[test]
fn shapes_we_cannot_classify_are_errors() {
    assert_eq!(
        fail(&[("x.json", &json!({"foo": 1}))]),
        "x.json: (top level): cannot tell what this object is: expected a firewall policy, a \
         rule collection group, an IP group, an ARM template, an array of those, or a \
         {\"value\": [...]} list"
    );
    assert!(fail(&[("x.json", &json!([1]))]).starts_with("x.json: [0]: expected a JSON object"));
    assert_eq!(
        fail(&[("x.json", &json!([]))]),
        "no firewall policy or rule collection group found in x.json"
    );
    let params = json!({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
                        "parameters": {}});
    assert!(fail(&[("p.json", &params)]).contains("this is an ARM parameters file"));
}

// ------------------------------------------------------------------------------ policies and groups

#[test]
fn exactly_one_policy() {
    let a = policy("fwp-a", json!({}));
    let b = policy("fwp-b", json!({}));
    let msg = fail(&[("a.json", &a), ("b.json", &b)]);
    assert_eq!(
        msg,
        "found 2 firewall policies (a.json: (top level) (fwp-a); b.json: (top level) (fwp-b)); \
         import exactly one policy per run (a base policy is imported into its own file)"
    );
}

#[test]
fn rule_collection_group_of_a_foreign_policy_is_an_error() {
    let mut arm = fixture_json("aks-arm-export.json");
    arm["resources"][3]["name"] = json!("[concat('fwp-other', '/rcg-aks-dnat')]");
    assert_eq!(
        fail(&[("arm.json", &arm)]),
        "arm.json: resources[3]: rule collection group \"rcg-aks-dnat\" belongs to firewall \
         policy \"fwp-other\", not to \"fwp-aks-egress\" (the policy at arm.json: resources[0])"
    );

    let mut rest = fixture_json("aks-rest.json");
    rest[2]["id"] = json!(
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Network/firewallPolicies/fwp-other/ruleCollectionGroups/rcg-aks-network"
    );
    assert!(fail(&[("rest.json", &rest)]).starts_with(
        "rest.json: [2]: rule collection group \"rcg-aks-network\" belongs to firewall policy \"fwp-other\""
    ));

    // Without a policy, the groups must still agree among themselves.
    let a = json!({"name": "fwp-a/rcg-1", "type": "Microsoft.Network/firewallPolicies/ruleCollectionGroups",
                   "properties": {"priority": 100}});
    let b = json!({"name": "fwp-b/rcg-2", "type": "Microsoft.Network/firewallPolicies/ruleCollectionGroups",
                   "properties": {"priority": 200}});
    assert!(fail(&[("g.json", &json!([a, b]))]).contains("belongs to firewall policy \"fwp-b\", not to \"fwp-a\""));

    // Policy names compare case-insensitively, as Azure's do.
    let mut arm = fixture_json("aks-arm-export.json");
    arm["resources"][3]["name"] = json!("FWP-AKS-EGRESS/rcg-aks-dnat");
    ok(&[("arm.json", &arm)]);
}

#[test]
fn duplicate_rule_collection_groups_are_errors() {
    let rest = fixture_json("aks-rest.json");
    let msg = fail(&[("a.json", &rest), ("b.json", &rest[2])]);
    assert_eq!(
        msg,
        "b.json: (top level): rule collection group \"rcg-aks-network\" is defined twice (also \
         at a.json: [2])"
    );
}

#[test]
fn missing_referenced_rule_collection_group_is_a_warning() {
    let rest = fixture_json("aks-rest.json");
    let out = ok(&[("rest.json", &json!([rest[0], rest[1], rest[3], rest[4]]))]);
    assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
    assert!(out.warnings[0].starts_with(
        "rest.json: [0].properties.ruleCollectionGroups[1]: the policy references rule \
         collection group \"rcg-aks-network\", which is not in the input"
    ));
}

#[test]
fn base_policy_becomes_a_file_reference_with_a_warning() {
    let p = policy(
        "fwp-child",
        json!({"basePolicy": {"id": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Network/firewallPolicies/parent-policy"}}),
    );
    let out = ok(&[("child.json", &p)]);
    assert_eq!(parsed(&out.yaml)["policy"]["basePolicy"], "parent-policy.yaml");
    assert_eq!(out.warnings.len(), 1);
    assert!(out.warnings[0].starts_with(
        "child.json: properties.basePolicy: the policy inherits from base policy \
         \"parent-policy\": import the parent policy (/subscriptions/0/"
    ));
    assert!(out.warnings[0].ends_with(") into parent-policy.yaml"));
}

#[test]
fn policy_settings_are_canonicalised_and_empty_ones_dropped() {
    let p = policy(
        "fwp-lab",
        json!({
            "threatIntelMode": "alert",
            "threatIntelWhitelist": {"ipAddresses": ["192.0.2.7"], "fqdns": []},
            "dnsSettings": {"servers": ["10.42.0.4"], "enableProxy": false},
            "snat": {"privateRanges": [], "autoLearnPrivateRanges": "disabled"},
            "intrusionDetection": {"mode": "Off", "configuration": {"signatureOverrides": []}},
            "explicitProxy": {"enableExplicitProxy": false, "httpPort": 8080},
            "transportSecurity": {"certificateAuthority": null},
            "sql": {"allowSqlRedirect": false},
            "insights": {"isEnabled": true, "retentionDays": 30},
            "sku": {"tier": "Basic"},
            "size": "0.1 MB",
            "unknownButNull": null,
            "unknownButEmpty": []
        }),
    );
    let out = ok(&[("p.json", &p)]);
    assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    assert_eq!(
        body(&out.yaml),
        "policy:
  threatIntelMode: Alert
  threatIntelWhitelist:
    ipAddresses: [192.0.2.7]
  dnsSettings:
    enableProxy: false
    servers: [10.42.0.4]
  snat:
    autoLearnPrivateRanges: Disabled
  ruleCollectionGroups: []
"
    );
    let bad = policy("fwp-lab", json!({"threatIntelMode": "Block"}));
    assert_eq!(
        fail(&[("p.json", &bad)]),
        "p.json: properties.threatIntelMode: unknown threatIntelMode \"Block\" (expected Off, \
         Alert, Deny)"
    );
}

// ------------------------------------------------------------------------------ rules

#[test]
fn ordering_by_priority_with_stable_ties_and_rules_in_input_order() {
    let doc = json!([
        policy("fwp-lab", json!({})),
        rcg("g-300", 300, json!([])),
        rcg(
            "g-100-first",
            100,
            json!([
                filter_rc(
                    "rc-500",
                    500,
                    "Allow",
                    json!([net_rule("z"), net_rule("a"), net_rule("m")])
                ),
                filter_rc("rc-200-first", 200, "Allow", json!([])),
                filter_rc("rc-200-second", 200, "Deny", json!([])),
                filter_rc("rc-100", 100, "Allow", json!([]))
            ])
        ),
        rcg("g-100-second", 100, json!([])),
        rcg("g-65000", 65000, json!([]))
    ]);
    let v = parsed(&ok(&[("o.json", &doc)]).yaml);
    let groups: Vec<&str> = v["policy"]["ruleCollectionGroups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| g["name"].as_str().expect("name"))
        .collect();
    assert_eq!(groups, ["g-100-first", "g-100-second", "g-300", "g-65000"]);
    let rcs: Vec<&str> = v["policy"]["ruleCollectionGroups"][0]["ruleCollections"]
        .as_array()
        .expect("rcs")
        .iter()
        .map(|g| g["name"].as_str().expect("name"))
        .collect();
    assert_eq!(rcs, ["rc-100", "rc-200-first", "rc-200-second", "rc-500"]);
    assert_eq!(rule_names(&v, 0, 3), ["z", "a", "m"]);
}

#[test]
fn enum_casing_is_canonicalised() {
    let doc = json!([
        policy("fwp-lab", json!({"threatIntelMode": "DENY"})),
        rcg(
            "rcg",
            100,
            json!([
                {"ruleCollectionType": "firewallpolicynatrulecollection", "name": "dnat",
                 "priority": 100, "action": {"type": "Dnat"},
                 "rules": [{"ruleType": "natrule", "name": "n", "ipProtocols": ["tcp", "Udp"],
                            "sourceAddresses": ["*"], "destinationAddresses": ["198.51.100.1"],
                            "destinationPorts": [8443], "translatedAddress": "10.42.1.100",
                            "translatedPort": 443}]},
                filter_rc("net", 200, "ALLOW", json!([
                    {"ruleType": "NETWORKRULE", "name": "any", "ipProtocols": ["any", "icmp"],
                     "sourceAddresses": ["*"], "destinationAddresses": ["*"], "destinationPorts": ["*"]}
                ])),
                filter_rc("app", 300, "deny", json!([
                    {"ruleType": "applicationRule", "name": "a", "sourceAddresses": ["*"],
                     "protocols": [{"protocolType": "HTTPS", "port": "8443"}, {"protocolType": "http", "port": 80}],
                     "targetFqdns": ["*.example.com"]}
                ]))
            ])
        )
    ]);
    let out = ok(&[("e.json", &doc)]);
    let v = parsed(&out.yaml);
    assert_eq!(v["policy"]["threatIntelMode"], "Deny");
    let rcs = &v["policy"]["ruleCollectionGroups"][0]["ruleCollections"];
    assert_eq!(rcs[0]["ruleCollectionType"], "FirewallPolicyNatRuleCollection");
    assert_eq!(rcs[0]["action"]["type"], "DNAT");
    assert_eq!(rcs[0]["rules"][0]["ruleType"], "NatRule");
    assert_eq!(rcs[0]["rules"][0]["ipProtocols"], json!(["TCP", "UDP"]));
    assert_eq!(rcs[0]["rules"][0]["destinationPorts"], json!(["8443"]));
    assert_eq!(rcs[0]["rules"][0]["translatedPort"], json!("443"));
    assert_eq!(rcs[1]["action"]["type"], "Allow");
    assert_eq!(rcs[1]["rules"][0]["ruleType"], "NetworkRule");
    assert_eq!(rcs[1]["rules"][0]["ipProtocols"], json!(["Any", "ICMP"]));
    assert_eq!(rcs[2]["action"]["type"], "Deny");
    assert_eq!(
        rcs[2]["rules"][0]["protocols"],
        json!([{"protocolType": "Https", "port": 8443}, {"protocolType": "Http", "port": 80}])
    );

    let bad = simple(
        "Allow",
        json!([{"ruleType": "NetworkRule", "name": "x", "ipProtocols": ["SCTP"]}]),
    );
    assert_eq!(
        fail(&[("b.json", &bad)]),
        "b.json: [1].properties.ruleCollections[0].rules[0].ipProtocols[0]: unknown ipProtocols \
         value \"SCTP\" (expected TCP, UDP, ICMP, Any)"
    );
    let bad = simple("Block", json!([]));
    assert!(fail(&[("b.json", &bad)]).contains("unknown action type \"Block\" (expected Allow, Deny, DNAT)"));
}

#[test]
fn rule_fields_order_and_empty_values() {
    let doc = simple(
        "Allow",
        json!([
            {"destinationPorts": ["53"], "destinationFqdns": [], "name": "dns", "ruleType": "NetworkRule",
             "description": "", "sourceIpGroups": [], "ipProtocols": ["UDP", "TCP"],
             "destinationIpGroups": null, "sourceAddresses": ["10.42.0.0/16"],
             "destinationAddresses": ["AzureCloud.westeurope"]},
            app_rule("web", json!({"description": "with headers", "httpHeadersToInsert": [
                {"headerName": "X-Tenant", "headerValue": "lab"}], "destinationAddresses": ["192.0.2.9"],
                "fqdnTags": ["WindowsUpdate"]}))
        ]),
    );
    let out = ok(&[("r.json", &doc)]);
    assert!(
        out.yaml.contains(
            "            - ruleType: NetworkRule
              name: dns
              ipProtocols: [UDP, TCP]
              sourceAddresses: [10.42.0.0/16]
              destinationAddresses: [AzureCloud.westeurope]
              destinationPorts: [\"53\"]
            - ruleType: ApplicationRule
              name: web
              description: with headers
              sourceAddresses: [10.42.1.0/24]
              protocols:
                - protocolType: Https
                  port: 443
              targetFqdns: [www.contoso.com]
              fqdnTags: [WindowsUpdate]
              destinationAddresses: [192.0.2.9]
              httpHeadersToInsert:
                - headerName: X-Tenant
                  headerValue: lab
"
        ),
        "{}",
        out.yaml
    );
}

#[test]
fn ip_group_ids_become_names() {
    let doc = json!([
        policy("fwp-lab", json!({})),
        {"name": "IPG-Nodes", "type": "Microsoft.Network/ipGroups",
         "properties": {"ipAddresses": ["10.42.1.0/24", "10.42.2.0-10.42.2.31"]}},
        rcg("rcg", 100, json!([filter_rc("rc", 100, "Allow", json!([
            {"ruleType": "NetworkRule", "name": "n", "ipProtocols": ["TCP"],
             "sourceIpGroups": ["/subscriptions/0/resourceGroups/rg/providers/Microsoft.Network/ipGroups/ipg-nodes"],
             "destinationIpGroups": ["ipg-elsewhere",
                "/subscriptions/0/resourceGroups/rg/providers/Microsoft.Network/ipGroups/ipg-elsewhere"],
             "destinationPorts": ["22"]}
        ]))]))
    ]);
    let out = ok(&[("g.json", &doc)]);
    let v = parsed(&out.yaml);
    assert_eq!(
        v["policy"]["ipGroups"],
        json!({"IPG-Nodes": ["10.42.1.0/24", "10.42.2.0-10.42.2.31"]})
    );
    let rule = &v["policy"]["ruleCollectionGroups"][0]["ruleCollections"][0]["rules"][0];
    assert_eq!(rule["sourceIpGroups"], json!(["IPG-Nodes"]));
    assert_eq!(rule["destinationIpGroups"], json!(["ipg-elsewhere", "ipg-elsewhere"]));
    assert_eq!(out.warnings.len(), 1, "warned once: {:?}", out.warnings);
    assert!(out.warnings[0].starts_with(
        "g.json: [2].properties.ruleCollections[0].rules[0].destinationIpGroups[0]: IP group \
         \"ipg-elsewhere\" is referenced but not in the input"
    ));

    let bad = simple(
        "Allow",
        json!([{"ruleType": "NetworkRule", "name": "n",
        "sourceIpGroups": ["/subscriptions/0/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/vnet"]}]),
    );
    assert!(fail(&[("b.json", &bad)]).ends_with("is not an IP group resource id"));

    let a = json!({"name": "ipg", "type": "Microsoft.Network/ipGroups", "properties": {"ipAddresses": ["10.0.0.0/8"]}});
    let b =
        json!({"name": "IPG", "type": "Microsoft.Network/ipGroups", "properties": {"ipAddresses": ["10.0.0.0/16"]}});
    let p = policy("fwp-lab", json!({}));
    assert_eq!(
        fail(&[("p.json", &p), ("a.json", &a), ("b.json", &b)]),
        "b.json: (top level): IP group \"IPG\" is defined twice with different addresses"
    );
    // The same group exported twice is fine.
    ok(&[("p.json", &p), ("a.json", &a), ("a2.json", &a)]);
}

#[test]
fn bad_values_name_the_path() {
    let doc = simple(
        "Allow",
        json!([{"ruleType": "NetworkRule", "name": "n", "sourceAddresses": "10.0.0.0/8"}]),
    );
    assert_eq!(
        fail(&[("v.json", &doc)]),
        "v.json: [1].properties.ruleCollections[0].rules[0].sourceAddresses: expected a list of strings"
    );
    let doc = json!([
        policy("fwp-lab", json!({})),
        rcg(
            "rcg",
            100,
            json!([
        {"ruleCollectionType": "FirewallPolicyFilterRuleCollection", "name": "rc",
         "priority": "high", "action": {"type": "Allow"}}])
        )
    ]);
    assert_eq!(
        fail(&[("v.json", &doc)]),
        "v.json: [1].properties.ruleCollections[0].priority: priority must be an integer"
    );
    let doc = json!({"name": "rcg", "properties": {"ruleCollections": []}});
    assert_eq!(
        fail(&[("v.json", &doc)]),
        "v.json: (top level): rule collection group \"rcg\" has no priority"
    );
    let doc = simple("Allow", json!([{"name": "n", "Name": "m", "ruleType": "NetworkRule"}]));
    assert!(fail(&[("v.json", &doc)]).contains("appears twice (with different letter case)"));
}

#[test]
fn unknown_fields_are_unsupported() {
    let doc = simple(
        "Allow",
        json!([app_rule("a", json!({"sourceServiceTags": ["Internet"]}))]),
    );
    assert_eq!(
        fail(&[("u.json", &doc)]),
        "u.json: [1].properties.ruleCollections[0].rules[0].sourceServiceTags: unknown rule field \
         `sourceServiceTags`, which portcullis does not support"
    );
    let out = run(&[("u.json", &doc)], &SKIP).expect("skip");
    assert_eq!(rule_names(&parsed(&out.yaml), 0, 0), Vec::<String>::new());
    assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
    assert!(
        out.warnings[1]
            .starts_with("u.json: [1].properties.ruleCollections[0].rules[0]: dropped rule \"a\": it has fields")
    );

    let p = policy("fwp-lab", json!({"futureSetting": {"on": true}}));
    assert_eq!(
        fail(&[("u.json", &p)]),
        "u.json: properties.futureSetting: unknown policy field `futureSetting`, which portcullis \
         does not support"
    );
    let out = run(&[("u.json", &p)], &SKIP).expect("skip");
    assert_eq!(out.warnings.len(), 1);
}

// ------------------------------------------------------------------------------ Premium / unsupported

fn premium() -> Value {
    fixture_json("premium-policy.json")
}

#[test]
fn premium_fixture_fails_on_idps_first() {
    assert_eq!(
        fail(&[("premium.json", &premium())]),
        "premium.json: [0].properties.intrusionDetection: intrusionDetection mode Deny (IDPS, \
         Premium), which portcullis does not support"
    );
}

#[test]
fn premium_fixture_with_skip_unsupported() {
    let out = run(&[("premium-policy.json", &premium())], &SKIP).expect("skip");
    assert_eq!(out.yaml, fixture("premium-skip-expected.yaml"));
    let expected_warnings = [
        "premium-policy.json: [0].properties.sku.tier: the policy tier is Premium; portcullis \
         implements the Standard feature set (each Premium feature in use is reported separately)",
        "premium-policy.json: [0].properties.intrusionDetection: dropped intrusionDetection: \
         intrusionDetection mode Deny (IDPS, Premium), which portcullis does not support",
        "premium-policy.json: [0].properties.transportSecurity: dropped transportSecurity: \
         transportSecurity (the TLS inspection CA certificate, Premium), which portcullis does \
         not support",
        "premium-policy.json: [1].properties.ruleCollections[0].rules[0]: dropped webCategories \
         [Gambling]: webCategories need Azure's web category service, which portcullis does not \
         support",
        "premium-policy.json: [1].properties.ruleCollections[0].rules[0]: dropped rule \
         \"no-gambling\": its only targets were unsupported; it is not imported as a broader \
         rule; it was a Deny rule, so the imported policy allows more than the Azure one",
        "premium-policy.json: [1].properties.ruleCollections[1].rules[0]: dropped targetUrls \
         [www.contoso.com/test/*]: targetUrls need TLS inspection (Premium), which portcullis \
         does not support",
        "premium-policy.json: [1].properties.ruleCollections[1].rules[0]: dropped terminateTLS \
         (HTTPS is matched on SNI only): terminateTLS true (TLS inspection, Premium), which \
         portcullis does not support",
        "premium-policy.json: [1].properties.ruleCollections[1].rules[0]: dropped rule \
         \"contoso-test-path\": its only targets were unsupported; it is not imported as a \
         broader rule",
        "premium-policy.json: [1].properties.ruleCollections[1].rules[1]: dropped terminateTLS \
         (HTTPS is matched on SNI only): terminateTLS true (TLS inspection, Premium), which \
         portcullis does not support",
    ];
    assert_eq!(out.warnings, expected_warnings);
}

#[test]
fn each_unsupported_feature_is_an_error_naming_file_and_path() {
    let rule_path = "[1].properties.ruleCollections[0].rules[0]";
    let cases: Vec<(Value, String)> = vec![
        (
            simple(
                "Allow",
                json!([app_rule(
                    "u",
                    json!({"targetFqdns": [], "targetUrls": ["www.contoso.com/a"]})
                )]),
            ),
            format!("{rule_path}: targetUrls need TLS inspection (Premium)"),
        ),
        (
            simple("Allow", json!([app_rule("w", json!({"webCategories": ["Gambling"]}))])),
            format!("{rule_path}: webCategories need Azure's web category service"),
        ),
        (
            simple("Allow", json!([app_rule("t", json!({"terminateTLS": true}))])),
            format!("{rule_path}: terminateTLS true (TLS inspection, Premium)"),
        ),
        (
            simple("Allow", json!([app_rule("t", json!({"terminateTls": "true"}))])),
            format!("{rule_path}: terminateTLS true (TLS inspection, Premium)"),
        ),
        (
            simple(
                "Allow",
                json!([app_rule(
                    "m",
                    json!({"protocols": [{"protocolType": "Mssql", "port": 1433}]})
                )]),
            ),
            format!("{rule_path}: protocol Mssql (SQL FQDN filtering)"),
        ),
        (
            json!(policy("p", json!({"intrusionDetection": {"mode": "Alert"}}))),
            "properties.intrusionDetection: intrusionDetection mode Alert (IDPS, Premium)".into(),
        ),
        (
            json!(policy(
                "p",
                json!({"explicitProxy": {"enableExplicitProxy": true, "httpPort": 8080}})
            )),
            "properties.explicitProxy: explicitProxy enabled (explicit proxy mode)".into(),
        ),
        (
            json!(policy(
                "p",
                json!({"transportSecurity": {"certificateAuthority": {"name": "ca"}}})
            )),
            "properties.transportSecurity: transportSecurity (the TLS inspection CA certificate, Premium)".into(),
        ),
        (
            json!(policy("p", json!({"sql": {"allowSqlRedirect": true}}))),
            "properties.sql: sql.allowSqlRedirect true (SQL redirect mode)".into(),
        ),
        (
            json!(policy("p", json!({"snat": {"autoLearnPrivateRanges": "Enabled"}}))),
            "properties.snat.autoLearnPrivateRanges: autoLearnPrivateRanges Enabled (learning SNAT \
             ranges from Azure Route Server)"
                .into(),
        ),
    ];
    for (doc, expected) in cases {
        let err = run(&[("f.json", &doc)], &STRICT).expect_err("unsupported");
        assert!(err.is_unsupported(), "{err}");
        assert_eq!(
            err.to_string(),
            format!("f.json: {expected}, which portcullis does not support")
        );
        // …and skip_unsupported always produces a config that parses.
        let out = run(&[("f.json", &doc)], &SKIP).expect("skip");
        assert!(!out.warnings.is_empty());
        parsed(&out.yaml);
    }
}

#[test]
fn arm_example_error_message() {
    // The message format promised to users, on a portal export.
    let mut arm = fixture_json("aks-arm-export.json");
    arm["resources"][2]["properties"]["ruleCollections"][0]["rules"][3]["targetUrls"] =
        json!(["snapshot.ubuntu.com/ubuntu/*"]);
    assert_eq!(
        fail(&[("arm.json", &arm)]),
        "arm.json: resources[2].properties.ruleCollections[0].rules[3]: targetUrls need TLS \
         inspection (Premium), which portcullis does not support"
    );
}

#[test]
fn partly_unsupported_rules_keep_only_supported_targets() {
    let doc = simple(
        "Allow",
        json!([app_rule(
            "mixed",
            json!({"webCategories": ["Gambling"], "protocols": [
            {"protocolType": "Mssql", "port": 1433}, {"protocolType": "Https", "port": 443}]})
        )]),
    );
    let out = run(&[("m.json", &doc)], &SKIP).expect("skip");
    let v = parsed(&out.yaml);
    let rule = &v["policy"]["ruleCollectionGroups"][0]["ruleCollections"][0]["rules"][0];
    assert_eq!(rule["targetFqdns"], json!(["www.contoso.com"]));
    assert_eq!(rule["protocols"], json!([{"protocolType": "Https", "port": 443}]));
    assert!(rule.get("webCategories").is_none());
    assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);

    // Only Mssql → the rule goes, it does not become "any protocol".
    let doc = simple(
        "Allow",
        json!([app_rule(
            "sql",
            json!({"protocols": [{"protocolType": "mssql", "port": 1433}]})
        )]),
    );
    let out = run(&[("m.json", &doc)], &SKIP).expect("skip");
    assert_eq!(rule_names(&parsed(&out.yaml), 0, 0), Vec::<String>::new());
    assert!(out.warnings[1].contains("its only protocols were unsupported"));

    // A Deny rule that loses some targets says it blocks less.
    let doc = simple("Deny", json!([app_rule("d", json!({"webCategories": ["Gambling"]}))]));
    let out = run(&[("m.json", &doc)], &SKIP).expect("skip");
    assert!(out.warnings[1].ends_with("this Deny rule lost some of its targets, so it blocks less than in Azure"));
}

// ------------------------------------------------------------------------------ ARM expressions

fn eval_with(params: Value, vars: Value, expr: &str) -> Result<Value, ExprError> {
    let params = params.as_object().cloned();
    let vars = vars.as_object().cloned();
    let mut ev = Evaluator::new(params.as_ref(), vars.as_ref());
    ev.eval_json_string(expr)
}

fn eval(expr: &str) -> Result<Value, ExprError> {
    eval_with(
        json!({
            "policyName": {"type": "String", "defaultValue": "fwp-aks-egress"},
            "obj": {"type": "object", "defaultValue": {"name": "n", "list": ["a", "b"]}},
            "prio": {"type": "int", "defaultValue": 200},
            "derived": {"type": "String", "defaultValue": "[concat(parameters('policyName'), '-x')]"},
            "noDefault": {"type": "String"}
        }),
        json!({
            "rcg": "[concat(parameters('policyName'), '/rcg-net')]",
            "self": "[variables('self')]",
            "a": "[variables('b')]",
            "b": "[variables('a')]",
            "names": ["[parameters('policyName')]", "literal"]
        }),
        expr,
    )
}

#[test]
fn arm_literals_and_escapes() {
    assert_eq!(eval("plain"), Ok(json!("plain")));
    assert_eq!(eval("[[not an expression]"), Ok(json!("[not an expression]")));
    assert_eq!(eval("['it''s']"), Ok(json!("it's")));
    assert_eq!(eval("[concat('a''', '''b', '''')]"), Ok(json!("a''b'")));
    assert_eq!(eval("[ concat( 'x' , 'y' ) ]"), Ok(json!("xy")));
    assert_eq!(eval("[concat('[', ']')]"), Ok(json!("[]")));
    assert_eq!(eval("[42]"), Ok(json!(42)));
    assert_eq!(eval("[-3]"), Ok(json!(-3)));
    assert_eq!(eval("[true]"), Ok(json!(true)));
    assert_eq!(eval("[null()]"), Ok(json!(null)));
    // Not an expression: must both start with '[' and end with ']'.
    assert_eq!(eval("[abc"), Ok(json!("[abc")));
    assert_eq!(eval("10.0.0.0/8"), Ok(json!("10.0.0.0/8")));
}

#[test]
fn arm_parameters_variables_and_nesting() {
    assert_eq!(eval("[parameters('policyName')]"), Ok(json!("fwp-aks-egress")));
    assert_eq!(eval("[PARAMETERS('POLICYNAME')]"), Ok(json!("fwp-aks-egress")));
    assert_eq!(eval("[parameters('prio')]"), Ok(json!(200)));
    assert_eq!(eval("[parameters('derived')]"), Ok(json!("fwp-aks-egress-x")));
    assert_eq!(eval("[variables('rcg')]"), Ok(json!("fwp-aks-egress/rcg-net")));
    assert_eq!(eval("[variables('names')]"), Ok(json!(["fwp-aks-egress", "literal"])));
    assert_eq!(eval("[parameters('obj').name]"), Ok(json!("n")));
    assert_eq!(eval("[parameters('obj')['list'][1]]"), Ok(json!("b")));
    assert_eq!(eval("[variables('names')[0]]"), Ok(json!("fwp-aks-egress")));
    assert_eq!(
        eval("[format('{0}/{1}-{2}', concat(parameters('policyName'), ''), toLower('RCG'), parameters('prio'))]"),
        Ok(json!("fwp-aks-egress/rcg-200"))
    );
    assert_eq!(
        eval("[concat(format('{0}', concat('a', format('{{{0}}}', 'b'))), 'c')]"),
        Ok(json!("a{b}c"))
    );
    assert_eq!(
        eval("[concat(createArray('a'), createArray('b', 'c'))]"),
        Ok(json!(["a", "b", "c"]))
    );
    assert_eq!(
        eval("[if(equals(parameters('prio'), 200), 'yes', reference('never'))]"),
        Ok(json!("yes"))
    );
    assert_eq!(eval("[last(split(variables('rcg'), '/'))]"), Ok(json!("rcg-net")));
    assert_eq!(
        eval("[replace(parameters('policyName'), '-', '_')]"),
        Ok(json!("fwp_aks_egress"))
    );
    assert_eq!(eval("[string(parameters('prio'))]"), Ok(json!("200")));
    assert_eq!(eval("[int('65000')]"), Ok(json!(65000)));
    assert_eq!(eval("[substring('abcdef', 1, 3)]"), Ok(json!("bcd")));
    assert_eq!(eval("[coalesce(null(), 'x')]"), Ok(json!("x")));
    assert_eq!(eval("[and(true, not(false), or(false, true))]"), Ok(json!(true)));
    assert_eq!(eval("[json('{\"a\": [1]}').a[0]]"), Ok(json!(1)));
    assert_eq!(eval("[createObject('k', 'v').k]"), Ok(json!("v")));
    assert_eq!(eval("[length(parameters('obj').list)]"), Ok(json!(2)));
    assert_eq!(eval("[empty('')]"), Ok(json!(true)));
    assert_eq!(eval("[contains(createArray('a'), 'a')]"), Ok(json!(true)));
    assert_eq!(
        eval("[startsWith('AzureCloud.westeurope', 'azurecloud')]"),
        Ok(json!(true))
    );
}

#[test]
fn arm_resource_ids() {
    assert_eq!(
        eval("[resourceId('Microsoft.Network/ipGroups', 'ipg-aks-nodes')]"),
        Ok(json!(
            "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Network/ipGroups/ipg-aks-nodes"
        ))
    );
    assert_eq!(
        eval("[resourceId('rg-shared', 'Microsoft.Network/ipGroups', 'ipg')]"),
        Ok(json!(
            "/subscriptions/{subscriptionId}/resourceGroups/rg-shared/providers/Microsoft.Network/ipGroups/ipg"
        ))
    );
    assert_eq!(
        eval(
            "[resourceId('1111', 'rg-shared', 'Microsoft.Network/firewallPolicies/ruleCollectionGroups', parameters('policyName'), 'rcg')]"
        ),
        Ok(json!(
            "/subscriptions/1111/resourceGroups/rg-shared/providers/Microsoft.Network/firewallPolicies/fwp-aks-egress/ruleCollectionGroups/rcg"
        ))
    );
    assert_eq!(
        eval("[subscriptionResourceId('Microsoft.Network/ipGroups', 'x')]"),
        Ok(json!(
            "/subscriptions/{subscriptionId}/providers/Microsoft.Network/ipGroups/x"
        ))
    );
    assert_eq!(
        eval("[concat(subscription().id, '/resourceGroups/', resourceGroup().name)]"),
        Ok(json!(
            "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}"
        ))
    );
    assert!(
        eval("[resourceId('Microsoft.Network/firewallPolicies/ruleCollectionGroups', 'only-one')]")
            .is_err_and(|e| e.0.contains("needs 2 name(s), got 1"))
    );
    assert!(eval("[resourceId('a', 'b', 'c', 'Microsoft.Network/ipGroups', 'x')]").is_err());
    assert!(eval("[resourceId('no-type')]").is_err());
}

#[test]
fn arm_errors() {
    let e = |s: &str| eval(s).expect_err(s).0;
    assert_eq!(
        e("[uniqueString(resourceGroup().id)]"),
        "ARM function 'uniqueString' needs a live deployment or is not supported by portcullis import"
    );
    assert!(e("[frobnicate('x')]").starts_with("unknown or unsupported ARM function 'frobnicate'"));
    assert_eq!(
        e("[lab.fn('x')]"),
        "user-defined function 'lab.fn' is not supported by portcullis import"
    );
    assert_eq!(e("[parameters('missing')]"), "unknown parameter 'missing'");
    assert!(e("[parameters('noDefault')]").starts_with("parameter 'noDefault' has no defaultValue"));
    assert_eq!(
        e("[variables('self')]"),
        "in variables('self'): variables('self') refers to itself"
    );
    assert!(e("[variables('a')]").ends_with("variables('a') refers to itself"));
    assert_eq!(e("['unterminated]"), "unterminated string starting at offset 1");
    assert_eq!(e("[concat('a']"), "missing ')' at the end of the expression");
    assert_eq!(e("[concat('a') 'b']"), "unexpected string 'b' at offset 13");
    assert_eq!(e("[]"), "empty expression");
    assert_eq!(e("[concat('a', )]"), "unexpected ')' at offset 13");
    assert_eq!(e("[concat]"), "expected '(' after function name 'concat' at offset 1");
    assert!(e("[format('{0:N2}', 1)]").contains("is not supported"));
    assert!(e("[format('{1}', 'a')]").contains("no argument for {1}"));
    assert!(e("[parameters('obj').nope]").contains("property 'nope' not found"));
    assert!(e("[createArray('a')[5]]").contains("out of range"));
    assert!(e("[concat('a', createArray('b'))]").contains("cannot mix"));
    assert!(e("[99999999999999999999]").starts_with("bad number"));
    let deep = format!("[{}'x'{}]", "concat(".repeat(100), ")".repeat(100));
    assert_eq!(e(&deep), "expression nested too deeply");
    assert!(e("[concat('a' ; 'b')]").starts_with("unexpected character ';'"));
}

#[test]
fn arm_expression_errors_name_file_path_and_expression() {
    let mut arm = fixture_json("aks-arm-export.json");
    arm["resources"][4]["properties"]["ruleCollections"][0]["rules"][4]["sourceIpGroups"][0] =
        json!("[resourceId('Microsoft.Network/ipGroups', parameter('ipGroups_ipg_aks_nodes_name'))]");
    assert_eq!(
        fail(&[("arm.json", &arm)]),
        "arm.json: resources[4].properties.ruleCollections[0].rules[4].sourceIpGroups[0]: ARM \
         expression `[resourceId('Microsoft.Network/ipGroups', \
         parameter('ipGroups_ipg_aks_nodes_name'))]`: unknown or unsupported ARM function \
         'parameter' (portcullis import evaluates parameters, variables, concat, format, \
         resourceId and a few string functions)"
    );
    let mut arm = fixture_json("aks-arm-export.json");
    arm["resources"][0]["copy"] = json!({"name": "loop", "count": 2});
    assert!(fail(&[("arm.json", &arm)]).starts_with("arm.json: resources[0].copy: ARM copy loops are not supported"));
    let mut arm = fixture_json("aks-arm-export.json");
    arm["resources"][3]["properties"]["ruleCollections"] =
        json!([{"copy": [{"name": "ruleCollections", "count": 2, "input": {}}]}]);
    assert!(fail(&[("arm.json", &arm)]).contains("ARM property copy loops are not supported"));
}

// ------------------------------------------------------------------------------ robustness

#[test]
fn deeply_chained_variables_fail_cleanly_instead_of_overflowing_the_stack() {
    // 60 variables, each nesting 50 calls around the next one: far beyond any real template.
    let mut vars = serde_json::Map::new();
    for i in 0..60 {
        let inner = if i == 59 {
            "'end'".to_owned()
        } else {
            format!("variables('v{}')", i + 1)
        };
        let expr = format!("[{}{inner}{}]", "concat('x', ".repeat(50), ")".repeat(50));
        vars.insert(format!("v{i}"), Value::String(expr));
    }
    let vars = Value::Object(vars);
    let err = eval_with(json!({}), vars, "[variables('v0')]").expect_err("too deep");
    assert!(err.0.contains("nested too deeply"), "{}", err.0);
    // Through the whole import, in a test thread's (small) stack: a variable nested 120 arrays
    // deep that refers to a variable referring back to it.
    let mut a = json!("[variables('b')]");
    for _ in 0..120 {
        a = json!([a]);
    }
    let arm = json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "variables": {"a": a, "b": "[variables('a')]"},
        "resources": [{"type": "Microsoft.Network/firewallPolicies", "name": "[string(variables('a'))]"}]
    });
    let msg = fail(&[("deep.json", &arm)]);
    assert!(msg.contains("refers to itself") || msg.contains("too deeply"), "{msg}");
}

#[test]
fn malformed_json_reports_line_and_column() {
    let text = "{\n  \"name\": \"fwp\",\n  \"properties\": {,}\n}\n";
    let err = import_documents(&[("arm.json".into(), text.into())], &STRICT).expect_err("bad");
    assert_eq!(err.to_string(), "arm.json:3:18: invalid JSON: key must be a string");
    let err = import_documents(&[("e.json".into(), String::new())], &STRICT).expect_err("bad");
    assert_eq!(err.to_string(), "e.json:1:0: invalid JSON: EOF while parsing a value");
    // A UTF-8 BOM (as Windows tools write) is fine.
    let text = format!("\u{feff}{}", fixture("aks-rest.json"));
    import_documents(&[("bom.json".into(), text)], &STRICT).expect("BOM accepted");
}

#[test]
fn maximal_json_nesting_does_not_overflow_the_stack() {
    // serde_json stops at 128 levels; everything below must cope with that much.
    let text = format!("{}{{\"foo\": 1}}{}", "[".repeat(126), "]".repeat(126));
    assert!(import_documents(&[("n.json".into(), text)], &STRICT).is_err());

    let mut props = json!({"threatIntelMode": "Alert"});
    for _ in 0..120 {
        props = json!({"nested": props});
    }
    let arm = json!({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
                     "resources": [{"type": "Microsoft.Network/firewallPolicies", "name": "p", "properties": props}]});
    let text = arm.to_string();
    assert!(import_documents(&[("n.json".into(), text)], &SKIP).is_ok());

    let mut child = json!({"type": "ruleCollectionGroups", "name": "leaf", "properties": {"priority": 100}});
    for i in 0..60 {
        child = json!({"type": "ruleCollectionGroups", "name": format!("g{i}"), "resources": [child]});
    }
    let arm = json!({"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
                     "resources": [{"type": "Microsoft.Network/firewallPolicies", "name": "p", "resources": [child]}]});
    let text = arm.to_string();
    // Too deep for serde_json or a clean error either way, never a crash.
    let _ = import_documents(&[("n.json".into(), text)], &SKIP);
}

/// Small deterministic PRNG for the mutation loops.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as usize
    }
}

fn all_fixture_texts() -> Vec<String> {
    [
        "aks-arm-export.json",
        "aks-rest.json",
        "aks-azcli.json",
        "premium-policy.json",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect()
}

fn must_not_panic(text: String) {
    for opts in [STRICT, SKIP] {
        let docs = [("m.json".to_owned(), text.clone())];
        let result = std::panic::catch_unwind(|| import_documents(&docs, &opts));
        match result {
            Ok(Ok(out)) => {
                // Whatever we emit must be YAML our parser reads.
                assert!(
                    YamlLoader::load_from_str(&out.yaml).is_ok(),
                    "unparsable output for input:\n{text}\n{}",
                    out.yaml
                );
            }
            Ok(Err(_)) => {}
            Err(_) => panic!("import panicked on input:\n{text}"),
        }
    }
}

#[test]
fn no_panic_on_mutated_bytes() {
    const JUNK: &[&str] = &["[", "]", "{", "}", "'", "\"", "(", ")", ",", "\\", "\u{0}", "[[", "é"];
    let mut rng = Lcg(7);
    for text in all_fixture_texts() {
        let bytes = text.into_bytes();
        for _ in 0..150 {
            let mut b = bytes.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = rng.next() % b.len().max(1);
                match rng.next() % 4 {
                    0 => {
                        if let Some(x) = b.get_mut(at) {
                            *x ^= 1 << (rng.next() % 8);
                        }
                    }
                    1 => {
                        let end = (at + rng.next() % 40).min(b.len());
                        b.drain(at..end);
                    }
                    2 => {
                        let end = (at + rng.next() % 40).min(b.len());
                        let chunk: Vec<u8> = b[at..end].to_vec();
                        b.splice(at..at, chunk);
                    }
                    _ => {
                        let junk = JUNK[rng.next() % JUNK.len()].as_bytes();
                        b.splice(at..at, junk.iter().copied());
                    }
                }
            }
            must_not_panic(String::from_utf8_lossy(&b).into_owned());
        }
    }
}

/// Replaces random nodes of the (valid) fixture JSON, so the deeper code paths see junk.
#[test]
fn no_panic_on_mutated_json_values() {
    fn replacements() -> Vec<Value> {
        vec![
            json!(null),
            json!(true),
            json!(0),
            json!(-1),
            json!(1e300),
            json!(18_446_744_073_709_551_615_u64),
            json!(""),
            json!("x"),
            json!("[concat("),
            json!("[parameters('nope')]"),
            json!("[concat(parameters('firewallPolicies_fwp_aks_egress_name'), '/a/b')]"),
            json!("[resourceId('Microsoft.Network/ipGroups')]"),
            json!("[json('[[[[')]"),
            json!("/subscriptions/x/providers/Microsoft.Network/ipGroups/"),
            json!("Microsoft.Network/firewallPolicies"),
            json!("Microsoft.Network/firewallPolicies/ruleCollectionGroups"),
            json!([]),
            json!([null]),
            json!([{}]),
            json!({}),
            json!({"id": "/x/ruleCollectionGroups/y"}),
            json!({"type": "Allow"}),
            json!({"protocolType": "Https", "port": "x"}),
            json!({"ruleType": "ApplicationRule", "targetUrls": ["a"]}),
            json!({"ruleType": "NetworkRule"}),
            json!({"value": [{"value": []}]}),
        ]
    }
    fn count(v: &Value) -> usize {
        1 + match v {
            Value::Array(a) => a.iter().map(count).sum(),
            Value::Object(m) => m.values().map(count).sum(),
            _ => 0,
        }
    }
    fn replace_nth(v: &mut Value, n: &mut usize, with: &Value) -> bool {
        if *n == 0 {
            *v = with.clone();
            return true;
        }
        *n -= 1;
        match v {
            Value::Array(a) => a.iter_mut().any(|x| replace_nth(x, n, with)),
            Value::Object(m) => m.values_mut().any(|x| replace_nth(x, n, with)),
            _ => false,
        }
    }
    let reps = replacements();
    let mut rng = Lcg(11);
    for text in all_fixture_texts() {
        let base: Value = serde_json::from_str(&text).expect("fixture");
        let nodes = count(&base);
        for _ in 0..300 {
            let mut v = base.clone();
            for _ in 0..1 + rng.next() % 3 {
                let mut n = rng.next() % nodes;
                let with = &reps[rng.next() % reps.len()];
                replace_nth(&mut v, &mut n, with);
            }
            must_not_panic(v.to_string());
        }
    }
}
