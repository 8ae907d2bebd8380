using System.Buffers.Binary;
using System.IO.Compression;
using System.Runtime.InteropServices;
using System.Text;

namespace FeatureLens.Saes.Formats;

/// <summary>
/// A float array read from a .npy file, converted to float32 and laid out row-major (C order) whatever
/// order the file used.
/// </summary>
/// <param name="Shape">Dimensions, outermost first (empty for a scalar).</param>
/// <param name="Data">product(Shape) elements, row-major.</param>
/// <param name="Descr">The numpy dtype string of the file, e.g. "&lt;f4".</param>
public sealed record NpyArray(int[] Shape, float[] Data, string Descr)
{
    /// <summary>The stored dtype in words: "float32", "float16" or "float64".</summary>
    public string StorageDType => Descr[1..] switch { "f2" => "float16", "f8" => "float64", _ => "float32" };
}

/// <summary>
/// Reads numpy .npy arrays of float16/32/64 (either byte order, C or Fortran order).
/// Layout: magic "\x93NUMPY", major and minor version bytes, the header length (u16 little-endian for
/// version 1, u32 for versions 2 and 3), a Python dict literal
/// <c>{'descr': '&lt;f4', 'fortran_order': False, 'shape': (3, 4), }</c> padded with spaces and a newline,
/// then the raw elements.
/// </summary>
public static class NpyReader
{
    static readonly byte[] Magic = [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];
    const int MaxHeaderBytes = 1 << 20;

