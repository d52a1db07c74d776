//! The config file for `drainwatch run`: a TOML file whose keys are the
//! flags' own names (`port = [6443]`, `metrics-addr = "..."`, `no-wire =
//! true`, ...), for the kernel-side and output flags [`FileConfig`] lists;
//! the others come from the command line or the environment. Precedence, highest first: command-line flag, environment
//! variable (`DRAINWATCH_` + the flag in upper snake case, e.g.
//! `DRAINWATCH_METRICS_ADDR`), config file, built-in default.

use std::path::Path;

use clap::{ArgMatches, parser::ValueSource};
use serde::Deserialize;

/// The `drainwatch run` flags a config file may set, as its keys: ports,
/// apiserver endpoints, output, metrics address, kernel and wire-observer
/// settings, watched process names and network namespace. The correlation,
/// poller, prober and pod-watch flags are not among them (an unknown key is
/// an error).
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub port: Option<Vec<u16>>,
    /// `--apiserver-endpoint`: `HOST:PORT`, `[IPv6]:PORT` or `auto` each.
    pub apiserver_endpoint: Option<Vec<String>>,
    pub output: Option<String>,
    pub metrics_addr: Option<String>,
    pub ringbuf_bytes: Option<u32>,
    pub kernel_log_level: Option<String>,
    pub no_kprobes: Option<bool>,
    pub iface: Option<Vec<String>>,
    pub no_wire: Option<bool>,
    pub flow_table: Option<u32>,
    pub socket_table: Option<u32>,
    pub bpf_stats: Option<bool>,
    pub watch_comm: Option<Vec<String>>,
    pub netns: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: key `{key}`: {message}")]
    Value {
        path: String,
        key: &'static str,
        message: String,
    },
}

/// Parses config text; `path` names it in errors (unknown keys and wrong
/// types come back naming the key and line).
pub fn parse(path: &str, text: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_string(),
        message: e.to_string().trim().replace('\n', " "),
    })
}

pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&path.display().to_string(), &text)
}

/// True when the flag `id` was not given on the command line or in the
/// environment, so a config-file value may fill it.
pub fn unset(m: &ArgMatches, id: &str) -> bool {
    matches!(m.value_source(id), None | Some(ValueSource::DefaultValue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_parses() {
        let c = parse(
            "t.toml",
            r#"
port = [6443, 8443]
apiserver-endpoint = ["auto", "api.example.com:443"]
output = "json"
metrics-addr = "0.0.0.0:9977"
ringbuf-bytes = 4194304
kernel-log-level = "info"
no-kprobes = true
iface = ["eth0", "lo"]
no-wire = false
flow-table = 1024
bpf-stats = true
"#,
        )
        .expect("parse");
        assert_eq!(c.port, Some(vec![6443, 8443]));
        assert_eq!(
            c.apiserver_endpoint,
            Some(vec!["auto".to_string(), "api.example.com:443".to_string()])
        );
        assert_eq!(c.metrics_addr.as_deref(), Some("0.0.0.0:9977"));
        assert_eq!(
            (c.no_kprobes, c.no_wire, c.bpf_stats),
            (Some(true), Some(false), Some(true))
        );
        assert_eq!(c.flow_table, Some(1024));
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let e = parse("/etc/dw.toml", "prot = [1]\n").expect_err("unknown");
        let s = e.to_string();
        assert!(s.contains("/etc/dw.toml") && s.contains("prot"), "{s}");
        let e = parse("c.toml", "flow-table = \"big\"\n").expect_err("type");
        let s = e.to_string();
        assert!(s.contains("c.toml") && s.contains("flow-table"), "{s}");
        let e = parse("c.toml", "port = [70000]\n").expect_err("range");
        assert!(e.to_string().contains("port"), "{e}");
        let e = load(Path::new("/nonexistent/dw.toml")).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/dw.toml"), "{e}");
    }
}
