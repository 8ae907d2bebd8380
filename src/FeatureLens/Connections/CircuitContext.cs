using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;

namespace FeatureLens.Connections;

/// <summary>How nodes are set when they are "corrupted": to their values on a corrupt prompt, to zero, or to a corpus mean.</summary>
public enum AblationKind { Corrupt, Zero, Mean }

/// <summary>
/// Everything attribution and patching share: the model, its SAEs spliced with their error terms (so the spliced model
/// computes exactly what the model does and error nodes exist), a batch of clean prompts with one metric each, and what a
/// corrupted node is set to (a corrupt prompt of the same token length per clean prompt, zero, or the mean over a corpus).
/// Effects are summed over the prompts (SFC's convention for a batch of pairs).
/// </summary>
public sealed class CircuitContext
{
    public HookedTransformer Model { get; }
    public IReadOnlyList<SaeSplice> Saes { get; }
    public int[][] Clean { get; }
    public int[][]? CorruptTokens { get; }
    public IReadOnlyList<Metric> Metrics { get; }
    public AblationKind Ablation { get; }
    public MeanActivations? Means { get; }

    readonly Dictionary<string, Tensor> _corruptCache = new(StringComparer.Ordinal), _cleanCache = new(StringComparer.Ordinal);

    public CircuitContext(HookedTransformer model, IEnumerable<Sae> saes, int[][] clean, IReadOnlyList<Metric> metrics,
        int[][]? corrupt = null, AblationKind ablation = AblationKind.Corrupt, MeanActivations? means = null)
    {
        Model = model;
        model.ValidateTokens(clean);
        if (corrupt != null && corrupt.Length > 0) model.ValidateTokens(corrupt);
        Saes = saes.Select(s => new SaeSplice(s, useErrorTerm: true)).ToList();
        foreach (var s in Saes) s.Validate(model);
        var dup = Saes.GroupBy(s => s.InputHook).FirstOrDefault(g => g.Count() > 1);
        if (dup != null) throw new ArgumentException($"two SAEs read hook '{dup.Key}'; give one SAE per hook");
        if (clean.Length == 0) throw new ArgumentException("no clean prompt given");
        if (metrics.Count != clean.Length) throw new ArgumentException($"{metrics.Count} metrics for {clean.Length} clean prompts");
        Clean = clean; Metrics = metrics; Ablation = ablation; Means = means;
        if (ablation == AblationKind.Corrupt)
        {
            CorruptTokens = corrupt ?? throw new ArgumentException("give a corrupt prompt (--corrupt/--corrupt-tokens) or an ablation (--ablation zero|mean)");
            if (corrupt.Length != clean.Length) throw new ArgumentException($"{corrupt.Length} corrupt prompts for {clean.Length} clean prompts");
            for (int b = 0; b < clean.Length; b++)
                if (corrupt[b].Length != clean[b].Length)
                    throw new ArgumentException($"clean and corrupt prompts must have the same token length: prompt {b} has {clean[b].Length} clean and {corrupt[b].Length} corrupt tokens");
        }
        else if (corrupt != null) throw new ArgumentException("a corrupt prompt and an ablation were both given; choose one");
        if (ablation == AblationKind.Mean && means == null) throw new ArgumentException("mean ablation needs the corpus means (--mean-corpus FILE)");
        var names = new HashSet<string>(model.HookPointNames, StringComparer.Ordinal);
        names.UnionWith(Saes.SelectMany(s => s.HookNames));
        for (int b = 0; b < clean.Length; b++) metrics[b].Validate(model.Config, [clean[b]], names);
    }

    /// <summary>The splices as the runtime takes them.</summary>
    public IReadOnlyList<IHookSplice> Splices => Saes.Cast<IHookSplice>().ToList();

    /// <summary>The hook holding a node kind's values for an SAE hook or component hook.</summary>
    public SaeSplice SaeAt(string hook) => Saes.FirstOrDefault(s => s.InputHook == hook)
        ?? throw new ArgumentException($"no SAE is spliced at '{hook}' (SAEs at: {string.Join(", ", Saes.Select(s => s.InputHook))})");

    /// <summary>Width of a value hook's per-position row.</summary>
    public int RowWidth(string valueHook)
    {
        foreach (var s in Saes)
        {
            if (valueHook == s.ActsPostHook) return s.Sae.DSae;
            if (valueHook == s.InputHook + ".hook_sae_error") return s.Sae.DOut;
        }
        return Model.HookWidth(valueHook) ?? throw new ArgumentException($"'{valueHook}' has no per-position row");
    }

    /// <summary>
    /// The corrupt values of <paramref name="valueHook"/> for clean prompt <paramref name="b"/>: (len, width) rows —
    /// the corrupt prompt's activations, zeros, or the corpus mean at every position.
    /// </summary>
    public float[] CorruptRows(string valueHook, int b)
    {
        int len = Clean[b].Length, width = RowWidth(valueHook);
        var rows = new float[(long)len * width];
        switch (Ablation)
        {
            case AblationKind.Zero: break;
            case AblationKind.Mean:
            {
                var mean = Means!.Get(valueHook, width);
                for (int p = 0; p < len; p++) mean.CopyTo(rows, (long)p * width);
                break;
            }
            default: return Attribution.Rows(Cached(CorruptTokens!, _corruptCache, valueHook), b, len);
        }
        return rows;
    }

