//! The class counters of `xdp_ingress`, summed over CPUs.

use portcullis_common::Counter;

/// Defines [`ClassCounters`] with one field per [`Counter`] variant (named like
/// [`Counter::name`]) and the accessors that map between them.
macro_rules! class_counters {
    ($($variant:ident => $field:ident),+ $(,)?) => {
        /// One value per [`Counter`], each summed over all CPUs (see [`Counter`] for what is
        /// counted).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct ClassCounters {
            $(pub $field: u64,)+
        }

        impl ClassCounters {
            /// The value of `counter`.
            pub fn get(&self, counter: Counter) -> u64 {
                match counter {
                    $(Counter::$variant => self.$field,)+
                }
            }

            fn slot(&mut self, counter: Counter) -> &mut u64 {
                match counter {
                    $(Counter::$variant => &mut self.$field,)+
                }
            }
        }
    };
}

class_counters! {
    Ipv4Tcp => ipv4_tcp,
    Ipv4Udp => ipv4_udp,
    Ipv4Icmp => ipv4_icmp,
    Ipv4Other => ipv4_other,
    Ipv6 => ipv6,
    Arp => arp,
    OtherEthertype => other_ethertype,
    TruncatedEth => truncated_eth,
    TruncatedIp => truncated_ip,
    BadVersion => bad_version,
    BadIhl => bad_ihl,
    BadTotalLength => bad_total_length,
    TruncatedL4 => truncated_l4,
    BadL4Header => bad_l4_header,
    Fragment => fragment,
    DenyV4 => deny_v4,
    Ipv6Dropped => ipv6_dropped,
    FragmentDropped => fragment_dropped,
    CtHit => ct_hit,
    CtExpired => ct_expired,
    Reclassified => reclassified,
    ReclassifiedDenied => reclassified_denied,
    NewAllowed => new_allowed,
    NewDenied => new_denied,
    DefaultDeny => default_deny,
    ThreatIntelDeny => threat_intel_deny,
    ThreatIntelAlert => threat_intel_alert,
    Dnat => dnat,
    PassLocal => pass_local,
    PassDns => pass_dns,
    PassAppPort => pass_app_port,
    AppNoProxy => app_no_proxy,
    HostHit => host_hit,
    IcmpErrorRelated => icmp_error_related,
    SnatExhausted => snat_exhausted,
    SnatUnsupported => snat_unsupported,
    CtInsertFailed => ct_insert_failed,
    StaleNatPort => stale_nat_port,
    ExternalNoDnat => external_no_dnat,
    FibRedirect => fib_redirect,
    FibTx => fib_tx,
    FibNoNeigh => fib_no_neigh,
    FibPass => fib_pass,
    EventsLost => events_lost,
    NoPolicy => no_policy,
    TailCallFailed => tail_call_failed,
}

impl ClassCounters {
    pub(crate) fn set(&mut self, counter: Counter, value: u64) {
        *self.slot(counter) = value;
    }

    /// `(counter, value)` for every counter, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::ALL.into_iter().map(|c| (c, self.get(c)))
    }

    /// Frames seen: the sum of the class counters (every frame has exactly one class; the other
    /// counters are counted on top of a class).
    pub fn frames(&self) -> u64 {
        self.iter()
            .filter(|&(c, _)| c.is_class())
            .fold(0, |sum, (_, v)| sum.wrapping_add(v))
    }

    /// Frames dropped as malformed or truncated.
    pub fn malformed(&self) -> u64 {
        self.iter()
            .filter(|&(c, _)| c.is_malformed())
            .fold(0, |sum, (_, v)| sum.wrapping_add(v))
    }

    /// Frames dropped: malformed ones plus every drop reason.
    pub fn dropped(&self) -> u64 {
        self.iter()
            .filter(|&(c, _)| c.is_malformed() || c.is_drop())
            .fold(0, |sum, (_, v)| sum.wrapping_add(v))
    }

    /// Counter-wise `self - earlier` (saturating), e.g. the traffic between two reads.
    pub fn since(&self, earlier: &ClassCounters) -> ClassCounters {
        let mut delta = ClassCounters::default();
        for counter in Counter::ALL {
            delta.set(counter, self.get(counter).saturating_sub(earlier.get(counter)));
        }
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_set_cover_every_counter_distinctly() {
        let mut counters = ClassCounters::default();
        for (i, counter) in Counter::ALL.into_iter().enumerate() {
            counters.set(counter, 100 + i as u64);
        }
        for (i, (counter, value)) in counters.iter().enumerate() {
            assert_eq!(counter.index() as usize, i);
            assert_eq!(value, 100 + i as u64, "{}", counter.name());
        }
        // Field names match the counter names (the serialised form is the metrics vocabulary).
        let json = serde_json::to_value(counters).unwrap();
        for (counter, value) in counters.iter() {
            assert_eq!(json[counter.name()], value, "{}", counter.name());
        }
    }

    #[test]
    fn aggregates() {
        let mut counters = ClassCounters {
            ipv4_tcp: 5,
            ipv6: 2,
            bad_ihl: 1,
            truncated_l4: 3,
            fragment: 4,
            deny_v4: 2,
            ..Default::default()
        };
        assert_eq!(counters.frames(), 15);
        assert_eq!(counters.malformed(), 4);
        assert_eq!(counters.dropped(), 6);
        let earlier = counters;
        counters.ipv4_tcp += 3;
        let delta = counters.since(&earlier);
        assert_eq!(delta.ipv4_tcp, 3);
        assert_eq!(delta.frames(), 3);
    }
}
