using System.Globalization;
using System.Text.Json;

namespace FeatureLens.Clustering;

/// <summary>How <see cref="FeatureClustering.Run"/> clusters: the method and its parameters.</summary>
public sealed record ClusterOptions
{
    /// <summary><c>hierarchical</c> (average linkage) or <c>louvain</c> (on the kNN similarity graph).</summary>
    public string Method { get; init; } = "hierarchical";
    /// <summary>Hierarchical: cut where the cosine distance (1 − cos) exceeds this.</summary>
    public double? CutDistance { get; init; }
    /// <summary>Hierarchical: cut into this many clusters (instead of <see cref="CutDistance"/>).</summary>
    public int? CutCount { get; init; }
    /// <summary>Louvain: neighbours per feature in the similarity graph.</summary>
    public int Knn { get; init; } = 10;
    /// <summary>Louvain: the seed of the node order.</summary>
    public int Seed { get; init; }
    /// <summary>Louvain: the modularity resolution γ.</summary>
    public double Resolution { get; init; } = 1;
    /// <summary>Most features in the stored similarity heatmap.</summary>
    public int HeatmapFeatures { get; init; } = 300;

    /// <summary>Parses <c>--cut</c>: a distance (<c>0.6</c>, <c>d=0.6</c>) or a cluster count (<c>k=12</c>).</summary>
    public static (double? Distance, int? Count) ParseCut(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        string t = text.Trim();
        if (t.StartsWith("k=", StringComparison.Ordinal) && int.TryParse(t[2..], NumberStyles.None, CultureInfo.InvariantCulture, out int k) && k >= 1) return (null, k);
        if (t.StartsWith("d=", StringComparison.Ordinal)) t = t[2..];
        if (double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && d >= 0 && d <= 2) return (d, null);
        throw new ArgumentException($"--cut '{text}': expected a cosine distance in [0, 2] (e.g. 0.6 or d=0.6) or a number of clusters (e.g. k=12)");
    }

    public void Check()
    {
        if (Method is not ("hierarchical" or "louvain")) throw new ArgumentException($"--method '{Method}': expected hierarchical or louvain");
        if (Knn < 1) throw new ArgumentException($"--knn must be at least 1 (got {Knn})");
        if (!(Resolution > 0)) throw new ArgumentException($"--resolution must be positive (got {Resolution})");
        if (CutDistance is double d && !(d >= 0 && d <= 2)) throw new ArgumentException($"--cut {d}: a cosine distance lies in [0, 2]");
        if (CutCount is < 1) throw new ArgumentException($"--cut k={CutCount}: at least one cluster");
        if (HeatmapFeatures < 1) throw new ArgumentException($"heatmap size must be at least 1 (got {HeatmapFeatures})");
    }
}

/// <summary>The clusters of a profile set, with the dendrogram (hierarchical) and a heatmap of cosines ordered by cluster.</summary>
public sealed class ClusterResult
{
    public required ProfileSet Profiles { get; init; }
    public required ClusterOptions Options { get; init; }
    /// <summary>Cluster id per feature, 0 the largest (<see cref="Partition.Canonical"/>).</summary>
    public required int[] Assignment { get; init; }
    /// <summary>The dendrogram (hierarchical only).</summary>
    public Merge[]? Merges { get; init; }
    /// <summary>The modularity of the partition on the kNN graph (Louvain only).</summary>
    public double? Modularity { get; init; }
    /// <summary>Features (indices) of the heatmap, ordered by cluster (and by dendrogram leaf order within one).</summary>
    public required int[] HeatmapOrder { get; init; }
    /// <summary>Cosines of the heatmap features, row-major.</summary>
    public required float[] Heatmap { get; init; }
    public int ClusterCount => Assignment.Length == 0 ? 0 : Assignment.Max() + 1;
}

/// <summary>What <see cref="FeatureClustering.Run"/> is doing: a phase and how far along it is.</summary>
public readonly record struct ClusterProgress(string Phase, int Done, int Total);

