using System.Runtime.InteropServices;
using System.Text.Json;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Checkpoints;

/// <summary>
/// Collects tensors and writes them as one safetensors file. Tensors are ordered by element size
/// (largest first) then name, so each one starts at a multiple of its element size; the header is
/// padded with spaces to a multiple of 8 bytes. The file appears atomically: it is written to a
/// temporary file in the same folder and moved over <c>path</c> only when complete.
/// Data is produced at write time, so a streamed tensor never has to exist in memory as a whole.
/// </summary>
public sealed class SafetensorsWriter
{
    sealed record Pending(string Name, DType DType, int[] Shape, long Length, Action<Stream> Write);

    readonly List<Pending> _tensors = new();
    readonly HashSet<string> _names = new(StringComparer.Ordinal);

    /// <summary>Number of tensors added so far.</summary>
    public int Count => _tensors.Count;

    /// <summary>Bytes of tensor data added so far (excluding the header).</summary>
    public long DataBytes => _tensors.Sum(t => t.Length);

    /// <summary>Adds a float32 tensor. Its data is read when <see cref="Write"/> runs.</summary>
    public SafetensorsWriter Add(string name, Tensor t)
    {
        ArgumentNullException.ThrowIfNull(t);
        var data = t.Data;
        return AddStreamed(name, DType.F32, t.Shape, s => s.Write(MemoryMarshal.AsBytes(data.AsSpan())));
    }

    /// <summary>Adds a tensor of any dtype from its raw little-endian bytes (length must be product(shape) × size(dtype)).</summary>
    public SafetensorsWriter Add(string name, DType dtype, int[] shape, ReadOnlyMemory<byte> data)
    {
        long expected = ByteLength(name, dtype, shape);
        if (data.Length != expected)
            throw new ArgumentException($"tensor '{name}': {data.Length} bytes given, expected {expected} for {dtype.SafetensorsName()} shape [{string.Join(",", shape)}]");
        return AddStreamed(name, dtype, shape, s => s.Write(data.Span));
    }

    /// <summary>
    /// Adds a tensor whose bytes <paramref name="write"/> produces when the file is written (e.g. chunk by
    /// chunk). It must write exactly product(shape) × size(dtype) bytes; any other count is an error naming the tensor.
    /// </summary>
    public SafetensorsWriter AddStreamed(string name, DType dtype, int[] shape, Action<Stream> write)
    {
        ArgumentNullException.ThrowIfNull(write);
        long length = ByteLength(name, dtype, shape);
        if (string.IsNullOrEmpty(name)) throw new ArgumentException("tensor name must not be empty", nameof(name));
        if (name == "__metadata__") throw new ArgumentException("'__metadata__' is reserved and cannot name a tensor", nameof(name));
        if (!_names.Add(name)) throw new ArgumentException($"tensor '{name}' was already added", nameof(name));
        _tensors.Add(new Pending(name, dtype, (int[])shape.Clone(), length, write));
        return this;
    }

    static long ByteLength(string name, DType dtype, int[] shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        long n = 1;
        foreach (int d in shape)
        {
            if (d < 0) throw new ArgumentException($"tensor '{name}': negative dimension in shape [{string.Join(",", shape)}]");
            n = checked(n * d);
        }
        return checked(n * dtype.Size());
    }

    /// <summary>Writes the file (atomically replacing any existing one) with optional <c>__metadata__</c>.</summary>
    public void Write(string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        path = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(path)!;
        Directory.CreateDirectory(dir);

        var ordered = _tensors
            .OrderByDescending(t => t.DType.Size())
            .ThenBy(t => t.Name, StringComparer.Ordinal)
            .ToList();
        byte[] header = BuildHeader(ordered, metadata);

        string temp = Path.Combine(dir, $".{Path.GetFileName(path)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var file = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 20))
            {
                Span<byte> len = stackalloc byte[8];
                BitConverter.TryWriteBytes(len, (ulong)header.Length);
                file.Write(len);
                file.Write(header);
                foreach (var t in ordered)
                {
                    var counter = new CountingStream(file);
                    t.Write(counter);
                    if (counter.Written != t.Length)
                        throw new InvalidOperationException(
                            $"{path}: tensor '{t.Name}' wrote {counter.Written} bytes, expected {t.Length} for {t.DType.SafetensorsName()} shape [{string.Join(",", t.Shape)}]");
                }
                file.Flush(flushToDisk: false);
            }
            File.Move(temp, path, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>The JSON header for tensors laid out in <paramref name="ordered"/> order, space-padded to a multiple of 8 bytes.</summary>
    static byte[] BuildHeader(List<Pending> ordered, IReadOnlyDictionary<string, string>? metadata)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var kv in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal)) w.WriteString(kv.Key, kv.Value);
                w.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in ordered)
            {
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", t.DType.SafetensorsName());
                w.WriteStartArray("shape");
                foreach (int d in t.Shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + t.Length);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += t.Length;
            }
            w.WriteEndObject();
        }
        int pad = (int)((8 - (ms.Length % 8)) % 8);
        for (int i = 0; i < pad; i++) ms.WriteByte((byte)' ');
        return ms.ToArray();
    }

    /// <summary>Forwards writes to the file and counts them, so a producer that writes too much or too little is caught.</summary>
    sealed class CountingStream(Stream inner) : Stream
    {
        public long Written { get; private set; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => Written;
        public override long Position { get => Written; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
        public override void Write(ReadOnlySpan<byte> buffer)
        {
            inner.Write(buffer);
            Written += buffer.Length;
        }
        public override void WriteByte(byte value) { inner.WriteByte(value); Written++; }
    }
}
