"""A small safetensors reader/writer in pure Python + torch (no safetensors package needed).

File layout: 8-byte little-endian uint64 N, then N bytes of UTF-8 JSON header, then the raw
little-endian tensor data. The header maps each tensor name to
{"dtype": "F32", "shape": [..], "data_offsets": [begin, end]} where the offsets are relative to
the first byte after the header; an optional "__metadata__" maps strings to strings. We pad the
header with spaces so that 8 + N is a multiple of 8, and write the tensors back to back in the
order given (no gaps), which is what the Rust library checks when it reads a file.

Functions:
  read_header(path)                -> (header dict without __metadata__, metadata dict, data_start)
  load(path, names=None)           -> {name: tensor}   (tensors in their stored dtype)
  save(path, tensors, metadata)    -> writes one file
  StreamingWriter(path, specs)     -> header first, then .write(name, tensor) in spec order;
                                      lets `make` produce multi-GB files without holding them.
"""

import ctypes
import json
import struct

import torch

DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def element_size(dtype_name):
    return torch.empty((), dtype=DTYPES[dtype_name]).element_size()


def numel(shape):
    n = 1
    for s in shape:
        n *= int(s)
    return n


def read_header(path):
    """Returns (tensors: {name: {dtype, shape, data_offsets}}, metadata: dict, data_start: int)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: file shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"{path}: header length {n} is implausible")
        header = json.loads(f.read(n).decode("utf-8"))
    metadata = header.pop("__metadata__", {}) or {}
    for name, info in header.items():
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        if end - begin != numel(info["shape"]) * element_size(info["dtype"]):
            raise ValueError(f"{path}: tensor {name} byte range does not match its shape and dtype")
    return header, metadata, 8 + n


def _tensor_bytes_view(t):
    """A writable ctypes byte array over a contiguous CPU tensor's memory (no copy)."""
    return (ctypes.c_char * (t.numel() * t.element_size())).from_address(t.data_ptr())


def load(path, names=None):
    """Loads tensors (all, or those in `names`) in their stored dtype."""
    header, _, data_start = read_header(path)
    out = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            if names is not None and name not in names:
                continue
            shape = [int(s) for s in info["shape"]]
            t = torch.empty(shape, dtype=DTYPES[info["dtype"]])
            nbytes = t.numel() * t.element_size()
            if nbytes:
                f.seek(data_start + info["data_offsets"][0])
                got = f.readinto(_tensor_bytes_view(t))
                if got != nbytes:
                    raise ValueError(f"{path}: tensor {name} is truncated")
            out[name] = t
    return out


def _tensor_to_bytes(t):
    t = t.detach().contiguous().cpu()
    n = t.numel() * t.element_size()
    return ctypes.string_at(t.data_ptr(), n) if n else b""


def _header_bytes(specs, metadata):
    """specs: list of (name, dtype_name, shape). Returns (padded header bytes, {name: (begin, end)})."""
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offsets = {}
    pos = 0
    for name, dtype_name, shape in specs:
        nbytes = numel(shape) * element_size(dtype_name)
        header[name] = {"dtype": dtype_name, "shape": [int(s) for s in shape], "data_offsets": [pos, pos + nbytes]}
        offsets[name] = (pos, pos + nbytes)
        pos += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - (8 + len(raw)) % 8) % 8)
    return raw, offsets


class StreamingWriter:
    """Writes the header from specs [(name, dtype_name, shape)], then tensors one at a time in order."""

    def __init__(self, path, specs, metadata=None):
        self.path = path
        self.specs = list(specs)
        raw, self.offsets = _header_bytes(self.specs, metadata)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(raw)))
        self.f.write(raw)
        self.next_index = 0

    def write(self, name, tensor):
        exp_name, exp_dtype, exp_shape = self.specs[self.next_index]
        if name != exp_name or DTYPE_NAMES[tensor.dtype] != exp_dtype or list(tensor.shape) != list(exp_shape):
            raise ValueError(f"{self.path}: expected {exp_name} {exp_dtype} {exp_shape}, got {name} "
                             f"{DTYPE_NAMES.get(tensor.dtype)} {list(tensor.shape)}")
        self.f.write(_tensor_to_bytes(tensor))
        self.next_index += 1

    def close(self):
        if self.next_index != len(self.specs):
            raise ValueError(f"{self.path}: only {self.next_index} of {len(self.specs)} tensors written")
        self.f.close()


def save(path, tensors, metadata=None):
    """tensors: {name: tensor} (insertion order is the file order)."""
    specs = [(name, DTYPE_NAMES[t.dtype], list(t.shape)) for name, t in tensors.items()]
    w = StreamingWriter(path, specs, metadata)
    for name, t in tensors.items():
        w.write(name, t)
    w.close()
