using System.Numerics.Tensors;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Connections.Graphs;

/// <summary>Where a layer's transcoder reads the residual stream (all three are linear in it once norm scales are frozen).</summary>
public enum TranscoderInput
{
    /// <summary><c>blocks.L.ln2.hook_normalized</c>: the frozen ln2 normalisation of resid_mid (before ln2's weight and bias).</summary>
    Ln2Normalized,
    /// <summary><c>blocks.L.hook_mlp_in</c> or <c>blocks.L.hook_resid_mid</c>: the MLP's input stream itself (resid_mid; resid_pre when attention and MLP run in parallel).</summary>
    ResidMid,
    /// <summary><c>blocks.L.mlp.hook_in</c> (circuit-tracer's): ln2's output after its weight and bias, with the scale frozen.</summary>
    MlpHookIn,
}

/// <summary>
/// The inputs of the frozen replacement model: one value per feature node (<see cref="ReplacementModel.Sources"/>'s
/// features, in order), the error vectors (n_layers)(T, d_model) and the embeddings (T, d_model, token + position).
/// Edit a copy of <see cref="ReplacementModel.CleanValues"/> to intervene (set, clamp or zero a feature).
/// </summary>
public sealed class ReplacementNodeValues
{
    public required float[] Features { get; init; }
    public required float[][] Errors { get; init; }
    public required float[] Embeddings { get; init; }

    public ReplacementNodeValues Clone() => new()
    {
        Features = (float[])Features.Clone(), Errors = Errors.Select(e => (float[])e.Clone()).ToArray(), Embeddings = (float[])Embeddings.Clone(),
    };
}

/// <summary>What a forward of the frozen replacement model gives: the logits (1, T, V) and every feature node's encoder input.</summary>
public sealed class FrozenForwardResult
{
    /// <summary>(1, T, V).</summary>
    public required Tensor Logits { get; init; }
    /// <summary>The encoder pre-activation of each feature node (same order as the features of <see cref="ReplacementModel.Sources"/>).</summary>
    public required float[] FeatureInputs { get; init; }

    /// <summary>A logit node's input: its logit minus the mean logit at the last position.</summary>
    public float LogitInput(int token)
    {
        int T = Logits.Shape[1], V = Logits.Shape[2];
        var row = new ReadOnlySpan<float>(Logits.Data, (T - 1) * V, V);
        return (float)(row[token] - MeanOf(row));
    }

    internal static double MeanOf(ReadOnlySpan<float> x)
    {
        double s = 0;
        foreach (float v in x) s += v;
        return s / x.Length;
    }
}

/// <summary>
/// The local replacement model of one prompt (CONNECTIONS.md, "Attribution graphs"): each MLP replaced by its layer's
/// transcoder plus an error node, attention patterns and every norm's scale frozen at their clean values. It is linear from
/// node values (feature activations, error vectors, embeddings) to every feature's encoder input and to the logits, and
/// reproduces the model's logits exactly at the clean values. <see cref="RunFrozen"/> evaluates it (interventions);
/// <see cref="ComputeRows"/> gives rows of the adjacency matrix by batched backward passes through it.
/// Notation: T positions, C d_model, L layers, NH/NKV heads, HS head size, V vocabulary, Nt targets in a batch.
/// </summary>
public sealed unsafe class ReplacementModel : IAttributionRows
{
    readonly ModelConfig _cfg;
    readonly TransformerWeights _w;
    readonly Rope? _rope;
    readonly CrossLayerTranscoder _clt;
    readonly Sae[] _tc;                  // _clt.Layers: layer l's encoder, its decoder into layer l, b_dec of layer l
    readonly TranscoderInput[] _input;
    readonly int _T, _C, _L;
    readonly bool _layerNorm;
    readonly int[] _tokens;
    // frozen: ln1/ln2 scales (L)(T), final scale (T), patterns (L)(NH,T,T); for QK attribution the clean q and k after RoPE
    // (L)(T,NH,HS) / (L)(T,NKV,HS)
    readonly float[][] _ln1Scale, _ln2Scale, _pattern, _qk, _kk;
    // Gemma 2: the frozen scale of ln1_post (the norm on the attention output), (L)(T); null elsewhere
    readonly float[][]? _ln1PostScale;
    readonly bool _parallel;
    readonly float[] _finalScale;
    // node values at the clean run
    readonly float[] _embed;             // (T, C)
    readonly float[][] _errors;          // (L)(T, C)
    readonly List<GraphNode> _sources;
    readonly float[] _sourceActs;
    readonly int _nFeatures;
    readonly int[] _featStart;           // (L·T + 1): feature sources of (l, p) are [_featStart[l·T+p], _featStart[l·T+p+1])
    readonly float[] _featureInputs;     // clean encoder pre-activation per feature source
    readonly Dictionary<GraphNode, int> _featureIndex = [];
    // backward read-out per (l, p): rows a_s·W_dec(i → l)[s] for the active features s of every layer i ≤ l that writes layer l
    // (their source indices in _readoutSources), then the error vector, then b_dec of layer l: (k+2, C)
    readonly float[][] _readout;
    readonly int[][] _readoutSources;
    readonly List<GraphNode> _logits;
    readonly float[] _logitProbs, _logitInputs;
    readonly float[] _unembedMean;       // (C): the mean column of the unembedding
    readonly double _unembedBiasMean;

    /// <summary>The logits of the real model on the prompt, (1, T, V) (after a final soft-cap, where the model has one).</summary>
    public Tensor CleanLogits { get; }
    /// <summary>
    /// The last position's logits before the final soft-cap (Gemma 2), (V); the real logits for models without one. The
    /// frozen model is linear up to here: <see cref="RunFrozen"/> returns these pre-cap logits and logit nodes are read
    /// from them, as circuit-tracer reads logit directions off the unembedding.
    /// </summary>
    public float[] CleanPreCapLastLogits { get; }
    /// <summary>The prompt.</summary>
    public IReadOnlyList<int> Tokens => _tokens;
    /// <summary>The transcoder of each layer (for a cross-layer transcoder: layer l's encoder and its decoder into layer l).</summary>
    public IReadOnlyList<Sae> Transcoders => _tc;
    /// <summary>The transcoders as a whole: a cross-layer transcoder, or the per-layer set as one whose decoders reach only their own layer.</summary>
    public CrossLayerTranscoder Transcoder => _clt;
    /// <summary>How many of <see cref="Sources"/> are features (they come first).</summary>
    public int FeatureCount => _nFeatures;
    public ModelConfig Config => _cfg;

    public IReadOnlyList<GraphNode> Sources => _sources;
    public IReadOnlyList<float> SourceActivations => _sourceActs;
    public IReadOnlyList<GraphNode> Logits => _logits;
    public IReadOnlyList<float> LogitProbabilities => _logitProbs;

    /// <summary>The node values of the clean run (a fresh copy: edit it and pass it to <see cref="RunFrozen"/>).</summary>
    public ReplacementNodeValues CleanValues() => new()
    {
        Features = _sourceActs.AsSpan(0, _nFeatures).ToArray(),
        Errors = _errors.Select(e => (float[])e.Clone()).ToArray(),
        Embeddings = (float[])_embed.Clone(),
    };

