using System.Numerics.Tensors;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Tensors;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Runtime.Models;

/// <summary>Hooks and cache requests of one forward pass.</summary>
internal sealed class HookSet
{
    readonly Dictionary<string, List<HookFunction>> _fns = new(StringComparer.Ordinal);
    readonly Func<string, bool>? _cacheFilter;
    readonly Dictionary<string, List<IHookSpliceRun>> _spliceIn = new(StringComparer.Ordinal), _spliceOut = new(StringComparer.Ordinal);
    readonly int[] _lengths;
    public ActivationCache? Cache { get; }

    // ---- backward: hooks on gradients, the gradient cache, metric seeds ----
    readonly Dictionary<string, List<HookFunction>> _backwardFns = new(StringComparer.Ordinal);
    Func<string, bool>? _gradFilter;
    /// <summary>Gradients kept by the backward pass (null: none).</summary>
    public ActivationCache? GradientCache { get; private set; }
    /// <summary>Gradients added at hook points when the backward reaches them (e.g. a feature metric's one-hot seed).</summary>
    public Dictionary<string, float[]> Seeds { get; } = new(StringComparer.Ordinal);
    /// <summary>The forward is recorded for a backward pass: splices keep what their backward needs.</summary>
    public bool Recording { get; private set; }
    /// <summary>Latent hooks whose gradients are needed only where active (see <see cref="GradientOptions.ActiveLatentGradients"/>).</summary>
    public IReadOnlyDictionary<string, Tensor?>? ActiveLatentGradients { get; set; }

    /// <summary>Prepares this hook set for a recorded forward and the backward pass after it.</summary>
    public void EnableBackward(IEnumerable<(string Name, HookFunction Fn)> backwardHooks, Func<string, bool>? gradFilter, ActivationCache? gradCache)
    {
        foreach (var (name, fn) in backwardHooks)
        {
            if (!_backwardFns.TryGetValue(name, out var list)) _backwardFns[name] = list = [];
            list.Add(fn);
        }
        _gradFilter = gradFilter; GradientCache = gradCache; Recording = true;
    }

    /// <summary>True when a backward hook, the gradient cache or a seed wants this hook point's gradient.</summary>
    public bool WantsGradient(string name) => _backwardFns.ContainsKey(name) || GradCached(name) || Seeds.ContainsKey(name);

    bool GradCached(string name) => GradientCache != null && _gradFilter!(name) && (!HookNames.IsExtra(name) || Selective(_gradFilter));

    bool Cached(string name) => Cache != null && _cacheFilter!(name) && (!HookNames.IsExtra(name) || _cacheSelective);

    /// <summary>
    /// Whether a filter picks names rather than taking everything: the extra (non-TransformerLens) hook points are cached
    /// only by filters that refuse some name, so "cache everything" keeps TransformerLens's set of names.
    /// </summary>
    static bool Selective(Func<string, bool> filter) => !filter("\u0001(no hook has this name)");
    readonly bool _cacheSelective;

    /// <summary>
    /// The backward pass reached <paramref name="name"/> with <paramref name="grad"/> (the gradient of the value the rest
    /// of the forward used, shaped like the activation). In reverse of <see cref="Fire(string, int, float[], int[])"/>: splices writing this hook turn it
    /// into the gradient of the value before them, splices reading it add their share, the seed is added, backward hook
    /// functions read or edit it, and the cache keeps it.
    /// </summary>
    public void FireBackward(string name, int layer, float[] grad, params int[] shape) => FireBackward(name, layer, grad, shape, false);

