using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Connections.Graphs;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>
/// featurelens graph: the attribution graph of a prompt (CONNECTIONS.md "Attribution graphs" and "Contracts"): the local
/// replacement model with one transcoder per layer, direct effects by batched backward passes, node selection by
/// influence, pruning, and the graph JSON circuit-tracer's frontend reads.
/// </summary>
internal static class GraphCommand
{
    public static Command Build()
    {
        var o = new GraphPromptOptions();
        var noPrune = new Option<bool>("--no-prune") { Description = "Keep every node and non-zero edge (the full graph)" };
        var nodeThreshold = new Option<double>("--node-threshold") { Description = "Keep the fewest nodes holding this fraction of the total influence", DefaultValueFactory = _ => GraphPruning.DefaultNodeThreshold };
        var edgeThreshold = new Option<double>("--edge-threshold") { Description = "Then keep the fewest edges holding this fraction of the edge influence", DefaultValueFactory = _ => GraphPruning.DefaultEdgeThreshold };
        var maxFeatures = new Option<int>("--max-feature-nodes") { Description = "At most this many feature nodes (the most influential)", DefaultValueFactory = _ => 7500 };
        var batch = new Option<int>("--batch-size") { Description = "Target rows per batched backward pass", DefaultValueFactory = _ => 64 };
        var labels = TrackCommand.LabelsOption();
        var slug = new Option<string?>("--slug") { Description = "The graph's name in the JSON (default: from the prompt)" };
        var outPath = new Option<string>("--out") { Description = "The graph JSON to write", Required = true };
        var cmd = new Command("graph", "Attribution graph of a prompt: direct effects between transcoder features, errors, embeddings and logits in the local replacement model, pruned by influence; writes circuit-tracer's graph JSON")
        {
            noPrune, nodeThreshold, edgeThreshold, maxFeatures, batch, labels, slug, outPath,
        };
        o.AddTo(cmd);
        cmd.SetAction(r =>
        {
            var options = new GraphRunOptions
            {
                MaxFeatureNodes = r.GetValue(maxFeatures), NodeThreshold = r.GetValue(nodeThreshold), EdgeThreshold = r.GetValue(edgeThreshold),
                Prune = !r.GetValue(noPrune), BatchSize = r.GetValue(batch),
            };
            options.Check();
            string output = r.GetValue(outPath)!;
            string dir = Path.GetDirectoryName(Path.GetFullPath(output))!;
            if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"{output}: the folder {dir} does not exist");
            using var m = o.LoadModel(r);
            int[] prompt = o.Prompt(r, m);
            var tcs = o.LoadTranscoders(r, m);
            var lookup = r.GetValue(labels) is string lp ? FeatureLabels.Load(lp, new SaeSet(m, tcs.Layers)) : null;

            GraphRunResult result = null!;
            AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
                .Start(p =>
                {
                    var tasks = new Dictionary<string, ProgressTask>(StringComparer.Ordinal);
                    result = GraphRun.Compute(m, tcs, prompt, options, lookup, r.GetValue(slug), progress: new SyncProgress<GraphBuildProgress>(g =>
                    {
                        if (!tasks.TryGetValue(g.Phase, out var task)) tasks[g.Phase] = task = p.AddTask($"{g.Phase} rows", maxValue: Math.Max(1, g.Total));
                        task.MaxValue = Math.Max(1, g.Total); task.Value = g.Done;
                    }));
                });
            result.Write(output);
            Report(result, output);
            return 0;
        });
        return cmd;
    }

    static void Report(GraphRunResult result, string output)
    {
        var g = result.Graph; var pr = result.Pruned;
        int Count(GraphNodeKind k, bool kept) => Enumerable.Range(0, g.Nodes.Count).Count(i => g.Nodes[i].Kind == k && (!kept || pr.NodeKept[i]));
        var table = new Table().Border(TableBorder.Rounded).AddColumns("nodes", "in the graph", "kept");
        foreach (var k in new[] { GraphNodeKind.Feature, GraphNodeKind.Error, GraphNodeKind.Embedding, GraphNodeKind.Logit })
            table.AddRow(k.ToString().ToLowerInvariant(), Count(k, false).ToString(CultureInfo.InvariantCulture), Count(k, true).ToString(CultureInfo.InvariantCulture));
        AnsiConsole.Write(table);
        var logits = result.Replacement.Logits;
        AnsiConsole.MarkupLine(Markup.Escape("logit nodes: " + string.Join(", ", logits.Select((l, i) =>
            $"{JsonSerializer.Serialize(result.Info.LogitTokens[i])} p={result.Replacement.LogitProbabilities[i].ToString("F3", CultureInfo.InvariantCulture)}"))));
        AnsiConsole.MarkupLine(Markup.Escape($"{result.Replacement.FeatureCount} active features, {g.Nodes.Count(n => n.Kind == GraphNodeKind.Feature)} in the graph; wrote {output}"));
    }
}
