//! What `--probe-kubeconfig` takes from a kubeconfig: the current context's
//! server URL and CA. Choosing them ([`target_of`]) is pure, apart from the
//! file reads at the edge ([`kubeconfig_target`]), so that the fuzz target
//! `kubeconfig` (fuzz/) runs the very code the daemon runs.

use std::{
    io::{self, Read as _},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use base64::Engine as _;
use http::Uri;
use kube::config::Kubeconfig;

/// What a kubeconfig says about reaching its current cluster: the
/// `server` URL and its CA (PEM), from `certificate-authority-data` or the
/// `certificate-authority` file (relative to the kubeconfig).
#[derive(Debug)]
pub struct KubeconfigTarget {
    pub server: Uri,
    pub ca: Option<(String, Vec<u8>)>,
    pub insecure: bool,
}

/// Where the CA of a kubeconfig's current cluster is.
#[derive(Debug, PartialEq, Eq)]
pub enum CaSource {
    /// `certificate-authority-data`, decoded.
    Data(Vec<u8>),
    /// `certificate-authority`, as written (relative to the kubeconfig).
    File(PathBuf),
    /// Neither: the system's roots, or `insecure-skip-tls-verify`.
    None,
}

/// The current cluster of a kubeconfig, before any file is read.
#[derive(Debug)]
pub struct Selected {
    pub server: Uri,
    pub ca: CaSource,
    pub insecure: bool,
}

/// A CA bundle larger than this is not a CA bundle (the Mozilla roots in
/// PEM are about 200 KiB); the bound keeps `certificate-authority:
/// /dev/zero` from eating memory.
pub const MAX_CA_BYTES: u64 = 4 << 20;

/// Picks the current context's cluster of `kc`; `shown` names the
/// kubeconfig in errors.
pub fn target_of(shown: &str, kc: &Kubeconfig) -> anyhow::Result<Selected> {
    let ctx_name = kc
        .current_context
        .as_deref()
        .with_context(|| format!("--probe-kubeconfig {shown}: no current-context"))?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .with_context(|| format!("--probe-kubeconfig {shown}: no context {ctx_name:?}"))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        .with_context(|| format!("--probe-kubeconfig {shown}: no cluster {:?}", ctx.cluster))?;
    let server: Uri = cluster
        .server
        .as_deref()
        .with_context(|| {
            format!(
                "--probe-kubeconfig {shown}: cluster {:?} has no server",
                ctx.cluster
            )
        })?
        .parse()
        .with_context(|| format!("--probe-kubeconfig {shown}: server is not a URL"))?;
    let ca = if let Some(data) = &cluster.certificate_authority_data {
        CaSource::Data(
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .with_context(|| {
                    format!("--probe-kubeconfig {shown}: certificate-authority-data is not base64")
                })?,
        )
    } else if let Some(file) = &cluster.certificate_authority {
        CaSource::File(file.into())
    } else {
        CaSource::None
    };
    Ok(Selected {
        server,
        ca,
        insecure: cluster.insecure_skip_tls_verify == Some(true),
    })
}

/// Reads a CA file, refusing anything over [`MAX_CA_BYTES`].
fn read_ca(path: &Path) -> io::Result<Vec<u8>> {
    let mut pem = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CA_BYTES + 1)
        .read_to_end(&mut pem)?;
    if pem.len() as u64 > MAX_CA_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_CA_BYTES} bytes: not a CA bundle"),
        ));
    }
    Ok(pem)
}

/// A kubeconfig error fit for the log: `what`, then the first line of each
/// cause. YAML parse errors quote the lines around the fault, and those may
/// hold a token or a client key.
pub fn kubeconfig_error(what: &str, e: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let mut text = what.to_string();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let msg = err.to_string();
        let first = msg.lines().next().unwrap_or("").trim();
        if !first.is_empty() && !text.contains(first) {
            text.push_str(": ");
            text.push_str(first);
        }
        cur = err.source();
    }
    anyhow::anyhow!(text)
}

/// Reads the current context's cluster of the kubeconfig at `path` (the
/// kubelet's, say: the URL clients on this node use, usually the LB's).
pub fn kubeconfig_target(path: &Path) -> anyhow::Result<KubeconfigTarget> {
    let shown = path.display().to_string();
    let kc = Kubeconfig::read_from(path)
        .map_err(|e| kubeconfig_error(&format!("--probe-kubeconfig {shown}"), &e))?;
    let sel = target_of(&shown, &kc)?;
    let ca = match sel.ca {
        CaSource::Data(pem) => Some((format!("{shown} (certificate-authority-data)"), pem)),
        CaSource::File(file) => {
            let f = path
                .parent()
                .map_or_else(|| file.clone(), |d| d.join(&file));
            let pem = read_ca(&f).with_context(|| {
                format!(
                    "--probe-kubeconfig {shown}: certificate-authority {}",
                    f.display()
                )
            })?;
            Some((f.display().to_string(), pem))
        }
        CaSource::None => None,
    };
    Ok(KubeconfigTarget {
        server: sel.server,
        ca,
        insecure: sel.insecure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_target_reads_the_current_cluster() {
        let dir = std::env::temp_dir().join(format!("dw-kc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let kc = dir.join("kubelet.conf");
        let data = base64::engine::general_purpose::STANDARD.encode("PEM TEXT");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster:\n    server: https://10.0.0.9:6443\n- name: lb\n  cluster:\n    server: https://api-int.example:6443\n    certificate-authority-data: {data}\ncontexts:\n- name: node\n  context:\n    cluster: lb\n    user: node\ncurrent-context: node\nusers:\n- name: node\n  user: {{}}\n"
            ),
        )
        .expect("write");
        let t = kubeconfig_target(&kc).expect("target");
        assert_eq!(t.server.to_string(), "https://api-int.example:6443/");
        assert_eq!(t.ca.expect("ca").1, b"PEM TEXT");
        assert!(!t.insecure);
        // A relative certificate-authority is next to the kubeconfig.
        std::fs::write(dir.join("ca.crt"), "FILE PEM").expect("ca");
        std::fs::write(
            &kc,
            "clusters:\n- name: lb\n  cluster:\n    server: https://lb:6443\n    certificate-authority: ca.crt\ncontexts:\n- name: n\n  context:\n    cluster: lb\n    user: u\ncurrent-context: n\n",
        )
        .expect("write");
        assert_eq!(
            kubeconfig_target(&kc).expect("target").ca.expect("ca").1,
            b"FILE PEM"
        );
        // A device that never ends is refused, not read into memory.
        std::fs::write(
            &kc,
            "clusters:\n- name: lb\n  cluster:\n    server: https://lb:6443\n    certificate-authority: /dev/zero\ncontexts:\n- name: n\n  context:\n    cluster: lb\n    user: u\ncurrent-context: n\n",
        )
        .expect("write");
        let e = format!("{:#}", kubeconfig_target(&kc).expect_err("endless CA"));
        assert!(
            e.contains("kubelet.conf") && e.contains("/dev/zero") && e.contains("not a CA"),
            "{e}"
        );
        std::fs::write(&kc, "clusters: []\n").expect("write");
        let e = kubeconfig_target(&kc).expect_err("no context").to_string();
        assert!(
            e.contains("kubelet.conf") && e.contains("current-context"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
