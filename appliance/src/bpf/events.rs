//! Flow events from the `EVENTS` ring buffer.

use std::{
    net::Ipv4Addr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
};

use aya::maps::{MapData, RingBuf};
use portcullis_common::{
    EV_RECLASSIFIED, EV_SNAT, EV_SNAT_EXHAUSTED, EV_TI_ALERT, FlowEvent as RawEvent, NO_RULE, STAGE_APPLICATION,
    STAGE_DNAT, STAGE_NETWORK, STAGE_THREAT_INTEL, VERDICT_ALLOW, VERDICT_DNAT,
};
use portcullis_rules::{Stage, Verdict};

/// One new (or re-classified) flow's decision, as the program made it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FlowEvent {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// TCP/UDP ports; ICMP echo request: `sport` is the id.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub verdict: Verdict,
    pub stage: Stage,
    /// Index into `Policy::rules` of the deciding rule (`None`: threat intel or default deny).
    pub rule_index: Option<u32>,
    /// The flow leaves with an appliance address (SNAT, or DNAT's source rewrite).
    pub snat: bool,
    /// DNAT: the translated destination; SNAT: the chosen source address and port.
    pub nat: Option<(Ipv4Addr, u16)>,
    /// The destination is on the threat-intel feed (mode Alert; the verdict is the rules').
    pub threat_intel_alert: bool,
    /// An established flow re-classified after a policy change (only denials are reported).
    pub reclassified: bool,
    /// Dropped because no SNAT port was free.
    pub snat_exhausted: bool,
    pub generation: u32,
}

impl FlowEvent {
    pub(crate) fn from_raw(e: &RawEvent) -> Self {
        let ip = |v: u32| Ipv4Addr::from(v.to_ne_bytes());
        FlowEvent {
            src: ip(e.src),
            dst: ip(e.dst),
            sport: e.sport,
            dport: e.dport,
            proto: e.proto,
            verdict: match e.verdict {
                VERDICT_ALLOW => Verdict::Allow,
                VERDICT_DNAT => Verdict::Dnat,
                _ => Verdict::Deny,
            },
            stage: match e.stage {
                STAGE_THREAT_INTEL => Stage::ThreatIntel,
                STAGE_DNAT => Stage::Dnat,
                STAGE_NETWORK => Stage::Network,
                STAGE_APPLICATION => Stage::Application,
                _ => Stage::Default,
            },
            rule_index: (e.rule_index != NO_RULE).then_some(e.rule_index),
            snat: e.flags & EV_SNAT != 0,
            nat: (e.nat_addr != 0).then(|| (ip(e.nat_addr), e.nat_port)),
            threat_intel_alert: e.flags & EV_TI_ALERT != 0,
            reclassified: e.flags & EV_RECLASSIFIED != 0,
            snat_exhausted: e.flags & EV_SNAT_EXHAUSTED != 0,
            generation: e.generation,
        }
    }
}

/// The consumer side of the ring buffer. Poll [`EventReader::as_raw_fd`] for readability (e.g.
/// `tokio::io::unix::AsyncFd`), then [`EventReader::drain`]. Lost events (buffer full) are
/// counted in `DataPlaneStats::events_lost`.
pub struct EventReader {
    ring: RingBuf<MapData>,
    /// Next hops the program found without a neighbour entry: (interface index, address).
    neighbours: Vec<(u32, Ipv4Addr)>,
}

impl EventReader {
    pub(crate) fn new(ring: RingBuf<MapData>) -> Self {
        EventReader {
            ring,
            neighbours: Vec::new(),
        }
    }

    /// The next hops to resolve that arrived since the last call (see `fwd.rs` in the program: the
    /// packets to them were dropped, the senders' retransmissions succeed once the kernel knows them).
    pub fn take_neighbour_requests(&mut self) -> Vec<(u32, Ipv4Addr)> {
        std::mem::take(&mut self.neighbours)
    }

    /// The next event, if one is ready.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<FlowEvent> {
        loop {
            let item = self.ring.next()?;
            if item.len() < core::mem::size_of::<RawEvent>() {
                continue;
            }
            // SAFETY: the program writes whole `FlowEvent`s (`repr(C)`, integers only, every bit
            // pattern valid); the length was checked; `read_unaligned` needs no alignment.
            let raw = unsafe { core::ptr::read_unaligned(item.as_ptr() as *const RawEvent) };
            if raw.verdict == portcullis_common::VERDICT_NEIGHBOUR {
                if self.neighbours.len() < 4096 {
                    self.neighbours
                        .push((raw.rule_index, Ipv4Addr::from(raw.dst.to_ne_bytes())));
                }
                continue;
            }
            return Some(FlowEvent::from_raw(&raw));
        }
    }

    /// Every event ready now.
    pub fn drain(&mut self) -> Vec<FlowEvent> {
        std::iter::from_fn(|| self.next()).collect()
    }
}

impl AsRawFd for EventReader {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

impl AsFd for EventReader {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}
