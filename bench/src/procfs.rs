//! What the harness reads about the machine and about its own process from `/proc`: the
//! resident set now and at its peak (the child of a cell measures its own), and the CPU model
//! (for the report's header).

/// Resident set now, KiB (`/proc/self/statm`, second field, in pages); 0 where `/proc` is
/// missing.
pub fn resident_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    pages * page / 1024
}

/// Peak resident set of this process image, KiB: `VmHWM` of `/proc/self/status`.
///
/// Not `getrusage(RUSAGE_SELF).ru_maxrss`: Linux carries the high-water mark of the
/// parent's address space across `posix_spawn`/`vfork` + `exec` into `ru_maxrss`, so a child
/// of a large parent would report the parent's peak. `VmHWM` belongs to this image alone.
/// `ru_maxrss` is the fallback where `/proc` is missing.
pub fn peak_rss_kib() -> u64 {
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
    if let Some(kib) = hwm {
        return kib;
    }
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: ru is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    ru.ru_maxrss.max(0) as u64
}

/// The CPU model from `/proc/cpuinfo` (its first `model name`), or `unknown CPU`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_set() {
        let now = resident_kib();
        assert!(now > 0);
        assert!(
            peak_rss_kib() >= now / 2,
            "the peak is at least about the current RSS"
        );
        assert!(!cpu_model().is_empty());
    }
}
