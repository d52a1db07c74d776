use super::packet::flags;
use super::synth::{Conv, Pkt, T0_US, frames, pcap, pcap_snap, pcapng};
use super::*;
use drainwatch_correlate::{Cause, Direction, Keepalive, ResetOrigin, Source};

fn opts() -> FlowOptions {
    FlowOptions {
        ports: vec![6443, 443],
        locals: Vec::new(),
    }
}

fn decode(bytes: &[u8]) -> Decoded {
    decode_bytes("test.pcap", bytes, &opts()).expect("decodes")
}

fn kinds(d: &Decoded) -> Vec<&Obs> {
    d.observations.iter().map(|o| &o.kind).collect()
}

fn correlate(d: &Decoded) -> Report {
    let cfg = CorrelateFlags {
        instance: Some("api-0".into()),
        ..Default::default()
    }
    .config(&[]);
    drainwatch_correlate::analyze(&cfg, d.observations.clone()).expect("analyze")
}

#[test]
fn refused_syn_gives_refused_observation_and_verdict() {
    let mut c = Conv::new("198.18.0.1:40000", "198.18.0.2:6443");
    c.syn(0.0).refuse(0.0001);
    let mut c2 = Conv::new("198.18.0.1:40001", "198.18.0.2:6443");
    c2.syn(0.2).refuse(0.2001);
    let mut pkts = c.pkts.clone();
    pkts.extend(c2.pkts);
    let d = decode(&pcap(1, &frames(&pkts)));
    assert_eq!(
        kinds(&d),
        vec![
            &Obs::Refused {
                client: c.client,
                server: c.server,
                path: None
            },
            &Obs::Refused {
                client: "198.18.0.1:40001".parse().unwrap(),
                server: c.server,
                path: None
            },
        ]
    );
    assert_eq!(d.observations[0].source, Source::Kernel);
    assert_eq!(d.observations[0].t_ns, 100_000);
    assert_eq!(
        d.observations[0].wall.as_deref(),
        Some("2026-01-01T00:00:00.000100Z")
    );
    assert_eq!(d.flows.refused, 2);
    let r = correlate(&d);
    assert_eq!(r.verdicts.len(), 1, "{:#?}", r.verdicts);
    assert!(matches!(
        r.verdicts[0].cause,
        Cause::RefusedWhileNotListening { .. }
    ));
    assert_eq!(r.verdicts[0].count, 2);
}

/// An idle flow, then an RST towards the server from the client's
/// direction but with another TTL: a middlebox forgot the flow.
fn idle_reset(rst_ttl: u8, keepalive: bool) -> Decoded {
    let mut c = Conv::new("67.185.98.118:51648", "10.244.0.49:443");
    c.handshake(0.0)
        .client_data(0.01, b"GET / HTTP/1.1\r\n\r\n")
        .server_ack(0.011)
        .server_data(0.012, b"HTTP/1.1 200 OK\r\n\r\n")
        .client_ack(0.04);
    let mut t = 0.04;
    if keepalive {
        for _ in 0..3 {
            t += 30.0;
            c.client_keepalive(t);
            c.server_ack(t + 0.001);
        }
    }
    c.rst_to_server(t + 3.0, rst_ttl);
    decode(&pcap(1, &frames(&c.pkts)))
}

fn wire_reset(d: &Decoded) -> (ResetOrigin, f64, Option<bool>, Keepalive) {
    let v: Vec<_> = d
        .observations
        .iter()
        .filter_map(|o| match &o.kind {
            Obs::WireReset {
                origin,
                silence_s,
                answered_packet,
                keepalive,
                ..
            } => Some((*origin, *silence_s, *answered_packet, *keepalive)),
            _ => None,
        })
        .collect();
    assert_eq!(v.len(), 1, "{:#?}", d.observations);
    v[0]
}

#[test]
fn middlebox_rst_after_silence() {
    let d = idle_reset(121, false);
    let (origin, silence, answered, ka) = wire_reset(&d);
    assert_eq!(origin, ResetOrigin::Middlebox);
    assert!((silence - 3.0).abs() < 1e-6, "{silence}");
    assert_eq!(answered, Some(false));
    assert_eq!(ka, Keepalive::None);
    // Handshake seen, no server cut: Accepted + WireReset only.
    assert_eq!(
        kinds(&d)
            .iter()
            .filter(|k| matches!(k, Obs::Accepted { .. }))
            .count(),
        1
    );
    assert_eq!(d.observations.len(), 2);
    assert_eq!(d.flows.resets.get("middlebox"), Some(&1));
    let r = correlate(&d);
    assert!(
        r.verdicts
            .iter()
            .any(|v| v.cause == Cause::IdleResetByMiddlebox),
        "{:#?}",
        r.verdicts
    );
}

