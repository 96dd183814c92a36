//! What differs between operating systems outside desktop capture (which has its own
//! backends in [`crate::capture`]). Only Windows needs code of its own today; unix gets by with
//! the standard library's `std::os::unix` extensions where they are used.

#[cfg(windows)]
pub mod windows;
