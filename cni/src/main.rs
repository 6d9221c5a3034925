//! `#![no_main]`: the plugin is started once per pod operation, so Rust's
//! runtime set-up before `main` (the main thread's stack guard, read from
//! /proc/self/maps; the stack-overflow handler; the SIGPIPE and stdio
//! checks) is time every pod start pays for nothing a plugin needs.
//! The C `main` below is the whole entry point. (The unit-test build keeps
//! the test harness's own `main`; the plugin's tests live in the library.)
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(
    _argc: std::ffi::c_int,
    _argv: *const *const std::ffi::c_char,
) -> std::ffi::c_int {
    sluice_cni::main_entry()
}
