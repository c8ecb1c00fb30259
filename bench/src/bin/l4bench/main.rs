//! Driver of the L3/L4 forwarding bench (bench/netns/l4.sh; method in bench/README.md).
//!
//! Same topology, same run: packets/s forwarded (60-byte UDP, 10,000 flows) by the firewall
//! namespace with plain kernel forwarding, with the policy as an nftables ruleset (conntrack +
//! masquerade; linear chain and concat interval map), and with `portcullis run`, at each rule count,
//! in the `new` and `est` flow modes; rounds interleaved; medians and spreads; firewall core CPU
//! time per packet.
//!
//! - `l4bench run [--rules 10,10000] [--rounds 3] …` runs the comparison and prints the table.
//! - `l4bench policy --rules N` prints the bench policy (with the `appliance` section).
//! - `l4bench nft --rules N --form linear|concat` prints its nftables translation.

mod nft;

use anyhow::{Context as _, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use nft::Form;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const NS_CLI: &str = "pcl4-cli";
const NS_FW: &str = "pcl4-fw";
const NS_SRV: &str = "pcl4-srv";
const IF_CLI: &str = "l4c";
const IF_IN: &str = "l4fi";
const IF_OUT: &str = "l4fo";
const IF_SRV: &str = "l4s";
const MAC_IN: &str = "02:00:5e:18:00:01";
const SNAT_ADDR: &str = "198.19.0.1";
const SPORT_BASE: u32 = 10000;

#[derive(Parser)]
#[command(about = "L3/L4 forwarding bench: portcullis vs nftables vs plain forwarding in namespaces")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the bench policy with N synthetic rules (plus the bench's own allow rule)
    Policy {
        #[arg(long)]
        rules: usize,
    },
    /// Print the policy's network rules as an nftables ruleset
    Nft {
        #[arg(long)]
        rules: usize,
        #[arg(long, value_parser = parse_form, default_value = "linear")]
        form: Form,
    },
    /// Run the comparison and print the table
    Run(Box<RunArgs>),
    /// Print the table again from a run's results.tsv
    Table {
        tsv: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "10,10000")]
        rules: Vec<usize>,
    },
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Rule counts (synthetic_policy sizes)
    #[arg(long, value_delimiter = ',', default_value = "10,10000")]
    rules: Vec<usize>,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Modes: plain, nft-linear, nft-concat, portcullis
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "plain,nft-linear,nft-concat,portcullis"
    )]
    modes: Vec<String>,
    /// Flow modes: new (one-way, every packet ct new), est (each flow answered once first)
    #[arg(long, value_delimiter = ',', default_value = "new,est")]
    flow_modes: Vec<String>,
    /// nft-concat only at rule counts >= this (at 10 rules the linear chain is the natural form)
    #[arg(long, default_value_t = 1000)]
    concat_min_rules: usize,
    /// Measurement window, seconds
    #[arg(long, default_value_t = 10.0)]
    window: f64,
    /// Generator warm-up before the window, seconds
    #[arg(long, default_value_t = 1.5)]
    warmup: f64,
    #[arg(long, default_value_t = 10000)]
    flows: u32,
    /// Generator processes
    #[arg(long, default_value_t = 2)]
    generators: u32,
    /// Wait before each round until load1 is below this ...
    #[arg(long, default_value_t = 0.5)]
    quiet_load: f64,
    /// ... or for at most this many seconds
    #[arg(long, default_value_t = 20.0)]
    quiet_wait: f64,
    /// Before each point, wait at most this many seconds for one second with both cores ≥ 90 % idle
    #[arg(long, default_value_t = 2.0)]
    point_quiet_wait: f64,
    /// Stop starting points after this many minutes (the table shows what finished)
    #[arg(long, default_value_t = 12.0)]
    max_minutes: f64,
    /// The firewall's core; everything else runs on --ep-cpu
    #[arg(long, default_value_t = 1)]
    fw_cpu: u32,
    #[arg(long, default_value_t = 0)]
    ep_cpu: u32,
    /// Directory with l4gen.bpf.o and l4sink.bpf.o (bench/netns/build-bpf.sh)
    #[arg(long)]
    bpf_dir: PathBuf,
    /// bench/netns/topo.sh
    #[arg(long)]
    topo: PathBuf,
    /// The portcullis binary (built by the lead: cargo build --release -p portcullis)
    #[arg(long)]
    portcullis: PathBuf,
    /// Where policies, rulesets, logs and results.tsv go
    #[arg(long)]
    work: Option<PathBuf>,
}

fn parse_form(s: &str) -> Result<Form, String> {
    match s {
        "linear" => Ok(Form::Linear),
        "concat" => Ok(Form::Concat),
        _ => Err(format!("unknown form {s:?} (linear|concat)")),
    }
}