#[test]
fn middlebox_rst_answering_our_packet_counts_the_silence_before_it() {
    let mut c = Conv::new("198.18.0.1:40000", "198.18.0.2:6443");
    c.handshake(0.0)
        .client_data(0.01, b"x")
        .server_ack(0.02)
        // The server writes after 240 s of silence; the middlebox answers it.
        .server_data(240.02, b"y")
        .rst_to_server(240.021, 50);
    let d = decode(&pcap(1, &frames(&c.pkts)));
    let (origin, silence, answered, _) = wire_reset(&d);
    assert_eq!(origin, ResetOrigin::Middlebox);
    assert_eq!(answered, Some(true));
    assert!((silence - 240.001).abs() < 1e-6, "{silence}");
}

#[test]
fn peer_rst_has_peer_origin() {
    let d = idle_reset(64, false);
    let (origin, silence, _, _) = wire_reset(&d);
    assert_eq!(origin, ResetOrigin::Peer);
    assert!((silence - 3.0).abs() < 1e-6);
    let r = correlate(&d);
    assert!(r.verdicts.is_empty(), "{:#?}", r.verdicts);
}

#[test]
fn keepalive_probes_are_counted_with_their_interval() {
    let d = idle_reset(121, true);
    assert_eq!(d.flows.keepalive_probes, 3);
    assert_eq!(d.flows.flows_with_keepalive, 1);
    let (origin, _, _, ka) = wire_reset(&d);
    assert_eq!(origin, ResetOrigin::Middlebox);
    assert_eq!(ka, Keepalive::Interval(30.0));
}

fn frame(ty: u8, fl: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut b = len.to_be_bytes()[1..].to_vec();
    b.push(ty);
    b.push(fl);
    b.extend_from_slice(&stream.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

fn goaway(last: u32, code: u32) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    frame(7, 0, 0, &p)
}

#[test]
fn goaway_in_cleartext_h2_is_found_and_tls_is_counted() {
    let mut c = Conv::new("198.18.0.1:40000", "198.18.0.2:6443");
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend(frame(4, 0, 0, &[]));
    // A DATA frame whose body continues into the next packet, followed by
    // the GOAWAY in that next packet: the follower must resume mid-packet.
    let data = frame(0, 0, 1, &[0u8; 100]);
    let mut second = data[60..].to_vec();
    second.extend(goaway(3, 0));
    c.handshake(0.0)
        .client_data(0.01, &preface)
        .server_data(0.02, &frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]))
        .server_data(0.03, &data[..60])
        .server_data(0.031, &second)
        .client_ack(0.04)
        // A GOAWAY whose header is cut by a packet boundary is finished by
        // the next packet.
        .server_data(0.05, &goaway(3, 2)[..5])
        .server_data(0.051, &goaway(3, 2)[5..])
        // One spread over three packets is counted, not guessed.
        .server_data(0.06, &goaway(5, 0)[..1])
        .server_data(0.061, &goaway(5, 0)[1..2])
        .server_data(0.062, &goaway(5, 0)[2..]);
    let mut tls = Conv::new("198.18.0.1:40001", "198.18.0.2:443");
    tls.handshake(1.0)
        .client_data(1.01, &[0x16, 0x03, 0x01, 0x00, 0x10]);
    let mut pkts = c.pkts.clone();
    pkts.extend(tls.pkts);
    let d = decode(&pcap(1, &frames(&pkts)));
    let goaways: Vec<_> = kinds(&d)
        .into_iter()
        .filter(|k| matches!(k, Obs::Goaway { .. }))
        .collect();
    assert_eq!(
        goaways,
        vec![
            &Obs::Goaway {
                direction: Direction::Sent,
                last_stream_id: 3,
                error_code: "NO_ERROR".into(),
                client: Some("198.18.0.1:40000".parse().unwrap()),
                server: Some("198.18.0.2:6443".parse().unwrap()),
            },
            &Obs::Goaway {
                direction: Direction::Sent,
                last_stream_id: 3,
                error_code: "INTERNAL_ERROR".into(),
                client: Some("198.18.0.1:40000".parse().unwrap()),
                server: Some("198.18.0.2:6443".parse().unwrap()),
            }
        ]
    );
    assert_eq!(d.flows.goaways, 2);
    assert_eq!(d.flows.h2_followed, 2);
    assert_eq!(d.flows.uninspected.get("h2_tls"), Some(&1));
    assert_eq!(d.flows.uninspected.get("h2_split_header"), Some(&1));
}