    /// <summary>The column of <paramref name="node"/> in <see cref="Sources"/>, or −1.</summary>
    public int SourceIndex(GraphNode node) => node.Kind switch
    {
        GraphNodeKind.Feature => _featureIndex.GetValueOrDefault(node, -1),
        GraphNodeKind.Error when node.Layer >= 0 && node.Layer < _L && node.Pos >= 0 && node.Pos < _T && node.Index == -1 => _nFeatures + node.Layer * _T + node.Pos,
        GraphNodeKind.Embedding when node.Layer == -1 && node.Pos >= 0 && node.Pos < _T && node.Index == _tokens[node.Pos] => _nFeatures + _L * _T + node.Pos,
        _ => -1,
    };

    /// <summary>
    /// Builds the replacement model of <paramref name="model"/> on one prompt: one transcoder per layer (input hook
    /// <c>blocks.L.ln2.hook_normalized</c>, <c>blocks.L.hook_mlp_in</c> or <c>blocks.L.hook_resid_mid</c>; output
    /// <c>blocks.L.hook_mlp_out</c>), one real forward caching what is frozen, the transcoder activations (active latents
    /// are the feature nodes), the error nodes, the embeddings and the logits.
    /// </summary>
    public static ReplacementModel Build(HookedTransformer model, IReadOnlyList<Sae> transcoders, int[] tokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(transcoders);
        CheckPrompt(model, tokens);
        var (tc, input) = AssignTranscoders(model, transcoders);
        return new ReplacementModel(model, CrossLayerTranscoder.FromPerLayer(tc), input, tokens);
    }

    /// <summary>
    /// Builds the replacement model from a cross-layer transcoder (<see cref="Saes.Formats.CircuitTracerFormat.LoadCrossLayer"/>):
    /// every MLP output replaced by the CLT's reconstruction of it plus an error node; the features of layer i read layer i's MLP
    /// input and write every layer j ≥ i. A set of per-layer transcoders as <see cref="CrossLayerTranscoder.FromPerLayer"/> gives the
    /// same model as the other overload.
    /// </summary>
    public static ReplacementModel Build(HookedTransformer model, CrossLayerTranscoder transcoder, int[] tokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(transcoder);
        CheckPrompt(model, tokens);
        int L = model.Config.NLayers;
        string name = transcoder.SourcePath ?? "the cross-layer transcoder";
        if (transcoder.NLayers != L)
            throw new ArgumentException($"{name} has {transcoder.NLayers} layers but the model has {L} (the replacement model needs one transcoder layer per model layer)");
        var input = new TranscoderInput[L];
        for (int i = 0; i < L; i++)
        {
            var sae = transcoder.Layers[i];
            var (layer, kind) = CheckTranscoder(model, sae, $"layer {i} of {name} (hook '{sae.Config.HookName}')");
            if (layer != i) throw new ArgumentException($"layer {i} of {name} reads '{sae.Config.HookName}', a hook of layer {layer}");
            input[i] = kind;
        }
        return new ReplacementModel(model, transcoder, input, tokens);
    }

    static void CheckPrompt(HookedTransformer model, int[] tokens)
    {
        if (tokens is null || tokens.Length == 0) throw new ArgumentException("the prompt is empty: an attribution graph needs at least one token", nameof(tokens));
        if (tokens.Length > model.Config.NCtx)
            throw new ArgumentException($"the prompt has {tokens.Length} tokens but the model's context is {model.Config.NCtx} positions", nameof(tokens));
        model.ValidateTokens([tokens]);
        if (model.Splices.Count > 0)
            throw new ArgumentException($"the model has {model.Splices.Count} attached splice(s); detach them (ResetSplices) before building a replacement model, whose clean run must be the model's own");
    }

