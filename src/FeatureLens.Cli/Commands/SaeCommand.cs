using System.CommandLine;
using System.Text.Json;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tokenizers;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens sae inspect|train|eval.</summary>
internal static class SaeCommand
{
    public static Command Build()
    {
        var cmd = new Command("sae", "Inspect, train and evaluate sparse autoencoders (SAELens, sparsify and Gemma Scope formats)");
        cmd.Subcommands.Add(Inspect());
        cmd.Subcommands.Add(SaeTrainCommand.Build());
        cmd.Subcommands.Add(Eval());
        cmd.Subcommands.Add(SaeSuiteCommand.Build());
        return cmd;
    }

    /// <summary>Loads every SAE under each path (an SAE folder or a folder of SAE folders).</summary>
    public static List<Sae> LoadSaes(IEnumerable<string> paths)
    {
        var list = new List<Sae>();
        foreach (var p in paths) list.AddRange(SaeLoader.LoadAll(p));
        if (list.Count == 0) throw new ArgumentException("no SAE given: pass --sae DIR");
        return list;
    }

    static Command Inspect()
    {
        var path = new Argument<string>("path") { Description = "An SAE folder (SAELens or sparsify), a Gemma Scope params.npz, or a folder holding one SAE folder per hook" };
        var cmd = new Command("inspect", "Print an SAE's architecture, hook, sizes, sparsity settings and the model it claims to belong to") { path };
        cmd.SetAction(r =>
        {
            foreach (var sae in SaeLoader.LoadAll(r.GetValue(path)!))
            {
                var t = new Table().Border(TableBorder.Rounded).AddColumn("field").AddColumn("value");
                t.Title = new TableTitle(Markup.Escape(sae.SourcePath ?? sae.ToString()));
                foreach (var (k, v) in SaeInspector.Describe(sae)) t.AddRow(Markup.Escape(k), Markup.Escape(v));
                AnsiConsole.Write(t);
            }
            return 0;
        });
        return cmd;
    }

