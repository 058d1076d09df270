//! A tensor as its file stores it in blocks of a quantized format ([`StoredBlocks`]), kept
//! beside the f32 copy the model computes with, for readers that gain from reading fewer
//! bytes: the logit lens's screen reads a GGUF file's LM head as stored (Q6_K: 210 bytes
//! per 256 values, a fifth of the f32 copy's) and decodes each block of rows as it goes.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// One block's bytes into its values.
pub type BlockDecoder = fn(&[u8], &mut [f32]);

/// A 2-D tensor's bytes as stored, in blocks of a quantized format, each row a whole number
/// of blocks, shared with the memory that holds the file; with the decoder that gives the
/// values the model was loaded with, bit for bit.
#[derive(Clone)]
pub struct StoredBlocks {
    /// What holds the bytes (a file's memory map).
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    /// The tensor's bytes within it.
    range: Range<usize>,
    /// Rows and values per row.
    shape: [usize; 2],
    /// Bytes per block.
    block_bytes: usize,
    /// Values per block.
    block_values: usize,
    /// Decodes one block.
    decode: BlockDecoder,
    /// How many times a reader took them (shared by clones).
    read: Arc<AtomicUsize>,
}

impl fmt::Debug for StoredBlocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredBlocks")
            .field("range", &self.range)
            .field("shape", &self.shape)
            .field("block_bytes", &self.block_bytes)
            .field("block_values", &self.block_values)
            .finish()
    }
}

impl StoredBlocks {
    /// The `rows × cols` tensor at `range` of `owner`'s bytes, in blocks of `block_values`
    /// values stored in `block_bytes` bytes; `None` unless each row is a whole number of
    /// blocks and the range holds exactly the tensor's blocks.
    pub(crate) fn new(
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        range: Range<usize>,
        [rows, cols]: [usize; 2],
        (block_bytes, block_values): (usize, usize),
        decode: BlockDecoder,
    ) -> Option<Self> {
        let whole = block_values > 0 && cols.is_multiple_of(block_values);
        let fits = range.end <= (*owner).as_ref().len()
            && range.len() == rows * (cols / block_values.max(1)) * block_bytes;
        (whole && fits).then_some(Self {
            owner,
            range,
            shape: [rows, cols],
            block_bytes,
            block_values,
            decode,
            read: Arc::default(),
        })
    }

    /// Counts one read by a reader that took these blocks for the values they decode to.
    #[cfg_attr(not(all(feature = "flex", target_arch = "x86_64")), allow(dead_code))]
    pub(crate) fn note_read(&self) {
        self.read.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times a reader (the logit lens's screen) took them.
    pub fn times_read(&self) -> usize {
        self.read.load(Ordering::Relaxed)
    }

    /// The tensor's bytes.
    pub fn bytes(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }

    /// Rows and values per row.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.shape[1] / self.block_values * self.block_bytes
    }

    /// Row `j`'s values, decoded into the start of `out` (at least one row long).
    pub fn decode_row(&self, j: usize, out: &mut [f32]) {
        let bytes = &self.bytes()[j * self.row_bytes()..][..self.row_bytes()];
        let out = &mut out[..self.shape[1]];
        for (b, o) in bytes
            .chunks_exact(self.block_bytes)
            .zip(out.chunks_exact_mut(self.block_values))
        {
            (self.decode)(b, o);
        }
    }

    /// Whether these blocks hold an `n × k` table whose rows `rows` decode to `table`'s
    /// bits (`table` row-major, `n × k`): the check that they are the weight a model was
    /// loaded with, on the rows a reader is about to rely on.
    pub fn decodes_to(&self, table: &[f32], [n, k]: [usize; 2], rows: &[usize]) -> bool {
        let mut row = vec![0f32; k];
        self.shape == [n, k]
            && table.len() >= n * k
            && rows.iter().all(|&j| {
                j < n && {
                    self.decode_row(j, &mut row);
                    let want = &table[j * k..][..k];
                    row.iter()
                        .zip(want)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
                }
            })
    }
}
