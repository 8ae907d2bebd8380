using System.Numerics.Tensors;
using System.Runtime.Intrinsics;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Kernels;

/// <summary>
/// Causal multi-head attention with grouped-query heads (query head h reads key/value head
/// h / (NH/NKV)). Notation: B batch, T new positions, S = past + T key positions, NH query heads,
/// NKV key/value heads, HS head size.
/// q is (B,T,NH,HS); k and v are (B,Smax,NKV,HS) with the new positions at [past, past+T);
/// z is (B,T,NH,HS); scores and pattern, when kept, are (B,NH,T,S) (TransformerLens layout).
/// The fused path and the materialised path (scores → pattern → z) do the same arithmetic, so
/// caching or hooking the pattern does not change the numbers.
/// </summary>
public static unsafe class Attention
{
    /// <summary>Geometry of one attention call.</summary>
    public readonly record struct Shape(int B, int T, int Past, int Smax, int NH, int NKV, int HS)
    {
        public int S => Past + T;
        public int Group => NH / NKV;
        internal long Cost => (long)T * S * HS;
        /// <summary>The factor on q·k (0: 1/√HS; Gemma 2: query_pre_attn_scalar^−½).</summary>
        public float Scale { get; init; }
        /// <summary>Soft-capping c of the scaled scores, c·tanh(s/c) (Gemma 2); 0 for none.</summary>
        public float SoftCap { get; init; }
        /// <summary>Sliding window: query position i sees keys j with 0 ≤ i − j &lt; Window; 0 for every earlier key.</summary>
        public int Window { get; init; }
        internal float ScoreScale => Scale > 0 ? Scale : 1f / MathF.Sqrt(HS);
        /// <summary>The first key the query at new position t sees.</summary>
        public int First(int t) => Window > 0 ? Math.Max(0, Past + t + 1 - Window) : 0;
    }

    /// <summary>Soft-caps scores in place, c·tanh(s/c), when the shape asks for it.</summary>
    static void Cap(Span<float> scores, Shape s)
    {
        if (s.SoftCap <= 0) return;
        TensorPrimitives.Multiply(scores, 1f / s.SoftCap, scores);
        TensorPrimitives.Tanh(scores, scores);
        TensorPrimitives.Multiply(scores, s.SoftCap, scores);
    }

    /// <summary>
    /// The soft-capped scores from the raw (scaled, masked) ones, row by row exactly as <see cref="Scores"/> caps them:
    /// capped = c·tanh(raw/c) on the visible keys, −∞ elsewhere. Both are (B,NH,T,S).
    /// </summary>
    public static void SoftCapScores(ReadOnlySpan<float> raw, Span<float> capped, Shape s)
    {
        int rows = s.B * s.NH * s.T;
        for (int r = 0; r < rows; r++)
        {
            int t = r % s.T;
            var row = capped.Slice(r * s.S, s.S);
            raw.Slice(r * s.S, s.S).CopyTo(row);
            CapVisible(row, s, t);
        }
    }

    /// <summary>Caps the visible part of one score row and masks the rest (−∞): the one capping every path shares.</summary>
    static void CapVisible(Span<float> row, Shape s, int t)
    {
        int n = s.Past + t + 1;
        Cap(row[..n], s);
        row[n..].Fill(float.NegativeInfinity);
        row[..s.First(t)].Fill(float.NegativeInfinity);
    }

    /// <summary>
    /// Backward of the soft-cap, in place: dRaw = dCapped·sech²(raw/c) where the raw score is finite (masked entries keep
    /// their 0 gradient). sech² is computed from the raw score (4e/(1+e)², e = exp(−2|u|)), not as 1 − tanh², which loses
    /// its digits when the cap saturates. <paramref name="raw"/> is (B,NH,T,T), the scaled scores before the cap.
    /// </summary>
    public static void SoftCapBackward(ReadOnlySpan<float> raw, Span<float> dScores, Shape s)
    {
        if (s.SoftCap <= 0) return;
        float inv = 1f / s.SoftCap;
        for (int i = 0; i < dScores.Length; i++)
        {
            float x = raw[i];
            if (!float.IsFinite(x)) continue;
            float e = MathF.Exp(-2f * MathF.Abs(x * inv)), d = 1f + e;
            dScores[i] *= 4f * e / (d * d);
        }
    }

