//! HTTP/2 byte streams cut into TCP segments every way that matters for
//! following frames: frame headers cut by a segment boundary at every
//! byte, several frames in one segment, segments starting inside a frame
//! and holding the next header, a GOAWAY cut at every byte, retransmitted
//! and overlapping segments, a lost segment, more frames in one segment
//! than the kernel reads, h2c upgrades. One list for both followers: the
//! pcap parser's test (`ops/src/pcap/tests.rs`) and the kernel classifier's
//! (`probe-user/src/kernel/wire_test.rs`, the real program through
//! `BPF_PROG_TEST_RUN`) expect exactly the same GOAWAYs and uninspected
//! counts from every case, so the two cannot drift apart.

/// One TCP segment of a case.
#[derive(Debug, Clone)]
pub struct Seg {
    /// Sent by the server (the watched port's side).
    pub from_server: bool,
    /// Sequence number relative to the sender's first payload byte.
    pub rel_seq: u32,
    pub bytes: Vec<u8>,
}

/// A connection's payload segments (after the handshake) and what a
/// follower must find in them.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// In the order they are on the wire.
    pub segs: Vec<Seg>,
    /// GOAWAYs in order: (sent by the server, last-stream-id, error code).
    pub goaways: Vec<(bool, u32, u32)>,
    /// What is counted as not inspected, by the pcap parser's reason names
    /// (`h2_split_header`, ...), sorted.
    pub uninspected: Vec<(&'static str, u64)>,
}

/// The server's initial sequence number in both tests: frames cross the
/// 32-bit wrap a few KB in, so sequence arithmetic is checked too.
pub const SERVER_ISN: u32 = 0xffff_f000;
/// The client's initial sequence number.
pub const CLIENT_ISN: u32 = 0x1000;
/// Segments stay below this many bytes: `BPF_PROG_TEST_RUN` takes a frame
/// of at most a page minus the skb's head and tail room.
pub const MAX_SEG: usize = 3000;

/// HTTP/2 frame bytes: 24-bit length, type, flags, stream id, payload.
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.push(ty);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A GOAWAY frame.
pub fn goaway(last: u32, code: u32) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    frame(7, 0, 0, &p)
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const PROTOCOL_ERROR: u32 = 1;

/// A byte stream with the offsets of the frames that cases cut around.
struct Stream {
    bytes: Vec<u8>,
    marks: Vec<(&'static str, usize)>,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            bytes: Vec::new(),
            marks: Vec::new(),
        }
    }
    fn push(&mut self, mark: Option<&'static str>, b: &[u8]) -> &mut Self {
        if let Some(m) = mark {
            self.marks.push((m, self.bytes.len()));
        }
        self.bytes.extend_from_slice(b);
        self
    }
    fn at(&self, mark: &str) -> usize {
        self.marks
            .iter()
            .find(|(m, _)| *m == mark)
            .map(|(_, o)| *o)
            .unwrap_or_else(|| panic!("no mark {mark}"))
    }
}

/// The client's side of prior-knowledge HTTP/2: preface, SETTINGS,
/// WINDOW_UPDATE, a GET on stream 1.
fn client_stream() -> Vec<u8> {
    let mut c = PREFACE.to_vec();
    c.extend(frame(4, 0, 0, &[0, 4, 0, 0x10, 0, 0]));
    c.extend(frame(8, 0, 0, &0x00ff_0000u32.to_be_bytes()));
    c.extend(frame(1, 5, 1, &[0x82, 0x86, 0x84, 0x41, 1, b'x']));
    c
}

/// The server's answer: SETTINGS, its ACK, HEADERS, two full-size DATA
/// frames (16384 bytes: most segments start inside one and some hold the
/// next header), a short last DATA, then GOAWAY(1, PROTOCOL_ERROR).
fn server_stream(first: &[u8]) -> Stream {
    let mut s = Stream::new();
    s.push(None, first)
        .push(None, &frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]))
        .push(None, &frame(4, 1, 0, &[]))
        .push(None, &frame(1, 4, 1, &[0x88, 0x5f, 0x87]))
        .push(Some("data1"), &frame(0, 0, 1, &[0xd1; 16384]))
        .push(Some("data2"), &frame(0, 0, 1, &[0xd2; 16384]))
        .push(Some("data3"), &frame(0, 1, 1, &[0xd3; 777]))
        .push(Some("goaway"), &goaway(1, PROTOCOL_ERROR));
    s
}

/// `bytes` cut at every multiple of `mss` and at `extra` offsets.
fn cut(bytes: &[u8], mss: usize, extra: &[usize]) -> Vec<(u32, Vec<u8>)> {
    let mut at: Vec<usize> = (0..bytes.len()).step_by(mss).collect();
    at.extend(extra.iter().copied().filter(|&e| e > 0 && e < bytes.len()));
    at.sort_unstable();
    at.dedup();
    at.iter()
        .enumerate()
        .map(|(i, &a)| {
            let b = at.get(i + 1).copied().unwrap_or(bytes.len());
            (a as u32, bytes[a..b].to_vec())
        })
        .collect()
}

