//! Intel AMX tiles for the lens screen (`screen.rs`): bf16 products with f32 sums, a 16 × 16
//! block of entries per `tdpbf16ps` (8,192 multiply-adds; a 512-bit `vdpbf16ps` does 512).
//!
//! The product waits on its tile loads. Tile registers are not renamed: a load into a register
//! waits for the products still reading it, and the products wait for the load. On a 2-core
//! Sapphire Rapids-class VM, with both operands in L2 (a block of `W`, 96 KiB, and the packed
//! `x`, 192 KiB), loading a step's four tiles and then multiplying took 22–47 cycles per
//! `tdpbf16ps` (the VM varies), against about 11 for `tdpbf16ps` alone; a `tileloadd` alone
//! took about 5 cycles from L1 and 12 from L2. [`product`] reloads each register as soon as
//! its last product of the step has read it, and fetches the tiles of the step [`AHEAD`]
//! steps on into L1: about 31 cycles per `tdpbf16ps` where the plain order took 39–47, and
//! the 1.5B model's lens 0.084–0.086 s instead of 0.089–0.091 (f32 table), 0.048 s instead of
//! 0.054–0.058 (bf16). Four result tiles (32 rows of `W` × 32 rows of `x`) use each loaded
//! tile twice, the most the eight tile registers allow; two result tiles with double-buffered
//! operands (1.5 loads per product) took 28–48 cycles.
//!
//! Linux hands out the tile registers only to processes that ask (`arch_prctl`), once;
//! [`available`] asks. Each thread loads the tile layout ([`Tiles::new`]) before its
//! products and releases it after.
//!
//! Layouts: `W`'s rows are read as stored (`k` bf16 values each, the `A` operand). The rows
//! of `x` go into `B` tiles, which hold pairs of consecutive values of a row side by side
//! ([`pack`]).

use std::arch::asm;
use std::arch::x86_64::__cpuid_count;
use std::sync::OnceLock;

/// Rows of `W` per [`product`]: two `A` tiles of 16.
pub const W_ROWS: usize = 32;
/// Rows of `x` per [`product`]: two `B` tiles of 16.
pub const X_ROWS: usize = 32;
/// Values along `k` per tile step (a 64-byte tile row of bf16).
pub const STEP: usize = 32;
/// Halves of one packed `B` tile of `x` (16 rows' worth of one step).
const X_TILE: usize = 16 * STEP;
/// Floats in one 16 × 16 result tile.
pub const TILE: usize = 256;

/// Whether this CPU has AMX-TILE and AMX-BF16 and this process may use them (asked of the
/// OS on the first call).
pub fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| cpu_has_amx() && permitted())
}

/// CPUID leaf 7: AMX-BF16 is bit 22 of EDX, AMX-TILE bit 24.
fn cpu_has_amx() -> bool {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU; leaf 0 gives the highest leaf.
    let (max, leaf7) = unsafe { (__cpuid_count(0, 0).eax, __cpuid_count(7, 0).edx) };
    max >= 7 && leaf7 & (1 << 22) != 0 && leaf7 & (1 << 24) != 0
}

/// Asks Linux for the tile data state (`ARCH_REQ_XCOMP_PERM`, `XFEATURE_XTILEDATA`):
/// granted to the whole process, refused by kernels or hypervisors that do not offer it.
#[cfg(target_os = "linux")]
fn permitted() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes which states the process may use.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// Other systems: not used.
#[cfg(not(target_os = "linux"))]
fn permitted() -> bool {
    false
}

/// The tile layout loaded on this thread: eight tiles of 16 rows × 64 bytes (`tmm0-3`
/// results, `tmm4-5` rows of `W`, `tmm6-7` rows of `x`). Released when dropped.
pub struct Tiles(());

