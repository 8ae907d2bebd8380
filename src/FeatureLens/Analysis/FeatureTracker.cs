using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;

namespace FeatureLens.Analysis;

/// <summary>
/// The feature activation tracker: which SAE features fire on a prompt at every hook of an <see cref="SaeSet"/>, their
/// per-token activations, the layer × feature heatmap and the prompt's cross-layer correlation network.
/// </summary>
public static class FeatureTracker
{
    /// <summary>Tracks a text: it is encoded with the model's tokenizer, BOS first.</summary>
    public static TrackResult Track(SaeSet set, string text, TrackOptions? options = null, FeatureLabelLookup? labels = null)
    {
        var tokens = Encode(set, text);
        return Track(set, tokens, options, labels, text);
    }

    /// <summary>Tracks a token sequence (its text is the tokenizer's decoding, when there is a tokenizer).</summary>
    public static TrackResult Track(SaeSet set, int[] tokens, TrackOptions? options = null, FeatureLabelLookup? labels = null) =>
        Track(set, tokens, options, labels, null);

    /// <summary>Token ids of a prompt (BOS first), with clear errors for empty or over-long text.</summary>
    public static int[] Encode(SaeSet set, string text)
    {
        if (string.IsNullOrWhiteSpace(text)) throw new ArgumentException("the text is empty: enter a prompt to track");
        var tok = set.Model.Tokenizer ?? throw new InvalidOperationException("this model has no tokenizer: give token ids instead of text");
        var ids = tok.Encode(text, addBos: true);
        int ctx = set.Model.Config.NCtx;
        if (ids.Length > ctx) throw new ArgumentException($"the text is {ids.Length} tokens long but the model's context is {ctx} tokens; shorten it");
        return ids;
    }

    /// <summary>Each token's text (the tokenizer's decoding of that id alone), for highlighting.</summary>
    public static string[] TokenTexts(SaeSet set, int[] tokens)
    {
        var tok = set.Model.Tokenizer;
        return tokens.Select(t => tok is null ? $"<{t}>" : tok.Decode([t])).ToArray();
    }

    /// <summary>
    /// One forward pass over a batch (stopping after the last block an SAE reads) and each SAE's encoding of the clean
    /// activation at its hook — what an SAE spliced with its error term sees; returns each SAE's latents as
    /// (B, T, d_sae) row-major, T the longest sequence (padding is zero).
    /// </summary>
    public static float[][] RunLatents(SaeSet set, int[][] batch)
    {
        var lengths = batch.Select(b => b.Length).ToArray();
        int B = batch.Length, T = lengths.Max(), rows = lengths.Sum();
        var result = new float[set.Saes.Count][];
        HookInputs(set, batch, (i, x) =>
        {
            var sae = set.Saes[i];
            var acts = new float[(long)rows * sae.DSae];
            sae.EncodeRows(x, acts, rows);
            var full = rows == B * T ? acts : new float[(long)B * T * sae.DSae];
            if (!ReferenceEquals(full, acts))
            {
                int r = 0;
                for (int b = 0; b < B; b++)
                {
                    Array.Copy(acts, (long)r * sae.DSae, full, (long)b * T * sae.DSae, (long)lengths[b] * sae.DSae);
                    r += lengths[b];
                }
            }
            result[i] = full;
        });
        return result;
    }

    /// <summary>
    /// <see cref="RunLatents"/> kept sparse: each SAE's positive latents, one row per real token (sequence b's position t
    /// is row Σ_{b′&lt;b} length(b′) + t) — the same values, without the dense (B, T, d_sae) arrays.
    /// </summary>
    public static SparseActivations[] RunSparseLatents(SaeSet set, int[][] batch)
    {
        int rows = batch.Sum(b => b.Length);
        var result = new SparseActivations[set.Saes.Count];
        HookInputs(set, batch, (i, x) => result[i] = set.Saes[i].EncodeSparse(new Tensor([rows, set.Saes[i].DIn], x)));
        return result;
    }