#[test]
fn pcapng_gives_the_same_observations() {
    let mut c = Conv::new("198.18.0.1:40000", "198.18.0.2:6443");
    c.syn(0.0).refuse(0.0001);
    let a = decode(&pcap(1, &frames(&c.pkts)));
    let b = decode(&pcapng(&frames(&c.pkts)));
    assert_eq!(a.observations, b.observations);
    assert_eq!(b.format, Format::Pcapng);
}

#[test]
fn cooked_and_raw_link_types_decode() {
    let mut c = Conv::new("198.18.0.1:40000", "198.18.0.2:6443");
    c.syn(0.0).refuse(0.0001);
    let want = decode(&pcap(1, &frames(&c.pkts))).observations;
    let ip: Vec<(u64, Vec<u8>)> = c.pkts.iter().map(|p| (p.t_us, synth::ip_tcp(p))).collect();
    // LINKTYPE_RAW (101).
    assert_eq!(decode(&pcap(101, &ip)).observations, want);
    // LINKTYPE_LINUX_SLL (113): 16-byte header, protocol last.
    let sll: Vec<_> = ip
        .iter()
        .map(|(t, b)| {
            let mut h = vec![0, 0, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0, 0x08, 0x00];
            h.extend_from_slice(b);
            (*t, h)
        })
        .collect();
    assert_eq!(decode(&pcap(113, &sll)).observations, want);
    // LINKTYPE_LINUX_SLL2 (276): 20-byte header, protocol first.
    let sll2: Vec<_> = ip
        .iter()
        .map(|(t, b)| {
            let mut h = vec![
                0x08, 0x00, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6, 2, 0, 0, 0, 0, 1, 0, 0,
            ];
            h.extend_from_slice(b);
            (*t, h)
        })
        .collect();
    assert_eq!(decode(&pcap(276, &sll2)).observations, want);
}

#[test]
fn server_abort_is_a_reset_sent_and_close_is_reported() {
    let mut c = Conv::new("198.18.0.1:40000", "198.18.0.2:6443");
    c.handshake(0.0).client_data(0.01, b"req").server_rst(0.02);
    let d = decode(&pcap(1, &frames(&c.pkts)));
    assert_eq!(
        kinds(&d)[1],
        &Obs::ResetSent {
            client: c.client,
            server: c.server,
            reason: Some("TCP_ABORT_ON_CLOSE".into()),
            state: Some("ESTABLISHED".into())
        }
    );
    // Seen from the client's host, the same RST is received (by TTL, the peer's).
    let dd = decode_bytes(
        "t.pcap",
        &pcap(1, &frames(&c.pkts)),
        &FlowOptions {
            ports: vec![6443],
            locals: vec!["198.18.0.1".parse().unwrap()],
        },
    )
    .unwrap();
    assert!(matches!(
        kinds(&dd)[1],
        Obs::WireReset {
            origin: ResetOrigin::Peer,
            ..
        }
    ));
    assert!(matches!(kinds(&dd)[2], Obs::ResetReceived { .. }));
}

#[test]
fn truncated_capture_names_file_and_offset() {
    let mut c = Conv::new("198.18.0.1:40000", "198.18.0.2:6443");
    c.syn(0.0).refuse(0.0001);
    let full = pcap(1, &frames(&c.pkts));
    let first_len = 16 + frames(&c.pkts)[0].1.len();
    let cut = &full[..full.len() - 5];
    let e = decode_bytes("cut.pcap", cut, &opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.pcap"), "{e}");
    assert!(e.contains("truncated"), "{e}");
    assert!(
        e.contains(&format!("byte offset {}", 24 + first_len)),
        "{e}"
    );
    // A cut inside the file header.
    let e = decode_bytes("hdr.pcap", &full[..10], &opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("hdr.pcap") && e.contains("byte offset 0"), "{e}");
    // pcapng cut mid-block.
    let ng = pcapng(&frames(&c.pkts));
    let e = decode_bytes("cut.pcapng", &ng[..ng.len() - 3], &opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("cut.pcapng") && e.contains("byte offset"), "{e}");
}

#[test]
fn bad_magic_and_unsupported_link_are_clear_errors() {
    let e = decode_bytes("notes.txt", b"hello world, not a capture", &opts())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("notes.txt") && e.contains("magic 68656c6c"),
        "{e}"
    );
    // LINKTYPE_IEEE802_11 (105).
    let e = decode_bytes("wifi.pcap", &pcap(105, &[(1, vec![0; 40])]), &opts())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("wifi.pcap")
            && e.contains("unsupported link type")
            && e.contains("byte offset 24"),
        "{e}"
    );
    // A missing file names it too.
    let e = decode_file(Path::new("/nonexistent/x.pcap"), &opts())
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/x.pcap"), "{e}");
}

