//! The kernel side as the daemon sees it: the program table.

pub mod programs;
