using System.CommandLine;
using System.Text;
using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens track: the top SAE features of a prompt at every hook, with per-token highlighting.</summary>
internal static class TrackCommand
{
    /// <summary>JSON of analysis results: camelCase names (as the web API), indented.</summary>
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    public static Option<string?> LabelsOption() => new("--labels")
    {
        Description = "Feature labels: CSV (layer or hook, feature, label, f1, specialization) or Neuronpedia JSONL",
    };

    public static Command Build()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var compute = Cli.ComputeOption();
        var sae = Cli.SaeOption();
        var text = new Option<string>("--text") { Description = "The prompt to track", Required = true };
        var top = new Option<int>("--top") { Description = "Features shown per SAE", DefaultValueFactory = _ => 10 };
        var rank = new Option<string>("--rank") { Description = "Rank features by their max or mean over tokens, or at --token", DefaultValueFactory = _ => "max" };
        rank.AcceptOnlyFromAmong("max", "mean", "token");
        var token = new Option<int?>("--token") { Description = "Token position ranked by with --rank token (0 is BOS)" };
        var threshold = new Option<double>("--threshold") { Description = "Minimum |Pearson r| for an edge of the prompt's correlation network", DefaultValueFactory = _ => 0.5 };
        var labels = LabelsOption();
        var json = new Option<string?>("--json") { Description = "Also write the full result to this JSON file" };
        var cmd = new Command("track", "Show which SAE features fire on a prompt at every hook, where they fire, and how they correlate across layers")
        {
            model, tokenizer, compute, sae, text, top, rank, token, threshold, labels, json,
        };
        cmd.SetAction(r =>
        {
            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer), r.GetValue(compute));
            var set = new SaeSet(m, SaeCommand.LoadSaes(r.GetValue(sae)!));
            var lookup = r.GetValue(labels) is string lp ? FeatureLabels.Load(lp, set) : null;
            var by = r.GetValue(rank) switch { "mean" => RankBy.Mean, "token" => RankBy.AtToken, _ => RankBy.Max };
            int? at = r.GetValue(token);
            if (by == RankBy.AtToken && at is null) throw new ArgumentException("--rank token needs --token I (the position to rank at; 0 is BOS)");
            var options = new TrackOptions { TopN = r.GetValue(top), RankBy = by, TokenIndex = at, CorrelationThreshold = r.GetValue(threshold) };
            var result = FeatureTracker.Track(set, r.GetValue(text)!, options, lookup);
            Print(result);
            if (r.GetValue(json) is string path) WriteJson(path, result);
            return 0;
        });
        return cmd;
    }

    static void Print(TrackResult result)
    {
        AnsiConsole.MarkupLine($"[bold]{result.TokenIds.Length} tokens[/], ranked by {result.Options.RankBy.ToString().ToLowerInvariant()}" +
            (result.Options.RankBy == RankBy.AtToken ? $" at token {result.Options.TokenIndex} ({Markup.Escape(Show(result.Tokens[result.Options.TokenIndex!.Value]))})" : ""));
        foreach (var layer in result.Layers)
        {
            var t = new Table().Border(TableBorder.Rounded).AddColumns("feature", "score", "max", "mean", "label", "fires on");
            t.Title = new TableTitle($"{Markup.Escape(layer.Name)}  ({Markup.Escape(layer.Hook)}, d_sae {layer.DSae}, {layer.ActiveFeatures} active, L0 {layer.MeanL0:F1})");
            foreach (var f in layer.Top)
                t.AddRow(f.Feature.ToString(), f.Score.ToString("G4"), f.Max.ToString("G4"), f.Mean.ToString("G4"),
                    Markup.Escape(f.Label is null ? "" : f.Label.Label + (f.Label.F1 is double f1 ? $" (F1 {f1:F2})" : "")),
                    Markup.Escape(Highlight(result.Tokens, f.PerToken)));
            if (layer.Top.Count == 0) t.AddRow("-", "", "", "", "", "no feature fired");
            AnsiConsole.Write(t);
        }
        var net = result.Network;
        AnsiConsole.MarkupLine($"correlation network over {net.Tokens} tokens (|r| ≥ {net.Threshold:G3}): {net.Nodes.Count} features, {net.Edges.Count} cross-layer edges, " +
            $"{net.Components.Count} component(s)");
        if (net.Hubs.Count > 0)
            AnsiConsole.MarkupLine("hubs: " + Markup.Escape(string.Join(", ", net.Hubs.Select(h => $"{h} ({net.Nodes.First(n => n.Id == h).Degree})"))));
    }

    /// <summary>The prompt with every token where the feature fires in brackets: "Once[ upon] a time".</summary>
    public static string Highlight(string[] tokens, float[] perToken)
    {
        var sb = new StringBuilder();
        for (int t = 0; t < tokens.Length; t++)
        {
            string s = Show(tokens[t]);
            sb.Append(perToken[t] > 0 ? $"[{s}]" : s);
        }
        return sb.ToString();
    }

    /// <summary>A token for one-line display: newlines and tabs made visible.</summary>
    static string Show(string token) => token.Replace("\n", "\\n").Replace("\r", "\\r").Replace("\t", "\\t");

    public static void WriteJson<T>(string path, T value)
    {
        string tmp = path + ".tmp";
        File.WriteAllText(tmp, JsonSerializer.Serialize(value, Json));
        File.Move(tmp, path, overwrite: true);
        Console.Error.WriteLine($"wrote {path}");
    }
}
