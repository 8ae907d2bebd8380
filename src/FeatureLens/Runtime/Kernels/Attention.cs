using System.Numerics.Tensors;

namespace FeatureLens.Runtime.Kernels;

/// <summary>
/// Causal multi-head attention with grouped-query heads (query head h reads key/value head
/// h / (NH/NKV)). Notation: B batch, T new positions, S = past + T key positions, NH query heads,
/// NKV key/value heads, HS head size.
/// q is (B,T,NH,HS); k and v are (B,Smax,NKV,HS) with the new positions at [past, past+T);
/// z is (B,T,NH,HS); scores and pattern, when kept, are (B,NH,T,S) (TransformerLens layout).
/// </summary>
public static class Attention
{
    /// <summary>Geometry of one attention call.</summary>
    public readonly record struct Shape(int B, int T, int Past, int Smax, int NH, int NKV, int HS)
    {
        public int S => Past + T;
        public int Group => NH / NKV;
    }

    /// <summary>
    /// Fused forward: scores, causal softmax and the weighted sum of values in one pass per query row,
    /// without materialising the (B,NH,T,S) matrices. Masked keys (j > past + t) get no weight.
    /// </summary>
    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> z, Shape s)
    {
        unsafe
        {
            fixed (float* pq = q, pk = k, pv = v, pz = z)
            {
                nint aq = (nint)pq, ak = (nint)pk, av = (nint)pv, az = (nint)pz;
                ParallelRows.For(s.B * s.NH, (long)s.T * s.S * s.HS, (start, end) =>
                {
                    float[] row = new float[s.S];
                    for (int bh = start; bh < end; bh++)
                        HeadForward((float*)aq, (float*)ak, (float*)av, (float*)az, s, bh / s.NH, bh % s.NH, row);
                });
            }
        }
    }

    /// <summary>scores[b,h,t,j] = q·k/√HS for j ≤ past+t, −∞ above the causal diagonal.</summary>
    public static void Scores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, Span<float> scores, Shape s)
    {
        unsafe
        {
            fixed (float* pq = q, pk = k, ps = scores)
            {
                nint aq = (nint)pq, ak = (nint)pk, asc = (nint)ps;
                ParallelRows.For(s.B * s.NH, (long)s.T * s.S * s.HS, (start, end) =>
                {
                    for (int bh = start; bh < end; bh++)
                    {
                        int b = bh / s.NH, h = bh % s.NH;
                        for (int t = 0; t < s.T; t++)
                        {
                            var dst = new Span<float>((float*)asc + ((long)bh * s.T + t) * s.S, s.S);
                            ScoreRow((float*)aq, (float*)ak, s, b, h, t, dst);
                            dst[(s.Past + t + 1)..].Fill(float.NegativeInfinity);
                        }
                    }
                });
            }
        }
    }

    /// <summary>pattern = softmax over keys of each score row (masked −∞ entries become 0). Both are (B,NH,T,S).</summary>
    public static void Softmax(ReadOnlySpan<float> scores, Span<float> pattern, Shape s)
    {
        int rows = s.B * s.NH * s.T;
        for (int r = 0; r < rows; r++)
        {
            int t = r % s.T;
            int n = s.Past + t + 1;
            var src = scores.Slice(r * s.S, s.S);
            var dst = pattern.Slice(r * s.S, s.S);
            SoftmaxInPlace(src[..n], dst[..n]);
            dst[n..].Clear();
        }
    }

    /// <summary>z[b,t,h] = Σ_j pattern[b,h,t,j] · v[b,j,h/G] over all S keys.</summary>
    public static void WeightedValues(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, Span<float> z, Shape s)
    {
        for (int b = 0; b < s.B; b++)
            for (int h = 0; h < s.NH; h++)
                for (int t = 0; t < s.T; t++)
                {
                    var p = pattern.Slice(((b * s.NH + h) * s.T + t) * s.S, s.S);
                    var zt = z.Slice(((b * s.T + t) * s.NH + h) * s.HS, s.HS);
                    zt.Clear();
                    for (int j = 0; j < s.S; j++)
                    {
                        if (p[j] == 0f) continue;
                        TensorPrimitives.MultiplyAdd(v.Slice(((b * s.Smax + j) * s.NKV + h / s.Group) * s.HS, s.HS), p[j], zt, zt);
                    }
                }
    }

    static unsafe void HeadForward(float* q, float* k, float* v, float* z, Shape s, int b, int h, float[] row)
    {
        int kvh = h / s.Group;
        for (int t = 0; t < s.T; t++)
        {
            int n = s.Past + t + 1;
            var sc = row.AsSpan(0, n);
            ScoreRow(q, k, s, b, h, t, row.AsSpan(0, s.S));
            SoftmaxInPlace(sc, sc);
            var zt = new Span<float>(z + ((long)(b * s.T + t) * s.NH + h) * s.HS, s.HS);
            zt.Clear();
            for (int j = 0; j < n; j++)
            {
                if (sc[j] == 0f) continue;
                var vj = new ReadOnlySpan<float>(v + ((long)(b * s.Smax + j) * s.NKV + kvh) * s.HS, s.HS);
                TensorPrimitives.MultiplyAdd(vj, sc[j], zt, zt);
            }
        }
    }

    static unsafe void ScoreRow(float* q, float* k, Shape s, int b, int h, int t, Span<float> dst)
    {
        float scale = 1f / MathF.Sqrt(s.HS);
        int kvh = h / s.Group;
        var qt = new ReadOnlySpan<float>(q + ((long)(b * s.T + t) * s.NH + h) * s.HS, s.HS);
        int n = s.Past + t + 1;
        for (int j = 0; j < n; j++)
        {
            var kj = new ReadOnlySpan<float>(k + ((long)(b * s.Smax + j) * s.NKV + kvh) * s.HS, s.HS);
            dst[j] = TensorPrimitives.Dot(qt, kj) * scale;
        }
    }

    static void SoftmaxInPlace(ReadOnlySpan<float> x, Span<float> y)
    {
        float max = TensorPrimitives.Max(x);
        TensorPrimitives.Subtract(x, max, y);
        TensorPrimitives.Exp(y, y);
        float sum = TensorPrimitives.Sum(y);
        TensorPrimitives.Multiply(y, 1f / sum, y);
    }
}
