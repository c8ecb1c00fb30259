//! From the config's `appliance` section, the command line and the host's interfaces to the settings the
//! daemon runs with. Pure (the interfaces are passed in), so every error case is unit-tested without root.
#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use portcullis_rules::policy::Appliance;

use super::{Options, RunError};
use crate::netsetup::{self, Interface};

/// Where flow events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowLogTarget {
    Stdout,
    File(PathBuf),
}

/// Everything `portcullis run` derives before touching the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub internal: String,
    /// `None`: one-arm (the internal interface carries both directions).
    pub external: Option<String>,
    /// The appliance's address on the internal side: DNAT rewrites the source of inbound flows to it, and the
    /// DNS proxy listens there.
    pub internal_address: Ipv4Addr,
    pub snat_addresses: Vec<Ipv4Addr>,
    pub snat_ports: (u16, u16),
    /// Every IPv4 address of the host (traffic to them is the host's own and passes to its stack).
    pub local_addresses: Vec<Ipv4Addr>,
    pub ct_max_entries: u32,
    pub pin_dir: PathBuf,
    pub flow_log: FlowLogTarget,
    pub threat_feed: Option<PathBuf>,
    pub host: netsetup::Requirements,
}

impl Settings {
    /// The interfaces XDP is attached to.
    pub fn data_interfaces(&self) -> Vec<&str> {
        let mut v = vec![self.internal.as_str()];
        if let Some(e) = &self.external {
            v.push(e);
        }
        v
    }
}

/// A path from the config, relative to the config file's directory.
pub fn relative_to_config(config: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_owned()
    } else {
        config.parent().unwrap_or(Path::new("")).join(p)
    }
}

fn find<'a>(interfaces: &'a [Interface], role: &'static str, name: &str) -> Result<&'a Interface, RunError> {
    let found = interfaces.iter().find(|i| i.name == name);
    let interface = found.ok_or_else(|| RunError::UnknownInterface {
        role,
        name: name.to_owned(),
        available: interfaces.iter().map(|i| i.name.clone()).collect(),
    })?;
    if interface.ipv4.is_empty() {
        return Err(RunError::NoIpv4 {
            role,
            name: name.to_owned(),
        });
    }
    Ok(interface)
}

