using System.CommandLine;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Tokenizers;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens correlate: the corpus-level cross-layer correlation network of SAE features.</summary>
internal static class CorrelateCommand
{
    public static Command Build()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var sae = Cli.SaeOption();
        var corpus = new Option<string>("--corpus") { Description = "Text file (documents separated by blank lines) or JSONL with a \"text\" field", Required = true };
        var tokens = new Option<long>("--tokens") { Description = "Tokens to read from the corpus", DefaultValueFactory = _ => 100_000 };
        var context = new Option<int?>("--context") { Description = "Tokens per window (default: the SAEs' context_size, else 128)" };
        var threshold = new Option<double>("--threshold") { Description = "Minimum |Pearson r| for an edge", DefaultValueFactory = _ => 0.5 };
        var minFires = new Option<long>("--min-fires") { Description = "Features must fire on at least this many tokens", DefaultValueFactory = _ => 10 };
        var maxFeatures = new Option<int>("--max-features") { Description = "At most this many features per SAE (the most frequent) take part", DefaultValueFactory = _ => 1024 };
        var batch = new Option<int>("--batch") { Description = "Sequences per forward pass", DefaultValueFactory = _ => 8 };
        var labels = TrackCommand.LabelsOption();
        var output = new Option<string>("--out") { Description = "Write the network (nodes, edges, components, hubs) to this JSON file", Required = true };
        var cmd = new Command("correlate", "Correlate SAE features across layers over a corpus: Pearson r between features of different SAEs, as a network with components and hubs")
        {
            model, tokenizer, sae, corpus, tokens, context, threshold, minFires, maxFeatures, batch, labels, output,
        };
        cmd.SetAction(r =>
        {
            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer));
            var set = new SaeSet(m, SaeCommand.LoadSaes(r.GetValue(sae)!));
            var tok = m.Tokenizer ?? throw new InvalidOperationException("this model has no tokenizer beside it: pass --tokenizer PATH");
            var lookup = r.GetValue(labels) is string lp ? FeatureLabels.Load(lp, set) : null;
            long budget = r.GetValue(tokens);
            if (budget <= 0) throw new ArgumentException("--tokens must be positive");
            int ctx = r.GetValue(context) ?? set.Saes.Select(s => s.Config.Metadata.ContextSize ?? 0).Where(c => c > 0).DefaultIfEmpty(128).Min();
            ctx = Math.Min(ctx, m.Config.NCtx);
            string corpusPath = r.GetValue(corpus)!;
            var windows = Corpus.Windows(Corpus.Documents(corpusPath), tok, ctx, prependBos: true, maxTokens: budget);
            var options = new CorrelationOptions
            {
                Threshold = r.GetValue(threshold), MinFires = r.GetValue(minFires), MaxFeaturesPerSae = r.GetValue(maxFeatures), BatchSequences = r.GetValue(batch),
            };
            int passes = FeatureCorrelation.Passes(set, options);
            CorrelationNetwork net = null!;
            var watch = System.Diagnostics.Stopwatch.StartNew();
            AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(p =>
                {
                    // progress counts non-BOS tokens; the window budget counts all, so the bar may stop a little short of 100% before it is set
                    var task = p.AddTask($"correlating {set.Saes.Count} SAE(s){(passes > 1 ? " (2 passes)" : "")}", maxValue: budget * passes);
                    net = FeatureCorrelation.Corpus(set, windows, options, new Progress<long>(n => task.Value = Math.Min(n, budget * passes)), lookup);
                    task.Value = budget * passes;
                });
            watch.Stop();
            AnsiConsole.MarkupLine($"{net.Tokens} tokens in {watch.Elapsed.TotalSeconds:F1} s ({net.Tokens * passes / Math.Max(1e-9, watch.Elapsed.TotalSeconds):F0} tokens/s); " +
                $"{net.Nodes.Count} features with edges, {net.Edges.Count} edges with |r| ≥ {net.Threshold:G3}, {net.Components.Count} component(s)");
            Print(net);
            TrackCommand.WriteJson(r.GetValue(output)!, net);
            return 0;
        });
        return cmd;
    }

    static void Print(CorrelationNetwork net)
    {
        var byId = net.Nodes.ToDictionary(n => n.Id);
        var c = new Table().Border(TableBorder.Rounded).AddColumns("component", "size", "SAEs", "members");
        c.Title = new TableTitle("components (largest first)");
        foreach (var (comp, i) in net.Components.Take(10).Select((x, i) => (x, i)))
            c.AddRow((i + 1).ToString(), comp.Count.ToString(), string.Join(", ", comp.Select(id => byId[id].Sae).Distinct()).EscapeMarkup(),
                Markup.Escape(string.Join(" ", comp.Take(8)) + (comp.Count > 8 ? $" … (+{comp.Count - 8})" : "")));
        if (net.Components.Count > 10) c.Caption = new TableTitle($"{net.Components.Count - 10} more not shown");
        AnsiConsole.Write(c);
        var h = new Table().Border(TableBorder.Rounded).AddColumns("hub", "degree", "max act.", "label", "strongest edge");
        h.Title = new TableTitle("hubs");
        foreach (var id in net.Hubs)
        {
            var n = byId[id];
            var best = net.Edges.Where(e => e.Source == id || e.Target == id).MaxBy(e => Math.Abs(e.R));
            h.AddRow(Markup.Escape(id), n.Degree.ToString(), n.MaxActivation.ToString("G4"), Markup.Escape(n.Label ?? ""),
                best is null ? "" : Markup.Escape($"{(best.Source == id ? best.Target : best.Source)} (r {best.R:F3})"));
        }
        AnsiConsole.Write(h);
    }
}
