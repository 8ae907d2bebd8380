using System.Text.Json.Serialization;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;

namespace FeatureLens.Steering;

/// <summary>A chosen token's next-token logit at the prompt's last position, baseline and steered.</summary>
public sealed record LogitChange(
    [property: JsonPropertyName("token")] int Token,
    [property: JsonPropertyName("text")] string Text,
    [property: JsonPropertyName("baseline")] float Baseline,
    [property: JsonPropertyName("steered")] float Steered,
    [property: JsonPropertyName("delta")] float Delta);

/// <summary>A latent's mean activation over the steered run and over the baseline run.</summary>
public sealed record FeatureChange(
    [property: JsonPropertyName("hook")] string Hook,
    [property: JsonPropertyName("latent")] int Latent,
    [property: JsonPropertyName("baseline")] double Baseline,
    [property: JsonPropertyName("steered")] double Steered,
    [property: JsonPropertyName("delta")] double Delta);

/// <summary>Generated ids (the new tokens only) and their text.</summary>
public sealed record SteeringContinuation(
    [property: JsonPropertyName("tokens")] int[] Tokens,
    [property: JsonPropertyName("text")] string Text);

/// <summary>One strength of a sweep.</summary>
public sealed record SteeredContinuation(
    [property: JsonPropertyName("strength")] float Strength,
    [property: JsonPropertyName("tokens")] int[] Tokens,
    [property: JsonPropertyName("text")] string Text,
    [property: JsonPropertyName("kl")] double Kl,
    [property: JsonPropertyName("logit_changes")] LogitChange[] LogitChanges,
    [property: JsonPropertyName("features")] FeatureChange[] Features);

/// <summary>What <c>featurelens steer --json</c> writes.</summary>
public sealed record SteeringResult(
    [property: JsonPropertyName("prompt_tokens")] int[] PromptTokens,
    [property: JsonPropertyName("positions")] string Positions,
    [property: JsonPropertyName("baseline")] SteeringContinuation Baseline,
    [property: JsonPropertyName("steered")] SteeredContinuation[] Steered);

/// <summary>What a sweep reports besides the continuations.</summary>
/// <param name="Logits">Tokens whose next-token logit change to report.</param>
/// <param name="Observe">SAEs (spliced with their error term) whose top changed latents to report.</param>
/// <param name="TopFeatures">Latents per SAE, by |mean steered − mean baseline|.</param>
/// <param name="TokenText">A token's text, for the logit table.</param>
/// <param name="ContinuationText">The text of generated ids after the prompt.</param>
public sealed record SweepOptions(IReadOnlyList<int> Logits, IReadOnlyList<SaeSplice> Observe, int TopFeatures,
    Func<int, string> TokenText, Func<int[], string> ContinuationText);

