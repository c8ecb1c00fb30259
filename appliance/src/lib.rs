//! portcullis appliance: the daemon and CLI around the policy engine (`portcullis-rules`).

pub mod bpf;
pub mod cli;
pub mod lab;
pub mod netsetup;
pub mod proxy;
pub mod run;
