//! Safetensors checkpoints: `model.safetensors`, or shards listed by
//! `model.safetensors.index.json`, memory-mapped and converted to f32 tensor by tensor.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{AllocationProperty, Bytes, DType, TensorData};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use super::decode::{floats, threads_for, Float};
use super::pages::advise_huge_pages;
use super::WeightSource;
use crate::error::ModelError;

/// Where one tensor lives.
struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Where the tensor's bytes are in its file's map.
    bytes: Range<usize>,
}

/// The tensors of one or more safetensors files.
pub struct SafetensorsSource {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    entries: BTreeMap<String, Entry>,
    in_place: bool,
}

impl SafetensorsSource {
    /// Opens the weights of a Hugging Face model folder: the shards named by
    /// `model.safetensors.index.json` if it exists, else `model.safetensors`.
    pub fn from_folder(folder: &Path) -> Result<Self, ModelError> {
        let index = folder.join("model.safetensors.index.json");
        if index.is_file() {
            let shards = shard_files(&index)?;
            let paths: Vec<PathBuf> = shards.iter().map(|s| folder.join(s)).collect();
            Self::from_files(&paths)
        } else {
            let single = folder.join("model.safetensors");
            if !single.is_file() {
                return Err(ModelError::Source(format!(
                    "{}: no model.safetensors or model.safetensors.index.json in this folder",
                    folder.display()
                )));
            }
            Self::from_files(&[single])
        }
    }

    /// Opens the given safetensors files as one checkpoint.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, ModelError> {
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for (index, path) in paths.iter().enumerate() {
            let io = |source| ModelError::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(io)?;
            // SAFETY: the file is opened read-only and only read through this map; a checkpoint
            // changed on disk while attrib runs is outside what any loader can defend against.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
            let tensors = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            })?;
            for (name, view) in tensors.tensors() {
                let start = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
                entries.insert(
                    name,
                    Entry {
                        file: index,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        bytes: start..start + view.data().len(),
                    },
                );
            }
            files.push((path.clone(), Arc::new(mmap)));
        }
        Ok(Self {
            files,
            entries,
            in_place: false,
        })
    }

    /// With `yes`, [`WeightSource::read_data`] hands out f32 tensors as views of the memory
    /// map instead of copies: no copy, and pages are read only when a tensor is used (the
    /// embedding table's unused rows never are). Worth it only for a backend that keeps the
    /// data it is given (burn-flex); one that copies anyway would hold both.
    ///
    /// The maps are then also advised to use 2 MiB pages (`pages::advise_huge_pages`), since the
    /// model reads every weight through them on every pass.
    pub fn in_place(mut self, yes: bool) -> Self {
        self.in_place = yes;
        if yes {
            for (_, map) in &self.files {
                advise_huge_pages(map);
            }
        }
        self
    }

    /// A tensor's entry, its file's map, and where its bytes are in that map.
    fn locate(&self, name: &str) -> Result<(&Entry, &Arc<Mmap>, Range<usize>), ModelError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
        Ok((entry, &self.files[entry.file].1, entry.bytes.clone()))
    }
}

impl SafetensorsSource {
    /// `name` as a tensor of `dtype` sharing the map's bytes, where it is stored in `dtype`,
    /// the source hands out views ([`Self::in_place`]), its bytes are aligned for `dtype`,
    /// and the machine is little-endian; `None` otherwise.
    fn shared(&self, name: &str, dtype: DType) -> Option<TensorData> {
        let (entry, mmap, range) = self.locate(name).ok()?;
        let stored = match entry.dtype {
            Dtype::F32 => DType::F32,
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            _ => return None,
        };
        let aligned = (mmap.as_ptr() as usize + range.start).is_multiple_of(dtype.size());
        if !(stored == dtype && self.in_place && aligned && cfg!(target_endian = "little")) {
            return None;
        }
        let slice = MappedSlice {
            map: Arc::clone(mmap),
            range,
        };
        let bytes = Bytes::from_shared(bytes::Bytes::from_owner(slice), AllocationProperty::File);
        Some(TensorData::from_bytes(bytes, entry.shape.clone(), dtype))
    }
}

