//! Stored tensors to f32 on every core.
//!
//! Converting a checkpoint to f32 (bf16 from the hub, quantized blocks from a GGUF file) writes
//! gigabytes that the process has never touched: besides the conversion itself, every page is
//! zeroed by the kernel when it is first written. Both costs are split between threads here,
//! each converting a run of whole units (one float, or one quantization block) into its own
//! part of the output.

use std::convert::Infallible;

/// The fewest values worth a thread of their own (1 MiB of f32): on a machine with many cores
/// a small tensor is not split into runs that cost more to start than to convert.
const VALUES_PER_THREAD: usize = 1 << 18;

/// Threads for converting a tensor of `n` values: one per core, but none with fewer than
/// [`VALUES_PER_THREAD`] values (a tensor below twice that stays on the calling thread).
pub(crate) fn threads_for(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |t| t.get());
    cores.min(n / VALUES_PER_THREAD).max(1)
}

/// How values are stored: `values` of them in each unit of `bytes` bytes, every unit decoded
/// on its own.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unit {
    /// Values per unit.
    pub values: usize,
    /// Bytes per unit.
    pub bytes: usize,
}

/// The `n` values stored in `bytes` (`n / unit.values` whole units), converted by `decode`,
/// which fills a run of values from the bytes of the same whole units. The units are split
/// into one run per thread (`threads` in all, the calling one included).
///
/// # Panics
/// If `n` or `bytes.len()` is not a whole number of units (callers check this first), or if
/// `decode` panics.
pub(crate) fn decode_runs<E: Send>(
    bytes: &[u8],
    n: usize,
    unit: Unit,
    threads: usize,
    decode: impl Fn(&[u8], &mut [f32]) -> Result<(), E> + Sync,
) -> Result<Vec<f32>, E> {
    let units = n / unit.values;
    assert!(units * unit.values == n && units * unit.bytes == bytes.len());
    let mut values = vec![0f32; n];
    super::pages::advise_huge_pages_for(&mut values);
    let per_thread = units.div_ceil(threads.max(1)).max(1);
    let decode = &decode;
    std::thread::scope(|scope| {
        let mut runs = values
            .chunks_mut(per_thread * unit.values)
            .zip(bytes.chunks(per_thread * unit.bytes));
        let first = runs.next();
        let others: Vec<_> = runs
            .map(|(v, b)| scope.spawn(move || decode(b, v)))
            .collect();
        let mut result = first.map_or(Ok(()), |(v, b)| decode(b, v));
        for other in others {
            let done = other
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            result = result.and(done);
        }
        result
    })?;
    Ok(values)
}

/// The float types checkpoints store, little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Float {
    /// IEEE single.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
}

/// `n` values of type `float` stored in `bytes` as f32, on `threads` threads ([`decode_runs`]).
///
/// # Panics
/// If `bytes` does not hold exactly `n` values of that type.
pub(crate) fn floats(bytes: &[u8], n: usize, float: Float, threads: usize) -> Vec<f32> {
    let unit = Unit {
        values: 1,
        bytes: match float {
            Float::F32 => 4,
            Float::F16 | Float::BF16 => 2,
        },
    };
    let converted = decode_runs(bytes, n, unit, threads, |b, v| {
        match float {
            Float::F32 => singles(b, v),
            Float::F16 => halves(b, v, f16_bits),
            Float::BF16 => halves(b, v, bf16_bits),
        }
        Ok::<(), Infallible>(())
    });
    let Ok(values) = converted;
    values
}

