namespace FeatureLens.Runtime.Kernels;

using FeatureLens.Runtime.Models;

/// <summary>
/// Rotary position embeddings. A head vector of size HS is rotated in HS/2 planes; plane i turns by
/// pos·θ^(−2i/HS). Hugging Face's layout pairs dimension i with i+HS/2 (rotate-half); llama2.c/Meta's
/// pairs 2i with 2i+1 (interleaved).
/// </summary>
public sealed class Rope
{
    readonly float[] _cos, _sin; // (maxPos, HS/2)
    public int HeadSize { get; }
    public RopeLayout Layout { get; }
    public int MaxPositions { get; }

    public Rope(int headSize, int maxPositions, float theta, RopeLayout layout)
    {
        HeadSize = headSize; Layout = layout; MaxPositions = maxPositions;
        int half = headSize / 2;
        _cos = new float[maxPositions * half];
        _sin = new float[maxPositions * half];
        for (int i = 0; i < half; i++)
        {
            // inverse frequency in float32, as both references compute it
            float invFreq = 1f / MathF.Pow(theta, 2f * i / headSize);
            for (int p = 0; p < maxPositions; p++)
            {
                float angle = p * invFreq;
                _cos[p * half + i] = MathF.Cos(angle);
                _sin[p * half + i] = MathF.Sin(angle);
            }
        }
    }

    /// <summary>
    /// Rotates x in place. x is (R, NH, HS) where row r has position positions[r].
    /// </summary>
    public void Apply(Span<float> x, ReadOnlySpan<int> positions, int nHeads)
    {
        int hs = HeadSize, half = hs / 2;
        for (int r = 0; r < positions.Length; r++)
        {
            int p = positions[r];
            if ((uint)p >= (uint)MaxPositions) throw new ArgumentOutOfRangeException(nameof(positions), $"position {p} beyond the model's context of {MaxPositions}");
            var cos = new ReadOnlySpan<float>(_cos, p * half, half);
            var sin = new ReadOnlySpan<float>(_sin, p * half, half);
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