/// A byte range of a shared memory map, owned so a tensor can keep it alive.
struct MappedSlice {
    map: Arc<Mmap>,
    range: Range<usize>,
}

impl AsRef<[u8]> for MappedSlice {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.range.clone()]
    }
}

/// Hands the pages of `bytes` (a tensor just converted) back to the page cache: each tensor is
/// read once, and without this the whole checkpoint would stay in the process's resident
/// memory beside the converted copy.
fn release(mmap: &Mmap, bytes: &[u8]) {
    #[cfg(unix)]
    {
        let offset = bytes.as_ptr() as usize - mmap.as_ptr() as usize;
        // SAFETY: the map is a read-only shared mapping of a file. Dropping its pages only
        // makes a later read fault them in again from the file, with the same contents, so no
        // reference into the map can observe a change.
        let _ = unsafe {
            mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, bytes.len())
        };
    }
    #[cfg(not(unix))]
    let _ = (mmap, bytes);
}

/// The distinct shard file names of an index, in order.
fn shard_files(index: &Path) -> Result<Vec<String>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|source| ModelError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let bad = |message: String| ModelError::Safetensors {
        path: index.to_path_buf(),
        message,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map object".into()))?;
    let mut shards: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file
            .as_str()
            .ok_or_else(|| bad("weight_map values must be file names".into()))?;
        if !shards.iter().any(|s| s == file) {
            shards.push(file.to_string());
        }
    }
    shards.sort();
    Ok(shards)
}