#[test]
fn rfc3339_formats_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(
        rfc3339(1_603_692_168_986_286_000),
        "2020-10-26T06:02:48.986286Z"
    );
    assert_eq!(
        rfc3339(951_782_400_000_000_000),
        "2000-02-29T00:00:00.000000Z"
    );
}

#[test]
fn analyze_text_output_and_exit_code() {
    let mut c = Conv::new("198.18.0.1:40000", "198.18.0.2:6443");
    c.syn(0.0).refuse(0.0001);
    let dir = std::env::temp_dir().join(format!("dw-pcap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("refused.pcap");
    std::fs::write(&f, pcap(1, &frames(&c.pkts))).unwrap();
    let args = AnalyzePcapArgs {
        file: f.clone(),
        capture: CaptureFlags {
            ports: vec![6443],
            locals: vec![],
        },
        correlate: CorrelateFlags {
            instance: Some("api-0".into()),
            ..Default::default()
        },
        output: OutputFormat::Text,
    };
    let mut out = Vec::new();
    assert_eq!(run_to(&args, &mut out).unwrap(), 1);
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("1 refused"), "{text}");
    assert!(text.contains("refused_"), "{text}");
    let mut json = Vec::new();
    run_to(
        &AnalyzePcapArgs {
            output: OutputFormat::Json,
            ..args
        },
        &mut json,
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["report"]["verdicts"].as_array().unwrap().len(), 1);
    assert_eq!(v["observations"].as_array().unwrap().len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn snaplen_cut_frames_keep_sequence_arithmetic() {
    // tcpdump -s 96: the 400-byte response is cut, yet the RST that answers
    // the server's next write must still be recognised after the silence,
    // and the cut frame counts as uninspectable for HTTP/2, not as garbage.
    let mut c = Conv::new("198.18.0.1:40000", "198.18.0.2:6443");
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend(frame(4, 0, 0, &[]));
    c.handshake(0.0)
        .client_data(0.01, &preface)
        .server_data(0.02, &frame(4, 0, 0, &[]))
        .server_data(0.03, &frame(0, 0, 1, &[7u8; 200]).repeat(2))
        .client_ack(0.04)
        .server_data(4.04, &goaway(1, 0))
        .rst_to_server(4.041, 99);
    let d = decode(&pcap_snap(1, 96, &frames(&c.pkts)));
    let (origin, silence, answered, _) = wire_reset(&d);
    assert_eq!(origin, ResetOrigin::Middlebox);
    assert_eq!(answered, Some(true));
    assert!((silence - 4.001).abs() < 1e-6, "{silence}");
    assert_eq!(d.flows.uninspected.get("h2_snaplen"), Some(&1));
    // Without the cut the same capture finds the GOAWAY.
    let full = decode(&pcap(1, &frames(&c.pkts)));
    assert_eq!(full.flows.goaways, 1);
}

#[test]
fn router_any_capture_copies_count_once_with_the_ttl_this_host_saw() {
    // `tcpdump -i any` on a forwarding middlebox sees each packet arrive
    // (TTL as sent) and leave (TTL one lower) 5 us later. The server is
    // local: it receives the client's packets with the lower TTL and sent
    // its own with the higher one. The middlebox's forged RST appears once.
    let mut c = Conv::new("198.18.2.10:44710", "198.18.3.10:6443");
    c.client_ttl = 63;
    c.handshake(0.0)
        .client_data(0.01, b"GET /watch HTTP/1.1\r\n\r\n")
        .server_ack(0.011)
        .server_data(10.0, b"late write");
    c.rst_to_server(10.0001, 64);
    let mut peer = Conv::new("198.18.2.10:44712", "198.18.3.10:6443");
    peer.client_ttl = 63;
    peer.handshake(1.0)
        .client_data(1.01, b"x")
        .rst_to_server(1.02, 63);
    let single: Vec<_> = c.pkts.iter().chain(&peer.pkts).cloned().collect();
    let want = decode(&pcap(1, &frames(&single))).observations;

    let mut doubled = Vec::new();
    let n = single.len();
    for (i, p) in single.into_iter().enumerate() {
        let to_server = p.dst.port() == 6443;
        let forged = i == c.pkts.len() - 1;
        if forged {
            doubled.push(p);
            continue;
        }
        let (mut a, mut b) = (p.clone(), p);
        if to_server {
            a.ttl += 1;
        } else {
            b.ttl -= 1;
        }
        b.t_us += 5;
        doubled.push(a);
        doubled.push(b);
    }
    let d = decode(&pcap(1, &frames(&doubled)));
    assert_eq!(d.flows.duplicate_copies, n as u64 - 1);
    assert_eq!(d.observations, want);
    let origins: Vec<ResetOrigin> = d
        .observations
        .iter()
        .filter_map(|o| match o.kind {
            Obs::WireReset { origin, .. } => Some(origin),
            _ => None,
        })
        .collect();
    assert_eq!(origins, vec![ResetOrigin::Peer, ResetOrigin::Middlebox]);
}

#[test]
fn ipv6_segments_decode() {
    // SYN and RST over IPv6 with a hop-by-hop extension header in the SYN.
    fn v6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, fl: u8, hbh: bool) -> Vec<u8> {
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&sport.to_be_bytes());
        tcp.extend_from_slice(&dport.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, fl, 0xff, 0xff, 0, 0, 0, 0]);
        let mut ext = Vec::new();
        if hbh {
            ext.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        }
        let mut b = vec![0x60, 0, 0, 0];
        b.extend_from_slice(&((ext.len() + tcp.len()) as u16).to_be_bytes());
        b.push(if hbh { 0 } else { 6 });
        b.push(64);
        b.extend_from_slice(&src);
        b.extend_from_slice(&dst);
        b.extend(ext);
        b.extend(tcp);
        b
    }
    let mut c = [0u8; 16];
    c[..2].copy_from_slice(&[0xfd, 0]);
    c[15] = 1;
    let mut s = c;
    s[15] = 2;
    let frames = vec![
        (1, v6(c, s, 40000, 6443, flags::SYN, true)),
        (2, v6(s, c, 6443, 40000, flags::RST | flags::ACK, false)),
    ];
    let d = decode(&pcap(229, &frames));
    assert_eq!(
        kinds(&d),
        vec![&Obs::Refused {
            client: "[fd00::1]:40000".parse().unwrap(),
            server: "[fd00::2]:6443".parse().unwrap(),
            path: None
        }]
    );
}

