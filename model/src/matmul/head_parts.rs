//! Each attention head's contribution through o_proj, noted by the forward pass for the head
//! scores ([`HeadParts`]).
//!
//! A head's score needs its contribution `c_h[p] = z_h[p] · W_hᵀ` at every position, squared
//! against the gradient at o_proj's output, which only the backward pass gives. Computed after
//! it, that is a second pass over every layer's o_proj with as many multiply-adds as o_proj's
//! own product (13–16 ms of the 1.5B model's attribution at 5 tokens on a 2-core VM, about
//! 3% of it). o_proj's product at a few tokens takes exactly those multiply-adds, head by
//! head if its sums are split at the heads' boundaries (`per_head.rs`): noted there, the
//! scores need only the noted values and the gradient.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// The contributions of one attention layer's heads through its o_proj, asked for before a
/// forward pass ([`HeadParts::ask`]), noted by o_proj's product where its kernel splits the
/// sums by head (flex on x86-64 with AVX-512, a few tokens), and read by the head scores
/// (`HeadParts::squares`), which compute them anew where none fit.
#[derive(Debug)]
pub struct HeadParts {
    /// Heads side by side in o_proj's input.
    heads: usize,
    /// Whether the next product should note them.
    asked: AtomicBool,
    /// The last noted.
    noted: Mutex<Option<Noted>>,
    /// How many times noted values gave the scores.
    used: AtomicUsize,
}

/// Contributions with what they were computed from.
#[derive(Debug)]
struct Noted {
    /// The weight's first value's address, rows (`n`, the hidden size) and row length (`k`).
    weight: (usize, usize, usize),
    /// The product's input, `m × k`: the contributions stand for this input only.
    x: Vec<f32>,
    /// `[heads][m][n]`: head h's contribution at row a of the input, hidden dim d, at
    /// `(h·m + a)·n + d`.
    parts: Vec<f32>,
}

impl HeadParts {
    /// A registry for a layer of `heads` heads, nothing asked.
    pub fn new(heads: usize) -> Self {
        Self {
            heads,
            asked: AtomicBool::new(false),
            noted: Mutex::new(None),
            used: AtomicUsize::new(0),
        }
    }

    /// Heads side by side in o_proj's input.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Asks the next product to note the contributions, forgetting any noted before.
    pub fn ask(&self) {
        *self.lock() = None;
        self.asked.store(true, Ordering::Relaxed);
    }

    /// Whether a product should note them (asked since the last note), and from now on not.
    #[cfg_attr(not(all(feature = "flex", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) fn take_ask(&self) -> bool {
        self.asked.swap(false, Ordering::Relaxed)
    }

    /// Notes the contributions `parts` (`[heads][m][n]`) of the `n × k` weight at `weight`
    /// for the input `x` (`m × k`).
    #[cfg_attr(not(all(feature = "flex", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) fn note(&self, weight: (usize, usize, usize), x: &[f32], parts: Vec<f32>) {
        *self.lock() = Some(Noted {
            weight,
            x: x.to_vec(),
            parts,
        });
    }

    /// `[heads × m]` values `Σ_d (c_h[a][d] · g[a·n + d])²` for the `n × k` weight at `weight`
    /// and the input `z` (`m × k`), from contributions noted for exactly that weight and input
    /// (equal values); `None` otherwise. The noted values are let go either way.
    #[cfg_attr(not(all(feature = "flex", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) fn squares(
        &self,
        weight: (usize, usize, usize),
        z: &[f32],
        g: &[f32],
    ) -> Option<Vec<f32>> {
        let noted = self.lock().take()?;
        let (_, n, k) = weight;
        let m = z.len() / k.max(1);
        if noted.weight != weight || noted.x != z || g.len() != m * n {
            return None;
        }
        debug_assert_eq!(noted.parts.len(), self.heads * m * n);
        let out = noted
            .parts
            .chunks_exact(n)
            .enumerate()
            .map(|(row, c)| weighted_squares(c, &g[(row % m) * n..][..n]))
            .collect();
        self.used.fetch_add(1, Ordering::Relaxed);
        Some(out)
    }

    /// How many times noted contributions gave a layer's scores.
    pub fn times_used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// The noted values, locked (a poisoned lock still holds plain data).
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Noted>> {
        self.noted.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `Σ_d (c[d] · g[d])²`, in sixteen lanes (which the compiler keeps in vector registers).
fn weighted_squares(c: &[f32], g: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (cs, gs) = (c.chunks_exact(16), g.chunks_exact(16));
    let tail: f32 = cs
        .remainder()
        .iter()
        .zip(gs.remainder())
        .map(|(c, g)| (c * g) * (c * g))
        .sum();
    for (c, g) in cs.zip(gs) {
        for i in 0..16 {
            let v = c[i] * g[i];
            lanes[i] += v * v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squares_only_for_the_noted_weight_and_input_and_only_once() {
        // Two heads, two rows of input, three hidden dims (n), k = 4.
        let (heads, m, n, k) = (2, 2, 3, 4);
        let parts: Vec<f32> = (0..heads * m * n).map(|i| i as f32 - 5.0).collect();
        let x: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5).collect();
        let g: Vec<f32> = (0..m * n).map(|i| 1.0 + i as f32).collect();
        let weight = (0x1000, n, k);
        let notes = HeadParts::new(heads);
        assert!(!notes.take_ask());
        notes.ask();
        assert!(notes.take_ask() && !notes.take_ask());

        notes.note(weight, &x, parts.clone());
        let got = notes.squares(weight, &x, &g).expect("noted for this input");
        for h in 0..heads {
            for a in 0..m {
                let want: f32 = (0..n)
                    .map(|d| (parts[(h * m + a) * n + d] * g[a * n + d]).powi(2))
                    .sum();
                assert_eq!(got[h * m + a], want, "head {h} row {a}");
            }
        }
        assert_eq!(notes.times_used(), 1);
        // Let go once read.
        assert!(notes.squares(weight, &x, &g).is_none());

        // Another input, another weight: not these.
        let mut other = x.clone();
        other[3] += 1.0;
        notes.note(weight, &x, parts.clone());
        assert!(notes.squares(weight, &other, &g).is_none());
        notes.note(weight, &x, parts.clone());
        assert!(notes.squares((0x2000, n, k), &x, &g).is_none());
        // Asking again forgets what was noted.
        notes.note(weight, &x, parts);
        notes.ask();
        assert!(notes.squares(weight, &x, &g).is_none());
        assert_eq!(notes.times_used(), 1);
    }

    #[test]
    fn weighted_squares_past_whole_lanes() {
        let c: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let g: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: f64 = c
            .iter()
            .zip(&g)
            .map(|(&c, &g)| (c as f64 * g as f64).powi(2))
            .sum();
        let got = weighted_squares(&c, &g) as f64;
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
    }
}