    /// <summary>
    /// With the error term a spliced SAE leaves the model unchanged, so each SAE's latents are simply the encoding of the
    /// clean activation at its hook: one forward pass caching the hooks (stopping after the last block needed), then each
    /// SAE's input — its hook's real (unpadded) rows, (Σ lengths, d_in) — handed to <paramref name="use"/>.
    /// </summary>
    static void HookInputs(SaeSet set, int[][] batch, Action<int, float[]> use)
    {
        var hooks = new HashSet<string>(set.Hooks, StringComparer.Ordinal);
        var lengths = batch.Select(b => b.Length).ToArray();
        var cache = new ActivationCache { Lengths = lengths };
        int? stop = set.Layers.All(l => l >= 0) ? set.Layers.Max() + 1 : null;
        set.Model.Run(batch, new RunOptions { CacheFilter = hooks.Contains, Cache = cache, ReturnLogits = false, StopAtLayer = stop });
        int B = batch.Length, T = lengths.Max(), rows = lengths.Sum();
        for (int i = 0; i < set.Saes.Count; i++)
        {
            var sae = set.Saes[i];
            var act = cache[set.Hooks[i]];
            long inner = act.Length / ((long)B * T);
            int? head = sae.Config.Metadata.HookHeadIndex;
            int d = sae.DIn;
            if (head is null && inner != d)
                throw new InvalidOperationException($"hook '{set.Hooks[i]}' has width {inner} per position, the SAE's d_in is {d}");
            var x = new float[(long)rows * d];
            int r = 0;
            for (int b = 0; b < B; b++)
                for (int t = 0; t < lengths[b]; t++, r++)
                    Array.Copy(act.Data, ((long)b * T + t) * inner + (head is int h ? (long)h * d : 0), x, (long)r * d, d);
            use(i, x);
        }
    }

    static TrackResult Track(SaeSet set, int[] tokens, TrackOptions? options, FeatureLabelLookup? labels, string? text)
    {
        options ??= new TrackOptions();
        if (tokens is null || tokens.Length == 0) throw new ArgumentException("the prompt has no tokens");
        int ctx = set.Model.Config.NCtx;
        if (tokens.Length > ctx) throw new ArgumentException($"the prompt is {tokens.Length} tokens long but the model's context is {ctx} tokens; shorten it");
        int T = tokens.Length;
        for (int s = 0; s < set.Saes.Count; s++)
            if (options.TopN < 1 || options.TopN > set.Saes[s].DSae)
                throw new ArgumentOutOfRangeException(nameof(options), $"TopN must be between 1 and d_sae = {set.Saes[s].DSae} ({set.Names[s]}), got {options.TopN}");
        if (options.RankBy == RankBy.AtToken)
        {
            if (options.TokenIndex is not int ti) throw new ArgumentException("ranking at a token needs TokenIndex");
            if (ti < 0 || ti >= T) throw new ArgumentOutOfRangeException(nameof(options), $"TokenIndex {ti} is outside the prompt's {T} tokens (0..{T - 1})");
        }
        else if (options.TokenIndex is int ti && (ti < 0 || ti >= T))
            throw new ArgumentOutOfRangeException(nameof(options), $"TokenIndex {ti} is outside the prompt's {T} tokens (0..{T - 1})");
        if (!(options.CorrelationThreshold >= 0 && options.CorrelationThreshold <= 1))
            throw new ArgumentOutOfRangeException(nameof(options), $"CorrelationThreshold must be in [0, 1], got {options.CorrelationThreshold}");

        var latents = RunLatents(set, [tokens]);
        var positions = Positions(set, tokens, options.SkipBos);
        var layers = new List<LayerActivations>();
        for (int s = 0; s < set.Saes.Count; s++)
            layers.Add(Layer(set, s, latents[s], T, positions, options, labels));

        // heatmap: rows are SAEs, columns the union of their top features
        var columns = new List<string>();
        var values = new double[layers.Count][];
        var cols = layers.SelectMany((l, s) => l.Top.Select(f => (s, f))).ToList();
        for (int s = 0; s < layers.Count; s++) values[s] = new double[cols.Count];
        for (int c = 0; c < cols.Count; c++)
        {
            columns.Add(CorrelationNetwork.NodeId(set, cols[c].s, cols[c].f.Feature));
            values[cols[c].s][c] = cols[c].f.Score;
        }
        var heatmap = new ActivationHeatmap(set.Names.ToList(), columns, values);

        // the prompt's network over the shown features, correlated over the same positions
        var features = cols.Select(c => new NetworkFeature(c.s, c.f.Feature, c.f.Max)).ToList();
        var series = cols.Select(c => positions.Select(t => c.f.PerToken[t]).ToArray()).ToArray();
        var pairs = new List<FeaturePair>();
        for (int i = 0; i < cols.Count; i++)
            for (int j = i + 1; j < cols.Count; j++)
            {
                if (cols[i].s == cols[j].s) continue;
                double r = FeatureCorrelation.Pearson(series[i], series[j]);
                if (!double.IsNaN(r)) pairs.Add(new FeaturePair(i, j, r));
            }
        var network = FeatureCorrelation.Build(set, features, pairs, options.CorrelationThreshold, positions.Length, labels, keepIsolated: true);

        return new TrackResult
        {
            Text = text ?? (set.Model.Tokenizer?.Decode(tokens) ?? string.Join(",", tokens)),
            TokenIds = tokens,
            Tokens = TokenTexts(set, tokens),
            Options = options,
            Layers = layers,
            Heatmap = heatmap,
            Network = network,
        };
    }

