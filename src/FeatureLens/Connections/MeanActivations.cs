using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Connections;

/// <summary>
/// The mean of hook activations over every token of a corpus (one vector per hook, position-independent), for mean
/// ablation. Computed once and kept in a safetensors file, so later runs on the same model, SAEs and corpus reuse it.
/// </summary>
public sealed class MeanActivations
{
    readonly Dictionary<string, float[]> _means;
    /// <summary>Tokens the means were taken over.</summary>
    public long Tokens { get; }

    MeanActivations(Dictionary<string, float[]> means, long tokens) { _means = means; Tokens = tokens; }

    /// <summary>The mean row of <paramref name="hook"/> (checked against the expected width).</summary>
    public float[] Get(string hook, int width)
    {
        if (!_means.TryGetValue(hook, out var m)) throw new ArgumentException($"the corpus means hold no activation for '{hook}' (they cover: {string.Join(", ", _means.Keys.Take(6))}...)");
        if (m.Length != width) throw new ArgumentException($"the corpus mean of '{hook}' has width {m.Length}, expected {width}: it was computed for another model or SAE");
        return m;
    }

    /// <summary>Means of <paramref name="hooks"/> over the corpus windows, with the splices attached (their hooks can be averaged).</summary>
    public static MeanActivations Compute(HookedTransformer model, IReadOnlyList<IHookSplice> splices, IEnumerable<int[]> windows, IReadOnlyCollection<string> hooks,
        int batch = 8, Action<long>? progress = null)
    {
        var set = new HashSet<string>(hooks, StringComparer.Ordinal);
        var sums = new Dictionary<string, double[]>(StringComparer.Ordinal);
        long count = 0;
        foreach (var chunk in windows.Chunk(batch))
        {
            var cache = new ActivationCache { Lengths = chunk.Select(c => c.Length).ToArray() };
            model.Run(chunk, new RunOptions { CacheFilter = set.Contains, Cache = cache, Splices = splices, ReturnLogits = false });
            foreach (var (name, t) in cache)
            {
                int T = t.Shape[1];
                int width = (int)(t.Length / ((long)t.Shape[0] * T));
                if (!sums.TryGetValue(name, out var s)) sums[name] = s = new double[width];
                for (int b = 0; b < chunk.Length; b++)
                    for (int p = 0; p < chunk[b].Length; p++)
                    {
                        long o = ((long)b * T + p) * width;
                        for (int i = 0; i < width; i++) s[i] += t.Data[o + i];
                    }
            }
            count += chunk.Sum(c => c.Length);
            progress?.Invoke(count);
        }
        if (count == 0) throw new ArgumentException("the mean-ablation corpus has no tokens");
        var missing = set.Where(h => !sums.ContainsKey(h)).ToList();
        if (missing.Count > 0) throw new ArgumentException($"no activation reached hook(s) {string.Join(", ", missing)} while averaging the corpus");
        return new MeanActivations(sums.ToDictionary(kv => kv.Key, kv => kv.Value.Select(v => (float)(v / count)).ToArray(), StringComparer.Ordinal), count);
    }

    /// <summary>Writes the means (atomically: a temporary file moved into place).</summary>
    public void Save(string path, IReadOnlyDictionary<string, string> metadata)
    {
        var w = new SafetensorsWriter();
        foreach (var (name, m) in _means) w.Add(name, new Tensor([m.Length], m));
        var meta = new Dictionary<string, string>(metadata) { ["tokens"] = Tokens.ToString(System.Globalization.CultureInfo.InvariantCulture) };
        w.Write(path, meta);
    }

    /// <summary>Reads means written by <see cref="Save"/>.</summary>
    public static MeanActivations Load(string path)
    {
        using var f = SafetensorsFile.Open(path);
        var means = new Dictionary<string, float[]>(StringComparer.Ordinal);
        foreach (var name in f.Names)
        {
            var m = f.ReadF32(name).Data;
            int bad = Array.FindIndex(m, v => !float.IsFinite(v));
            if (bad >= 0) throw new InvalidDataException($"{path}: the corpus mean of '{name}' is not finite ({m[bad]}) at element {bad}: delete the file to recompute it");
            means[name] = m;
        }
        long tokens = f.Metadata.TryGetValue("tokens", out var t) ? long.Parse(t, System.Globalization.CultureInfo.InvariantCulture) : 0;
        return new MeanActivations(means, tokens);
    }
}