/// `synthetic_policy(n)` plus the appliance section and one last allow rule for the bench's own
/// traffic (UDP 198.18.0.0/24 → 198.19.0.0/24:9): every packet walks all the synthetic network
/// rules before it matches, and leaves SNATed (198.19/16 is outside snat.privateRanges).
fn bench_policy(n: usize) -> String {
    let mut s = format!(
        "appliance:\n  interfaces: {{internal: {IF_IN}, external: {IF_OUT}}}\n  snatAddresses: [{SNAT_ADDR}]\n"
    );
    s.push_str(&portcullis_bench::synthetic_policy(n));
    s.push_str(
        "    - name: bench-flows\n      priority: 65000\n      ruleCollections:\n      - ruleCollectionType: FirewallPolicyFilterRuleCollection\n        name: bench-udp\n        priority: 65000\n        action: {type: Allow}\n        rules:\n          - {ruleType: NetworkRule, name: bench-udp-discard, ipProtocols: [UDP], sourceAddresses: [\"198.18.0.0/24\"], destinationAddresses: [\"198.19.0.0/24\"], destinationPorts: [\"9\"]}\n",
    );
    s
}

fn load_policy(n: usize) -> Result<(String, portcullis_rules::Policy)> {
    let text = bench_policy(n);
    let loaded = portcullis_rules::load_str("bench-l4.yaml", &text, &portcullis_rules::MemLoader::default())
        .map_err(|e| anyhow!("bench policy does not load:\n{e}"))?;
    Ok((text, loaded.config.policy))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Plain,
    Nft(Form),
    Portcullis,
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::Plain => "plain".into(),
            Mode::Nft(f) => format!("nft-{}", f.name()),
            Mode::Portcullis => "portcullis".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Flow {
    New,
    Est,
}

impl Flow {
    fn name(self) -> &'static str {
        match self {
            Flow::New => "new",
            Flow::Est => "est",
        }
    }
}

/// (flow mode, mode, rule count; None = independent of rules)
type Key = (Flow, Mode, Option<usize>);

#[derive(Clone, Debug)]
struct Measure {
    pps: f64,
    /// CPU time of the firewall's own threads per forwarded packet.
    thread_ns_per_pkt: f64,
    /// Share of the firewall core busy with something other than the firewall's threads.
    foreign: f64,
    ns_per_pkt: f64,
    fw_busy: f64,
    fw_steal: f64,
    offered_pps: f64,
    snat_frac: f64,
    flows_seen: u64,
    primed: Option<u64>,
    load1: f64,
}

struct Ctx {
    args: RunArgs,
    portcullis_help: String,
    bin_dir: PathBuf,
    work: PathBuf,
    hz: f64,
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn in_ns(ns: &str, cpu: u32, prog: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "taskset", "-c", &cpu.to_string()])
        .arg(prog);
    c
}

/// Kills (SIGTERM, then SIGKILL) the children it holds when dropped.
#[derive(Default)]
struct Kids(Vec<Child>);

fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    for _ in 0..50 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            stop(c);
        }
    }
}

/// The namespaces; deleted when dropped.
struct Topo<'a>(&'a Ctx);

impl<'a> Topo<'a> {
    fn up(ctx: &'a Ctx) -> Result<Self> {
        let t = Topo(ctx);
        t.script("up")?;
        Ok(t)
    }
    fn script(&self, what: &str) -> Result<()> {
        sh(Command::new(&self.0.args.topo)
            .arg(what)
            .env("FW_CPU", self.0.args.fw_cpu.to_string())
            .env("EP_CPU", self.0.args.ep_cpu.to_string()))
        .map(drop)
    }
}

impl Drop for Topo<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.script("down") {
            eprintln!("l4bench: topology teardown: {e}");
        }
    }
}

