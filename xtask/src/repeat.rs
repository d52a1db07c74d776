//! `cargo xtask test --repeat N`: the timing-sensitive test binaries, built
//! once, then run N times in a row, with a pass/fail count per binary. A test
//! that orders events across processes by sleeping passes alone on an idle
//! machine and fails on two busy cores; repeating (under load) is how that
//! shows before CI does.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

/// (package, integration test) pairs that drive real processes, the kernel,
/// namespaces or clocks: the ones a busy machine can break.
pub const TIMING_SENSITIVE: &[(&str, &str)] = &[
    ("probe-user", "kernel"),
    ("probe-user", "wire"),
    ("probe-user", "faults"),
    ("probe-user", "lab_verdicts"),
    ("probe-user", "apiserver"),
    ("probe-user", "deploy"),
    ("probe-user", "goh2_tls"),
    ("probe-user", "kube_events"),
    ("probe-user", "api"),
    ("probe-user", "cluster"),
    ("probe-user", "attribution"),
    ("drainwatch-lab", "standin"),
    ("drainwatch-lab", "scenarios"),
    ("drainwatch-lab", "topology"),
    ("drainwatch-ops", "pcap_tcpdump"),
];

/// One built test binary.
struct Binary {
    package: String,
    name: String,
    exe: PathBuf,
    manifest_dir: PathBuf,
}

/// Builds the binaries (one `cargo test --no-run`), then runs each of them
/// `rounds` times with `args` (e.g. a test name filter); `only` restricts the
/// set by test name. Logs of failed runs stay in `target/xtask-repeat/`.
pub fn repeat(
    root: &Path,
    target: &Path,
    rounds: u32,
    only: &[String],
    args: &[String],
) -> anyhow::Result<()> {
    let chosen: Vec<(&str, &str)> = TIMING_SENSITIVE
        .iter()
        .copied()
        .filter(|(_, t)| only.is_empty() || only.iter().any(|o| o == t))
        .collect();
    if let Some(unknown) = only
        .iter()
        .find(|o| !TIMING_SENSITIVE.iter().any(|(_, t)| t == o))
    {
        let known: Vec<&str> = TIMING_SENSITIVE.iter().map(|(_, t)| *t).collect();
        bail!("--only {unknown}: not one of {known:?}");
    }
    let bins = build(root, &chosen)?;
    let logs = target.join("xtask-repeat");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    // A leading `--` (as `cargo test` takes it) is not for the binary itself.
    let args: Vec<&String> = args.iter().skip_while(|a| *a == "--").collect();

    let mut tally: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for round in 1..=rounds {
        for b in &bins {
            let label = format!("{}/{}", b.package, b.name);
            let log = logs.join(format!("{}-{}-{round}.log", b.package, b.name));
            let file = std::fs::File::create(&log)
                .with_context(|| format!("creating {}", log.display()))?;
            let started = Instant::now();
            let mut cmd = Command::new(&b.exe);
            // As `cargo test` runs them: from the package's directory.
            cmd.current_dir(&b.manifest_dir)
                .env("CARGO_MANIFEST_DIR", &b.manifest_dir)
                .args(&args)
                .stdin(Stdio::null())
                .stdout(file.try_clone().context("log file")?)
                .stderr(file);
            // Run as root (checked by the caller): a skip would count as a pass.
            cmd.env("DRAINWATCH_NO_SKIP", "1");
            cmd.env("DRAINWATCH_GO_FIXTURES", crate::gofixtures::fixtures_dir());
            let status = cmd
                .status()
                .with_context(|| format!("cannot start {}", b.exe.display()))?;
            let took = started.elapsed().as_secs_f64();
            let entry = tally.entry(label.clone()).or_default();
            if status.success() {
                entry.0 += 1;
                eprintln!("xtask: round {round}/{rounds} {label}: ok ({took:.1} s)");
                let _ = std::fs::remove_file(&log);
            } else {
                entry.1 += 1;
                eprintln!(
                    "xtask: round {round}/{rounds} {label}: FAILED ({status}, {took:.1} s), log: {}",
                    log.display()
                );
            }
        }
    }

    eprintln!("\n| test binary | passed | failed |\n|---|---|---|");
    for (label, (ok, bad)) in &tally {
        eprintln!("| {label} | {ok} | {bad} |");
    }
    let failed: u32 = tally.values().map(|(_, bad)| bad).sum();
    if failed > 0 {
        bail!(
            "{failed} of {} runs failed (logs in {})",
            rounds as usize * bins.len(),
            logs.display()
        );
    }
    Ok(())
}

/// `cargo test --no-run` for the chosen tests; their executables, from
/// cargo's JSON messages.
fn build(root: &Path, chosen: &[(&str, &str)]) -> anyhow::Result<Vec<Binary>> {
    let mut cmd = super::cargo();
    cmd.current_dir(root).args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    let mut packages: Vec<&str> = chosen.iter().map(|(p, _)| *p).collect();
    packages.dedup();
    for p in &packages {
        cmd.args(["-p", p]);
    }
    for (_, t) in chosen {
        cmd.args(["--test", t]);
    }
    // The lab's binary, which probe-user's lab_verdicts and apiserver tests run.
    super::run(
        super::cargo()
            .current_dir(root)
            .args(["build", "-p", "drainwatch-lab"]),
    )?;
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("cannot start cargo test --no-run")?;
    if !out.status.success() {
        bail!("cargo test --no-run failed: {}", out.status);
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        let Some((package, _)) = chosen.iter().find(|(p, t)| {
            *t == name && msg["package_id"].as_str().is_some_and(|id| id.contains(p))
        }) else {
            continue;
        };
        if !is_test {
            continue;
        }
        let manifest_dir = msg["manifest_path"]
            .as_str()
            .and_then(|m| Path::new(m).parent())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| root.to_path_buf());
        found.push(Binary {
            package: package.to_string(),
            name: name.to_string(),
            exe: PathBuf::from(exe),
            manifest_dir,
        });
    }
    if let Some((p, t)) = chosen
        .iter()
        .find(|(p, t)| !found.iter().any(|b| b.package == *p && b.name == *t))
    {
        bail!("cargo built no executable for {p} --test {t}");
    }
    Ok(found)
}
