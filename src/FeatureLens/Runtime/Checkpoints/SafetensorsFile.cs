using System.Text.Json;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Checkpoints;

/// <summary>One tensor described by a safetensors header.</summary>
/// <param name="Name">The tensor's key in the header.</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions, outermost first (empty for a scalar).</param>
/// <param name="Offset">First byte, counted from the start of the data section (the header's data_offsets[0]).</param>
/// <param name="Length">Bytes: product(Shape) × size(DType).</param>
public sealed record SafetensorsEntry(string Name, DType DType, int[] Shape, long Offset, long Length)
{
    /// <summary>Number of elements: product of <see cref="Shape"/>.</summary>
    public long ElementCount => Length / DType.Size();
}

/// <summary>
/// A safetensors file, memory-mapped read-only. Layout: u64 little-endian header length N, N bytes of
/// JSON header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {string: string}},
/// then the data section that the offsets index. The whole header is validated on open, so every
/// tensor returned later is known to lie inside the file. Views from <see cref="Get"/> point into the
/// mapping and keep this object alive through <see cref="WeightTensor.Owner"/>.
/// </summary>
public sealed unsafe class SafetensorsFile : ITensorSource
{
    /// <summary>Largest header accepted (the reference implementation's limit).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    readonly MappedFile _file;
    readonly Dictionary<string, SafetensorsEntry> _byName;
    readonly long _dataStart; // 8 + header length

    /// <summary>The file's path.</summary>
    public string Location { get; }
    /// <summary>The optional <c>__metadata__</c> map (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }
    /// <summary>All tensors, in the order of their data offsets.</summary>
    public IReadOnlyList<SafetensorsEntry> Entries { get; }
    /// <summary>Total bytes of the file.</summary>
    public long FileLength { get; }

    SafetensorsFile(string path, MappedFile file, long dataStart, List<SafetensorsEntry> entries, Dictionary<string, string> metadata)
    {
        Location = path; _file = file; FileLength = file.Length; _dataStart = dataStart;
        Entries = entries;
        _byName = entries.ToDictionary(e => e.Name, StringComparer.Ordinal);
        Metadata = metadata;
    }

