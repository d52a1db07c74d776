//! Go's stack-bound check at a function's entry, decoded to find the first
//! instruction after it. An entry probe would fire twice when the stack
//! must grow (the check calls `morestack`, which jumps back to the entry);
//! after the check it fires once per call, with the arguments still in
//! their registers (the check only compares, or computes into R12).
//!
//! Forms (amd64, register ABI; R14 holds the goroutine):
//! - `cmp rsp, [r14+0x10]` (`49 3b 66 10`), then `jbe rel8` (`76 xx`) or
//!   `jbe rel32` (`0f 86 xx xx xx xx`);
//! - frames over 128 bytes: `lea r12, [rsp-N]` (`4c 8d 64 24 xx`, or
//!   `4c 8d a4 24` + disp32), `cmp r12, [r14+0x10]` (`4d 3b 66 10`), then
//!   the same `jbe`.
//!
//! Anything else (huge frames, no check at all) gives `None`: the caller
//! does not hook that function rather than guess an instruction boundary.

const CMP_RSP: [u8; 4] = [0x49, 0x3b, 0x66, 0x10];
const CMP_R12: [u8; 4] = [0x4d, 0x3b, 0x66, 0x10];

fn jbe(code: &[u8]) -> Option<usize> {
    match code {
        [0x76, _, ..] => Some(2),
        [0x0f, 0x86, _, _, _, _, ..] => Some(6),
        _ => None,
    }
}

/// Bytes from the entry to the first instruction after the stack check.
pub fn after_stack_check(code: &[u8]) -> Option<usize> {
    if code.starts_with(&CMP_RSP) {
        return jbe(&code[4..]).map(|n| 4 + n);
    }
    let lea = match code {
        [0x4c, 0x8d, 0x64, 0x24, _, ..] => 5,
        [0x4c, 0x8d, 0xa4, 0x24, _, _, _, _, ..] => 8,
        _ => return None,
    };
    let rest = code.get(lea..)?;
    if !rest.starts_with(&CMP_R12) {
        return None;
    }
    jbe(&rest[4..]).map(|n| lea + 4 + n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_forms() {
        // Seen in a stripped go1.23 release binary.
        let short = [0x49, 0x3b, 0x66, 0x10, 0x76, 0x20, 0x55];
        assert_eq!(after_stack_check(&short), Some(6));
        let long = [0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 1, 2, 3, 4, 0x55];
        assert_eq!(after_stack_check(&long), Some(10));
        let lea8 = [
            0x4c, 0x8d, 0x64, 0x24, 0xd8, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 1, 2, 3, 4,
        ];
        assert_eq!(after_stack_check(&lea8), Some(15));
        let lea32 = [
            0x4c, 0x8d, 0xa4, 0x24, 0x00, 0xff, 0xff, 0xff, 0x4d, 0x3b, 0x66, 0x10, 0x76, 0x10,
        ];
        assert_eq!(after_stack_check(&lea32), Some(14));
    }

    #[test]
    fn unknown_or_cut_forms_are_refused() {
        assert_eq!(after_stack_check(&[0x55, 0x48, 0x89, 0xe5]), None);
        assert_eq!(after_stack_check(&[0x49, 0x3b, 0x66, 0x10]), None);
        assert_eq!(
            after_stack_check(&[0x49, 0x3b, 0x66, 0x10, 0x0f, 0x86, 1]),
            None
        );
        assert_eq!(
            after_stack_check(&[0x4c, 0x8d, 0x64, 0x24, 0xd8, 0x90]),
            None
        );
        assert_eq!(after_stack_check(&[]), None);
    }
}
