using System.Buffers.Binary;
using System.Globalization;
using System.Text.Json;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Tests.Checkpoints;

/// <summary>
/// Files cross the language boundary both ways: a safetensors file laid out by PyTorch (a small
/// struct + json writer, as the safetensors package does it) is read here, and a file written here is
/// parsed by Python with torch.frombuffer and its values compared.
/// </summary>
public class SafetensorsPythonInteropTests
{
    const string TorchWriter = """
import ctypes, json, struct, sys
import torch

out, seed = sys.argv[1], int(sys.argv[2])
g = torch.Generator().manual_seed(seed)
tensors = {
    "f32": torch.randn(3, 5, generator=g),
    "f16": torch.randn(7, generator=g).to(torch.float16),
    "bf16": torch.randn(2, 3, 4, generator=g).to(torch.bfloat16),
    "f64": torch.randn(4, generator=g, dtype=torch.float64),
    "i64": torch.randint(-2**40, 2**40, (5,), generator=g, dtype=torch.int64),
    "i32": torch.randint(-2**31, 2**31 - 1, (2, 2), generator=g, dtype=torch.int32),
    "i16": torch.randint(-2**15, 2**15 - 1, (3,), generator=g, dtype=torch.int16),
    "i8": torch.randint(-128, 127, (9,), generator=g, dtype=torch.int8),
    "u8": torch.randint(0, 255, (6,), generator=g, dtype=torch.uint8),
    "mask": torch.randint(0, 2, (4,), generator=g).bool(),
    "scalar": torch.tensor(1.5 + seed % 7),
}
names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
         torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
         torch.uint8: "U8", torch.bool: "BOOL"}
# Largest element size first, as the safetensors package orders them, then by name.
order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
header, blobs, offset = {"__metadata__": {"format": "pt", "seed": str(seed)}}, [], 0
for k in order:
    t = tensors[k].contiguous()
    n = t.numel() * t.element_size()
    blobs.append(ctypes.string_at(t.data_ptr(), n))
    header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
    offset += n
text = json.dumps(header, separators=(",", ":")).encode()
text += b" " * ((8 - len(text) % 8) % 8)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(text)))
    f.write(text)
    for b in blobs:
        f.write(b)
expected = {k: {"shape": list(v.shape), "values": [float(x) if v.is_floating_point() else int(x) for x in v.flatten().tolist()]}
            for k, v in tensors.items()}
print(json.dumps(expected))
""";

    const string TorchReader = """
import json, struct, sys
import torch

path = sys.argv[1]
dtypes = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
          "U8": torch.uint8, "BOOL": torch.bool}
raw = open(path, "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
assert (8 + n) % 8 == 0, "header not padded to 8 bytes"
header = json.loads(raw[8:8 + n].decode("utf-8"))
meta = header.pop("__metadata__", {})
data = bytearray(raw[8 + n:])
ranges = sorted(tuple(v["data_offsets"]) for v in header.values())
assert ranges[0][0] == 0 and ranges[-1][1] == len(data), "data section not fully covered"
for (a0, a1), (b0, b1) in zip(ranges, ranges[1:]):
    assert a1 == b0, "gap or overlap between tensors"
out = {"metadata": meta, "tensors": {}}
for name, info in header.items():
    b, e = info["data_offsets"]
    dt = dtypes[info["dtype"]]
    t = torch.frombuffer(data[b:e], dtype=dt) if e > b else torch.empty(0, dtype=dt)
    t = t.reshape(info["shape"])
    out["tensors"][name] = {"dtype": info["dtype"], "shape": list(t.shape),
                            "values": [float(x) if t.is_floating_point() else int(x) for x in t.flatten().tolist()]}
print(json.dumps(out))
""";

