//! The fused kernels on plain f32 slices, each one pass over its rows, split across threads.

use rayon::prelude::*;

use crate::flex_ops::SendPtr;

/// Elements per parallel task in the elementwise kernels.
const CHUNK: usize = 1 << 14;

/// `eˣ` to within 2 ulp for `x ≥ -87` (0 below, where `eˣ` is under 1.7e-38; `x` is capped at
/// 88), written so that the compiler vectorises loops that call it (Cephes' `expf`: `x = n·ln 2
/// + r`, a degree-7 polynomial in `r`, and `2ⁿ` put into the exponent bits).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let c = x.clamp(-87.0, 88.0);
    // Round to nearest by adding and removing 1.5 · 2²³.
    let n = (c * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = c - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.0 {
        0.0
    } else {
        e * two_n
    }
}

/// `1 / (1 + e⁻ˣ)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `silu(g) · u`, elementwise.
pub fn swiglu(g: &[f32], u: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; g.len()];
    out.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)))
        .for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
    out
}

/// The gradients of `silu(g) · u` with respect to `g` and `u`, given the output's `d`.
pub fn swiglu_backward(g: &[f32], u: &[f32], d: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = vec![0f32; g.len()];
    let mut du = vec![0f32; g.len()];
    dg.par_chunks_mut(CHUNK)
        .zip(du.par_chunks_mut(CHUNK))
        .zip(
            g.par_chunks(CHUNK)
                .zip(u.par_chunks(CHUNK))
                .zip(d.par_chunks(CHUNK)),
        )
        .for_each(|((dg, du), ((g, u), d))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                dg[i] = d[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                du[i] = d[i] * g[i] * s;
            }
        });
    (dg, du)
}

/// Row-wise `softmax(scale · s + mask)`: `s` holds rows of `cols`, and row `r` takes mask row
/// `r % (mask.len() / cols)`.
pub fn masked_softmax(s: &[f32], cols: usize, scale: f32, mask: &[f32]) -> Vec<f32> {
    let mask_rows = mask.len() / cols;
    let mut out = vec![0f32; s.len()];
    out.par_chunks_mut(cols)
        .zip(s.par_chunks(cols))
        .enumerate()
        .for_each(|(r, (p, s))| {
            let m = &mask[(r % mask_rows) * cols..][..cols];
            let mut max = f32::NEG_INFINITY;
            for ((p, &s), &m) in p.iter_mut().zip(s).zip(m) {
                *p = s * scale + m;
                max = max.max(*p);
            }
            let mut sum = 0.0;
            for p in p.iter_mut() {
                *p = exp(*p - max);
                sum += *p;
            }
            let inv = 1.0 / sum;
            p.iter_mut().for_each(|p| *p *= inv);
        });
    out
}

/// The gradient of [`masked_softmax`] with respect to `s`, from its output `p` and the output's
/// gradient `dp`: `scale · p ⊙ (dp − Σ dp ⊙ p)` row by row.
pub fn masked_softmax_backward(p: &[f32], dp: &[f32], cols: usize, scale: f32) -> Vec<f32> {
    let mut ds = vec![0f32; p.len()];
    ds.par_chunks_mut(cols)
        .zip(p.par_chunks(cols).zip(dp.par_chunks(cols)))
        .for_each(|(ds, (p, dp))| {
            let dot: f32 = p.iter().zip(dp).map(|(p, d)| p * d).sum();
            for ((ds, &p), &dp) in ds.iter_mut().zip(p).zip(dp) {
                *ds = scale * p * (dp - dot);
            }
        });
    ds
}

/// Row-wise `w ⊙ x / sqrt(mean(x²) + eps)` over rows of `w.len()`, and each row's
/// `1 / sqrt(mean(x²) + eps)`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let cols = w.len();
    let mut y = vec![0f32; x.len()];
    let mut rstd = vec![0f32; x.len() / cols];
    y.par_chunks_mut(cols)
        .zip(rstd.par_iter_mut())
        .zip(x.par_chunks(cols))
        .for_each(|((y, r), x)| {
            let ms = x.iter().map(|v| v * v).sum::<f32>() / cols as f32;
            *r = 1.0 / (ms + eps).sqrt();
            for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                *y = w * (x * *r);
            }
        });
    (y, rstd)
}

