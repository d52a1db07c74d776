//! Words every verdict's sentence uses. Each cause's own sentence (what
//! happened, how much, and the fix) is in its module under
//! `engine/causes/`, in a function of its own beside the rule, so wording
//! changes do not touch the logic.

use crate::model::{ProbeMode, ProbeOutcome};

pub(crate) fn mode(m: ProbeMode) -> &'static str {
    match m {
        ProbeMode::NewConn => "new-connection",
        ProbeMode::Reused => "reused-connection",
    }
}

pub(crate) fn outcome(o: ProbeOutcome) -> String {
    match o {
        ProbeOutcome::Ok(c) => format!("HTTP {c}"),
        ProbeOutcome::Refused => "refused".into(),
        ProbeOutcome::Reset => "reset".into(),
        ProbeOutcome::Timeout => "timeout".into(),
        ProbeOutcome::Goaway => "goaway".into(),
        ProbeOutcome::Tls => "TLS error".into(),
        ProbeOutcome::Eof => "EOF".into(),
    }
}

pub(crate) fn who(inst: Option<&str>) -> String {
    inst.map_or_else(|| "an apiserver".to_string(), |i| format!("apiserver {i}"))
}

/// "for 8.9 s after it stopped listening", or "as it stopped listening"
/// when there is no measurable span.
pub(crate) fn after_close(seconds: f64) -> String {
    if seconds < 0.05 {
        "as it stopped listening".to_string()
    } else {
        format!("for {seconds:.1} s after it stopped listening")
    }
}

pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
