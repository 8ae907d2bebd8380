using System.Numerics.Tensors;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Models;

/// <summary>What one norm's backward needs: its input (centered for LayerNorm, raw for RMSNorm) (R,C) and its scale (R).</summary>
internal sealed record NormTape(float[] Source, float[] Scale);

/// <summary>
/// What one block's backward needs from its forward (llm.c's named activation buffers): the two norms, q and k after
/// RoPE (B,T,NH,HS)/(B,T,NKV,HS), v, the attention pattern (B,NH,T,T) and the MLP pre-activations (B,T,M). Every
/// buffer is the value the rest of the forward used (after hook functions ran on it).
/// </summary>
internal sealed class BlockTape
{
    public NormTape Ln1 = null!, Ln2 = null!;
    /// <summary>Gemma 2's post-norms on the raw attention and MLP outputs; null elsewhere.</summary>
    public NormTape? Ln1Post, Ln2Post;
    public float[] Q = null!, K = null!, V = null!, Pattern = null!;
    /// <summary>The scaled scores before the soft-cap (B,NH,T,T), kept only when the model soft-caps attention logits.</summary>
    public float[]? RawScores;
    public float[] Pre = null!;
    public float[]? PreLinear;
    /// <summary>hook_result was wanted in the forward (attn_out was then the sum of per-head results).</summary>
    public bool ResultActive;
}

/// <summary>A recorded forward pass: each block's <see cref="BlockTape"/>, the final norm, and the batch geometry.</summary>
internal sealed class ForwardTape
{
    public BlockTape[] Blocks = [];
    public NormTape Final = null!;
    /// <summary>The rotation the recorded run used (dynamic NTK scaling depends on its length).</summary>
    public Rope? Rope;
    public int B, T;
    public int[] Lengths = [], Positions = [];

    /// <summary>The pooled buffers the recorded forward and its backward use; <see cref="ReturnBuffers"/> gives them back.</summary>
    readonly List<float[]> _rented = [];

    public void Start(int b, int t, int[] lengths, int[] positions, int layers)
    {
        B = b; T = t; Lengths = lengths; Positions = positions; Blocks = new BlockTape[layers];
    }

    /// <summary>A pooled buffer of <paramref name="n"/> undefined floats, held until <see cref="ReturnBuffers"/>.</summary>
    public float[] Rent(long n)
    {
        var a = BufferPool.Rent(checked((int)n));
        _rented.Add(a);
        return a;
    }

    /// <summary><see cref="Rent"/>, zero-filled.</summary>
    public float[] RentZeroed(long n)
    {
        var a = Rent(n);
        Array.Clear(a);
        return a;
    }

    /// <summary>
    /// Gives every buffer of the recorded forward and backward back to the pool once the backward is done. Caches never
    /// hold them (the forward fires them unowned, so the cache keeps copies); hook functions see them only during the call.
    /// </summary>
    public void ReturnBuffers()
    {
        foreach (var a in _rented) BufferPool.Return(a);
        _rented.Clear();
        Blocks = [];
    }
}

