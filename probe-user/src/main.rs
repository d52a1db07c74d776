//! drainwatch: sees, from the kernel, why connections drop while an
//! apiserver (or anything behind a load balancer) rolls out. The binary;
//! everything is in the library (`cli` dispatches).

fn main() -> std::process::ExitCode {
    drainwatch::cli::main()
}
