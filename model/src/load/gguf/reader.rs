//! The bounds-checked little-endian cursor the header parser reads with.

use super::GgufValue;

/// ggml's `GGML_MAX_DIMS`.
const MAX_DIMS: u32 = 4;
/// Deepest nesting of metadata arrays accepted (bounds the parser's recursion).
const MAX_ARRAY_DEPTH: usize = 16;

/// A bounds-checked little-endian cursor; errors say where the file ran out.
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.remaining() {
            return Err(format!(
                "the file ends at byte {}, but {n} bytes are needed at byte {}: truncated or corrupt",
                self.bytes.len(),
                self.pos
            ));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(super) fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    pub(super) fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    /// A length-prefixed string's bytes.
    fn string(&mut self) -> Result<&'a [u8], String> {
        let len = self.u64()?;
        if len > self.remaining() as u64 {
            return Err(format!(
                "a string of {len} bytes at byte {} runs past the end of the file ({} bytes): \
                 truncated or corrupt",
                self.pos,
                self.bytes.len()
            ));
        }
        self.take(len as usize)
    }

    /// A string that must be UTF-8 (keys and tensor names).
    pub(super) fn utf8(&mut self) -> Result<String, String> {
        let at = self.pos;
        let bytes = self.string()?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| format!("the string at byte {at} is not UTF-8"))
    }

    pub(super) fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U8(u8::from_le_bytes(self.array()?)),
            1 => GgufValue::I8(i8::from_le_bytes(self.array()?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(u32::from_le_bytes(self.array()?)),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => GgufValue::Bool(u8::from_le_bytes(self.array()?) != 0),
            8 => GgufValue::String(String::from_utf8_lossy(self.string()?).into_owned()),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(format!(
                        "arrays nested more than {MAX_ARRAY_DEPTH} deep at byte {}",
                        self.pos
                    ));
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                let min_size = value_min_size(elem)
                    .ok_or_else(|| format!("unknown array element type {elem}"))?;
                if count > (self.remaining() / min_size) as u64 {
                    return Err(format!(
                        "an array of {count} elements of type {elem} at byte {} cannot fit in \
                         the {} bytes left in the file: truncated or corrupt",
                        self.pos,
                        self.remaining()
                    ));
                }
                let mut values = Vec::with_capacity(count as usize);
                for i in 0..count {
                    let v = self
                        .value(elem, depth + 1)
                        .map_err(|e| format!("array element {i}: {e}"))?;
                    values.push(v);
                }
                GgufValue::Array(values)
            }
            10 => GgufValue::U64(u64::from_le_bytes(self.array()?)),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown value type {other}")),
        })
    }

    /// Name, sizes, type id and offset of one tensor, unchecked.
    pub(super) fn tensor_info(&mut self) -> Result<(String, Vec<u64>, u32, u64), String> {
        let name = self.utf8().map_err(|e| format!("name: {e}"))?;
        let n_dims = self.u32().map_err(|e| format!("tensor {name}: {e}"))?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor {name} has {n_dims} dimensions (at most {MAX_DIMS})"
            ));
        }
        let mut ne = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            ne.push(self.u64().map_err(|e| format!("tensor {name}: {e}"))?);
        }
        let ty = self.u32().map_err(|e| format!("tensor {name}: {e}"))?;
        let offset = self.u64().map_err(|e| format!("tensor {name}: {e}"))?;
        Ok((name, ne, ty, offset))
    }
}

/// The fewest bytes a value of type `ty` takes (`None` for an unknown type).
fn value_min_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}
