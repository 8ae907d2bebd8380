using FeatureLens.Runtime.Models;
using FeatureLens.Saes;

namespace FeatureLens.Analysis;

/// <summary>Where a latent fired: sequence, position and activation.</summary>
public readonly record struct LatentExample(int Sequence, int Position, float Activation);

/// <summary>The strongest activations of every latent of one SAE over a set of sequences.</summary>
public sealed class LatentTopExamples
{
    public required Sae Sae { get; init; }
    /// <summary>Per latent, its examples sorted by decreasing activation.</summary>
    public required LatentExample[][] Examples { get; init; }
    /// <summary>Per latent, the number of tokens it fired on.</summary>
    public required long[] FireCounts { get; init; }
    public required long Tokens { get; init; }
}

/// <summary>
/// Collects each latent's top-N activating tokens over a corpus (one bounded min-heap per latent), the raw
/// material of feature dashboards and of the README's feature examples.
/// </summary>
public static class TopExamples
{
    public static IReadOnlyList<LatentTopExamples> Collect(HookedTransformer model, IReadOnlyList<Sae> saes, IReadOnlyList<int[]> sequences,
        int topN = 10, int batchSequences = 8, bool skipBos = true)
    {
        var splices = saes.Select(s => new SaeSplice(s, useErrorTerm: true)).ToList();
        var heaps = saes.Select(s => Enumerable.Range(0, s.DSae).Select(_ => new PriorityQueue<LatentExample, float>()).ToArray()).ToList();
        var counts = saes.Select(s => new long[s.DSae]).ToList();
        long tokens = 0;
        int bos = model.Tokenizer?.BosId ?? -1;
        for (int start = 0; start < sequences.Count; start += batchSequences)
        {
            var batch = sequences.Skip(start).Take(batchSequences).ToArray();
            var cache = new ActivationCache { Lengths = batch.Select(b => b.Length).ToArray() };
            var names = new HashSet<string>(splices.Select(s => s.ActsPostHook));
            model.Run(batch, new RunOptions { Splices = splices, CacheFilter = names.Contains, Cache = cache, ReturnLogits = false });
            for (int i = 0; i < saes.Count; i++)
            {
                var acts = cache[splices[i].ActsPostHook];
                int T = acts.Shape[1], d = saes[i].DSae;
                var heap = heaps[i]; var cnt = counts[i];
                for (int b = 0; b < batch.Length; b++)
                    for (int t = 0; t < batch[b].Length; t++)
                    {
                        if (skipBos && batch[b][t] == bos) continue;
                        var row = new ReadOnlySpan<float>(acts.Data, (b * T + t) * d, d);
                        for (int j = 0; j < d; j++)
                        {
                            float v = row[j];
                            if (v <= 0) continue;
                            cnt[j]++;
                            var h = heap[j];
                            if (h.Count < topN) h.Enqueue(new LatentExample(start + b, t, v), v);
                            else if (h.TryPeek(out _, out float least) && v > least) h.DequeueEnqueue(new LatentExample(start + b, t, v), v);
                        }
                    }
            }
            if (saes.Count > 0) tokens += batch.Sum(b => skipBos ? b.Count(tk => tk != bos) : b.Length);
        }
        return saes.Select((s, i) => new LatentTopExamples
        {
            Sae = s,
            Examples = heaps[i].Select(h => h.UnorderedItems.Select(e => e.Element).OrderByDescending(e => e.Activation).ToArray()).ToArray(),
            FireCounts = counts[i],
            Tokens = tokens,
        }).ToList();
    }
}
