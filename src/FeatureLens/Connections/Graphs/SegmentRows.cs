namespace FeatureLens.Connections.Graphs;

/// <summary>
/// Rows of a matrix with a fixed number of columns, each stored exactly (float32) as the runs of its nonzero entries:
/// a row keeps one <c>(start column, length)</c> pair per run and the run's values, nothing for the zeros between runs.
/// </summary>
/// <remarks>
/// Why this form: an attribution row of a feature at (layer l, position p) can only have sources at layers below l and
/// positions up to p. With sources sorted by (layer, position, latent) those are one contiguous range per layer (plus
/// the error and embedding ranges), so the row is a handful of dense runs: 4 bytes per stored value and 8 per run, about
/// half of an index+value sparse form (8 bytes per value) and a fraction of the dense row, without assuming that
/// structure (any row is stored exactly; a row that breaks it just has more runs). Runs separated by at most
/// <see cref="MergeGap"/> zeros are merged (storing those zeros costs no more than a new run header).
/// </remarks>
public sealed class SegmentRows
{
    /// <summary>Zero gaps of at most this many entries are stored inside a run rather than starting a new one.</summary>
    public const int MergeGap = 2;

    readonly List<int[]?> segments = [];   // per row: start0, len0, start1, len1, …
    readonly List<float[]?> values = [];   // per row: the runs' values, concatenated
    readonly List<double> absSums = [];
    long storedValues, storedRuns;

    /// <summary>Creates an empty set of rows over <paramref name="columns"/> columns.</summary>
    public SegmentRows(int columns)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(columns);
        Columns = columns;
    }

    /// <summary>The number of columns of every row.</summary>
    public int Columns { get; }

    /// <summary>The number of rows added.</summary>
    public int Count => values.Count;

    /// <summary>Values stored over all rows (nonzeros plus the few zeros inside merged runs).</summary>
    public long StoredValues => storedValues;

    /// <summary>Runs stored over all rows.</summary>
    public long StoredRuns => storedRuns;

    /// <summary>Bytes held by the rows' values and run headers.</summary>
    public long StoredBytes => storedValues * sizeof(float) + storedRuns * 2 * sizeof(int);

    /// <summary>Bytes the same rows would take dense (Count × Columns float32).</summary>
    public long DenseBytes => (long)Count * Columns * sizeof(float);

    /// <summary>Σ_c |row[c]| (in double) of row <paramref name="row"/>.</summary>
    public double AbsSum(int row) => absSums[row];

    /// <summary>Stores a dense row (length <see cref="Columns"/>); returns its index. Throws naming <paramref name="rowName"/> on NaN or ±∞.</summary>
    public int Add(ReadOnlySpan<float> dense, string rowName)
    {
        if (dense.Length != Columns) throw new ArgumentException($"{rowName}: row has {dense.Length} entries, expected {Columns}");
        // first pass: count runs and stored values (merging short zero gaps), checking finiteness
        int runs = 0, stored = 0, lastNonzero = int.MinValue / 2;
        int runStart = -1;
        double abs = 0;
        for (int c = 0; c < dense.Length; c++)
        {
            float v = dense[c];
            if (v == 0) continue;
            if (!float.IsFinite(v)) throw new InvalidDataException($"{rowName}: entry {c} is {v.ToString(CultureInfo.InvariantCulture)}; direct effects must be finite");
            abs += Math.Abs(v);
            if (c - lastNonzero - 1 > MergeGap || runStart < 0)
            {
                if (runStart >= 0) stored += lastNonzero - runStart + 1;
                runs++;
                runStart = c;
            }
            lastNonzero = c;
        }
        if (runStart >= 0) stored += lastNonzero - runStart + 1;

        var seg = new int[2 * runs];
        var vals = new float[stored];
        int r = -1, k = 0;
        runStart = -1;
        lastNonzero = int.MinValue / 2;
        for (int c = 0; c < dense.Length; c++)
        {
            if (dense[c] == 0) continue;
            if (c - lastNonzero - 1 > MergeGap || runStart < 0)
            {
                r++;
                seg[2 * r] = c;
                runStart = c;
            }
            else
            {
                for (int z = lastNonzero + 1; z < c; z++) vals[k++] = 0;   // a merged gap
            }
            vals[k++] = dense[c];
            seg[2 * r + 1] = c - runStart + 1;
            lastNonzero = c;
        }
        segments.Add(seg);
        values.Add(vals);
        absSums.Add(abs);
        storedValues += stored;
        storedRuns += runs;
        return values.Count - 1;
    }

    /// <summary>The runs of row <paramref name="row"/>: for each, its first column and its values.</summary>
    public RowRuns Runs(int row) => new(segments[row] ?? throw Dropped(row), values[row] ?? throw Dropped(row));

    /// <summary>The entry at (row, column); zero where nothing is stored.</summary>
    public float Get(int row, int column)
    {
        foreach (var (start, vals) in Runs(row))
        {
            if (column < start) return 0;
            if (column < start + vals.Length) return vals[column - start];
        }
        return 0;
    }

    /// <summary>Writes row <paramref name="row"/> dense into <paramref name="dense"/> (length <see cref="Columns"/>).</summary>
    public void CopyTo(int row, Span<float> dense)
    {
        if (dense.Length != Columns) throw new ArgumentException($"destination has {dense.Length} entries, expected {Columns}", nameof(dense));
        dense.Clear();
        foreach (var (start, vals) in Runs(row)) vals.CopyTo(dense[start..]);
    }

    /// <summary>Frees row <paramref name="row"/>'s storage (it can no longer be read); indices of other rows stay.</summary>
    internal void Drop(int row)
    {
        if (values[row] is { } v)
        {
            storedValues -= v.Length;
            storedRuns -= segments[row]!.Length / 2;
        }
        values[row] = null;
        segments[row] = null;
    }

    static InvalidOperationException Dropped(int row) => new($"row {row} was dropped");

    /// <summary>One run: its first column and its values.</summary>
    public readonly ref struct Run(int start, ReadOnlySpan<float> values)
    {
        /// <summary>The run's first column.</summary>
        public int Start { get; } = start;

        /// <summary>The run's values (columns Start, Start + 1, …).</summary>
        public ReadOnlySpan<float> Values { get; } = values;

        /// <summary>Deconstructs into (start, values).</summary>
        public void Deconstruct(out int start, out ReadOnlySpan<float> values)
        {
            start = Start;
            values = Values;
        }
    }

    /// <summary>The runs of one row, enumerable as (start column, values).</summary>
    public readonly ref struct RowRuns(int[] segments, float[] values)
    {
        readonly int[] segments = segments;
        readonly float[] values = values;

        /// <summary>The number of runs.</summary>
        public int Count => segments.Length / 2;

        /// <summary>Enumerates the runs.</summary>
        public Enumerator GetEnumerator() => new(segments, values);

        /// <summary>Enumerator over (start column, values) runs.</summary>
        public ref struct Enumerator(int[] segments, float[] values)
        {
            readonly int[] segments = segments;
            readonly float[] values = values;
            int run = -1, offset, length;

            /// <summary>The current run.</summary>
            public readonly Run Current => new(segments[2 * run], values.AsSpan(offset, length));

            /// <summary>Moves to the next run.</summary>
            public bool MoveNext()
            {
                offset += length;
                run++;
                if (2 * run >= segments.Length) return false;
                length = segments[2 * run + 1];
                return true;
            }
        }
    }
}