    /// <summary>
    /// Fused forward: per (batch, head), the score block by GEMM, causal softmax row by row, and the
    /// weighted sum of values, without materialising the (B,NH,T,S) matrices.
    /// </summary>
    public static void Forward(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, Span<float> z, Shape s)
    {
        fixed (float* pq = q, pk = k, pv = v, pz = z)
        {
            nint aq = (nint)pq, ak = (nint)pk, av = (nint)pv, az = (nint)pz;
            ParallelRows.For(s.B * s.NH, s.Cost, (start, end) =>
            {
                var block = new float[s.T * s.S];
                fixed (float* sc = block)
                    for (int bh = start; bh < end; bh++)
                    {
                        int b = bh / s.NH, h = bh % s.NH;
                        ScoreBlock((float*)aq, (float*)ak, s, b, h, sc);
                        for (int t = 0; t < s.T; t++)
                        {
                            var row = new Span<float>(sc + (long)t * s.S, s.Past + t + 1);
                            Cap(row, s);
                            row[..s.First(t)].Fill(float.NegativeInfinity);
                            SoftmaxInPlace(row);
                            WeightedRow(row, (float*)av, s, b, h, t, (float*)az);
                        }
                    }
            });
        }
    }

    /// <summary>scores[b,h,t,j] = cap(q·k·scale) for First(t) ≤ j ≤ past+t, −∞ elsewhere (above the causal diagonal, outside a sliding window).</summary>
    public static void Scores(ReadOnlySpan<float> q, ReadOnlySpan<float> k, Span<float> scores, Shape s)
    {
        fixed (float* pq = q, pk = k, ps = scores)
        {
            nint aq = (nint)pq, ak = (nint)pk, asc = (nint)ps;
            ParallelRows.For(s.B * s.NH, s.Cost, (start, end) =>
            {
                for (int bh = start; bh < end; bh++)
                {
                    float* dst = (float*)asc + (long)bh * s.T * s.S;
                    ScoreBlock((float*)aq, (float*)ak, s, bh / s.NH, bh % s.NH, dst);
                    for (int t = 0; t < s.T; t++) CapVisible(new Span<float>(dst + (long)t * s.S, s.S), s, t);
                }
            });
        }
    }

    /// <summary>pattern = softmax over keys of each score row (masked −∞ entries become 0). Both are (B,NH,T,S).</summary>
    public static void Softmax(ReadOnlySpan<float> scores, Span<float> pattern, Shape s)
    {
        int rows = s.B * s.NH * s.T;
        for (int r = 0; r < rows; r++)
        {
            int n = s.Past + r % s.T + 1;
            var dst = pattern.Slice(r * s.S, s.S);
            scores.Slice(r * s.S, n).CopyTo(dst);
            SoftmaxInPlace(dst[..n]);
            dst[n..].Clear();
        }
    }

    /// <summary>
    /// z[b,t,h] = Σ_j pattern[b,h,t,j] · v[b,j,h/G] over the unmasked keys j ≤ past+t, or over all S keys when
    /// <paramref name="allKeys"/> (a hook edited the pattern: entries above the diagonal then count, as in TransformerLens;
    /// the masked entries a softmax leaves at 0 add exactly nothing).
    /// </summary>
    public static void WeightedValues(ReadOnlySpan<float> pattern, ReadOnlySpan<float> v, Span<float> z, Shape s, bool allKeys = false)
    {
        fixed (float* pp = pattern, pv = v, pz = z)
        {
            nint ap = (nint)pp, av = (nint)pv, az = (nint)pz;
            ParallelRows.For(s.B * s.NH, s.Cost, (start, end) =>
            {
                for (int bh = start; bh < end; bh++)
                    for (int t = 0; t < s.T; t++)
                    {
                        var row = new ReadOnlySpan<float>((float*)ap + ((long)bh * s.T + t) * s.S, allKeys ? s.S : s.Past + t + 1);
                        WeightedRow(row, (float*)av, s, bh / s.NH, bh % s.NH, t, (float*)az);
                    }
            });
        }
    }

