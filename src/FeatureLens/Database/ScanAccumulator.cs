using System.Buffers.Binary;

using FeatureLens.Saes;

namespace FeatureLens.Database;

/// <summary>
/// One example of a latent: where it fired (the token's index in the packed stream: window · context + position), how
/// strongly, its sampling priority, and the latent's activations over the whole window (nonzero positions only).
/// </summary>
internal sealed class ScanExample
{
    public required float Activation;
    public required long Token;
    public required ulong Priority;
    /// <summary>−1: a top example; otherwise the quantile sampling bin it was kept for.</summary>
    public required int Bin;
    /// <summary>(uint16 position, float32 value) pairs, little-endian, for the window's nonzero activations.</summary>
    public required byte[] Values;
    /// <summary>True once the database holds this example.</summary>
    public bool Stored;

    /// <summary>Top-example order: higher activation first, then earlier token.</summary>
    public static int TopOrder(ScanExample a, ScanExample b)
    {
        int c = b.Activation.CompareTo(a.Activation);
        return c != 0 ? c : a.Token.CompareTo(b.Token);
    }

    /// <summary>Sampling order: lower priority first, then earlier token.</summary>
    public static int SampleOrder(ScanExample a, ScanExample b)
    {
        int c = a.Priority.CompareTo(b.Priority);
        return c != 0 ? c : a.Token.CompareTo(b.Token);
    }

    /// <summary>The window's activations (length <paramref name="length"/>) from <see cref="Values"/>' bytes.</summary>
    public static float[] UnpackValues(byte[] b, int length, string where)
    {
        if (b.Length % 6 != 0) throw new InvalidDataException($"{where}: example values blob of {b.Length} bytes is not a list of (uint16, float32) pairs");
        var v = new float[length];
        for (int o = 0; o < b.Length; o += 6)
        {
            int p = BinaryPrimitives.ReadUInt16LittleEndian(b.AsSpan(o));
            if (p >= length) throw new InvalidDataException($"{where}: example value at position {p} outside the window's {length} tokens");
            v[p] = BinaryPrimitives.ReadSingleLittleEndian(b.AsSpan(o + 2));
        }
        return v;
    }
}

/// <summary>
/// The mergeable statistics of one SAE's latents over the tokens scanned so far: fire counts, fixed-point sums, maxima,
/// log-spaced histograms, the top examples and the lowest-priority examples of each quantile sampling bin. Adding two
/// accumulators (<see cref="MergeStats"/> and <see cref="AddStored"/>) gives exactly the accumulator of the union of their tokens.
/// </summary>
internal sealed class ScanAccumulator
{
    public readonly int SaeIndex, DSae, TopK, PerBin;
    public readonly long[] Count;
    public readonly Int128[] Sum;
    public readonly float[] Max;
    public readonly long[]?[] Hist;
    /// <summary>Per latent: its top examples (best first) and its sampled examples (any order).</summary>
    public readonly List<ScanExample>?[] Top, Samples;
    // what changed since the last commit: latents with new examples, and stored examples dropped
    readonly bool[] _dirty;
    readonly List<int> _dirtyList = [];
    readonly List<(int Feature, int Bin, long Token)> _dropped = [];

    public ScanAccumulator(int saeIndex, int dSae, int topK, int perBin)
    {
        SaeIndex = saeIndex; DSae = dSae; TopK = topK; PerBin = perBin;
        Count = new long[dSae]; Sum = new Int128[dSae]; Max = new float[dSae]; Hist = new long[dSae][];
        Top = new List<ScanExample>[dSae]; Samples = new List<ScanExample>[dSae];
        _dirty = new bool[dSae];
    }

    // the window being added, transposed: its entries sorted by (latent, position), for capturing a latent's values
    long[] _keys = new long[1024];
    float[] _vals = new float[1024];
    int _entries;

    /// <summary>
    /// Adds one window's activations of this SAE: rows [<paramref name="row0"/>, row0 + <paramref name="length"/>) of
    /// <paramref name="acts"/> are the window's positions; positions in <paramref name="skip"/> (BOS) are not counted.
    /// <paramref name="firstToken"/> is the stream index of the window's position 0. Latents are visited position by
    /// position, each position's in increasing latent order.
    /// </summary>
    public void AddWindow(SparseActivations acts, int row0, int length, long firstToken, ReadOnlySpan<bool> skip)
    {
        if (length > ushort.MaxValue + 1) throw new ArgumentOutOfRangeException(nameof(length), $"a window of {length} positions is longer than examples can hold");
        int e0 = acts.RowStart[row0], e1 = acts.RowStart[row0 + length];
        _entries = e1 - e0;
        if (_keys.Length < _entries) { _keys = new long[_entries]; _vals = new float[_entries]; }
        for (int t = 0; t < length; t++)
            for (int e = acts.RowStart[row0 + t]; e < acts.RowStart[row0 + t + 1]; e++)
            {
                _keys[e - e0] = ((long)acts.Index[e] << 16) | (uint)t;
                _vals[e - e0] = acts.Value[e];
            }
        Array.Sort(_keys, _vals, 0, _entries);
        for (int t = 0; t < length; t++)
        {
            if (skip[t]) continue;
            long token = firstToken + t;
            var idx = acts.RowIndices(row0 + t);
            var val = acts.RowValues(row0 + t);
            for (int i = 0; i < idx.Length; i++)
            {
                float x = val[i];
                if (!(x > 0)) continue;
                int j = idx[i];
                Count[j]++;
                Sum[j] += ScanBins.Fixed(x);
                if (x > Max[j]) Max[j] = x;
                int bin = ScanBins.Bin(x);
                (Hist[j] ??= new long[ScanBins.Bins])[bin]++;
                OfferTop(j, x, token);
                OfferSample(j, x, token, ScanBins.SamplingBin(bin));
            }
        }
    }