    /// <summary><see cref="FireBackward(string, int, float[], int[])"/>; <paramref name="owned"/>: the caller will not change <paramref name="grad"/> afterwards, so the cache keeps it without a copy.</summary>
    void FireBackward(string name, int layer, float[] grad, int[] shape, bool owned)
    {
        var t = new Tensor(shape, grad);
        bool hasOut = _spliceOut.TryGetValue(name, out var outs), hasIn = _spliceIn.TryGetValue(name, out var ins);
        if (hasOut || hasIn)
        {
            // a seed changes a gradient like a backward hook does
            var ctx = new SpliceContext(layer, _lengths, FireBackward, WantsGradient, n => _backwardFns.ContainsKey(n) || Seeds.ContainsKey(n), Recording)
            {
                ActiveLatentGradients = ActiveLatentGradients,
            };
            if (hasOut) for (int i = outs!.Count - 1; i >= 0; i--) Backward(outs[i]).OnOutputBackward(ctx, t);
            if (hasIn) for (int i = ins!.Count - 1; i >= 0; i--) Backward(ins[i]).OnInputBackward(ctx, t);
        }
        if (Seeds.TryGetValue(name, out var seed)) TensorPrimitives.Add(grad, seed, grad);
        if (_backwardFns.TryGetValue(name, out var fns)) RunFunctions(fns, t, name, layer, "backward hook");
        if (GradCached(name)) GradientCache![name] = owned ? t : t.Clone();
    }

    /// <summary>Runs hook functions on <paramref name="t"/> in order; a returned tensor (of the same shape) replaces its data.</summary>
    static void RunFunctions(List<HookFunction> fns, Tensor t, string name, int layer, string what)
    {
        var point = new HookPoint(name, layer);
        foreach (var fn in fns)
        {
            var r = fn(t, point);
            if (r is null || ReferenceEquals(r.Data, t.Data)) continue;
            if (!r.Shape.AsSpan().SequenceEqual(t.Shape))
                throw new InvalidOperationException($"{what} at '{name}' returned shape [{string.Join(",", r.Shape)}], expected [{string.Join(",", t.Shape)}]");
            r.Data.AsSpan().CopyTo(t.Data);
        }
    }

    static IHookSpliceBackward Backward(IHookSpliceRun run) => run as IHookSpliceBackward
        ?? throw new NotSupportedException($"{run.GetType().Name} does not support gradients (it has no backward pass)");

    public HookSet(IEnumerable<(string Name, HookFunction Fn)> hooks, Func<string, bool>? cacheFilter, ActivationCache? cache,
        IEnumerable<IHookSplice>? splices = null, int[]? lengths = null)
    {
        foreach (var (name, fn) in hooks)
        {
            if (!_fns.TryGetValue(name, out var list)) _fns[name] = list = [];
            list.Add(fn);
        }
        _cacheFilter = cacheFilter;
        Cache = cache;
        _cacheSelective = cacheFilter != null && Selective(cacheFilter);
        _lengths = lengths ?? [];
        foreach (var s in splices ?? [])
        {
            var run = s.Start();
            Add(_spliceIn, s.InputHook, run);
            Add(_spliceOut, s.OutputHook, run);
        }
    }

    static void Add(Dictionary<string, List<IHookSpliceRun>> d, string key, IHookSpliceRun run)
    {
        if (!d.TryGetValue(key, out var list)) d[key] = list = [];
        list.Add(run);
    }

    public bool HasHook(string name) => _fns.ContainsKey(name);
    public bool Active(string name) => _fns.ContainsKey(name) || Cached(name) || _spliceIn.ContainsKey(name) || _spliceOut.ContainsKey(name);

    /// <summary>
    /// Runs the hooks on <paramref name="data"/> (seen with <paramref name="shape"/>), caches it if asked, then
    /// hands it to splices reading this hook and lets splices writing this hook replace it.
    /// </summary>
    public void Fire(string name, int layer, float[] data, params int[] shape) => Fire(name, layer, data, shape, false);

    /// <summary><see cref="Fire(string, int, float[], int[])"/>; <paramref name="owned"/>: the caller will not change <paramref name="data"/> afterwards, so the cache keeps it without a copy.</summary>
    void Fire(string name, int layer, float[] data, int[] shape, bool owned)
    {
        if (!Active(name)) return;
        var t = new Tensor(shape, data);
        if (_fns.TryGetValue(name, out var fns)) RunFunctions(fns, t, name, layer, "hook");
        if (Cached(name)) Cache![name] = owned ? t : t.Clone();
        bool hasIn = _spliceIn.TryGetValue(name, out var ins), hasOut = _spliceOut.TryGetValue(name, out var outs);
        if (!hasIn && !hasOut) return;
        var ctx = new SpliceContext(layer, _lengths, Fire, Active, HasHook, Recording);
        if (hasIn) foreach (var s in ins!) s.OnInput(ctx, t);
        if (hasOut) foreach (var s in outs!) s.OnOutput(ctx, t);
    }
}

