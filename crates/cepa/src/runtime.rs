//! Process-wide settings that make the tensor code fast, and the flag that stops a computation.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by [`interrupt`], read by [`check_interrupt`].
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Ask every running optimisation (CEPA, Neural Cleanse, stage 2, training) to stop at its next
/// step with [`crate::Error::Interrupted`]. Front ends call it from a signal watcher (the Python
/// module on Ctrl-C); the flag stays set until [`clear_interrupt`].
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Clear the flag before a new computation.
pub fn clear_interrupt() {
    INTERRUPTED.store(false, Ordering::SeqCst);
}

/// `Err(Interrupted)` once [`interrupt`] has been called: the optimisation loops check it at
/// every step.
pub fn check_interrupt() -> crate::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err(crate::Error::Interrupted)
    } else {
        Ok(())
    }
}

/// Keep freed tensor buffers in the process instead of handing them back to the OS.
///
/// Every optimisation step allocates and frees tensors of the same few sizes (megabytes each).
/// glibc serves such blocks with `mmap` and unmaps them on free, so each step pays page faults to
/// zero fresh pages again: 11 % of a scan's time in a profile (BENCHMARKS.md). Raising the mmap
/// and trim thresholds lets malloc reuse the blocks; a 30-step MNIST scan went from 11.2 s to
/// 9.3 s and its minor page faults from 759k to 76k. Call it once, first thing in `main`; it does
/// nothing off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tuning parameters; it is called before any
        // other thread exists, and the values are within the ranges glibc documents.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}
