using System.Runtime.InteropServices;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Saes.Training;

/// <summary>
/// Activations stored as one safetensors tensor [N, d_in] (or [..., d_in], flattened to rows) in F32, F16 or
/// BF16, read through the memory mapping and converted to float32 a batch at a time.
/// </summary>
public sealed unsafe class CachedActivationSource : IActivationSource, IDisposable
{
    readonly SafetensorsFile _file;
    readonly WeightTensor _tensor;
    readonly string _path, _name;
    long _position;

    /// <summary>Total rows in the file.</summary>
    public long Rows { get; }
    public int DIn { get; }
    public long Position => _position;

    public CachedActivationSource(string safetensorsPath, string tensorName = "activations")
    {
        _path = safetensorsPath; _name = tensorName;
        _file = SafetensorsFile.Open(safetensorsPath);
        try
        {
            if (!_file.Contains(tensorName))
                throw new InvalidDataException($"{safetensorsPath}: no tensor '{tensorName}' (tensors: {string.Join(", ", _file.Names.Take(8))})");
            var e = _file.Entry(tensorName);
            if (!e.DType.IsWeightFloat())
                throw new InvalidDataException($"{safetensorsPath}: tensor '{tensorName}' has dtype {e.DType.SafetensorsName()}, expected F32, F16 or BF16");
            if (e.Shape.Length < 2 || e.Shape[^1] <= 0)
                throw new InvalidDataException($"{safetensorsPath}: tensor '{tensorName}' has shape [{string.Join(", ", e.Shape)}], expected [N, d_in]");
            _tensor = _file.Get(tensorName);
            DIn = e.Shape[^1];
            Rows = e.ElementCount / DIn;
        }
        catch
        {
            _file.Dispose();
            throw;
        }
    }

    public int Next(Span<float> batch, int maxRows)
    {
        if (maxRows < 0) throw new ArgumentOutOfRangeException(nameof(maxRows), $"maxRows must be >= 0, got {maxRows}");
        int rows = (int)Math.Min(maxRows, Rows - _position);
        if (rows <= 0) return 0;
        if (batch.Length < (long)rows * DIn) throw new ArgumentException($"batch holds {batch.Length} values, {rows} rows of {DIn} need {(long)rows * DIn}");
        byte* src = _tensor.Pointer + _position * DIn * _tensor.DType.Size();
        FloatConvert.ToF32(_tensor.DType, src, batch, rows * DIn);
        _position += rows;
        return rows;
    }

    public void Seek(long position)
    {
        if (position < 0 || position > Rows) throw new ArgumentOutOfRangeException(nameof(position), $"{_path}: position {position} is outside [0, {Rows}]");
        _position = position;
    }

    public string Describe() => $"cached activations {_path}:{_name} [{Rows}, {DIn}] {_tensor.DType.SafetensorsName()}";

    public void Dispose() => _file.Dispose();

    /// <summary>
    /// Writes the next <paramref name="tokens"/> rows of <paramref name="source"/> to <paramref name="path"/> as an F32
    /// tensor [tokens, d_in] (atomically). Throws if the source ends first (and leaves no file).
    /// </summary>
    public static void Write(string path, IActivationSource source, long tokens, string tensorName = "activations")
    {
        ArgumentNullException.ThrowIfNull(source);
        if (tokens <= 0 || tokens > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(tokens), $"tokens must be in [1, {int.MaxValue}], got {tokens}");
        int d = source.DIn;
        var w = new SafetensorsWriter();
        w.AddStreamed(tensorName, DType.F32, [(int)tokens, d], stream =>
        {
            const int Chunk = 4096;
            var buf = new float[(long)Chunk * d];
            long left = tokens;
            while (left > 0)
            {
                int got = source.Next(buf, (int)Math.Min(Chunk, left));
                if (got == 0)
                    throw new InvalidDataException($"{source.Describe()} ended after {tokens - left} rows; {tokens} were requested for {path}");
                stream.Write(MemoryMarshal.AsBytes(buf.AsSpan(0, got * d)));
                left -= got;
            }
        });
        w.Write(path, new Dictionary<string, string> { ["source"] = source.Describe() });
    }
}
