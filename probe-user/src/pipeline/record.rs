//! `--record FILE`: the engine's input as JSON lines, after a header with
//! the engine's configuration, for `drainwatch analyze`.

use std::path::PathBuf;

use drainwatch_correlate::Observation;

/// Where `--record` writes observations (JSON lines, the engine's input).
pub struct Recorder {
    out: std::io::BufWriter<std::fs::File>,
    pub path: PathBuf,
}

impl Recorder {
    /// Creates the file and writes its header: the engine configuration, so
    /// `analyze FILE` reproduces the live verdicts with no flags.
    pub fn create(
        path: PathBuf,
        config: &drainwatch_correlate::Config,
    ) -> anyhow::Result<Recorder> {
        use anyhow::Context as _;
        use std::io::Write as _;
        let f = std::fs::File::create(&path)
            .with_context(|| format!("cannot create --record file {}", path.display()))?;
        let mut out = std::io::BufWriter::new(f);
        let header = drainwatch_correlate::RecordingHeader {
            drainwatch_recording: 1,
            config: config.clone(),
        };
        serde_json::to_writer(&mut out, &header)?;
        writeln!(out).with_context(|| format!("writing --record file {}", path.display()))?;
        Ok(Recorder { out, path })
    }

    pub fn write(&mut self, o: &Observation) -> std::io::Result<()> {
        use std::io::Write as _;
        let line = serde_json::to_string(o).map_err(std::io::Error::other)?;
        writeln!(self.out, "{line}")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        use std::io::Write as _;
        self.out.flush()
    }
}