/// <summary>
/// Per-layer key/value memory for incremental decoding. K and V of layer l are (B, Smax, NKV, HS),
/// rotated keys included; <see cref="Length"/> positions are filled.
/// </summary>
public sealed class KvCache
{
    internal readonly float[][] K, V;
    public int Batch { get; }
    public int Capacity { get; }
    public int Length { get; internal set; }

    public KvCache(ModelConfig cfg, int batch, int capacity)
    {
        if (capacity > cfg.NCtx) throw new ArgumentException($"KV cache capacity {capacity} exceeds the model's context of {cfg.NCtx} positions");
        Batch = batch; Capacity = capacity;
        K = new float[cfg.NLayers][]; V = new float[cfg.NLayers][];
        long per = (long)batch * capacity * cfg.NKvHeads * cfg.DHead;
        for (int l = 0; l < cfg.NLayers; l++) { K[l] = new float[per]; V[l] = new float[per]; }
    }
}

/// <summary>
/// The forward pass shared by GPT-2 and Llama (they differ in norms, positions, biases and the MLP,
/// all described by <see cref="ModelConfig"/> and <see cref="TransformerWeights"/>).
/// Notation: B batch, T positions (padded to the longest sequence), R = B·T rows, C d_model, NH/NKV heads,
/// HS head size, M d_mlp, V vocabulary. Every activation is a row-major (R, ...) buffer, which is exactly
/// TransformerLens's [batch, pos, ...] layout.
/// </summary>
internal static unsafe class TransformerForward
{
    /// <summary>
    /// Runs the model; returns logits (B, T, V) or null when <paramref name="computeLogits"/> is false. <paramref name="compute"/>
    /// picks the weight products (<see cref="Linear"/>); a recorded forward (<paramref name="tape"/>) always computes in float32.
    /// </summary>
    public static Tensor? Run(ModelConfig cfg, TransformerWeights w, Rope? rope, LayerHookNames[] names,
        int[][] tokens, HookSet hooks, bool computeLogits, KvCache? kv, int stopAtLayer, ForwardTape? tape = null, ComputeMode compute = ComputeMode.Float32)
    {
        if (tape != null) compute = ComputeMode.Float32;
        int B = tokens.Length, T = tokens.Max(t => t.Length), R = B * T;
        int C = cfg.DModel, NH = cfg.NHeads, NKV = cfg.NKvHeads, HS = cfg.DHead, M = cfg.DMlp, V = cfg.VocabSize;
        int past = kv?.Length ?? 0;
        bool gated = cfg.GatedMlp, parallel = cfg.ParallelAttnMlp;
        int[] lengths = tokens.Select(t => t.Length).ToArray();
        if (tape != null && (kv != null || stopAtLayer < cfg.NLayers)) throw new ArgumentException("a recorded forward runs whole sequences through every layer");
        rope = rope?.ForLength(past + T);

        // a recorded forward keeps its buffers for the backward, which gives them back to the pool afterwards
        float[] Buf(long n) => tape != null ? tape.Rent(n) : Alloc(n);
        var positions = new int[R];
        for (int r = 0; r < R; r++) positions[r] = past + r % T;
        tape?.Start(B, T, lengths, positions, cfg.NLayers);
        if (tape != null) tape.Rope = rope;

        // ---- embeddings ----
        var embed = Buf(R * C);
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
            {
                var row = embed.AsSpan((b * T + t) * C, C);
                if (t < lengths[b])
                {
                    w.TokenEmbedding.ReadRow(tokens[b][t], row);
                    if (cfg.EmbeddingScale != 1f) TensorPrimitives.Multiply(row, cfg.EmbeddingScale, row);
                }
                else row.Clear(); // padding
            }
        hooks.Fire(HookNames.Embed, -1, embed, B, T, C);
        var resid = embed;
        if (w.PositionEmbedding is { } wpe)
        {
            var pos = Buf(R * C);
            for (int r = 0; r < R; r++) wpe.ReadRow(positions[r], pos.AsSpan(r * C, C));
            hooks.Fire(HookNames.PosEmbed, -1, pos, B, T, C);
            resid = Buf(R * C);
            TensorPrimitives.Add(embed, pos, resid);
        }

        // ---- scratch buffers reused by every layer ----
        var normIn = Buf(R * C); var scale = Buf(R); var normalized = Buf(R * C); var normOut = Buf(R * C);
        var q = Buf(R * NH * HS); var k = Buf(R * NKV * HS); var v = Buf(R * NKV * HS);
        var z = Buf(R * NH * HS); var attnOut = Buf(R * C); var residMid = Buf(R * C);
        var pre = Buf(R * M); var preLinear = gated ? Buf(R * M) : null; var post = Buf(R * M);
        var mlpOut = Buf(R * C); var residPost = Buf(R * C);
        float[]? mlpIn = null;
        // Gemma 2's post-norms read the raw attention / MLP outputs
        var attnRaw = cfg.PostNorms ? Buf(R * C) : attnOut;
        var mlpRaw = cfg.PostNorms ? Buf(R * C) : mlpOut;

        int layers = Math.Min(cfg.NLayers, stopAtLayer);
        for (int l = 0; l < layers; l++)
        {
            var L = w.Layers[l];
            var n = names[l];
            BlockTape? bt = null;
            if (tape != null)
            {
                // the backward needs this block's buffers: give it fresh ones instead of reusing the last block's
                bt = tape.Blocks[l] = new BlockTape();
                normIn = Buf(R * C); scale = Buf(R);
                q = Buf(R * NH * HS); k = Buf(R * NKV * HS); v = Buf(R * NKV * HS);
                residMid = Buf(R * C); residPost = Buf(R * C); mlpIn = null;
                pre = Buf(R * M); preLinear = gated ? Buf(R * M) : null;
                if (cfg.PostNorms) { attnRaw = Buf(R * C); mlpRaw = Buf(R * C); }
                bt.Ln1 = new NormTape(cfg.LayerNorm ? normIn : resid, scale);
            }
            hooks.Fire(n.ResidPre, l, resid, B, T, C);

            // ---- attention ----
            Norm(cfg, resid, L.Ln1Weight, L.Ln1Bias, normIn, scale, normalized, normOut, R, C, hooks, n.Ln1Scale, n.Ln1Normalized, l, B, T);
            Linear(normOut, R, L.Wq, L.Bq, q, compute);
            Linear(normOut, R, L.Wk, L.Bk, k, compute);
            Linear(normOut, R, L.Wv, L.Bv, v, compute);
            hooks.Fire(n.Q, l, q, B, T, NH, HS);
            hooks.Fire(n.K, l, k, B, T, NKV, HS);
            hooks.Fire(n.V, l, v, B, T, NKV, HS);
            if (rope != null)
            {
                rope.Apply(q, positions, NH);
                rope.Apply(k, positions, NKV);
                hooks.Fire(n.RotQ, l, q, B, T, NH, HS);
                hooks.Fire(n.RotK, l, k, B, T, NKV, HS);
            }
            float[] keys = k, values = v;
            int smax = T;
            if (kv != null)
            {
                keys = kv.K[l]; values = kv.V[l]; smax = kv.Capacity;
                for (int b = 0; b < B; b++)
                {
                    int len = T * NKV * HS;
                    Array.Copy(k, b * len, keys, ((long)b * smax + past) * NKV * HS, len);
                    Array.Copy(v, b * len, values, ((long)b * smax + past) * NKV * HS, len);
                }
            }
            var shape = AttentionShape(cfg, l, B, T, past, smax);
            if (bt != null || hooks.Active(n.Scores) || hooks.Active(n.Pattern))
            {
                int S = past + T;
                var scores = Buf(B * NH * T * S);
                float[]? raw = null;
                if (bt != null && shape.SoftCap > 0)
                {
                    // the backward of the cap needs the raw scores
                    raw = Buf(B * NH * T * S);
                    Attention.Scores(q, keys, raw, shape with { SoftCap = 0 });
                    Attention.SoftCapScores(raw, scores, shape);
                }
                else Attention.Scores(q, keys, scores, shape);
                hooks.Fire(n.Scores, l, scores, B, NH, T, S);
                var pattern = Buf(B * NH * T * S);
                Attention.Softmax(scores, pattern, shape);
                hooks.Fire(n.Pattern, l, pattern, B, NH, T, S);
                Attention.WeightedValues(pattern, values, z, shape, allKeys: hooks.HasHook(n.Pattern));
                if (bt != null) { bt.Q = q; bt.K = k; bt.V = v; bt.Pattern = pattern; bt.RawScores = raw; }
            }
            else Attention.Forward(q, keys, values, z, shape);
            hooks.Fire(n.Z, l, z, B, T, NH, HS);

            if (bt != null) bt.ResultActive = hooks.Active(n.Result);
            if (hooks.Active(n.Result))
            {
                // result[r,h,:] = z[r,h,:]·Wo[h·HS:(h+1)·HS, :]; attn_out = Σ_h result + bo
                var result = Buf(R * NH * C);
                fixed (float* pz = z, pr = result)
                    for (int h = 0; h < NH; h++)
                        Multiply(new MatrixView(pz + h * HS, DType.F32, R, HS, NH * HS, 1), L.Wo.RowSlice(h * HS, HS), pr + h * C, NH * C, compute);
                hooks.Fire(n.Result, l, result, B, T, NH, C);
                ParallelRows.For(R, (long)NH * C, (r0, r1) =>
                {
                    for (int r = r0; r < r1; r++)
                    {
                        var o = attnRaw.AsSpan(r * C, C);
                        result.AsSpan(r * NH * C, C).CopyTo(o);
                        for (int h = 1; h < NH; h++) TensorPrimitives.Add(o, result.AsSpan((r * NH + h) * C, C), o);
                        if (L.Bo != null) TensorPrimitives.Add(o, L.Bo, o);
                    }
                });
            }
            else Linear(z, R, L.Wo, L.Bo, attnRaw, compute);
            if (cfg.PostNorms)
            {
                if (bt != null) { scale = Buf(R); bt.Ln1Post = new NormTape(attnRaw, scale); }
                Norm(cfg, attnRaw, L.Ln1PostWeight!, null, normIn, scale, normalized, attnOut, R, C, hooks, n.Ln1PostScale, n.Ln1PostNormalized, l, B, T);
            }
            hooks.Fire(n.AttnOut, l, attnOut, B, T, C);
            if (!parallel)
            {
                TensorPrimitives.Add(resid, attnOut, residMid);
                hooks.Fire(n.ResidMid, l, residMid, B, T, C);
            }

            // ---- MLP (reads resid_mid, or resid_pre when parallel) ----
            var mlpInput = parallel ? resid : residMid;
            if (hooks.Active(n.MlpIn))
            {
                mlpIn ??= Buf(R * C);
                mlpInput.AsSpan().CopyTo(mlpIn);
                hooks.Fire(n.MlpIn, l, mlpIn, B, T, C);
                mlpInput = mlpIn;
            }
            if (bt != null)
            {
                normIn = Buf(R * C); scale = Buf(R);
                bt.Ln2 = new NormTape(cfg.LayerNorm ? normIn : mlpInput, scale);
                bt.Pre = pre; bt.PreLinear = preLinear;
            }
            Norm(cfg, mlpInput, L.Ln2Weight, L.Ln2Bias, normIn, scale, normalized, normOut, R, C, hooks, n.Ln2Scale, n.Ln2Normalized, l, B, T);
            hooks.Fire(n.MlpHookIn, l, normOut, B, T, C);
            Linear(normOut, R, L.WIn, L.BIn, pre, compute);
            hooks.Fire(n.MlpPre, l, pre, B, T, M);
            if (gated)
            {
                Linear(normOut, R, L.WUp!.Value, null, preLinear!, compute);
                hooks.Fire(n.MlpPreLinear, l, preLinear!, B, T, M);
                ParallelRows.For(R, M, (r0, r1) => Activations.Gated(cfg.Activation, pre.AsSpan(r0 * M, (r1 - r0) * M), preLinear.AsSpan(r0 * M, (r1 - r0) * M), post.AsSpan(r0 * M, (r1 - r0) * M)));
            }
            else
                ParallelRows.For(R, M, (r0, r1) => Activations.Apply(cfg.Activation, pre.AsSpan(r0 * M, (r1 - r0) * M), post.AsSpan(r0 * M, (r1 - r0) * M)));
            hooks.Fire(n.MlpPost, l, post, B, T, M);
            Linear(post, R, L.WOut, L.BOut, mlpRaw, compute);
            hooks.Fire(n.MlpHookOut, l, mlpRaw, B, T, C);
            if (cfg.PostNorms)
            {
                if (bt != null) { scale = Buf(R); bt.Ln2Post = new NormTape(mlpRaw, scale); }
                Norm(cfg, mlpRaw, L.Ln2PostWeight!, null, normIn, scale, normalized, mlpOut, R, C, hooks, n.Ln2PostScale, n.Ln2PostNormalized, l, B, T);
            }
            hooks.Fire(n.MlpOut, l, mlpOut, B, T, C);
            if (parallel)
            {
                TensorPrimitives.Add(resid, attnOut, residPost);
                TensorPrimitives.Add(residPost, mlpOut, residPost);
            }
            else TensorPrimitives.Add(residMid, mlpOut, residPost);
            hooks.Fire(n.ResidPost, l, residPost, B, T, C);

            // resid_post of this layer is resid_pre of the next
            (resid, residPost) = (residPost, resid);
        }
        if (layers < cfg.NLayers)
        {
            ZeroPadding(hooks.Cache, lengths, T);
            return null;
        }
        if (kv != null) kv.Length = past + T;

        // ---- final norm and unembedding ----
        if (tape != null)
        {
            normIn = Buf(R * C); scale = Buf(R);
            tape.Final = new NormTape(cfg.LayerNorm ? normIn : resid, scale);
        }
        Norm(cfg, resid, w.FinalNormWeight, w.FinalNormBias, normIn, scale, normalized, normOut, R, C, hooks, HookNames.LnFinalScale, HookNames.LnFinalNormalized, -1, B, T);
        ZeroPadding(hooks.Cache, lengths, T);
        if (!computeLogits) return null;
        // a recorded forward's logits come from the pool: the gradient result hands them back when disposed
        var logits = tape != null ? new Tensor([B, T, V], BufferPool.Rent(checked(B * T * V))) : new Tensor(B, T, V);
        Linear(normOut, R, w.Unembed, w.UnembedBias, logits.Data, compute);
        if (cfg.FinalSoftcap > 0) SoftCap(logits.Data, cfg.FinalSoftcap);
        for (int b = 0; b < B; b++)
            logits.Data.AsSpan((b * T + lengths[b]) * V, (T - lengths[b]) * V).Clear();
        return logits;
    }