    /// <summary>
    /// A set of per-layer transcoders (any order) as the <see cref="CrossLayerTranscoder"/> whose decoders reach only their own
    /// layer, after the checks of <see cref="Build(HookedTransformer, IReadOnlyList{Sae}, int[])"/> (one per layer of
    /// <paramref name="model"/>, at a supported hook, widths d_model).
    /// </summary>
    public static CrossLayerTranscoder OrderByLayer(HookedTransformer model, IReadOnlyList<Sae> transcoders)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(transcoders);
        return CrossLayerTranscoder.FromPerLayer(AssignTranscoders(model, transcoders).Item1);
    }

    /// <summary>Checks the transcoders (one per layer, at a supported hook, widths d_model) and orders them by layer.</summary>
    static (Sae[], TranscoderInput[]) AssignTranscoders(HookedTransformer model, IReadOnlyList<Sae> transcoders)
    {
        int L = model.Config.NLayers;
        var tc = new Sae[L];
        var input = new TranscoderInput[L];
        var origin = new int[L];
        for (int i = 0; i < transcoders.Count; i++)
        {
            var sae = transcoders[i] ?? throw new ArgumentException($"transcoder {i} is null");
            string who = $"transcoder {i} ({sae.SourcePath ?? SaeConfig.ArchitectureName(sae.Config.Architecture)}, hook '{sae.Config.HookName}')";
            var (layer, kind) = CheckTranscoder(model, sae, who);
            if (tc[layer] != null) throw new ArgumentException($"two transcoders for layer {layer}: transcoder {origin[layer]} and transcoder {i}");
            tc[layer] = sae; input[layer] = kind; origin[layer] = i;
        }
        var missing = Enumerable.Range(0, L).Where(l => tc[l] == null).ToList();
        if (missing.Count > 0)
            throw new ArgumentException($"no transcoder for layer{(missing.Count > 1 ? "s" : "")} {string.Join(", ", missing)} (the replacement model needs one per layer, {L} in all; {transcoders.Count} given)");
        return (tc, input);
    }

    /// <summary>Checks one transcoder (a supported MLP-input hook, writes that layer's hook_mlp_out, widths d_model): its layer and input kind.</summary>
    static (int Layer, TranscoderInput Kind) CheckTranscoder(HookedTransformer model, Sae sae, string who)
    {
        int C = model.Config.DModel;
        var c = sae.Config;
        if (!c.IsTranscoder)
            throw new ArgumentException($"{who}: architecture '{SaeConfig.ArchitectureName(c.Architecture)}' is not a transcoder (an attribution graph replaces each MLP with a transcoder reading the MLP's input and writing blocks.L.hook_mlp_out)");
        if (c.Metadata.HookHeadIndex is not null) throw new ArgumentException($"{who}: reads one attention head (hook_head_index), not an MLP input");
        if (c.Normalization is ActivationNormalization.ConstantNormRescale or ActivationNormalization.LayerNorm)
            throw new ArgumentException($"{who}: input normalisation '{SaeConfig.NormalizationName(c.Normalization)}' depends on the input's norm, so the encoder is not linear in the residual stream; the replacement model needs normalize_activations 'none'");
        if (c.Architecture == SaeArchitecture.Gated)
            throw new ArgumentException($"{who}: gated encoders have no single pre-activation");
        var (layer, kind) = ParseInputHook(c.HookName, model, who);
        string outHook = $"blocks.{layer}.hook_mlp_out";
        // circuit-tracer's mlp.hook_out is the same value as hook_mlp_out unless a post-norm (Gemma 2's ln2_post) follows the MLP
        bool sameAsMlpOut = c.OutputHookName == $"blocks.{layer}.mlp.hook_out" && !model.Config.PostNorms;
        if (c.OutputHookName != outHook && !sameAsMlpOut)
            throw new ArgumentException($"{who}: writes '{c.OutputHookName}' but a transcoder reading layer {layer}'s MLP input must write '{outHook}'" +
                (model.Config.PostNorms ? " (this model's blocks.L.mlp.hook_out comes before the post-MLP norm, so only hook_mlp_out is linear in the replacement)" : $" (or blocks.{layer}.mlp.hook_out)"));
        if (c.DIn != C) throw new ArgumentException($"{who}: d_in is {c.DIn} but the model's d_model is {C}");
        if (c.DOut != C) throw new ArgumentException($"{who}: d_out is {c.DOut} but the model's d_model is {C}");
        return (layer, kind);
    }

    static (int Layer, TranscoderInput Kind) ParseInputHook(string hook, HookedTransformer model, string who)
    {
        const string expected = "blocks.L.ln2.hook_normalized, blocks.L.mlp.hook_in, blocks.L.hook_mlp_in or blocks.L.hook_resid_mid (not for parallel attention+MLP)";
        try { model.CheckHookName(hook); }
        catch (ArgumentException e) { throw new ArgumentException($"{who}: the model lacks its input hook: {e.Message}", e); }
        var parts = hook.Split('.');
        if (parts.Length >= 3 && parts[0] == "blocks" && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int layer))
        {
            string rest = string.Join('.', parts.Skip(2));
            if (rest == "ln2.hook_normalized") return (layer, TranscoderInput.Ln2Normalized);
            if (rest == "mlp.hook_in") return (layer, TranscoderInput.MlpHookIn);
            if (rest == "hook_mlp_in" || (rest == "hook_resid_mid" && !model.Config.ParallelAttnMlp)) return (layer, TranscoderInput.ResidMid);
        }
        throw new ArgumentException($"{who}: reads '{hook}', which is not an MLP input (expected {expected})");
    }

    ReplacementModel(HookedTransformer model, CrossLayerTranscoder clt, TranscoderInput[] input, int[] tokens)
    {
        var tc = clt.Layers.ToArray();
        _cfg = model.Config; _w = model.Weights; _clt = clt; _tc = tc; _input = input; _tokens = (int[])tokens.Clone();
        int T = _T = tokens.Length, C = _C = _cfg.DModel, L = _L = _cfg.NLayers, V = _cfg.VocabSize;
        _layerNorm = _cfg.LayerNorm;
        _parallel = _cfg.ParallelAttnMlp;
        _rope = _cfg.Rope == RopeLayout.None ? null : new Rope(_cfg.DHead, _cfg.RotaryDim, _cfg.NCtx, _cfg.RopeTheta, _cfg.Rope, _cfg.RopeScaling).ForLength(T);

        // ---- the one real forward: frozen quantities, transcoder inputs, true MLP outputs ----
        var names = new HashSet<string>(StringComparer.Ordinal) { HookNames.Embed, HookNames.LnFinalScale, HookNames.LnFinalNormalized };
        if (_w.PositionEmbedding != null) names.Add(HookNames.PosEmbed);
        for (int l = 0; l < L; l++)
        {
            string b = $"blocks.{l}.";
            names.UnionWith([b + "ln1.hook_scale", b + "ln2.hook_scale", b + "attn.hook_pattern", b + "hook_mlp_out", tc[l].Config.HookName,
                b + (_rope != null ? "attn.hook_rot_q" : "attn.hook_q"), b + (_rope != null ? "attn.hook_rot_k" : "attn.hook_k")]);
            if (_cfg.PostNorms) names.Add(b + "ln1_post.hook_scale");
        }
        var (logits, cache) = model.RunWithCache([tokens], names.Contains);
        CleanLogits = logits;
        {
            // the last position's pre-cap logits: final norm output · W_U (+ b_U)
            var h = cache[HookNames.LnFinalNormalized].Data.AsSpan((T - 1) * C, C).ToArray();
            Norms.Affine(h, _w.FinalNormWeight, _w.FinalNormBias, h, 1, C);
            var pre = CleanPreCapLastLogits = new float[V];
            TransformerForward.Linear(h, 1, _w.Unembed, _w.UnembedBias, pre);
            if (_cfg.FinalSoftcap <= 0) logits.Data.AsSpan((T - 1) * V, V).CopyTo(pre);
        }
        _qk = new float[L][]; _kk = new float[L][];
        _embed = (float[])cache[HookNames.Embed].Data.Clone();
        if (cache.TryGetValue(HookNames.PosEmbed, out var pos)) TensorPrimitives.Add(_embed, pos.Data, _embed);
        _finalScale = cache[HookNames.LnFinalScale].Data;
        _ln1Scale = new float[L][]; _ln2Scale = new float[L][]; _pattern = new float[L][]; _errors = new float[L][];
        _ln1PostScale = _cfg.PostNorms ? new float[L][] : null;

        // ---- transcoders on their clean inputs: active latents, pre-activations, error nodes (mlp_out of layer l minus the
        //      reconstruction: layer l's own decoder, b_dec and skip, plus what the features of every earlier layer write into l) ----
        var feats = new List<(int L, int P, int J, float A, float Pre)>();
        var layerActs = new float[L][];
        for (int l = 0; l < L; l++)
        {
            string b = $"blocks.{l}.";
            _ln1Scale[l] = cache[b + "ln1.hook_scale"].Data;
            _ln2Scale[l] = cache[b + "ln2.hook_scale"].Data;
            if (_ln1PostScale != null) _ln1PostScale[l] = cache[b + "ln1_post.hook_scale"].Data;
            _pattern[l] = cache[b + "attn.hook_pattern"].Data;
            _qk[l] = (_rope != null ? cache[b + "attn.hook_rot_q"] : cache[b + "attn.hook_q"]).Data;
            _kk[l] = (_rope != null ? cache[b + "attn.hook_rot_k"] : cache[b + "attn.hook_k"]).Data;
            var sae = tc[l];
            int D = sae.DSae;
            var x = cache[sae.Config.HookName].Data;
            var pre = new float[(long)T * D];
            var acts = layerActs[l] = new float[(long)T * D];
            var saeIn = new float[T * C];
            sae.Preprocess(x, saeIn, T);
            sae.PreActivations(saeIn, pre, T);
            sae.Activate(pre, acts, T);
            var output = new float[T * C];
            var recons = new float[T * C];
            sae.DecodeRaw(acts, recons, T);
            sae.Postprocess(recons, output, T, null, x);
            for (int i = 0; i < l; i++)
                if (clt.Decoder(i, l) is { } wd) Gemm.MatMul(layerActs[i], wd, output, T, tc[i].DSae, C, accumulate: true);
            var err = _errors[l] = new float[T * C];
            TensorPrimitives.Subtract(cache[b + "hook_mlp_out"].Data, output, err);
            for (int p = 0; p < T; p++)
                for (int j = 0; j < D; j++)
                {
                    float a = acts[(long)p * D + j];
                    if (a != 0) feats.Add((l, p, j, a, pre[(long)p * D + j]));
                }
        }

        // ---- sources: features (by layer, position, latent), errors (by layer, position), embeddings (by position) ----
        _nFeatures = feats.Count;
        _sources = new List<GraphNode>(_nFeatures + L * T + T);
        _sourceActs = new float[_nFeatures + L * T + T];
        _featureInputs = new float[_nFeatures];
        _featStart = new int[L * T + 1];
        for (int s = 0; s < feats.Count; s++)
        {
            var f = feats[s];
            var node = new GraphNode(GraphNodeKind.Feature, f.L, f.P, f.J);
            _sources.Add(node); _featureIndex[node] = s;
            _sourceActs[s] = f.A; _featureInputs[s] = f.Pre;
            _featStart[f.L * T + f.P + 1]++;
        }
        for (int i = 0; i < L * T; i++) _featStart[i + 1] += _featStart[i];
        for (int l = 0; l < L; l++)
            for (int p = 0; p < T; p++)
            {
                _sourceActs[_sources.Count] = TensorPrimitives.Norm(_errors[l].AsSpan(p * C, C));
                _sources.Add(new GraphNode(GraphNodeKind.Error, l, p, -1));
            }
        for (int p = 0; p < T; p++)
        {
            _sourceActs[_sources.Count] = TensorPrimitives.Norm(_embed.AsSpan(p * C, C));
            _sources.Add(new GraphNode(GraphNodeKind.Embedding, -1, p, tokens[p]));
        }

        // ---- backward read-out matrices per (layer, position): every feature writing that layer's mlp_out there ----
        _readout = new float[L * T][];
        _readoutSources = new int[L * T][];
        for (int l = 0; l < L; l++)
            for (int p = 0; p < T; p++)
            {
                var writers = new List<int>();
                for (int i = 0; i <= l; i++)
                    if (clt.Decoder(i, l) != null)
                        for (int s = _featStart[i * T + p]; s < _featStart[i * T + p + 1]; s++) writers.Add(s);
                int k = writers.Count;
                var m = _readout[l * T + p] = new float[(k + 2) * C];
                for (int r = 0; r < k; r++)
                {
                    var node = _sources[writers[r]];
                    var w = clt.Decoder(node.Layer, l)!;
                    float a = _sourceActs[writers[r]];
                    if (node.Layer == l && tc[l].Config.RescaleActsByDecoderNorm) a /= tc[l].DecoderNorms[node.Index];
                    TensorPrimitives.Multiply(new ReadOnlySpan<float>(w, node.Index * C, C), a, m.AsSpan(r * C, C));
                }
                _errors[l].AsSpan(p * C, C).CopyTo(m.AsSpan(k * C, C));
                tc[l].BDec.CopyTo(m.AsSpan((k + 1) * C, C));
                _readoutSources[l * T + p] = [.. writers];
            }

        // ---- logit nodes: the most likely next tokens until their probability reaches 0.95, at most 10 ----
        var last = new ReadOnlySpan<float>(logits.Data, (T - 1) * V, V);
        double max = TensorPrimitives.Max(last), z = 0;
        var probs = new double[V];
        for (int v = 0; v < V; v++) z += probs[v] = Math.Exp(last[v] - max);
        var preCap = CleanPreCapLastLogits;
        double meanLogit = FrozenForwardResult.MeanOf(preCap);
        var order = Enumerable.Range(0, V).OrderByDescending(v => probs[v]).ThenBy(v => v).ToArray();
        _logits = []; var lp = new List<float>(); var li = new List<float>();
        double cum = 0;
        foreach (int v in order)
        {
            if (cum >= 0.95 || _logits.Count >= 10) break;
            _logits.Add(new GraphNode(GraphNodeKind.Logit, L, T - 1, v));
            lp.Add((float)(probs[v] / z)); li.Add((float)(preCap[v] - meanLogit));
            cum += probs[v] / z;
        }
        _logitProbs = [.. lp]; _logitInputs = [.. li];

        // ---- the mean unembedding column and bias (a logit node's input is the logit minus the mean logit) ----
        _unembedMean = new float[C];
        var ones = new float[V];
        Array.Fill(ones, 1f / V);
        fixed (float* po = ones, pm = _unembedMean)
            Gemm.Multiply(MatrixView.F32(po, 1, V), _w.Unembed.T, pm, C);
        _unembedBiasMean = _w.UnembedBias is { } bu ? FrozenForwardResult.MeanOf(bu) : 0;
    }


    // ───────────────────────────── forward of the frozen model ─────────────────────────────

    /// <summary>
    /// The frozen replacement model from node values: embeddings → per layer [frozen ln1 → V → frozen pattern → O] →
    /// transcoder input (frozen ln2 or resid_mid) → encoder pre-activations (read for the feature nodes) → decoder of the
    /// given feature values (+ skip path) + error → … → frozen final norm → logits. Linear in the values.
    /// </summary>
    public FrozenForwardResult RunFrozen(ReplacementNodeValues values)
    {
        ArgumentNullException.ThrowIfNull(values);
        int T = _T, C = _C, L = _L, NH = _cfg.NHeads, NKV = _cfg.NKvHeads, HS = _cfg.DHead;
        if (values.Features.Length != _nFeatures) throw new ArgumentException($"node values: {values.Features.Length} feature values, the replacement model has {_nFeatures} feature nodes");
        if (values.Errors.Length != L || values.Errors.Any(e => e.Length != T * C)) throw new ArgumentException($"node values: errors must be {L} arrays of T·d_model = {T * C} floats");
        if (values.Embeddings.Length != T * C) throw new ArgumentException($"node values: embeddings must have T·d_model = {T * C} floats, got {values.Embeddings.Length}");

        var resid = (float[])values.Embeddings.Clone();
        var normed = new float[T * C]; var v = new float[T * NKV * HS]; var z = new float[T * NH * HS]; var attn = new float[T * C];
        var x = new float[T * C]; var saeIn = new float[T * C]; var recons = new float[T * C]; var mlpOut = new float[T * C];
        var inputs = new float[_nFeatures];
        var shape = new Attention.Shape(1, T, 0, T, NH, NKV, HS);
        var layerActs = new float[L][];
        for (int l = 0; l < L; l++)
        {
            var W = _w.Layers[l];
            Norms.FrozenNormalize(resid, _ln1Scale[l], normed, T, C, _layerNorm);
            Norms.Affine(normed, W.Ln1Weight, W.Ln1Bias, normed, T, C);
            TransformerForward.Linear(normed, T, W.Wv, W.Bv, v);
            Attention.WeightedValues(_pattern[l], v, z, shape);
            TransformerForward.Linear(z, T, W.Wo, W.Bo, attn);
            if (_ln1PostScale != null)
            {
                Norms.FrozenNormalize(attn, _ln1PostScale[l], attn, T, C, _layerNorm);
                Norms.Affine(attn, W.Ln1PostWeight!, null, attn, T, C);
            }
            // parallel attention+MLP: the MLP reads resid_pre, and both outputs join afterwards
            if (!_parallel) TensorPrimitives.Add(resid, attn, resid);

            var sae = _tc[l];
            int D = sae.DSae;
            if (_input[l] != TranscoderInput.ResidMid)
            {
                Norms.FrozenNormalize(resid, _ln2Scale[l], x, T, C, _layerNorm);
                if (_input[l] == TranscoderInput.MlpHookIn) Norms.Affine(x, W.Ln2Weight, W.Ln2Bias, x, T, C);
            }
            else resid.CopyTo(x, 0);
            var pre = new float[(long)T * D];
            sae.Preprocess(x, saeIn, T);
            sae.PreActivations(saeIn, pre, T);
            var acts = layerActs[l] = new float[(long)T * D];
            for (int s = _featStart[l * T]; s < _featStart[(l + 1) * T]; s++)
            {
                var node = _sources[s];
                long at = (long)node.Pos * D + node.Index;
                inputs[s] = pre[at];
                acts[at] = values.Features[s];
            }
            sae.DecodeRaw(acts, recons, T);
            sae.Postprocess(recons, mlpOut, T, null, x);
            for (int i = 0; i < l; i++)
                if (_clt.Decoder(i, l) is { } wd) Gemm.MatMul(layerActs[i], wd, mlpOut, T, _tc[i].DSae, C, accumulate: true);
            TensorPrimitives.Add(mlpOut, values.Errors[l], mlpOut);
            if (_parallel) TensorPrimitives.Add(resid, attn, resid);
            TensorPrimitives.Add(resid, mlpOut, resid);
        }
        Norms.FrozenNormalize(resid, _finalScale, normed, T, C, _layerNorm);
        Norms.Affine(normed, _w.FinalNormWeight, _w.FinalNormBias, normed, T, C);
        var logits = new Tensor(1, T, _cfg.VocabSize);
        TransformerForward.Linear(normed, T, _w.Unembed, _w.UnembedBias, logits.Data);
        return new FrozenForwardResult { Logits = logits, FeatureInputs = inputs };
    }

    // ───────────────────────────── backward: rows of the adjacency matrix ─────────────────────────────

    public void ComputeRows(IReadOnlyList<GraphNode> targets, Span<float> rows, Span<float> inputs, Span<float> biases)
    {
        ArgumentNullException.ThrowIfNull(targets);
        int Nt = targets.Count, S = _sources.Count;
        if (rows.Length < (long)Nt * S) throw new ArgumentException($"rows: {Nt} targets × {S} sources need {(long)Nt * S} floats, the span has {rows.Length}");
        if (inputs.Length < Nt) throw new ArgumentException($"inputs: {Nt} targets need {Nt} floats, the span has {inputs.Length}");
        if (biases.Length < Nt) throw new ArgumentException($"biases: {Nt} targets need {Nt} floats, the span has {biases.Length}");
        var byTarget = new TargetSeed[Nt];
        for (int t = 0; t < Nt; t++) byTarget[t] = Seed(targets[t], t);
        if (Nt == 0) return;
        // the backward wants the seeds by layer, descending (targets that start higher come first)
        var order = Enumerable.Range(0, Nt).OrderByDescending(t => byTarget[t].Layer).ToArray();
        var seeds = order.Select(t => byTarget[t]).ToArray();
        // the work buffers of a call are tens of megabytes: they come from (and go back to) the pool, so a graph's hundreds
        // of calls reuse them instead of leaving gigabytes of garbage for the collector
        var rowBuf = BufferPool.RentZeroed(checked(Nt * S));
        var bias = new double[Nt];
        Backward(seeds, rowBuf, bias);
        for (int i = 0; i < Nt; i++)
        {
            int t = order[i];
            rowBuf.AsSpan((int)((long)i * S), S).CopyTo(rows.Slice((int)((long)t * S), S));
            inputs[t] = targets[t].Kind == GraphNodeKind.Logit ? _logitInputs[seeds[i].LogitSlot] : _featureInputs[seeds[i].FeatureSource];
            biases[t] = (float)bias[i];
        }
        BufferPool.Return(rowBuf);
    }

    /// <summary>
    /// The directions latent <paramref name="latent"/> of layer <paramref name="layer"/>'s transcoder writes into
    /// <c>blocks.J.hook_mlp_out</c> per unit of activation, for every layer J it writes (its own; with a cross-layer transcoder
    /// every later one too): decoder rows, divided by the row's norm when the transcoder rescales activations by decoder norms;
    /// (C) fresh copies, own layer first.
    /// </summary>
    public List<(int Layer, float[] Direction)> DecoderWrites(int layer, int latent)
    {
        if ((uint)layer >= (uint)_L) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} outside [0, {_L})");
        return _clt.DecoderWrites(layer, latent);
    }

    /// <summary>
    /// The Jacobian of the final norm's output h (C) at the last position (logits = h·W_U + b_U) with respect to the activation
    /// of each of <paramref name="latents"/> (feature nodes (layer, position, latent), active on the prompt or not), in the
    /// frozen model with every other node held: (C, K) row-major, entry (c, k) = ∂h_c/∂a_k = Σ_J g_c(J, pos)·direction_J over
    /// <see cref="DecoderWrites"/>, g_c(J, ·) the gradient of h_c at layer J's mlp_out. One batched backward of C targets
    /// (the same backward as <see cref="ComputeRows"/>).
    /// </summary>
    public float[] OutputJacobian(IReadOnlyList<GraphNode> latents)
    {
        ArgumentNullException.ThrowIfNull(latents);
        int C = _C, K = latents.Count;
        var readouts = new List<LatentReadout>();
        for (int k = 0; k < K; k++)
        {
            var n = latents[k];
            if (n.Kind != GraphNodeKind.Feature) throw new ArgumentException($"latent {k} ({n}) is a {n.Kind} node, not a feature");
            if ((uint)n.Pos >= (uint)_T) throw new ArgumentOutOfRangeException(nameof(latents), $"latent {k} ({n}): position {n.Pos} outside the prompt's {_T} positions");
            foreach (var (layer, dir) in DecoderWrites(n.Layer, n.Index)) readouts.Add(new LatentReadout(layer, n.Pos, dir, k));
        }
        var seeds = new TargetSeed[C];
        for (int c = 0; c < C; c++)
        {
            var dir = new float[C];
            dir[c] = 1;
            seeds[c] = new TargetSeed { Layer = _L, Pos = _T - 1, Direction = dir };
        }
        var jac = new float[(long)C * K];
        Backward(seeds, new float[(long)C * _sources.Count], new double[C], [.. readouts], jac);
        return jac;
    }

    /// <summary>A latent (column <c>Column</c> of the Jacobian) read out of the backward at mlp_out of (Layer, Pos) along its decoder direction (C) into that layer.</summary>
    readonly record struct LatentReadout(int Layer, int Pos, float[] Direction, int Column);

    /// <summary>
    /// Where a target's backward starts: a direction (C) at one position, entering either at resid_mid of a layer through
    /// that layer's transcoder input hook (features: W_enc[:, i]) or through the final norm (logits: W_U[:, v] − mean column).
    /// </summary>
    sealed class TargetSeed
    {
        public int Layer;            // the transcoder layer (features, QK: the attention layer), or L for logits
        public int Pos;
        public float[] Direction = []; // (C), in the space of the transcoder input / final norm output / ln1 output
        public double Constant;      // the part of the input added after the direction (b_enc, b_U − mean, ...)
        public bool ThroughLn1;      // QK components: the direction is on ln1's output of layer Layer (before attention)
        public int FeatureSource = -1, LogitSlot = -1;
    }

    TargetSeed Seed(GraphNode node, int t)
    {
        int C = _C;
        if (node.Kind == GraphNodeKind.Logit)
        {
            int slot = _logits.IndexOf(node);
            if (slot < 0) throw new ArgumentException($"target {t} ({node}) is not one of this graph's logit nodes ({string.Join(", ", _logits.Select(n => n.Index))})");
            var dir = new float[C];
            for (int c = 0; c < C; c++) dir[c] = _w.Unembed[c, node.Index] - _unembedMean[c];
            double k = _w.UnembedBias is { } bu ? bu[node.Index] - _unembedBiasMean : 0;
            return new TargetSeed { Layer = _L, Pos = _T - 1, Direction = dir, Constant = k, LogitSlot = slot };
        }
        if (node.Kind != GraphNodeKind.Feature)
            throw new ArgumentException($"target {t} ({node}) is a {node.Kind} node: only features and logits have incoming edges");
        if (!_featureIndex.TryGetValue(node, out int s))
            throw new ArgumentException($"target {t} ({node}) is not an active feature of this prompt (inactive latents are no nodes)");
        var sae = _tc[node.Layer];
        int D = sae.DSae;
        var w = new float[C];
        for (int c = 0; c < C; c++) w[c] = sae.WEnc[(long)c * D + node.Index];
        double constant = sae.BEnc[node.Index];
        if (sae.Config.ApplyBDecToInput) constant -= TensorPrimitives.Dot(sae.BDec, w);
        return new TargetSeed { Layer = node.Layer, Pos = node.Pos, Direction = w, Constant = constant, FeatureSource = s };
    }

    /// <summary>
    /// The batched backward through the frozen linear model. g (Nt, T, C) is the gradient of each target's input with respect
    /// to the residual stream, walked from the top down; at each layer's mlp_out it is read against the active features'
    /// decoder rows (× activation), the error vectors and b_dec; at the bottom against the embeddings. Every constant the model
    /// adds on the way is dotted with its gradient into <paramref name="bias"/>. <paramref name="rows"/> is (Nt, S), zero on entry.
    /// <paramref name="seeds"/> must be sorted by layer, descending: at each layer only the targets already started are carried (a prefix of the batch).
    /// </summary>
    void Backward(TargetSeed[] seeds, float[] rows, double[] bias, LatentReadout[]? latents = null, float[]? latentGrads = null)
    {
        int Nt = seeds.Length, T = _T, C = _C, L = _L, NH = _cfg.NHeads, NKV = _cfg.NKvHeads, HS = _cfg.DHead, S = _sources.Count;
        long TC = (long)T * C;
        var g = BufferPool.RentZeroed(checked((int)(Nt * TC)));
        var gx = BufferPool.RentZeroed(checked((int)(Nt * TC)));
        var gz = BufferPool.RentZeroed(checked(Nt * T * NH * HS)); var gv = BufferPool.RentZeroed(checked(Nt * T * NKV * HS));
        // parallel attention+MLP: the MLP path's gradient at resid_pre, kept apart until attention has read resid_post's
        var gMlp = _parallel ? BufferPool.RentZeroed(checked((int)(Nt * TC))) : gx;
        // Gemma 2: the gradient at the raw attention output, through the frozen post-attention norm
        var gAttn = _ln1PostScale != null ? BufferPool.RentZeroed(checked((int)(Nt * TC))) : g;
        var biasPos = new double[T * Nt];
        var tmp = new float[C];

        // ---- logit seeds: through the unembedding's constant parts and the frozen final norm ----
        for (int t = 0; t < Nt; t++)
        {
            var sd = seeds[t];
            bias[t] += sd.Constant;
            if (sd.Layer != L) continue;
            if (_w.FinalNormBias is { } fb) bias[t] += TensorPrimitives.Dot(sd.Direction, fb);
            TensorPrimitives.Multiply(sd.Direction, _w.FinalNormWeight, tmp);
            Norms.FrozenNormalizeBackward(tmp, _finalScale.AsSpan(sd.Pos, 1), g.AsSpan((int)(t * TC + sd.Pos * C), C), 1, C, _layerNorm);
        }

        fixed (float* pg = g, pgz = gz, pgv = gv, pgx = gx, pga = gAttn)
        {
            nint ag = (nint)pg;
            for (int l = L - 1; l >= 0; l--)
            {
                var W = _w.Layers[l];
                var sae = _tc[l];
                // seeds are sorted by layer, descending: the first nPost targets have a gradient at this layer's mlp_out,
                // the first nMid also at its resid_mid (those seeded here); the rest have not started and are skipped
                int nPost = 0, nMid = 0;
                while (nPost < Nt && seeds[nPost].Layer > l) nPost++;
                nMid = nPost;
                while (nMid < Nt && seeds[nMid].Layer == l) nMid++;
                if (nMid == 0) continue;
                long nPostT = (long)nPost * TC, nMidT = (long)nMid * TC;

                // ---- read-out at mlp_out of layer l: features (a·g·W_dec), errors (g·e), b_dec into the bias ----
                if (nPost > 0)
                {
                    int layer = l, n = nPost;
                    Array.Clear(biasPos);
                    ParallelRows.For(T, (long)n * C * 4, (p0, p1) =>
                    {
                        for (int p = p0; p < p1; p++)
                        {
                            var writers = _readoutSources[layer * T + p];
                            int k = writers.Length;
                            var m = _readout[layer * T + p];
                            var res = new float[n * (k + 2)];
                            fixed (float* pm = m, pr = res)
                                Gemm.Multiply(new MatrixView((float*)ag + p * C, DType.F32, n, C, TC, 1), MatrixView.F32(pm, k + 2, C).T, pr, k + 2, false, Gemm.Path, 1);
                            int errIdx = _nFeatures + layer * T + p;
                            for (int t = 0; t < n; t++)
                            {
                                // a cross-layer feature is read out at every layer it writes: its row value sums over them
                                // (each source appears once per (layer, position), and each position's sources are its own)
                                for (int r = 0; r < k; r++) rows[(long)t * S + writers[r]] += res[t * (k + 2) + r];
                                rows[(long)t * S + errIdx] = res[t * (k + 2) + k];
                                biasPos[p * Nt + t] += res[t * (k + 2) + k + 1];
                            }
                        }
                    });
                    for (int p = 0; p < T; p++)
                        for (int t = 0; t < n; t++) bias[t] += biasPos[p * Nt + t];
                }

                // ---- latents asked for by OutputJacobian (active or not): g at mlp_out · their decoder direction ----
                if (latents != null && latentGrads != null)
                    for (int k = 0; k < latents.Length; k++)
                    {
                        var lr = latents[k];
                        if (lr.Layer != l) continue;
                        for (int t = 0; t < nPost; t++)
                            latentGrads[(long)t * (latentGrads.Length / Nt) + lr.Column] += TensorPrimitives.Dot(g.AsSpan((int)(t * TC + lr.Pos * C), C), lr.Direction);
                    }

                // ---- into the transcoder's input: the skip path (g·W_skip) and the feature targets of this layer ----
                gx.AsSpan(0, (int)nMidT).Clear();
                bool any = false;
                if (nPost > 0 && sae.Config.HasSkip) { sae.SkipBackward(g.AsSpan(0, (int)nPostT), gx, nPost * T); any = true; }
                for (int t = nPost; t < nMid; t++)
                {
                    var sd = seeds[t];
                    if (sd.ThroughLn1) continue;
                    TensorPrimitives.Add(gx.AsSpan((int)(t * TC + sd.Pos * C), C), sd.Direction, gx.AsSpan((int)(t * TC + sd.Pos * C), C));
                    any = true;
                }
                if (any)
                {
                    if (_input[l] != TranscoderInput.ResidMid)
                    {
                        var scale = _ln2Scale[l];
                        bool affine = _input[l] == TranscoderInput.MlpHookIn;
                        if (affine && W.Ln2Bias != null) AddRowDots(gx, W.Ln2Bias, nMid, T, bias);
                        ParallelRows.For(nMid, TC, (t0, t1) =>
                        {
                            for (int t = t0; t < t1; t++)
                            {
                                var span = gx.AsSpan((int)(t * TC), (int)TC);
                                if (affine) Norms.AffineBackward(span, W.Ln2Weight, span, T, C);
                                Norms.FrozenNormalizeBackward(span, scale, span, T, C, _layerNorm);
                            }
                        });
                    }
                    if (_parallel) gx.AsSpan(0, (int)nMidT).CopyTo(gMlp);
                    else TensorPrimitives.Add(g.AsSpan(0, (int)nMidT), gx.AsSpan(0, (int)nMidT), g.AsSpan(0, (int)nMidT));
                }
                else if (_parallel) gMlp.AsSpan(0, (int)nMidT).Clear();

                // ---- attention with the frozen pattern: attn_out = (P·(ln1(x)·W_V + b_V))·W_O + b_O (then Gemma 2's frozen
                //      ln1_post); it reads resid_mid's gradient, or resid_post's when attention and MLP run in parallel ----
                if (_ln1PostScale != null)
                {
                    var ps = _ln1PostScale[l];
                    g.AsSpan(0, (int)nMidT).CopyTo(gAttn);
                    ParallelRows.For(nMid, TC, (t0, t1) =>
                    {
                        for (int t = t0; t < t1; t++)
                        {
                            var span = gAttn.AsSpan((int)(t * TC), (int)TC);
                            Norms.AffineBackward(span, W.Ln1PostWeight!, span, T, C);
                            Norms.FrozenNormalizeBackward(span, ps, span, T, C, _layerNorm);
                        }
                    });
                }
                if (W.Bo != null) AddRowDots(gAttn, W.Bo, nMid, T, bias);
                Gemm.Multiply(MatrixView.F32(pga, nMid * T, C), W.Wo.T, pgz, NH * HS);
                Attention.ValuesBackwardSharedPattern(gz, _pattern[l], gv, new Attention.Shape(nMid, T, 0, T, NH, NKV, HS));
                if (W.Bv != null) AddRowDots(gv, W.Bv, nMid, T, bias);
                Gemm.Multiply(MatrixView.F32(pgv, nMid * T, NKV * HS), W.Wv.T, pgx, C);
                // QK seeds enter at ln1's output of their layer
                for (int t = nPost; t < nMid; t++)
                {
                    var sd = seeds[t];
                    if (!sd.ThroughLn1) continue;
                    TensorPrimitives.Add(gx.AsSpan((int)(t * TC + sd.Pos * C), C), sd.Direction, gx.AsSpan((int)(t * TC + sd.Pos * C), C));
                }
                if (W.Ln1Bias != null) AddRowDots(gx, W.Ln1Bias, nMid, T, bias);
                var s1 = _ln1Scale[l];
                ParallelRows.For(nMid, TC, (t0, t1) =>
                {
                    for (int t = t0; t < t1; t++)
                    {
                        var span = gx.AsSpan((int)(t * TC), (int)TC);
                        Norms.AffineBackward(span, W.Ln1Weight, span, T, C);
                        Norms.FrozenNormalizeBackward(span, s1, span, T, C, _layerNorm);
                    }
                });
                TensorPrimitives.Add(g.AsSpan(0, (int)nMidT), gx.AsSpan(0, (int)nMidT), g.AsSpan(0, (int)nMidT));
                if (_parallel) TensorPrimitives.Add(g.AsSpan(0, (int)nMidT), gMlp.AsSpan(0, (int)nMidT), g.AsSpan(0, (int)nMidT));
            }
        }

        // ---- embeddings ----
        for (int t = 0; t < Nt; t++)
            for (int p = 0; p < T; p++)
                rows[(long)t * S + _nFeatures + L * T + p] = TensorPrimitives.Dot(g.AsSpan((int)(t * TC + p * C), C), _embed.AsSpan(p * C, C));
        foreach (var b in new[] { g, gx, gz, gv }) BufferPool.Return(b);
        if (_parallel) BufferPool.Return(gMlp);
        if (_ln1PostScale != null) BufferPool.Return(gAttn);
    }

    // ───────────────────────────── QK attribution ─────────────────────────────

    /// <summary>
    /// Splits the pre-softmax attention score of <paramref name="head"/> in <paramref name="layer"/> for query position
    /// <paramref name="queryPos"/> and key position <paramref name="keyPos"/> (q·k/√d_head, after RoPE, as the model
    /// computes it) into the contributions of the sources: q = Σ_i q_i + q_bias and k = Σ_j k_j + k_bias, each source's
    /// vector found by the same batched backward as <see cref="ComputeRows"/> (d_head targets per side, seeded with a
    /// rotated W_Q / W_K column through the frozen ln1 of <paramref name="layer"/>). Sources are those of layers before
    /// <paramref name="layer"/> (and the embeddings); the others get zero vectors.
    /// </summary>
    public QkAttribution AttributeScore(int layer, int head, int queryPos, int keyPos)
    {
        int T = _T, C = _C, NH = _cfg.NHeads, HS = _cfg.DHead, S = _sources.Count;
        if ((uint)layer >= (uint)_L) throw new ArgumentOutOfRangeException(nameof(layer), $"layer {layer} outside [0, {_L})");
        if ((uint)head >= (uint)NH) throw new ArgumentOutOfRangeException(nameof(head), $"head {head} outside [0, {NH})");
        if ((uint)queryPos >= (uint)T) throw new ArgumentOutOfRangeException(nameof(queryPos), $"query position {queryPos} outside the prompt's {T} positions");
        if ((uint)keyPos > (uint)queryPos) throw new ArgumentOutOfRangeException(nameof(keyPos), $"key position {keyPos} must lie in [0, {queryPos}] (causal attention: a query sees only earlier keys)");
        var W = _w.Layers[layer];
        int kvHead = head / (NH / _cfg.NKvHeads);
        var (qDirs, qConst) = SideSeeds(W.Wq, W.Bq, head, queryPos);
        var (kDirs, kConst) = SideSeeds(W.Wk, W.Bk, kvHead, keyPos);
        var seeds = new TargetSeed[2 * HS];
        for (int d = 0; d < HS; d++)
        {
            seeds[d] = new TargetSeed { Layer = layer, Pos = queryPos, Direction = qDirs[d], Constant = qConst[d], ThroughLn1 = true };
            seeds[HS + d] = new TargetSeed { Layer = layer, Pos = keyPos, Direction = kDirs[d], Constant = kConst[d], ThroughLn1 = true };
        }
        var rows = new float[2L * HS * S];
        var bias = new double[2 * HS];
        Backward(seeds, rows, bias);
        // (HS, S) per side → (S, HS)
        var q = new float[(long)S * HS]; var k = new float[(long)S * HS];
        for (int d = 0; d < HS; d++)
            for (int s = 0; s < S; s++) { q[(long)s * HS + d] = rows[(long)d * S + s]; k[(long)s * HS + d] = rows[(long)(HS + d) * S + s]; }
        var qv = _qk[layer].AsSpan((queryPos * NH + head) * HS, HS);
        var kv = _kk[layer].AsSpan((keyPos * _cfg.NKvHeads + kvHead) * HS, HS);
        float score = TensorPrimitives.Dot(qv, kv) * _cfg.AttnScoreScale;
        return new QkAttribution
        {
            Layer = layer, Head = head, QueryPos = queryPos, KeyPos = keyPos, Score = score, ScoreScale = _cfg.AttnScoreScale, Sources = _sources,
            QueryContributions = q, KeyContributions = k,
            QueryBias = bias.Take(HS).Select(b => (float)b).ToArray(), KeyBias = bias.Skip(HS).Select(b => (float)b).ToArray(),
            CleanQuery = qv.ToArray(), CleanKey = kv.ToArray(),
        };
    }

    /// <summary>
    /// The d_head seed directions (C each) of one head's q or k at one position: column d of the head's slice of W (C, heads·HS),
    /// rotated by RoPE at that position; and the constant part (the head's bias, rotated).
    /// </summary>
    (float[][] Dirs, double[] Const) SideSeeds(MatrixView wt, float[]? b, int h, int pos)
    {
        int C = _C, HS = _cfg.DHead;
        var m = new float[C * HS];   // (C, HS): row c = W[c, h·HS : (h+1)·HS], rotated as a head vector
        for (int c = 0; c < C; c++)
            for (int d = 0; d < HS; d++) m[c * HS + d] = wt[c, h * HS + d];
        var bh = new float[HS];
        if (b != null) Array.Copy(b, h * HS, bh, 0, HS);
        if (_rope != null)
        {
            var positions = new int[C];
            Array.Fill(positions, pos);
            _rope.Apply(m, positions, 1);
            _rope.Apply(bh, [pos], 1);
        }
        var dirs = new float[HS][];
        for (int d = 0; d < HS; d++)
        {
            dirs[d] = new float[C];
            for (int c = 0; c < C; c++) dirs[d][c] = m[c * HS + d];
        }
        return (dirs, bh.Select(x => (double)x).ToArray());
    }

    /// <summary>bias[t] += Σ_p x[t, p, :]·b for x (Nt, T, width).</summary>
    static void AddRowDots(float[] x, float[] b, int Nt, int T, double[] bias)
    {
        int width = b.Length;
        for (int t = 0; t < Nt; t++)
        {
            double s = 0;
            for (int p = 0; p < T; p++) s += TensorPrimitives.Dot(x.AsSpan((t * T + p) * width, width), b);
            bias[t] += s;
        }
    }
}