/// An l4sink process, driven over its stdin.
struct Sink {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

type Counters = BTreeMap<String, u64>;

impl Sink {
    fn start(ctx: &Ctx, ns: &str, iface: &str, snat: Option<&str>, key_dport: bool, echo: bool) -> Result<Self> {
        let mut c = in_ns(ns, ctx.args.ep_cpu, &ctx.bin_dir.join("l4sink"));
        c.arg("--obj")
            .arg(ctx.args.bpf_dir.join("l4sink.bpf.o"))
            .args(["--iface", iface]);
        if let Some(a) = snat {
            c.args(["--snat", a]);
        }
        if key_dport {
            c.arg("--key-dport");
        }
        if echo {
            c.args(["--echo-port", "9"]);
        }
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting l4sink")?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("l4sink stdout")?);
        let mut s = Sink { child, stdin, stdout };
        let ready = s.line()?;
        if ready != "ready" {
            bail!("l4sink on {iface}: {ready}");
        }
        Ok(s)
    }
    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.stdout.read_line(&mut l)? == 0 {
            bail!("l4sink exited");
        }
        Ok(l.trim().to_owned())
    }
    fn cmd(&mut self, cmd: &str) -> Result<String> {
        let stdin = self.stdin.as_mut().context("l4sink stdin closed")?;
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        self.line()
    }
    fn snap(&mut self) -> Result<Counters> {
        let l = self.cmd("snap")?;
        let mut out = Counters::new();
        for kv in l.split_whitespace() {
            let (k, v) = kv.split_once('=').with_context(|| format!("bad snap line {l:?}"))?;
            out.insert(k.to_owned(), v.parse()?);
        }
        Ok(out)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        drop(self.stdin.take());
        for _ in 0..20 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop(&mut self.child);
    }
}

/// (busy, idle+iowait, steal) ticks of one CPU from /proc/stat.
fn cpu_ticks(cpu: u32) -> Result<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let tag = format!("cpu{cpu} ");
    let line = stat
        .lines()
        .find(|l| l.starts_with(&tag))
        .with_context(|| format!("no {tag} in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Ok((busy, v[3] + v[4], v[7]))
}

fn all_cpu_idle_frac(prev: &mut Option<(u64, u64)>) -> Result<Option<f64>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let idle = v[3] + v[4];
    let total: u64 = v.iter().sum();
    let out = prev.map(|(pi, pt)| {
        let dt = total.saturating_sub(pt).max(1);
        idle.saturating_sub(pi) as f64 / dt as f64
    });
    *prev = Some((idle, total));
    Ok(out)
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Waits (bounded) for a quiet machine: load1 below the threshold, or — since load1 lags our own
/// previous round by minutes — both cores ≥ 95 % idle for 3 consecutive seconds. Returns load1 and
/// whether the machine was quiet.
fn wait_quiet(args: &RunArgs) -> Result<(f64, bool)> {
    let start = Instant::now();
    let mut prev = None;
    all_cpu_idle_frac(&mut prev)?;
    let mut idle_streak = 0;
    loop {
        let l = load1();
        if l < args.quiet_load || idle_streak >= 3 {
            return Ok((l, true));
        }
        if start.elapsed().as_secs_f64() >= args.quiet_wait {
            return Ok((l, false));
        }
        std::thread::sleep(Duration::from_secs(1));
        match all_cpu_idle_frac(&mut prev)? {
            Some(f) if f >= 0.95 => idle_streak += 1,
            _ => idle_streak = 0,
        }
    }
}

fn wait_idle_second(max: f64) {
    let start = Instant::now();
    let mut prev = None;
    let _ = all_cpu_idle_frac(&mut prev);
    while start.elapsed().as_secs_f64() < max {
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(Some(f)) = all_cpu_idle_frac(&mut prev)
            && f >= 0.9
        {
            return;
        }
    }
}

struct Snap {
    t: Instant,
    srv: Counters,
    fw: (u64, u64, u64),
    /// utime + stime of the firewall's threads: its veths' NAPI kthreads, ksoftirqd of its core
    /// and the appliance process.
    threads: u64,
}

fn task_ticks(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the parenthesised comm: state is field 3; utime, stime are fields 14, 15.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i - 3).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    get(14) + get(15)
}

fn fw_threads(ctx: &Ctx, extra: &[u32]) -> Vec<u32> {
    let mut pids = extra.to_vec();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    let ksoftirqd = format!("ksoftirqd/{}", ctx.args.fw_cpu);
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let comm = comm.trim();
        if comm.starts_with(&format!("napi/{IF_IN}-"))
            || comm.starts_with(&format!("napi/{IF_OUT}-"))
            || comm == ksoftirqd
        {
            pids.push(pid);
        }
    }
    pids
}

fn take_snap(srv: &mut Sink, ctx: &Ctx, pids: &[u32]) -> Result<Snap> {
    let fw = cpu_ticks(ctx.args.fw_cpu)?;
    let threads = pids.iter().map(|&p| task_ticks(p)).sum();
    let t = Instant::now();
    let srv = srv.snap()?;
    Ok(Snap { t, srv, fw, threads })
}

fn gen_cmd(ctx: &Ctx, sport_base: u32, flows: u32) -> Command {
    let mut c = in_ns(NS_CLI, ctx.args.ep_cpu, &ctx.bin_dir.join("l4gen"));
    c.arg("--obj")
        .arg(ctx.args.bpf_dir.join("l4gen.bpf.o"))
        .args(["--iface", IF_CLI, "--dst-mac", MAC_IN])
        .args(["--sport-base", &sport_base.to_string(), "--flows", &flows.to_string()]);
    c
}

