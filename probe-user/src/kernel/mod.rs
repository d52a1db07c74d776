//! The kernel side as the daemon sees it: the program table, loading and
//! attaching, layouts from tracefs and BTF, TC filters and their leftovers.

pub mod btf;
pub mod clock;
pub mod craft;
pub mod iface;
pub mod leftovers;
pub mod load;
pub mod procscan;
pub mod programs;
pub mod tracefs;
#[cfg(test)]
mod wire_test;
