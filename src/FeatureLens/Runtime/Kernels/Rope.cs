namespace FeatureLens.Runtime.Kernels;

using FeatureLens.Runtime.Models;

/// <summary>
/// Rotary position embeddings. The first D = rotary_dim dimensions of a head vector of size HS (D = HS unless the
/// model rotates part of each head, as GPT-NeoX does) are rotated in D/2 planes; plane i turns by pos·f_i with
/// f_i = θ^(−2i/D), changed by rope_scaling (linear: f/factor; llama3: Meta's low/high-frequency bands; dynamic: θ grown
/// for runs longer than the original context). Hugging Face's layout pairs dimension i with i+D/2 (rotate-half);
/// llama2.c/Meta's pairs 2i with 2i+1 (interleaved). Dimensions D..HS pass through unchanged.
/// </summary>
public sealed class Rope
{
    readonly float[] _invFreq;           // (D/2)
    float[] _cos = [], _sin = [];        // (positions computed so far, D/2), grown on demand
    readonly object _grow = new();
    Rope? _dynamic;                      // the last dynamic-NTK variant handed out (see ForLength)
    public int HeadSize { get; }
    /// <summary>Dimensions rotated (the first RotaryDim of each head).</summary>
    public int RotaryDim { get; }
    public RopeLayout Layout { get; }
    public float Theta { get; }
    public int MaxPositions { get; }
    public RopeScaling? Scaling { get; }

    public Rope(int headSize, int maxPositions, float theta, RopeLayout layout) : this(headSize, headSize, maxPositions, theta, layout, null) { }

    public Rope(int headSize, int rotaryDim, int maxPositions, float theta, RopeLayout layout, RopeScaling? scaling)
    {
        if (rotaryDim <= 0 || rotaryDim > headSize || rotaryDim % 2 != 0) throw new ArgumentException($"rotary_dim {rotaryDim} must be even and within (0, {headSize}]");
        HeadSize = headSize; RotaryDim = rotaryDim; Layout = layout; MaxPositions = maxPositions; Theta = theta; Scaling = scaling;
        // inverse frequencies in float32, as the references compute them
        _invFreq = new float[rotaryDim / 2];
        for (int i = 0; i < _invFreq.Length; i++) _invFreq[i] = 1f / MathF.Pow(theta, 2f * i / rotaryDim);
        if (scaling is { Type: "linear" })
            for (int i = 0; i < _invFreq.Length; i++) _invFreq[i] /= (float)scaling.Factor;
        else if (scaling is { Type: "llama3" })
        {
            // Meta's Llama 3.1 rule: long wavelengths slowed by the factor, short ones kept, a smooth blend between
            float factor = (float)scaling.Factor, low = (float)scaling.LowFreqFactor, high = (float)scaling.HighFreqFactor;
            float oldContext = scaling.OriginalMaxPositions;
            float lowWavelen = oldContext / low, highWavelen = oldContext / high;
            for (int i = 0; i < _invFreq.Length; i++)
            {
                float f = _invFreq[i], wavelen = 2f * MathF.PI / f;
                if (wavelen > lowWavelen) _invFreq[i] = f / factor;
                else if (wavelen >= highWavelen)
                {
                    float smooth = (oldContext / wavelen - low) / (high - low);
                    _invFreq[i] = (1f - smooth) * f / factor + smooth * f;
                }
            }
        }
        else if (scaling is not null && scaling.Type != "dynamic") throw new ArgumentException($"rope_scaling type '{scaling.Type}' is not supported (linear, dynamic, llama3)");
    }

    /// <summary>
    /// The rotation a run of <paramref name="length"/> positions uses: this one, except for dynamic NTK scaling past the
    /// original context, where θ' = θ·(factor·L/L₀ − (factor − 1))^(D/(D−2)) for L = <paramref name="length"/> (Hugging
    /// Face's dynamic rope, computed from the run's length rather than from earlier calls).
    /// </summary>
    public Rope ForLength(int length)
    {
        if (Scaling is not { Type: "dynamic" } sc || length <= sc.OriginalMaxPositions) return this;
        var cached = _dynamic;
        if (cached != null && cached.MaxPositions == length) return cached;
        double baseScale = Math.Pow(sc.Factor * length / sc.OriginalMaxPositions - (sc.Factor - 1), RotaryDim / (RotaryDim - 2.0));
        var r = new Rope(HeadSize, RotaryDim, length, (float)(Theta * baseScale), Layout, null);
        _dynamic = r;
        return r;
    }

    /// <summary>The cos/sin tables cover at least positions [0, n); they grow only as far as positions are used.</summary>
    (float[] Cos, float[] Sin) Tables(int n)
    {
        int half = RotaryDim / 2;
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
        int hs = HeadSize, half = RotaryDim / 2;
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
