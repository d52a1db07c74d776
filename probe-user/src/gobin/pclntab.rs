//! Go's function table (`runtime.pcHeader` and its `functab`), the table the
//! runtime itself needs for stack traces, so it is present in every Go
//! executable, stripped ones included (`-ldflags=-s -w` removes `.symtab`
//! and DWARF, not this). Layout of Go 1.18 and later (what `debug/gosym`
//! reads); older Go has no register ABI, so the hooks cannot use it anyway.

use super::GobinError;

/// `pcHeader.magic` of Go 1.18 and 1.19.
pub const MAGIC_118: u32 = 0xffff_fff0;
/// `pcHeader.magic` of Go 1.20 and later.
pub const MAGIC_120: u32 = 0xffff_fff1;
/// Bytes of the 64-bit header.
const HEADER_LEN: usize = 72;

/// A parsed header over the table's bytes.
pub struct Pclntab<'a> {
    data: &'a [u8],
    nfunc: usize,
    /// The header's `textStart` (0 in a PIE file: filled in by a relocation).
    pub text_start: u64,
    funcname: usize,
    functab: usize,
}

fn u32_at(d: &[u8], off: usize) -> Option<u32> {
    d.get(off..off.checked_add(4)?)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(d: &[u8], off: usize) -> Option<u64> {
    let b = d.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}

impl<'a> Pclntab<'a> {
    /// Checks the header (magic, pointer size 8, offsets inside the table).
    pub fn parse(data: &'a [u8]) -> Result<Pclntab<'a>, GobinError> {
        let bad = |why: &str| GobinError::Pclntab(why.to_string());
        if data.len() < HEADER_LEN {
            return Err(bad("shorter than its header"));
        }
        let magic = u32_at(data, 0).unwrap_or(0);
        if magic != MAGIC_118 && magic != MAGIC_120 {
            return Err(bad(&format!(
                "magic {magic:#x}: not the table of Go 1.18 or later"
            )));
        }
        if data[4] != 0 || data[5] != 0 || data[7] != 8 {
            return Err(bad(
                "header padding or pointer size is not that of a 64-bit Go",
            ));
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i).unwrap_or(u64::MAX);
        let inside = |v: u64| usize::try_from(v).ok().filter(|&v| v < data.len());
        let nfunc = usize::try_from(word(0)).map_err(|_| bad("function count"))?;
        let funcname = inside(word(3)).ok_or_else(|| bad("function name table outside"))?;
        let functab = inside(word(7)).ok_or_else(|| bad("function table outside"))?;
        // nfunc + 1 (entry, offset) pairs must fit.
        let need = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(functab));
        if need.is_none_or(|n| n > data.len()) {
            return Err(bad("function table runs past the end"));
        }
        Ok(Pclntab {
            data,
            nfunc,
            text_start: word(2),
            funcname,
            functab,
        })
    }

    /// Number of functions.
    pub fn len(&self) -> usize {
        self.nfunc
    }

    /// Whether the table lists no function.
    pub fn is_empty(&self) -> bool {
        self.nfunc == 0
    }

    /// Function `i`: its entry as an offset from the text start, and its name.
    pub fn func(&self, i: usize) -> Option<(u32, &'a [u8])> {
        let pair = self.functab + 8 * i;
        let entry_off = u32_at(self.data, pair)?;
        let func_off = u32_at(self.data, pair + 4)? as usize;
        let func = self.functab.checked_add(func_off)?;
        let name_off = u32_at(self.data, func.checked_add(4)?)? as i32;
        let start = self.funcname.checked_add(usize::try_from(name_off).ok()?)?;
        let rest = self.data.get(start..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some((entry_off, &rest[..end]))
    }

    /// Entry offsets (from the text start) of the functions named in
    /// `names`, in that order; `None` for those absent. One pass.
    pub fn find(&self, names: &[&str]) -> Vec<Option<u32>> {
        let mut out = vec![None; names.len()];
        for i in 0..self.nfunc {
            let Some((entry, name)) = self.func(i) else {
                continue;
            };
            for (slot, wanted) in out.iter_mut().zip(names) {
                if slot.is_none() && name == wanted.as_bytes() {
                    *slot = Some(entry);
                }
            }
        }
        out
    }

    /// The name of the function containing text offset `off`.
    pub fn name_at(&self, off: u32) -> Option<&'a [u8]> {
        // The table is sorted by entry: the last entry <= off.
        let (mut lo, mut hi) = (0usize, self.nfunc);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match u32_at(self.data, self.functab + 8 * mid) {
                Some(e) if e <= off => lo = mid + 1,
                Some(_) => hi = mid,
                None => return None,
            }
        }
        self.func(lo.checked_sub(1)?).map(|(_, n)| n)
    }
}
