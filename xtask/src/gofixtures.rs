//! `cargo xtask go-fixtures`: Go toolchains from Debian (bookworm's 1.19,
//! bookworm-backports' 1.22, trixie's 1.24) and golang.org/x/net from
//! trixie, fetched through a private apt index in target/go/apt and unpacked
//! with `dpkg -x` (the host's apt setup and packages are untouched), then
//! the test program `lab/go/h2probe` built with each toolchain three ways:
//! unstripped, stripped (`-ldflags=-s -w`, as Kubernetes releases are) and
//! stripped position-independent. The Go uprobe tests run on these.
//! Output: target/go/fixtures/go1.NN-VARIANT/h2probe and a manifest.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{root_dir, run};

/// (Go release, suite of its packages, package version prefix).
const TOOLCHAINS: &[(&str, &str)] = &[
    ("1.19", "bookworm"),
    ("1.22", "bookworm-backports"),
    ("1.24", "trixie"),
];

/// The x/net source (GOPATH mode: Debian ships it as source), from trixie.
const XNET_PACKAGES: &[&str] = &[
    "golang-golang-x-net-dev/trixie",
    "golang-golang-x-text-dev/trixie",
];

/// (variant, extra `go build` arguments).
const VARIANTS: &[(&str, &[&str])] = &[
    ("plain", &[]),
    ("stripped", &["-ldflags=-s -w"]),
    ("pie-stripped", &["-buildmode=pie", "-ldflags=-s -w"]),
];

pub fn target_dir() -> PathBuf {
    std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root_dir().join("target"))
}

/// Where the fixtures are, for the tests (`DRAINWATCH_GO_FIXTURES`).
pub fn fixtures_dir() -> PathBuf {
    target_dir().join("go").join("fixtures")
}

fn sources(host_sources: &str) -> String {
    let mirror =
        crate::debian_mirror(host_sources).unwrap_or_else(|| "http://deb.debian.org/debian".into());
    ["bookworm", "bookworm-backports", "trixie"]
        .iter()
        .map(|suite| {
            format!(
                "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {mirror} {suite} main\n"
            )
        })
        .collect()
}

/// Fetches and unpacks what is missing; returns the unpacked root.
fn toolchains(work: &Path) -> anyhow::Result<PathBuf> {
    let unpacked = work.join("root");
    let stamp = unpacked.join(".complete");
    if stamp.exists() {
        return Ok(unpacked);
    }
    let apt = work.join("apt");
    crate::vmtest::write_private_sources(&apt, sources)?;
    eprintln!(
        "xtask: Go toolchains: refreshing a private package index ({})",
        apt.display()
    );
    run(Command::new("apt-get")
        .args(crate::vmtest::private_apt_options(&apt))
        .args(["-qq", "update"]))
    .context("the Go toolchains' private package index (bookworm, bookworm-backports, trixie)")?;
    let debs = work.join("debs");
    fs::create_dir_all(&debs)?;
    let mut wanted: Vec<String> = Vec::new();
    for (v, suite) in TOOLCHAINS {
        wanted.push(format!("golang-{v}-go/{suite}"));
        wanted.push(format!("golang-{v}-src/{suite}"));
    }
    wanted.extend(XNET_PACKAGES.iter().map(|s| s.to_string()));
    run(Command::new("apt-get")
        .current_dir(&debs)
        .args(crate::vmtest::private_apt_options(&apt))
        .args(["-qq", "download"])
        .args(&wanted))
    .context("downloading the Go toolchains")?;
    fs::create_dir_all(&unpacked)?;
    for e in fs::read_dir(&debs)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "deb") {
            run(Command::new("dpkg").arg("-x").arg(&p).arg(&unpacked))?;
        }
    }
    fs::write(&stamp, wanted.join("\n"))?;
    Ok(unpacked)
}

/// Builds every fixture that is missing or older than its source.
pub fn go_fixtures() -> anyhow::Result<PathBuf> {
    let work = target_dir().join("go");
    let root = toolchains(&work)?;
    let src_dir = root_dir().join("lab/go/h2probe");
    // GOPATH mode: the program and Debian's x/net source side by side.
    let gopath = work.join("gopath");
    let pkg = gopath.join("src/h2probe");
    fs::create_dir_all(&pkg)?;
    // Every source file of the package; the newest decides what is stale.
    let mut src_time = std::time::SystemTime::UNIX_EPOCH;
    for e in fs::read_dir(&src_dir).with_context(|| format!("reading {}", src_dir.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "go") {
            let t = fs::metadata(&p)
                .and_then(|m| m.modified())
                .with_context(|| format!("reading {}", p.display()))?;
            src_time = src_time.max(t);
            let name = p.file_name().context("a source file's name")?;
            fs::copy(&p, pkg.join(name))?;
        }
    }
    let golang_org = gopath.join("src/golang.org");
    if !golang_org.exists() {
        std::os::unix::fs::symlink(root.join("usr/share/gocode/src/golang.org"), &golang_org)?;
    }
    let out = fixtures_dir();
    let mut manifest = String::new();
    for (v, _) in TOOLCHAINS {
        let goroot = root.join(format!("usr/lib/go-{v}"));
        for (variant, extra) in VARIANTS {
            let dir = out.join(format!("go{v}-{variant}"));
            let bin = dir.join("h2probe");
            let fresh = fs::metadata(&bin)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= src_time);
            if !fresh {
                fs::create_dir_all(&dir)?;
                eprintln!("xtask: building h2probe with Go {v} ({variant})");
                run(Command::new(goroot.join("bin/go"))
                    .current_dir(&pkg)
                    .args(["build", "-o"])
                    .arg(&bin)
                    .args(*extra)
                    .arg(".")
                    .env("GOROOT", &goroot)
                    .env("GOPATH", &gopath)
                    .env("GO111MODULE", "off")
                    .env("GOTOOLCHAIN", "local")
                    .env("GOFLAGS", "")
                    .env("CGO_ENABLED", "0")
                    .env("GOCACHE", work.join(format!("cache-{v}"))))
                .with_context(|| format!("building h2probe with Go {v} ({variant})"))?;
            }
            manifest.push_str(&format!("go{v}\t{variant}\t{}\n", bin.display()));
        }
    }
    fs::write(out.join("manifest.tsv"), manifest)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn private_sources_name_three_suites_of_the_hosts_mirror() {
        let s = super::sources("deb http://mirror.example/debian bookworm main\n");
        assert_eq!(s.lines().count(), 3);
        assert!(s.contains(" http://mirror.example/debian bookworm-backports main\n"));
        assert!(s.contains(" http://mirror.example/debian trixie main\n"));
    }
}
