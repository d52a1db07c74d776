//! Reading tcpdump captures (pcap and pcapng) into frames with absolute
//! timestamps and their link type. The container format is parsed by
//! `pcap-file`; this module adds what a user needs when the file is bad: the
//! file name and the byte offset of the first record that could not be read.

use std::path::Path;

use pcap_file::DataLink;
use pcap_file::pcap::PcapParser;
use pcap_file::pcapng::blocks::Block;
use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
use pcap_file::pcapng::{PcapNgParser, blocks::interface_description::InterfaceDescriptionBlock};
use pcap_file::{PcapError, TsResolution};

/// One captured frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Capture timestamp, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Link-layer type of `data`.
    pub link: DataLink,
    /// The captured bytes (possibly cut at the snap length).
    pub data: &'a [u8],
    /// Byte offset of the frame's record in the file (for messages).
    pub offset: usize,
}

/// The container format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// libpcap (`tcpdump -w`).
    Pcap,
    /// pcapng (Wireshark, `tcpdump --pcapng`... or `dumpcap`).
    Pcapng,
}

/// Why a capture could not be read. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Reading the file failed.
    #[error("{file}: cannot read capture: {source}")]
    Io {
        /// The file.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not a pcap or pcapng file.
    #[error(
        "{file}: not a pcap or pcapng capture: magic {magic} at byte offset 0 \
         (expected a1b2c3d4, a1b23c4d or their byte swaps for pcap, 0a0d0d0a for pcapng)"
    )]
    BadMagic {
        /// The file.
        file: String,
        /// The first bytes, hex.
        magic: String,
    },
    /// The file ends inside a header or record.
    #[error(
        "{file}: truncated capture: the {what} at byte offset {offset} is incomplete \
         (file is {len} bytes; {frames} packets read before it)"
    )]
    Truncated {
        /// The file.
        file: String,
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// File length.
        len: usize,
        /// Frames read successfully before.
        frames: usize,
    },
    /// A header or record is malformed.
    #[error("{file}: malformed {what} at byte offset {offset}: {detail}")]
    Malformed {
        /// The file.
        file: String,
        /// What was being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// What the parser said.
        detail: String,
    },
    /// A link type the decoder does not know.
    #[error(
        "{file}: unsupported link type {link:?} for the packet at byte offset {offset} \
         (supported: Ethernet, Linux cooked SLL and SLL2, raw IP, BSD loopback)"
    )]
    UnsupportedLink {
        /// The file.
        file: String,
        /// The link type.
        link: DataLink,
        /// The packet's record offset.
        offset: usize,
    },
}

/// A capture in memory and its frames.
#[derive(Debug)]
pub struct Capture<'a> {
    /// pcap or pcapng.
    pub format: Format,
    /// Frames in file order.
    pub frames: Vec<Frame<'a>>,
    /// pcapng blocks that carry no packet and were skipped (statistics,
    /// name resolution, journal, unknown).
    pub skipped_blocks: u64,
}

const PCAP_MAGICS: [[u8; 4]; 4] = [
    [0xa1, 0xb2, 0xc3, 0xd4],
    [0xd4, 0xc3, 0xb2, 0xa1],
    [0xa1, 0xb2, 0x3c, 0x4d],
    [0x4d, 0x3c, 0xb2, 0xa1],
];
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Which format the bytes start with, if any (used by `report` to tell a
/// capture from a recording).
pub fn sniff(data: &[u8]) -> Option<Format> {
    let head: [u8; 4] = data.get(..4)?.try_into().ok()?;
    if PCAP_MAGICS.contains(&head) {
        Some(Format::Pcap)
    } else if head == PCAPNG_MAGIC {
        Some(Format::Pcapng)
    } else {
        None
    }
}

/// Reads the whole file (captures the tools analyse fit in memory; frames
/// borrow from the buffer instead of copying).
pub fn read_file(path: &Path) -> Result<Vec<u8>, CaptureError> {
    std::fs::read(path).map_err(|source| CaptureError::Io {
        file: path.display().to_string(),
        source,
    })
}

/// Parses a capture held in `data`; `file` names it in errors.
pub fn parse<'a>(file: &str, data: &'a [u8]) -> Result<Capture<'a>, CaptureError> {
    match sniff(data) {
        Some(Format::Pcap) => parse_pcap(file, data),
        Some(Format::Pcapng) => parse_pcapng(file, data),
        None if data.len() < 4 => Err(CaptureError::Truncated {
            file: file.to_string(),
            what: "file header",
            offset: 0,
            len: data.len(),
            frames: 0,
        }),
        None => Err(CaptureError::BadMagic {
            file: file.to_string(),
            magic: data.iter().take(4).map(|b| format!("{b:02x}")).collect(),
        }),
    }
}

fn fail(
    file: &str,
    what: &'static str,
    offset: usize,
    len: usize,
    frames: usize,
    e: PcapError,
) -> CaptureError {
    match e {
        PcapError::IncompleteBuffer => CaptureError::Truncated {
            file: file.to_string(),
            what,
            offset,
            len,
            frames,
        },
        other => CaptureError::Malformed {
            file: file.to_string(),
            what,
            offset,
            detail: other.to_string(),
        },
    }
}

