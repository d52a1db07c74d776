//! Kubeconfigs, read with a bound on every file: [`load`] for the pod
//! watcher's credentials (the kubeconfig and every file it points to:
//! certificates and keys are read here, bounded, and inlined; a token file
//! is checked and left to the client, which re-reads it as it rotates), and
//! what `--probe-kubeconfig` takes from one: the current context's server
//! URL and CA. Choosing them ([`target_of`]) is pure, apart from the file
//! reads at the edge ([`kubeconfig_target`]), so that the fuzz target
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
        .with_context(|| format!("{shown}: no current-context"))?;
    let ctx = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .with_context(|| format!("{shown}: no context {ctx_name:?}"))?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        .with_context(|| format!("{shown}: no cluster {:?}", ctx.cluster))?;
    let server: Uri = cluster
        .server
        .as_deref()
        .with_context(|| format!("{shown}: cluster {:?} has no server", ctx.cluster))?
        .parse()
        .with_context(|| format!("{shown}: server is not a URL"))?;
    let ca = if let Some(data) = &cluster.certificate_authority_data {
        CaSource::Data(
            base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .with_context(|| format!("{shown}: certificate-authority-data is not base64"))?,
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
    read_bounded(path, MAX_CA_BYTES, "not a CA bundle")
}

/// Reads at most `limit` bytes of `path`; a longer file (or a device that
/// never ends) is an error saying it is `not_what`.
fn read_bounded(path: &Path, limit: u64, not_what: &str) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut data)?;
    if data.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes: {not_what}"),
        ));
    }
    Ok(data)
}

/// A kubeconfig, or a certificate or key it names, larger than this is not
/// one (an admin kubeconfig with inlined certificates is a few KiB).
pub const MAX_KUBECONFIG_BYTES: u64 = 4 << 20;

/// `file` as written in the kubeconfig in `dir`: relative paths are
/// relative to the kubeconfig, as kubectl reads them.
fn beside(dir: Option<&Path>, file: &str) -> PathBuf {
    match dir {
        Some(d) if Path::new(file).is_relative() => d.join(file),
        _ => PathBuf::from(file),
    }
}

