//! Pure decoding: kernel records to events ([`event`]), events to the
//! correlation engine's observations ([`observe`]). No I/O; fuzzed.

pub mod event;
pub mod observe;
