//! The LM head's row norms, noted by the forward pass for the logit lens ([`HeadNorms`]).
//!
//! The lens's screen (`screen/`) bounds every screened entry with its row's `‖w‖`. From a
//! bf16 table those norms took a pass of their own over each block of rows, about a tenth of
//! the 1.5B model's lens (9–14 ms of 70–100 on a 2-core AMX VM, measured with and without
//! them given). The forward pass already reads every row once, for its one-row product at
//! the target position, and that product waits on memory: squaring the rows there as well
//! cost it about 1 ms (31.3 → 32.2 ms, medians of 20 alternating runs).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Norms of an LM head's rows, asked for before a forward pass ([`HeadNorms::ask`]), noted
/// by its one-row product of a bf16 head on flex (x86-64 with AVX-512 BF16), and read by the
/// logit lens's screen, which takes them itself where none were noted.
#[derive(Debug, Default)]
pub struct HeadNorms {
    /// Whether a forward pass should note them.
    asked: AtomicBool,
    /// The norms, once noted.
    noted: OnceLock<Noted>,
    /// How many times they were given out.
    read: AtomicUsize,
}

/// Norms with the table they belong to.
#[derive(Debug)]
struct Noted {
    /// The table's first value's address, rows and row length: the norms are only ever
    /// given out for the table they were taken from.
    table: (usize, usize, usize),
    /// `‖w_j‖` for each row `j`, rounded up ([`HeadNorms::note`]).
    norms: Vec<f32>,
}

impl HeadNorms {
    /// Asks the next forward pass to note the norms (nothing happens where it cannot).
    pub fn ask(&self) {
        self.asked.store(true, Ordering::Relaxed);
    }

    /// Whether a product of the head should note the norms: asked, and not noted yet.
    #[cfg_attr(not(all(feature = "flex", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) fn wanted(&self) -> bool {
        self.asked.load(Ordering::Relaxed) && self.noted.get().is_none()
    }

    /// Whether norms have been noted.
    pub fn is_noted(&self) -> bool {
        self.noted.get().is_some()
    }

    /// Notes the norms of the `n × k` table at `table` from each row's sum of squares `sums`
    /// (f32, any order): `√(s + k·2⁻¹²⁶)`, the bound the screen's own norms give, which a sum
    /// whose smallest squares fell below f32's normal range still does not exceed.
    #[cfg_attr(not(all(feature = "flex", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) fn note(&self, table: *const u16, n: usize, k: usize, sums: &[f32]) {
        let flushed = k as f32 * f32::MIN_POSITIVE;
        let norms = sums.iter().map(|s| (s + flushed).sqrt()).collect();
        let _ = self.noted.set(Noted {
            table: (table as usize, n, k),
            norms,
        });
    }

    /// The norms of the `n × k` table at `table`, if they were noted from it.
    #[cfg_attr(not(all(feature = "flex", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) fn of(&self, table: *const u16, n: usize, k: usize) -> Option<&[f32]> {
        let noted = self
            .noted
            .get()
            .filter(|noted| noted.table == (table as usize, n, k))?;
        self.read.fetch_add(1, Ordering::Relaxed);
        Some(&noted.norms)
    }

    /// How many times the noted norms were given out (to the lens's screen).
    pub fn times_read(&self) -> usize {
        self.read.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms_are_noted_once_when_asked_and_only_for_their_table() {
        let notes = HeadNorms::default();
        assert!(!notes.wanted());
        notes.ask();
        assert!(notes.wanted());
        let table = [0u16; 8];
        notes.note(table.as_ptr(), 2, 4, &[9.0, 16.0]);
        assert!(!notes.wanted() && notes.is_noted());
        // Rounded up by the flushed squares' allowance, not below the exact root.
        let norms = notes
            .of(table.as_ptr(), 2, 4)
            .expect("noted for this table");
        assert!(norms[0] >= 3.0 && norms[0] < 3.0 + 1e-6);
        assert!(norms[1] >= 4.0 && norms[1] < 4.0 + 1e-6);
        // Another table, or the same one read with another shape, gets none.
        let other = [0u16; 8];
        assert!(notes.of(other.as_ptr(), 2, 4).is_none());
        assert!(notes.of(table.as_ptr(), 4, 2).is_none());
        // Noted once: a second note does not replace the first.
        notes.note(table.as_ptr(), 2, 4, &[1.0, 1.0]);
        assert!(notes.of(table.as_ptr(), 2, 4).unwrap()[0] >= 3.0);
    }
}
