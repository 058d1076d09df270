//! The screen's product without AMX: 3 rows of `x` by 6 rows of `W` per call, in bf16 with
//! f32 sums (`vdpbf16ps`).

use std::arch::x86_64::*;

use super::CHUNK;

/// Rows of `x` per register tile.
pub(super) const TILE_ROWS: usize = 3;

/// Rows of `W` per register tile: 3 × 6 = 18 accumulators in zmm0-17, the operands in
/// zmm18-21.
pub(super) const TILE_TOKENS: usize = 6;

/// `y[r·ys + t] = Σ_p x̂[r][p] · ŵ[t][p]` for `r < 3`, `t < 6`, in bf16 with f32 sums.
///
/// The loop is written out: the compiler's own allocation of the 18 accumulators moved
/// them between registers on every step (the instruction's accumulator is also its output).
///
/// # Safety
/// AVX-512 F and BF16 are present; `x` holds 3 rows and `w` 6 rows of `k` halves (`k` a
/// positive multiple of 32); `y` is writable at `r·ys + t`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(super) unsafe fn tile(x: *const u16, w: *const u16, k: usize, y: *mut f32, ys: usize) {
    let mut acc = [_mm512_setzero_ps(); TILE_ROWS * TILE_TOKENS];
    std::arch::asm!(
            "vxorps zmm0, zmm0, zmm0",
            "vxorps zmm1, zmm1, zmm1",
            "vxorps zmm2, zmm2, zmm2",
            "vxorps zmm3, zmm3, zmm3",
            "vxorps zmm4, zmm4, zmm4",
            "vxorps zmm5, zmm5, zmm5",
            "vxorps zmm6, zmm6, zmm6",
            "vxorps zmm7, zmm7, zmm7",
            "vxorps zmm8, zmm8, zmm8",
            "vxorps zmm9, zmm9, zmm9",
            "vxorps zmm10, zmm10, zmm10",
            "vxorps zmm11, zmm11, zmm11",
            "vxorps zmm12, zmm12, zmm12",
            "vxorps zmm13, zmm13, zmm13",
            "vxorps zmm14, zmm14, zmm14",
            "vxorps zmm15, zmm15, zmm15",
            "vxorps zmm16, zmm16, zmm16",
            "vxorps zmm17, zmm17, zmm17",
            "2:",
            "vmovups zmm18, [{x0}]",
            "vmovups zmm19, [{x0} + {kb}]",
            "vmovups zmm20, [{x0} + {kb}*2]",
            "vmovups zmm21, [{w0}]",
            "vdpbf16ps zmm0, zmm18, zmm21",
            "vdpbf16ps zmm1, zmm19, zmm21",
            "vdpbf16ps zmm2, zmm20, zmm21",
            "vmovups zmm21, [{w0} + {kb}]",
            "vdpbf16ps zmm3, zmm18, zmm21",
            "vdpbf16ps zmm4, zmm19, zmm21",
            "vdpbf16ps zmm5, zmm20, zmm21",
            "vmovups zmm21, [{w0} + {kb}*2]",
            "vdpbf16ps zmm6, zmm18, zmm21",
            "vdpbf16ps zmm7, zmm19, zmm21",
            "vdpbf16ps zmm8, zmm20, zmm21",
            "vmovups zmm21, [{w3}]",
            "vdpbf16ps zmm9, zmm18, zmm21",
            "vdpbf16ps zmm10, zmm19, zmm21",
            "vdpbf16ps zmm11, zmm20, zmm21",
            "vmovups zmm21, [{w3} + {kb}]",
            "vdpbf16ps zmm12, zmm18, zmm21",
            "vdpbf16ps zmm13, zmm19, zmm21",
            "vdpbf16ps zmm14, zmm20, zmm21",
            "vmovups zmm21, [{w3} + {kb}*2]",
            "vdpbf16ps zmm15, zmm18, zmm21",
            "vdpbf16ps zmm16, zmm19, zmm21",
            "vdpbf16ps zmm17, zmm20, zmm21",
            "add {x0}, 64",
            "add {w0}, 64",
            "add {w3}, 64",
            "dec {n}",
            "jnz 2b",
        x0 = inout(reg) x => _,
        w0 = inout(reg) w => _,
        w3 = inout(reg) w.add(3 * k) => _,
        kb = in(reg) 2 * k,
        n = inout(reg) k / CHUNK => _,
            out("zmm0") acc[0],
            out("zmm1") acc[1],
            out("zmm2") acc[2],
            out("zmm3") acc[3],
            out("zmm4") acc[4],
            out("zmm5") acc[5],
            out("zmm6") acc[6],
            out("zmm7") acc[7],
            out("zmm8") acc[8],
            out("zmm9") acc[9],
            out("zmm10") acc[10],
            out("zmm11") acc[11],
            out("zmm12") acc[12],
            out("zmm13") acc[13],
            out("zmm14") acc[14],
            out("zmm15") acc[15],
            out("zmm16") acc[16],
            out("zmm17") acc[17],
        out("zmm18") _,
        out("zmm19") _,
        out("zmm20") _,
        out("zmm21") _,
        options(nostack, readonly),
    );
    for t in 0..TILE_TOKENS {
        for r in 0..TILE_ROWS {
            *y.add(r * ys + t) = _mm512_reduce_add_ps(acc[t * TILE_ROWS + r]);
        }
    }
}
