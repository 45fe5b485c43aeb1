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
/// By default glibc serves blocks over its mmap threshold with `mmap` and unmaps them on free,
/// and gives every thread that allocates its own arena, whose heaps it unmaps again once they
/// are free: each step then pays page faults to zero fresh pages, and every unmap a TLB
/// shootdown across the cores. On a 43-class Neural Cleanse scan (2 cores) that was 67 s of
/// system time against 100 s of user time (BENCHMARKS.md, "The allocator and the scan's
/// threads"). So: one arena for the whole process (the scan's threads allocate few, large
/// blocks, so they hardly wait on its lock), no `mmap` for single blocks (they come from the
/// heap, which only grows), and a high trim threshold (freed memory stays for the next step).
/// The same scan then spends 1.3 s in the kernel and its wall time drops from 87 s to 54 s, with
/// identical numbers (the allocator changes no arithmetic). Peak memory is what it was; it is
/// kept until the process ends.
///
/// Call it once, first thing in `main` (or when a library is loaded), before other threads
/// allocate: glibc fixes a thread's arena when it first allocates. It does nothing off glibc.
/// Returns whether glibc accepted every setting.
pub fn tune_allocator() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes malloc's tuning parameters, with values in the ranges
        // glibc documents (mallopt(3)); it is safe to call at any time.
        unsafe {
            let settings = [
                (libc::M_ARENA_MAX, 1),
                (libc::M_MMAP_MAX, 0),
                (libc::M_TRIM_THRESHOLD, 1 << 30),
                (libc::M_TOP_PAD, 64 << 20),
            ];
            settings.iter().fold(true, |ok, &(param, value)| {
                libc::mallopt(param, value) == 1 && ok
            })
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        true
    }
}

#[cfg(test)]
mod tests {
    /// glibc rejects values out of range silently (mallopt returns 0): an mmap threshold over
    /// 32 MiB, for one, was ignored before.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_accepts_the_allocator_settings() {
        assert!(super::tune_allocator());
    }
}
