using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Tests.Checkpoints;

public class SafetensorsRoundTripTests
{
    static readonly DType[] AllDTypes = Enum.GetValues<DType>();

    /// <summary>Random bytes valid for <paramref name="dtype"/>: finite floats of either sign, any integers, 0/1 bools.</summary>
    static byte[] RandomBytes(Random rng, DType dtype, int count)
    {
        var bytes = new byte[count * dtype.Size()];
        switch (dtype)
        {
            case DType.F32:
                for (int i = 0; i < count; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(4 * i), (float)(rng.NextDouble() * 4 - 2));
                break;
            case DType.F64:
                for (int i = 0; i < count; i++) BinaryPrimitives.WriteDoubleLittleEndian(bytes.AsSpan(8 * i), rng.NextDouble() * 4 - 2);
                break;
            case DType.F16:
                for (int i = 0; i < count; i++) BinaryPrimitives.WriteHalfLittleEndian(bytes.AsSpan(2 * i), (Half)(rng.NextDouble() * 4 - 2));
                break;
            case DType.BF16:
                for (int i = 0; i < count; i++) BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(2 * i), FloatConvert.F32ToBF16((float)(rng.NextDouble() * 4 - 2)));
                break;
            case DType.Bool:
                for (int i = 0; i < count; i++) bytes[i] = (byte)rng.Next(2);
                break;
            default:
                rng.NextBytes(bytes);
                break;
        }
        return bytes;
    }

    static double ElementAsDouble(DType dtype, ReadOnlySpan<byte> bytes, int i) => dtype switch
    {
        DType.F32 => BinaryPrimitives.ReadSingleLittleEndian(bytes[(4 * i)..]),
        DType.F64 => BinaryPrimitives.ReadDoubleLittleEndian(bytes[(8 * i)..]),
        DType.F16 => (double)BinaryPrimitives.ReadHalfLittleEndian(bytes[(2 * i)..]),
        DType.BF16 => BitConverter.UInt32BitsToSingle((uint)BinaryPrimitives.ReadUInt16LittleEndian(bytes[(2 * i)..]) << 16),
        DType.I64 => BinaryPrimitives.ReadInt64LittleEndian(bytes[(8 * i)..]),
        DType.I32 => BinaryPrimitives.ReadInt32LittleEndian(bytes[(4 * i)..]),
        DType.I16 => BinaryPrimitives.ReadInt16LittleEndian(bytes[(2 * i)..]),
        DType.I8 => (sbyte)bytes[i],
        _ => bytes[i],
    };

    [Fact]
    public void Every_dtype_round_trips_with_metadata_and_aligned_offsets()
    {
        int seed = CheckpointTestSupport.NewSeed();
        var rng = new Random(seed);
        using var dir = new TempDir();
        var expected = new Dictionary<string, (DType dtype, int[] shape, byte[] bytes)>();
        var writer = new SafetensorsWriter();
        foreach (var dtype in AllDTypes)
        {
            // Odd sizes so that a naive layout would misalign the wider types that follow.
            int[] shape = [rng.Next(1, 5), rng.Next(1, 7), 3];
            int count = shape[0] * shape[1] * shape[2];
            var bytes = RandomBytes(rng, dtype, count);
            string name = $"t.{dtype}";
            expected[name] = (dtype, shape, bytes);
            writer.Add(name, dtype, shape, bytes);
        }
        var scalar = new Tensor([], [(float)rng.NextDouble() + 0.5f]);
        writer.Add("scalar", scalar);
        writer.Add("empty", DType.F32, [0, 4], ReadOnlyMemory<byte>.Empty);
        string path = dir.File("all.safetensors");
        var meta = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode \"quoted\"" };
        writer.Write(path, meta);

        // The header (8 + N bytes) ends on an 8-byte boundary and is padded with spaces.
        byte[] file = File.ReadAllBytes(path);
        ulong n = BitConverter.ToUInt64(file, 0);
        Assert.True((8 + n) % 8 == 0, $"header length {n} (seed {seed})");

        using var st = SafetensorsFile.Open(path);
        Assert.Equal(path, st.Location);
        Assert.Equal(meta, st.Metadata.ToDictionary());
        Assert.Equal(expected.Count + 2, st.Entries.Count);
        foreach (var (name, (dtype, shape, bytes)) in expected)
        {
            var e = st.Entry(name);
            Assert.Equal(dtype, e.DType);
            Assert.Equal(shape, e.Shape);
            Assert.Equal(bytes.Length, e.Length);
            Assert.True(e.Offset % dtype.Size() == 0, $"{name} at offset {e.Offset} is not aligned to {dtype.Size()} (seed {seed})");
            Assert.True(st.RawBytes(name).SequenceEqual(bytes), $"{name} bytes differ (seed {seed})");

            int count = bytes.Length / dtype.Size();
            if (dtype is DType.F32 or DType.F16 or DType.BF16 or DType.F64)
            {
                var t = st.ReadF32(name);
                Assert.Equal(shape, t.Shape);
                for (int i = 0; i < count; i++)
                    Assert.True((float)ElementAsDouble(dtype, bytes, i) == t.Data[i], $"{name}[{i}]: {t.Data[i]} (seed {seed})");
                if (dtype != DType.F64)
                {
                    var w = st.Get(name);
                    Assert.Same(st, w.Owner);
                    for (int i = 0; i < count; i++) Assert.Equal(t.Data[i], w[i]);
                }
                else
                {
                    var ex = Assert.Throws<InvalidDataException>(() => st.Get(name));
                    Assert.Contains(name, ex.Message);
                    Assert.Contains("F64", ex.Message);
                }
            }
            else
            {
                var wide = st.ReadInt64(name);
                for (int i = 0; i < count; i++) Assert.True(ElementAsDouble(dtype, bytes, i) == wide[i], $"{name}[{i}] (seed {seed})");
                var ex = Assert.Throws<InvalidDataException>(() => st.Get(name));
                Assert.Contains(name, ex.Message);
                Assert.Contains(dtype.SafetensorsName(), ex.Message);
                Assert.Throws<InvalidDataException>(() => st.ReadF32(name));
                if (dtype != DType.I64) Assert.Equal(wide.Select(v => (int)v).ToArray(), st.ReadInt32(name));
            }
        }
        Assert.Empty(st.Entry("scalar").Shape);
        Assert.Equal(scalar.Data[0], st.Get("scalar")[0]);
        Assert.Equal(0, st.ReadF32("empty").Length);
        var missing = Assert.Throws<KeyNotFoundException>(() => st.Get("nope"));
        Assert.Contains("nope", missing.Message);
        Assert.Contains(path, missing.Message);
    }

    [Fact]
    public void Int64_values_outside_int32_are_reported_when_narrowed()
    {
        using var dir = new TempDir();
        long[] values = [1, -7, (long)int.MaxValue + 1 + Random.Shared.Next(1000)];
        new SafetensorsWriter().Add("ids", DType.I64, [3], MemoryMarshal.AsBytes(values.AsSpan()).ToArray()).Write(dir.File("i.safetensors"));
        using var st = SafetensorsFile.Open(dir.File("i.safetensors"));
        Assert.Equal(values, st.ReadInt64("ids"));
        var ex = Assert.Throws<InvalidDataException>(() => st.ReadInt32("ids"));
        Assert.Contains("'ids' element 2", ex.Message);
    }

    [Fact]
    public void Streamed_tensor_is_written_chunk_by_chunk_and_overwrites_atomically()
    {
        int seed = CheckpointTestSupport.NewSeed();
        var rng = new Random(seed);
        using var dir = new TempDir();
        string path = dir.File("s.safetensors");
        File.WriteAllText(path, "old contents");

        int rows = 37, cols = 129;
        var expected = new float[rows * cols];
        for (int i = 0; i < expected.Length; i++) expected[i] = (float)rng.NextDouble() - 0.5f;
        var w = new SafetensorsWriter();
        w.AddStreamed("big", DType.F32, [rows, cols], s =>
        {
            for (int r = 0; r < rows; r++) s.Write(MemoryMarshal.AsBytes(expected.AsSpan(r * cols, cols)));
        });
        w.Write(path);
        Assert.Single(Directory.GetFiles(dir.Path)); // no temporary file left behind
        using var st = SafetensorsFile.Open(path);
        Assert.Equal(expected, st.ReadF32("big").Data);
    }

    [Fact]
    public void Producer_that_writes_the_wrong_byte_count_fails_and_leaves_no_file()
    {
        using var dir = new TempDir();
        var w = new SafetensorsWriter().AddStreamed("short", DType.BF16, [4, 4], s => s.Write(new byte[30]));
        var ex = Assert.Throws<InvalidOperationException>(() => w.Write(dir.File("x.safetensors")));
        Assert.Contains("'short'", ex.Message);
        Assert.Contains("30", ex.Message);
        Assert.Contains("32", ex.Message);
        Assert.Empty(Directory.GetFiles(dir.Path));
    }

    [Fact]
    public void Writer_rejects_bad_tensors_by_name()
    {
        var w = new SafetensorsWriter().Add("a", new Tensor(2, 2));
        Assert.Contains("'a'", Assert.Throws<ArgumentException>(() => w.Add("a", new Tensor(1))).Message);
        Assert.Contains("'b'", Assert.Throws<ArgumentException>(() => w.Add("b", DType.F16, [3], new byte[5])).Message);
        Assert.Contains("'c'", Assert.Throws<ArgumentException>(() => w.Add("c", DType.F32, [-1], Array.Empty<byte>())).Message);
        Assert.Throws<ArgumentException>(() => w.Add("__metadata__", new Tensor(1)));
    }

    [Fact]
    public void Header_is_plain_json_with_offsets_in_layout_order()
    {
        using var dir = new TempDir();
        var w = new SafetensorsWriter()
            .Add("b16", DType.BF16, [3], new byte[6])
            .Add("f64", DType.F64, [1], new byte[8])
            .Add("i8", DType.I8, [5], new byte[5])
            .Add("f32", new Tensor(2));
        w.Write(dir.File("h.safetensors"));
        byte[] file = File.ReadAllBytes(dir.File("h.safetensors"));
        int n = (int)BitConverter.ToUInt64(file, 0);
        string header = Encoding.UTF8.GetString(file, 8, n);
        Assert.StartsWith("{", header);
        Assert.EndsWith("}", header.TrimEnd(' '));
        using var st = SafetensorsFile.Open(dir.File("h.safetensors"));
        Assert.Equal(["f64", "f32", "b16", "i8"], st.Names.ToArray()); // widest element first
        Assert.Equal(8 + n + 8 + 8 + 6 + 5, file.Length);
    }
}
