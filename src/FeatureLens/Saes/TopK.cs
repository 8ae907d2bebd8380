using System.Numerics;
using System.Runtime.Intrinsics;

namespace FeatureLens.Saes;

/// <summary>
/// Selection of the k largest values of a row without sorting it: a k-entry min-heap scanned against the
/// row 16 lanes at a time, so most lanes are rejected by one vector compare with the heap's minimum.
/// </summary>
public static class TopK
{
    /// <summary>
    /// Writes the indices and values of the k largest entries of <paramref name="row"/> (in no particular
    /// order) to <paramref name="index"/> and <paramref name="value"/>. Among equal values the lower index wins.
    /// NaN never enters the selection.
    /// </summary>
    public static void Select(ReadOnlySpan<float> row, int k, Span<int> index, Span<float> value)
    {
        int n = row.Length;
        if (k <= 0 || k > n) throw new ArgumentOutOfRangeException(nameof(k), $"k = {k} must be in [1, {n}]");
        // seed the heap with the first k entries
        for (int i = 0; i < k; i++) { value[i] = float.IsNaN(row[i]) ? float.NegativeInfinity : row[i]; index[i] = i; }
        for (int i = k / 2 - 1; i >= 0; i--) SiftDown(index, value, k, i);
        int j = k;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; j + 16 <= n; j += 16)
            {
                var v = Vector512.Create(row.Slice(j, 16));
                uint mask = (uint)Vector512.GreaterThan(v, Vector512.Create(value[0])).ExtractMostSignificantBits();
                while (mask != 0)
                {
                    int lane = BitOperations.TrailingZeroCount(mask);
                    mask &= mask - 1;
                    float x = row[j + lane];
                    if (x > value[0]) { value[0] = x; index[0] = j + lane; SiftDown(index, value, k, 0); }
                }
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            for (; j + 8 <= n; j += 8)
            {
                var v = Vector256.Create(row.Slice(j, 8));
                uint mask = Vector256.GreaterThan(v, Vector256.Create(value[0])).ExtractMostSignificantBits();
                while (mask != 0)
                {
                    int lane = BitOperations.TrailingZeroCount(mask);
                    mask &= mask - 1;
                    float x = row[j + lane];
                    if (x > value[0]) { value[0] = x; index[0] = j + lane; SiftDown(index, value, k, 0); }
                }
            }
        }
        for (; j < n; j++)
        {
            float x = row[j];
            if (x > value[0]) { value[0] = x; index[0] = j; SiftDown(index, value, k, 0); }
        }
    }

    // min-heap on value; on equal values the larger index sits nearer the root, so it is evicted first
    static void SiftDown(Span<int> index, Span<float> value, int k, int i)
    {
        while (true)
        {
            int l = 2 * i + 1, smallest = i;
            if (l < k && Less(value[l], index[l], value[smallest], index[smallest])) smallest = l;
            if (l + 1 < k && Less(value[l + 1], index[l + 1], value[smallest], index[smallest])) smallest = l + 1;
            if (smallest == i) return;
            (value[i], value[smallest]) = (value[smallest], value[i]);
            (index[i], index[smallest]) = (index[smallest], index[i]);
            i = smallest;
        }
    }

    static bool Less(float va, int ia, float vb, int ib) => va < vb || (va == vb && ia > ib);
}
