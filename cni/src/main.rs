//! `#![no_main]`: the plugin is started once per pod operation, so Rust's
//! runtime set-up before `main` (the main thread's stack guard, read from
//! /proc/self/maps; the stack-overflow handler; the SIGPIPE and stdio
//! checks) is time every pod start pays for nothing a plugin needs.
//! The C `main` below is the whole entry point. (The unit-test build keeps
//! the test harness's own `main`; the plugin's tests live in the library.)
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
#[no_mangle]
extern "C" fn main(argc: std::ffi::c_int, argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    // From `argv`, not `std::env::args()`: without Rust's `main`, std
    // learns the arguments only where the C library hands them to
    // initialisers (glibc does, musl, which the plugin is built with, not).
    let args = (1..usize::try_from(argc).unwrap_or(0))
        .map(|i| {
            // SAFETY: the C runtime passes `argc` valid NUL-terminated
            // strings in `argv`.
            unsafe { std::ffi::CStr::from_ptr(*argv.add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    sluice_cni::main_entry(args)
}
