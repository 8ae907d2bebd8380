using System.Globalization;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Connections;

/// <summary>The kinds of <see cref="Metric"/>.</summary>
public enum MetricKind { Logit, LogitDiff, LogProb, Prob, Loss, Feature }

/// <summary>
/// A scalar of one forward pass, as the CLI's <c>--metric</c> writes it (the grammar of CONNECTIONS.md):
/// <c>logit:T</c>, <c>logit-diff:T1,T2</c>, <c>logprob:T</c>, <c>prob:T</c>, <c>loss</c>, <c>feature:HOOK:I</c>, each but
/// <c>loss</c> with an optional <c>@POS</c> (default −1, the last position; negative counts from the end of each
/// sequence). For a batch the metric is summed over the sequences. <c>feature:HOOK:I</c> is latent I of
/// <c>HOOK.hook_sae_acts_post</c>, so an SAE must be spliced at HOOK.
/// </summary>
public sealed class Metric : IObjective
{
    public MetricKind Kind { get; }
    /// <summary>The token (logit, logprob, prob) or the first token (logit-diff).</summary>
    public int Token { get; }
    /// <summary>The subtracted token of a logit difference.</summary>
    public int Token2 { get; }
    /// <summary>The position (negative: from the end of each sequence); unused for loss.</summary>
    public int Position { get; }
    /// <summary>The SAE's hook of a feature metric.</summary>
    public string? Hook { get; }
    /// <summary>The latent of a feature metric.</summary>
    public int Feature { get; }

    Metric(MetricKind kind, int token = 0, int token2 = 0, int position = -1, string? hook = null, int feature = 0)
    {
        Kind = kind; Token = token; Token2 = token2; Position = position; Hook = hook; Feature = feature;
    }

    public static Metric Logit(int token, int position = -1) => new(MetricKind.Logit, token, position: position);
    public static Metric LogitDiff(int token, int other, int position = -1) => new(MetricKind.LogitDiff, token, other, position);
    public static Metric LogProb(int token, int position = -1) => new(MetricKind.LogProb, token, position: position);
    public static Metric Prob(int token, int position = -1) => new(MetricKind.Prob, token, position: position);
    public static Metric Loss() => new(MetricKind.Loss);
    public static Metric OfFeature(string hook, int feature, int position = -1) => new(MetricKind.Feature, hook: hook, feature: feature, position: position);

    /// <summary>The hook holding a feature metric's latents.</summary>
    public string? ActsHook => Hook == null ? null : Hook + ".hook_sae_acts_post";