    // ───────────────────────────── backward ─────────────────────────────
    // Without a KV cache (Past = 0, Smax = S = T). dz is (B,T,NH,HS); pattern, dPattern, dScores are (B,NH,T,T);
    // q, dq are (B,T,NH,HS) (after RoPE); k, v, dk, dv are (B,T,NKV,HS). Work is split by (batch, key/value head),
    // so the heads of one group add into their shared dk/dv rows on one thread.

    /// <summary>
    /// Backward of <see cref="WeightedValues"/>: dPattern[b,h,t,j] = dz[b,t,h]·v[b,j,h/G] for every (t, j) — above the
    /// causal diagonal too, where the pattern is 0 but changing it would move z — and dv = Σ_h patternᵀ·dz.
    /// </summary>
    public static void WeightedValuesBackward(ReadOnlySpan<float> dz, ReadOnlySpan<float> pattern, ReadOnlySpan<float> v,
        Span<float> dPattern, Span<float> dv, Shape s)
    {
        CheckNoCache(s);
        fixed (float* pdz = dz, pp = pattern, pv = v, pdp = dPattern, pdv = dv)
        {
            nint adz = (nint)pdz, ap = (nint)pp, av = (nint)pv, adp = (nint)pdp, adv = (nint)pdv;
            ParallelRows.For(s.B * s.NKV, s.Cost * s.Group * 2, (start, end) =>
            {
                for (int bk = start; bk < end; bk++)
                {
                    int b = bk / s.NKV, kvh = bk % s.NKV;
                    var vBlock = HeadRows((float*)av, s, b, kvh, s.NKV);
                    var dvBlock = HeadRows((float*)adv, s, b, kvh, s.NKV);
                    for (int g = 0; g < s.Group; g++)
                    {
                        int h = kvh * s.Group + g;
                        var dzBlock = HeadRows((float*)adz, s, b, h, s.NH);
                        float* dpBlock = (float*)adp + ((long)b * s.NH + h) * s.T * s.T;
                        var pBlock = MatrixView.F32((float*)ap + ((long)b * s.NH + h) * s.T * s.T, s.T, s.T);
                        Gemm.Multiply(dzBlock, vBlock.T, dpBlock, s.T, false, Gemm.Path, 1);
                        Gemm.Multiply(pBlock.T, dzBlock, dvBlock.Pointer32, (int)dvBlock.RowStride, g > 0, Gemm.Path, 1);
                    }
                }
            });
        }
    }

    /// <summary>
    /// The values half of <see cref="WeightedValuesBackward"/> with the pattern held fixed (a frozen attention pattern shared
    /// by every batch entry): dv[b] = Σ_h patternᵀ·dz[b] over the heads of each key/value group. pattern is (1,NH,T,T) — one
    /// pattern for all B — dz is (B,T,NH,HS), dv is (B,T,NKV,HS). Used by backward passes that batch many targets over one prompt.
    /// </summary>
    public static void ValuesBackwardSharedPattern(ReadOnlySpan<float> dz, ReadOnlySpan<float> pattern, Span<float> dv, Shape s)
    {
        CheckNoCache(s);
        fixed (float* pdz = dz, pp = pattern, pdv = dv)
        {
            nint adz = (nint)pdz, ap = (nint)pp, adv = (nint)pdv;
            ParallelRows.For(s.B * s.NKV, s.Cost * s.Group, (start, end) =>
            {
                for (int bk = start; bk < end; bk++)
                {
                    int b = bk / s.NKV, kvh = bk % s.NKV;
                    var dvBlock = HeadRows((float*)adv, s, b, kvh, s.NKV);
                    for (int g = 0; g < s.Group; g++)
                    {
                        int h = kvh * s.Group + g;
                        var dzBlock = HeadRows((float*)adz, s, b, h, s.NH);
                        var pBlock = MatrixView.F32((float*)ap + (long)h * s.T * s.T, s.T, s.T);
                        Gemm.Multiply(pBlock.T, dzBlock, dvBlock.Pointer32, (int)dvBlock.RowStride, g > 0, Gemm.Path, 1);
                    }
                }
            });
        }
    }

