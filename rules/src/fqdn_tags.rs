//! Built-in FQDN tags (application rules only). Azure does not publish the tag contents beyond the
//! service's outbound documentation; these lists are versioned so a log or `explain` can say which
//! list decided a flow.

/// One versioned FQDN tag.
#[derive(Debug)]
pub struct FqdnTag {
    pub name: &'static str,
    pub version: &'static str,
    pub fqdns: &'static [&'static str],
}

/// `AzureKubernetesService`: the required FQDNs of AKS outbound rules (azure-firewall.md §9.2, AKS
/// "outbound network and FQDN rules", 2026-06). `*.hcp.<location>.azmk8s.io` is regional; the tag must
/// cover every region, so it matches below `azmk8s.io`, a Microsoft-owned zone used only by AKS.
pub const AZURE_KUBERNETES_SERVICE: FqdnTag = FqdnTag {
    name: "AzureKubernetesService",
    version: "2026-06",
    fqdns: &[
        "*.azmk8s.io",
        "mcr.microsoft.com",
        "*.data.mcr.microsoft.com",
        "mcr-0001.mcr-msedge.net",
        "management.azure.com",
        "login.microsoftonline.com",
        "packages.microsoft.com",
        "acs-mirror.azureedge.net",
        "packages.aks.azure.com",
    ],
};

/// `WindowsUpdate`: Microsoft Update endpoints.
pub const WINDOWS_UPDATE: FqdnTag = FqdnTag {
    name: "WindowsUpdate",
    version: "2026-06",
    fqdns: &[
        "*.update.microsoft.com",
        "*.windowsupdate.com",
        "*.windowsupdate.microsoft.com",
        "*.delivery.mp.microsoft.com",
        "*.dl.delivery.mp.microsoft.com",
        "download.microsoft.com",
        "go.microsoft.com",
        "ntservicepack.microsoft.com",
        "*.do.dsp.mp.microsoft.com",
    ],
};

pub const ALL: &[&FqdnTag] = &[&AZURE_KUBERNETES_SERVICE, &WINDOWS_UPDATE];

/// Tag names are matched case-insensitively, as Azure does for resource names.
pub fn lookup(name: &str) -> Option<&'static FqdnTag> {
    ALL.iter().copied().find(|t| t.name.eq_ignore_ascii_case(name.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fqdn::FqdnPattern;

    #[test]
    fn tag_entries_are_valid_patterns() {
        for tag in ALL {
            for f in tag.fqdns {
                FqdnPattern::parse(f).unwrap_or_else(|e| panic!("{}: {e}", tag.name));
            }
        }
        assert!(lookup("azurekubernetesservice").is_some());
        assert!(lookup("NoSuchTag").is_none());
    }
}