/// `est` mode: the server's echo socket answers every packet while each flow is sent (paced) until
/// the client side has seen a reply on every flow (bounded: 20 passes or 40 s); passes repeat
/// because paced bursts still overflow a veth ring now and then. Returns the flows answered.
fn prime(ctx: &Ctx, srv: &mut Sink, cli: &mut Sink) -> Result<u64> {
    srv.cmd("echo")?;
    let start = Instant::now();
    let mut answered = 0;
    for _ in 0..20 {
        // Every 128th run transmits: ~20k evenly spaced frames/s, each flow once per pass.
        sh(gen_cmd(ctx, SPORT_BASE, ctx.args.flows).args([
            "--frames",
            &(u64::from(ctx.args.flows) * 128).to_string(),
            "--every",
            "128",
            "--batch",
            "16",
            "--seconds",
            "5",
        ]))?;
        std::thread::sleep(Duration::from_millis(100));
        answered = cli.snap()?.get("flows").copied().unwrap_or(0);
        if answered >= u64::from(ctx.args.flows) || start.elapsed() > Duration::from_secs(40) {
            break;
        }
    }
    srv.cmd("reply 0")?;
    std::thread::sleep(Duration::from_millis(200));
    Ok(answered)
}

/// `Ok(help text of `portcullis run`)` when the binary has the command.
fn portcullis_available(path: &Path) -> Result<String, String> {
    if !path.exists() {
        return Err(format!("{} not built", path.display()));
    }
    match Command::new(path).args(["run", "--help"]).output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(_) => Err(format!("{} has no `run` command", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn xdp_attached(dev: &str) -> bool {
    Command::new("ip")
        .args(["-n", NS_FW, "-d", "link", "show", "dev", dev])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("xdp"))
        .unwrap_or(false)
}

fn start_portcullis(ctx: &Ctx, rules: usize, tag: &str, kids: &mut Kids) -> Result<()> {
    let log = ctx.work.join(format!("portcullis-{tag}.log"));
    let f = std::fs::File::create(&log)?;
    // nsenter, not `ip netns exec`: only the network namespace changes, so the host's bpffs at
    // /sys/fs/bpf stays visible for the daemon's pins.
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{NS_FW}"))
        .args(["--", "taskset", "-c", &ctx.args.fw_cpu.to_string()])
        .arg(&ctx.args.portcullis)
        .arg("run")
        .arg("--config")
        .arg(ctx.work.join(format!("policy-{rules}.yaml")));
    // Private pins and state, removed on exit, when this build has the options.
    let help = &ctx.portcullis_help;
    if help.contains("--pin-dir") {
        c.args(["--pin-dir", "/sys/fs/bpf/pcl4-bench"]);
    }
    if help.contains("--state-dir") {
        c.arg("--state-dir").arg(ctx.work.join("portcullis-state"));
    }
    if help.contains("--flush") {
        c.arg("--flush");
    }
    let child = c
        .stdin(Stdio::null())
        .stdout(f.try_clone()?)
        .stderr(f)
        .spawn()
        .context("starting portcullis run")?;
    kids.0.push(child);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if let Some(c) = kids.0.last_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            bail!(
                "portcullis run exited ({st}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        if xdp_attached(IF_IN) {
            std::thread::sleep(Duration::from_millis(500));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("l4bench: portcullis run attached no XDP program to {IF_IN} within 30 s; measuring anyway");
    Ok(())
}

fn run_point(ctx: &Ctx, flow: Flow, mode: Mode, rules: Option<usize>, load: f64) -> Result<Measure> {
    let tag = format!(
        "{}-{}-{}",
        flow.name(),
        mode.name(),
        rules.map_or("x".into(), |r| r.to_string())
    );
    let topo = Topo::up(ctx)?;
    let mut kids = Kids::default();
    match mode {
        Mode::Plain => {}
        Mode::Nft(form) => {
            let file = ctx.work.join(format!("nft-{}-{}.nft", rules.unwrap_or(0), form.name()));
            sh(Command::new("ip")
                .args(["netns", "exec", NS_FW, "nft", "-f"])
                .arg(&file))?;
        }
        Mode::Portcullis => start_portcullis(ctx, rules.unwrap_or(0), &tag, &mut kids)?,
    }
    let mut srv = Sink::start(ctx, NS_SRV, IF_SRV, Some(SNAT_ADDR), false, flow == Flow::Est)?;
    let mut cli = Sink::start(ctx, NS_CLI, IF_CLI, None, true, false)?;
    topo.script("pin")?;
    let primed = match flow {
        Flow::New => None,
        Flow::Est => Some(prime(ctx, &mut srv, &mut cli)?),
    };

    let secs = ctx.args.warmup + ctx.args.window + 0.5;
    let n = ctx.args.generators.max(1);
    let per = ctx.args.flows / n;
    let mut gens = Kids::default();
    for g in 0..n {
        let flows = if g + 1 == n {
            ctx.args.flows - per * (n - 1)
        } else {
            per
        };
        let child = gen_cmd(ctx, SPORT_BASE + g * per, flows)
            .args(["--seconds", &format!("{secs}")])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting l4gen")?;
        gens.0.push(child);
    }
    std::thread::sleep(Duration::from_secs_f64(ctx.args.warmup));
    let appliance: Vec<u32> = kids.0.iter().map(Child::id).collect();
    let pids = fw_threads(ctx, &appliance);
    let a = take_snap(&mut srv, ctx, &pids)?;
    std::thread::sleep(Duration::from_secs_f64(ctx.args.window));
    let b = take_snap(&mut srv, ctx, &pids)?;

    // Bounded wait for the generators to finish.
    let mut offered = 0.0;
    for c in &mut gens.0 {
        let deadline = Instant::now() + Duration::from_secs_f64(secs + 10.0);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop(c);
        let mut out = String::new();
        if let Some(mut so) = c.stdout.take() {
            let _ = std::io::Read::read_to_string(&mut so, &mut out);
        }
        let kv: BTreeMap<&str, f64> = out
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect();
        match (kv.get("frames"), kv.get("seconds")) {
            (Some(f), Some(s)) if *s > 0.0 => offered += f / s,
            _ => bail!("l4gen failed (output {out:?})"),
        }
    }
    drop(gens);

    let dt = b.t.duration_since(a.t).as_secs_f64();
    let d = |k: &str| {
        b.srv
            .get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(a.srv.get(k).copied().unwrap_or(0))
    };
    let fwd = d("rx");
    let busy = b.fw.0.saturating_sub(a.fw.0);
    let idle = b.fw.1.saturating_sub(a.fw.1);
    let steal = b.fw.2.saturating_sub(a.fw.2);
    let total = (busy + idle).max(1);
    let threads = b.threads.saturating_sub(a.threads);
    let m = Measure {
        thread_ns_per_pkt: if fwd > 0 {
            threads as f64 * 1e9 / ctx.hz / fwd as f64
        } else {
            f64::NAN
        },
        foreign: busy.saturating_sub(threads) as f64 / total as f64,
        pps: fwd as f64 / dt,
        ns_per_pkt: if fwd > 0 {
            busy as f64 * 1e9 / ctx.hz / fwd as f64
        } else {
            f64::NAN
        },
        fw_busy: busy as f64 / total as f64,
        fw_steal: steal as f64 / total as f64,
        offered_pps: offered,
        snat_frac: if fwd > 0 { d("snat") as f64 / fwd as f64 } else { 0.0 },
        flows_seen: b.srv.get("flows").copied().unwrap_or(0),
        primed,
        load1: load,
    };
    drop(cli);
    drop(srv);
    drop(kids);
    drop(topo);
    Ok(m)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Stat {
    med: f64,
    min: f64,
    max: f64,
}

fn stat(v: impl Iterator<Item = f64>) -> Stat {
    let mut v: Vec<f64> = v.filter(|x| x.is_finite()).collect();
    let med = median(&mut v);
    Stat {
        med,
        min: v.first().copied().unwrap_or(f64::NAN),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

fn kpps(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else {
        format!("{:.1}k", x / 1e3)
    }
}

fn ns(x: f64) -> String {
    if x >= 10_000.0 {
        format!("{:.1}µs", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn table(results: &BTreeMap<Key, Vec<Measure>>, skipped: &BTreeMap<Key, String>, args: &RunArgs) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nL3/L4 forwarding through the firewall namespace: 60-byte UDP, {} flows, {} s windows, fw core = CPU{}; median [min–max] over rounds",
        args.flows, args.window, args.fw_cpu
    );
    let _ = writeln!(
        s,
        "| flows | mode | rules | forwarded pps | pps, rounds with foreign < 10 % | fw core ns/pkt | fw threads ns/pkt | fw busy | foreign (max) | offered pps | SNATed | rounds |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut keys: Vec<&Key> = results.keys().chain(skipped.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (flow, mode, rules) = *k;
        let r = rules.map_or("-".into(), |r| r.to_string());
        if let Some(why) = skipped.get(k)
            && !results.contains_key(k)
        {
            let _ = writeln!(
                s,
                "| {} | {} | {r} | {why} | | | | | | | | 0 |",
                flow.name(),
                mode.name()
            );
            continue;
        }
        let ms = &results[k];
        let p = stat(ms.iter().map(|m| m.pps));
        let quiet: Vec<f64> = ms.iter().filter(|m| m.foreign < 0.1).map(|m| m.pps).collect();
        let q = if quiet.is_empty() {
            "-".to_owned()
        } else {
            format!("{} ({})", kpps(stat(quiet.iter().copied()).med), quiet.len())
        };
        let c = stat(ms.iter().map(|m| m.ns_per_pkt));
        let t = stat(ms.iter().map(|m| m.thread_ns_per_pkt));
        let fo = stat(ms.iter().map(|m| m.foreign));
        let b = stat(ms.iter().map(|m| m.fw_busy));
        let o = stat(ms.iter().map(|m| m.offered_pps));
        let sn = stat(ms.iter().map(|m| m.snat_frac));
        let _ = writeln!(
            s,
            "| {} | {} | {r} | {} [{}–{}] | {q} | {} [{}–{}] | {} [{}–{}] | {:.0} % | {:.0} % | {} | {:.0} % | {} |",
            flow.name(),
            mode.name(),
            kpps(p.med),
            kpps(p.min),
            kpps(p.max),
            ns(c.med),
            ns(c.min),
            ns(c.max),
            ns(t.med),
            ns(t.min),
            ns(t.max),
            b.med * 100.0,
            fo.max * 100.0,
            kpps(o.med),
            sn.med * 100.0,
            ms.len()
        );
    }
    // Ratios of medians, same run: forwarded pps, and packets per CPU-second of the firewall's own
    // threads (1 / fw threads ns/pkt), the figure least disturbed by other load on the machine.
    let ratio = |a: &Key, b: &Key| -> Option<String> {
        let (ma, mb) = (results.get(a)?, results.get(b)?);
        let pps = stat(ma.iter().map(|m| m.pps)).med / stat(mb.iter().map(|m| m.pps)).med;
        let cpu = stat(mb.iter().map(|m| m.thread_ns_per_pkt)).med / stat(ma.iter().map(|m| m.thread_ns_per_pkt)).med;
        Some(format!("{pps:.3} (pps), {cpu:.3} (per fw CPU-second)"))
    };
    let _ = writeln!(s, "\nRatios of medians, same run:");
    let mut lines = Vec::new();
    for flow in [Flow::New, Flow::Est] {
        let f = flow.name();
        let plain = (flow, Mode::Plain, None);
        for &n in &args.rules {
            let pc = (flow, Mode::Portcullis, Some(n));
            let lin = (flow, Mode::Nft(Form::Linear), Some(n));
            let cat = (flow, Mode::Nft(Form::Concat), Some(n));
            let pps_of = |k: &Key| results.get(k).map(|ms| stat(ms.iter().map(|m| m.pps)).med);
            // The best nftables form at this rule count.
            let best = match (pps_of(&lin), pps_of(&cat)) {
                (Some(l), Some(c)) => Some(if c > l { cat } else { lin }),
                (Some(_), None) => Some(lin),
                (None, Some(_)) => Some(cat),
                (None, None) => None,
            };
            if let Some(best) = best {
                let bn = best.1.name();
                lines.extend(ratio(&pc, &best).map(|r| format!("- {f} @{n} rules: portcullis / {bn} = {r}")));
                lines.extend(ratio(&best, &plain).map(|r| format!("- {f} @{n} rules: {bn} / plain = {r}")));
            }
            lines.extend(ratio(&cat, &lin).map(|r| format!("- {f} @{n} rules: nft-concat / nft-linear = {r}")));
            lines.extend(ratio(&pc, &plain).map(|r| format!("- {f} @{n} rules: portcullis / plain = {r}")));
        }
        if let (Some(&lo), Some(&hi)) = (args.rules.iter().min(), args.rules.iter().max())
            && lo != hi
        {
            for mode in [Mode::Portcullis, Mode::Nft(Form::Linear), Mode::Nft(Form::Concat)] {
                let note = if mode == Mode::Portcullis {
                    " (should stay ≈ 1)"
                } else {
                    ""
                };
                lines.extend(
                    ratio(&(flow, mode, Some(hi)), &(flow, mode, Some(lo)))
                        .map(|r| format!("- {f}: {} @{hi} / @{lo} rules = {r}{note}", mode.name())),
                );
            }
        }
    }
    if lines.is_empty() {
        lines.push("- (none)".into());
    }
    for l in lines {
        let _ = writeln!(s, "{l}");
    }
    for (k, why) in skipped {
        if k.1 == Mode::Portcullis && !results.contains_key(k) {
            let _ = writeln!(s, "\nportcullis: {why}");
            break;
        }
    }
    s
}

fn run(args: RunArgs) -> Result<()> {
    if !nix_is_root() {
        bail!("l4bench run needs root (namespaces, XDP, BPF_PROG_TEST_RUN)");
    }
    let t0 = Instant::now();
    let bin_dir = std::env::current_exe()?
        .parent()
        .context("no executable directory")?
        .to_path_buf();
    let work = args.work.clone().unwrap_or_else(|| bin_dir.join("l4bench-run"));
    std::fs::create_dir_all(&work)?;
    for obj in ["l4gen.bpf.o", "l4sink.bpf.o"] {
        if !args.bpf_dir.join(obj).exists() {
            bail!(
                "{} missing: run bench/netns/build-bpf.sh",
                args.bpf_dir.join(obj).display()
            );
        }
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let pc_ok = portcullis_available(&args.portcullis);
    let ctx = Ctx {
        portcullis_help: pc_ok.clone().unwrap_or_default(),
        args: args.clone(),
        bin_dir,
        work: work.clone(),
        hz,
    };

    let mut flows = Vec::new();
    for f in &args.flow_modes {
        flows.push(match f.as_str() {
            "new" => Flow::New,
            "est" => Flow::Est,
            other => bail!("unknown flow mode {other:?} (new, est)"),
        });
    }
    let mut modes = Vec::new();
    for m in &args.modes {
        modes.push(match m.as_str() {
            "plain" => Mode::Plain,
            "nft-linear" => Mode::Nft(Form::Linear),
            "nft-concat" => Mode::Nft(Form::Concat),
            "portcullis" => Mode::Portcullis,
            other => bail!("unknown mode {other:?} (plain, nft-linear, nft-concat, portcullis)"),
        });
    }

    // Points of one round, interleaved: per flow mode, per rule count, every mode.
    let mut skipped: BTreeMap<Key, String> = BTreeMap::new();
    let nft_ok = Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let mut points: Vec<Key> = Vec::new();
    for &flow in &flows {
        if modes.contains(&Mode::Plain) {
            points.push((flow, Mode::Plain, None));
        }
        for &n in &args.rules {
            for &mode in &modes {
                let key = (flow, mode, Some(n));
                match mode {
                    Mode::Plain => continue,
                    Mode::Nft(Form::Concat) if n < args.concat_min_rules => continue,
                    Mode::Nft(_) if !nft_ok => {
                        skipped.insert(key, "nft not installed (apt-get install nftables)".into());
                        continue;
                    }
                    Mode::Portcullis => {
                        if let Err(why) = &pc_ok {
                            skipped.insert(key, format!("portcullis run not available yet ({why})"));
                            continue;
                        }
                    }
                    _ => {}
                }
                points.push(key);
            }
        }
    }

    // Policies and rulesets, once.
    for &n in &args.rules {
        let (text, policy) = load_policy(n)?;
        std::fs::write(work.join(format!("policy-{n}.yaml")), &text)?;
        for form in [Form::Linear, Form::Concat] {
            if !points.iter().any(|k| k.1 == Mode::Nft(form) && k.2 == Some(n)) {
                continue;
            }
            let rs = nft::ruleset(&policy, form, IF_IN, IF_OUT)?;
            std::fs::write(work.join(format!("nft-{n}-{}.nft", form.name())), &rs.text)?;
            eprintln!(
                "l4bench: {n} rules: {} network rules → nft {} form, {} {}",
                rs.rules,
                form.name(),
                rs.entries,
                if form == Form::Linear {
                    "chain rules"
                } else {
                    "map elements"
                }
            );
        }
    }
    // Measured: ~22 s a point on average (topology, nft load of up to 7 s, priming, teardown).
    let est_point = 8.0 + args.warmup + args.window;
    eprintln!(
        "l4bench: {} points × {} rounds (≈ {:.0} s each) → ≈ {:.1} min; results in {}",
        points.len(),
        args.rounds,
        est_point,
        (points.len() * args.rounds) as f64 * est_point / 60.0,
        work.display()
    );

    let mut results: BTreeMap<Key, Vec<Measure>> = BTreeMap::new();
    let mut tsv = String::from(
        "round\tflow\tmode\trules\tpps\tfw_ns_per_pkt\tthread_ns_per_pkt\tforeign\tfw_busy\tfw_steal\toffered_pps\tsnat_frac\tflows_seen\tprimed\tload1\n",
    );
    let budget = Duration::from_secs_f64(args.max_minutes * 60.0);
    'rounds: for round in 1..=args.rounds {
        let (l, quiet) = wait_quiet(&args)?;
        eprintln!(
            "l4bench: round {round}: load1 {l:.2}{}",
            if quiet {
                ""
            } else {
                " (machine not quiet; measuring anyway)"
            }
        );
        for &(flow, mode, rules) in &points {
            if t0.elapsed() + Duration::from_secs_f64(est_point) > budget {
                eprintln!("l4bench: time budget of {} min reached; stopping", args.max_minutes);
                break 'rounds;
            }
            let label = format!(
                "{} {} {}",
                flow.name(),
                mode.name(),
                rules.map_or("-".into(), |r| r.to_string())
            );
            // Others share this machine: wait (bounded) for a second with both cores ≥ 90 % idle.
            wait_idle_second(args.point_quiet_wait);
            match run_point(&ctx, flow, mode, rules, load1()) {
                Ok(m) => {
                    eprintln!(
                        "l4bench: round {round} {label}: {} pps, {} ns/pkt (fw threads {}), fw busy {:.0} % (foreign {:.0} %, steal {:.0} %), offered {} pps, SNAT {:.0} %, flows {}{}",
                        kpps(m.pps),
                        ns(m.ns_per_pkt),
                        ns(m.thread_ns_per_pkt),
                        m.fw_busy * 100.0,
                        m.foreign * 100.0,
                        m.fw_steal * 100.0,
                        kpps(m.offered_pps),
                        m.snat_frac * 100.0,
                        m.flows_seen,
                        m.primed.map_or(String::new(), |p| format!(", primed {p}"))
                    );
                    let _ = writeln!(
                        tsv,
                        "{round}\t{}\t{}\t{}\t{:.0}\t{:.1}\t{:.1}\t{:.3}\t{:.3}\t{:.3}\t{:.0}\t{:.3}\t{}\t{}\t{:.2}",
                        flow.name(),
                        mode.name(),
                        rules.map_or("-".into(), |r| r.to_string()),
                        m.pps,
                        m.ns_per_pkt,
                        m.thread_ns_per_pkt,
                        m.foreign,
                        m.fw_busy,
                        m.fw_steal,
                        m.offered_pps,
                        m.snat_frac,
                        m.flows_seen,
                        m.primed.map_or("-".into(), |p| p.to_string()),
                        m.load1
                    );
                    results.entry((flow, mode, rules)).or_default().push(m);
                }
                Err(e) => {
                    eprintln!("l4bench: round {round} {label}: FAILED: {e:#}");
                    skipped
                        .entry((flow, mode, rules))
                        .or_insert_with(|| format!("failed: {e:#}"));
                }
            }
            std::fs::write(work.join("results.tsv"), &tsv)?;
        }
    }
    let t = table(&results, &skipped, &args);
    std::fs::write(work.join("table.md"), &t)?;
    println!("{t}");
    eprintln!("l4bench: done in {:.1} min", t0.elapsed().as_secs_f64() / 60.0);
    Ok(())
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Policy { rules } => {
            print!("{}", bench_policy(rules));
            Ok(())
        }
        Cmd::Nft { rules, form } => {
            let (_, policy) = load_policy(rules)?;
            let rs = nft::ruleset(&policy, form, IF_IN, IF_OUT)?;
            print!("{}", rs.text);
            Ok(())
        }
        Cmd::Run(args) => run(*args),
        Cmd::Table { tsv, rules } => {
            let text = std::fs::read_to_string(&tsv).with_context(|| tsv.display().to_string())?;
            let mut results: BTreeMap<Key, Vec<Measure>> = BTreeMap::new();
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split('\t').collect();
                if f.len() < 15 {
                    bail!("short line in {}: {line:?}", tsv.display());
                }
                let flow = if f[1] == "est" { Flow::Est } else { Flow::New };
                let mode = match f[2] {
                    "plain" => Mode::Plain,
                    "nft-linear" => Mode::Nft(Form::Linear),
                    "nft-concat" => Mode::Nft(Form::Concat),
                    _ => Mode::Portcullis,
                };
                let num = |i: usize| f[i].parse::<f64>().unwrap_or(f64::NAN);
                let m = Measure {
                    pps: num(4),
                    ns_per_pkt: num(5),
                    thread_ns_per_pkt: num(6),
                    foreign: num(7),
                    fw_busy: num(8),
                    fw_steal: num(9),
                    offered_pps: num(10),
                    snat_frac: num(11),
                    flows_seen: f[12].parse().unwrap_or(0),
                    primed: f[13].parse().ok(),
                    load1: num(14),
                };
                results.entry((flow, mode, f[3].parse().ok())).or_default().push(m);
            }
            let mut args = RunArgs::parse_from(["run", "--bpf-dir", ".", "--topo", ".", "--portcullis", "."]);
            args.rules = rules;
            print!("{}", table(&results, &BTreeMap::new(), &args));
            Ok(())
        }
    }
}
