//! Huge pages for the heap, per subcommand.
//!
//! mimalloc asks the kernel for transparent huge pages on its large
//! regions (`madvise(MADV_HUGEPAGE)`), which on a machine with THP in
//! `madvise` mode (Debian's default) gives replay fewer page faults and TLB
//! misses: about 6% faster on the survival flood and 10% on the releases
//! flood, for 11 to 17 MiB more peak RSS (README, replay's eighth pass).
//! The services are held to an RSS budget instead: `sluice run` took 40 to
//! 50 MiB more with huge pages (a heap per processing thread) and no less
//! CPU, so they turn huge pages off for their whole process, as mimalloc
//! itself does when told `MIMALLOC_ALLOW_THP=0`.

/// Long-running services whose memory is budgeted: no huge pages.
pub fn keep_service_heap_small() {
    // SAFETY: prctl(2) with PR_SET_THP_DISABLE takes plain integers and
    // only sets a flag of this process (kept across fork and exec).
    let refused = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0;
    if refused {
        // An old kernel: it has no huge pages for this process to turn off.
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot turn transparent huge pages off"
        );
    }
}
