//! The metadata values of a GGUF file.

/// One metadata value of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Value type 0.
    U8(u8),
    /// Value type 1.
    I8(i8),
    /// Value type 2.
    U16(u16),
    /// Value type 3.
    I16(i16),
    /// Value type 4.
    U32(u32),
    /// Value type 5.
    I32(i32),
    /// Value type 6.
    F32(f32),
    /// Value type 7 (any non-zero byte reads as `true`, as in llama.cpp).
    Bool(bool),
    /// Value type 8. Invalid UTF-8 is replaced by U+FFFD.
    String(String),
    /// Value type 9: values of one type, possibly arrays themselves.
    Array(Vec<GgufValue>),
    /// Value type 10.
    U64(u64),
    /// Value type 11.
    I64(i64),
    /// Value type 12.
    F64(f64),
}

impl GgufValue {
    /// The GGUF name of the value's type (`u32`, `string`, `array`, …), for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
        }
    }

    /// The value as an `i128` if it is an integer of any width (so every integer fits).
    pub fn as_integer(&self) -> Option<i128> {
        Some(match *self {
            GgufValue::U8(v) => v.into(),
            GgufValue::I8(v) => v.into(),
            GgufValue::U16(v) => v.into(),
            GgufValue::I16(v) => v.into(),
            GgufValue::U32(v) => v.into(),
            GgufValue::I32(v) => v.into(),
            GgufValue::U64(v) => v.into(),
            GgufValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// The value as an `f64` if it is an `f32` (converted exactly) or an `f64`.
    pub fn as_float(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements if the value is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(values) => Some(values),
            _ => None,
        }
    }
}
