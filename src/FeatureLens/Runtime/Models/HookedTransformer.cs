using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Runtime.Tokenizers;

namespace FeatureLens.Runtime.Models;

/// <summary>
/// A GPT-2, Llama-family (Llama 2/3.x, Mistral, Qwen 2), Gemma 2 or GPT-NeoX model with every TransformerLens hook point: run it, cache activations by name,
/// read or replace any of them with hooks, and generate text.
/// </summary>
public sealed class HookedTransformer : IDisposable
{
    readonly Rope? _rope;
    readonly LayerHookNames[] _names;
    readonly HashSet<string> _hookNameSet;
    readonly List<(string Name, HookFunction Fn)> _persistentHooks = [];
    readonly List<IHookSplice> _persistentSplices = [];
    readonly IReadOnlyList<string> _baseHookNames;

    public ModelConfig Config { get; }
    public TransformerWeights Weights { get; }
    /// <summary>The tokenizer found beside the checkpoint (or given), if any.</summary>
    public ITokenizer? Tokenizer { get; }
    /// <summary>Every hook point, in firing order, including those of attached splices (SAE hooks).</summary>
    public IReadOnlyList<string> HookPointNames => _persistentSplices.Count == 0 ? _baseHookNames : NamesWith(_persistentSplices);

    /// <summary>
    /// How forward passes (<see cref="Run"/>, <see cref="RunWithCache"/>, <see cref="RunWithHooks"/>, generation) multiply by
    /// the weights: <see cref="ComputeMode.Float32"/> (the default) or <see cref="ComputeMode.BFloat16"/>, which needs bf16
    /// weights and a CPU with AVX512_BF16 (setting it otherwise throws, saying what is missing; see <see cref="ComputeProblem"/>).
    /// <see cref="RunWithGradients"/> ignores it: the recorded forward and its backward always run in float32, so the
    /// gradients are those of the values they come with.
    /// </summary>
    public ComputeMode Compute
    {
        get => _compute;
        set
        {
            if (ComputeProblem(value) is string problem) throw new ArgumentException($"bf16 compute {problem}");
            _compute = value;
        }
    }
    ComputeMode _compute;

    /// <summary>Why <paramref name="mode"/> cannot be used with this model on this machine, completing "bf16 compute …" (null: it can).</summary>
    public string? ComputeProblem(ComputeMode mode)
    {
        if (mode == ComputeMode.Float32) return null;
        var other = Weights.Layers.SelectMany(l => new[] { l.Wq, l.Wk, l.Wv, l.Wo, l.WIn, l.WOut }.Concat(l.WUp is { } up ? [up] : []))
            .Select(w => w.DType).FirstOrDefault(t => t != DType.BF16, DType.BF16);
        if (other != DType.BF16)
            return $"needs bf16 weights; {Weights.Source.Location} stores {(other == DType.F32 ? "float32" : "float16")}";
        if (!GemmBf16.IsSupported) return $"cannot run on this machine: {GemmBf16.UnsupportedReason}";
        return null;
    }

    /// <summary>The splices (SAEs, transcoders) attached with <see cref="AddSplice"/>.</summary>
    public IReadOnlyList<IHookSplice> Splices => _persistentSplices;

    public HookedTransformer(ModelConfig config, TransformerWeights weights, ITokenizer? tokenizer = null)
    {
        config.Validate();
        Config = config; Weights = weights; Tokenizer = tokenizer;
        if (tokenizer != null && tokenizer.VocabSize > config.VocabSize)
            throw new InvalidDataException($"tokenizer has {tokenizer.VocabSize} tokens but the model's vocab_size is {config.VocabSize}");
        _rope = config.Rope == RopeLayout.None ? null : new Rope(config.DHead, config.RotaryDim, config.NCtx, config.RopeTheta, config.Rope, config.RopeScaling);
        _names = Enumerable.Range(0, config.NLayers).Select(l => new LayerHookNames(l)).ToArray();
        _baseHookNames = HookNames.For(config);
        _hookNameSet = new HashSet<string>(_baseHookNames.Concat(HookNames.ExtraFor(config)), StringComparer.Ordinal);
    }