    /// <summary>The attention geometry of layer <paramref name="layer"/>: score scale, soft-cap and sliding window from the config.</summary>
    internal static Attention.Shape AttentionShape(ModelConfig cfg, int layer, int B, int T, int past, int smax) =>
        new(B, T, past, smax, cfg.NHeads, cfg.NKvHeads, cfg.DHead) { Scale = cfg.AttnScoreScale, SoftCap = cfg.AttnSoftcap, Window = cfg.WindowOf(layer) };

    /// <summary>x = c·tanh(x/c) in place, in row chunks across threads.</summary>
    internal static void SoftCap(float[] x, float cap)
    {
        const int Chunk = 1 << 14;
        ParallelRows.For((x.Length + Chunk - 1) / Chunk, Chunk, (c0, c1) =>
        {
            var span = x.AsSpan(c0 * Chunk, Math.Min(x.Length, c1 * Chunk) - c0 * Chunk);
            TensorPrimitives.Multiply(span, 1f / cap, span);
            TensorPrimitives.Tanh(span, span);
            TensorPrimitives.Multiply(span, cap, span);
        });
    }

    /// <summary>y (R, N) = x (R, K) · W (K, N) + bias.</summary>
    internal static void Linear(float[] x, int rows, MatrixView wt, float[]? bias, float[] y, ComputeMode compute = ComputeMode.Float32)
    {
        int N = wt.Cols;
        fixed (float* px = x, py = y)
            Multiply(MatrixView.F32(px, rows, wt.Rows), wt, py, N, compute);
        if (bias != null)
            ParallelRows.For(rows, N, (r0, r1) =>
            {
                for (int r = r0; r < r1; r++) TensorPrimitives.Add(y.AsSpan(r * N, N), bias, y.AsSpan(r * N, N));
            });
    }