/// <summary>Similarity and clustering of connection profiles (hierarchical average linkage with a cut, or Louvain on kNN).</summary>
public static class FeatureClustering
{
    public static ClusterResult Run(ProfileSet profiles, ClusterOptions options, IProgress<ClusterProgress>? progress = null)
    {
        ArgumentNullException.ThrowIfNull(profiles);
        ArgumentNullException.ThrowIfNull(options);
        options.Check();
        int n = profiles.Count;
        if (n < 2) throw new ArgumentException($"clustering needs at least two features with a connection profile (got {n})");
        int[] assignment;
        Merge[]? merges = null;
        double? modularity = null;
        int[] leafOrder;
        if (options.Method == "hierarchical")
        {
            var d = ProfileSimilarity.Condensed(profiles, progress == null ? null : new Progress<int>(x => progress.Report(new("similarity", x, n))));
            merges = AverageLinkage.Cluster(d, n, progress == null ? null : new Progress<int>(x => progress.Report(new("linkage", x, n - 1))));
            assignment = options.CutCount is int k ? AverageLinkage.CutToCount(merges, n, k)
                : AverageLinkage.CutAtDistance(merges, n, options.CutDistance ?? 0.5);
            leafOrder = LeafOrder(merges, n);
        }
        else
        {
            var knn = ProfileSimilarity.Knn(profiles, options.Knn, progress == null ? null : new Progress<int>(x => progress.Report(new("knn", x, n))));
            var graph = WeightedGraph.FromKnn(knn);
            progress?.Report(new("louvain", 0, 1));
            assignment = Louvain.Cluster(graph, options.Seed, options.Resolution);
            modularity = graph.Modularity(assignment, options.Resolution);
            leafOrder = [.. Enumerable.Range(0, n)];
        }
        var rank = new int[n];
        for (int i = 0; i < n; i++) rank[leafOrder[i]] = i;
        var order = HeatmapSelection(assignment, rank, options.HeatmapFeatures);
        int h = order.Length;
        var heat = new float[h * h];
        for (int a = 0; a < h; a++)
            for (int b = a; b < h; b++)
                heat[a * h + b] = heat[b * h + a] = a == b ? 1 : (float)ProfileSimilarity.Cosine(profiles, order[a], order[b]);
        return new ClusterResult { Profiles = profiles, Options = options, Assignment = assignment, Merges = merges, Modularity = modularity, HeatmapOrder = order, Heatmap = heat };
    }

    /// <summary>The dendrogram's leaves left to right (children in merge order A then B).</summary>
    public static int[] LeafOrder(IReadOnlyList<Merge> merges, int n)
    {
        ArgumentNullException.ThrowIfNull(merges);
        var result = new List<int>(n);
        var roots = new List<int>();
        var used = new bool[n + merges.Count];
        foreach (var m in merges) { used[m.A] = true; used[m.B] = true; }
        for (int c = 0; c < n + merges.Count; c++) if (!used[c]) roots.Add(c);
        var stack = new Stack<int>();
        foreach (int r in roots)
        {
            stack.Push(r);
            while (stack.Count > 0)
            {
                int c = stack.Pop();
                if (c < n) { result.Add(c); continue; }
                stack.Push(merges[c - n].B);
                stack.Push(merges[c - n].A);
            }
        }
        return [.. result];
    }

    /// <summary>Up to <paramref name="max"/> features, cluster by cluster (largest first), each cluster's in leaf order.</summary>
    static int[] HeatmapSelection(int[] assignment, int[] rank, int max)
    {
        int clusters = assignment.Max() + 1;
        int perCluster = Math.Max(2, max / Math.Max(1, Math.Min(clusters, max / 2)));
        var chosen = new List<int>();
        foreach (var g in Enumerable.Range(0, assignment.Length).GroupBy(i => assignment[i]).OrderBy(g => g.Key))
        {
            foreach (int i in g.OrderBy(i => rank[i]).Take(perCluster))
            {
                if (chosen.Count >= max) break;
                chosen.Add(i);
            }
            if (chosen.Count >= max) break;
        }
        return [.. chosen];
    }

    /// <summary>
    /// The word a label stands for when scoring clusters against labels: its first run of letters or digits, lower-cased
    /// (null for a label without one).
    /// </summary>
    public static string? LabelWord(string? label)
    {
        if (label == null) return null;
        int s = 0;
        while (s < label.Length && !char.IsLetterOrDigit(label[s])) s++;
        int e = s;
        while (e < label.Length && char.IsLetterOrDigit(label[e])) e++;
        return e > s ? label[s..e].ToLowerInvariant() : null;
    }

    /// <summary>
    /// How well clusters predict shared labels, over the features that have a label: purity of the clusters against the
    /// label words (<see cref="LabelWord"/>), and the NMI of the two assignments.
    /// </summary>
    public static (int Labelled, double Purity, double Nmi) LabelScore(IReadOnlyList<int> assignment, IReadOnlyList<string?> labels)
    {
        ArgumentNullException.ThrowIfNull(assignment);
        ArgumentNullException.ThrowIfNull(labels);
        var words = labels.Select(LabelWord).ToList();
        var idx = Enumerable.Range(0, assignment.Count).Where(i => words[i] != null).ToList();
        if (idx.Count == 0) return (0, double.NaN, double.NaN);
        var wordIds = new Dictionary<string, int>(StringComparer.Ordinal);
        var cls = idx.Select(i => wordIds.TryGetValue(words[i]!, out int w) ? w : wordIds[words[i]!] = wordIds.Count).ToList();
        var cl = idx.Select(i => assignment[i]).ToList();
        return (idx.Count, ClusterScores.Purity(cl, cls), ClusterScores.NormalizedMutualInformation(cl, cls));
    }

    internal static readonly JsonSerializerOptions Json = new() { WriteIndented = false };
}
