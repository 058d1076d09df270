//! Parsing what comes before the tensor data: header, metadata and the checked tensor table.

use std::collections::{BTreeMap, HashSet};

use super::reader::Reader;
use super::{GgmlType, GgufTensorInfo, GgufValue};

const MAGIC: &[u8; 4] = b"GGUF";
/// `general.alignment` when a file does not set it.
const DEFAULT_ALIGNMENT: u64 = 32;

/// What the parser extracts from the bytes before the tensor data.
pub(super) struct Header {
    pub(super) version: u32,
    pub(super) alignment: u64,
    pub(super) data_start: u64,
    pub(super) metadata: BTreeMap<String, GgufValue>,
    pub(super) tensors: Vec<GgufTensorInfo>,
}

impl Header {
    pub(super) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(4).map_err(|_| {
            format!(
                "{} bytes is too short to be a GGUF file (the header alone is 24)",
                bytes.len()
            )
        })?;
        if magic != MAGIC {
            return Err(format!(
                "not a GGUF file: it starts with {:?} instead of \"GGUF\"",
                String::from_utf8_lossy(magic)
            ));
        }
        let version = r.u32().map_err(|e| format!("header: {e}"))?;
        match version {
            2 | 3 => {}
            1 => {
                return Err("GGUF version 1 is not supported (only versions 2 and 3)".into());
            }
            v if matches!(v.swap_bytes(), 2 | 3) => {
                return Err("big-endian GGUF files are not supported".into());
            }
            v => return Err(format!("unsupported GGUF version {v} (only 2 and 3)")),
        }
        let n_tensors = r.u64().map_err(|e| format!("header: {e}"))?;
        let n_kv = r.u64().map_err(|e| format!("header: {e}"))?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r
                .utf8()
                .map_err(|e| format!("metadata entry {i} of {n_kv}: key: {e}"))?;
            let value = r
                .u32()
                .and_then(|ty| r.value(ty, 0))
                .map_err(|e| format!("metadata entry {i} of {n_kv} ({key}): {e}"))?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(format!("metadata key {key} appears twice"));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(GgufValue::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(other) => {
                return Err(format!(
                    "general.alignment must be a power of two stored as u32, not {other:?}"
                ))
            }
        };

        let mut raw = Vec::new();
        for i in 0..n_tensors {
            let info = r
                .tensor_info()
                .map_err(|e| format!("tensor entry {i} of {n_tensors}: {e}"))?;
            raw.push(info);
        }
        // `pos` is at most the file length, so this cannot overflow.
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;

        let mut tensors = Vec::with_capacity(raw.len());
        let mut seen = HashSet::new();
        for (name, ne, type_id, offset) in raw {
            let info = check_tensor(
                name,
                ne,
                type_id,
                offset,
                alignment,
                data_start,
                bytes.len(),
            )?;
            if !seen.insert(info.name.clone()) {
                return Err(format!("tensor {} appears twice", info.name));
            }
            tensors.push(info);
        }
        Ok(Header {
            version,
            alignment,
            data_start,
            metadata,
            tensors,
        })
    }
}

/// Checks one tensor table entry: a known type, sizes that fit whole blocks, data in the file.
fn check_tensor(
    name: String,
    ne: Vec<u64>,
    type_id: u32,
    offset: u64,
    alignment: u64,
    data_start: u64,
    file_len: usize,
) -> Result<GgufTensorInfo, String> {
    let ggml_type = GgmlType::from_id(type_id)
        .ok_or_else(|| format!("tensor {name} has unknown ggml type {type_id}"))?;
    let n_elements = ne
        .iter()
        .try_fold(1usize, |acc, &n| {
            usize::try_from(n).ok().and_then(|n| acc.checked_mul(n))
        })
        .ok_or_else(|| format!("tensor {name} has sizes {ne:?} whose product overflows"))?;
    let row = ne.first().copied().unwrap_or(1);
    if !row.is_multiple_of(ggml_type.block_size() as u64) {
        return Err(format!(
            "tensor {name} ({ggml_type}) has rows of {row} elements, not a multiple of the \
             block size {}",
            ggml_type.block_size()
        ));
    }
    // n_elements / block_size blocks of type_size bytes: at most n_elements * 4 bytes.
    let n_bytes = (n_elements / ggml_type.block_size())
        .checked_mul(ggml_type.type_size())
        .ok_or_else(|| format!("tensor {name} is too large"))?;
    if !offset.is_multiple_of(alignment) {
        return Err(format!(
            "tensor {name} has offset {offset}, not a multiple of the alignment {alignment}"
        ));
    }
    let start = data_start.checked_add(offset);
    let end = start.and_then(|s| s.checked_add(n_bytes as u64));
    match (start, end) {
        (Some(start), Some(end)) if end <= file_len as u64 => Ok(GgufTensorInfo {
            name,
            ne,
            ggml_type,
            offset,
            start: start as usize,
            n_bytes,
            n_elements,
        }),
        _ => Err(format!(
            "tensor {name} ({ggml_type}, {n_bytes} bytes at offset {offset} of the data \
             section, which starts at byte {data_start}) does not lie inside the file \
             ({file_len} bytes): truncated or corrupt"
        )),
    }
}
