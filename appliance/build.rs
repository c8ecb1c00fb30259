//! Builds the eBPF object (`portcullis-ebpf`, bin `portcullis`) into `OUT_DIR/portcullis`, where
//! `src/bpf` embeds it with `include_bytes_aligned!`.
//!
//! The eBPF crate is compiled by an inner `rustup run debian-web cargo build --target
//! bpfel-unknown-none` (aya-build). `debian-web` is Debian's rustc-web 1.96 linked into rustup: it
//! ships prebuilt `core` for the BPF targets, so no nightly and no `-Z build-std` are needed (see
//! /work/shared/notes/ebpf-toolchain.md). The userspace crates keep building with the default stable
//! toolchain. `scripts/bootstrap.sh` installs everything this needs.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for host-only checks on machines without the
//! toolchain): an empty object is embedded and `DataPlane::load` reports that it was not built.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const EBPF_PACKAGE: &str = "portcullis-ebpf";
const COMMON_PACKAGE: &str = "portcullis-common";
/// The rustup toolchain name `scripts/bootstrap.sh` links Debian's rustc-web under.
const EBPF_TOOLCHAIN: &str = "debian-web";
const EBPF_TARGET: &str = "bpfel-unknown-none";
/// Where `scripts/bootstrap.sh` installs bpf-linker (built against Debian's libLLVM 22).
const BPF_LINKER_DIR: &str = "/opt/bpf-linker/bin";
/// The bin target of `portcullis-ebpf`; aya-build copies it to `OUT_DIR/<name>`.
const OBJECT_NAME: &str = "portcullis";
const FIX: &str = "run scripts/bootstrap.sh (it installs the debian-web toolchain and bpf-linker), \
                   then `export PATH=/opt/bpf-linker/bin:$PATH`; or set AYA_BUILD_SKIP=1 to build \
                   without the eBPF object";

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);

    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
    if env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true")) {
        // aya-build also skips (with its own warning); embed an empty object so the crate compiles.
        let object = out_dir.join(OBJECT_NAME);
        fs::write(&object, b"").with_context(|| format!("writing {}", object.display()))?;
        return Ok(());
    }

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let package_dir = |wanted: &str| -> anyhow::Result<PathBuf> {
        let package = metadata
            .packages
            .iter()
            .find(|p| p.name.as_str() == wanted)
            .ok_or_else(|| anyhow!("package {wanted} not found in the workspace"))?;
        let dir = package
            .manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {}", package.manifest_path))?;
        Ok(dir.as_std_path().to_path_buf())
    };
    let ebpf_dir = package_dir(EBPF_PACKAGE)?;
    // aya-build reruns on changes under the eBPF package; the shared types can change it too.
    println!("cargo:rerun-if-changed={}", package_dir(COMMON_PACKAGE)?.display());

    preflight()?;

    // RUSTC_BOOTSTRAP=<crate name> unlocks unstable features for that one crate only: aya-ebpf has
    // a single `#![feature(asm_experimental_arch)]`. The compiler channel stays stable, so
    // aya-build does not add `-Z build-std` (the bpf `core` is prebuilt). The variable is set in this
    // build script's environment only, so it reaches the inner eBPF cargo and nothing else; never
    // export RUSTC_BOOTSTRAP globally (nightly-probing build scripts of userspace crates flip).
    //
    // SAFETY: build scripts are single-threaded; nothing else reads or writes the environment
    // concurrently.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "aya_ebpf") };

    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", ebpf_dir.display()))?;
    let package = aya_build::Package {
        name: EBPF_PACKAGE,
        root_dir: ebpf_dir,
        // The bin target (the object) requires this feature; see ebpf/programs/Cargo.toml.
        features: &["bpf"],
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
        .with_context(|| format!("building the eBPF object failed; if the toolchain is missing, {FIX}"))
}

/// Checks the eBPF toolchain up front, so a missing piece is reported as such rather than as an
/// obscure failure of the inner cargo.
fn preflight() -> anyhow::Result<()> {
    // Prefer the bpf-linker scripts/bootstrap.sh builds (its LLVM major matches rustc-web's): put
    // its directory first on PATH for the inner build if it is not already.
    let linker_dir = Path::new(BPF_LINKER_DIR);
    let path = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    if linker_dir.join("bpf-linker").is_file() && dirs.first().map(PathBuf::as_path) != Some(linker_dir) {
        dirs.insert(0, linker_dir.to_path_buf());
        let joined = env::join_paths(&dirs).context("joining PATH")?;
        // SAFETY: build scripts are single-threaded; nothing else reads or writes the environment
        // concurrently.
        unsafe { env::set_var("PATH", joined) };
    }
    if !dirs.iter().any(|dir| dir.join("bpf-linker").is_file()) {
        bail!("bpf-linker not found in {BPF_LINKER_DIR} or on PATH: {FIX}");
    }

    // `rustup run <toolchain> rustc --print target-libdir --target bpfel-unknown-none` fails if the
    // toolchain is not linked, and names an empty/missing directory if the bpf `core` is absent.
    let output = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "target-libdir"])
        .args(["--target", EBPF_TARGET])
        .env_remove("RUSTC")
        .output()
        .map_err(|e| anyhow!("running rustup failed ({e}): {FIX}"))?;
    if !output.status.success() {
        bail!(
            "rustup toolchain `{EBPF_TOOLCHAIN}` is not usable ({}): {FIX}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let libdir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let has_core = fs::read_dir(&libdir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    });
    if !has_core {
        bail!(
            "toolchain `{EBPF_TOOLCHAIN}` has no prebuilt core for {EBPF_TARGET} in {} \
             (package libstd-rust-web-dev-bpf): {FIX}",
            libdir.display()
        );
    }
    Ok(())
}
