//! A throwaway certificate authority for the lab, made at test time with the `openssl` command: an EC P-256 CA
//! and server certificates it signs (DNS subject alternative names, wildcards allowed), all valid for one day.
//! Nothing is installed in any trust store: clients are pointed at [`LabCa::ca_cert`] (`curl --cacert`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::HarnessError;
use crate::cmd;
use crate::lab::Lab;

/// Bound for each `openssl` run (EC key generation and signing take milliseconds).
pub const OPENSSL_TIMEOUT: Duration = Duration::from_secs(20);

/// The CA's own extensions and a neutral configuration (the system `openssl.cnf` is not read).
const CA_CNF: &str = "[req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = portcullis lab CA\n\
                      [v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign, cRLSign\n\
                      subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid:always\n";

/// A certificate authority in a directory: `ca.key`, `ca.crt`, and one `<n>-<name>.{key,crt}` pair per
/// [`LabCa::issue`].
#[derive(Debug)]
pub struct LabCa {
    pub dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    seq: AtomicU32,
}

fn openssl(args: &[&str], dir: &Path) -> Result<(), HarnessError> {
    cmd::run(
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .env("OPENSSL_CONF", dir.join("ca.cnf")),
        OPENSSL_TIMEOUT,
    )?
    .ok()
    .map(drop)
}

fn write(path: &Path, text: &str) -> Result<(), HarnessError> {
    std::fs::write(path, text).map_err(|e| HarnessError::Io {
        what: format!("writing {}", path.display()),
        source: e,
    })
}

/// A file-name-safe form of a DNS name (`*.wild.lab.test` → `star.wild.lab.test`).
fn file_stem(name: &str) -> String {
    name.replace('*', "star")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The `subjectAltName` value for `names` (`DNS:a, DNS:*.b`).
pub fn san(names: &[&str]) -> String {
    names.iter().map(|n| format!("DNS:{n}")).collect::<Vec<_>>().join(", ")
}

impl LabCa {
    /// Generates a CA key and self-signed certificate in `dir` (created if missing).
    pub fn new(dir: &Path) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(dir).map_err(|e| HarnessError::Io {
            what: format!("creating {}", dir.display()),
            source: e,
        })?;
        write(&dir.join("ca.cnf"), CA_CNF)?;
        let ca = LabCa {
            dir: dir.to_owned(),
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
            seq: AtomicU32::new(0),
        };
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-config",
                "ca.cnf",
                "-extensions",
                "v3_ca",
            ],
            dir,
        )?;
        Ok(ca)
    }

    /// The CA certificate (PEM), for `curl --cacert` / `openssl s_client -CAfile`.
    pub fn ca_cert(&self) -> &Path {
        &self.cert
    }

    /// The CA's private key (PEM).
    pub fn ca_key(&self) -> &Path {
        &self.key
    }

    /// A server certificate and its key (PEM paths) for DNS names `names` (the first is also the subject CN),
    /// EC P-256, signed by this CA, valid for one day, extended key usage serverAuth.
    pub fn issue(&self, names: &[&str]) -> Result<(PathBuf, PathBuf), HarnessError> {
        let Some(first) = names.first() else {
            return Err(HarnessError::Failed {
                command: "LabCa::issue".into(),
                detail: "no names".into(),
            });
        };
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let stem = format!("{n}-{}", file_stem(first));
        let (key, csr, crt, ext) = (
            format!("{stem}.key"),
            format!("{stem}.csr"),
            format!("{stem}.crt"),
            format!("{stem}.ext"),
        );
        write(
            &self.dir.join(&ext),
            &format!(
                "[srv]\nbasicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
                 extendedKeyUsage = serverAuth\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n\
                 subjectAltName = {}\n",
                san(names)
            ),
        )?;
        let subj = format!("/CN={first}");
        openssl(
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &subj,
                "-config",
                "ca.cnf",
            ],
            &self.dir,
        )?;
        // A distinct serial per certificate (a client may cache by issuer and serial).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let serial = format!("0x{:x}{:08x}", nanos & 0xffff_ffff_ffff, n);
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial,
                "-days",
                "1",
                "-sha256",
                "-extfile",
                &ext,
                "-extensions",
                "srv",
                "-out",
                &crt,
            ],
            &self.dir,
        )?;
        Ok((self.dir.join(crt), self.dir.join(key)))
    }
}

impl Lab {
    /// A fresh [`LabCa`] in the lab's scratch directory (`<dir>/ca-<n>/`, removed with the lab).
    pub fn ca(&self) -> Result<LabCa, HarnessError> {
        LabCa::new(&self.dir.join(self.unique("ca")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn san_and_file_names() {
        assert_eq!(
            san(&["a.lab.test", "*.wild.lab.test"]),
            "DNS:a.lab.test, DNS:*.wild.lab.test"
        );
        assert_eq!(file_stem("*.wild.lab.test"), "star.wild.lab.test");
        assert_eq!(file_stem("a/b c"), "a_b_c");
    }
}