    static Command Eval()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var sae = Cli.SaeOption();
        var corpus = new Option<string>("--corpus") { Description = "Text file (documents separated by blank lines) or JSONL with a \"text\" field", Required = true };
        var tokens = new Option<long>("--tokens") { Description = "Tokens to evaluate on", DefaultValueFactory = _ => 100_000 };
        var context = new Option<int?>("--context") { Description = "Tokens per sequence (default: the SAE's context_size, else 128)" };
        var batch = new Option<int>("--batch") { Description = "Sequences per forward pass", DefaultValueFactory = _ => 8 };
        var json = new Option<string?>("--json") { Description = "Also write the results (with per-latent frequencies) to this JSON file" };
        var cmd = new Command("eval", "Evaluate SAEs: L0, MSE, explained variance, cross-entropy clean/spliced/zero-ablated, loss recovered, dead/dense latents, frequency histogram")
        {
            model, tokenizer, sae, corpus, tokens, context, batch, json,
        };
        cmd.SetAction(r =>
        {
            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer));
            var saes = LoadSaes(r.GetValue(sae)!);
            var tok = m.Tokenizer ?? throw new InvalidOperationException("this model has no tokenizer beside it: pass --tokenizer PATH");
            int ctx = r.GetValue(context) ?? saes.Select(s => s.Config.Metadata.ContextSize ?? 0).Where(c => c > 0).DefaultIfEmpty(128).Min();
            ctx = Math.Min(ctx, m.Config.NCtx);
            long budget = r.GetValue(tokens);
            if (budget <= 0) throw new ArgumentException("--tokens must be positive");
            var windows = Corpus.Windows(Corpus.Documents(r.GetValue(corpus)!), tok, ctx, prependBos: true, maxTokens: budget);
            IReadOnlyList<SaeEvalResult> results = [];
            AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(p =>
                {
                    var task = p.AddTask($"evaluating {saes.Count} SAE(s)", maxValue: budget);
                    results = SaeEvaluator.Evaluate(m, saes, windows, new SaeEvalOptions { BatchSequences = r.GetValue(batch) },
                        new Progress<long>(n => task.Value = Math.Min(n, budget)));
                    task.Value = budget;
                });
            PrintResults(results);
            // two or more transcoders writing different hooks: also the whole replacement, all spliced in at once
            var transcoders = saes.Where(s => s.Config.IsTranscoder).ToList();
            ReplacementEvalResult? replacement = null;
            if (transcoders.Count >= 2 && transcoders.Select(s => s.Config.OutputHookName).Distinct().Count() == transcoders.Count)
            {
                replacement = SaeEvaluator.EvaluateReplacement(m, transcoders, windows, new SaeEvalOptions { BatchSequences = r.GetValue(batch) });
                PrintReplacement(replacement);
            }
            if (r.GetValue(json) is string jsonPath) WriteJson(jsonPath, results, replacement);
            return 0;
        });
        return cmd;
    }

    public static void PrintResults(IReadOnlyList<SaeEvalResult> results)
    {
        var t = new Table().Border(TableBorder.Rounded)
            .AddColumns("SAE", "hook", "arch", "d_sae", "tokens", "L0", "MSE", "expl. var", "CE clean", "CE spliced", "CE zero", "loss rec.", "dead", "dense");
        foreach (var r in results)
            t.AddRow(Markup.Escape(r.Name), Markup.Escape(r.Hook), r.Architecture, r.DSae.ToString(), r.Tokens.ToString(), r.L0.ToString("F1"),
                r.Mse.ToString("G4"), r.ExplainedVariance.ToString("F3"), r.CeClean.ToString("F4"), r.CeSpliced.ToString("F4"), r.CeZeroAblated.ToString("F4"),
                r.LossRecovered.ToString("P1"), r.DeadLatents.ToString(), r.DenseLatents.ToString());
        AnsiConsole.Write(t);
        foreach (var r in results)
        {
            AnsiConsole.MarkupLine($"[bold]{Markup.Escape(r.Name)}[/] latent frequency (log10 of fraction of tokens; {r.DeadLatents} dead):");
            int max = Math.Max(1, r.Histogram.Max(b => b.Count));
            foreach (var b in r.Histogram.Where(b => b.Count > 0))
                Console.WriteLine($"  [{b.Log10Lo,5:F1}, {b.Log10Hi,5:F1})  {new string('#', (int)Math.Ceiling(40.0 * b.Count / max)),-40} {b.Count}");
        }
    }

    static readonly JsonSerializerOptions EvalJson = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>The whole-replacement line: every transcoder spliced in at once.</summary>
    public static void PrintReplacement(ReplacementEvalResult r)
    {
        var t = new Table().Border(TableBorder.Rounded).AddColumns("replaced at once", "positions", "CE clean", "CE replaced", "CE all zero", "loss rec.");
        t.AddRow(Markup.Escape(string.Join(", ", r.Hooks)), r.Positions.ToString(), r.CeClean.ToString("F4"), r.CeReplaced.ToString("F4"),
            r.CeZeroAblated.ToString("F4"), r.LossRecovered.ToString("P1"));
        AnsiConsole.Write(t);
    }

    /// <summary>Writes the results (a JSON list), or with a replacement {"saes": [...], "replacement": {...}}, via a temporary file.</summary>
    public static void WriteJson(string path, IReadOnlyList<SaeEvalResult> results, ReplacementEvalResult? replacement = null)
    {
        string tmp = path + ".tmp";
        File.WriteAllText(tmp, replacement is null
            ? JsonSerializer.Serialize(results, EvalJson)
            : JsonSerializer.Serialize(new { saes = results, replacement }, EvalJson));
        File.Move(tmp, path, overwrite: true);
        Console.Error.WriteLine($"wrote {path}");
    }
}
