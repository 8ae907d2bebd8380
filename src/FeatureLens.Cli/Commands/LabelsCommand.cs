using System.CommandLine;
using System.Globalization;
using FeatureLens.Analysis;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens labels compute|show: feature labels from a labelled prompt set, or loaded from CSV / Neuronpedia JSONL.</summary>
internal static class LabelsCommand
{
    public static Command Build()
    {
        var cmd = new Command("labels", "Compute feature labels from a labelled prompt set, or show labels from CSV or a Neuronpedia export");
        cmd.Subcommands.Add(Compute());
        cmd.Subcommands.Add(Show());
        return cmd;
    }

    static Command Compute()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var sae = Cli.SaeOption();
        var prompts = new Option<string>("--prompts") { Description = "Labelled prompts: JSONL lines {\"text\": ..., \"label\": ...} (e.g. data/prompts/stories260K-labelled.jsonl)", Required = true };
        var output = new Option<string>("--out") { Description = "Write the labels to this CSV file (hook, layer, feature, label, f1, precision, recall, specialization)", Required = true };
        var threshold = new Option<double>("--threshold") { Description = "A feature fires on a prompt when its largest activation there exceeds this", DefaultValueFactory = _ => 0 };
        var top = new Option<int>("--top") { Description = "Rows of the best-F1 table printed per SAE", DefaultValueFactory = _ => 10 };
        var cmd = new Command("compute", "Label every SAE feature with the prompt category it detects best (F1 of \"the feature fires\"), with precision, recall and specialization")
        {
            model, tokenizer, sae, prompts, output, threshold, top,
        };
        cmd.SetAction(r =>
        {
            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer));
            var set = new SaeSet(m, SaeCommand.LoadSaes(r.GetValue(sae)!));
            var list = FeatureLabels.ReadLabelledPrompts(r.GetValue(prompts)!).ToList();
            int categories = list.Select(p => p.Label).Distinct().Count();
            FeatureLabelLookup labels = null!;
            var watch = System.Diagnostics.Stopwatch.StartNew();
            AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(p =>
                {
                    var task = p.AddTask($"{list.Count} prompts, {categories} categories, {set.Saes.Count} SAE(s)", maxValue: list.Count);
                    labels = FeatureLabels.Compute(set, list, r.GetValue(threshold), new Progress<int>(n => task.Value = n));
                    task.Value = list.Count;
                });
            AnsiConsole.MarkupLine($"labelled {labels.Count} features in {watch.Elapsed.TotalSeconds:F1} s");
            Print(set, labels, r.GetValue(top), byF1: true);
            string outPath = r.GetValue(output)!;
            FeatureLabels.SaveCsv(labels, set, outPath);
            Console.Error.WriteLine($"wrote {outPath}");
            return 0;
        });
        return cmd;
    }

    static Command Show()
    {
        var file = new Argument<string>("file") { Description = "Labels: CSV (layer or hook, feature, label, f1, ...) or a Neuronpedia explanation export (.jsonl)" };
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var sae = Cli.SaeOption();
        var limit = new Option<int?>("--limit") { Description = "Rows printed per SAE (default: all)" };
        var cmd = new Command("show", "Load labels for a model's SAEs and print them") { file, model, tokenizer, sae, limit };
        cmd.SetAction(r =>
        {
            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer));
            var set = new SaeSet(m, SaeCommand.LoadSaes(r.GetValue(sae)!));
            string path = r.GetValue(file)!;
            var labels = FeatureLabels.Load(path, set, out var stats);
            AnsiConsole.MarkupLine(Markup.Escape($"{path}: {stats.Records} records, {stats.Labels} labels" +
                (stats.OtherSaes > 0 ? $", {stats.OtherSaes} skipped (layers or hooks without an SAE here)" : "") +
                (stats.Superseded > 0 ? $", {stats.Superseded} explanations superseded by better-scoring ones" : "")));
            Print(set, labels, r.GetValue(limit) ?? int.MaxValue, byF1: false);
            return 0;
        });
        return cmd;
    }

    /// <summary>Per SAE: how many features are labelled, then a table (the best by F1, or all in feature order).</summary>
    static void Print(SaeSet set, FeatureLabelLookup labels, int rows, bool byF1)
    {
        for (int i = 0; i < set.Saes.Count; i++)
        {
            var mine = Enumerable.Range(0, set.Saes[i].DSae).Select(j => (Feature: j, Label: labels.Get(set.Hooks[i], j))).Where(x => x.Label != null).ToList();
            AnsiConsole.MarkupLine(Markup.Escape($"{set.Names[i]} ({set.Hooks[i]}): {mine.Count} of {set.Saes[i].DSae} features labelled"));
            if (mine.Count == 0 || rows <= 0) continue;
            var shown = byF1
                ? mine.OrderByDescending(x => x.Label!.F1 ?? -1).ThenByDescending(x => x.Label!.Specialization ?? -1).ThenBy(x => x.Feature).Take(rows)
                : mine.Take(rows);
            var t = new Table().Border(TableBorder.Rounded).AddColumns("feature", "label", "F1", "precision", "recall", "specialization", "source");
            foreach (var (feature, label) in shown)
                t.AddRow(feature.ToString(CultureInfo.InvariantCulture), Markup.Escape(label!.Label), Num(label.F1), Num(label.Precision), Num(label.Recall),
                    Num(label.Specialization), label.Source);
            if (mine.Count > rows) t.Caption = new TableTitle($"{mine.Count - rows} more not shown");
            AnsiConsole.Write(t);
        }
    }

    static string Num(double? v) => v is double x ? x.ToString("F3", CultureInfo.InvariantCulture) : "";
}