    /// <summary>Reads a .npy file; errors name the file.</summary>
    public static NpyArray ReadFile(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"npy file not found: {path}", path);
        using var s = File.OpenRead(path);
        return Read(s, path, s.Length);
    }

    /// <summary>
    /// Reads one array from <paramref name="stream"/>. <paramref name="where"/> names the source in error
    /// messages; <paramref name="declaredLength"/>, when known, is the stream's total byte count, checked
    /// against the header before any large allocation.
    /// </summary>
    public static NpyArray Read(Stream stream, string where, long? declaredLength = null)
    {
        Span<byte> pre = stackalloc byte[8];
        int got = ReadFully(stream, pre, where);
        if (got < 8 || !pre[..6].SequenceEqual(Magic))
            throw new InvalidDataException($"{where}: not a .npy array (expected the magic bytes \\x93NUMPY at the start{(got < 8 ? $", the data has only {got} bytes" : "")})");
        int major = pre[6], minor = pre[7];
        if (major is < 1 or > 3)
            throw new InvalidDataException($"{where}: .npy format version {major}.{minor} is not supported (expected 1.0, 2.0 or 3.0)");
        int lenBytes = major == 1 ? 2 : 4;
        Span<byte> lenBuf = stackalloc byte[4];
        if (ReadFully(stream, lenBuf[..lenBytes], where) < lenBytes)
            throw new InvalidDataException($"{where}: truncated .npy header (the header length field is incomplete)");
        long headerLen = major == 1 ? BinaryPrimitives.ReadUInt16LittleEndian(lenBuf) : BinaryPrimitives.ReadUInt32LittleEndian(lenBuf);
        if (headerLen > MaxHeaderBytes)
            throw new InvalidDataException($"{where}: .npy header length {headerLen} exceeds {MaxHeaderBytes} bytes (corrupt file?)");
        var headerBytes = new byte[headerLen];
        int hgot = ReadFully(stream, headerBytes, where);
        if (hgot < headerLen)
            throw new InvalidDataException($"{where}: truncated .npy header ({hgot} of {headerLen} bytes)");
        string header = major == 3 ? Encoding.UTF8.GetString(headerBytes) : Encoding.Latin1.GetString(headerBytes);
        var (descr, fortran, shape) = ParseHeader(header, where);

        char order = descr[0];
        string kind = descr[1..];
        bool bigEndian = order == '>';
        int itemSize = kind switch { "f4" => 4, "f2" => 2, "f8" => 8, _ => 0 };
        if (itemSize == 0 || order is not ('<' or '>' or '=' or '|') || (order == '|' && itemSize > 1))
            throw new InvalidDataException($"{where}: dtype '{descr}' is not supported (expected a float array: '<f4', '<f2', '<f8' or big-endian '>f4', '>f2', '>f8')");

        long count = 1;
        foreach (int d in shape)
        {
            if (d != 0 && count > Array.MaxLength / d)
                throw new InvalidDataException($"{where}: shape ({string.Join(", ", shape)}) has more elements than one array can hold");
            count *= d;
        }
        long dataBytes = count * itemSize;
        long headerTotal = 8 + lenBytes + headerLen;
        if (declaredLength is long total && total - headerTotal != dataBytes)
            throw new InvalidDataException(total - headerTotal < dataBytes
                ? $"{where}: truncated .npy data: shape ({string.Join(", ", shape)}) of '{descr}' needs {dataBytes} bytes, the file holds {total - headerTotal}"
                : $"{where}: .npy data has {total - headerTotal} bytes but shape ({string.Join(", ", shape)}) of '{descr}' needs {dataBytes} (shape and size disagree)");

        var data = new float[count];
        switch (itemSize)
        {
            case 4:
            {
                var bytes = MemoryMarshal.AsBytes(data.AsSpan());
                CheckRead(ReadFully(stream, bytes, where), dataBytes, where, shape, descr);
                if (bigEndian)
                {
                    var u = MemoryMarshal.Cast<float, uint>(data.AsSpan());
                    BinaryPrimitives.ReverseEndianness(u, u);
                }
                break;
            }
            case 2:
            {
                var half = new ushort[count];
                CheckRead(ReadFully(stream, MemoryMarshal.AsBytes(half.AsSpan()), where), dataBytes, where, shape, descr);
                if (bigEndian) BinaryPrimitives.ReverseEndianness(half, half);
                System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<ushort, Half>(half.AsSpan()), data);
                break;
            }
            default:
            {
                var wide = new double[count];
                CheckRead(ReadFully(stream, MemoryMarshal.AsBytes(wide.AsSpan()), where), dataBytes, where, shape, descr);
                var u = MemoryMarshal.Cast<double, ulong>(wide.AsSpan());
                if (bigEndian) BinaryPrimitives.ReverseEndianness(u, u);
                for (long i = 0; i < count; i++) data[i] = (float)wide[i];
                break;
            }
        }
        if (declaredLength is null && stream.ReadByte() >= 0)
            throw new InvalidDataException($"{where}: .npy data continues past the {dataBytes} bytes that shape ({string.Join(", ", shape)}) of '{descr}' needs (shape and size disagree)");

        if (fortran && shape.Length > 1) data = FortranToC(data, shape);
        return new NpyArray(shape, data, descr);
    }

    static void CheckRead(int got, long need, string where, int[] shape, string descr)
    {
        if (got < need)
            throw new InvalidDataException($"{where}: truncated .npy data: shape ({string.Join(", ", shape)}) of '{descr}' needs {need} bytes, only {got} were there");
    }

    /// <summary>Reads until <paramref name="buffer"/> is full or the stream ends; returns the bytes read.</summary>
    static int ReadFully(Stream s, Span<byte> buffer, string where)
    {
        int total = 0;
        try
        {
            while (total < buffer.Length)
            {
                int n = s.Read(buffer[total..]);
                if (n == 0) break;
                total += n;
            }
        }
        catch (InvalidDataException e)
        {
            // a deflate stream that is corrupt or cut short
            throw new InvalidDataException($"{where}: compressed data is corrupt or truncated ({e.Message})", e);
        }
        return total;
    }

    /// <summary>
    /// Column-major data of <paramref name="shape"/> → row-major. In Fortran order the first index varies
    /// fastest: element (i0, …, in) sits at i0 + s0·(i1 + s1·(…)).
    /// </summary>
    static float[] FortranToC(float[] src, int[] shape)
    {
        int rank = shape.Length;
        var dst = new float[src.Length];
        if (rank == 2)
        {
            // src is (s1, s0) row-major; dst is (s0, s1)
            int rows = shape[0], cols = shape[1];
            for (int c = 0; c < cols; c++)
                for (int r = 0; r < rows; r++) dst[(long)r * cols + c] = src[(long)c * rows + r];
            return dst;
        }
        var idx = new int[rank];
        var fStride = new long[rank];
        long st = 1;
        for (int k = 0; k < rank; k++) { fStride[k] = st; st *= shape[k]; }
        for (long i = 0; i < dst.Length; i++)
        {
            long f = 0;
            for (int k = 0; k < rank; k++) f += idx[k] * fStride[k];
            dst[i] = src[f];
            for (int k = rank - 1; k >= 0; k--)
            {
                if (++idx[k] < shape[k]) break;
                idx[k] = 0;
            }
        }
        return dst;
    }

    /// <summary>Parses the header dict: {'descr': '&lt;f4', 'fortran_order': False, 'shape': (3, 4), }.</summary>
    static (string Descr, bool Fortran, int[] Shape) ParseHeader(string header, string where)
    {
        string? descr = null;
        bool? fortran = null;
        int[]? shape = null;
        int p = 0;
        string Bad(string what) => $"{where}: malformed .npy header ({what}): {header.Trim()}";
        void SkipWs() { while (p < header.Length && char.IsWhiteSpace(header[p])) p++; }
        string ReadQuoted()
        {
            SkipWs();
            if (p >= header.Length || header[p] is not ('\'' or '"')) throw new InvalidDataException(Bad("expected a quoted string"));
            char q = header[p++];
            int start = p;
            while (p < header.Length && header[p] != q) p++;
            if (p >= header.Length) throw new InvalidDataException(Bad("unterminated string"));
            return header[start..p++];
        }
        void Expect(char c)
        {
            SkipWs();
            if (p >= header.Length || header[p] != c) throw new InvalidDataException(Bad($"expected '{c}'"));
            p++;
        }

        Expect('{');
        while (true)
        {
            SkipWs();
            if (p < header.Length && header[p] == '}') break;
            string key = ReadQuoted();
            Expect(':');
            SkipWs();
            switch (key)
            {
                case "descr":
                    if (p < header.Length && header[p] == '[')
                        throw new InvalidDataException($"{where}: structured dtype {header.Trim()} is not supported (expected a float array)");
                    descr = ReadQuoted();
                    break;
                case "fortran_order":
                    if (string.CompareOrdinal(header, p, "True", 0, 4) == 0) { fortran = true; p += 4; }
                    else if (string.CompareOrdinal(header, p, "False", 0, 5) == 0) { fortran = false; p += 5; }
                    else throw new InvalidDataException(Bad("fortran_order must be True or False"));
                    break;
                case "shape":
                {
                    Expect('(');
                    var dims = new List<int>();
                    while (true)
                    {
                        SkipWs();
                        if (p < header.Length && header[p] == ')') { p++; break; }
                        int start = p;
                        while (p < header.Length && char.IsAsciiDigit(header[p])) p++;
                        // numpy writes Python ints, sometimes with an L suffix (Python 2)
                        if (!int.TryParse(header.AsSpan(start, p - start), NumberStyles.Integer, CultureInfo.InvariantCulture, out int d))
                            throw new InvalidDataException(Bad("shape must be a tuple of non-negative integers below 2^31"));
                        if (p < header.Length && header[p] == 'L') p++;
                        dims.Add(d);
                        SkipWs();
                        if (p < header.Length && header[p] == ',') p++;
                    }
                    shape = dims.ToArray();
                    break;
                }
                default:
                    throw new InvalidDataException(Bad($"unexpected key '{key}'"));
            }
            SkipWs();
            if (p < header.Length && header[p] == ',') p++;
        }
        if (descr is null || descr.Length < 2) throw new InvalidDataException(Bad("'descr' missing"));
        if (fortran is null) throw new InvalidDataException(Bad("'fortran_order' missing"));
        if (shape is null) throw new InvalidDataException(Bad("'shape' missing"));
        return (descr, fortran.Value, shape);
    }
}