/// <summary>
/// A pre-softmax attention score split over the sources of the replacement model (<see cref="ReplacementModel.AttributeScore"/>):
/// score = (Σ_i q_i + q_bias)·(Σ_j k_j + k_bias)/√d_head, so Σ_{i,j} <see cref="Pair"/>(i, j) plus the bias terms is the score.
/// </summary>
public sealed class QkAttribution
{
    public required int Layer { get; init; }
    public required int Head { get; init; }
    public required int QueryPos { get; init; }
    public required int KeyPos { get; init; }
    /// <summary>The model's own score q·k·scale at the clean run (before any soft-cap).</summary>
    public required float Score { get; init; }
    /// <summary>The factor on q·k: 1/√d_head, or Gemma 2's query_pre_attn_scalar^−½.</summary>
    public float ScoreScale { get; init; }
    float Factor => ScoreScale > 0 ? ScoreScale : 1f / MathF.Sqrt(HS);
    /// <summary>The sources, in the order of the contribution rows.</summary>
    public required IReadOnlyList<GraphNode> Sources { get; init; }
    /// <summary>(S, d_head): source i's contribution to the (rotated) query vector.</summary>
    public required float[] QueryContributions { get; init; }
    /// <summary>(S, d_head): source j's contribution to the (rotated) key vector.</summary>
    public required float[] KeyContributions { get; init; }
    /// <summary>(d_head): what no node carries in the query (b_Q, norm biases, decoder biases, …) and in the key.</summary>
    public required float[] QueryBias { get; init; }
    public required float[] KeyBias { get; init; }
    /// <summary>The clean rotated query and key vectors (d_head) the score is made of.</summary>
    public required float[] CleanQuery { get; init; }
    public required float[] CleanKey { get; init; }

    int HS => QueryBias.Length;

    /// <summary>q_i·k_j/√d_head: the part of the score from query-side source i and key-side source j (−1: the bias term).</summary>
    public float Pair(int i, int j)
    {
        var q = i < 0 ? QueryBias : new ReadOnlySpan<float>(QueryContributions, i * HS, HS);
        var k = j < 0 ? KeyBias : new ReadOnlySpan<float>(KeyContributions, j * HS, HS);
        return TensorPrimitives.Dot(q, k) * Factor;
    }

    /// <summary>Σ over every (query source or bias, key source or bias) pair: equals <see cref="Score"/> up to rounding.</summary>
    public double SumOfPairs()
    {
        int S = Sources.Count;
        var qs = new double[HS]; var ks = new double[HS];
        for (int d = 0; d < HS; d++) { qs[d] = QueryBias[d]; ks[d] = KeyBias[d]; }
        for (int s = 0; s < S; s++)
            for (int d = 0; d < HS; d++) { qs[d] += QueryContributions[(long)s * HS + d]; ks[d] += KeyContributions[(long)s * HS + d]; }
        double sum = 0;
        for (int d = 0; d < HS; d++) sum += qs[d] * ks[d];
        return sum * Factor;
    }
}
