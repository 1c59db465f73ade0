// Resident memory of a mapped file, for the tests that check the loader lets its pages go
// (`tests/mapped_pages.rs` and the lowering's unit tests in `src/fold/lower.rs`, which include
// this file by path). Linux only (`/proc/self/smaps`).

/// Resident KiB of this process's mappings of `path` (`Rss` in `/proc/self/smaps`), summed over
/// its mappings of that file.
pub fn mapped_rss_kib(path: &std::path::Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = path.to_str().unwrap();
    let mut total = 0;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        // A mapping's header line starts with its address range (`lo-hi`, hex).
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.ends_with(name);
        } else if inside && let Some(kb) = line.strip_prefix("Rss:") {
            total += kb
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap();
        }
    }
    total
}
