//! Running the system tools the lab is built from (`ip`, `nft`, `sysctl`).

use std::process::Command;

/// A system command failed or could not be started.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started (usually: not installed).
    #[error("cannot run {cmd}: {source} (is it installed?)")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// A tool the lab needs is not installed.
    #[error("{what} not found: install the Debian package {package}")]
    Missing {
        /// The missing tool.
        what: String,
        /// The package that provides it.
        package: String,
    },
    /// The program ran and exited with a failure.
    #[error("{cmd} failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// The tools the lab runs, with the Debian package that provides each.
pub const TOOLS: [(&str, &str); 6] = [
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("sysctl", "procps"),
    ("haproxy", "haproxy"),
    ("tcpdump", "tcpdump"),
    ("curl", "curl"),
];

/// Checks that every tool in [`TOOLS`] is on PATH and that `python` can import the
/// Kubernetes client, so a missing package fails the run at once with its name.
pub fn preflight(python: &str) -> Result<(), CmdError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (tool, package) in TOOLS {
        let found = std::env::split_paths(&path).any(|d| d.join(tool).is_file());
        if !found {
            return Err(CmdError::Missing {
                what: tool.to_string(),
                package: package.to_string(),
            });
        }
    }
    let ok = Command::new(python)
        .args(["-c", "import kubernetes"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        return Err(CmdError::Missing {
            what: format!("{python} with the kubernetes module"),
            package: "python3-kubernetes".into(),
        });
    }
    Ok(())
}

/// Runs `prog args...` to completion and returns its stdout.
pub fn run(prog: &str, args: &[&str]) -> Result<String, CmdError> {
    let cmd = format!("{prog} {}", args.join(" "));
    tracing::debug!(%cmd, "run");
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|source| CmdError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(CmdError::Failed {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside network namespace `ns`.
pub fn run_in(ns: &str, prog: &str, args: &[&str]) -> Result<String, CmdError> {
    let mut all = vec!["netns", "exec", ns, prog];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// Feeds `script` to `nft -f -` inside namespace `ns`.
pub fn nft_in(ns: &str, script: &str) -> Result<(), CmdError> {
    use std::io::Write;
    let cmd = format!("ip netns exec {ns} nft -f -");
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|source| CmdError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| CmdError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| CmdError::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(CmdError::Failed {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Whether this process runs as root; the lab needs it for namespaces.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Sends `sig` to `pid`. Returns false if the process no longer exists.
pub fn kill(pid: u32, sig: i32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: kill has no memory-safety preconditions; a stale pid only yields ESRCH.
    unsafe { libc::kill(pid, sig) == 0 }
}
