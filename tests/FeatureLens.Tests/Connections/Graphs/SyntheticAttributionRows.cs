using FeatureLens.Connections.Graphs;

namespace FeatureLens.Tests.Connections.Graphs;

/// <summary>
/// A test double of <see cref="IAttributionRows"/>: a random sparse linear DAG with the replacement model's shape.
/// Features at (layer, position) with random latents; a feature at (l, p) has direct effects only from features and
/// errors at layers below l and positions up to p and from embeddings at positions up to p; logit rows (at the last
/// position) from every source. Some features are "dead" (no effect on anything), so their influence is exactly 0.
/// A[t, s] = a_s · W[t, s]; input_t = Σ_s A[t, s] + bias_t (completeness by construction).
/// </summary>
internal sealed class SyntheticAttributionRows : IAttributionRows
{
    public int NLayers { get; }
    public int NPos { get; }
    readonly List<GraphNode> sources = [];
    readonly List<float> activations = [];
    readonly List<GraphNode> logits = [];
    readonly List<float> probs = [];
    readonly Dictionary<GraphNode, int> targetIndex = [];
    /// <summary>Rows: one per feature source (same index), then one per logit; columns: sources.</summary>
    public float[][] Rows { get; }
    public float[] Inputs { get; }
    public float[] Biases { get; }
    public HashSet<int> Dead { get; } = [];
    public int NActive { get; }
    public int Calls { get; private set; }
    public int MaxBatch { get; private set; }
    public long RowsComputed { get; private set; }

    public SyntheticAttributionRows(Random rng, int nLayers, int nPos, int maxPerSite, double density, double deadFraction = 0.0, int? nLogits = null)
    {
        NLayers = nLayers;
        NPos = nPos;
        for (int l = 0; l < nLayers; l++)
            for (int p = 0; p < nPos; p++)
            {
                int k = rng.Next(0, maxPerSite + 1);
                foreach (int latent in Enumerable.Range(0, 1000).OrderBy(_ => rng.Next()).Take(k).Order())
                {
                    if (rng.NextDouble() < deadFraction) Dead.Add(sources.Count);
                    sources.Add(new GraphNode(GraphNodeKind.Feature, l, p, latent));
                    activations.Add((float)(0.05 + rng.NextDouble() * 3));
                }
            }
        NActive = sources.Count;
        for (int l = 0; l < nLayers; l++)
            for (int p = 0; p < nPos; p++)
            {
                sources.Add(new GraphNode(GraphNodeKind.Error, l, p, -1));
                activations.Add((float)(0.1 + rng.NextDouble()));
            }
        for (int p = 0; p < nPos; p++)
        {
            sources.Add(new GraphNode(GraphNodeKind.Embedding, -1, p, rng.Next(50_000)));
            activations.Add((float)(0.5 + rng.NextDouble()));
        }
        int L = nLogits ?? rng.Next(1, 6);
        var raw = Enumerable.Range(0, L).Select(_ => rng.NextDouble() + 0.05).OrderDescending().ToArray();
        double mass = 0.5 + 0.45 * rng.NextDouble();
        var tokens = Enumerable.Range(0, 50_000).OrderBy(_ => rng.Next()).Take(L).ToArray();
        for (int i = 0; i < L; i++)
        {
            logits.Add(new GraphNode(GraphNodeKind.Logit, nLayers, nPos - 1, tokens[i]));
            probs.Add((float)(raw[i] / raw.Sum() * mass));
        }

        int S = sources.Count;
        Rows = new float[NActive + L][];
        Inputs = new float[NActive + L];
        Biases = new float[NActive + L];
        for (int t = 0; t < NActive + L; t++)
        {
            var target = t < NActive ? sources[t] : logits[t - NActive];
            targetIndex[target] = t;
            var row = new float[S];
            for (int s = 0; s < S; s++)
            {
                if (!CanAffect(sources[s], target) || Dead.Contains(s) || rng.NextDouble() >= density) continue;
                double w = Normal(rng) * (rng.NextDouble() < 0.1 ? 5 : 1);
                row[s] = (float)(activations[s] * w);
            }
            Rows[t] = row;
            Biases[t] = (float)Normal(rng);
            double sum = Biases[t];
            foreach (float v in row) sum += v;
            Inputs[t] = (float)sum;
        }
    }

    /// <summary>Whether source s can have a direct effect on target t (the replacement model's structure).</summary>
    public static bool CanAffect(GraphNode s, GraphNode t)
    {
        if (s.Pos > t.Pos) return false;
        return s.Kind == GraphNodeKind.Embedding || s.Layer < t.Layer;
    }

    static double Normal(Random rng) => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());

    public IReadOnlyList<GraphNode> Sources => sources;
    public IReadOnlyList<float> SourceActivations => activations;
    public IReadOnlyList<GraphNode> Logits => logits;
    public IReadOnlyList<float> LogitProbabilities => probs;

    public void ComputeRows(IReadOnlyList<GraphNode> targets, Span<float> rows, Span<float> inputs, Span<float> biases)
    {
        int S = sources.Count;
        Assert.Equal(targets.Count * S, rows.Length);
        Calls++;
        MaxBatch = Math.Max(MaxBatch, targets.Count);
        RowsComputed += targets.Count;
        for (int i = 0; i < targets.Count; i++)
        {
            int t = targetIndex[targets[i]];
            Rows[t].CopyTo(rows.Slice(i * S, S));
            inputs[i] = Inputs[t];
            biases[i] = Biases[t];
        }
    }

    /// <summary>The full graph (every feature) built directly from the dense rows, without the builder.</summary>
    public AttributionGraph DenseGraph()
    {
        int S = sources.Count;
        var rows = new SegmentRows(S);
        for (int t = 0; t < Rows.Length; t++) rows.Add(Rows[t], $"row {t}");
        return new AttributionGraph([.. sources, .. logits], rows, [.. activations, .. logits.Select(_ => float.NaN)], Inputs, Biases, probs, NActive);
    }

    /// <summary>The dense adjacency over all nodes (features, errors, embeddings, logits), as double.</summary>
    public double[][] DenseAdjacency()
    {
        int S = sources.Count, n = S + logits.Count;
        var a = new double[n][];
        for (int i = 0; i < n; i++) a[i] = new double[n];
        for (int t = 0; t < Rows.Length; t++)
        {
            int node = t < NActive ? t : S + (t - NActive);
            for (int s = 0; s < S; s++) a[node][s] = Rows[t][s];
        }
        return a;
    }
}
