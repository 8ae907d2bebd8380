namespace FeatureLens.Runtime.Kernels;

using FeatureLens.Runtime.Models;

/// <summary>
/// Rotary position embeddings. A head vector of size HS is rotated in HS/2 planes; plane i turns by
/// pos·θ^(−2i/HS). Hugging Face's layout pairs dimension i with i+HS/2 (rotate-half); llama2.c/Meta's
/// pairs 2i with 2i+1 (interleaved).
/// </summary>
public sealed class Rope
{
    readonly float[] _invFreq;           // (HS/2)
    float[] _cos = [], _sin = [];        // (positions computed so far, HS/2), grown on demand
    readonly object _grow = new();
    public int HeadSize { get; }
    public RopeLayout Layout { get; }
    public float Theta { get; }
    public int MaxPositions { get; }

    public Rope(int headSize, int maxPositions, float theta, RopeLayout layout)
    {
        HeadSize = headSize; Layout = layout; MaxPositions = maxPositions; Theta = theta;
        // inverse frequencies in float32, as both references compute them
        _invFreq = new float[headSize / 2];
        for (int i = 0; i < _invFreq.Length; i++) _invFreq[i] = 1f / MathF.Pow(theta, 2f * i / headSize);
    }

    /// <summary>The cos/sin tables cover at least positions [0, n); they grow only as far as positions are used.</summary>
    (float[] Cos, float[] Sin) Tables(int n)
    {
        int half = HeadSize / 2;
        var (cos, sin) = (_cos, _sin);
        if (cos.Length >= n * half) return (cos, sin);
        lock (_grow)
        {
            if (_cos.Length >= n * half) return (_cos, _sin);
            int have = _cos.Length / half;
            int want = Math.Min(MaxPositions, Math.Max(n, 2 * have));
            var c = new float[want * half]; var s = new float[want * half];
            for (int p = 0; p < want; p++)
                for (int i = 0; i < half; i++)
                {
                    float angle = p * _invFreq[i];
                    c[p * half + i] = MathF.Cos(angle);
                    s[p * half + i] = MathF.Sin(angle);
                }
            (_cos, _sin) = (c, s);
            return (c, s);
        }
    }

    /// <summary>
    /// Rotates x in place. x is (R, NH, HS) where row r has position positions[r].
    /// </summary>
    public void Apply(Span<float> x, ReadOnlySpan<int> positions, int nHeads) => Rotate(x, positions, nHeads, 1f);

    /// <summary>
    /// Backward of <see cref="Apply"/>: the gradient of the rotated vector, turned back by the transposed (inverse)
    /// rotation, is the gradient of the vector before RoPE. x is (R, NH, HS), rotated in place.
    /// </summary>
    public void ApplyBackward(Span<float> x, ReadOnlySpan<int> positions, int nHeads) => Rotate(x, positions, nHeads, -1f);

    /// <summary>Turns every plane by +angle (<paramref name="direction"/> 1) or −angle (−1).</summary>
    void Rotate(Span<float> x, ReadOnlySpan<int> positions, int nHeads, float direction)
    {
        int hs = HeadSize, half = hs / 2;
        int maxPos = -1;
        foreach (int p in positions)
        {
            if ((uint)p >= (uint)MaxPositions) throw new ArgumentOutOfRangeException(nameof(positions), $"position {p} beyond the model's context of {MaxPositions}");
            maxPos = Math.Max(maxPos, p);
        }
        var (cosTable, sinTable) = Tables(maxPos + 1);
        Span<float> sin = stackalloc float[half];
        for (int r = 0; r < positions.Length; r++)
        {
            int p = positions[r];
            var cos = new ReadOnlySpan<float>(cosTable, p * half, half);
            var sinRow = new ReadOnlySpan<float>(sinTable, p * half, half);
            for (int i = 0; i < half; i++) sin[i] = direction * sinRow[i];
            for (int h = 0; h < nHeads; h++)
            {
                var v = x.Slice((r * nHeads + h) * hs, hs);
                if (Layout == RopeLayout.RotateHalf)
                {
                    for (int i = 0; i < half; i++)
                    {
                        float a = v[i], b = v[i + half];
                        v[i] = a * cos[i] - b * sin[i];
                        v[i + half] = b * cos[i] + a * sin[i];
                    }
                }
                else
                {
                    for (int i = 0; i < half; i++)
                    {
                        float a = v[2 * i], b = v[2 * i + 1];
                        v[2 * i] = a * cos[i] - b * sin[i];
                        v[2 * i + 1] = a * sin[i] + b * cos[i];
                    }
                }
            }
        }
    }
}