    /// <summary>Maps <paramref name="path"/> and validates its header; throws <see cref="InvalidDataException"/> naming the file and tensor on any inconsistency.</summary>
    public static SafetensorsFile Open(string path)
    {
        path = Path.GetFullPath(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"safetensors file not found: {path}", path);
        var stream = MappedFile.OpenRead(path);
        long length = stream.Length;
        if (length < 8)
        {
            stream.Dispose();
            throw new InvalidDataException($"{path}: file has {length} bytes, expected at least 8 (the u64 header length of a safetensors file)");
        }
        var file = MappedFile.Map(path, stream);
        try
        {
            byte* p = file.Pointer;
            var (dataStart, entries, metadata) = ParseHeader(path, new ReadOnlySpan<byte>(p, 8), p, length);
            return new SafetensorsFile(path, file, dataStart, entries, metadata);
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    static (long dataStart, List<SafetensorsEntry> entries, Dictionary<string, string> metadata) ParseHeader(
        string path, ReadOnlySpan<byte> lengthBytes, byte* file, long fileLength)
    {
        ulong headerLen = BitConverter.ToUInt64(lengthBytes); // safetensors is little-endian; so is every platform .NET runs on here
        if (headerLen > MaxHeaderBytes)
            throw new InvalidDataException($"{path}: header length {headerLen} exceeds the {MaxHeaderBytes}-byte limit (not a safetensors file, or corrupt)");
        if ((long)headerLen > fileLength - 8)
            throw new InvalidDataException($"{path}: header length {headerLen} is larger than the {fileLength - 8} bytes after the length field (file truncated?)");
        long dataStart = 8 + (long)headerLen;
        long dataLength = fileLength - dataStart;

        var headerBytes = new ReadOnlySpan<byte>(file + 8, (int)headerLen).ToArray();
        JsonDocument doc;
        try { doc = JsonDocument.Parse(headerBytes); }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: header is not valid JSON ({e.Message})", e);
        }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{path}: header must be a JSON object, found {doc.RootElement.ValueKind}");

            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            var entries = new List<SafetensorsEntry>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (!seen.Add(prop.Name))
                    throw new InvalidDataException($"{path}: header key '{prop.Name}' appears more than once");
                if (prop.Name == "__metadata__")
                {
                    ParseMetadata(path, prop.Value, metadata);
                    continue;
                }
                entries.Add(ParseEntry(path, prop.Name, prop.Value, dataLength));
            }

            // No two tensors may share bytes. Sort by begin; each must start at or after the previous end.
            entries.Sort((a, b) => a.Offset != b.Offset ? a.Offset.CompareTo(b.Offset) : a.Length.CompareTo(b.Length));
            for (int i = 1; i < entries.Count; i++)
            {
                var prev = entries[i - 1];
                var cur = entries[i];
                if (cur.Offset < prev.Offset + prev.Length)
                    throw new InvalidDataException(
                        $"{path}: tensor '{cur.Name}' (bytes {cur.Offset}..{cur.Offset + cur.Length}) overlaps tensor '{prev.Name}' (bytes {prev.Offset}..{prev.Offset + prev.Length}); expected disjoint data_offsets");
            }
            return (dataStart, entries, metadata);
        }
    }

    static void ParseMetadata(string path, JsonElement value, Dictionary<string, string> metadata)
    {
        if (value.ValueKind == JsonValueKind.Null) return;
        if (value.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: '__metadata__' must be an object of string values, found {value.ValueKind}");
        foreach (var m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
                throw new InvalidDataException($"{path}: '__metadata__' entry '{m.Name}' must be a string, found {m.Value.ValueKind}");
            metadata[m.Name] = m.Value.GetString()!;
        }
    }

    static SafetensorsEntry ParseEntry(string path, string name, JsonElement e, long dataLength)
    {
        string Where() => $"{path}: tensor '{name}'";
        if (e.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{Where()}: expected an object with dtype, shape and data_offsets, found {e.ValueKind}");

        if (!e.TryGetProperty("dtype", out var dtypeEl) || dtypeEl.ValueKind != JsonValueKind.String)
            throw new InvalidDataException($"{Where()}: missing string field 'dtype'");
        string dtypeName = dtypeEl.GetString()!;
        if (!DTypeInfo.TryParseSafetensors(dtypeName, out var dtype))
            throw new InvalidDataException($"{Where()}: unsupported dtype '{dtypeName}' (expected one of F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL)");

        if (!e.TryGetProperty("shape", out var shapeEl) || shapeEl.ValueKind != JsonValueKind.Array)
            throw new InvalidDataException($"{Where()}: missing array field 'shape'");
        var shape = new int[shapeEl.GetArrayLength()];
        long count = 1;
        int k = 0;
        foreach (var d in shapeEl.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt32(out int dim) || dim < 0)
                throw new InvalidDataException($"{Where()}: shape [{string.Join(",", shapeEl.EnumerateArray())}] must hold non-negative 32-bit integers");
            shape[k++] = dim;
            // Guard the product: no legal file holds more bytes than long.MaxValue.
            if (dim != 0 && count > long.MaxValue / 8 / dim)
                throw new InvalidDataException($"{Where()}: shape [{string.Join(",", shapeEl.EnumerateArray())}] has too many elements");
            count *= dim;
        }

        if (!e.TryGetProperty("data_offsets", out var offEl) || offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
            throw new InvalidDataException($"{Where()}: missing field 'data_offsets' (expected [begin, end])");
        if (!offEl[0].TryGetInt64(out long begin) || !offEl[1].TryGetInt64(out long end) || begin < 0 || end < begin)
            throw new InvalidDataException($"{Where()}: data_offsets {offEl.GetRawText()} must be two integers with 0 <= begin <= end");
        if (end > dataLength)
            throw new InvalidDataException($"{Where()}: data_offsets [{begin},{end}] run past the end of the data section ({dataLength} bytes)");
        long expected = count * dtype.Size();
        if (end - begin != expected)
            throw new InvalidDataException(
                $"{Where()}: data_offsets [{begin},{end}] span {end - begin} bytes, expected {expected} = {count} elements of {dtypeName} for shape [{string.Join(",", shape)}]");

        return new SafetensorsEntry(name, dtype, shape, begin, end - begin);
    }

    /// <summary>Tensor names, in data order.</summary>
    public IEnumerable<string> Names => Entries.Select(e => e.Name);

    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The header entry for <paramref name="name"/>; throws <see cref="KeyNotFoundException"/> naming the file when absent.</summary>
    public SafetensorsEntry Entry(string name)
    {
        if (_byName.TryGetValue(name, out var e)) return e;
        throw new KeyNotFoundException($"{Location}: no tensor named '{name}' (the file holds {_byName.Count} tensors{NameHint()})");
    }

    string NameHint() => _byName.Count == 0 ? "" : ", e.g. '" + string.Join("', '", Entries.Take(3).Select(e => e.Name)) + "'";

    byte* PointerOf(SafetensorsEntry e)
    {
        return _file.Pointer + _dataStart + e.Offset;
    }

    /// <summary>A zero-copy view of a float tensor (F32, F16 or BF16).</summary>
    public WeightTensor Get(string name)
    {
        var e = Entry(name);
        if (!e.DType.IsWeightFloat())
            throw new InvalidDataException($"{Location}: tensor '{name}' has dtype {e.DType.SafetensorsName()}, expected F32, F16 or BF16 for a weight");
        return new WeightTensor(name, e.DType, e.Shape, PointerOf(e), this);
    }

    /// <summary>A float tensor (F32, F16, BF16 or F64) copied into managed float32 memory.</summary>
    public Tensor ReadF32(string name)
    {
        var e = Entry(name);
        if (e.ElementCount > Array.MaxLength)
            throw new InvalidDataException($"{Location}: tensor '{name}' has {e.ElementCount} elements, too many for one float32 array");
        var t = new Tensor(e.Shape);
        byte* p = PointerOf(e);
        switch (e.DType)
        {
            case DType.F32 or DType.F16 or DType.BF16:
                FloatConvert.ToF32(e.DType, p, t.Data, t.Length);
                break;
            case DType.F64:
                var src = new ReadOnlySpan<double>(p, t.Length);
                for (int i = 0; i < src.Length; i++) t.Data[i] = (float)src[i];
                break;
            default:
                throw new InvalidDataException($"{Location}: tensor '{name}' has dtype {e.DType.SafetensorsName()}, expected a float type (F32, F16, BF16, F64)");
        }
        return t;
    }

    /// <summary>An integer or bool tensor (I64, I32, I16, I8, U8, BOOL) widened to int64.</summary>
    public long[] ReadInt64(string name)
    {
        var e = Entry(name);
        if (e.ElementCount > Array.MaxLength)
            throw new InvalidDataException($"{Location}: tensor '{name}' has {e.ElementCount} elements, too many for one array");
        var result = new long[e.ElementCount];
        byte* p = PointerOf(e);
        switch (e.DType)
        {
            case DType.I64: new ReadOnlySpan<long>(p, result.Length).CopyTo(result); break;
            case DType.I32: { var s = new ReadOnlySpan<int>(p, result.Length); for (int i = 0; i < s.Length; i++) result[i] = s[i]; break; }
            case DType.I16: { var s = new ReadOnlySpan<short>(p, result.Length); for (int i = 0; i < s.Length; i++) result[i] = s[i]; break; }
            case DType.I8: { var s = new ReadOnlySpan<sbyte>(p, result.Length); for (int i = 0; i < s.Length; i++) result[i] = s[i]; break; }
            case DType.U8 or DType.Bool: { var s = new ReadOnlySpan<byte>(p, result.Length); for (int i = 0; i < s.Length; i++) result[i] = s[i]; break; }
            default:
                throw new InvalidDataException($"{Location}: tensor '{name}' has dtype {e.DType.SafetensorsName()}, expected an integer type (I64, I32, I16, I8, U8, BOOL)");
        }
        return result;
    }

    /// <summary>An integer or bool tensor as int32; int64 values outside the int32 range are an error naming the tensor and index.</summary>
    public int[] ReadInt32(string name)
    {
        var e = Entry(name);
        if (e.DType == DType.I32)
        {
            if (e.ElementCount > Array.MaxLength)
                throw new InvalidDataException($"{Location}: tensor '{name}' has {e.ElementCount} elements, too many for one array");
            return new ReadOnlySpan<int>(PointerOf(e), (int)e.ElementCount).ToArray();
        }
        var wide = ReadInt64(name);
        var result = new int[wide.Length];
        for (int i = 0; i < wide.Length; i++)
        {
            if (wide[i] is < int.MinValue or > int.MaxValue)
                throw new InvalidDataException($"{Location}: tensor '{name}' element {i} = {wide[i]} does not fit in int32");
            result[i] = (int)wide[i];
        }
        return result;
    }

    /// <summary>The tensor's bytes exactly as stored (little-endian), pointing into the mapping.</summary>
    public ReadOnlySpan<byte> RawBytes(string name)
    {
        var e = Entry(name);
        if (e.Length > int.MaxValue)
            throw new InvalidDataException($"{Location}: tensor '{name}' has {e.Length} bytes, more than one span can address; use Get for float tensors");
        return new ReadOnlySpan<byte>(PointerOf(e), (int)e.Length);
    }

    /// <summary>Unmaps the file. Views obtained from <see cref="Get"/> must not be used afterwards.</summary>
    public void Dispose() => _file.Dispose();

    public override string ToString() => $"SafetensorsFile({Location}, {Entries.Count} tensors)";
}
