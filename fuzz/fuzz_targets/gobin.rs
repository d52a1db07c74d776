//! The Go binary reader: the function table, the build info, the prologue
//! decoder and the whole plan, on untrusted bytes (an executable found
//! running on the node). The first byte picks the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../probe-user/src/gobin/mod.rs"]
mod gobin;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(t) = gobin::pclntab::Pclntab::parse(rest) {
                let n = t.len().min(4096);
                for i in 0..n {
                    let _ = t.func(i);
                }
                let _ = t.find(&["main.main", "net.(*TCPConn).Read"]);
                let _ = t.name_at(0x1234);
            }
        }
        1 => {
            let _ = gobin::buildinfo::parse(rest);
        }
        2 => {
            let _ = gobin::prologue::after_stack_check(rest);
        }
        _ => {
            let _ = gobin::plan(rest);
            let _ = gobin::function_name(rest, 0x401000);
        }
    }
});