    /// <summary>
    /// Backward of <see cref="Softmax"/> row by row: dScores = P ⊙ (dP − Σ_j P·dP) over the unmasked keys; masked
    /// entries (P = 0) get 0, as autograd gives for the −∞ scores.
    /// </summary>
    public static void SoftmaxBackward(ReadOnlySpan<float> pattern, ReadOnlySpan<float> dPattern, Span<float> dScores, Shape s)
    {
        int rows = s.B * s.NH * s.T;
        for (int r = 0; r < rows; r++)
        {
            int n = s.Past + r % s.T + 1;
            var p = pattern.Slice(r * s.S, n);
            var dp = dPattern.Slice(r * s.S, n);
            var ds = dScores.Slice(r * s.S, s.S);
            float dot = TensorPrimitives.Dot(p, dp);
            TensorPrimitives.Subtract(dp, dot, ds[..n]);
            TensorPrimitives.Multiply(ds[..n], p, ds[..n]);
            ds[n..].Clear();
        }
    }

    /// <summary>Backward of <see cref="Scores"/> before the cap (see <see cref="SoftCapBackward"/>): dq = dScores·k·scale and dk = Σ_h dScoresᵀ·q·scale.</summary>
    public static void ScoresBackward(ReadOnlySpan<float> dScores, ReadOnlySpan<float> q, ReadOnlySpan<float> k,
        Span<float> dq, Span<float> dk, Shape s)
    {
        CheckNoCache(s);
        float inv = s.ScoreScale;
        fixed (float* pds = dScores, pq = q, pk = k, pdq = dq, pdk = dk)
        {
            nint ads = (nint)pds, aq = (nint)pq, ak = (nint)pk, adq = (nint)pdq, adk = (nint)pdk;
            ParallelRows.For(s.B * s.NKV, s.Cost * s.Group * 2, (start, end) =>
            {
                for (int bk = start; bk < end; bk++)
                {
                    int b = bk / s.NKV, kvh = bk % s.NKV;
                    var kBlock = HeadRows((float*)ak, s, b, kvh, s.NKV);
                    var dkBlock = HeadRows((float*)adk, s, b, kvh, s.NKV);
                    for (int g = 0; g < s.Group; g++)
                    {
                        int h = kvh * s.Group + g;
                        var dsBlock = MatrixView.F32((float*)ads + ((long)b * s.NH + h) * s.T * s.T, s.T, s.T);
                        var qBlock = HeadRows((float*)aq, s, b, h, s.NH);
                        var dqBlock = HeadRows((float*)adq, s, b, h, s.NH);
                        Gemm.Multiply(dsBlock, kBlock, dqBlock.Pointer32, (int)dqBlock.RowStride, false, Gemm.Path, 1);
                        Gemm.Multiply(dsBlock.T, qBlock, dkBlock.Pointer32, (int)dkBlock.RowStride, g > 0, Gemm.Path, 1);
                    }
                    ScaleHeadRows(dkBlock, inv);
                    for (int g = 0; g < s.Group; g++) ScaleHeadRows(HeadRows((float*)adq, s, b, kvh * s.Group + g, s.NH), inv);
                }
            });
        }
    }

    /// <summary>Head <paramref name="h"/> of batch <paramref name="b"/> in a (B,T,heads,HS) buffer: a (T,HS) view with row stride heads·HS.</summary>
    static MatrixView HeadRows(float* x, Shape s, int b, int h, int heads) =>
        new(x + ((long)b * s.T * heads + h) * s.HS, DType.F32, s.T, s.HS, (long)heads * s.HS, 1);

    static void ScaleHeadRows(MatrixView m, float factor)
    {
        for (int t = 0; t < m.Rows; t++)
        {
            var row = new Span<float>(m.Pointer32 + t * m.RowStride, m.Cols);
            TensorPrimitives.Multiply(row, factor, row);
        }
    }

    static void CheckNoCache(Shape s)
    {
        if (s.Past != 0 || s.Smax != s.T) throw new ArgumentException("attention backward runs on whole sequences (no KV cache)");
    }

