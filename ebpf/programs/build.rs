//! Building this crate has an undeclared dependency on the `bpf-linker` binary (the linker of the
//! `bpfel-unknown-none` target). This would be better expressed by artifact dependencies, but
//! <https://github.com/rust-lang/cargo/issues/12385> makes them impractical, so, as aya-template
//! does, cargo reruns this crate's build when the mtime of the `bpf-linker` found on `PATH` changes.

use std::{env, path::PathBuf};

fn find_on_path(binary: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

fn main() {
    let building_for_bpf = env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|arch| arch == "bpf");
    match find_on_path("bpf-linker") {
        Some(bpf_linker) => println!("cargo:rerun-if-changed={}", bpf_linker.display()),
        // The host build (this package is a build-dependency of `appliance`, which only compiles
        // the empty lib target) does not need the linker; the real eBPF build does.
        None if !building_for_bpf => println!("cargo:rerun-if-env-changed=PATH"),
        None => panic!(
            "bpf-linker not found on PATH: run scripts/bootstrap.sh, then \
             `export PATH=/opt/bpf-linker/bin:$PATH`"
        ),
    }
}