    [Fact]
    public void Reads_a_file_written_with_torch()
    {
        int seed = CheckpointTestSupport.NewSeed() % 1_000_000;
        using var dir = new TempDir();
        string path = dir.File("torch.safetensors");
        using var expected = JsonDocument.Parse(CheckpointTestSupport.RunPython(TorchWriter, path, seed.ToString(CultureInfo.InvariantCulture)));

        using var st = SafetensorsFile.Open(path);
        Assert.Equal(seed.ToString(CultureInfo.InvariantCulture), st.Metadata["seed"]);
        Assert.Equal(11, st.Entries.Count);
        foreach (var prop in expected.RootElement.EnumerateObject())
        {
            string name = prop.Name;
            int[] shape = prop.Value.GetProperty("shape").EnumerateArray().Select(x => x.GetInt32()).ToArray();
            var values = prop.Value.GetProperty("values");
            Assert.Equal(shape, st.Entry(name).Shape);
            if (st.Entry(name).DType is DType.F32 or DType.F16 or DType.BF16 or DType.F64)
            {
                var t = st.ReadF32(name);
                int i = 0;
                foreach (var v in values.EnumerateArray())
                {
                    Assert.True((float)v.GetDouble() == t.Data[i], $"{name}[{i}] = {t.Data[i]}, torch {v.GetDouble()} (seed {seed})");
                    i++;
                }
                Assert.Equal(i, t.Length);
            }
            else
            {
                var ints = st.ReadInt64(name);
                Assert.Equal(values.EnumerateArray().Select(v => v.GetInt64()).ToArray(), ints);
            }
        }
        // The bf16 view is zero-copy and agrees with the converted copy.
        var w = st.Get("bf16");
        Assert.Equal(DType.BF16, w.DType);
        Assert.Equal(st.ReadF32("bf16").Data, w.ToArray());
    }

    [Fact]
    public void Torch_reads_a_file_written_here()
    {
        int seed = CheckpointTestSupport.NewSeed();
        var rng = new Random(seed);
        using var dir = new TempDir();
        string path = dir.File("ours.safetensors");

        var f32 = new Tensor(4, 3);
        for (int i = 0; i < f32.Length; i++) f32.Data[i] = (float)(rng.NextDouble() * 2 - 1);
        var bf16 = new byte[2 * 10];
        var f16 = new byte[2 * 5];
        var i64 = new byte[8 * 3];
        var boolean = new byte[6];
        var bf16Values = new float[10];
        var f16Values = new float[5];
        var i64Values = new long[3];
        for (int i = 0; i < 10; i++)
        {
            ushort bits = FloatConvert.F32ToBF16((float)(rng.NextDouble() * 8 - 4));
            BinaryPrimitives.WriteUInt16LittleEndian(bf16.AsSpan(2 * i), bits);
            bf16Values[i] = BitConverter.UInt32BitsToSingle((uint)bits << 16);
        }
        for (int i = 0; i < 5; i++)
        {
            var h = (Half)(rng.NextDouble() * 100 - 50);
            BinaryPrimitives.WriteHalfLittleEndian(f16.AsSpan(2 * i), h);
            f16Values[i] = (float)h;
        }
        for (int i = 0; i < 3; i++)
        {
            i64Values[i] = rng.NextInt64(long.MinValue / 2, long.MaxValue / 2);
            BinaryPrimitives.WriteInt64LittleEndian(i64.AsSpan(8 * i), i64Values[i]);
        }
        for (int i = 0; i < boolean.Length; i++) boolean[i] = (byte)rng.Next(2);

        new SafetensorsWriter()
            .Add("model.w", f32)
            .Add("model.bf16", DType.BF16, [2, 5], bf16)
            .Add("model.f16", DType.F16, [5], f16)
            .Add("ids", DType.I64, [3], i64)
            .Add("mask", DType.Bool, [2, 3], boolean)
            .Write(path, new Dictionary<string, string> { ["format"] = "pt", ["seed"] = seed.ToString(CultureInfo.InvariantCulture) });

        using var doc = JsonDocument.Parse(CheckpointTestSupport.RunPython(TorchReader, path));
        var root = doc.RootElement;
        Assert.Equal(seed.ToString(CultureInfo.InvariantCulture), root.GetProperty("metadata").GetProperty("seed").GetString());
        var tensors = root.GetProperty("tensors");

        void Floats(string name, string dtype, int[] shape, float[] expected)
        {
            var t = tensors.GetProperty(name);
            Assert.Equal(dtype, t.GetProperty("dtype").GetString());
            Assert.Equal(shape, t.GetProperty("shape").EnumerateArray().Select(x => x.GetInt32()).ToArray());
            var got = t.GetProperty("values").EnumerateArray().Select(v => (float)v.GetDouble()).ToArray();
            Assert.True(expected.SequenceEqual(got), $"{name}: torch read [{string.Join(", ", got)}], wrote [{string.Join(", ", expected)}] (seed {seed})");
        }
        Floats("model.w", "F32", [4, 3], f32.Data);
        Floats("model.bf16", "BF16", [2, 5], bf16Values);
        Floats("model.f16", "F16", [5], f16Values);
        Assert.Equal(i64Values, tensors.GetProperty("ids").GetProperty("values").EnumerateArray().Select(v => v.GetInt64()).ToArray());
        Assert.Equal(boolean.Select(b => (long)b).ToArray(), tensors.GetProperty("mask").GetProperty("values").EnumerateArray().Select(v => v.GetInt64()).ToArray());
    }
}