/// <summary>Baseline and steered continuations with the same seed, one per strength, and what changed.</summary>
public static class SteeringSweep
{
    public static SteeringResult Run(Steerer steerer, int[] prompt, IReadOnlyList<float> strengths, int maxNewTokens, SamplingOptions sampling, SweepOptions o)
    {
        if (strengths.Count == 0) throw new ArgumentException("give at least one strength");
        int V = steerer.Model.Config.VocabSize;
        foreach (int t in o.Logits)
            if ((uint)t >= (uint)V) throw new ArgumentException($"--logit {t}: token id outside the vocabulary [0, {V})");
        var names = o.Observe.Select(s => s.ActsPostHook).ToList();
        if (names.Distinct(StringComparer.Ordinal).Count() != names.Count)
            throw new ArgumentException($"two SAEs read the same hook ({string.Join(", ", names.GroupBy(n => n).Where(g => g.Count() > 1).Select(g => g.Key))}); give one SAE per hook");

        var baseline = steerer.Generate(prompt, null, maxNewTokens, sampling);
        var baseSeq = prompt.Concat(baseline.Tokens).ToArray();
        var baseMeans = o.Observe.Count > 0 ? steerer.MeanLatents(baseSeq, prompt.Length, null, o.Observe) : [];
        var steered = new List<SteeredContinuation>();
        foreach (float k in strengths)
        {
            var g = steerer.Generate(prompt, k, maxNewTokens, sampling);
            var logits = o.Logits.Select(t => new LogitChange(t, o.TokenText(t), baseline.NextTokenLogits[t], g.NextTokenLogits[t],
                g.NextTokenLogits[t] - baseline.NextTokenLogits[t])).ToArray();
            var features = new List<FeatureChange>();
            if (o.Observe.Count > 0)
            {
                var means = steerer.MeanLatents(prompt.Concat(g.Tokens).ToArray(), prompt.Length, k, o.Observe);
                for (int s = 0; s < o.Observe.Count; s++)
                    features.AddRange(TopChanges(o.Observe[s].InputHook, baseMeans[s], means[s], o.TopFeatures));
            }
            steered.Add(new SteeredContinuation(k, g.Tokens, o.ContinuationText(g.Tokens), Kl(baseline.NextTokenLogits, g.NextTokenLogits), logits, [.. features]));
        }
        return new SteeringResult(prompt, steerer.Positions.ToString().ToLowerInvariant(),
            new SteeringContinuation(baseline.Tokens, o.ContinuationText(baseline.Tokens)), [.. steered]);
    }

    /// <summary>
    /// The text of generated ids after <paramref name="prompt"/>: the UTF-8 bytes of prompt + ids past the prompt's own bytes
    /// (so a character split across the boundary is decoded whole).
    /// </summary>
    public static Func<int[], string> ContinuationText(Runtime.Tokenizers.ITokenizer tokenizer, int[] prompt)
    {
        int promptBytes = tokenizer.DecodeBytes(prompt).Length;
        return ids =>
        {
            var bytes = tokenizer.DecodeBytes(prompt.Concat(ids).ToArray());
            return System.Text.Encoding.UTF8.GetString(bytes, promptBytes, bytes.Length - promptBytes);
        };
    }

    /// <summary>The <paramref name="k"/> latents whose mean changed most (ties: lower index first).</summary>
    public static IEnumerable<FeatureChange> TopChanges(string hook, double[] baseline, double[] steered, int k) =>
        Enumerable.Range(0, baseline.Length).OrderByDescending(j => Math.Abs(steered[j] - baseline[j])).ThenBy(j => j).Take(k)
            .Select(j => new FeatureChange(hook, j, baseline[j], steered[j], steered[j] - baseline[j]));

    /// <summary>KL(p ‖ q) = Σ p (log p − log q) of the softmax distributions of two logit rows, in double precision.</summary>
    public static double Kl(ReadOnlySpan<float> p, ReadOnlySpan<float> q)
    {
        if (p.Length != q.Length) throw new ArgumentException($"logit rows of different lengths ({p.Length}, {q.Length})");
        double lp = LogSumExp(p), lq = LogSumExp(q), kl = 0;
        for (int i = 0; i < p.Length; i++)
        {
            double a = p[i] - lp, b = q[i] - lq;
            kl += Math.Exp(a) * (a - b);
        }
        return Math.Max(0, kl);
    }

    static double LogSumExp(ReadOnlySpan<float> x)
    {
        double m = double.NegativeInfinity, s = 0;
        foreach (float v in x) m = Math.Max(m, v);
        foreach (float v in x) s += Math.Exp(v - m);
        return m + Math.Log(s);
    }
}

/// <summary>The JSON file of <c>featurelens steer --json</c>.</summary>
public static class SteeringJson
{
    static readonly System.Text.Json.JsonSerializerOptions Options = new() { WriteIndented = true };

    /// <summary>Writes <paramref name="result"/> to a temporary file beside <paramref name="path"/>, then moves it into place.</summary>
    public static void Write(string path, SteeringResult result) =>
        Connections.EffectsJson.WriteAtomic(path, System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(result, Options));
}