/// The shared segmentation cases through the pcap follower: exactly the
/// GOAWAYs and uninspected counts each case names (the kernel classifier's
/// test in probe-user/src/kernel/wire_test.rs runs the same list).
#[test]
fn shared_h2_segmentation_cases() {
    use super::h2cases::{CLIENT_ISN, SERVER_ISN, cases};
    let client: std::net::SocketAddr = "198.18.7.1:41000".parse().unwrap();
    let server: std::net::SocketAddr = "198.18.7.2:6443".parse().unwrap();
    for c in cases() {
        let mut pkts = Vec::new();
        let mut t_us = T0_US;
        let mut push = |from_server: bool, fl: u8, seq: u32, payload: &[u8]| {
            t_us += 100;
            let (src, dst) = if from_server {
                (server, client)
            } else {
                (client, server)
            };
            pkts.push(Pkt {
                t_us,
                src,
                dst,
                ttl: 64,
                flags: fl,
                seq,
                ack: 1,
                payload: payload.to_vec(),
                // Every packet its own id: retransmissions are not copies.
                ip_id: pkts.len() as u16,
            });
        };
        push(false, flags::SYN, CLIENT_ISN, &[]);
        push(true, flags::SYN | flags::ACK, SERVER_ISN, &[]);
        push(false, flags::ACK, CLIENT_ISN.wrapping_add(1), &[]);
        for s in &c.segs {
            let isn = if s.from_server {
                SERVER_ISN
            } else {
                CLIENT_ISN
            };
            push(
                s.from_server,
                flags::PSH | flags::ACK,
                isn.wrapping_add(1).wrapping_add(s.rel_seq),
                &s.bytes,
            );
        }
        let d = decode(&pcap(1, &frames(&pkts)));
        let goaways: Vec<(bool, u32, u32)> = kinds(&d)
            .into_iter()
            .filter_map(|k| match k {
                Obs::Goaway {
                    direction,
                    last_stream_id,
                    error_code,
                    ..
                } => Some((
                    *direction == Direction::Sent,
                    *last_stream_id,
                    (0..14)
                        .find(|&i| flows::h2_error_name(i) == *error_code)
                        .expect("code"),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(goaways, c.goaways, "{}", c.name);
        let uninspected: Vec<(&str, u64)> = d
            .flows
            .uninspected
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect();
        assert_eq!(uninspected, c.uninspected, "{}", c.name);
    }
}
