//! Whether a model's weights fit in this machine's memory, checked before they are loaded.
//!
//! A GGUF file's quantized blocks are decoded into memory the process allocates (the file
//! itself is only mapped), and so are a folder's tensors on a backend that copies them: a 7B
//! model takes about 30 GB that way in f32. Past what the machine has, the load would end in
//! the kernel's out-of-memory killer, with no word of why; checked first, it ends in one line
//! that says how much is needed, how much there is, and what to do instead.

use std::path::{Path, PathBuf};

use crate::model::load::WeightSource;

/// Bytes of memory this process can still take: on Linux, `MemAvailable` plus free swap, or
/// less where a cgroup memory limit (v2, or v1's memory controller) leaves less room; `None`
/// where that is not known (other systems, or no `/proc`).
pub fn available_bytes() -> Option<u64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let read = |path: &Path| std::fs::read_to_string(path).ok();
    let system = meminfo_available(&read(Path::new("/proc/meminfo"))?)?;
    let own = read(Path::new("/proc/self/cgroup")).unwrap_or_default();
    let limited = [&V2, &V1]
        .into_iter()
        .filter_map(|hierarchy| hierarchy.room(&own, read));
    Some(limited.fold(system, u64::min))
}

/// `MemAvailable` plus `SwapFree` from the text of `/proc/meminfo`, in bytes.
fn meminfo_available(meminfo: &str) -> Option<u64> {
    let field = |name: &str| {
        meminfo.lines().find_map(|line| {
            let kib = line.strip_prefix(name)?.strip_prefix(':')?;
            kib.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    let available = field("MemAvailable")?;
    Some((available + field("SwapFree").unwrap_or(0)) * 1024)
}

/// Where a cgroup hierarchy keeps a cgroup's memory limit and use.
struct Hierarchy {
    /// Where it is mounted.
    root: &'static str,
    /// This process's line in `/proc/self/cgroup` is `{id}:{controllers}:{path}`, and the
    /// hierarchy's holds this controller (v2: no controllers listed).
    controller: &'static str,
    /// The limit (v2 writes "max" for none, v1 a number near 2⁶³).
    limit: &'static str,
    /// The memory in use, the page cache included.
    usage: &'static str,
    /// Fields of `memory.stat` counting page-cache pages, which the kernel reclaims before
    /// it gives up.
    file_pages: [&'static str; 2],
}

/// cgroup v2.
const V2: Hierarchy = Hierarchy {
    root: "/sys/fs/cgroup",
    controller: "",
    limit: "memory.max",
    usage: "memory.current",
    file_pages: ["active_file", "inactive_file"],
};

/// cgroup v1's memory controller.
const V1: Hierarchy = Hierarchy {
    root: "/sys/fs/cgroup/memory",
    controller: "memory",
    limit: "memory.limit_in_bytes",
    usage: "memory.usage_in_bytes",
    file_pages: ["total_active_file", "total_inactive_file"],
};

impl Hierarchy {
    /// The room left under the limits of this process's cgroup and every cgroup above it
    /// (the limit less what is in use that the kernel cannot reclaim), given the text of
    /// `/proc/self/cgroup`; `None` where no level sets a limit.
    fn room(&self, own: &str, read: impl Fn(&Path) -> Option<String>) -> Option<u64> {
        let path = own.lines().find_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let listed = controllers.split(',').any(|c| c == self.controller);
            (listed || controllers == self.controller).then_some(path)
        })?;
        let root = Path::new(self.root);
        let mut dir: PathBuf = root.join(path.trim().trim_start_matches('/'));
        let mut room: Option<u64> = None;
        loop {
            let number = |file: &str| read(&dir.join(file))?.trim().parse::<u64>().ok();
            if let (Some(limit), Some(usage)) = (number(self.limit), number(self.usage)) {
                let stat = read(&dir.join("memory.stat")).unwrap_or_default();
                let cache: u64 = self.file_pages.iter().map(|f| stat_field(&stat, f)).sum();
                let left = limit.saturating_sub(usage.saturating_sub(cache));
                room = Some(room.map_or(left, |r| r.min(left)));
            }
            if dir == root || !dir.pop() || !dir.starts_with(root) {
                return room;
            }
        }
    }
}

/// The value of `name` in the text of a `memory.stat` file (0 if it is not there).
fn stat_field(stat: &str, name: &str) -> u64 {
    stat.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// Bytes the tensors of `source` take when each is held in memory at `bytes_per_value`; below
/// 4 (f16, bf16) the largest one is also counted once in f32, the form it is decoded to before
/// it is rounded.
pub fn weight_bytes(source: &dyn WeightSource, bytes_per_value: u64) -> u64 {
    let sizes: Vec<u64> = source
        .names()
        .iter()
        .filter_map(|name| source.shape(name))
        .map(|shape| shape.iter().product::<usize>() as u64)
        .collect();
    let held: u64 = sizes.iter().map(|n| n * bytes_per_value).sum();
    let decoded = match bytes_per_value < 4 {
        true => sizes.iter().max().map_or(0, |n| n * 4),
        false => 0,
    };
    held + decoded
}

/// `Err` with one line naming `path` when `needed` bytes exceed `available` (nothing is
/// checked where `available` is unknown). `how` says what the bytes are ("once decoded to
/// f32"), `instead` what the user can do rather than buy memory (may be empty).
pub fn check(
    path: &Path,
    needed: u64,
    available: Option<u64>,
    how: &str,
    instead: &str,
) -> Result<(), String> {
    let Some(available) = available.filter(|&a| needed > a) else {
        return Ok(());
    };
    let gb = |bytes: u64| bytes as f64 / 1e9;
    let instead = match instead.is_empty() {
        true => String::new(),
        false => format!("{instead}, or "),
    };
    Err(format!(
        "{}: the weights take {:.1} GB of memory {how}, and this machine has {:.1} GB \
         available; {instead}run on a machine with more memory",
        path.display(),
        gb(needed),
        gb(available),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::load::GgufSource;
    use std::collections::HashMap;

    #[test]
    fn meminfo_gives_available_memory_and_free_swap_in_bytes() {
        let text = "MemTotal:       24731708 kB\nMemFree:         4000000 kB\n\
                    MemAvailable:   24038928 kB\nSwapTotal:       1000 kB\nSwapFree:          512 kB\n";
        assert_eq!(meminfo_available(text), Some((24038928 + 512) * 1024));
        let no_swap = "MemAvailable: 100 kB\n";
        assert_eq!(meminfo_available(no_swap), Some(100 * 1024));
        assert_eq!(meminfo_available("MemTotal: 100 kB\n"), None);
    }

    /// A cgroup tree held in a map from file path to contents.
    fn reader(files: &[(&str, &str)]) -> impl Fn(&Path) -> Option<String> {
        let files: HashMap<PathBuf, String> = files
            .iter()
            .map(|(p, s)| (PathBuf::from(p), s.to_string()))
            .collect();
        move |path| files.get(path).cloned()
    }

    #[test]
    fn the_tightest_cgroup_limit_on_the_way_up_is_the_room() {
        let files = [
            ("/sys/fs/cgroup/a/b/memory.max", "max\n"),
            ("/sys/fs/cgroup/a/b/memory.current", "100\n"),
            ("/sys/fs/cgroup/a/memory.max", "1000\n"),
            ("/sys/fs/cgroup/a/memory.current", "700\n"),
            // 300 of the 700 in use are page cache, which the kernel reclaims.
            (
                "/sys/fs/cgroup/a/memory.stat",
                "anon 400\nactive_file 100\ninactive_file 200\nfile_mapped 5\n",
            ),
            ("/sys/fs/cgroup/memory.max", "5000\n"),
            ("/sys/fs/cgroup/memory.current", "1000\n"),
        ];
        let own = "1:name=systemd:/x\n0::/a/b\n";
        assert_eq!(V2.room(own, reader(&files)), Some(600));
        assert_eq!(V1.room(own, reader(&files)), None, "no v1 memory line");
        // No level sets a limit.
        let unlimited = [
            ("/sys/fs/cgroup/a/memory.max", "max"),
            ("/sys/fs/cgroup/a/memory.current", "7"),
        ];
        assert_eq!(V2.room("0::/a\n", reader(&unlimited)), None);
        // The process in the root cgroup.
        assert_eq!(V2.room("0::/\n", reader(&files)), Some(4000));
    }

    #[test]
    fn cgroup_v1_limits_are_read_from_the_memory_controller() {
        let files = [
            ("/sys/fs/cgroup/memory/job/memory.limit_in_bytes", "2000\n"),
            ("/sys/fs/cgroup/memory/job/memory.usage_in_bytes", "1500\n"),
            (
                "/sys/fs/cgroup/memory/job/memory.stat",
                "cache 900\nactive_file 1\ntotal_active_file 400\ntotal_inactive_file 100\n",
            ),
            // The root's "no limit": a number near 2^63.
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                "4419371008\n",
            ),
        ];
        let own = "5:devices:/\n4:memory:/job\n0::/\n";
        assert_eq!(V1.room(own, reader(&files)), Some(2000 - (1500 - 500)));
        let combined = "3:cpu,memory:/job\n";
        assert_eq!(V1.room(combined, reader(&files)), Some(1000));
    }

    #[test]
    fn a_load_past_the_available_memory_is_one_line_naming_the_file() {
        let path = Path::new("model-7b.gguf");
        let message = check(
            path,
            30_500_000_000,
            Some(22_400_000_000),
            "once decoded to f32",
            "use --dtype bf16",
        )
        .unwrap_err();
        assert_eq!(
            message,
            "model-7b.gguf: the weights take 30.5 GB of memory once decoded to f32, and this \
             machine has 22.4 GB available; use --dtype bf16, or run on a machine with more memory"
        );
        assert!(!message.contains('\n'));
        assert!(check(path, 30, Some(30), "", "").is_ok());
        assert!(check(path, u64::MAX, None, "", "").is_ok());
        let bare = check(path, 2, Some(1), "in f32", "").unwrap_err();
        assert!(
            bare.ends_with("available; run on a machine with more memory"),
            "{bare}"
        );
    }

    #[test]
    fn the_weights_bytes_are_the_models_parameters_times_their_width() {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gguf/tiny-qwen2.gguf"
        );
        let source = GgufSource::open(file).expect("fixture");
        let c = source.config().expect("config");
        let (h, i, v, l) = (
            c.hidden_size,
            c.intermediate_size,
            c.vocab_size,
            c.num_hidden_layers,
        );
        let kv = c.num_key_value_heads * (h / c.num_attention_heads);
        // Per layer: q, k, v (with biases), o, the MLP's three matrices, two norms.
        let layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h;
        let head = if c.tie_word_embeddings { 0 } else { v * h };
        // The file also holds RoPE's frequencies (half a head's width), which count too.
        let rope = h / c.num_attention_heads / 2;
        let parameters = (v * h + l * layer + h + head + rope) as u64;
        assert_eq!(weight_bytes(&source, 4), 4 * parameters);
        let largest = (v * h).max(h * i).max(h * h) as u64;
        assert_eq!(weight_bytes(&source, 2), 2 * parameters + 4 * largest);
    }
}