/// <summary>
/// The gradient of the metric's logits (and hook seeds) back through the model: the reverse of
/// <see cref="TransformerForward.Run"/>, block by block, firing every hook point's gradient in reverse firing order
/// (so backward hooks can read or edit it and the gradient cache can keep it). Only activation gradients are computed,
/// never weight gradients. Notation as in the forward: B, T, R = B·T, C, NH, NKV, HS, M, V.
/// </summary>
internal static unsafe class TransformerBackward
{
    /// <summary>
    /// Runs the backward of a recorded forward: <c>dLogitRows</c> are the rows r (= b·T + t) of the logits the metric depends
    /// on, <c>dLogits</c> their gradients (rows, V); both empty for metrics that read no logits.
    /// </summary>
    public static void Run(ModelConfig cfg, TransformerWeights w, LayerHookNames[] names, ForwardTape tape,
        HookSet hooks, int[] dLogitRows, float[] dLogits, float[] logits)
    {
        int B = tape.B, T = tape.T, R = B * T;
        int C = cfg.DModel, NH = cfg.NHeads, NKV = cfg.NKvHeads, HS = cfg.DHead, M = cfg.DMlp, V = cfg.VocabSize;
        bool gated = cfg.GatedMlp, parallel = cfg.ParallelAttnMlp;
        bool layerNorm = cfg.LayerNorm;
        var rope = tape.Rope;

        // ---- final soft-cap, unembedding and final norm ----
        var dNormOut = tape.RentZeroed(R * C);
        if (dLogitRows.Length > 0)
        {
            int n = dLogitRows.Length;
            if (cfg.FinalSoftcap > 0)
            {
                // logits = c·tanh(u/c): du = dlogits·(1 − (logits/c)²)
                dLogits = (float[])dLogits.Clone();
                float inv = 1f / cfg.FinalSoftcap;
                for (int i = 0; i < n; i++)
                {
                    var d = dLogits.AsSpan(i * V, V);
                    var y = logits.AsSpan(dLogitRows[i] * V, V);
                    for (int j = 0; j < V; j++) { float t = y[j] * inv; d[j] *= 1f - t * t; }
                }
            }
            var rows = new float[n * C];
            fixed (float* pd = dLogits, pr = rows)
                Gemm.Multiply(MatrixView.F32(pd, n, V), w.Unembed.T, pr, C);
            for (int i = 0; i < n; i++) rows.AsSpan(i * C, C).CopyTo(dNormOut.AsSpan(dLogitRows[i] * C, C));
        }
        var dResid = tape.RentZeroed(R * C);
        NormBackward(tape.Final, w.FinalNormWeight, dNormOut, dResid, R, C, layerNorm, hooks, HookNames.LnFinalNormalized, HookNames.LnFinalScale, -1, B, T);

        // ---- blocks, last to first ----
        var dResidMid = tape.RentZeroed(R * C);
        var dMlpIn = tape.RentZeroed(R * C);
        var dPre = tape.RentZeroed(R * M); var dPreLinear = gated ? tape.RentZeroed(R * M) : null; var dPost = tape.RentZeroed(R * M);
        var dAttnOut = tape.RentZeroed(R * C); var dZ = tape.RentZeroed(R * NH * HS);
        var dQ = tape.RentZeroed(R * NH * HS); var dK = tape.RentZeroed(R * NKV * HS); var dV = tape.RentZeroed(R * NKV * HS);
        var dPattern = tape.RentZeroed(B * NH * T * T); var dScores = tape.RentZeroed(B * NH * T * T);
        var dLn1In = tape.RentZeroed(R * C);
        var dRaw = cfg.PostNorms ? tape.RentZeroed(R * C) : null;
        for (int l = cfg.NLayers - 1; l >= 0; l--)
        {
            var L = w.Layers[l];
            var n = names[l];
            var bt = tape.Blocks[l];
            hooks.FireBackward(n.ResidPost, l, dResid, B, T, C);

            // ---- MLP: resid_post = resid_mid + mlp_out (or resid_pre + attn_out + mlp_out when parallel) ----
            var dMlpOut = (float[])dResid.Clone();
            hooks.FireBackward(n.MlpOut, l, dMlpOut, B, T, C);
            var dMlpRaw = dMlpOut;
            if (cfg.PostNorms)
            {
                NormBackward(bt.Ln2Post!, L.Ln2PostWeight!, dMlpOut, dRaw!, R, C, layerNorm, hooks, n.Ln2PostNormalized, n.Ln2PostScale, l, B, T);
                dMlpRaw = dRaw!;
            }
            hooks.FireBackward(n.MlpHookOut, l, dMlpRaw, B, T, C);
            LinearBackward(dMlpRaw, R, L.WOut, dPost);
            hooks.FireBackward(n.MlpPost, l, dPost, B, T, M);
            if (gated)
            {
                ParallelRows.For(R, M, (r0, r1) =>
                {
                    int o = r0 * M, len = (r1 - r0) * M;
                    Activations.GatedBackward(cfg.Activation, bt.Pre.AsSpan(o, len), bt.PreLinear.AsSpan(o, len), dPost.AsSpan(o, len), dPre.AsSpan(o, len), dPreLinear.AsSpan(o, len));
                });
                hooks.FireBackward(n.MlpPreLinear, l, dPreLinear!, B, T, M);
            }
            else
                ParallelRows.For(R, M, (r0, r1) =>
                {
                    int o = r0 * M, len = (r1 - r0) * M;
                    Activations.Backward(cfg.Activation, bt.Pre.AsSpan(o, len), dPost.AsSpan(o, len), dPre.AsSpan(o, len));
                });
            hooks.FireBackward(n.MlpPre, l, dPre, B, T, M);
            LinearBackward(dPre, R, L.WIn, dNormOut);
            if (gated) LinearBackward(dPreLinear!, R, L.WUp!.Value, dNormOut, accumulate: true);
            hooks.FireBackward(n.MlpHookIn, l, dNormOut, B, T, C);
            NormBackward(bt.Ln2, L.Ln2Weight, dNormOut, dMlpIn, R, C, layerNorm, hooks, n.Ln2Normalized, n.Ln2Scale, l, B, T);
            hooks.FireBackward(n.MlpIn, l, dMlpIn, B, T, C);
            if (parallel)
            {
                // attention sees resid_post's gradient directly; resid_pre gathers the identity, the MLP's and attention's paths
                dResid.AsSpan().CopyTo(dAttnOut);
                TensorPrimitives.Add(dResid, dMlpIn, dResidMid); // resid_pre's gradient so far (no hook_resid_mid)
            }
            else
            {
                TensorPrimitives.Add(dResid, dMlpIn, dResidMid);
                hooks.FireBackward(n.ResidMid, l, dResidMid, B, T, C);
                dResidMid.AsSpan().CopyTo(dAttnOut);
            }

            // ---- attention: resid_mid = resid_pre + attn_out ----
            hooks.FireBackward(n.AttnOut, l, dAttnOut, B, T, C);
            var dAttnRaw = dAttnOut;
            if (cfg.PostNorms)
            {
                NormBackward(bt.Ln1Post!, L.Ln1PostWeight!, dAttnOut, dRaw!, R, C, layerNorm, hooks, n.Ln1PostNormalized, n.Ln1PostScale, l, B, T);
                dAttnRaw = dRaw!;
            }
            if (bt.ResultActive || hooks.WantsGradient(n.Result))
            {
                // attn_out = Σ_h result_h (+ b_O): every head's result gets attn_out's gradient; dz_h = dresult_h · W_O[h]ᵀ
                var dResult = new float[R * NH * C];
                ParallelRows.For(R, (long)NH * C, (r0, r1) =>
                {
                    for (int r = r0; r < r1; r++)
                        for (int h = 0; h < NH; h++) dAttnRaw.AsSpan(r * C, C).CopyTo(dResult.AsSpan((r * NH + h) * C, C));
                });
                hooks.FireBackward(n.Result, l, dResult, B, T, NH, C);
                fixed (float* pr = dResult, pz = dZ)
                    for (int h = 0; h < NH; h++)
                        Gemm.Multiply(new MatrixView(pr + h * C, DType.F32, R, C, (long)NH * C, 1), L.Wo.RowSlice(h * HS, HS).T, pz + h * HS, NH * HS);
            }
            else LinearBackward(dAttnRaw, R, L.Wo, dZ);
            hooks.FireBackward(n.Z, l, dZ, B, T, NH, HS);

            var shape = TransformerForward.AttentionShape(cfg, l, B, T, 0, T);
            Attention.WeightedValuesBackward(dZ, bt.Pattern, bt.V, dPattern, dV, shape);
            hooks.FireBackward(n.Pattern, l, dPattern, B, NH, T, T);
            Attention.SoftmaxBackward(bt.Pattern, dPattern, dScores, shape);
            hooks.FireBackward(n.Scores, l, dScores, B, NH, T, T);
            if (bt.RawScores != null) Attention.SoftCapBackward(bt.RawScores, dScores, shape);
            Attention.ScoresBackward(dScores, bt.Q, bt.K, dQ, dK, shape);
            if (rope != null)
            {
                hooks.FireBackward(n.RotK, l, dK, B, T, NKV, HS);
                hooks.FireBackward(n.RotQ, l, dQ, B, T, NH, HS);
                rope.ApplyBackward(dK, tape.Positions, NKV);
                rope.ApplyBackward(dQ, tape.Positions, NH);
            }
            hooks.FireBackward(n.V, l, dV, B, T, NKV, HS);
            hooks.FireBackward(n.K, l, dK, B, T, NKV, HS);
            hooks.FireBackward(n.Q, l, dQ, B, T, NH, HS);
            LinearBackward(dQ, R, L.Wq, dNormOut);
            LinearBackward(dK, R, L.Wk, dNormOut, accumulate: true);
            LinearBackward(dV, R, L.Wv, dNormOut, accumulate: true);
            NormBackward(bt.Ln1, L.Ln1Weight, dNormOut, dLn1In, R, C, layerNorm, hooks, n.Ln1Normalized, n.Ln1Scale, l, B, T);
            TensorPrimitives.Add(dResidMid, dLn1In, dResid);
            hooks.FireBackward(n.ResidPre, l, dResid, B, T, C);
        }

        // ---- embeddings: resid_pre of block 0 = embed (+ pos_embed) ----
        if (w.PositionEmbedding != null) hooks.FireBackward(HookNames.PosEmbed, -1, (float[])dResid.Clone(), B, T, C);
        hooks.FireBackward(HookNames.Embed, -1, dResid, B, T, C);
    }

