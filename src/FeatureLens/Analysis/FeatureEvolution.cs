using System.Numerics.Tensors;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Saes;

namespace FeatureLens.Analysis;

/// <summary>Options of <see cref="FeatureEvolution.Analyze(SaeSet, int, int, string, EvolutionOptions?, CorrelationStats?, FeatureLabelLookup?)"/>.</summary>
public sealed record EvolutionOptions
{
    /// <summary>Best matches listed per other SAE and per method.</summary>
    public int Matches { get; init; } = 5;
    /// <summary>Leave BOS tokens out of the prompt correlations.</summary>
    public bool SkipBos { get; init; } = true;
}

/// <summary>A feature of another SAE matched to the tracked one, with the score it was matched by (decoder cosine or Pearson r).</summary>
public sealed record FeatureMatch(int SaeIndex, string Sae, int Layer, int Feature, double Score, FeatureLabel? Label);

/// <summary>The tracked feature's best matches in one other SAE.</summary>
public sealed record SaeMatches
{
    public required int SaeIndex { get; init; }
    public required string Sae { get; init; }
    public required int Layer { get; init; }
    /// <summary>By cosine of decoder directions, highest first (empty when the SAEs write different widths).</summary>
    public required IReadOnlyList<FeatureMatch> ByDecoder { get; init; }
    /// <summary>By Pearson r of activations over the prompt's tokens, highest first (empty when the feature is constant there).</summary>
    public required IReadOnlyList<FeatureMatch> ByPrompt { get; init; }
    /// <summary>By Pearson r over a corpus, when corpus statistics were given and the feature was kept in them.</summary>
    public IReadOnlyList<FeatureMatch>? ByCorpus { get; init; }
}

/// <summary>One member of the layer-to-layer chain of decoder matches.</summary>
public sealed record ChainLink
{
    public required int SaeIndex { get; init; }
    public required string Sae { get; init; }
    public required int Layer { get; init; }
    public required int Feature { get; init; }
    /// <summary>Decoder cosine with the previous link toward the tracked feature (1 for the tracked feature itself).</summary>
    public required double Cosine { get; init; }
    /// <summary>Activation at every token of the prompt.</summary>
    public required float[] PerToken { get; init; }
    public required double Max { get; init; }
    public required double Mean { get; init; }
    public FeatureLabel? Label { get; init; }
}

/// <summary>How a feature evolves across the SAEs of a set, on a prompt.</summary>
public sealed record EvolutionResult
{
    public required string Text { get; init; }
    public required int[] TokenIds { get; init; }
    public required string[] Tokens { get; init; }
    public required int SaeIndex { get; init; }
    public required string Sae { get; init; }
    public required int Feature { get; init; }
    public FeatureLabel? Label { get; init; }
    /// <summary>Best matches in every other SAE, in set order.</summary>
    public required IReadOnlyList<SaeMatches> Matches { get; init; }
    /// <summary>The chain of best decoder matches, in set (layer) order; the tracked feature is one of its links.</summary>
    public required IReadOnlyList<ChainLink> Chain { get; init; }
    /// <summary>Tokens of the corpus statistics used for <see cref="SaeMatches.ByCorpus"/> (0 when none).</summary>
    public long CorpusTokens { get; init; }
}

/// <summary>
/// Feature evolution across layers: a feature's best matches in the other SAEs by decoder direction and by activation
/// correlation, and the chain of decoder matches from layer to layer with each member's activations on a prompt.
/// </summary>
public static class FeatureEvolution
{
    /// <summary>Analyses a feature on a text (encoded with BOS).</summary>
    public static EvolutionResult Analyze(SaeSet set, int saeIndex, int feature, string text, EvolutionOptions? options = null,
        CorrelationStats? corpus = null, FeatureLabelLookup? labels = null) =>
        Analyze(set, saeIndex, feature, FeatureTracker.Encode(set, text), options, corpus, labels, text);

    /// <summary>Analyses a feature on a token sequence.</summary>
    public static EvolutionResult Analyze(SaeSet set, int saeIndex, int feature, int[] tokens, EvolutionOptions? options = null,
        CorrelationStats? corpus = null, FeatureLabelLookup? labels = null) =>
        Analyze(set, saeIndex, feature, tokens, options, corpus, labels, null);