/// Reads the kubeconfig at `path`, bounded, with every certificate and key
/// file it names read (bounded too) and inlined, so that the Kubernetes
/// client reads no file of unknown size. A token file is left to the client
/// (projected tokens rotate and it re-reads them) after checking that it is
/// a regular file within the bound; an exec plugin's relative command is
/// made absolute, as the client would.
pub fn load(path: &Path) -> anyhow::Result<Kubeconfig> {
    let shown = format!("kubeconfig {}", path.display());
    let raw = read_bounded(path, MAX_KUBECONFIG_BYTES, "not a kubeconfig")
        .with_context(|| shown.clone())?;
    let text = String::from_utf8(raw).with_context(|| format!("{shown}: not UTF-8 text"))?;
    let mut kc = Kubeconfig::from_yaml(&text).map_err(|e| kubeconfig_error(&shown, &e))?;
    let dir = path.parent();
    let b64 = |data: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(data);
    let read = |field: &str, file: &str| -> anyhow::Result<Vec<u8>> {
        let f = beside(dir, file);
        read_bounded(&f, MAX_KUBECONFIG_BYTES, "not a certificate or key")
            .with_context(|| format!("{shown}: {field} {}", f.display()))
    };
    for c in kc.clusters.iter_mut().filter_map(|c| c.cluster.as_mut()) {
        if let Some(file) = c.certificate_authority.take()
            && c.certificate_authority_data.is_none()
        {
            c.certificate_authority_data = Some(b64(read("certificate-authority", &file)?));
        }
    }
    for a in kc
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
    {
        if let Some(file) = a.client_certificate.take()
            && a.client_certificate_data.is_none()
        {
            a.client_certificate_data = Some(b64(read("client-certificate", &file)?));
        }
        if let Some(file) = a.client_key.take()
            && a.client_key_data.is_none()
        {
            a.client_key_data = Some(b64(read("client-key", &file)?).into());
        }
        if let Some(file) = a.token_file.take() {
            let f = beside(dir, &file);
            let meta = std::fs::metadata(&f)
                .with_context(|| format!("{shown}: tokenFile {}", f.display()))?;
            if !meta.is_file() || meta.len() > MAX_KUBECONFIG_BYTES {
                anyhow::bail!(
                    "{shown}: tokenFile {}: not a regular file of at most {MAX_KUBECONFIG_BYTES} bytes",
                    f.display()
                );
            }
            a.token_file = Some(f.display().to_string());
        }
        if let Some(exec) = a.exec.as_mut()
            && let Some(cmd) = exec.command.as_mut()
            && cmd.contains(std::path::MAIN_SEPARATOR)
        {
            *cmd = beside(dir, cmd).display().to_string();
        }
    }
    Ok(kc)
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

/// The server of `path`'s current context, all `--apiserver-endpoint
/// auto` needs from it: no CA or credentials are read, so a kubeconfig
/// whose CA file is elsewhere still gives its server. `what` says where
/// the path came from (`--kubeconfig`, `$KUBECONFIG`, ...), for errors.
pub fn kubeconfig_server(path: &Path, what: &str) -> anyhow::Result<Uri> {
    let shown = format!("{what} {}", path.display());
    let raw = read_bounded(path, MAX_KUBECONFIG_BYTES, "not a kubeconfig")
        .with_context(|| shown.clone())?;
    let text = String::from_utf8(raw).with_context(|| format!("{shown}: not UTF-8 text"))?;
    let kc = Kubeconfig::from_yaml(&text).map_err(|e| kubeconfig_error(&shown, &e))?;
    Ok(target_of(&shown, &kc)?.server)
}

/// Reads the current context's cluster of the kubeconfig at `path` (the
/// kubelet's, say: the URL clients on this node use, usually the LB's).
pub fn kubeconfig_target(path: &Path) -> anyhow::Result<KubeconfigTarget> {
    let shown = path.display().to_string();
    let kc = {
        let raw = read_bounded(path, MAX_KUBECONFIG_BYTES, "not a kubeconfig")
            .with_context(|| format!("--probe-kubeconfig {shown}"))?;
        let text = String::from_utf8(raw)
            .with_context(|| format!("--probe-kubeconfig {shown}: not UTF-8 text"))?;
        Kubeconfig::from_yaml(&text)
            .map_err(|e| kubeconfig_error(&format!("--probe-kubeconfig {shown}"), &e))?
    };
    let sel = target_of(&format!("--probe-kubeconfig {shown}"), &kc)?;
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

    /// `--apiserver-endpoint auto` needs only the server: a CA file that is
    /// not there does not stop it; errors name where the file came from.
    #[test]
    fn kubeconfig_server_reads_no_ca() {
        let dir = std::env::temp_dir().join(format!("dw-kc-server-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let kc = dir.join("config");
        std::fs::write(
            &kc,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://[fd00::1]:6443\n    certificate-authority: /nonexistent/ca.crt\ncontexts:\n- name: x\n  context:\n    cluster: c\n    user: u\ncurrent-context: x\nusers:\n- name: u\n  user: {}\n",
        )
        .expect("write");
        let server = kubeconfig_server(&kc, "--kubeconfig").expect("server");
        assert_eq!(server.to_string(), "https://[fd00::1]:6443/");
        std::fs::write(&kc, "apiVersion: v1\nkind: Config\nclusters: []\n").expect("write");
        let e = format!(
            "{:#}",
            kubeconfig_server(&kc, "--kubeconfig").expect_err("no context")
        );
        assert!(
            e.starts_with(&format!(
                "--kubeconfig {}: no current-context",
                kc.display()
            )),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

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

    /// Every file a kubeconfig names is read with a bound (an endless
    /// device is refused, naming the field and the file), relative to the
    /// kubeconfig, and inlined so that the client reads none of them.
    #[test]
    fn load_bounds_and_inlines_every_file() {
        let dir = std::env::temp_dir().join(format!("dw-kcl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        for (f, text) in [
            ("ca.crt", "CA"),
            ("c.crt", "CERT"),
            ("c.key", "KEY"),
            ("tok", "T"),
        ] {
            std::fs::write(dir.join(f), text).expect("write");
        }
        let kc = dir.join("config");
        let write = |key: &str, token: &str| {
            std::fs::write(
                &kc,
                format!(
                    "clusters:\n- name: c\n  cluster:\n    server: https://lb:6443\n    certificate-authority: ca.crt\nusers:\n- name: u\n  user:\n    client-certificate: c.crt\n    client-key: {key}\n    tokenFile: {token}\ncontexts:\n- name: n\n  context:\n    cluster: c\n    user: u\ncurrent-context: n\n"
                ),
            )
            .expect("write");
        };
        write("c.key", "tok");
        let loaded = load(&kc).expect("load");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let c = loaded.clusters[0].cluster.as_ref().expect("cluster");
        assert_eq!(
            (
                c.certificate_authority.as_deref(),
                c.certificate_authority_data.clone()
            ),
            (None, Some(b64("CA")))
        );
        let u = loaded.auth_infos[0].auth_info.as_ref().expect("user");
        assert_eq!(u.client_certificate_data, Some(b64("CERT")));
        assert_eq!(
            (u.client_certificate.as_deref(), u.client_key.as_deref()),
            (None, None)
        );
        assert!(u.client_key_data.is_some());
        assert_eq!(u.token_file, Some(dir.join("tok").display().to_string()));
        for (key, token, field, file) in [
            ("/dev/zero", "tok", "client-key", "/dev/zero"),
            ("c.key", "/dev/zero", "tokenFile", "/dev/zero"),
            ("missing.key", "tok", "client-key", "missing.key"),
        ] {
            write(key, token);
            let e = format!("{:#}", load(&kc).expect_err("refused"));
            assert!(
                e.contains("kubeconfig") && e.contains(field) && e.contains(file),
                "{e}"
            );
        }
        // The kubeconfig itself is bounded too.
        let e = format!("{:#}", load(Path::new("/dev/zero")).expect_err("endless"));
        assert!(
            e.contains("/dev/zero") && e.contains("not a kubeconfig"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
