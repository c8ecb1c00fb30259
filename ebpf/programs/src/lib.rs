#![no_std]

// This file exists to enable the library target, so that `appliance` can list this package as a
// build-dependency (cargo then reruns appliance/build.rs when the eBPF sources change). The
// programs themselves live in the `portcullis` bin target (src/main.rs).