fn segs(from_server: bool, pieces: Vec<(u32, Vec<u8>)>) -> Vec<Seg> {
    pieces
        .into_iter()
        .map(|(rel_seq, bytes)| Seg {
            from_server,
            rel_seq,
            bytes,
        })
        .collect()
}

/// The one range `[a, b)` of `bytes` as a segment.
fn piece(from_server: bool, bytes: &[u8], a: usize, b: usize) -> Seg {
    Seg {
        from_server,
        rel_seq: a as u32,
        bytes: bytes[a..b].to_vec(),
    }
}

fn case(
    name: impl Into<String>,
    client: Vec<Seg>,
    server: Vec<Seg>,
    goaways: &[(bool, u32, u32)],
    uninspected: &[(&'static str, u64)],
) -> Case {
    let mut segs = client;
    segs.extend(server);
    let mut u = uninspected.to_vec();
    u.sort_unstable();
    Case {
        name: name.into(),
        segs,
        goaways: goaways.to_vec(),
        uninspected: u,
    }
}

// Long (about 190 lines) on purpose: it is the table of segmentation cases,
// one entry after another; split, the list would no longer read as one list.
/// Every case.
pub fn cases() -> Vec<Case> {
    let c = client_stream();
    let client = || segs(false, cut(&c, MAX_SEG, &[]));
    let s = server_stream(&[]);
    let b = &s.bytes;
    let (d2, g) = (s.at("data2"), s.at("goaway"));
    let found = [(true, 1, PROTOCOL_ERROR)];
    let mut out = Vec::new();

    for mss in [1448, 1000, 2896] {
        out.push(case(
            format!("server stream in {mss}-byte segments"),
            client(),
            segs(true, cut(b, mss, &[])),
            &found,
            &[],
        ));
    }
    out.push(case(
        "GOAWAY alone in its segment",
        client(),
        segs(true, cut(b, 1448, &[g])),
        &found,
        &[],
    ));
    out.push(case(
        "segment ends where the next frame header starts",
        client(),
        segs(true, cut(b, 1448, &[d2, g])),
        &found,
        &[],
    ));
    for k in 1..=8 {
        out.push(case(
            format!("DATA header cut after {k} bytes"),
            client(),
            segs(true, cut(b, 1448, &[d2 + k])),
            &found,
            &[],
        ));
    }
    for k in 1..=16 {
        out.push(case(
            format!("GOAWAY cut after {k} bytes"),
            client(),
            segs(true, cut(b, 1448, &[g + k])),
            &found,
            &[],
        ));
    }

    // Retransmissions: a whole earlier segment again (bytes already
    // scanned), and one that re-segments: from inside an old segment to
    // beyond the next header.
    let mut rx = segs(true, cut(b, 1448, &[]));
    let again = rx[15].clone();
    rx.insert(17, again);
    out.push(case(
        "an earlier segment retransmitted",
        client(),
        rx,
        &found,
        &[],
    ));
    let p = cut(b, 1448, &[]);
    let i = p.iter().position(|(a, _)| *a as usize > d2).expect("cut") - 1;
    let (a, bytes) = &p[i];
    let mut ov: Vec<Seg> = segs(true, p[..=i].to_vec());
    // Sent again from 100 bytes into the segment holding DATA2's header
    // (the header is behind it now), on to 300 bytes past its end.
    let from = *a as usize + 100;
    let to = *a as usize + bytes.len() + 300;
    ov.push(piece(true, b, from, to));
    ov.extend(
        segs(true, cut(&b[to..], 1448, &[]))
            .into_iter()
            .map(|mut s| {
                s.rel_seq += to as u32;
                s
            }),
    );
    out.push(case(
        "overlapping retransmission past the next header",
        client(),
        ov,
        &found,
        &[],
    ));
    // A header cut after 5 bytes; that segment again; then a
    // retransmission holding the whole header; then the rest.
    let mut rc: Vec<Seg> = segs(true, cut(&b[..d2 + 5], 1448, &[]));
    let last = rc.last().cloned().expect("segments");
    rc.push(last);
    rc.push(piece(true, b, d2 - 20, d2 + 600));
    rc.extend(
        segs(true, cut(&b[d2 + 600..], 1448, &[]))
            .into_iter()
            .map(|mut s| {
                s.rel_seq += (d2 + 600) as u32;
                s
            }),
    );
    out.push(case(
        "cut header, retransmitted, then resent whole",
        client(),
        rc,
        &found,
        &[],
    ));

    // A segment the capture missed, holding a frame header: inspection
    // ends, counted. (Missing bytes inside a frame body change nothing.)
    let mut gap = segs(true, cut(b, 1448, &[]));
    let d3 = s.at("data3");
    let lost = gap
        .iter()
        .position(|x| x.rel_seq as usize + x.bytes.len() > d3)
        .expect("segment");
    gap.remove(lost);
    let mut body_gap = segs(true, cut(b, 1448, &[]));
    body_gap.retain(|x| !(x.rel_seq as usize > d2 + 1448 && (x.rel_seq as usize) < d2 + 2 * 1448));
    out.push(case(
        "a lost segment inside a frame body",
        client(),
        body_gap,
        &found,
        &[],
    ));
    out.push(case(
        "a lost segment",
        client(),
        gap,
        &[],
        &[("h2_seq_gap", 1)],
    ));
    // Headers spread over three segments: not reassembled, counted.
    out.push(case(
        "DATA header over three segments",
        client(),
        segs(true, cut(b, 1448, &[d2 + 1, d2 + 2])),
        &[],
        &[("h2_split_header", 1)],
    ));
    out.push(case(
        "GOAWAY over three segments",
        client(),
        segs(true, cut(b, 1448, &[g + 2, g + 12])),
        &[],
        &[("h2_split_goaway", 1)],
    ));

    // Several GOAWAYs in one segment (a graceful shutdown's announcement,
    // a PING, the final one), and from the client.
    let mut two = Stream::new();
    two.push(None, &frame(4, 0, 0, &[]))
        .push(None, &frame(1, 4, 1, &[0x88]))
        .push(None, &goaway(0x7fff_ffff, 0))
        .push(None, &frame(6, 0, 0, &[7; 8]))
        .push(None, &goaway(1, 0));
    let mut cg = c.clone();
    cg.extend(frame(4, 1, 0, &[]));
    cg.extend(goaway(0, 0));
    out.push(case(
        "two GOAWAYs in one segment, and the client's",
        segs(false, cut(&cg, MAX_SEG, &[c.len()])),
        segs(true, cut(&two.bytes, MAX_SEG, &[])),
        &[(false, 0, 0), (true, 0x7fff_ffff, 0), (true, 1, 0)],
        &[],
    ));
    // More frames in one segment than the kernel reads: inspection ends.
    let mut many = frame(4, 0, 0, &[]);
    for _ in 0..20 {
        many.extend(frame(8, 0, 0, &1000u32.to_be_bytes()));
    }
    let n = many.len();
    many.extend(goaway(1, 0));
    out.push(case(
        "more frames in one segment than are read",
        client(),
        segs(true, cut(&many, MAX_SEG, &[n])),
        &[],
        &[("h2_frame_limit", 1)],
    ));

    out.extend(h2c_cases());
    out
}

/// An h2c upgrade (RFC 7540 3.2) as curl and nghttp send it.
const UPGRADE_REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 198.18.7.2:6443\r\n\
Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nAccept: */*\r\n\r\n";
/// nghttpd's answer.
const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";

fn h2c_cases() -> Vec<Case> {
    let mut out = Vec::new();
    let s = server_stream(SWITCHING);
    let b = &s.bytes;
    let mut preface = PREFACE.to_vec();
    preface.extend(frame(4, 0, 0, &[]));
    preface.extend(frame(4, 1, 0, &[]));
    let req = UPGRADE_REQUEST.len();
    let mut client = UPGRADE_REQUEST.to_vec();
    client.extend(&preface);
    // The request, the server's first segment, the client's preface (sent
    // once the 101 arrived), the server's other segments.
    let upgrade = |name: &str, first_cut: usize, goaways: &[(bool, u32, u32)], u: &[_]| {
        let server = segs(true, cut(b, 1448, &[first_cut]));
        let mut segs_ = vec![piece(false, &client, 0, req), server[0].clone()];
        segs_.push(piece(false, &client, req, client.len()));
        segs_.extend(server[1..].iter().cloned());
        let mut u = u.to_vec();
        u.sort_unstable();
        Case {
            name: name.into(),
            segs: segs_,
            goaways: goaways.to_vec(),
            uninspected: u,
        }
    };
    let found = [(true, 1, PROTOCOL_ERROR)];
    out.push(upgrade(
        "h2c: 101 and the first frames in one segment",
        1448,
        &found,
        &[],
    ));
    out.push(upgrade(
        "h2c: 101 alone in its segment",
        SWITCHING.len(),
        &found,
        &[],
    ));
    // The 101's header block ends in the next segment: not looked for.
    out.push(upgrade(
        "h2c: 101 header block cut",
        SWITCHING.len() - 3,
        &[],
        &[("h2c_upgrade_lost", 1)],
    ));
    // A request answered without switching: HTTP/1 both ways.
    let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    out.push(case(
        "HTTP/1.1 without upgrade",
        vec![piece(false, UPGRADE_REQUEST, 0, req)],
        vec![piece(true, ok, 0, ok.len())],
        &[],
        &[("not_h2", 2)],
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case's segments are within the test-run size, and the
    /// cut cases cut where they say.
    #[test]
    fn cases_are_well_formed() {
        let all = cases();
        assert!(all.len() > 40);
        for c in &all {
            for s in &c.segs {
                assert!(
                    !s.bytes.is_empty() && s.bytes.len() <= MAX_SEG,
                    "{}",
                    c.name
                );
            }
        }
        let s = server_stream(&[]);
        let g = s.at("goaway");
        let c = all
            .iter()
            .find(|c| c.name == "GOAWAY cut after 5 bytes")
            .expect("case");
        assert!(
            c.segs
                .iter()
                .any(|x| x.from_server && x.rel_seq as usize == g + 5)
        );
    }
}
