//! `.go.buildinfo`: the Go version and the module versions a binary was
//! built with (what `go version -m` prints). Go 1.18 and later write the
//! strings inline after a 32-byte header (flag bit 2).

/// The header's magic.
const MAGIC: &[u8] = b"\xff Go buildinf:";

/// What the build info says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// `go1.22.12`.
    pub go_version: String,
    /// The `golang.org/x/net` module version, when the binary was built in
    /// module mode with it.
    pub xnet_version: Option<String>,
}

fn uvarint(d: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in d.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn string_at(d: &[u8]) -> Option<(&[u8], usize)> {
    let (len, n) = uvarint(d)?;
    let len = usize::try_from(len).ok()?;
    let s = d.get(n..n.checked_add(len)?)?;
    Some((s, n + len))
}

/// Parses the section's bytes; `None` when it is not inline build info
/// (pre-1.18 binaries keep pointers instead, and are refused elsewhere).
pub fn parse(d: &[u8]) -> Option<BuildInfo> {
    if d.len() < 32 || !d.starts_with(MAGIC) || d[15] & 0x2 == 0 {
        return None;
    }
    let (version, used) = string_at(&d[32..])?;
    let (modinfo, _) = string_at(&d[32 + used..]).unwrap_or((&[], 0));
    let modinfo = String::from_utf8_lossy(modinfo);
    let xnet_version = modinfo.lines().find_map(|l| {
        let mut f = l.split('\t');
        match (f.next(), f.next(), f.next()) {
            (Some("dep"), Some("golang.org/x/net"), Some(v)) => Some(v.to_string()),
            _ => None,
        }
    });
    Some(BuildInfo {
        go_version: String::from_utf8_lossy(version).into_owned(),
        xnet_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_strings() {
        let mut d = MAGIC.to_vec();
        d.extend([8, 2]);
        d.resize(32, 0);
        d.push(8);
        d.extend(b"go1.23.8");
        let m = b"path\tx\ndep\tgolang.org/x/net\tv0.30.0\th1:abc\n";
        d.push(m.len() as u8);
        d.extend(m);
        let bi = parse(&d).expect("inline build info");
        assert_eq!(bi.go_version, "go1.23.8");
        assert_eq!(bi.xnet_version.as_deref(), Some("v0.30.0"));
        assert_eq!(parse(&d[..20]), None);
        d[15] = 0;
        assert_eq!(parse(&d), None, "pointer-style (pre-1.18) build info");
    }
}