    /// <summary>The positions rankings and correlations use: all, or all but BOS tokens (all again if only BOS is left).</summary>
    public static int[] Positions(SaeSet set, int[] tokens, bool skipBos)
    {
        int bos = set.Model.Tokenizer?.BosId ?? -1;
        var p = Enumerable.Range(0, tokens.Length).Where(t => !skipBos || tokens[t] != bos).ToArray();
        return p.Length > 0 ? p : Enumerable.Range(0, tokens.Length).ToArray();
    }

    static LayerActivations Layer(SaeSet set, int s, float[] acts, int T, int[] positions, TrackOptions options, FeatureLabelLookup? labels)
    {
        int d = set.Saes[s].DSae;
        // acts is (T, d_sae)
        var max = new double[d]; var sum = new double[d];
        var seen = new bool[d];
        long active = 0;
        foreach (int t in positions)
        {
            var row = new ReadOnlySpan<float>(acts, t * d, d);
            for (int j = 0; j < d; j++)
            {
                float v = row[j];
                if (v == 0) continue;
                active++;
                sum[j] += v;
                if (!seen[j] || v > max[j]) { max[j] = v; seen[j] = true; }
            }
        }
        int n = positions.Length;
        double Score(int j) => options.RankBy switch
        {
            RankBy.Max => max[j],
            RankBy.Mean => sum[j] / n,
            _ => acts[options.TokenIndex!.Value * d + j],
        };
        // features with a positive score, best first (ties by feature index)
        var top = Enumerable.Range(0, d).Select(j => (j, score: Score(j))).Where(x => x.score > 0)
            .OrderByDescending(x => x.score).ThenBy(x => x.j).Take(options.TopN)
            .Select(x => new FeatureActivation
            {
                Feature = x.j,
                Score = x.score,
                Max = max[x.j],
                Mean = sum[x.j] / n,
                PerToken = Enumerable.Range(0, T).Select(t => acts[t * d + x.j]).ToArray(),
                Label = labels?.Get(set.Hooks[s], x.j),
            }).ToList();
        return new LayerActivations
        {
            SaeIndex = s, Name = set.Names[s], Hook = set.Hooks[s], Layer = set.Layers[s], DSae = d,
            ActiveFeatures = seen.Count(x => x), MeanL0 = (double)active / n, Top = top,
        };
    }
}
