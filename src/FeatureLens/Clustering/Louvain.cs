namespace FeatureLens.Clustering;

/// <summary>An undirected weighted graph as adjacency lists (each edge in both endpoints' lists, self-loops once).</summary>
public sealed class WeightedGraph
{
    public WeightedGraph(int[][] neighbours, double[][] weights)
    {
        ArgumentNullException.ThrowIfNull(neighbours);
        ArgumentNullException.ThrowIfNull(weights);
        if (neighbours.Length != weights.Length) throw new ArgumentException("one weight list per neighbour list");
        Neighbours = neighbours;
        Weights = weights;
    }

    public int[][] Neighbours { get; }
    public double[][] Weights { get; }
    public int Count => Neighbours.Length;

    /// <summary>
    /// The symmetric kNN similarity graph: an edge i–j when j is among i's neighbours or i among j's, weighted by their
    /// cosine (the larger of the two listed values; they are equal up to rounding).
    /// </summary>
    public static WeightedGraph FromKnn(IReadOnlyList<Neighbours> knn)
    {
        ArgumentNullException.ThrowIfNull(knn);
        int n = knn.Count;
        var maps = new Dictionary<int, double>[n];
        for (int i = 0; i < n; i++) maps[i] = [];
        for (int i = 0; i < n; i++)
            for (int k = 0; k < knn[i].Index.Length; k++)
            {
                int j = knn[i].Index[k];
                double w = knn[i].Cosine[k];
                if (j == i || !(w > 0)) continue;
                maps[i][j] = Math.Max(maps[i].GetValueOrDefault(j), w);
                maps[j][i] = Math.Max(maps[j].GetValueOrDefault(i), w);
            }
        var nb = new int[n][];
        var ws = new double[n][];
        for (int i = 0; i < n; i++)
        {
            var e = maps[i].OrderBy(kv => kv.Key).ToList();
            nb[i] = [.. e.Select(kv => kv.Key)];
            ws[i] = [.. e.Select(kv => kv.Value)];
        }
        return new WeightedGraph(nb, ws);
    }

    /// <summary>Newman's modularity Q = Σ_c [Σ_in,c / 2m − γ (Σ_tot,c / 2m)²] of a partition.</summary>
    public double Modularity(IReadOnlyList<int> community, double resolution = 1)
    {
        ArgumentNullException.ThrowIfNull(community);
        double m2 = 0;
        var tot = new Dictionary<int, double>();
        var inside = new Dictionary<int, double>();
        for (int i = 0; i < Count; i++)
            for (int k = 0; k < Neighbours[i].Length; k++)
            {
                int j = Neighbours[i][k];
                double w = Weights[i][k] * (j == i ? 2 : 1);
                m2 += w;
                tot[community[i]] = tot.GetValueOrDefault(community[i]) + w;
                if (community[j] == community[i]) inside[community[i]] = inside.GetValueOrDefault(community[i]) + w;
            }
        if (m2 == 0) return 0;
        return tot.Keys.Sum(c => inside.GetValueOrDefault(c) / m2 - resolution * Math.Pow(tot[c] / m2, 2));
    }
}

/// <summary>
/// Louvain community detection (Blondel et al. 2008) maximising modularity with resolution γ: local moves (each node, in a
/// seeded random order, joins the neighbouring community with the largest modularity gain, ties by the smaller community
/// id, until a pass moves nothing), then aggregation of communities into nodes, repeated until nothing moves. The same seed
/// gives the same partition.
/// </summary>
public static class Louvain
{
    public static int[] Cluster(WeightedGraph graph, int seed, double resolution = 1, int maxLevels = 32)
    {
        ArgumentNullException.ThrowIfNull(graph);
        if (!(resolution > 0)) throw new ArgumentException($"--resolution must be positive (got {resolution})");
        int n0 = graph.Count;
        var membership = Enumerable.Range(0, n0).ToArray();
        var rng = new Random(seed);
        var g = graph;
        for (int level = 0; level < maxLevels; level++)
        {
            var (community, moved) = LocalMoves(g, rng, resolution);
            if (!moved) break;
            var dense = Renumber(community, out int nc);
            for (int i = 0; i < n0; i++) membership[i] = dense[membership[i]];
            if (nc == g.Count) break;
            g = Aggregate(g, dense, nc);
        }
        return Partition.Canonical(membership);
    }

