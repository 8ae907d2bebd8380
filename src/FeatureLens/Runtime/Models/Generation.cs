using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Models;

/// <summary>How to pick the next token: greedy when Temperature is 0, else softmax(logits/T) with nucleus (top-p) truncation.</summary>
public sealed record SamplingOptions(float Temperature = 0f, float TopP = 1f, int Seed = 0)
{
    public void Validate()
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature)) throw new ArgumentException($"temperature must be a finite number ≥ 0 (got {Temperature})");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"top-p must be in (0, 1] (got {TopP})");
    }
}

/// <summary>Per-step callbacks of <see cref="Generation.Generate(HookedTransformer, int[], int, SamplingOptions, GenerationStep?)"/>.</summary>
public sealed class GenerationStep
{
    /// <summary>Given the absolute position of the step's first row (the KV cache's length), the hooks and splices of that pass (its KV cache is ignored).</summary>
    public Func<int, RunOptions>? Options { get; init; }
    /// <summary>Called with the step index and a copy of the last row's logits (V), before the next token is picked.</summary>
    public Action<int, float[]>? OnLogits { get; init; }
}

/// <summary>Autoregressive generation with a KV cache.</summary>
public static class Generation
{
    /// <summary>
    /// Yields up to <paramref name="maxNewTokens"/> tokens after <paramref name="prompt"/>. Stops early at
    /// the end-of-sequence token, or at BOS (a new document), like llama2.c.
    /// </summary>
    public static IEnumerable<int> Generate(this HookedTransformer model, int[] prompt, int maxNewTokens, SamplingOptions sampling) =>
        Generate(model, prompt, maxNewTokens, sampling, null);

    /// <summary>
    /// <see cref="Generate(HookedTransformer, int[], int, SamplingOptions)"/> with per-step hooks (steering):
    /// <paramref name="step"/> gives each incremental forward pass its hooks and splices (it is told the absolute
    /// position of the pass's first row) and sees the logits of the last row before the next token is picked.
    /// </summary>
    public static IEnumerable<int> Generate(this HookedTransformer model, int[] prompt, int maxNewTokens, SamplingOptions sampling, GenerationStep? step)
    {
        sampling.Validate();
        if (prompt.Length == 0) throw new ArgumentException("the prompt is empty: pass at least one token (e.g. BOS)");
        if (maxNewTokens < 0) throw new ArgumentException($"max new tokens must be ≥ 0 (got {maxNewTokens})");
        var cfg = model.Config;
        int capacity = Math.Min(cfg.NCtx, prompt.Length + maxNewTokens);
        if (prompt.Length > capacity) throw new ArgumentException($"the prompt has {prompt.Length} tokens but the model's context is {cfg.NCtx}");
        return Iterate(model, prompt, maxNewTokens, sampling, capacity, step);
    }

    static IEnumerable<int> Iterate(HookedTransformer model, int[] prompt, int maxNewTokens, SamplingOptions sampling, int capacity, GenerationStep? step)
    {
        var cfg = model.Config;
        var kv = new KvCache(cfg, 1, capacity);
        var rng = new Random(sampling.Seed);
        int[] input = prompt;
        for (int i = 0; i < maxNewTokens && kv.Length + input.Length <= capacity; i++)
        {
            var options = step?.Options?.Invoke(kv.Length);
            var logits = model.Run([input], options == null ? new RunOptions { KvCache = kv }
                : new RunOptions { KvCache = kv, Hooks = options.Hooks, Splices = options.Splices })!;
            var last = logits.Data.AsSpan((input.Length - 1) * cfg.VocabSize, cfg.VocabSize);
            step?.OnLogits?.Invoke(i, last.ToArray());
            int next = sampling.Temperature == 0 ? ArgMax(last) : Sample(last, sampling, rng);
            if (next == cfg.EosTokenId || next == cfg.BosTokenId) yield break;
            yield return next;
            input = [next];
        }
    }

    /// <summary>Index of the largest logit (the first on ties, as torch.argmax and llama2.c do).</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    /// <summary>One draw from softmax(logits/T) restricted to the nucleus: the most likely tokens whose mass first reaches top-p.</summary>
    internal static int Sample(ReadOnlySpan<float> logits, SamplingOptions s, Random rng)
    {
        int V = logits.Length;
        var p = new double[V];
        double max = double.NegativeInfinity;
        for (int i = 0; i < V; i++) max = Math.Max(max, logits[i] / s.Temperature);
        double sum = 0;
        for (int i = 0; i < V; i++) sum += p[i] = Math.Exp(logits[i] / s.Temperature - max);
        var order = Enumerable.Range(0, V).ToArray();
        Array.Sort(order, (a, b) => p[b].CompareTo(p[a]) != 0 ? p[b].CompareTo(p[a]) : a.CompareTo(b));
        // nucleus: the smallest prefix whose mass reaches top-p
        double cum = 0; int keep = 0;
        while (keep < V) { cum += p[order[keep]] / sum; keep++; if (cum >= s.TopP) break; }
        double u = rng.NextDouble() * cum, acc = 0;
        for (int i = 0; i < keep; i++)
        {
            acc += p[order[i]] / sum;
            if (u < acc) return order[i];
        }
        return order[keep - 1];
    }
}