    /// <summary>Parses the metric grammar; throws <see cref="ArgumentException"/> naming what is wrong.</summary>
    public static Metric Parse(string text)
    {
        const string Grammar = "expected logit:T, logit-diff:T1,T2, logprob:T, prob:T, loss or feature:HOOK:I, with an optional @POS";
        if (string.IsNullOrWhiteSpace(text)) throw new ArgumentException($"empty metric: {Grammar}");
        string s = text.Trim();
        int position = -1;
        int at = s.LastIndexOf('@');
        if (at >= 0)
        {
            if (!int.TryParse(s.AsSpan(at + 1), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out position))
                throw new ArgumentException($"metric '{text}': position '{s[(at + 1)..]}' after @ is not an integer");
            s = s[..at];
        }
        int colon = s.IndexOf(':', StringComparison.Ordinal);
        string kind = colon < 0 ? s : s[..colon], arg = colon < 0 ? "" : s[(colon + 1)..];
        int Tok(string v, string what) => int.TryParse(v, NumberStyles.None, CultureInfo.InvariantCulture, out int t)
            ? t : throw new ArgumentException($"metric '{text}': {what} '{v}' is not a token id (a non-negative integer)");
        switch (kind)
        {
            case "loss":
                if (colon >= 0) throw new ArgumentException($"metric '{text}': loss takes no argument");
                if (at >= 0) throw new ArgumentException($"metric '{text}': loss is the mean over every predicted position and takes no @POS");
                return Loss();
            case "logit": return Logit(Tok(arg, "token"), position);
            case "logprob": return LogProb(Tok(arg, "token"), position);
            case "prob": return Prob(Tok(arg, "token"), position);
            case "logit-diff":
            {
                var parts = arg.Split(',');
                if (parts.Length != 2) throw new ArgumentException($"metric '{text}': logit-diff needs two token ids T1,T2");
                return LogitDiff(Tok(parts[0], "token"), Tok(parts[1], "token"), position);
            }
            case "feature":
            {
                int last = arg.LastIndexOf(':');
                if (last <= 0) throw new ArgumentException($"metric '{text}': feature needs HOOK:I (e.g. feature:blocks.2.hook_resid_post:17)");
                if (!int.TryParse(arg.AsSpan(last + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int f))
                    throw new ArgumentException($"metric '{text}': latent '{arg[(last + 1)..]}' is not a non-negative integer");
                return OfFeature(arg[..last], f, position);
            }
            default: throw new ArgumentException($"metric '{text}': unknown kind '{kind}'; {Grammar}");
        }
    }

    /// <summary>The metric in its grammar, e.g. "logit-diff:5,7@-1".</summary>
    public override string ToString()
    {
        string pos = string.Create(CultureInfo.InvariantCulture, $"@{Position}");
        return Kind switch
        {
            MetricKind.Loss => "loss",
            MetricKind.Logit => string.Create(CultureInfo.InvariantCulture, $"logit:{Token}{pos}"),
            MetricKind.LogitDiff => string.Create(CultureInfo.InvariantCulture, $"logit-diff:{Token},{Token2}{pos}"),
            MetricKind.LogProb => string.Create(CultureInfo.InvariantCulture, $"logprob:{Token}{pos}"),
            MetricKind.Prob => string.Create(CultureInfo.InvariantCulture, $"prob:{Token}{pos}"),
            _ => string.Create(CultureInfo.InvariantCulture, $"feature:{Hook}:{Feature}{pos}"),
        };
    }

    /// <summary>The position this metric reads in a sequence of <paramref name="length"/> tokens (validated).</summary>
    public int PositionIn(int length, int sequence)
    {
        int p = Position < 0 ? length + Position : Position;
        if (p < 0 || p >= length)
            throw new ArgumentException($"metric '{this}': position {Position} is outside sequence {sequence} of {length} tokens (valid: 0..{length - 1} or -{length}..-1)");
        return p;
    }

    IReadOnlyCollection<string> IObjective.ReadsHooks => ActsHook is { } h ? [h] : [];

    /// <summary>Checks token ids against the vocabulary, positions against every sequence, and the feature's SAE.</summary>
    public void Validate(ModelConfig config, int[][] tokens, IReadOnlyCollection<string> hookNames)
    {
        foreach (int t in Kind switch { MetricKind.LogitDiff => new[] { Token, Token2 }, MetricKind.Loss or MetricKind.Feature => [], _ => [Token] })
            if (t >= config.VocabSize) throw new ArgumentException($"metric '{this}': token id {t} is outside the vocabulary [0, {config.VocabSize})");
        for (int b = 0; b < tokens.Length; b++)
        {
            if (Kind == MetricKind.Loss)
            {
                if (tokens[b].Length < 2) throw new ArgumentException($"metric 'loss' needs at least 2 tokens; sequence {b} has {tokens[b].Length}");
            }
            else PositionIn(tokens[b].Length, b);
        }
        if (ActsHook is { } acts && !hookNames.Contains(acts))
            throw new ArgumentException($"metric '{this}' reads latent {Feature} of an SAE at '{Hook}', but no SAE is spliced there (give one with --sae)");
    }

    /// <summary>Values per sequence and gradients (all sequences use this metric).</summary>
    public ObjectiveGradient Evaluate(Tensor logits, ActivationCache reads, int[][] tokens) => EvaluateBatch(Enumerable.Repeat(this, tokens.Length).ToArray(), logits, reads, tokens);

    /// <summary>A batch objective in which sequence b uses <paramref name="metrics"/>[b] (summed, as SFC does for prompt pairs).</summary>
    public static IObjective PerSequence(IReadOnlyList<Metric> metrics) => new PerSequenceMetrics([.. metrics]);

    sealed class PerSequenceMetrics(Metric[] metrics) : IObjective
    {
        public IReadOnlyCollection<string> ReadsHooks => metrics.Select(m => m.ActsHook).OfType<string>().Distinct().ToArray();

        public void Validate(ModelConfig config, int[][] tokens, IReadOnlyCollection<string> hookNames)
        {
            if (metrics.Length != tokens.Length) throw new ArgumentException($"{metrics.Length} metrics for {tokens.Length} sequences");
            for (int b = 0; b < tokens.Length; b++) metrics[b].Validate(config, [tokens[b]], hookNames);
        }

        public ObjectiveGradient Evaluate(Tensor logits, ActivationCache reads, int[][] tokens) => EvaluateBatch(metrics, logits, reads, tokens);
    }

    static ObjectiveGradient EvaluateBatch(Metric[] metrics, Tensor logits, ActivationCache reads, int[][] tokens)
    {
        int B = tokens.Length, T = logits.Shape[1], V = logits.Shape[2];
        var values = new float[B];
        var rows = new List<int>();
        var grads = new List<float[]>();
        var seeds = new Dictionary<string, float[]>(StringComparer.Ordinal);
        for (int b = 0; b < B; b++)
        {
            var m = metrics[b];
            int len = tokens[b].Length;
            ReadOnlySpan<float> Row(int t) => logits.Data.AsSpan((b * T + t) * V, V);
            switch (m.Kind)
            {
                case MetricKind.Loss:
                {
                    double sum = 0;
                    for (int t = 0; t < len - 1; t++)
                    {
                        var g = new float[V];
                        double lp = LogSoftmax(Row(t), tokens[b][t + 1], g);       // g = softmax
                        sum -= lp;
                        g[tokens[b][t + 1]] -= 1f;
                        float inv = 1f / (len - 1);
                        for (int v = 0; v < V; v++) g[v] *= inv;
                        rows.Add(b * T + t); grads.Add(g);
                    }
                    values[b] = (float)(sum / (len - 1));
                    break;
                }
                case MetricKind.Feature:
                {
                    int p = m.PositionIn(len, b);
                    var acts = reads[m.ActsHook!];
                    int width = acts.Shape[2];
                    if (m.Feature >= width)
                        throw new ArgumentException($"metric '{m}': latent {m.Feature} is outside the SAE at '{m.Hook}' ({width} latents)");
                    long idx = ((long)b * T + p) * width + m.Feature;
                    values[b] = acts.Data[idx];
                    if (!seeds.TryGetValue(m.ActsHook!, out var seed)) seeds[m.ActsHook!] = seed = new float[acts.Length];
                    seed[idx] += 1f;
                    break;
                }
                default:
                {
                    int p = m.PositionIn(len, b);
                    var row = Row(p);
                    var g = new float[V];
                    switch (m.Kind)
                    {
                        case MetricKind.Logit: values[b] = row[m.Token]; g[m.Token] = 1f; break;
                        case MetricKind.LogitDiff: values[b] = row[m.Token] - row[m.Token2]; g[m.Token] += 1f; g[m.Token2] -= 1f; break;
                        case MetricKind.LogProb:
                        {
                            values[b] = (float)LogSoftmax(row, m.Token, g);
                            for (int v = 0; v < V; v++) g[v] = -g[v];
                            g[m.Token] += 1f;
                            break;
                        }
                        case MetricKind.Prob:
                        {
                            float pt = (float)Math.Exp(LogSoftmax(row, m.Token, g));
                            values[b] = pt;
                            for (int v = 0; v < V; v++) g[v] = -pt * g[v];
                            g[m.Token] += pt;
                            break;
                        }
                    }
                    rows.Add(b * T + p); grads.Add(g);
                    break;
                }
            }
        }
        var flat = new float[rows.Count * V];
        for (int i = 0; i < grads.Count; i++) grads[i].CopyTo(flat, i * V);
        var result = new ObjectiveGradient { Values = values, LogitRows = [.. rows], LogitGradients = flat };
        foreach (var (k, v) in seeds) result.HookSeeds[k] = v;
        return result;
    }

    /// <summary>log softmax(row)[token] in double precision; writes softmax(row) into <paramref name="softmax"/>.</summary>
    static double LogSoftmax(ReadOnlySpan<float> row, int token, Span<float> softmax)
    {
        double max = double.NegativeInfinity;
        foreach (float x in row) max = Math.Max(max, x);
        double sum = 0;
        for (int v = 0; v < row.Length; v++) sum += Math.Exp(row[v] - max);
        double logZ = max + Math.Log(sum);
        for (int v = 0; v < row.Length; v++) softmax[v] = (float)Math.Exp(row[v] - logZ);
        return row[token] - logZ;
    }
}