    /// <summary>dx (R, K) = dy (R, N) · Wᵀ for y = x·W + bias (W is (K, N)); += when <paramref name="accumulate"/>.</summary>
    static void LinearBackward(float[] dy, int rows, MatrixView wt, float[] dx, bool accumulate = false)
    {
        fixed (float* pdy = dy, pdx = dx)
            Gemm.Multiply(MatrixView.F32(pdy, rows, wt.Cols), wt.T, pdx, wt.Rows, accumulate);
    }

    /// <summary>
    /// Backward of the forward's Norm: dOut (R,C) → hook_normalized's gradient (fired) → hook_scale's gradient (fired)
    /// → dInput (R,C). dOut is overwritten with the normalized input's gradient.
    /// </summary>
    static void NormBackward(NormTape tape, float[] weight, float[] dOut, float[] dInput, int R, int C, bool layerNorm,
        HookSet hooks, string normalizedName, string scaleName, int layer, int B, int T)
    {
        ParallelRows.For(R, C, (r0, r1) => Norms.AffineBackward(dOut.AsSpan(r0 * C, (r1 - r0) * C), weight, dOut.AsSpan(r0 * C, (r1 - r0) * C), r1 - r0, C));
        hooks.FireBackward(normalizedName, layer, dOut, B, T, C);
        var dScale = new float[R];
        Norms.NormalizeBackwardScale(dOut, tape.Source, tape.Scale, dScale, R, C);
        hooks.FireBackward(scaleName, layer, dScale, B, T, 1);
        ParallelRows.For(R, C, (r0, r1) => Norms.NormBackwardInput(dOut.AsSpan(r0 * C, (r1 - r0) * C), tape.Source.AsSpan(r0 * C, (r1 - r0) * C),
            tape.Scale.AsSpan(r0, r1 - r0), dScale.AsSpan(r0, r1 - r0), dInput.AsSpan(r0 * C, (r1 - r0) * C), r1 - r0, C, layerNorm));
    }
}