fn parse_pcap<'a>(file: &str, data: &'a [u8]) -> Result<Capture<'a>, CaptureError> {
    let len = data.len();
    let (mut rest, parser) =
        PcapParser::new(data).map_err(|e| fail(file, "pcap file header", 0, len, 0, e))?;
    let header = parser.header();
    let link = header.datalink;
    let mut frames = Vec::new();
    while !rest.is_empty() {
        let offset = len - rest.len();
        // The raw record, validated here: pcap-file 2.0 rejects records whose
        // original length exceeds the snap length, which is every long packet
        // of a `tcpdump -s 256` capture.
        let (next, raw) = parser
            .next_raw_packet(rest)
            .map_err(|e| fail(file, "packet record", offset, len, frames.len(), e))?;
        let frac_ns = match header.ts_resolution {
            TsResolution::MicroSecond => u64::from(raw.ts_frac) * 1000,
            TsResolution::NanoSecond => u64::from(raw.ts_frac),
        };
        if frac_ns >= 1_000_000_000 || raw.incl_len > raw.orig_len {
            return Err(CaptureError::Malformed {
                file: file.to_string(),
                what: "packet record",
                offset,
                detail: format!(
                    "timestamp fraction {} or captured length {} > original length {}",
                    raw.ts_frac, raw.incl_len, raw.orig_len
                ),
            });
        }
        let data = match raw.data {
            std::borrow::Cow::Borrowed(b) => b,
            // The parser borrows from `data`; an owned buffer would mean a
            // copy we cannot keep, so treat it as malformed rather than panic.
            std::borrow::Cow::Owned(_) => {
                return Err(CaptureError::Malformed {
                    file: file.to_string(),
                    what: "packet record",
                    offset,
                    detail: "unexpected owned packet data".into(),
                });
            }
        };
        frames.push(Frame {
            ts_ns: u64::from(raw.ts_sec) * 1_000_000_000 + frac_ns,
            link,
            data,
            offset,
        });
        rest = next;
    }
    Ok(Capture {
        format: Format::Pcap,
        frames,
        skipped_blocks: 0,
    })
}

/// pcapng timestamps count units of the interface's `if_tsresol` (default
/// microseconds). pcap-file 2.0 returns the raw count as if it were
/// nanoseconds, so scale it here.
fn scale_ts(raw: u64, idb: Option<&InterfaceDescriptionBlock<'_>>) -> u64 {
    let resol = idb
        .and_then(|i| {
            i.options.iter().find_map(|o| match o {
                InterfaceDescriptionOption::IfTsResol(r) => Some(*r),
                _ => None,
            })
        })
        .unwrap_or(6);
    let raw = u128::from(raw);
    let ns = if resol & 0x80 == 0 {
        let exp = u32::from(resol);
        if exp <= 9 {
            raw * 10u128.pow(9 - exp)
        } else {
            raw / 10u128.pow((exp - 9).min(38))
        }
    } else {
        let exp = u32::from(resol & 0x7f).min(127);
        (raw * 1_000_000_000) >> exp
    };
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn parse_pcapng<'a>(file: &str, data: &'a [u8]) -> Result<Capture<'a>, CaptureError> {
    let len = data.len();
    let (mut rest, mut parser) =
        PcapNgParser::new(data).map_err(|e| fail(file, "pcapng section header", 0, len, 0, e))?;
    let mut frames = Vec::new();
    let mut skipped = 0;
    let mut last_ts = 0;
    while !rest.is_empty() {
        let offset = len - rest.len();
        let (next, block) = parser
            .next_block(rest)
            .map_err(|e| fail(file, "pcapng block", offset, len, frames.len(), e))?;
        rest = next;
        let (iface, raw_ts, bytes) = match &block {
            Block::EnhancedPacket(epb) => (
                epb.interface_id,
                Some(u64::try_from(epb.timestamp.as_nanos()).unwrap_or(u64::MAX)),
                &epb.data,
            ),
            // A simple packet block has no timestamp: keep the previous one.
            Block::SimplePacket(spb) => (0, None, &spb.data),
            Block::Packet(pb) => (u32::from(pb.interface_id), Some(pb.timestamp), &pb.data),
            Block::SectionHeader(_) | Block::InterfaceDescription(_) => continue,
            _ => {
                skipped += 1;
                continue;
            }
        };
        let idb = parser.interfaces().get(iface as usize);
        let Some(link) = idb.map(|i| i.linktype) else {
            return Err(CaptureError::Malformed {
                file: file.to_string(),
                what: "pcapng packet block",
                offset,
                detail: format!("interface {iface} was not described before it"),
            });
        };
        let ts_ns = match raw_ts {
            Some(r) => scale_ts(r, idb),
            None => last_ts,
        };
        last_ts = ts_ns;
        let data = match bytes {
            std::borrow::Cow::Borrowed(b) => *b,
            std::borrow::Cow::Owned(_) => {
                return Err(CaptureError::Malformed {
                    file: file.to_string(),
                    what: "pcapng packet block",
                    offset,
                    detail: "unexpected owned packet data".into(),
                });
            }
        };
        frames.push(Frame {
            ts_ns,
            link,
            data,
            offset,
        });
    }
    Ok(Capture {
        format: Format::Pcapng,
        frames,
        skipped_blocks: skipped,
    })
}