/// <summary>
/// A numpy .npz archive: a zip file whose entries ("W_enc.npy", …) are .npy arrays, stored or deflated.
/// </summary>
public sealed class NpzReader : IDisposable
{
    readonly ZipArchive _zip;
    readonly Dictionary<string, ZipArchiveEntry> _entries = new(StringComparer.Ordinal);

    /// <summary>The archive's path.</summary>
    public string Location { get; }

    NpzReader(string path, ZipArchive zip)
    {
        Location = path; _zip = zip;
        foreach (var e in zip.Entries)
            if (e.FullName.EndsWith(".npy", StringComparison.Ordinal)) _entries[e.FullName[..^4]] = e;
    }

    /// <summary>Opens an .npz file; a file that is not a zip archive is an error naming it.</summary>
    public static NpzReader Open(string path)
    {
        path = Path.GetFullPath(path);
        if (!File.Exists(path)) throw new FileNotFoundException($"npz file not found: {path}", path);
        var stream = File.OpenRead(path);
        try
        {
            return new NpzReader(path, new ZipArchive(stream, ZipArchiveMode.Read, leaveOpen: false));
        }
        catch (InvalidDataException e)
        {
            stream.Dispose();
            throw new InvalidDataException($"{path}: not a readable .npz (zip) archive ({e.Message})", e);
        }
    }

    /// <summary>Array names (entry names without ".npy"), sorted.</summary>
    public IEnumerable<string> Names => _entries.Keys.Order(StringComparer.Ordinal);

    public bool Contains(string name) => _entries.ContainsKey(name);

    /// <summary>Reads array <paramref name="name"/> (entry "name.npy"); errors name the archive and entry.</summary>
    public NpyArray Read(string name)
    {
        if (!_entries.TryGetValue(name, out var entry))
            throw new KeyNotFoundException($"{Location}: no array '{name}.npy' in the archive (it holds {string.Join(", ", Names.Select(n => n + ".npy"))})");
        string where = $"{Location} entry '{entry.FullName}'";
        Stream s;
        try { s = entry.Open(); }
        catch (InvalidDataException e) { throw new InvalidDataException($"{where}: cannot be opened ({e.Message})", e); }
        using (s)
            return NpyReader.Read(s, where, entry.Length);
    }

    public void Dispose() => _zip.Dispose();
}
