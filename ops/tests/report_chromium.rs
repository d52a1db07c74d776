//! The report renders in a real browser: headless Chromium (Debian's
//! `chromium`) screenshots the page built from the apiserver rollout recording, and the
//! PNG must show a picture, not a blank page. Without chromium the test
//! prints why and passes; set DW_REPORT_SCREENSHOT=path to keep the PNG.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drainwatch_ops::pcap::{CaptureFlags, CorrelateFlags};
use drainwatch_ops::report::{ReportArgs, run_to};

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

#[test]
fn headless_chromium_screenshot_shows_the_timeline() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
            "no chromium on PATH: DRAINWATCH_NO_SKIP is set, nothing may skip"
        );
        println!(
            "SKIPPED headless_chromium_screenshot_shows_the_timeline: no chromium on PATH (apt-get install chromium)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("dw-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let html = dir.join("report.html");
    let args = ReportArgs {
        input: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/apiserver-rollout.jsonl"
        )),
        pcap: false,
        out: html.clone(),
        capture: CaptureFlags {
            ports: vec![6443],
            locals: vec!["10.0.0.5".parse().unwrap()],
        },
        correlate: CorrelateFlags {
            instance: Some("master-0".into()),
            local_vips: vec!["10.0.0.2".parse().unwrap()],
            shutdown_delay: Some(Duration::from_secs(70)),
            ..Default::default()
        },
    };
    let mut term = Vec::new();
    run_to(&args, &mut term).unwrap();

    let png = dir.join("shot.png");
    let profile = dir.join("profile");
    let started = Instant::now();
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1400,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    // Bounded: a browser that hangs fails the test instead of CI.
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "chromium exited with {status}");

    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.len() > 10_000,
        "screenshot only {} bytes",
        bytes.len()
    );
    let decoder = png::Decoder::new(std::io::Cursor::new(&bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1400, 900));
    let px = info.color_type.samples();
    let pixels: Vec<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    let first = pixels[0];
    let differing = pixels.iter().filter(|p| *p != &first).count();
    // The timeline's bands, bars and text cover a good part of the page.
    assert!(
        differing * 20 > pixels.len(),
        "screenshot is almost one colour: {differing} of {} pixels differ",
        pixels.len()
    );
    // Red of the refusal mark / failed bars is present.
    let reds = pixels
        .iter()
        .filter(|p| p[0] > 180 && p[1] < 120 && p[2] < 120)
        .count();
    assert!(reds > 100, "no red disruption marks visible ({reds} px)");
    if let Some(keep) = std::env::var_os("DW_REPORT_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
    println!("chromium screenshot in {:?}", started.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