    /// <summary>Latent j's nonzero values over the window being added, packed as <see cref="ScanExample.Values"/>.</summary>
    byte[] Capture(int j)
    {
        long first = (long)j << 16;
        int lo = 0, hi = _entries;
        while (lo < hi) { int mid = (lo + hi) >>> 1; if (_keys[mid] < first) lo = mid + 1; else hi = mid; }
        int end = lo;
        while (end < _entries && _keys[end] >> 16 == j) end++;
        int n = 0;
        for (int e = lo; e < end; e++) if (_vals[e] != 0) n++;
        var b = new byte[n * 6];
        int o = 0;
        for (int e = lo; e < end; e++)
        {
            if (_vals[e] == 0) continue;
            BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(o), (ushort)(_keys[e] & 0xFFFF));
            BinaryPrimitives.WriteSingleLittleEndian(b.AsSpan(o + 2), _vals[e]);
            o += 6;
        }
        return b;
    }

    void OfferTop(int j, float x, long token)
    {
        var list = Top[j] ??= new List<ScanExample>(TopK);
        if (list.Count == TopK)
        {
            var worst = list[^1];
            // a later token with an equal activation ranks below every kept one
            if (!(x > worst.Activation)) return;
        }
        var e = new ScanExample { Activation = x, Token = token, Priority = 0, Bin = -1, Values = Capture(j) };
        Insert(j, list, e, TopK);
    }

    void OfferSample(int j, float x, long token, int sbin)
    {
        var list = Samples[j] ??= [];
        ulong pri = ScanBins.Priority(SaeIndex, j, token);
        int inBin = 0; ScanExample? worst = null;
        foreach (var e in list)
        {
            if (e.Bin != sbin) continue;
            inBin++;
            if (worst == null || ScanExample.SampleOrder(worst, e) < 0) worst = e;
        }
        if (inBin == PerBin && pri >= worst!.Priority) return; // equal priority: the earlier token is kept
        var ex = new ScanExample { Activation = x, Token = token, Priority = pri, Bin = sbin, Values = Capture(j) };
        if (inBin == PerBin) Drop(j, list, worst!);
        list.Add(ex);
        MarkDirty(j);
    }

    void Insert(int j, List<ScanExample> list, ScanExample e, int cap)
    {
        int i = list.BinarySearch(e, Comparer<ScanExample>.Create(ScanExample.TopOrder));
        if (i < 0) i = ~i;
        list.Insert(i, e);
        if (list.Count > cap) Drop(j, list, list[^1]);
        MarkDirty(j);
    }

    void Drop(int j, List<ScanExample> list, ScanExample e)
    {
        list.Remove(e);
        if (e.Stored) _dropped.Add((j, e.Bin, e.Token));
    }

    void MarkDirty(int j)
    {
        if (_dirty[j]) return;
        _dirty[j] = true;
        _dirtyList.Add(j);
    }

    /// <summary>Examples to delete from and insert into the database since the last call; marks the inserted ones stored.</summary>
    public (List<(int Feature, int Bin, long Token)> Deleted, List<(int Feature, ScanExample Example)> Inserted) TakeChanges()
    {
        var deleted = new List<(int, int, long)>(_dropped);
        _dropped.Clear();
        // both in key order (feature, bin, token): the database's B-tree is then walked once, not at random
        deleted.Sort();
        _dirtyList.Sort();
        var inserted = new List<(int, ScanExample)>();
        var byKey = Comparer<(int, ScanExample)>.Create((a, b) =>
        {
            int c = a.Item2.Bin.CompareTo(b.Item2.Bin);
            return c != 0 ? c : a.Item2.Token.CompareTo(b.Item2.Token);
        });
        foreach (int j in _dirtyList)
        {
            _dirty[j] = false;
            int from = inserted.Count;
            foreach (var list in new[] { Top[j], Samples[j] })
                if (list != null)
                    foreach (var e in list)
                        if (!e.Stored) { e.Stored = true; inserted.Add((j, e)); }
            inserted.Sort(from, inserted.Count - from, byKey);
        }
        _dirtyList.Clear();
        return (deleted, inserted);
    }

    /// <summary>Adds an example read back from the database (resume, merge).</summary>
    public void AddStored(int j, ScanExample e, bool stored)
    {
        e.Stored = stored;
        if (e.Bin < 0)
        {
            var list = Top[j] ??= new List<ScanExample>(TopK);
            if (list.Count == TopK && ScanExample.TopOrder(e, list[^1]) > 0) return;
            int i = list.BinarySearch(e, Comparer<ScanExample>.Create(ScanExample.TopOrder));
            if (i >= 0) return; // the same token twice (cannot happen across disjoint shards)
            list.Insert(~i, e);
            if (list.Count > TopK) Drop(j, list, list[^1]);
        }
        else
        {
            var list = Samples[j] ??= [];
            var same = list.Where(x => x.Bin == e.Bin).ToList();
            if (same.Count == PerBin)
            {
                var worst = same.Aggregate((a, b) => ScanExample.SampleOrder(a, b) >= 0 ? a : b);
                if (ScanExample.SampleOrder(e, worst) > 0) return;
                Drop(j, list, worst);
            }
            list.Add(e);
        }
        if (!stored) MarkDirty(j);
    }

    /// <summary>Adds another accumulator's counts, sums, maxima and histograms (examples go through <see cref="AddStored"/>).</summary>
    public void MergeStats(long[] count, Int128[] sum, float[] max, long[]?[] hist)
    {
        for (int j = 0; j < DSae; j++)
        {
            Count[j] += count[j];
            Sum[j] += sum[j];
            if (max[j] > Max[j]) Max[j] = max[j];
            if (hist[j] is { } h)
            {
                var mine = Hist[j] ??= new long[ScanBins.Bins];
                for (int b = 0; b < ScanBins.Bins; b++) mine[b] += h[b];
            }
        }
    }

    // ───────────── the statistics blob (counts, sums, maxima, histograms) ─────────────

    /// <summary>The counts, sums, maxima and histograms as one blob (histograms as their nonzero bin range).</summary>
    public byte[] StatsBlob()
    {
        using var ms = new MemoryStream();
        using var w = new BinaryWriter(ms);
        w.Write(DSae);
        for (int j = 0; j < DSae; j++) w.Write(Count[j]);
        for (int j = 0; j < DSae; j++) { w.Write((ulong)(Sum[j] >> 64)); w.Write((ulong)Sum[j]); }
        for (int j = 0; j < DSae; j++) w.Write(Max[j]);
        for (int j = 0; j < DSae; j++)
        {
            var h = Hist[j];
            if (h == null) { w.Write((short)-1); continue; }
            int lo = Array.FindIndex(h, c => c != 0), hi = Array.FindLastIndex(h, c => c != 0);
            if (lo < 0) { w.Write((short)-1); continue; }
            w.Write((short)lo); w.Write((short)(hi - lo + 1));
            for (int b = lo; b <= hi; b++) w.Write7BitEncodedInt64(h[b]);
        }
        w.Flush();
        return ms.ToArray();
    }

    /// <summary>Reads <see cref="StatsBlob"/>'s bytes: (count, sum, max, hist) per latent.</summary>
    public static (long[] Count, Int128[] Sum, float[] Max, long[]?[] Hist) ReadStats(byte[] blob, int dSae, string where)
    {
        try
        {
            using var r = new BinaryReader(new MemoryStream(blob));
            int d = r.ReadInt32();
            if (d != dSae) throw new InvalidDataException($"{where}: statistics for {d} latents, the SAE has {dSae}");
            var count = new long[d]; var sum = new Int128[d]; var max = new float[d]; var hist = new long[d][];
            for (int j = 0; j < d; j++) count[j] = r.ReadInt64();
            for (int j = 0; j < d; j++) { ulong hiw = r.ReadUInt64(), low = r.ReadUInt64(); sum[j] = new Int128(hiw, low); }
            for (int j = 0; j < d; j++) max[j] = r.ReadSingle();
            for (int j = 0; j < d; j++)
            {
                short lo = r.ReadInt16();
                if (lo < 0) continue;
                short n = r.ReadInt16();
                if (lo + n > ScanBins.Bins || n < 1) throw new InvalidDataException($"{where}: histogram of latent {j} has bins [{lo}, {lo + n}) outside [0, {ScanBins.Bins})");
                var h = hist[j] = new long[ScanBins.Bins];
                for (int b = 0; b < n; b++) h[lo + b] = r.Read7BitEncodedInt64();
            }
            if (r.BaseStream.Position != blob.Length) throw new InvalidDataException($"{where}: {blob.Length - r.BaseStream.Position} bytes left over after the statistics");
            return (count, sum, max, hist);
        }
        catch (EndOfStreamException) { throw new InvalidDataException($"{where}: statistics blob is truncated"); }
        catch (FormatException e) { throw new InvalidDataException($"{where}: statistics blob is corrupt ({e.Message})"); }
    }
}