/// The gradient of [`rms_norm`] with respect to `x`, given each row's `rstd` and the output's
/// gradient `dy`: `r · w ⊙ dy − (r³ / n) · x · Σ w ⊙ dy ⊙ x`.
pub fn rms_norm_backward(x: &[f32], w: &[f32], rstd: &[f32], dy: &[f32]) -> Vec<f32> {
    let cols = w.len();
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(cols)
        .zip(rstd.par_iter())
        .zip(x.par_chunks(cols).zip(dy.par_chunks(cols)))
        .for_each(|((dx, &r), (x, dy))| {
            let dot: f32 = x.iter().zip(dy).zip(w).map(|((x, d), w)| x * d * w).sum();
            let k = r * r * r * dot / cols as f32;
            for (((dx, &x), &d), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
                *dx = r * w * d - k * x;
            }
        });
    dx
}

/// Splits `[batch, seq, heads · d]` into `[batch, heads, seq, d]` and applies rotate-half RoPE:
/// `y = x ⊙ cos + rot(x) ⊙ sin`, `rot(x) = [-x₂, x₁]`, with `cos`/`sin` rows per position.
pub fn rope_heads(x: &[f32], dims: [usize; 4], cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let [_, seq, heads, d] = dims;
    let half = d / 2;
    let mut y = vec![0f32; x.len()];
    // One task per (batch, head): it writes that head's `[seq, d]` block.
    y.par_chunks_mut(seq * d)
        .enumerate()
        .for_each(|(bh, block)| {
            let (b, h) = (bh / heads, bh % heads);
            for (t, y) in block.chunks_mut(d).enumerate() {
                let x = &x[((b * seq + t) * heads + h) * d..][..d];
                let (c, s) = (&cos[t * d..][..d], &sin[t * d..][..d]);
                for i in 0..half {
                    y[i] = x[i] * c[i] - x[i + half] * s[i];
                    y[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
                }
            }
        });
    y
}

/// The gradient of [`rope_heads`] with respect to its `[batch, seq, heads · d]` input, from
/// the `[batch, heads, seq, d]` output's gradient `dy`.
pub fn rope_heads_backward(dy: &[f32], dims: [usize; 4], cos: &[f32], sin: &[f32]) -> Vec<f32> {
    let [_, seq, heads, d] = dims;
    let half = d / 2;
    let mut dx = vec![0f32; dy.len()];
    // One task per (batch, position): it writes that position's `heads · d` row.
    dx.par_chunks_mut(heads * d)
        .enumerate()
        .for_each(|(bt, row)| {
            let (b, t) = (bt / seq, bt % seq);
            let (c, s) = (&cos[t * d..][..d], &sin[t * d..][..d]);
            for (h, dx) in row.chunks_mut(d).enumerate() {
                let g = &dy[((b * heads + h) * seq + t) * d..][..d];
                for i in 0..half {
                    dx[i] = g[i] * c[i] + g[i + half] * s[i + half];
                    dx[i + half] = g[i + half] * c[i + half] - g[i] * s[i];
                }
            }
        });
    dx
}

/// `[batch, heads, seq, d]` → `[batch, seq, heads · d]`, or back when `to_heads`.
pub fn permute_heads(x: &[f32], dims: [usize; 4], to_heads: bool) -> Vec<f32> {
    let [_, heads, seq, d] = dims;
    let mut y = vec![0f32; x.len()];
    let out = SendPtr(y.as_mut_ptr());
    // One task per (batch, position): it moves that position's `heads · d` elements.
    (0..x.len() / (heads * d)).into_par_iter().for_each(|bt| {
        let (b, t) = (bt / seq, bt % seq);
        for h in 0..heads {
            let merged = bt * heads * d + h * d;
            let split = ((b * heads + h) * seq + t) * d;
            let (from, to) = if to_heads {
                (merged, split)
            } else {
                (split, merged)
            };
            // SAFETY: `to..to + d` lies inside `y`, and no other task writes it: each
            // (batch, position, head) maps to its own row in either layout.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.at(to), d) };
            dst.copy_from_slice(&x[from..from + d]);
        }
    });
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            let rel = (exp(x) as f64 - want).abs() / want;
            worst = worst.max(rel);
        }
        // 2 ulp of f32 is 2.4e-7 relative.
        assert!(worst < 2.4e-7, "worst relative error {worst:.2e}");
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }
}
