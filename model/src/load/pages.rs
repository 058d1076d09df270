//! 2 MiB pages for weights, read in place or converted: advice to the kernel, on Linux.
//!
//! The 1.5B model's weights are 6 GB of f32. With 4 KiB pages, reaching all of them takes
//! about 1.5 million page-table entries, set up by page faults the first time a process
//! touches them and torn down when it exits; with 2 MiB pages, about 3,000. It is only
//! advice: where it is refused or ignored (huge pages disabled, an older kernel, a file system
//! without large folios, another OS) nothing changes but the speed.

/// Asks the kernel to back `map` with 2 MiB pages where it can (Linux; nothing elsewhere).
///
/// A file read through such a map for the first time enters the page cache in 2 MiB folios,
/// and every later map of it, in this process or the next, is then set up with one page-table
/// entry per 2 MiB instead of 512: the first forward pass, which reads the f32 weights in
/// place, no longer spends its time in page faults, and the process exits sooner. Reading the
/// file from disk that first time is somewhat slower.
pub(crate) fn advise_huge_pages(map: &memmap2::Mmap) {
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    #[cfg(not(target_os = "linux"))]
    let _ = map;
}

/// The size of a huge page on x86-64 and most arm64 kernels.
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the whole 2 MiB pages inside `buffer`, memory this process has
/// allocated and not yet written, with 2 MiB pages (Linux; nothing elsewhere).
///
/// Converting a GGUF file's blocks or a bf16 checkpoint to f32 writes gigabytes of fresh
/// memory: with 4 KiB pages every 4 KiB of it costs a page fault on first write, and the
/// faults took more processor time than the conversion. Loading the 1.5B GGUF file on a
/// 2-core VM took 2.4–3.2 s instead of 3.8–6.0 s (system time 1.7–2.6 s instead of 4.5–8.7 s).
/// Huge pages are used only where the system leaves them to `madvise` or always uses them;
/// the part of `buffer` outside whole 2 MiB pages keeps small ones.
pub(crate) fn advise_huge_pages_for<T>(buffer: &mut [T]) {
    let start = buffer.as_mut_ptr() as usize;
    let end = start + std::mem::size_of_val(buffer);
    let (first, last) = (
        start.next_multiple_of(HUGE_PAGE),
        end / HUGE_PAGE * HUGE_PAGE,
    );
    #[cfg(target_os = "linux")]
    if last > first {
        // SAFETY: `first .. last` lies inside `buffer`, which this process owns; the advice
        // changes how its pages are backed, never their contents.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_HUGEPAGE,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (first, last);
}

/// The flags (`rd`, `mr`, `hg`, …) of the mapping that holds `address`, from
/// `/proc/self/smaps`; `None` if no mapping holds it.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn vm_flags_at(address: usize) -> Option<Vec<String>> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    // Each mapping starts with a line `start-end perms …` and ends with `VmFlags: …`.
    let range = |line: &str| {
        let (start, end) = line.split_whitespace().next()?.split_once('-')?;
        Some(usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?)
    };
    let mut inside = false;
    for line in smaps.lines() {
        if let Some(range) = range(line) {
            inside = range.contains(&address);
        } else if let Some(flags) = line.strip_prefix("VmFlags:").filter(|_| inside) {
            return Some(flags.split_whitespace().map(String::from).collect());
        }
    }
    None
}

/// Whether this kernel has transparent huge pages (without them the advice is refused) and
/// this process can read its own mappings' flags.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn advice_is_observable() -> bool {
    std::path::Path::new("/sys/kernel/mm/transparent_hugepage/enabled").exists()
        && std::fs::File::open("/proc/self/smaps").is_ok()
}
