//! [`DataPlaneSettings`]: what `portcullis run` tells the data plane at [`DataPlane::open`](super::DataPlane::open).

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use portcullis_common::{
    BITMAP_CHUNKS_DEFAULT, CT_DEFAULT_MAX_ENTRIES, FLAG_APP_PROXY, FLAG_PASS_IPV6, Globals, MAX_SNAT_ADDRS,
    TIMEOUT_ICMP, TIMEOUT_OTHER, TIMEOUT_SLOTS, TIMEOUT_TCP_CLOSED, TIMEOUT_TCP_ESTABLISHED, TIMEOUT_TCP_FIN,
    TIMEOUT_TCP_SYN, TIMEOUT_UDP,
};

/// The default pin directory (bpffs).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/portcullis";

/// The default SNAT port range. The host's own ephemeral range (`net.ipv4.ip_local_port_range`,
/// used by the proxy's and the DNS proxy's upstream sockets) must lie below it:
/// [`HOST_EPHEMERAL_PORTS`] is what netsetup writes.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (40_000, 65_535);
/// The host ephemeral range that goes with [`DEFAULT_SNAT_PORTS`] (32768–39999: 7,232 ports for
/// the appliance's own upstream connections).
pub const HOST_EPHEMERAL_PORTS: (u16, u16) = (32_768, 39_999);

/// Idle timeouts of tracked flows. The program checks them on lookup: an entry idle longer than
/// its timeout (in both directions) is deleted and the packet handled as a new flow, so a reply
/// after the timeout is dropped. [`DataPlane::sweep`](super::DataPlane::sweep) removes expired
/// entries nobody looks up any more (the LRU map also evicts the oldest when full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// SYN seen, no reply yet.
    pub tcp_syn: Duration,
    /// Azure Firewall's TCP idle timeout is 4 minutes (§8).
    pub tcp_established: Duration,
    /// One side sent FIN.
    pub tcp_fin: Duration,
    /// FIN both ways or RST: short, so the last ACK passes and the tuple is freed quickly (Azure
    /// releases SNAT ports on close).
    pub tcp_closed: Duration,
    pub udp: Duration,
    /// ICMP echo (tracked by id).
    pub icmp: Duration,
    /// Other IP protocols (no ports: tracked per address pair).
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn: Duration::from_secs(60),
            tcp_established: Duration::from_secs(240),
            tcp_fin: Duration::from_secs(60),
            tcp_closed: Duration::from_secs(10),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(30),
            other: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPlaneSettings {
    /// bpffs directory for the conntrack map and the XDP links (created if missing). Empty = pin
    /// nothing (tests): state dies with the process.
    pub pin_dir: PathBuf,
    /// Internal (spoke-side) interface.
    pub internal: String,
    /// External (Internet-side) interface; `None` = one-arm (the internal one does both).
    pub external: Option<String>,
    /// DNAT'ed flows get this source toward the spoke (Azure does, §2.1).
    pub internal_address: Ipv4Addr,
    /// SNAT sources, chosen per flow by a hash of the tuple (at most 16). Empty = never SNAT.
    pub snat_addresses: Vec<Ipv4Addr>,
    /// Inclusive SNAT (and DNAT-source collision) port range; must not overlap the host's
    /// ephemeral range. Default [`DEFAULT_SNAT_PORTS`].
    pub snat_ports: (u16, u16),
    /// The appliance's own addresses: traffic to them (DNS, management, replies to its own
    /// sockets) passes to the host stack. The SNAT addresses and the internal address are added.
    pub local_addresses: Vec<Ipv4Addr>,
    /// Conntrack capacity (two entries per flow). Default 1,048,576. Only applies when the
    /// pinned map is created; a reused map keeps its size.
    pub ct_max_entries: u32,
    pub timeouts: Timeouts,
    /// Pass IPv6 to the host stack instead of dropping it (default false: dropped, counted).
    pub pass_ipv6: bool,
    /// The application proxy listens on the application-rule ports: pass those connections to the
    /// host. `false` (no proxy) drops them, counted as `app_no_proxy`.
    pub application_proxy: bool,
    /// Capacity of each rule-bitmap table in 64-byte chunks (default 262,144 = 16 MiB per set; 10,000 synthetic rules need ~180,000).
    pub bitmap_chunks: u32,
}

