namespace FeatureLens.Saes;

/// <summary>
/// Latent activations stored by row (token) in compressed sparse row form: row r's active latents are
/// Index[RowStart[r] .. RowStart[r+1]) with their Value, in increasing latent order.
/// </summary>
public sealed class SparseActivations
{
    public int Rows { get; }
    /// <summary>d_sae.</summary>
    public int Columns { get; }
    /// <summary>(Rows + 1) offsets into <see cref="Index"/> and <see cref="Value"/>.</summary>
    public int[] RowStart { get; }
    public int[] Index { get; }
    public float[] Value { get; }

    public SparseActivations(int rows, int columns, int[] rowStart, int[] index, float[] value)
    {
        if (rowStart.Length != rows + 1) throw new ArgumentException($"RowStart has {rowStart.Length} entries, expected rows + 1 = {rows + 1}");
        if (index.Length != value.Length || rowStart[rows] != index.Length) throw new ArgumentException("Index, Value and RowStart disagree on the number of entries");
        Rows = rows; Columns = columns; RowStart = rowStart; Index = index; Value = value;
    }

    /// <summary>Number of active latents in row r.</summary>
    public int Count(int r) => RowStart[r + 1] - RowStart[r];

    /// <summary>Active latents of row r.</summary>
    public ReadOnlySpan<int> RowIndices(int r) => Index.AsSpan(RowStart[r], Count(r));
    public ReadOnlySpan<float> RowValues(int r) => Value.AsSpan(RowStart[r], Count(r));

    /// <summary>Activation of latent j at row r (0 when inactive).</summary>
    public float Get(int r, int j)
    {
        int i = Array.BinarySearch(Index, RowStart[r], Count(r), j);
        return i >= 0 ? Value[i] : 0f;
    }

    /// <summary>Mean number of active latents per row (L0).</summary>
    public double MeanL0 => Rows == 0 ? 0 : (double)Index.Length / Rows;

    /// <summary>The dense (Rows, Columns) matrix.</summary>
    public float[] ToDense()
    {
        var d = new float[(long)Rows * Columns];
        for (int r = 0; r < Rows; r++)
            for (int e = RowStart[r]; e < RowStart[r + 1]; e++) d[(long)r * Columns + Index[e]] = Value[e];
        return d;
    }

    /// <summary>Keeps the nonzero entries of dense (rows, columns) activations.</summary>
    public static SparseActivations FromDense(ReadOnlySpan<float> dense, int rows, int columns)
    {
        var b = new Builder(rows, columns);
        for (int r = 0; r < rows; r++) b.AddDenseRow(dense.Slice(r * columns, columns));
        return b.Build();
    }

    /// <summary>Accumulates rows one at a time.</summary>
    public sealed class Builder(int rows, int columns)
    {
        readonly List<int> _index = [];
        readonly List<float> _value = [];
        readonly int[] _rowStart = new int[rows + 1];
        int _row;

        public void AddDenseRow(ReadOnlySpan<float> row)
        {
            if (_row >= rows) throw new InvalidOperationException($"builder already has its {rows} rows");
            if (row.Length != columns) throw new ArgumentException($"row has {row.Length} entries, expected {columns}");
            for (int j = 0; j < row.Length; j++)
                if (row[j] != 0) { _index.Add(j); _value.Add(row[j]); }
            _rowStart[++_row] = _index.Count;
        }

        public SparseActivations Build()
        {
            if (_row != rows) throw new InvalidOperationException($"builder has {_row} of {rows} rows");
            return new SparseActivations(rows, columns, _rowStart, _index.ToArray(), _value.ToArray());
        }
    }
}
