//! The `portcullis` command line: the binary's edge (anyhow lives here and nowhere below).

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use portcullis_rules::{Decision, Env, Flow, Name, Protocol, ThreatFeed, Verdict, eval::TraceEntry};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The embedded default policy: an AKS egress baseline on lab addresses.
pub const DEFAULT_POLICY: &str = include_str!("../policies/aks-egress-baseline.yaml");
pub const DEFAULT_POLICY_NAME: &str = "aks-egress-baseline.yaml";

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about = "Egress firewall appliance for Azure hub-and-spoke networks, with Azure Firewall Policy semantics",
    long_about = "portcullis is the next hop of your AKS subnets' 0.0.0.0/0 route, like Azure Firewall: it reads an \
Azure Firewall Policy (YAML or JSON, Azure's own field names: ruleCollectionGroups, ruleCollections, NetworkRule, \
ApplicationRule, NatRule, ipGroups, dnsSettings, snat.privateRanges, threatIntelMode …) and enforces it in Azure's \
order: threat intelligence, then all DNAT rules, then all network rules, then all application rules; within a type, \
base-policy groups first, then rule collection group priority, rule collection priority and rule order; the first \
match wins; otherwise deny."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate a policy file the way Azure validates a Firewall Policy
    ///
    /// Prints every problem as FILE:LINE:COL: message (unknown fields, priorities outside 100-65000, names,
    /// wildcards Azure rejects, mixed rule types in one collection, NAT ports above 63999, unknown IP groups,
    /// service tags …) and exits 1; exits 0 when the policy is valid (warnings are printed too).
    Check(CheckArgs),
    /// Show which rule decides a flow, why, and everything evaluated before it
    ///
    /// The flow is described as the appliance sees it. --protocol http/https evaluate application rules by
    /// the name in --destination (the HTTP Host / TLS SNI); tcp/udp/icmp evaluate DNAT and network rules by
    /// address. The answer comes from the same compiled policy the data plane and proxy enforce.
    Explain(ExplainArgs),
    /// Convert an Azure Firewall Policy export into a portcullis policy file
    ///
    /// Accepts an ARM template ("Export template" in the portal), REST API JSON (with `properties`),
    /// az CLI output (`az network firewall policy show` / `... rule-collection-group list`), IP group
    /// resources, or several of those files together. Prints YAML on stdout (or --output).
    Import(ImportArgs),
    /// Run the lab: load the embedded AKS egress baseline, explain sample flows, and exercise the XDP data
    /// plane in a throw-away network namespace (needs root for the XDP part)
    Lab(LabArgs),
    /// Run the appliance: enforce the policy on the interfaces of its `appliance` section
    ///
    /// Loads and validates the policy, compiles it into the eBPF data plane, attaches XDP to
    /// appliance.interfaces.internal and .external (two-arm) or to the one interface (one-arm), sets the host up
    /// (IPv4 forwarding, rp_filter off on the data interfaces, host ephemeral ports below the SNAT range) and logs a
    /// JSON line per flow event to appliance.flowLog ("-" = stdout). SIGHUP reloads the policy file (an invalid
    /// one is reported as FILE:LINE:COL and the running policy stays). SIGTERM/SIGINT stop; the pinned
    /// conntrack/NAT state and XDP links stay, so a restart takes over established flows with no gap, unless
    /// --flush is given. Needs root.
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Policy file (YAML or JSON)
    #[arg(long, short = 'c')]
    pub config: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// Policy file (YAML or JSON)
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// Client address, e.g. 198.18.1.10
    #[arg(long)]
    pub source: Ipv4Addr,
    /// HOST_OR_IP:PORT, e.g. mcr.microsoft.com:443 or 203.0.113.10:9000 (port optional for icmp)
    #[arg(long)]
    pub destination: String,
    /// tcp | udp | icmp | http | https
    #[arg(long, value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// NAME=IP: an address the DNS proxy resolved for a name (FQDN network rules, translatedFqdn); repeatable.
    /// With a name destination, its first address is also the address the client connects to.
    #[arg(long = "resolve", value_name = "NAME=IP")]
    pub resolve: Vec<String>,
    /// HTTP only: the Host header as sent (default: the destination name, with :PORT unless the port is 80)
    #[arg(long)]
    pub host_header: Option<String>,
    /// Threat-intelligence feed (one IP, CIDR, range or host name per line); default: appliance.threatIntelFeed
    #[arg(long)]
    pub threat_intel_feed: Option<PathBuf>,
    /// Print one JSON object: {"verdict", "ruleCollectionGroup", "ruleCollection", "rule", "reason", "trace", …}
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Exported JSON files (ARM template, REST or az CLI output)
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Write the YAML here instead of stdout
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Drop Premium-only features portcullis cannot enforce (URL rules, web categories, IDPS …) with a
    /// warning, instead of failing
    #[arg(long)]
    pub skip_unsupported: bool,
}