    /// <summary>
    /// Cosine between decoder row <paramref name="feature"/> of <paramref name="from"/> and every decoder row of
    /// <paramref name="to"/>: one GEMV over W_dec (d_sae, d_out), divided by the row norms (0 for zero rows).
    /// </summary>
    public static float[] DecoderCosines(Sae from, int feature, Sae to)
    {
        if ((uint)feature >= (uint)from.DSae) throw new ArgumentOutOfRangeException(nameof(feature), $"feature {feature} is outside the SAE's {from.DSae} latents");
        if (from.DOut != to.DOut) throw new ArgumentException($"decoder directions of widths {from.DOut} and {to.DOut} cannot be compared");
        int d = from.DOut;
        var v = new float[d];
        new ReadOnlySpan<float>(from.WDec, feature * d, d).CopyTo(v);
        float vn = TensorPrimitives.Norm(v);
        var cos = new float[to.DSae];
        if (vn == 0) return cos;
        TensorPrimitives.Divide(v, vn, v);
        // cos (1, d_sae) = v (1, d) · W_decᵀ, W_dec (d_sae, d)
        Gemm.MatMulTransB(v, to.WDec, cos, 1, d, to.DSae);
        var norms = to.DecoderNorms;
        for (int j = 0; j < cos.Length; j++) cos[j] = norms[j] > 0 ? cos[j] / norms[j] : 0f;
        return cos;
    }

    static EvolutionResult Analyze(SaeSet set, int saeIndex, int feature, int[] tokens, EvolutionOptions? options,
        CorrelationStats? corpus, FeatureLabelLookup? labels, string? text)
    {
        options ??= new EvolutionOptions();
        int S = set.Saes.Count;
        if ((uint)saeIndex >= (uint)S) throw new ArgumentOutOfRangeException(nameof(saeIndex), $"SAE index {saeIndex} is outside the set's {S} SAEs (0..{S - 1})");
        if ((uint)feature >= (uint)set.Saes[saeIndex].DSae)
            throw new ArgumentOutOfRangeException(nameof(feature), $"feature {feature} is outside {set.Names[saeIndex]}'s {set.Saes[saeIndex].DSae} latents (0..{set.Saes[saeIndex].DSae - 1})");
        if (options.Matches < 1) throw new ArgumentOutOfRangeException(nameof(options), $"Matches must be at least 1, got {options.Matches}");
        if (tokens is null || tokens.Length == 0) throw new ArgumentException("the prompt has no tokens");
        if (tokens.Length > set.Model.Config.NCtx)
            throw new ArgumentException($"the prompt is {tokens.Length} tokens long but the model's context is {set.Model.Config.NCtx} tokens; shorten it");
        if (corpus != null && corpus.Kept.Length != S) throw new ArgumentException($"the corpus statistics are of {corpus.Kept.Length} SAEs, this set has {S}");

        int T = tokens.Length;
        var latents = FeatureTracker.RunLatents(set, [tokens]);   // each (T, d_sae)
        var positions = FeatureTracker.Positions(set, tokens, options.SkipBos);
        float[] Series(int s, int f) => positions.Select(t => latents[s][t * set.Saes[s].DSae + f]).ToArray();
        FeatureLabel? LabelOf(int s, int f) => labels?.Get(set.Hooks[s], f);
        FeatureMatch Match(int s, int f, double score) => new(s, set.Names[s], set.Layers[s], f, score, LabelOf(s, f));

        var x = Series(saeIndex, feature);
        var matches = new List<SaeMatches>();
        for (int s = 0; s < S; s++)
        {
            if (s == saeIndex) continue;
            var byDecoder = new List<FeatureMatch>();
            if (set.Saes[s].DOut == set.Saes[saeIndex].DOut)
            {
                var cos = DecoderCosines(set.Saes[saeIndex], feature, set.Saes[s]);
                byDecoder = TopIndices(cos, options.Matches).Select(j => Match(s, j, cos[j])).ToList();
            }
            var byPrompt = PromptCorrelations(x, latents[s], set.Saes[s].DSae, positions)
                .OrderByDescending(p => p.R).ThenBy(p => p.Feature).Take(options.Matches).Select(p => Match(s, p.Feature, p.R)).ToList();
            IReadOnlyList<FeatureMatch>? byCorpus = corpus?.BestMatches(saeIndex, feature, s, options.Matches).Select(p => Match(s, p.Feature, p.R)).ToList();
            matches.Add(new SaeMatches { SaeIndex = s, Sae = set.Names[s], Layer = set.Layers[s], ByDecoder = byDecoder, ByPrompt = byPrompt, ByCorpus = byCorpus });
        }

        // the chain: follow the best decoder match into the next comparable SAE, forward and backward
        ChainLink Link(int s, int f, double cosine)
        {
            int d = set.Saes[s].DSae;
            var per = Enumerable.Range(0, T).Select(t => latents[s][t * d + f]).ToArray();
            var over = positions.Select(t => (double)per[t]).ToArray();
            return new ChainLink
            {
                SaeIndex = s, Sae = set.Names[s], Layer = set.Layers[s], Feature = f, Cosine = cosine, PerToken = per,
                Max = over.Max(), Mean = over.Average(), Label = LabelOf(s, f),
            };
        }
        var chain = new List<ChainLink> { Link(saeIndex, feature, 1.0) };
        foreach (int step in new[] { +1, -1 })
        {
            int cur = saeIndex, f = feature;
            for (int s = saeIndex + step; s >= 0 && s < S; s += step)
            {
                if (set.Saes[s].DOut != set.Saes[cur].DOut) continue;
                var cos = DecoderCosines(set.Saes[cur], f, set.Saes[s]);
                int best = TopIndices(cos, 1)[0];
                var link = Link(s, best, cos[best]);
                if (step > 0) chain.Add(link); else chain.Insert(0, link);
                cur = s; f = best;
            }
        }

        return new EvolutionResult
        {
            Text = text ?? (set.Model.Tokenizer?.Decode(tokens) ?? string.Join(",", tokens)),
            TokenIds = tokens,
            Tokens = FeatureTracker.TokenTexts(set, tokens),
            SaeIndex = saeIndex, Sae = set.Names[saeIndex], Feature = feature, Label = LabelOf(saeIndex, feature),
            Matches = matches, Chain = chain, CorpusTokens = corpus?.Tokens ?? 0,
        };
    }

