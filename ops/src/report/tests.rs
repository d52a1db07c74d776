use super::*;
use crate::pcap::synth::{Conv, frames, pcap};
use quick_xml::events::Event;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/apiserver-rollout.jsonl"
);

/// A file in a directory of the test's own (tests run in parallel).
fn tmp(test: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dw-report-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// A GCP set-up where the internal LB's address is on the master itself.
pub(crate) fn gcp_hairpin_args(input: PathBuf, out: PathBuf) -> ReportArgs {
    ReportArgs {
        input,
        pcap: false,
        out,
        capture: CaptureFlags {
            ports: vec![6443],
            locals: vec!["10.0.0.5".parse().unwrap()],
        },
        correlate: CorrelateFlags {
            instance: Some("master-0".into()),
            local_vips: vec!["10.0.0.2".parse().unwrap()],
            shutdown_delay: Some(std::time::Duration::from_secs(70)),
            ..Default::default()
        },
    }
}

/// Parses the page as XML; returns (element name, attributes) in order.
fn elements(page: &str) -> Vec<(String, Vec<(String, String)>)> {
    let mut r = quick_xml::Reader::from_str(page);
    let mut out = Vec::new();
    let mut depth = 0i32;
    loop {
        match r
            .read_event()
            .unwrap_or_else(|e| panic!("not well-formed at {}: {e}", r.buffer_position()))
        {
            ev @ (Event::Start(_) | Event::Empty(_)) => {
                let (Event::Start(e) | Event::Empty(e)) = &ev else {
                    unreachable!()
                };
                let name = String::from_utf8(e.name().as_ref().to_vec()).unwrap();
                let attrs = e
                    .attributes()
                    .map(|a| {
                        let a = a.unwrap();
                        (
                            String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                            a.unescape_value().unwrap().to_string(),
                        )
                    })
                    .collect();
                out.push((name, attrs));
                if matches!(ev, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::End(_) => depth -= 1,
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(depth, 0, "unbalanced tags");
    out
}

fn class_count(els: &[(String, Vec<(String, String)>)], class: &str) -> usize {
    els.iter()
        .filter(|(_, a)| a.iter().any(|(k, v)| k == "class" && v == class))
        .count()
}

#[test]
fn report_from_recording_has_bands_marks_and_verdicts() {
    let out = tmp("recording", "rollout.html");
    let args = gcp_hairpin_args(PathBuf::from(FIXTURE), out.clone());
    let mut term = Vec::new();
    let n = run_to(&args, &mut term).unwrap();
    let term = String::from_utf8(term).unwrap();
    assert!(n >= 1, "{term}");
    assert!(term.contains("refused_local_hairpin"), "{term}");
    assert!(term.contains("rollout master-0 #0"), "{term}");

    let page = std::fs::read_to_string(&out).unwrap();
    let input = load(&args).unwrap();
    let els = elements(&page);
    let phases: usize = input.report.timelines.iter().map(|t| t.phases.len()).sum();
    assert!(phases >= 5, "{:#?}", input.report.timelines);
    assert_eq!(class_count(&els, "band"), phases);
    assert_eq!(class_count(&els, "mark"), input.report.verdicts.len());
    assert_eq!(els.iter().filter(|(n, _)| n == "svg").count(), 1);
    assert!(class_count(&els, "bar-ok") > 0 && class_count(&els, "bar-failed") > 0);
    assert_eq!(class_count(&els, "rate"), 1);
    assert_eq!(class_count(&els, "gauge"), 1);
    // Every verdict sentence is on the page as text.
    for v in &input.report.verdicts {
        assert!(page.contains(&html::esc(&v.sentence)), "{}", v.sentence);
    }
    // Self-contained: nothing is loaded from elsewhere.
    for bad in ["src=", "href=", "url(", "@import", "<link", "<script"] {
        assert!(!page.contains(bad), "page contains {bad}");
    }
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_dir_all(out.parent().unwrap()).unwrap();
}

#[test]
fn report_from_capture_is_detected_by_magic() {
    let mut c = Conv::new("198.18.0.1:40000", "198.18.0.2:6443");
    c.syn(0.0).refuse(0.0001);
    let mut c2 = Conv::new("198.18.0.1:40001", "198.18.0.2:6443");
    c2.handshake(1.0).client_data(1.1, b"x").server_rst(1.2);
    let mut pkts = c.pkts.clone();
    pkts.extend(c2.pkts);
    // A misleading extension: detection is by content.
    let input = tmp("capture", "capture.jsonl");
    std::fs::write(&input, pcap(1, &frames(&pkts))).unwrap();
    let out = tmp("capture", "capture.html");
    let mut args = gcp_hairpin_args(input.clone(), out.clone());
    args.capture = CaptureFlags {
        ports: vec![6443],
        locals: vec![],
    };
    args.correlate = CorrelateFlags {
        instance: Some("api-0".into()),
        ..Default::default()
    };
    let mut term = Vec::new();
    let n = run_to(&args, &mut term).unwrap();
    let term = String::from_utf8(term).unwrap();
    assert!(term.contains("1 refused"), "{term}");
    assert_eq!(n, 1, "{term}");
    let page = std::fs::read_to_string(&out).unwrap();
    let els = elements(&page);
    assert_eq!(class_count(&els, "mark"), 1);
    // Connections (no probes): one accepted (ok), one refused and one cut.
    assert!(page.contains(">connections</text>"));
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&input).unwrap();
    std::fs::remove_dir_all(input.parent().unwrap()).unwrap();
}

#[test]
fn bad_inputs_name_the_file() {
    let bad = tmp("bad", "bad.jsonl");
    std::fs::write(&bad, "{\"id\":1}\n").unwrap();
    let args = gcp_hairpin_args(bad.clone(), tmp("bad", "x.html"));
    let e = format!("{:#}", load(&args).unwrap_err());
    assert!(e.contains("bad.jsonl") && e.contains("line 1"), "{e}");
    // --pcap on something that is not a capture.
    let mut args = gcp_hairpin_args(bad.clone(), tmp("bad", "x.html"));
    args.pcap = true;
    let e = format!("{:#}", load(&args).unwrap_err());
    assert!(e.contains("bad.jsonl") && e.contains("magic"), "{e}");
    std::fs::remove_file(&bad).unwrap();
    std::fs::remove_dir_all(bad.parent().unwrap()).unwrap();
}

#[test]
fn escaping_keeps_the_page_well_formed() {
    assert_eq!(html::esc("a<b & \"c\"'"), "a&lt;b &amp; &quot;c&quot;&#39;");
    let input = Input {
        source: "<evil & \"name\">".into(),
        observations: Vec::new(),
        report: drainwatch_correlate::Report::default(),
        summary: vec!["x < y".into()],
        default_instance: None,
    };
    let page = render_html(&input);
    elements(&page);
    assert!(page.contains("No disruption found."));
}