impl DataPlaneSettings {
    /// Defaults for everything but the interfaces and addresses.
    pub fn new(internal: impl Into<String>, internal_address: Ipv4Addr) -> Self {
        DataPlaneSettings {
            pin_dir: PathBuf::from(DEFAULT_PIN_DIR),
            internal: internal.into(),
            external: None,
            internal_address,
            snat_addresses: Vec::new(),
            snat_ports: DEFAULT_SNAT_PORTS,
            local_addresses: Vec::new(),
            ct_max_entries: CT_DEFAULT_MAX_ENTRIES,
            timeouts: Timeouts::default(),
            pass_ipv6: false,
            application_proxy: false,
            bitmap_chunks: BITMAP_CHUNKS_DEFAULT,
        }
    }

    /// Checks what the program relies on; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        let (lo, hi) = self.snat_ports;
        if lo == 0 || lo > hi {
            return Err(format!("snat_ports {lo}-{hi}: need 1 <= low <= high"));
        }
        if lo <= 53 {
            return Err(format!("snat_ports {lo}-{hi} must start above the DNS port"));
        }
        if self.snat_addresses.len() > MAX_SNAT_ADDRS {
            return Err(format!(
                "{} snat addresses: at most {MAX_SNAT_ADDRS} are supported",
                self.snat_addresses.len()
            ));
        }
        if self.ct_max_entries < 2 {
            return Err("ct_max_entries must be at least 2".to_owned());
        }
        if self.bitmap_chunks == 0 {
            return Err("bitmap_chunks must be positive".to_owned());
        }
        Ok(())
    }

    /// Every address the program treats as the appliance's own.
    pub fn all_local_addresses(&self) -> Vec<Ipv4Addr> {
        let mut v = self.local_addresses.clone();
        v.extend(&self.snat_addresses);
        v.push(self.internal_address);
        v.sort();
        v.dedup();
        v.retain(|a| !a.is_unspecified());
        v
    }

    pub(crate) fn globals(&self, external_ifindex: u32) -> Globals {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let mut snat = [0u32; MAX_SNAT_ADDRS];
        for (slot, a) in snat.iter_mut().zip(&self.snat_addresses) {
            *slot = u32::from_ne_bytes(a.octets());
        }
        Globals {
            flags: if self.pass_ipv6 { FLAG_PASS_IPV6 } else { 0 }
                | if self.application_proxy { FLAG_APP_PROXY } else { 0 },
            external_ifindex,
            internal_addr: u32::from_ne_bytes(self.internal_address.octets()),
            snat_port_lo: self.snat_ports.0,
            snat_port_hi: self.snat_ports.1,
            n_snat: self.snat_addresses.len().min(MAX_SNAT_ADDRS) as u32,
            _pad: 0,
            snat,
            timeouts: {
                let t = &self.timeouts;
                let mut v = [0u64; TIMEOUT_SLOTS];
                v[TIMEOUT_TCP_SYN] = ns(t.tcp_syn);
                v[TIMEOUT_TCP_ESTABLISHED] = ns(t.tcp_established);
                v[TIMEOUT_TCP_FIN] = ns(t.tcp_fin);
                v[TIMEOUT_TCP_CLOSED] = ns(t.tcp_closed);
                v[TIMEOUT_UDP] = ns(t.udp);
                v[TIMEOUT_ICMP] = ns(t.icmp);
                v[TIMEOUT_OTHER] = ns(t.other);
                v
            },
        }
    }
}