    /// <summary>Indices of the <paramref name="count"/> largest values, largest first (ties by index).</summary>
    static int[] TopIndices(float[] values, int count) =>
        Enumerable.Range(0, values.Length).OrderByDescending(j => values[j]).ThenBy(j => j).Take(count).ToArray();

    /// <summary>
    /// Pearson r between series x (over <paramref name="positions"/>) and every latent of acts (T, d_sae) over the same
    /// positions, centred, in double; constant latents are left out. Empty when x is constant.
    /// </summary>
    static List<(int Feature, double R)> PromptCorrelations(float[] x, float[] acts, int d, int[] positions)
    {
        int n = positions.Length;
        var result = new List<(int, double)>();
        if (n < 2) return result;
        double mx = x.Average(v => (double)v), sxx = 0;
        var dx = x.Select(v => v - mx).ToArray();
        foreach (double v in dx) sxx += v * v;
        if (sxx == 0) return result;
        var mean = new double[d];
        foreach (int t in positions) for (int j = 0; j < d; j++) mean[j] += acts[t * d + j];
        for (int j = 0; j < d; j++) mean[j] /= n;
        var sxy = new double[d]; var syy = new double[d];
        for (int i = 0; i < n; i++)
        {
            int t = positions[i];
            double xi = dx[i];
            for (int j = 0; j < d; j++)
            {
                double y = acts[t * d + j] - mean[j];
                sxy[j] += xi * y; syy[j] += y * y;
            }
        }
        for (int j = 0; j < d; j++)
            if (syy[j] > 0) result.Add((j, Math.Clamp(sxy[j] / Math.Sqrt(sxx * syy[j]), -1.0, 1.0)));
        return result;
    }
}