    /// <summary>
    /// Loads a model from a Hugging Face folder (config.json + safetensors, sharded or not), a llama2.c
    /// .bin checkpoint, or a Hugging Face repo id already in the local cache. The tokenizer is taken
    /// from <paramref name="tokenizerPath"/>, else from beside the checkpoint (tokenizer.json,
    /// vocab.json + merges.txt, or tokenizer.bin / tok{vocab}.bin beside a .bin) when present.
    /// </summary>
    public static HookedTransformer Load(string pathOrRepoId, string? tokenizerPath = null)
    {
        string path = ModelPath.Resolve(pathOrRepoId);
        ModelConfig cfg;
        ITensorSource source;
        string? tokPath = tokenizerPath;
        if (File.Exists(path))
        {
            if (!path.EndsWith(".bin", StringComparison.OrdinalIgnoreCase) && !path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
                throw new InvalidDataException($"{path}: not a model: expected a folder with config.json, a llama2.c .bin checkpoint, or a repo id");
            if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
                return Load(Path.GetDirectoryName(Path.GetFullPath(path))!, tokenizerPath);
            var ckpt = Llama2cCheckpoint.Open(path);
            cfg = ckpt.Config; source = ckpt;
            if (tokPath == null)
            {
                string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
                tokPath = new[] { "tokenizer.bin", $"tok{cfg.VocabSize}.bin" }.Select(f => Path.Combine(dir, f)).FirstOrDefault(File.Exists);
            }
        }
        else
        {
            string configPath = Path.Combine(path, "config.json");
            if (!File.Exists(configPath)) throw new FileNotFoundException($"{path}: no config.json in this folder (expected a Hugging Face model folder)");
            cfg = HfConfigReader.Read(configPath);
            source = CheckpointFolder.Open(path);
            if (tokPath == null && (File.Exists(Path.Combine(path, "tokenizer.json")) || File.Exists(Path.Combine(path, "vocab.json")))) tokPath = path;
        }
        try
        {
            var weights = cfg.Architecture switch
            {
                Architecture.Gpt2 => Gpt2.LoadWeights(cfg, source),
                Architecture.Gemma2 => Gemma2.LoadWeights(cfg, source),
                Architecture.NeoX => GptNeoX.LoadWeights(cfg, source),
                _ => Llama.LoadWeights(cfg, source),
            };
            var tok = tokPath == null ? null : TokenizerLoader.Load(tokPath, cfg.VocabSize);
            return new HookedTransformer(cfg, weights, tok);
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    /// <summary>Adds a hook that runs on every later forward pass until the returned handle is disposed.</summary>
    public IDisposable AddHook(string name, HookFunction fn)
    {
        CheckHookName(name);
        var entry = (name, fn);
        _persistentHooks.Add(entry);
        return new Removal(() => _persistentHooks.Remove(entry));
    }

    /// <summary>Removes every persistent hook (attached splices stay; see <see cref="ResetSplices"/>).</summary>
    public void ResetHooks() => _persistentHooks.Clear();

    /// <summary>
    /// Splices an SAE (or anything else) into every later forward pass until the handle is disposed. Its
    /// hook points become valid names for hooks and caching.
    /// </summary>
    public IDisposable AddSplice(IHookSplice splice)
    {
        splice.Validate(this);
        foreach (var other in _persistentSplices)
            if (other.OutputHook == splice.OutputHook && other.HookNames.Intersect(splice.HookNames).Any())
                throw new ArgumentException($"another splice already writes '{splice.OutputHook}' with the same hook names; detach it first");
        _persistentSplices.Add(splice);
        return new Removal(() => _persistentSplices.Remove(splice));
    }

    /// <summary>Detaches every splice.</summary>
    public void ResetSplices() => _persistentSplices.Clear();

    /// <summary>Hook names with those of the given splices inserted after their output hook.</summary>
    List<string> NamesWith(IEnumerable<IHookSplice> splices)
    {
        var byHook = splices.GroupBy(s => s.OutputHook).ToDictionary(g => g.Key, g => g.SelectMany(s => s.HookNames).ToList());
        var list = new List<string>(_baseHookNames.Count + byHook.Sum(kv => kv.Value.Count));
        foreach (var n in _baseHookNames)
        {
            list.Add(n);
            if (byHook.TryGetValue(n, out var extra)) list.AddRange(extra);
        }
        return list;
    }

    /// <summary>
    /// The width of a hook's activation per position (everything after [batch, pos] flattened): d_model for
    /// the residual stream, n_heads·d_head for hook_q/hook_z, d_mlp for MLP hooks; null for attention patterns.
    /// </summary>
    public int? HookWidth(string name)
    {
        CheckHookName(name);
        var c = Config;
        if (HookNames.IsAttentionMatrix(name)) return null;
        if (name.EndsWith("hook_scale", StringComparison.Ordinal)) return 1;
        if (name.EndsWith("attn.hook_q", StringComparison.Ordinal) || name.EndsWith("attn.hook_rot_q", StringComparison.Ordinal) || name.EndsWith("attn.hook_z", StringComparison.Ordinal)) return c.NHeads * c.DHead;
        if (name.EndsWith("attn.hook_k", StringComparison.Ordinal) || name.EndsWith("attn.hook_v", StringComparison.Ordinal) || name.EndsWith("attn.hook_rot_k", StringComparison.Ordinal)) return c.NKvHeads * c.DHead;
        if (name.EndsWith("attn.hook_result", StringComparison.Ordinal)) return c.NHeads * c.DModel;
        if (name.EndsWith("mlp.hook_pre", StringComparison.Ordinal) || name.EndsWith("mlp.hook_post", StringComparison.Ordinal) || name.EndsWith("mlp.hook_pre_linear", StringComparison.Ordinal)) return c.DMlp;
        return c.DModel;
    }

    /// <summary>Heads and head size of a per-head hook ([batch, pos, heads, d_head]); null for other hooks.</summary>
    public (int Heads, int DHead)? HookHeads(string name)
    {
        var c = Config;
        if (name.EndsWith("attn.hook_q", StringComparison.Ordinal) || name.EndsWith("attn.hook_rot_q", StringComparison.Ordinal) || name.EndsWith("attn.hook_z", StringComparison.Ordinal)) return (c.NHeads, c.DHead);
        if (name.EndsWith("attn.hook_k", StringComparison.Ordinal) || name.EndsWith("attn.hook_v", StringComparison.Ordinal) || name.EndsWith("attn.hook_rot_k", StringComparison.Ordinal)) return (c.NKvHeads, c.DHead);
        if (name.EndsWith("attn.hook_result", StringComparison.Ordinal)) return (c.NHeads, c.DModel);
        return null;
    }

    /// <summary>Logits (B, T, V) for a batch of token sequences (right-padded; padded positions are zero).</summary>
    public Tensor Forward(int[][] tokens) => Run(tokens, new RunOptions())!;

    /// <summary>Logits (1, T, V) for one sequence.</summary>
    public Tensor Forward(int[] tokens) => Forward([tokens]);

    /// <summary>
    /// Runs the model keeping the activations whose hook names pass <paramref name="namesFilter"/>
    /// (all of them when null). Tensors are [batch, pos, ...] as in TransformerLens.
    /// </summary>
    public (Tensor Logits, ActivationCache Cache) RunWithCache(int[][] tokens, Func<string, bool>? namesFilter = null)
    {
        var cache = new ActivationCache { Lengths = tokens.Select(t => t.Length).ToArray() };
        var logits = Run(tokens, new RunOptions { CacheFilter = namesFilter ?? (_ => true), Cache = cache })!;
        return (logits, cache);
    }

    /// <summary>Runs with temporary hooks (name, function), e.g. to patch or steer; returns the logits.</summary>
    public Tensor RunWithHooks(int[][] tokens, params (string Name, HookFunction Fn)[] hooks) =>
        Run(tokens, new RunOptions { Hooks = hooks })!;

    /// <summary>The general entry point: hooks, cache, KV cache, early stop.</summary>
    public Tensor? Run(int[][] tokens, RunOptions options)
    {
        ValidateTokens(tokens, options.KvCache);
        foreach (var s in options.Splices) s.Validate(this);
        var splices = _persistentSplices.Concat(options.Splices).ToList();
        var spliceNames = new HashSet<string>(splices.SelectMany(s => s.HookNames), StringComparer.Ordinal);
        foreach (var (name, _) in options.Hooks)
            if (!spliceNames.Contains(name)) CheckHookName(name);
        var hooks = new HookSet(_persistentHooks.Concat(options.Hooks), options.CacheFilter, options.Cache, splices,
            tokens.Select(t => t.Length).ToArray());
        if (options.Cache != null && options.Cache.Lengths.Length == 0)
            throw new ArgumentException("ActivationCache.Lengths must be set to the sequence lengths");
        return TransformerForward.Run(Config, Weights, _rope, _names, tokens, hooks, options.ReturnLogits, options.KvCache,
            options.StopAtLayer ?? Config.NLayers, compute: _compute);
    }

    /// <summary>
    /// Runs the model, then a hand-written backward pass of <paramref name="objective"/> (a metric summed over the batch):
    /// keeps the activations and the gradients the options ask for (TransformerLens names, including those of splices),
    /// and runs backward hooks on the way. Spliced SAEs with their error term pass gradients upstream as the identity.
    /// </summary>
    public GradientResult RunWithGradients(int[][] tokens, IObjective objective, GradientOptions? options = null)
    {
        options ??= new GradientOptions();
        ValidateTokens(tokens, null);
        foreach (var s in options.Splices) s.Validate(this);
        var splices = _persistentSplices.Concat(options.Splices).ToList();
        var names = new HashSet<string>(_hookNameSet, StringComparer.Ordinal);
        names.UnionWith(splices.SelectMany(s => s.HookNames));
        foreach (var (name, _) in options.Hooks.Concat(options.BackwardHooks))
            if (!names.Contains(name)) CheckHookName(name);
        objective.Validate(Config, tokens, names);

        var lengths = tokens.Select(t => t.Length).ToArray();
        var userCache = options.CacheFilter;
        var reads = new HashSet<string>(objective.ReadsHooks, StringComparer.Ordinal);
        var cache = new ActivationCache { Lengths = lengths };
        var hooks = new HookSet(_persistentHooks.Concat(options.Hooks), n => reads.Contains(n) || (userCache?.Invoke(n) ?? false), cache, splices, lengths);
        var grads = new ActivationCache { Lengths = lengths };
        var gradFilter = options.GradFilter ?? userCache;
        hooks.EnableBackward(options.BackwardHooks, gradFilter ?? (_ => false), gradFilter == null ? null : grads);
        hooks.ActiveLatentGradients = options.ActiveLatentGradients;

        var tape = new ForwardTape();
        var logits = TransformerForward.Run(Config, Weights, _rope, _names, tokens, hooks, true, null, Config.NLayers, tape)!;
        var g = objective.Evaluate(logits, cache, tokens);
        foreach (var (name, seed) in g.HookSeeds) hooks.Seeds[name] = seed;
        TransformerBackward.Run(Config, Weights, _names, tape, hooks, g.LogitRows, g.LogitGradients, logits.Data);
        TransformerForward.ZeroPadding(grads, lengths, tape.T);
        tape.ReturnBuffers();
        if (userCache == null) cache.Clear();
        else foreach (var name in reads) if (!userCache(name)) cache.Remove(name);
        return new GradientResult { Value = g.Values.Sum(), Values = g.Values, Logits = logits, Activations = cache, Gradients = grads };
    }

    /// <summary>Throws a clear error for an unknown hook name, suggesting near matches.</summary>
    public void CheckHookName(string name)
    {
        if (_hookNameSet.Contains(name)) return;
        if (_persistentSplices.Any(s => s.HookNames.Contains(name))) return;
        var close = HookPointNames.Where(h => h.EndsWith(name.Split('.').Last(), StringComparison.Ordinal)).Take(3).ToList();
        throw new ArgumentException($"'{name}' is not a hook point of this {Config.Architecture} model with {Config.NLayers} layers" +
            (close.Count > 0 ? $" (did you mean {string.Join(", ", close)}?)" : ""));
    }

    /// <summary>Throws a clear error for an empty batch, an empty sequence, a sequence longer than the context, or an id outside the vocabulary.</summary>
    public void ValidateTokens(int[][] tokens) => ValidateTokens(tokens, null);

    void ValidateTokens(int[][] tokens, KvCache? kv)
    {
        if (tokens.Length == 0) throw new ArgumentException("no sequences given (the batch is empty)");
        int past = kv?.Length ?? 0;
        for (int b = 0; b < tokens.Length; b++)
        {
            var seq = tokens[b] ?? throw new ArgumentException($"sequence {b} is null");
            if (seq.Length == 0) throw new ArgumentException($"sequence {b} is empty: a prompt needs at least one token");
            if (past + seq.Length > Config.NCtx)
                throw new ArgumentException($"sequence {b} needs {past + seq.Length} positions but the model's context is {Config.NCtx}");
            for (int t = 0; t < seq.Length; t++)
                if ((uint)seq[t] >= (uint)Config.VocabSize)
                    throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {seq[t]} at position {t} of sequence {b} is outside the vocabulary [0, {Config.VocabSize})");
        }
        if (kv != null && (kv.Batch != tokens.Length || tokens.Any(t => t.Length != tokens[0].Length)))
            throw new ArgumentException("with a KV cache, the batch must match the cache's batch and all sequences must have the same length");
        if (kv != null && past + tokens[0].Length > kv.Capacity)
            throw new ArgumentException($"KV cache holds {kv.Capacity} positions; {past} used, {tokens[0].Length} more requested");
    }

    public void Dispose() => Weights.Source.Dispose();

    sealed class Removal(Action remove) : IDisposable
    {
        bool _done;
        public void Dispose() { if (!_done) { remove(); _done = true; } }
    }
}

/// <summary>Options of <see cref="HookedTransformer.Run"/>.</summary>
public sealed class RunOptions
{
    /// <summary>Temporary hooks for this run (in addition to persistent ones).</summary>
    public IReadOnlyList<(string Name, HookFunction Fn)> Hooks { get; init; } = [];
    /// <summary>Which activations to keep in <see cref="Cache"/>.</summary>
    public Func<string, bool>? CacheFilter { get; init; }
    public ActivationCache? Cache { get; init; }
    public bool ReturnLogits { get; init; } = true;
    /// <summary>For incremental decoding; positions continue from its length.</summary>
    public KvCache? KvCache { get; init; }
    /// <summary>Run only the first N blocks (no logits) — enough for caching early layers.</summary>
    public int? StopAtLayer { get; init; }
    /// <summary>Splices (SAEs) for this run only, in addition to attached ones; their hook names may be hooked and cached.</summary>
    public IReadOnlyList<IHookSplice> Splices { get; init; } = [];
}
