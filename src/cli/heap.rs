//! The heap, per subcommand: huge pages for replay; for the services, no
//! huge pages and few glibc malloc arenas.
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
//!
//! They also cap glibc's malloc arenas, which serve the C libraries
//! (librdkafka's and RocksDB's threads; Rust's own heap is mimalloc's).
//! glibc gives each thread that meets a busy arena a new one, up to eight
//! per core, and each keeps its freed memory: `sluice run` with its dozen
//! librdkafka threads peaked at 250 to 255 MiB (medians; up to 266) in
//! `sluice bench run --only throughput`, against its 256 MiB budget, and at
//! 232 MiB (median of 24 runs; up to 255) with four arenas, for about the
//! same CPU per event (README, fourteenth pass). Two arenas saved about 12
//! MiB more and cost more CPU.

/// glibc malloc arenas for a service (see the module's comment).
const SERVICE_MALLOC_ARENAS: libc::c_int = 4;

/// Long-running services whose memory is budgeted: no huge pages, and few
/// malloc arenas.
pub fn keep_service_heap_small() {
    limit_malloc_arenas();
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

/// Caps glibc's malloc arenas, unless the operator chose a number
/// (`MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`).
/// Called before the service starts its threads, so that every arena they
/// would make counts against the cap.
#[cfg(target_env = "gnu")]
fn limit_malloc_arenas() {
    let chosen = std::env::var_os("MALLOC_ARENA_MAX").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
    if chosen {
        return;
    }
    // SAFETY: mallopt(3) takes two integers and only changes a setting of
    // glibc's allocator; M_ARENA_MAX is one it documents.
    let applied = unsafe { libc::mallopt(libc::M_ARENA_MAX, SERVICE_MALLOC_ARENAS) } == 1;
    if !applied {
        tracing::debug!("cannot cap glibc's malloc arenas");
    }
}

/// Other C libraries (musl) have no arenas to cap.
#[cfg(not(target_env = "gnu"))]
fn limit_malloc_arenas() {}