#[derive(Args, Debug)]
pub struct LabArgs {
    /// Use this policy instead of the embedded AKS egress baseline
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Skip the XDP part (no root needed)
    #[arg(long)]
    pub no_xdp: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Policy file (YAML or JSON) with an `appliance` section
    #[arg(long, short = 'c')]
    pub config: PathBuf,
    /// On exit, remove the pinned conntrack/NAT state and XDP links and restore the host settings found before
    /// the first start (default: keep them, so a restarted daemon takes over established flows)
    #[arg(long)]
    pub flush: bool,
    /// Print the settings and the host changes it would make, then exit without changing anything (no root
    /// needed)
    #[arg(long)]
    pub dry_run: bool,
    /// bpffs directory of the pinned maps and links
    #[arg(long, default_value = crate::run::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Directory of the daemon's state (the host settings to restore on --flush)
    #[arg(long, default_value = crate::run::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The appliance's internal address (source of DNATed flows toward the spokes); default: the internal
    /// interface's first IPv4 address that is not a SNAT address
    #[arg(long)]
    pub internal_address: Option<Ipv4Addr>,
    /// SNAT source ports, LOW-HIGH; the host's own ephemeral ports (net.ipv4.ip_local_port_range) are moved
    /// below LOW
    #[arg(long, value_parser = parse_port_range, default_value = "40000-65535")]
    pub snat_ports: (u16, u16),
    /// Size of the conntrack (and NAT) table, in flows
    #[arg(long, default_value_t = crate::run::DEFAULT_CT_MAX)]
    pub conntrack_max: u32,
    /// Do not run the application proxy: HTTP/HTTPS application rules then allow nothing (TCP to their
    /// ports is dropped), as if every application rule were absent
    #[arg(long)]
    pub no_application_proxy: bool,
    /// Port of the proxy's transparent listener (intercepted connections are steered to it by nftables
    /// TPROXY; connections addressed to it directly are refused)
    #[arg(long, default_value_t = crate::proxy::ProxyConfig::DEFAULT_PORT)]
    pub proxy_port: u16,
    /// Seconds a client has to send its complete TLS ClientHello or HTTP request head (silent and
    /// dribbling clients are closed after it)
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub proxy_handshake_timeout: u64,
    /// Seconds without a byte either way before a proxied connection is closed (Azure Firewall: 240)
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub proxy_idle_timeout: u64,
    /// Proxied connections open at once; more are reset (counted)
    #[arg(long, default_value_t = crate::proxy::Limits::default().max_connections, value_parser = parse_limit)]
    pub proxy_max_connections: usize,
    /// Proxied connections open at once from one source address; more are reset (counted)
    #[arg(long, default_value_t = crate::proxy::Limits::default().max_per_source, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub proxy_max_per_source: u32,
}

impl RunArgs {
    pub fn options(&self) -> crate::run::Options {
        crate::run::Options {
            config: self.config.clone(),
            pin_dir: self.pin_dir.clone(),
            state_dir: self.state_dir.clone(),
            flush: self.flush,
            dry_run: self.dry_run,
            internal_address: self.internal_address,
            snat_ports: self.snat_ports,
            conntrack_max: self.conntrack_max,
            application_proxy: !self.no_application_proxy,
            proxy_port: self.proxy_port,
            proxy_timeouts: crate::proxy::Timeouts {
                handshake: std::time::Duration::from_secs(self.proxy_handshake_timeout),
                idle: std::time::Duration::from_secs(self.proxy_idle_timeout),
                ..crate::proxy::Timeouts::default()
            },
            proxy_limits: crate::proxy::Limits {
                max_connections: self.proxy_max_connections,
                max_per_source: self.proxy_max_per_source,
            },
        }
    }
}

