//! Can privileged (root + BPF) code run in this process?
//!
//! Tests that load programs or create namespaces call [`privileged_env`] first:
//!
//! ```no_run
//! # use portcullis::bpf::privileged_env;
//! if let Err(why) = privileged_env() {
//!     if std::env::var("CI").is_ok_and(|v| v == "true") {
//!         panic!("privileged test cannot run in CI: {why}");
//!     }
//!     eprintln!("skip: {why}");
//!     return;
//! }
//! ```

use aya::{
    maps::MapType,
    programs::ProgramType,
    sys::{is_map_supported, is_program_supported},
};

/// `Ok(())` if this process can load and attach the data plane: it runs as root, the kernel
/// supports XDP programs and the map types the object uses, and the object was built. Otherwise
/// the reason, as a sentence for a skip or failure message.
pub fn privileged_env() -> Result<(), String> {
    let euid = nix::unistd::geteuid();
    if !euid.is_root() {
        return Err(format!(
            "not root (euid {euid}): loading BPF programs needs CAP_BPF and CAP_NET_ADMIN in the \
             initial user namespace"
        ));
    }
    match is_program_supported(ProgramType::Xdp) {
        Ok(true) => {}
        Ok(false) => return Err("the kernel does not support XDP programs".to_owned()),
        Err(e) => return Err(format!("bpf(2) is unavailable for XDP programs: {e}")),
    }
    for map_type in [MapType::PerCpuArray, MapType::LpmTrie] {
        match is_map_supported(map_type) {
            Ok(true) => {}
            Ok(false) => return Err(format!("the kernel does not support {map_type:?} maps")),
            Err(e) => return Err(format!("bpf(2) is unavailable for {map_type:?} maps: {e}")),
        }
    }
    if super::object().is_empty() {
        return Err("the eBPF object was not built (AYA_BUILD_SKIP was set when compiling)".to_owned());
    }
    Ok(())
}