    /// <summary>C = A·W: bf16 weights go to the bf16 kernels under <see cref="ComputeMode.BFloat16"/>, everything else to the float32 GEMM.</summary>
    static void Multiply(MatrixView a, MatrixView wt, float* c, int ldc, ComputeMode compute)
    {
        if (compute == ComputeMode.BFloat16 && wt.DType == DType.BF16) GemmBf16.Multiply(a, wt, c, ldc);
        else Gemm.Multiply(a, wt, c, ldc);
    }

    /// <summary>LayerNorm (GPT-2, GPT-NeoX) or RMSNorm (Llama, Gemma) in TransformerLens's stages, firing hook_scale and hook_normalized.</summary>
    static void Norm(ModelConfig cfg, float[] x, float[] weight, float[]? bias, float[] centered, float[] scale, float[] normalized, float[] output,
        int R, int C, HookSet hooks, string scaleName, string normalizedName, int layer, int B, int T)
    {
        bool layerNorm = cfg.LayerNorm;
        var src = layerNorm ? centered : x;
        ParallelRows.For(R, C, (r0, r1) =>
        {
            int n = r1 - r0;
            if (layerNorm) Norms.LayerNormScale(x.AsSpan(r0 * C, n * C), centered.AsSpan(r0 * C, n * C), scale.AsSpan(r0, n), n, C, cfg.NormEps);
            else Norms.RmsNormScale(x.AsSpan(r0 * C, n * C), scale.AsSpan(r0, n), n, C, cfg.NormEps);
        });
        hooks.Fire(scaleName, layer, scale, B, T, 1);
        ParallelRows.For(R, C, (r0, r1) => Norms.Normalize(src.AsSpan(r0 * C, (r1 - r0) * C), scale.AsSpan(r0, r1 - r0), normalized.AsSpan(r0 * C, (r1 - r0) * C), r1 - r0, C));
        hooks.Fire(normalizedName, layer, normalized, B, T, C);
        ParallelRows.For(R, C, (r0, r1) => Norms.Affine(normalized.AsSpan(r0 * C, (r1 - r0) * C), weight, bias, output.AsSpan(r0 * C, (r1 - r0) * C), r1 - r0, C));
    }

    /// <summary>Zeros the padded positions of every cached activation, so padding never looks like data.</summary>
    internal static void ZeroPadding(ActivationCache? cache, int[] lengths, int T)
    {
        if (cache is null || lengths.All(l => l == T)) return;
        foreach (var (name, t) in cache)
        {
            int B = lengths.Length;
            if (HookNames.IsAttentionMatrix(name))
            {
                int NH = t.Shape[1], S = t.Shape[3];
                for (int b = 0; b < B; b++)
                    for (int h = 0; h < NH; h++)
                        for (int i = 0; i < T; i++)
                        {
                            var row = t.Data.AsSpan((((b * NH) + h) * T + i) * S, S);
                            if (i >= lengths[b]) row.Clear();
                        }
            }
            else
            {
                int inner = t.Length / (B * T);
                for (int b = 0; b < B; b++)
                    t.Data.AsSpan((b * T + lengths[b]) * inner, (T - lengths[b]) * inner).Clear();
            }
        }
    }

    static float[] Alloc(long n) => GC.AllocateUninitializedArray<float>(checked((int)n));
}