fn parse_limit(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err(format!("`{s}` is not a number from 1 to 1000000")),
    }
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s.split_once('-').ok_or_else(|| format!("`{s}` is not LOW-HIGH"))?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|_| format!("`{p}` is not a port"));
    Ok((port(lo)?, port(hi)?))
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::parse(s).ok_or_else(|| format!("`{s}` is not one of tcp, udp, icmp, http, https"))
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(a) => check(&a),
        Command::Explain(a) => explain(&a),
        Command::Import(a) => import(&a),
        Command::Lab(a) => crate::lab::run(&a),
        Command::Run(a) => run(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Loads and validates; on failure prints the diagnostics and returns `None`.
pub fn load_or_report(path: &Path) -> Option<portcullis_rules::Loaded> {
    match portcullis_rules::load(path, &portcullis_rules::FsLoader) {
        Ok(l) => {
            for w in &l.warnings {
                eprintln!("{w}");
            }
            Some(l)
        }
        Err(invalid) => {
            print!("{invalid}");
            None
        }
    }
}

pub fn summary(policy: &portcullis_rules::Policy) -> String {
    let groups: std::collections::BTreeSet<(&str, &str)> = policy
        .collections
        .iter()
        .map(|c| (c.policy.as_str(), c.group.as_str()))
        .collect();
    format!(
        "{} rule collection groups, {} rule collections, {} rules ({} DNAT, {} network, {} application)",
        groups.len(),
        policy.collections.len(),
        policy.rules.len(),
        policy.nat_rules.len(),
        policy.network_rules.len(),
        policy.application_rules.len()
    )
}

fn run(a: &RunArgs) -> Result<ExitCode> {
    match crate::run::main(&a.options()) {
        Ok(code) => Ok(code),
        Err(crate::run::RunError::Invalid(diagnostics)) => {
            eprintln!("{diagnostics}");
            eprintln!("portcullis: {} is not valid; not started", a.config.display());
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

fn check(a: &CheckArgs) -> Result<ExitCode> {
    let Some(loaded) = load_or_report(&a.config) else {
        return Ok(ExitCode::from(1));
    };
    println!("{}: valid: {}", a.config.display(), summary(&loaded.config.policy));
    Ok(ExitCode::SUCCESS)
}

/// `HOST_OR_IP[:PORT]`.
pub fn parse_destination(s: &str, protocol: Protocol) -> Result<(String, u16)> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(
                p.parse::<u16>()
                    .with_context(|| format!("`{p}` in --destination is not a port"))?,
            ),
        ),
        None => (s, None),
    };
    let port = match (port, protocol) {
        (Some(p), _) => p,
        (None, Protocol::Icmp) => 0,
        (None, _) => bail!("--destination needs HOST_OR_IP:PORT for {protocol:?}"),
    };
    Ok((host.to_string(), port))
}

pub struct ExplainInput {
    pub flow: Flow,
    pub resolutions: BTreeMap<Name, Vec<Ipv4Addr>>,
}

pub fn build_flow(a: &ExplainArgs) -> Result<ExplainInput> {
    let (host, port) = parse_destination(&a.destination, a.protocol)?;
    let mut resolutions: BTreeMap<Name, Vec<Ipv4Addr>> = BTreeMap::new();
    for r in &a.resolve {
        let (n, ip) = r
            .split_once('=')
            .with_context(|| format!("--resolve `{r}`: expected NAME=IP"))?;
        let name = Name::parse(n).map_err(|e| anyhow::anyhow!("--resolve `{r}`: {e}"))?;
        let ip: Ipv4Addr = ip
            .parse()
            .with_context(|| format!("--resolve `{r}`: `{ip}` is not an IPv4 address"))?;
        resolutions.entry(name).or_default().push(ip);
    }
    let (ip, name) = match host.parse::<Ipv4Addr>() {
        Ok(ip) => (Some(ip), None),
        Err(_) => {
            let name = Name::parse(&host).map_err(|e| anyhow::anyhow!("--destination: {e}"))?;
            (resolutions.get(&name).and_then(|v| v.first().copied()), Some(name))
        }
    };
    let mut flow = Flow {
        source: a.source,
        destination_ip: ip,
        destination_name: name,
        port,
        protocol: a.protocol,
        host_port: None,
    };
    if a.protocol == Protocol::Http {
        match &a.host_header {
            Some(h) => {
                let (hn, hp) = match h.rsplit_once(':') {
                    Some((hn, hp)) => (
                        hn,
                        Some(
                            hp.parse::<u16>()
                                .with_context(|| format!("--host-header port `{hp}`"))?,
                        ),
                    ),
                    None => (h.as_str(), None),
                };
                flow.destination_name = Some(Name::parse(hn).map_err(|e| anyhow::anyhow!("--host-header: {e}"))?);
                flow.host_port = hp;
            }
            // What curl and browsers send: the port only when it isn't 80.
            None => flow.host_port = (port != 80).then_some(port),
        }
    }
    Ok(ExplainInput { flow, resolutions })
}

fn explain(a: &ExplainArgs) -> Result<ExitCode> {
    let Some(loaded) = load_or_report(&a.config) else {
        return Ok(ExitCode::from(1));
    };
    let input = build_flow(a)?;
    let feed_path = a.threat_intel_feed.clone().or_else(|| {
        let p = loaded.config.appliance.as_ref()?.threat_intel_feed.as_ref()?;
        Some(a.config.parent().unwrap_or(Path::new("")).join(p))
    });
    let feed = match feed_path {
        Some(p) => {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading threat-intel feed {}", p.display()))?;
            Some(ThreatFeed::parse(&text).map_err(|errs| {
                let lines: Vec<String> = errs
                    .iter()
                    .map(|e| format!("{}:{}: {}", p.display(), e.line, e.message))
                    .collect();
                anyhow::anyhow!("invalid threat-intel feed:\n{}", lines.join("\n"))
            })?)
        }
        None => None,
    };
    let env = Env {
        resolutions: &input.resolutions,
        threat_feed: feed.as_ref(),
    };
    let decision = loaded.config.policy.explain(&input.flow, &env);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&decision)?);
    } else {
        print!("{}", render(&input.flow, &decision));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn describe_flow(f: &Flow) -> String {
    let dst = match (&f.destination_name, f.destination_ip) {
        (Some(n), Some(ip)) => format!("{n} ({ip})"),
        (Some(n), None) => n.to_string(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => "?".into(),
    };
    format!("{} {} -> {dst}:{}", f.protocol.label(), f.source, f.port)
}

pub fn rule_path(d: &Decision) -> String {
    match (&d.rule_collection_group, &d.rule_collection, &d.rule) {
        (Some(g), Some(c), Some(r)) => format!("{g} / {c} / {r}"),
        _ => "(none: default action)".into(),
    }
}

fn render(flow: &Flow, d: &Decision) -> String {
    let mut s = String::new();
    let verdict = match d.verdict {
        Verdict::Allow => "Allow",
        Verdict::Deny => "Deny",
        Verdict::Dnat => "DNAT",
    };
    s.push_str(&format!("Flow:     {}\n", describe_flow(flow)));
    s.push_str(&format!("Verdict:  {verdict} (decided at stage {:?})\n", d.stage));
    s.push_str(&format!("Rule:     {}\n", rule_path(d)));
    if let Some(p) = &d.policy {
        s.push_str(&format!("Policy:   {p}\n"));
    }
    s.push_str(&format!("Reason:   {}\n", d.reason));
    if let Some(t) = &d.translated {
        s.push_str(&format!("Translate: to {}:{}\n", t.address, t.port));
    }
    if let Some(snat) = d.snat {
        s.push_str(&format!(
            "SNAT:     {}\n",
            if snat {
                "yes, leaves with the appliance's address"
            } else {
                "no (destination in snat.privateRanges)"
            }
        ));
    }
    for a in &d.alerts {
        s.push_str(&format!("Alert:    {a}\n"));
    }
    s.push_str("Trace:\n");
    for (i, t) in d.trace.iter().enumerate() {
        s.push_str(&format!("  {:>3}. {}\n", i + 1, trace_line(t)));
    }
    s
}

fn trace_line(t: &TraceEntry) -> String {
    let path = match (&t.rule_collection_group, &t.rule_collection, &t.rule) {
        (Some(g), Some(c), Some(r)) => format!("{g}/{c}/{r}"),
        _ => String::new(),
    };
    format!(
        "{:<12} {:<9} {path}{}{}",
        format!("{:?}", t.stage),
        t.result,
        if path.is_empty() { "" } else { ": " },
        t.detail
    )
}

fn import(a: &ImportArgs) -> Result<ExitCode> {
    let mut docs = Vec::new();
    for f in &a.files {
        let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        docs.push((f.display().to_string(), text));
    }
    let opts = portcullis_rules::import::ImportOptions {
        skip_unsupported: a.skip_unsupported,
    };
    let imported = match portcullis_rules::import::import_documents(&docs, &opts) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("portcullis import: {e}");
            if e.is_unsupported() {
                eprintln!(
                    "hint: pass --skip-unsupported to drop what portcullis cannot enforce, with a warning for each"
                );
            }
            return Ok(ExitCode::from(1));
        }
    };
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    match &a.output {
        Some(p) => std::fs::write(p, &imported.yaml).with_context(|| format!("writing {}", p.display()))?,
        None => print!("{}", imported.yaml),
    }
    Ok(ExitCode::SUCCESS)
}
