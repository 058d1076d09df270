//! Tests of the GGUF reader against the fixtures of `scripts/make_gguf_fixtures.py`.

use std::path::PathBuf;

use super::*;
use crate::TestBackend;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/fixtures/gguf/{name}"))
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// Parses `bytes` under the name `corrupt.gguf` and returns the error's message.
fn open_err(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(bytes, "corrupt.gguf") {
        Ok(_) => panic!("a corrupt file was accepted"),
        Err(e) => {
            assert!(matches!(e, ModelError::Gguf { .. }), "{e:?}");
            let message = e.to_string();
            assert!(message.starts_with("corrupt.gguf: "), "{message}");
            message
        }
    }
}

/// Byte position of the tensor-table entry of `name`, just after its name.
fn tensor_entry(bytes: &[u8], name: &str) -> usize {
    let mut pattern = (name.len() as u64).to_le_bytes().to_vec();
    pattern.extend_from_slice(name.as_bytes());
    let pos = bytes
        .windows(pattern.len())
        .rposition(|w| w == pattern)
        .expect("tensor entry");
    pos + pattern.len()
}

/// Byte positions of the type id and the offset of tensor `name`.
fn type_and_offset_pos(bytes: &[u8], name: &str) -> (usize, usize) {
    let at = tensor_entry(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * n_dims;
    (ty, ty + 4)
}

/// The unsigned integers of a JSON array (shapes, f32 bit patterns).
fn numbers(value: &serde_json::Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let file = GgufFile::open(fixture("quant-samples.gguf")).unwrap();
    let text = std::fs::read_to_string(fixture("quant-samples.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut covered = Vec::new();
    for t in json["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let info = file.tensor(name).unwrap();
        assert_eq!(info.ggml_type().name(), t["type"].as_str().unwrap());
        assert_eq!(
            u64::from(info.ggml_type().id()),
            t["type_id"].as_u64().unwrap()
        );
        let shape: Vec<usize> = numbers(&t["shape"]).iter().map(|&v| v as usize).collect();
        assert_eq!(info.shape(), shape, "{name}");
        let expected: Vec<u32> = numbers(&t["bits"]).iter().map(|&v| v as u32).collect();
        let values = file.dequantize(name).unwrap();
        assert_eq!(values.len(), expected.len(), "{name}");
        for (i, (v, e)) in values.iter().zip(&expected).enumerate() {
            assert_eq!(
                v.to_bits(),
                *e,
                "{name}[{i}]: {v:e} but gguf-py gives {:e}",
                f32::from_bits(*e)
            );
        }
        covered.push(info.ggml_type());
    }
    for ty in GgmlType::DEQUANTIZABLE {
        assert!(covered.contains(&ty), "no fixture for {ty}");
    }
}

#[test]
fn large_tensors_decode_in_parallel_runs_bit_for_bit() {
    // Each fixture tensor's blocks repeated to 135 blocks, split unevenly between threads:
    // every block decodes on its own, so the values are gguf-py's repeated alike, however the
    // blocks are split.
    let file = GgufFile::open(fixture("quant-samples.gguf")).unwrap();
    let text = std::fs::read_to_string(fixture("quant-samples.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut covered = 0;
    for t in json["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let info = file.tensor(name).unwrap();
        let ty = info.ggml_type();
        if ty.block_size() == 1 {
            continue;
        }
        let bytes = file.bytes_of(info);
        let bits: Vec<u32> = numbers(&t["bits"]).iter().map(|&v| v as u32).collect();
        let blocks = 135;
        let n = blocks * ty.block_size();
        let tiled: Vec<u8> = bytes
            .iter()
            .copied()
            .cycle()
            .take(blocks * ty.type_size())
            .collect();
        assert_eq!(bytes.len() % ty.type_size(), 0);
        for threads in [1, 2, 3, 4, 7] {
            let values = ggml::dequantize_on(ty, &tiled, n, threads).unwrap();
            assert_eq!(values.len(), n);
            for (i, (v, e)) in values.iter().zip(bits.iter().cycle()).enumerate() {
                assert_eq!(v.to_bits(), *e, "{name} on {threads} threads, value {i}");
            }
        }
        covered += 1;
    }
    assert_eq!(covered, 8, "every block type has a fixture");
}

#[test]
fn tensors_kept_as_stored_decode_to_gguf_py_bit_for_bit() {
    // Where AVX2 decodes a block type, its 2-D tensors are kept as stored, sharing the
    // file's bytes, and each row decodes to gguf-py's values; other types and 1-D or 3-D
    // tensors are not kept.
    let file = GgufFile::open(fixture("quant-samples.gguf")).unwrap();
    let text = std::fs::read_to_string(fixture("quant-samples.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let avx2 = cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("avx2");
    let mut kept = Vec::new();
    for t in json["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let info = file.tensor(name).unwrap();
        let decodable = matches!(
            info.ggml_type(),
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K | GgmlType::Q5_0 | GgmlType::Q8_0
        );
        let Some(stored) = file.stored_blocks(name) else {
            assert!(
                !(avx2 && decodable && info.shape().len() == 2),
                "{name} not kept"
            );
            continue;
        };
        assert!(avx2 && decodable, "{name} kept");
        assert_eq!(stored.shape().to_vec(), info.shape());
        assert_eq!(stored.bytes(), file.tensor_bytes(name).unwrap());
        let bits: Vec<u32> = numbers(&t["bits"]).iter().map(|&v| v as u32).collect();
        let [rows, cols] = stored.shape();
        let mut row = vec![f32::NAN; cols];
        for j in 0..rows {
            stored.decode_row(j, &mut row);
            for (i, v) in row.iter().enumerate() {
                assert_eq!(v.to_bits(), bits[j * cols + i], "{name} row {j} value {i}");
            }
        }
        // The check a reader makes before taking them for a loaded weight: the rows asked
        // about decode to the table's bits, and a changed value or another shape fails it.
        let mut table: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b)).collect();
        let all: Vec<usize> = (0..rows).collect();
        assert!(stored.decodes_to(&table, [rows, cols], &all), "{name}");
        assert!(!stored.decodes_to(&table, [cols, rows], &[0]) || rows == cols);
        assert!(
            !stored.decodes_to(&table, [rows, cols], &[rows]),
            "{name}: past the rows"
        );
        let last = (rows - 1) * cols;
        table[last] = f32::from_bits(table[last].to_bits() ^ 1);
        assert!(
            !stored.decodes_to(&table, [rows, cols], &[rows - 1]),
            "{name}"
        );
        assert!(
            stored.decodes_to(&table, [rows, cols], &all[..rows - 1]),
            "{name}"
        );
        kept.push(name.to_string());
    }
    if avx2 {
        assert_eq!(kept, ["q8_0", "q5_0", "q4_k", "q5_k", "q6_k"]);
    }
    assert!(file.stored_blocks("no such tensor").is_none());
}

#[test]
fn metadata_of_every_value_type() {
    let file = GgufFile::open(fixture("quant-samples.gguf")).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.data_start() % 32, 0);
    let get = |k: &str| file.metadata(k).unwrap().clone();
    assert_eq!(get("test.u8"), GgufValue::U8(200));
    assert_eq!(get("test.i8"), GgufValue::I8(-100));
    assert_eq!(get("test.u16"), GgufValue::U16(60000));
    assert_eq!(get("test.i16"), GgufValue::I16(-30000));
    assert_eq!(get("test.u32"), GgufValue::U32(4_000_000_000));
    assert_eq!(get("test.i32"), GgufValue::I32(-2_000_000_000));
    assert_eq!(get("test.f32"), GgufValue::F32(1.5));
    assert_eq!(get("test.bool"), GgufValue::Bool(true));
    assert_eq!(get("test.u64"), GgufValue::U64(1 << 40));
    assert_eq!(get("test.i64"), GgufValue::I64(-(1 << 40)));
    assert_eq!(get("test.f64"), GgufValue::F64(-2.25));
    assert_eq!(file.get_str("test.string").unwrap(), "héllo wörld");
    assert_eq!(
        file.get_str("general.architecture").unwrap(),
        "quant-samples"
    );
    assert_eq!(
        get("test.array.nested"),
        GgufValue::Array(vec![
            GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(2)]),
            GgufValue::Array(vec![GgufValue::I32(3)]),
        ])
    );
    // Typed accessors.
    assert_eq!(file.get_u32("test.u32").unwrap(), 4_000_000_000);
    assert_eq!(file.get_u32("test.u8").unwrap(), 200);
    assert_eq!(file.get_u64("test.u64").unwrap(), 1 << 40);
    assert_eq!(file.get_f32("test.f64").unwrap(), -2.25);
    assert!(file.get_bool("test.bool").unwrap());
    assert_eq!(file.get_i32_array("test.array.i32").unwrap(), [1, -2, 3]);
    assert_eq!(file.get_f32_array("test.array.f32").unwrap(), [0.5, -1.25]);
    assert_eq!(
        file.get_string_array("test.array.str").unwrap(),
        ["a", "bc", ""]
    );
    // Wrong types and missing keys name the file and the key.
    for err in [
        file.get_u32("test.i32").unwrap_err(),
        file.get_u32("test.string").unwrap_err(),
        file.get_str("no.such.key").unwrap_err(),
        file.get_string_array("test.array.i32").unwrap_err(),
    ] {
        let message = err.to_string();
        assert!(message.contains("quant-samples.gguf"), "{message}");
        assert!(message.contains("test.") || message.contains("no.such.key"));
    }
    assert_eq!(file.tensor_names().count(), 11);
}

#[test]
fn shapes_are_ne_reversed_and_data_row_major() {
    let file = GgufFile::open(fixture("quant-samples.gguf")).unwrap();
    let f32_tensor = file.tensor("f32").unwrap();
    assert_eq!(f32_tensor.ne(), [16, 3, 2]);
    assert_eq!(f32_tensor.shape(), [2, 3, 16]);

    // tiny-qwen2's f32 tensors hold base + arange(n) in numpy's (PyTorch's) row-major order.
    let source = GgufSource::open(fixture("tiny-qwen2.gguf")).unwrap();
    let info = source.file().tensor("blk.1.ffn_gate.weight").unwrap();
    assert_eq!(info.ne(), [32, 64]);
    let name = "model.layers.1.mlp.gate_proj.weight";
    assert_eq!(source.shape(name).unwrap(), [64, 32]);
    let values = source.read_f32(name).unwrap();
    assert_eq!(values.len(), 64 * 32);
    for (i, v) in values.iter().enumerate() {
        assert_eq!(*v, values[0] + i as f32);
    }
    // The Q8_0 projection keeps the [out, in] layout too: row r starts near (base + r*in)/1000.
    let down = source
        .read_f32("model.layers.0.mlp.down_proj.weight")
        .unwrap();
    assert_eq!(
        source.shape("model.layers.0.mlp.down_proj.weight").unwrap(),
        [32, 64]
    );
    let step = (down[64] - down[0]) * 1000.0;
    assert!((step - 64.0).abs() < 2.0, "row stride {step}");
}

#[test]
fn llama_cpp_names_map_to_hugging_face_names() {
    assert_eq!(hf_name("token_embd.weight"), "model.embed_tokens.weight");
    assert_eq!(hf_name("output_norm.weight"), "model.norm.weight");
    assert_eq!(hf_name("output.weight"), "lm_head.weight");
    assert_eq!(
        hf_name("blk.12.attn_norm.weight"),
        "model.layers.12.input_layernorm.weight"
    );
    assert_eq!(
        hf_name("blk.0.attn_k.bias"),
        "model.layers.0.self_attn.k_proj.bias"
    );
    assert_eq!(
        hf_name("blk.3.attn_output.weight"),
        "model.layers.3.self_attn.o_proj.weight"
    );
    assert_eq!(
        hf_name("blk.3.ffn_norm.weight"),
        "model.layers.3.post_attention_layernorm.weight"
    );
    assert_eq!(
        hf_name("blk.3.ffn_down.weight"),
        "model.layers.3.mlp.down_proj.weight"
    );
    for unknown in [
        "rope_freqs.weight",
        "blk.x.attn_q.weight",
        "blk.0.attn_output.bias",
    ] {
        assert_eq!(hf_name(unknown), unknown);
    }

    let source = GgufSource::open(fixture("tiny-qwen2.gguf")).unwrap();
    let names = source.names();
    let mut expected = vec![
        "lm_head.weight".to_string(),
        "model.embed_tokens.weight".into(),
        "model.norm.weight".into(),
        "rope_freqs.weight".into(),
    ];
    for layer in 0..2 {
        for tail in [
            "input_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.q_proj.bias",
            "self_attn.k_proj.weight",
            "self_attn.k_proj.bias",
            "self_attn.v_proj.weight",
            "self_attn.v_proj.bias",
            "self_attn.o_proj.weight",
            "post_attention_layernorm.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            expected.push(format!("model.layers.{layer}.{tail}"));
        }
    }
    expected.sort();
    assert_eq!(names, expected);
    assert!(source.shape("blk.0.attn_q.weight").is_none());
    assert!(matches!(
        source.read_f32("blk.0.attn_q.weight"),
        Err(ModelError::MissingTensor { .. })
    ));
}

#[test]
fn qwen2_config_from_metadata() {
    let file = GgufFile::open(fixture("tiny-qwen2.gguf")).unwrap();
    let c = qwen2_config(&file).unwrap();
    assert_eq!(
        c,
        Qwen2Config {
            vocab_size: 40,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 128,
            rms_norm_eps: f64::from(1e-6f32),
            rope_theta: 1e6,
            tie_word_embeddings: false,
        }
    );
}

#[test]
fn the_model_loads_from_gguf_and_reports_the_extra_tensor() {
    let source = GgufSource::open(fixture("tiny-qwen2.gguf")).unwrap();
    let config = source.config().unwrap();
    let device = Default::default();
    // Every Qwen2 tensor is found with the shape the config implies; the one llama.cpp extra is
    // reported as unused under its GGUF name.
    match crate::Qwen2ForCausalLM::<TestBackend>::load(&config, &source, &device) {
        Err(ModelError::UnusedTensors { names }) => assert_eq!(names, ["rope_freqs.weight"]),
        other => panic!("expected UnusedTensors, got {:?}", other.err()),
    }
}

#[test]
fn other_architectures_are_refused() {
    let mut bytes = fixture_bytes("tiny-qwen2.gguf");
    let key = b"general.architecture";
    let at = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // Value type (u32) and string length (u64), then the five bytes of "qwen2".
    assert_eq!(&bytes[at + 12..at + 17], b"qwen2");
    bytes[at + 12..at + 17].copy_from_slice(b"llama");
    let file = GgufFile::from_bytes(bytes, "llama.gguf").unwrap();
    let message = qwen2_config(&file).unwrap_err().to_string();
    assert_eq!(
        message,
        "llama.gguf: general.architecture is \"llama\", but only \"qwen2\" is supported"
    );
}

#[test]
fn truncated_files_are_refused_at_every_length() {
    let bytes = fixture_bytes("quant-samples.gguf");
    let file = GgufFile::from_bytes(bytes.clone(), "whole.gguf").unwrap();
    let data_end = file
        .tensors()
        .iter()
        .map(|t| file.data_start() as usize + t.offset() as usize + t.n_bytes())
        .max()
        .unwrap();
    for cut in 0..data_end {
        let message = open_err(bytes[..cut].to_vec());
        assert!(
            message.contains("truncated") || message.contains("too short"),
            "cut at {cut}: {message}"
        );
    }
    // Only trailing padding may go.
    for cut in data_end..=bytes.len() {
        GgufFile::from_bytes(bytes[..cut].to_vec(), "padded.gguf").unwrap();
    }
}

#[test]
fn truncated_files_on_disk_are_refused() {
    let bytes = fixture_bytes("tiny-qwen2.gguf");
    let dir = std::env::temp_dir();
    for cut in [0, 3, 23, 100, bytes.len() / 2, bytes.len() - 40] {
        let path = dir.join(format!("qwen2-burn-gguf-{}-{cut}.gguf", std::process::id()));
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let result = GgufFile::open(&path);
        std::fs::remove_file(&path).unwrap();
        let message = result.unwrap_err().to_string();
        assert!(
            message.starts_with(&path.display().to_string()),
            "{message}"
        );
    }
    let missing = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(missing, ModelError::Io { .. }));
    assert!(missing.to_string().contains("/nonexistent/model.gguf"));
}

#[test]
fn bad_magic_and_versions_are_refused() {
    let good = fixture_bytes("quant-samples.gguf");
    let mut bytes = good.clone();
    bytes[..4].copy_from_slice(b"GGML");
    assert!(open_err(bytes).contains("not a GGUF file"));
    for (version, expected) in [
        (1u32, "version 1 is not supported"),
        (3u32.swap_bytes(), "big-endian"),
        (7, "unsupported GGUF version 7"),
    ] {
        let mut bytes = good.clone();
        bytes[4..8].copy_from_slice(&version.to_le_bytes());
        let message = open_err(bytes);
        assert!(message.contains(expected), "{message}");
    }
    // Version 2 has the same layout as 3.
    let mut bytes = good;
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(GgufFile::from_bytes(bytes, "v2.gguf").unwrap().version(), 2);
}

#[test]
fn unknown_ggml_types_are_refused_naming_the_tensor() {
    let mut bytes = fixture_bytes("quant-samples.gguf");
    let (ty, _) = type_and_offset_pos(&bytes, "q4_k");
    bytes[ty..ty + 4].copy_from_slice(&99u32.to_le_bytes());
    let message = open_err(bytes);
    assert!(
        message.contains("tensor q4_k has unknown ggml type 99"),
        "{message}"
    );
}

#[test]
fn unsupported_ggml_types_fail_when_read() {
    // Q2_K blocks are smaller than Q4_K's, so the data still lies inside the file.
    let mut bytes = fixture_bytes("quant-samples.gguf");
    let (ty, _) = type_and_offset_pos(&bytes, "q4_k");
    bytes[ty..ty + 4].copy_from_slice(&10u32.to_le_bytes());
    let file = GgufFile::from_bytes(bytes, "q2k.gguf").unwrap();
    assert_eq!(file.tensor("q4_k").unwrap().ggml_type().name(), "Q2_K");
    file.dequantize("q4_0").unwrap();
    let message = file.dequantize("q4_k").unwrap_err().to_string();
    assert!(
        message.starts_with("q2k.gguf: tensor q4_k: stored as Q2_K (ggml type 10)"),
        "{message}"
    );
}

#[test]
fn tensor_data_must_lie_inside_the_file() {
    let good = fixture_bytes("quant-samples.gguf");
    for offset in [1u64 << 40, u64::MAX - 31, 4096] {
        let mut bytes = good.clone();
        let (_, off) = type_and_offset_pos(&bytes, "q6_k");
        bytes[off..off + 8].copy_from_slice(&offset.to_le_bytes());
        let message = open_err(bytes);
        assert!(message.contains("tensor q6_k"), "{message}");
        assert!(
            message.contains("does not lie inside the file"),
            "{message}"
        );
    }
    // An offset off the alignment.
    let mut bytes = good.clone();
    let (_, off) = type_and_offset_pos(&bytes, "q6_k");
    bytes[off] = bytes[off].wrapping_add(2);
    assert!(open_err(bytes).contains("not a multiple of the alignment"));
    // A row length that is not a whole number of blocks.
    let mut bytes = good;
    let at = tensor_entry(&bytes, "q8_0");
    bytes[at + 4..at + 12].copy_from_slice(&63u64.to_le_bytes());
    assert!(open_err(bytes).contains("not a multiple of the block size"));
}

#[test]
fn random_corruption_never_panics() {
    let good = fixture_bytes("quant-samples.gguf");
    let header_len = GgufFile::from_bytes(good.clone(), "g.gguf")
        .unwrap()
        .data_start() as usize;
    // A fixed xorshift stream, so failures reproduce.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let mut bytes = good.clone();
        for _ in 0..1 + next() % 4 {
            let pos = (next() % header_len as u64) as usize;
            bytes[pos] = match next() % 3 {
                0 => next() as u8,
                1 => 0xFF,
                _ => bytes[pos] ^ (1 << (next() % 8)),
            };
        }
        if let Ok(file) = GgufFile::from_bytes(bytes, "fuzz.gguf") {
            let names: Vec<String> = file.tensor_names().map(String::from).collect();
            for name in names {
                let _ = file.dequantize(&name);
            }
            let _ = qwen2_config(&file);
        }
    }
}
