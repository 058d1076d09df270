#!/usr/bin/env python3
"""Writes the GGUF test fixtures of `qwen2-burn` (model/src/load/gguf/) into tests/fixtures/gguf/.

Run with the project's venv, which has the `gguf` package (0.19):

    /var/cache/attrib/venv/bin/python scripts/make_gguf_fixtures.py

It writes:

* `quant-samples.gguf`: one small tensor of each ggml type the Rust reader dequantizes
  (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), plus metadata of every
  GGUF value type (`test.*` keys) for the metadata parser.
* `quant-samples.json`: per tensor, its ggml type, its shape in PyTorch order and the values
  `gguf.quants.dequantize` gives, as float32 bit patterns (u32), so the Rust test is bit-exact.
* `tiny-qwen2.gguf`: a 2-layer Qwen2 with tiny sizes, for the config reader and the name mapping.
  Its f32 tensors hold `base + arange(n)` so a test can check the layout element by element.

The data is deterministic (fixed seed): re-running the script reproduces the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf"

rng = np.random.default_rng(20240611)


def spread(shape: tuple[int, ...]) -> np.ndarray:
    """Normal values scaled by 10^U(-5, 2): a spread of magnitudes, both signs, some exact zeros."""
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-5, 2, size=shape)
    x[rng.random(shape) < 0.03] = 0.0
    return x.astype(np.float32)


def random_f16(n: int) -> np.ndarray:
    """Finite f16 scales: both signs, normal and subnormal magnitudes, and zero."""
    mag = 10.0 ** rng.uniform(-8, 1.5, size=n)
    sign = np.where(rng.random(n) < 0.25, -1.0, 1.0)
    v = (sign * mag).astype(np.float16)
    v[rng.random(n) < 0.05] = 0.0
    assert np.all(np.isfinite(v))
    return v


# Byte offsets of the f16 fields inside one block, per type (block layouts of ggml-common.h).
F16_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def random_blocks(qtype: T, rows: int, cols: int) -> np.ndarray:
    """Random block bytes with finite f16 scale fields: every bit of the quants gets exercised."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_size
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        raw[:, off : off + 2] = random_f16(n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // block_size * type_size)


def quant_samples() -> None:
    w = gguf.GGUFWriter(OUT / "quant-samples.gguf", arch="quant-samples")
    # Metadata of every value type, read back by the Rust metadata test.
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -100)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -30000)
    w.add_uint32("test.u32", 4_000_000_000)
    w.add_int32("test.i32", -2_000_000_000)
    w.add_float32("test.f32", 1.5)
    w.add_bool("test.bool", True)
    w.add_string("test.string", "héllo wörld")
    w.add_uint64("test.u64", 1 << 40)
    w.add_int64("test.i64", -(1 << 40))
    w.add_float64("test.f64", -2.25)
    w.add_array("test.array.i32", [1, -2, 3])
    w.add_array("test.array.f32", [0.5, -1.25])
    w.add_array("test.array.str", ["a", "bc", ""])
    w.add_array("test.array.nested", [[1, 2], [3]])

    expected = []

    def add(name: str, qtype: T, data: np.ndarray) -> None:
        """Adds `data` (already in the storage dtype, numpy = PyTorch shape) and its expectation."""
        if qtype in (T.F32, T.F16):
            w.add_tensor(name, data)
            raw = data.view(np.uint8)
        else:
            w.add_tensor(name, data, raw_dtype=qtype)
            raw = data
        values = dequantize(raw, qtype).astype(np.float32, copy=False)
        expected.append(
            {
                "name": name,
                "type": qtype.name,
                "type_id": int(qtype),
                "shape": list(values.shape),
                "bits": values.view(np.uint32).ravel().tolist(),
            }
        )

    # Plain floats: a 3-D tensor, so the test also sees a dimension order other than 2-D.
    f = spread((2, 3, 16))
    f.flat[:6] = [-0.0, 1e-40, -3e-39, 3.0e38, 1.0, -1.0]  # f32 subnormals and extremes
    add("f32", T.F32, f)
    h = spread((3, 40)).astype(np.float16)
    h.flat[:4] = np.array([-0.0, 6e-8, -3e-5, 65504.0], dtype=np.float32)  # f16 subnormals, max
    add("f16", T.F16, h)
    add("bf16", T.BF16, quantize(spread((4, 24)), T.BF16))

    # Legacy 32-element blocks: rows quantized from real-looking data, plus random-bytes rows.
    for qtype in (T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1):
        q = quantize(spread((3, 64)), qtype)
        q[1, : q.shape[1] // 2] = quantize(np.zeros((1, 32), np.float32), qtype)  # an all-zero block
        add(qtype.name.lower(), qtype, np.concatenate([q, random_blocks(qtype, 2, 64)]))

    # K-quants (256-element super-blocks): gguf 0.19 has no quantizer, so random block bytes.
    for qtype in (T.Q4_K, T.Q5_K, T.Q6_K):
        add(qtype.name.lower(), qtype, random_blocks(qtype, 2, 512))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (OUT / "quant-samples.json").write_text(json.dumps({"tensors": expected}, separators=(",", ":")))


def tiny_qwen2() -> None:
    vocab, hidden, inter, layers, heads, kv_heads = 40, 32, 64, 2, 4, 2
    head_dim = hidden // heads
    w = gguf.GGUFWriter(OUT / "tiny-qwen2.gguf", arch="qwen2")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(1_000_000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(0)

    base = [0.0]

    def ramp(shape: tuple[int, ...]) -> np.ndarray:
        """`base + arange`, with a fresh base per tensor, so every element is identifiable."""
        n = int(np.prod(shape))
        out = (base[0] + np.arange(n, dtype=np.float32)).reshape(shape)
        base[0] += 1000.0
        return out

    w.add_tensor("token_embd.weight", ramp((vocab, hidden)))
    for i in range(layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ramp((hidden,)))
        w.add_tensor(p + "attn_q.weight", ramp((heads * head_dim, hidden)))
        w.add_tensor(p + "attn_q.bias", ramp((heads * head_dim,)))
        w.add_tensor(p + "attn_k.weight", ramp((kv_heads * head_dim, hidden)))
        w.add_tensor(p + "attn_k.bias", ramp((kv_heads * head_dim,)))
        w.add_tensor(p + "attn_v.weight", ramp((kv_heads * head_dim, hidden)))
        w.add_tensor(p + "attn_v.bias", ramp((kv_heads * head_dim,)))
        w.add_tensor(p + "attn_output.weight", ramp((hidden, heads * head_dim)))
        w.add_tensor(p + "ffn_norm.weight", ramp((hidden,)))
        w.add_tensor(p + "ffn_gate.weight", ramp((inter, hidden)))
        w.add_tensor(p + "ffn_up.weight", ramp((inter, hidden)))
        # One quantized projection, as in real files.
        w.add_tensor(p + "ffn_down.weight", quantize(ramp((hidden, inter)) / 1000.0, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("output_norm.weight", ramp((hidden,)))
    w.add_tensor("output.weight", ramp((vocab, hidden)))
    # Not a Qwen2 weight: the source must pass it through under its GGUF name.
    w.add_tensor("rope_freqs.weight", ramp((head_dim // 2,)))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    quant_samples()
    tiny_qwen2()
    for p in sorted(OUT.iterdir()):
        print(f"{p.relative_to(OUT.parent.parent.parent)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