impl Tiles {
    /// Loads the layout.
    ///
    /// # Safety
    /// [`available`] returned true.
    pub unsafe fn new() -> Self {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut config = Config([0; 64]);
        // Palette 1; bytes 16.. hold each tile's bytes per row (u16), bytes 48.. its rows.
        config.0[0] = 1;
        for t in 0..8 {
            config.0[16 + 2 * t] = 64;
            config.0[48 + t] = 16;
        }
        // SAFETY: the caller's; the configuration is a valid palette-1 layout.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
        Self(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: a layout was loaded on this thread (`new`), so AMX is available.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// `rows` rows of `x` in bf16 (`k` halves each, row-major; `rows` a multiple of 16, `k` of
/// [`STEP`]) as `B` tiles: for each group of 16 rows, `k / 2` lines of 16 pairs.
pub fn pack(x: &[u16], rows: usize, k: usize) -> Vec<u16> {
    let mut out = vec![0u16; rows * k];
    for g in 0..rows / 16 {
        let group = &mut out[g * 16 * k..][..16 * k];
        for r in 0..16 {
            let row = &x[(g * 16 + r) * k..][..k];
            for (pair, values) in row.chunks_exact(2).enumerate() {
                group[pair * 32 + r * 2..][..2].copy_from_slice(values);
            }
        }
    }
    out
}

/// The 32 × 32 entries `Σ_p ŵ[j][p] · x̂[r][p]` of `W_ROWS` rows of `w` (`k` halves each,
/// row-major) and `X_ROWS` rows of `x` ([`pack`]ed, from its 32-row group pair at `x`), as
/// four 16 × 16 tiles into `c`: (`w` rows 0-15, `x` rows 0-15), (0-15, 16-31),
/// (16-31, 0-15), (16-31, 16-31), each row-major by `w` row.
///
/// Each entry is a chain of `k` f32 multiply-adds rounded to nearest even, products exact;
/// subnormal inputs count as zero and subnormal sums are flushed.
///
/// The tile registers hold their values from one `asm!` block to the next: nothing else on
/// this thread uses them while a [`Tiles`] lives.
///
/// # Safety
/// A [`Tiles`] lives on this thread; `w` holds 32 rows and `x` two packed groups of `k`
/// halves each (`k` a positive multiple of 32); `c` holds `4 × TILE` floats.
pub unsafe fn product(w: *const u16, x: *const u16, k: usize, c: *mut f32) {
    let steps = k / STEP;
    let (w1, x1, ws) = (w.add(16 * k), x.add(16 * k), 2 * k);
    // SAFETY (every block below): the caller's; the loads read 16 rows of 64 bytes at the
    // given strides, in step `s < steps`; the fetches lie in the same rows.
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tileloadd tmm4, [{w0} + {ws}*1]",
            "tileloadd tmm6, [{x0} + {line}*1]",
            "tileloadd tmm7, [{x1} + {line}*1]",
            "tileloadd tmm5, [{w1} + {ws}*1]",
            w0 = in(reg) w,
            w1 = in(reg) w1,
            ws = in(reg) ws,
            x0 = in(reg) x,
            x1 = in(reg) x1,
            line = in(reg) 64usize,
            options(nostack, readonly),
        );
        for s in 1..steps {
            if s + AHEAD < steps {
                let f = s + AHEAD;
                let (wf, xf) = (f * STEP, f * X_TILE);
                fetch(w.add(wf), ws, w1.add(wf), x.add(xf), x1.add(xf));
            }
            // Step s − 1's products, each operand's register reloaded with step s's tile
            // as soon as its last product has read it.
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tileloadd tmm4, [{w0} + {ws}*1]",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tileloadd tmm6, [{x0} + {line}*1]",
                "tdpbf16ps tmm3, tmm5, tmm7",
                "tileloadd tmm7, [{x1} + {line}*1]",
                "tileloadd tmm5, [{w1} + {ws}*1]",
                w0 = in(reg) w.add(s * STEP),
                w1 = in(reg) w1.add(s * STEP),
                ws = in(reg) ws,
                x0 = in(reg) x.add(s * X_TILE),
                x1 = in(reg) x1.add(s * X_TILE),
                line = in(reg) 64usize,
                options(nostack, readonly),
            );
        }
        // The last step's products.
        asm!(
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            options(nostack, nomem),
        );
        asm!(
            "tilestored [{c} + {line}*1], tmm0",
            "add {c}, 1024",
            "tilestored [{c} + {line}*1], tmm1",
            "add {c}, 1024",
            "tilestored [{c} + {line}*1], tmm2",
            "add {c}, 1024",
            "tilestored [{c} + {line}*1], tmm3",
            c = inout(reg) c => _,
            line = in(reg) 64usize,
            options(nostack),
        );
    }
}

/// Steps of `k` between the tiles [`product`] multiplies and those it fetches into L1.
const AHEAD: usize = 2;

/// One step's four tiles fetched into L1: the two of `W`'s rows (16 lines each, `ws` bytes
/// apart) and the two of `x` (16 lines each, contiguous).
#[inline(always)]
unsafe fn fetch(w0: *const u16, ws: usize, w1: *const u16, x0: *const u16, x1: *const u16) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for r in 0..16 {
        _mm_prefetch::<_MM_HINT_T0>((w0 as *const i8).add(r * ws));
        _mm_prefetch::<_MM_HINT_T0>((w1 as *const i8).add(r * ws));
        _mm_prefetch::<_MM_HINT_T0>((x0 as *const i8).add(r * 64));
        _mm_prefetch::<_MM_HINT_T0>((x1 as *const i8).add(r * 64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small integers in bf16: every product and sum is exact, so the tiles must give the
    /// integer dot products, each at its place.
    #[test]
    fn tiles_give_each_rows_dot_product_in_place() {
        if !available() {
            return;
        }
        let k = 96;
        let bf16 = |v: i32| ((v as f32).to_bits() >> 16) as u16;
        let w: Vec<i32> = (0..W_ROWS * k).map(|i| (i * 7 % 13) as i32 - 6).collect();
        let x: Vec<i32> = (0..2 * X_ROWS * k)
            .map(|i| (i * 5 % 11) as i32 - 5)
            .collect();
        let wh: Vec<u16> = w.iter().map(|&v| bf16(v)).collect();
        let xh: Vec<u16> = x.iter().map(|&v| bf16(v)).collect();
        let packed = pack(&xh, 2 * X_ROWS, k);
        let mut c = vec![0f32; 4 * TILE];
        for pass in 0..2 {
            // SAFETY: `available()`; 32 rows of w, two packed groups of x, four tiles of c.
            unsafe {
                let _tiles = Tiles::new();
                product(
                    wh.as_ptr(),
                    packed.as_ptr().add(pass * X_ROWS * k),
                    k,
                    c.as_mut_ptr(),
                );
            }
            for (t, tile) in c.chunks_exact(TILE).enumerate() {
                for j in 0..16 {
                    for i in 0..16 {
                        let (row, col) = (16 * (t / 2) + j, pass * X_ROWS + 16 * (t % 2) + i);
                        let want: i32 = (0..k).map(|p| w[row * k + p] * x[col * k + p]).sum();
                        assert_eq!(tile[j * 16 + i], want as f32, "w row {row}, x row {col}");
                    }
                }
            }
        }
    }
}
