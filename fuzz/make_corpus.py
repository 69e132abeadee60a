#!/usr/bin/env python3
"""Writes the fuzzer's seed corpus (fuzz/corpus/): a few valid safetensors files and a few
broken ones. Standard library only; the bytes are laid out here independently of seqnn's
writer. Run from anywhere: python3 fuzz/make_corpus.py"""
import json
import os
import struct

SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
         "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}


def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, raw bytes)] laid out in the order given."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def with_header(text, data=b""):
    return struct.pack("<Q", len(text)) + text.encode() + data


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
    os.makedirs(out, exist_ok=True)
    small = safetensors(
        [("w", "F32", [2, 2], struct.pack("<4f", 1.0, 2.0, -0.5, 0.25)),
         ("b", "F16", [2], struct.pack("<2H", 0x3C00, 0xC000))],
        metadata={"format": "pt"})
    every = [(f"t_{d.lower()}", d, [2], bytes(range(1, 2 * SIZES[d] + 1)) if d != "BOOL" else b"\x01\x00")
             for d in sorted(SIZES, key=lambda d: -SIZES[d])]
    files = {
        "valid_f32_f16": small,
        "valid_every_dtype": safetensors(every),
        "valid_empty": safetensors([]),
        "valid_scalar_and_empty": safetensors(
            [("s", "F64", [], struct.pack("<d", 0.5)), ("z", "F32", [0, 3], b"")], pad=False),
        "valid_state_dict": safetensors(
            [("weight", "F32", [2, 3], struct.pack("<6f", *range(6))),
             ("bias", "BF16", [3], struct.pack("<3H", 0x3F80, 0x4049, 0xC000))],
            metadata={"format": "pt", "epoch": "3"}),
        "broken_truncated": small[:-3],
        "broken_header_length_past_end": struct.pack("<Q", 1000) + small[8:],
        "broken_overlap": with_header(
            '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
            '"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}', bytes(12)),
        "broken_duplicate_key": with_header(
            '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', bytes(4)),
        "broken_shape_bytes_mismatch": with_header(
            '{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}', bytes(8)),
        "broken_not_an_object": with_header('[{"dtype":"F32"}]'),
        # Many entries: a parse that rescans the header at each entry is quadratic in them.
        "valid_many_entries": safetensors(
            [("w", "F32", [1], struct.pack("<f", 1.0))],
            metadata={f"k{i}": "" for i in range(4000)}),
        "broken_many_entries_duplicate": with_header(
            '{"__metadata__":{' + ",".join(f'"k{i % 3999}":""' for i in range(4000)) + "}}"),
    }
    for name, content in files.items():
        with open(os.path.join(out, name + ".safetensors"), "wb") as f:
            f.write(content)


if __name__ == "__main__":
    main()