    /// <summary>dst (T,S) = q_bh (T,HS) · k_bh(S,HS)ᵀ · scale, one single-threaded GEMM (the caller parallelises over heads).</summary>
    static void ScoreBlock(float* q, float* k, Shape s, int b, int h, float* dst)
    {
        var qv = new MatrixView(q + ((long)b * s.T * s.NH + h) * s.HS, DType.F32, s.T, s.HS, (long)s.NH * s.HS, 1);
        var kv = new MatrixView(k + ((long)b * s.Smax * s.NKV + h / s.Group) * s.HS, DType.F32, s.S, s.HS, (long)s.NKV * s.HS, 1);
        Gemm.Multiply(qv, kv.T, dst, s.S, false, Gemm.Path, 1);
        var block = new Span<float>(dst, s.T * s.S);
        TensorPrimitives.Multiply(block, s.ScoreScale, block);
    }

    /// <summary>z[b,t,h,:] = Σ_{j &lt; n} p[j] · v[b,j,h/G,:], summed in key order with vector accumulators.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    static void WeightedRow(ReadOnlySpan<float> p, float* v, Shape s, int b, int h, int t, float* z)
    {
        int HS = s.HS;
        long stride = (long)s.NKV * HS;
        float* v0 = v + ((long)b * s.Smax * s.NKV + h / s.Group) * HS;
        float* zt = z + (((long)b * s.T + t) * s.NH + h) * HS;
        int n = p.Length, d = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; d + 64 <= HS; d += 64)
            {
                var a0 = Vector512<float>.Zero; var a1 = a0; var a2 = a0; var a3 = a0;
                float* vj = v0 + d;
                for (int j = 0; j < n; j++, vj += stride)
                {
                    var pj = Vector512.Create(p[j]);
                    a0 = Vector512.FusedMultiplyAdd(Vector512.Load(vj), pj, a0);
                    a1 = Vector512.FusedMultiplyAdd(Vector512.Load(vj + 16), pj, a1);
                    a2 = Vector512.FusedMultiplyAdd(Vector512.Load(vj + 32), pj, a2);
                    a3 = Vector512.FusedMultiplyAdd(Vector512.Load(vj + 48), pj, a3);
                }
                a0.Store(zt + d); a1.Store(zt + d + 16); a2.Store(zt + d + 32); a3.Store(zt + d + 48);
            }
            for (; d + 16 <= HS; d += 16)
            {
                var a0 = Vector512<float>.Zero;
                float* vj = v0 + d;
                for (int j = 0; j < n; j++, vj += stride)
                    a0 = Vector512.FusedMultiplyAdd(Vector512.Load(vj), Vector512.Create(p[j]), a0);
                a0.Store(zt + d);
            }
        }
        // small heads (8 dims: tiny models): the same per-element FMA chain over the keys, 8 or 4 lanes at a time
        if (Vector256.IsHardwareAccelerated)
            for (; d + 8 <= HS; d += 8)
            {
                var a0 = Vector256<float>.Zero;
                float* vj = v0 + d;
                for (int j = 0; j < n; j++, vj += stride)
                    a0 = Vector256.FusedMultiplyAdd(Vector256.Load(vj), Vector256.Create(p[j]), a0);
                a0.Store(zt + d);
            }
        if (Vector128.IsHardwareAccelerated)
            for (; d + 4 <= HS; d += 4)
            {
                var a0 = Vector128<float>.Zero;
                float* vj = v0 + d;
                for (int j = 0; j < n; j++, vj += stride)
                    a0 = Vector128.FusedMultiplyAdd(Vector128.Load(vj), Vector128.Create(p[j]), a0);
                a0.Store(zt + d);
            }
        for (; d < HS; d++)
        {
            float acc = 0f;
            float* vj = v0 + d;
            for (int j = 0; j < n; j++, vj += stride) acc = MathF.FusedMultiplyAdd(*vj, p[j], acc);
            zt[d] = acc;
        }
    }

    /// <summary>Softmax of one score row in place (max subtracted, exponentiated, divided by the sum).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    static void SoftmaxInPlace(Span<float> x)
    {
        float max = TensorPrimitives.Max(x);
        TensorPrimitives.Subtract(x, max, x);
        TensorPrimitives.Exp(x, x);
        float sum = TensorPrimitives.Sum(x);
        TensorPrimitives.Multiply(x, 1f / sum, x);
    }
}