/// Derives the settings. `interfaces` are the host's (see [`netsetup::interfaces`]).
pub fn derive(
    config: &Path,
    appliance: Option<&Appliance>,
    interfaces: &[Interface],
    opts: &Options,
) -> Result<Settings, RunError> {
    let a = appliance.ok_or_else(|| RunError::NoAppliance(config.to_owned()))?;
    netsetup::check_snat_ports(opts.snat_ports)?;
    let internal = find(interfaces, "internal", &a.internal)?;
    let external = match a.external.as_deref() {
        Some(e) if e != a.internal => Some(find(interfaces, "external", e)?),
        _ => None,
    };
    let internal_address = match opts.internal_address {
        Some(ip) if internal.ipv4.iter().any(|(a, _)| *a == ip) => ip,
        Some(ip) => {
            return Err(RunError::InternalAddress {
                address: ip,
                interface: internal.name.clone(),
            });
        }
        // One-arm: the interface also carries the SNAT address; the internal address is the other one.
        None => internal
            .ipv4
            .iter()
            .map(|(a, _)| *a)
            .find(|ip| !a.snat_addresses.contains(ip))
            .unwrap_or(internal.ipv4[0].0),
    };
    let snat_addresses = if a.snat_addresses.is_empty() {
        vec![external.map_or(internal_address, |e| e.ipv4[0].0)]
    } else {
        a.snat_addresses.clone()
    };
    let mut local_addresses: Vec<Ipv4Addr> = Vec::new();
    for ip in interfaces.iter().flat_map(|i| i.ipv4.iter().map(|(a, _)| *a)) {
        if !local_addresses.contains(&ip) {
            local_addresses.push(ip);
        }
    }
    let flow_log = match a.flow_log.as_deref() {
        None | Some("-") => FlowLogTarget::Stdout,
        Some(p) => FlowLogTarget::File(relative_to_config(config, p)),
    };
    let mut data_interfaces = vec![internal.name.clone()];
    data_interfaces.extend(external.map(|e| e.name.clone()));
    Ok(Settings {
        internal: internal.name.clone(),
        external: external.map(|e| e.name.clone()),
        internal_address,
        snat_addresses,
        snat_ports: opts.snat_ports,
        local_addresses,
        ct_max_entries: opts.conntrack_max,
        pin_dir: opts.pin_dir.clone(),
        flow_log,
        threat_feed: a.threat_intel_feed.as_deref().map(|p| relative_to_config(config, p)),
        host: netsetup::Requirements {
            data_interfaces,
            snat_ports: opts.snat_ports,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ipv4: &[(Ipv4Addr, u8)]) -> Interface {
        Interface {
            name: name.into(),
            index: 1,
            ipv4: ipv4.to_vec(),
        }
    }

    const IN: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
    const OUT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn host() -> Vec<Interface> {
        vec![
            iface("lo", &[(Ipv4Addr::LOCALHOST, 8)]),
            iface("in0", &[(IN, 24), (Ipv4Addr::new(10, 20, 0, 1), 24)]),
            iface("out0", &[(OUT, 24)]),
            iface("bare0", &[]),
            iface("arm0", &[(OUT, 24), (IN, 24)]),
        ]
    }

    fn appliance(internal: &str, external: Option<&str>) -> Appliance {
        Appliance {
            internal: internal.into(),
            external: external.map(Into::into),
            ..Default::default()
        }
    }

    fn opts() -> Options {
        Options {
            config: "/etc/portcullis/policy.yaml".into(),
            ..Options::default()
        }
    }

    fn derive_with(a: Option<&Appliance>) -> Result<Settings, RunError> {
        derive(Path::new("/etc/portcullis/policy.yaml"), a, &host(), &opts())
    }

    #[test]
    fn two_arm_defaults() {
        let s = derive_with(Some(&appliance("in0", Some("out0")))).unwrap();
        assert_eq!(s.data_interfaces(), ["in0", "out0"]);
        assert_eq!(s.internal_address, IN);
        assert_eq!(
            s.snat_addresses,
            [OUT],
            "snatAddresses default: the external interface's address"
        );
        assert_eq!(s.local_addresses.len(), 4);
        assert_eq!(s.flow_log, FlowLogTarget::Stdout);
        assert_eq!(s.host.data_interfaces, ["in0", "out0"]);
        assert_eq!(s.snat_ports, Options::default().snat_ports);
    }

    #[test]
    fn one_arm_picks_the_address_that_is_not_a_snat_address() {
        let mut a = appliance("arm0", None);
        a.snat_addresses = vec![OUT];
        a.flow_log = Some("flows.jsonl".into());
        a.threat_intel_feed = Some("/var/lib/ti.txt".into());
        let s = derive_with(Some(&a)).unwrap();
        assert_eq!(s.data_interfaces(), ["arm0"]);
        assert_eq!(s.internal_address, IN);
        assert_eq!(s.flow_log, FlowLogTarget::File("/etc/portcullis/flows.jsonl".into()));
        assert_eq!(s.threat_feed, Some(PathBuf::from("/var/lib/ti.txt")));
        // The same interface named twice is one-arm too.
        let s = derive_with(Some(&appliance("arm0", Some("arm0")))).unwrap();
        assert_eq!(s.external, None);
    }

    #[test]
    fn configured_internal_address_must_be_on_the_interface() {
        let o = Options {
            internal_address: Some(Ipv4Addr::new(10, 20, 0, 1)),
            ..opts()
        };
        let a = appliance("in0", Some("out0"));
        let s = derive(&o.config, Some(&a), &host(), &o).unwrap();
        assert_eq!(s.internal_address, Ipv4Addr::new(10, 20, 0, 1));
        let o = Options {
            internal_address: Some(OUT),
            ..opts()
        };
        let e = derive(&o.config, Some(&a), &host(), &o).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--internal-address 192.0.2.1 is not an address of the internal interface in0"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = derive_with(None).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/etc/portcullis/policy.yaml has no `appliance` section"),
            "{e}"
        );
        let e = derive_with(Some(&appliance("eth9", None))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "appliance.interfaces.internal: no network interface named `eth9` (interfaces here: lo, in0, out0, bare0, arm0)"
        );
        let e = derive_with(Some(&appliance("in0", Some("bare0")))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "appliance.interfaces.external: interface `bare0` has no IPv4 address"
        );
        let o = Options {
            snat_ports: (100, 200),
            ..opts()
        };
        let e = derive(&o.config, Some(&appliance("in0", None)), &host(), &o).unwrap_err();
        assert!(e.to_string().contains("SNAT port range 100-200 is invalid"), "{e}");
    }
}