    /// <summary>The clean run's values of <paramref name="valueHook"/> for prompt <paramref name="b"/>: (len, width) rows.</summary>
    public float[] CleanRows(string valueHook, int b) => Attribution.Rows(Cached(Clean, _cleanCache, valueHook), b, Clean[b].Length);

    /// <summary>Activations of a run of <paramref name="tokens"/> with the SAEs spliced: every SAE value hook on the first call, others on demand.</summary>
    Tensor Cached(int[][] tokens, Dictionary<string, Tensor> store, string valueHook)
    {
        lock (store)
        {
            if (store.TryGetValue(valueHook, out var hit)) return hit;
            Fill(tokens, store, valueHook);
            return store.TryGetValue(valueHook, out hit) ? hit : throw new ArgumentException($"'{valueHook}' is not a hook of this model with these SAEs");
        }
    }

    /// <summary>The metric of each clean prompt (from the same run that caches the clean node values).</summary>
    public float[] CleanMetricValues() => MetricsOf(Clean, _cleanCache);

    /// <summary>The metric of each corrupt prompt (null for ablations), from the run that caches the corrupt node values.</summary>
    public float[]? CorruptMetricValues() => CorruptTokens == null ? null : MetricsOf(CorruptTokens, _corruptCache);

    float[] MetricsOf(int[][] tokens, Dictionary<string, Tensor> store)
    {
        lock (store)
        {
            if (!_metrics.TryGetValue(store, out var values)) Fill(tokens, store, null);
            return _metrics[store];
        }
    }

    readonly Dictionary<object, float[]> _metrics = new(ReferenceEqualityComparer.Instance);

    /// <summary>
    /// Runs <paramref name="tokens"/> with the SAEs spliced and caches activations into <paramref name="store"/>: on the first
    /// run every SAE value hook (and the metric, from the same run's logits), later only <paramref name="valueHook"/>.
    /// </summary>
    void Fill(int[][] tokens, Dictionary<string, Tensor> store, string? valueHook)
    {
        bool first = !_metrics.ContainsKey(store);
        var want = new HashSet<string>(first ? ValueHooks() : [], StringComparer.Ordinal);
        if (valueHook != null) want.Add(valueHook);
        var cache = new ActivationCache { Lengths = tokens.Select(t => t.Length).ToArray() };
        var logits = Model.Run(tokens, new RunOptions { CacheFilter = want.Contains, Cache = cache, Splices = Splices, ReturnLogits = first });
        foreach (var (name, t) in cache)
        {
            int bad = Array.FindIndex(t.Data, v => !float.IsFinite(v));
            if (bad >= 0)
            {
                long inner = t.Length / ((long)t.Shape[0] * t.Shape[1]), row = bad / inner;
                throw new InvalidDataException($"the {(ReferenceEquals(tokens, Clean) ? "clean" : "corrupt")} run's activation at '{name}' is not finite ({t.Data[bad]}) at prompt {row / t.Shape[1]}, position {row % t.Shape[1]}: cannot patch from it");
            }
            store[name] = t;
        }
        if (first) _metrics[store] = Metric.PerSequence(Metrics).Evaluate(logits!, cache, tokens).Values;
    }

    /// <summary>
    /// For <see cref="GradientOptions.ActiveLatentGradients"/>: each SAE's latent hook → the corrupt latents of a batch whose
    /// sequence k is clean prompt <paramref name="promptOf"/>[k] (null under zero ablation: only the clean run's active latents
    /// need gradients then).
    /// </summary>
    public Dictionary<string, Tensor?> ActiveLatentsFor(int[] promptOf)
    {
        int T = promptOf.Max(p => Clean[p].Length);
        var result = new Dictionary<string, Tensor?>(StringComparer.Ordinal);
        foreach (var s in Saes)
        {
            if (Ablation == AblationKind.Zero) { result[s.ActsPostHook] = null; continue; }
            int w = s.Sae.DSae;
            var t = new Tensor(promptOf.Length, T, w);
            for (int k = 0; k < promptOf.Length; k++)
            {
                var rows = CorruptRows(s.ActsPostHook, promptOf[k]);
                Array.Copy(rows, 0, t.Data, (long)k * T * w, rows.Length);
            }
            result[s.ActsPostHook] = t;
        }
        return result;
    }

    /// <summary>The SAE value hooks (latents and errors); component hooks are added on demand.</summary>
    IEnumerable<string> ValueHooks() => Saes.SelectMany(s => new[] { s.ActsPostHook, s.InputHook + ".hook_sae_error" });

    /// <summary>The metric values of a batch of runs of clean prompts (sequence k is clean prompt <paramref name="promptOf"/>[k]).</summary>
    public float[] MetricValues(int[][] tokens, int[] promptOf, IReadOnlyList<(string Name, HookFunction Fn)> hooks)
    {
        var metrics = promptOf.Select(p => Metrics[p]).ToList();
        var reads = new HashSet<string>(metrics.Select(m => m.ActsHook).OfType<string>(), StringComparer.Ordinal);
        var cache = new ActivationCache { Lengths = tokens.Select(t => t.Length).ToArray() };
        var logits = Model.Run(tokens, new RunOptions { Hooks = hooks, Splices = Splices, CacheFilter = reads.Contains, Cache = cache })!;
        return Metric.PerSequence(metrics).Evaluate(logits, cache, tokens).Values;
    }
}
