//! Progress reporting without printing: the library calls a [`Progress`], the binary draws it.

/// Receives progress of long steps (downloads, loading layers).
pub trait Progress {
    /// A step named `what` starts, with `total` units of work (bytes, layers) if known.
    fn start(&mut self, what: &str, total: Option<u64>);
    /// `done` units are complete so far.
    fn set(&mut self, done: u64);
    /// The step is over.
    fn finish(&mut self);
}

/// Reports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

impl Progress for Silent {
    fn start(&mut self, _what: &str, _total: Option<u64>) {}
    fn set(&mut self, _done: u64) {}
    fn finish(&mut self) {}
}
