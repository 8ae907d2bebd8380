namespace FeatureLens.Tests.Connections.Graphs;

/// <summary>A fresh seed per run (printed by each test); FEATURELENS_GRAPH_SEED=N replays one.</summary>
internal static class GraphSeed
{
    public static int Next() =>
        int.TryParse(Environment.GetEnvironmentVariable("FEATURELENS_GRAPH_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out int s) ? s : Random.Shared.Next();
}
