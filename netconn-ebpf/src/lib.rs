//! Empty library target: netconn-user lists this crate as a
//! build-dependency so cargo re-runs its build script (which builds the real
//! eBPF binary, src/main.rs) whenever this crate or netconn-common changes.
#![no_std]