impl WeightSource for SafetensorsSource {
    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    fn read_f32(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let (entry, mmap, range) = self.locate(name)?;
        let bytes = &mmap[range];
        let float = match entry.dtype {
            Dtype::F32 => Float::F32,
            Dtype::BF16 => Float::BF16,
            Dtype::F16 => Float::F16,
            other => {
                return Err(ModelError::UnsupportedDtype {
                    name: name.into(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let n: usize = entry.shape.iter().product();
        let values = floats(bytes, n, float, threads_for(n));
        release(mmap, bytes);
        Ok(values)
    }

    fn read_in_place_half(&self, name: &str) -> Option<TensorData> {
        let dtype = match self.entries.get(name)?.dtype {
            Dtype::BF16 => DType::BF16,
            Dtype::F16 => DType::F16,
            _ => return None,
        };
        self.shared(name, dtype)
    }

    fn read_data(&self, name: &str) -> Result<TensorData, ModelError> {
        match self.shared(name, DType::F32) {
            Some(data) => Ok(data),
            None => {
                let shape = self.locate(name)?.0.shape.clone();
                Ok(TensorData::new(self.read_f32(name)?, shape))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint with one f32 and one bf16 tensor, written with the safetensors crate.
    fn checkpoint(dir: &Path) -> PathBuf {
        use safetensors::tensor::TensorView;
        let f32s: Vec<f32> = (0..24).map(|i| i as f32 * 0.5 - 3.0).collect();
        let f32_bytes: Vec<u8> = f32s.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bf16_bytes: Vec<u8> = [1.0f32, -2.5, 0.125]
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let tensors = [
            (
                "a.weight",
                TensorView::new(Dtype::F32, vec![4, 6], &f32_bytes).unwrap(),
            ),
            (
                "b.weight",
                TensorView::new(Dtype::BF16, vec![3], &bf16_bytes).unwrap(),
            ),
        ];
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(tensors, None, &path).unwrap();
        path
    }

    #[test]
    fn large_tensors_convert_on_every_core_value_for_value() {
        use safetensors::tensor::TensorView;
        // Past the size from which the conversion is split between threads, and not a
        // multiple of any thread count.
        let n = (1 << 20) + 3;
        let bits: Vec<u16> = (0..n as u32)
            .map(|i| (i.wrapping_mul(40503) >> 3) as u16)
            .collect();
        let halves: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        let singles: Vec<u8> = bits
            .iter()
            .flat_map(|&b| (f32::from(b) * 0.5 - 3.0).to_le_bytes())
            .collect();
        let tensors = [
            (
                "bf16",
                TensorView::new(Dtype::BF16, vec![n], &halves).unwrap(),
            ),
            (
                "f16",
                TensorView::new(Dtype::F16, vec![n], &halves).unwrap(),
            ),
            (
                "f32",
                TensorView::new(Dtype::F32, vec![n], &singles).unwrap(),
            ),
        ];
        let dir = std::env::temp_dir().join(format!("attrib-st-large-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(tensors, None, &path).unwrap();
        let source = SafetensorsSource::from_files(&[path]).unwrap();
        // Each tensor's value for the bits it was made from.
        let want = |name: &str, b: u16| match name {
            // PyTorch's widening: the bits become the upper half (NaN payloads kept as they are).
            "bf16" => f32::from_bits(u32::from(b) << 16),
            "f16" => half::f16::from_bits(b).to_f32(),
            _ => f32::from(b) * 0.5 - 3.0,
        };
        for name in ["bf16", "f16", "f32"] {
            let got = source.read_f32(name).unwrap();
            assert_eq!(got.len(), n, "{name}");
            for (i, (v, &b)) in got.iter().zip(&bits).enumerate() {
                assert_eq!(v.to_bits(), want(name, b).to_bits(), "{name}[{i}]");
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn maps_read_in_place_are_advised_to_use_huge_pages() {
        use super::super::pages::{advice_is_observable, vm_flags_at};
        use safetensors::tensor::TensorView;
        if !advice_is_observable() {
            eprintln!("skipped: no transparent huge pages, or no /proc/self/smaps to read");
            return;
        }
        // 6 MiB of f32: whole 2 MiB pages inside the map wherever it starts.
        let bytes: Vec<u8> = (0..3u32 << 19)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        let tensors = [(
            "w",
            TensorView::new(Dtype::F32, vec![3 << 19], &bytes).unwrap(),
        )];
        let dir = std::env::temp_dir().join(format!("attrib-st-huge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(tensors, None, &path).unwrap();
        let advised = |source: &SafetensorsSource| {
            let map = &source.files[0].1;
            let inner = (map.as_ptr() as usize).next_multiple_of(2 << 20);
            let flags = vm_flags_at(inner).expect("the map is mapped");
            flags.iter().any(|f| f == "hg")
        };
        let copied = SafetensorsSource::from_files(std::slice::from_ref(&path)).unwrap();
        let mapped = SafetensorsSource::from_files(&[path])
            .unwrap()
            .in_place(true);
        assert!(
            !advised(&copied),
            "a map only converted from is left as it is"
        );
        assert!(advised(&mapped), "a map read in place is advised");
        let data = mapped.read_data("w").unwrap();
        assert_eq!(
            data.to_vec::<f32>().unwrap()[(3 << 19) - 1],
            ((3 << 19) - 1) as f32
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn in_place_data_is_the_map_itself_and_equals_a_copy() {
        let dir = std::env::temp_dir().join(format!("attrib-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = checkpoint(&dir);
        let copied = SafetensorsSource::from_files(std::slice::from_ref(&path)).unwrap();
        let mapped = SafetensorsSource::from_files(&[path])
            .unwrap()
            .in_place(true);
        for name in ["a.weight", "b.weight"] {
            let want = copied.read_data(name).unwrap();
            let got = mapped.read_data(name).unwrap();
            assert_eq!(got.shape, want.shape);
            assert_eq!(
                got.to_vec::<f32>().unwrap(),
                want.to_vec::<f32>().unwrap(),
                "{name}"
            );
            // The f32 tensor points into the map; the bf16 one had to be converted.
            let map = &mapped.files[0].1;
            let inside = |p: *const u8| {
                let p = p as usize;
                p >= map.as_ptr() as usize && p < map.as_ptr() as usize + map.len()
            };
            assert_eq!(inside(got.bytes.as_ptr()), name == "a.weight", "{name}");
            assert!(!inside(want.bytes.as_ptr()));
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