/// Little-endian 16-bit floats (`widen` turns the bits into an f32) into `values`.
fn halves(bytes: &[u8], values: &mut [f32], widen: fn(u16) -> f32) {
    for (v, b) in values.iter_mut().zip(bytes.chunks_exact(2)) {
        *v = widen(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// Little-endian f32 values into `values`.
fn singles(bytes: &[u8], values: &mut [f32]) {
    for (v, b) in values.iter_mut().zip(bytes.chunks_exact(4)) {
        *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// bf16 bits as an f32: they are its upper half, as PyTorch and gguf-py widen them (NaN
/// payloads included).
fn bf16_bits(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// f16 bits as an f32 (exactly: every f16 is an f32).
fn f16_bits(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy format of 3-byte units holding 2 values each: a scale and two small integers.
    fn toy(bytes: &[u8], values: &mut [f32]) -> Result<(), String> {
        for (v, b) in values.chunks_exact_mut(2).zip(bytes.chunks_exact(3)) {
            if b[0] == 0 {
                return Err("zero scale".into());
            }
            v[0] = b[0] as f32 * b[1] as f32;
            v[1] = b[0] as f32 * b[2] as f32;
        }
        Ok(())
    }

    #[test]
    fn runs_on_any_number_of_threads_give_the_values_in_order() {
        let units = 1001;
        let bytes: Vec<u8> = (0..units * 3).map(|i| (i * 7 % 251 + 1) as u8).collect();
        let want: Vec<f32> = bytes
            .chunks_exact(3)
            .flat_map(|b| [b[0] as f32 * b[1] as f32, b[0] as f32 * b[2] as f32])
            .collect();
        let unit = Unit {
            values: 2,
            bytes: 3,
        };
        for threads in [1, 2, 3, 4, 7, 2000] {
            let got = decode_runs(&bytes, units * 2, unit, threads, toy).unwrap();
            assert_eq!(got, want, "{threads} threads");
        }
    }

    #[test]
    fn an_error_in_any_run_is_returned() {
        let units = 100;
        let mut bytes = vec![1u8; units * 3];
        bytes[97 * 3] = 0;
        let unit = Unit {
            values: 2,
            bytes: 3,
        };
        for threads in [1, 2, 5] {
            let got = decode_runs(&bytes, units * 2, unit, threads, toy);
            assert_eq!(got, Err("zero scale".to_string()), "{threads} threads");
        }
    }

    #[test]
    fn small_tensors_stay_on_one_thread_and_large_ones_use_every_core() {
        let cores = std::thread::available_parallelism().map_or(1, |t| t.get());
        assert_eq!(threads_for(0), 1);
        assert_eq!(threads_for(2 * VALUES_PER_THREAD - 1), 1);
        assert_eq!(threads_for(2 * VALUES_PER_THREAD), cores.min(2));
        assert_eq!(threads_for(cores * VALUES_PER_THREAD), cores);
        assert_eq!(threads_for(usize::MAX), cores);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn large_outputs_are_advised_to_use_huge_pages() {
        use super::super::pages::{advice_is_observable, vm_flags_at};
        if !advice_is_observable() {
            eprintln!("skipped: no transparent huge pages, or no /proc/self/smaps to read");
            return;
        }
        // 6 MiB of f32 (3 bytes per 2 values): whole 2 MiB pages inside wherever it starts.
        let units = 3 << 18;
        let bytes: Vec<u8> = (0..units * 3).map(|i| (i % 251 + 1) as u8).collect();
        let unit = Unit {
            values: 2,
            bytes: 3,
        };
        let got = decode_runs(&bytes, units * 2, unit, 2, toy).unwrap();
        let inner = (got.as_ptr() as usize).next_multiple_of(2 << 20);
        let flags = vm_flags_at(inner).expect("the output is mapped");
        assert!(flags.iter().any(|f| f == "hg"), "{flags:?}");
        assert_eq!(
            got[2 * units - 1],
            (bytes[3 * units - 3] as f32) * (bytes[3 * units - 1] as f32)
        );
    }

    #[test]
    fn empty_tensors_decode_to_nothing() {
        let unit = Unit {
            values: 2,
            bytes: 3,
        };
        assert_eq!(decode_runs(&[], 0, unit, 4, toy), Ok(vec![]));
    }

    #[test]
    fn half_floats_widen_exactly() {
        for x in [0.0f32, -0.0, 1.0, -2.5, 0.125, 65504.0, 1e-7, f32::INFINITY] {
            let b = half::bf16::from_f32(x);
            assert_eq!(bf16_bits(b.to_bits()).to_bits(), b.to_f32().to_bits());
            let h = half::f16::from_f32(x);
            assert_eq!(f16_bits(h.to_bits()).to_bits(), h.to_f32().to_bits());
        }
    }
}