    static (int[] Community, bool Moved) LocalMoves(WeightedGraph g, Random rng, double gamma)
    {
        int n = g.Count;
        var k = new double[n];        // weighted degree (self-loops counted twice)
        double m2 = 0;
        for (int i = 0; i < n; i++)
        {
            for (int e = 0; e < g.Neighbours[i].Length; e++) k[i] += g.Weights[i][e] * (g.Neighbours[i][e] == i ? 2 : 1);
            m2 += k[i];
        }
        var community = Enumerable.Range(0, n).ToArray();
        if (m2 == 0) return (community, false);
        var tot = (double[])k.Clone();
        var order = Enumerable.Range(0, n).ToArray();
        rng.Shuffle(order);
        var linkTo = new double[n];
        var seen = new List<int>();
        bool any = false;
        for (int pass = 0; pass < 1000; pass++)
        {
            bool moved = false;
            foreach (int i in order)
            {
                int own = community[i];
                seen.Clear();
                seen.Add(own);
                linkTo[own] = 0;
                for (int e = 0; e < g.Neighbours[i].Length; e++)
                {
                    int j = g.Neighbours[i][e];
                    if (j == i) continue;
                    int c = community[j];
                    if (!seen.Contains(c)) { seen.Add(c); linkTo[c] = 0; }
                    linkTo[c] += g.Weights[i][e];
                }
                tot[own] -= k[i];
                // gain of joining c (up to terms common to every c): k_i,c − γ Σ_tot,c k_i / 2m
                // move only for a strictly larger gain than staying; among those, the largest gain, ties by the smaller id
                double stay = linkTo[own] - gamma * tot[own] * k[i] / m2;
                int best = own;
                double bestGain = stay;
                foreach (int c in seen)
                {
                    if (c == own) continue;
                    double gain = linkTo[c] - gamma * tot[c] * k[i] / m2;
                    if (gain <= stay + 1e-12) continue;
                    if (best == own || gain > bestGain || (gain == bestGain && c < best)) { best = c; bestGain = gain; }
                }
                tot[best] += k[i];
                if (best != own) { community[i] = best; moved = true; any = true; }
            }
            if (!moved) break;
        }
        return (community, any);
    }

    static int[] Renumber(int[] community, out int count)
    {
        var map = new Dictionary<int, int>();
        var dense = new int[community.Length];
        for (int i = 0; i < community.Length; i++)
        {
            if (!map.TryGetValue(community[i], out int c)) map[community[i]] = c = map.Count;
            dense[i] = c;
        }
        count = map.Count;
        return dense;
    }

    static WeightedGraph Aggregate(WeightedGraph g, int[] community, int nc)
    {
        var maps = new SortedDictionary<int, double>[nc];
        for (int c = 0; c < nc; c++) maps[c] = [];
        for (int i = 0; i < g.Count; i++)
            for (int e = 0; e < g.Neighbours[i].Length; e++)
            {
                int j = g.Neighbours[i][e];
                int a = community[i], b = community[j];
                // each non-loop edge appears in both lists; a self-loop once. Intra-community edges become a self-loop of weight
                // equal to the edge weight (counted from both ends, so halve them); keep degrees: loop weight w counts 2w.
                double w = g.Weights[i][e];
                if (a == b) w = j == i ? w : w / 2;
                maps[a][b] = maps[a].GetValueOrDefault(b) + w;
            }
        return new WeightedGraph([.. maps.Select(m => m.Keys.ToArray())], [.. maps.Select(m => m.Values.ToArray())]);
    }
}
