using System.CommandLine;
using FeatureLens.Analysis;
using FeatureLens.Database;
using FeatureLens.Saes.Formats;
using FeatureLens.Web;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>
/// featurelens demo: the whole chain in one command — build (or reuse) the model's SAE suite, label its features
/// from a labelled prompt set, and serve the feature activation tracker on it.
/// </summary>
internal static class DemoCommand
{
    public static Command Build()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var output = new Option<string?>("--out") { Description = "Suite folder (default: suites/<model name>); built once, reused afterwards" };
        var prompts = new Option<string?>("--prompts") { Description = "Labelled prompt set (JSONL {text, label}) to label features with (default: the stories260K set shipped with FeatureLens)" };
        var host = new Option<string>("--host") { Description = "Address to listen on (default 127.0.0.1: this machine only)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port to listen on", DefaultValueFactory = _ => 8600 };
        var documents = new Option<int>("--documents") { Description = "Suite: documents to sample from the model", DefaultValueFactory = _ => 4000 };
        var tokens = new Option<long>("--tokens") { Description = "Suite: training tokens per SAE", DefaultValueFactory = _ => 2_000_000 };
        var dSae = new Option<int>("--d-sae") { Description = "Suite: latents per SAE", DefaultValueFactory = _ => 1024 };
        var k = new Option<int>("--k") { Description = "Suite: latents per token (TopK)", DefaultValueFactory = _ => 16 };
        var cmd = new Command("demo", "Build the model's SAE suite if needed (corpus sampled from the model, one TopK SAE per layer), label the features, scan the held-out corpus into a feature database, and serve the tracker and the feature dashboards")
        {
            model, tokenizer, output, prompts, host, port, documents, tokens, dSae, k,
        };
        // synchronous: the web host then owns Ctrl-C (an interrupted suite build resumes from its checkpoints on the next run)
        cmd.SetAction(r => Execute(r, CancellationToken.None));
        int Execute(ParseResult r, CancellationToken ct)
        {
            string modelPath = r.GetValue(model)!;
            using var m = Cli.LoadModel(modelPath, r.GetValue(tokenizer));
            string name = Path.GetFileNameWithoutExtension(Path.TrimEndingDirectorySeparator(modelPath));
            string dir = r.GetValue(output) ?? Path.Combine("suites", name);
            string saesDir = SaeSuiteCommand.BuildSuite(m, modelPath, dir, new SaeSuiteCommand.SuiteSettings(Documents: r.GetValue(documents), Tokens: r.GetValue(tokens), DSae: r.GetValue(dSae), K: r.GetValue(k)), ct);
            var set = new SaeSet(m, SaeLoader.LoadAll(saesDir));

            string labelsPath = Path.Combine(dir, "labels.csv");
            FeatureLabelLookup? labels = null;
            string? promptsPath = r.GetValue(prompts) ?? Path.Combine(AppContext.BaseDirectory, "data", "prompts", "stories260K-labelled.jsonl");
            if (File.Exists(labelsPath)) labels = FeatureLabels.Load(labelsPath, set);
            else if (File.Exists(promptsPath))
            {
                AnsiConsole.MarkupLine($"labelling features with {Markup.Escape(promptsPath)}");
                labels = FeatureLabels.Compute(set, FeatureLabels.ReadLabelledPrompts(promptsPath));
                FeatureLabels.SaveCsv(labels, set, labelsPath);
            }
            else AnsiConsole.MarkupLine("no labelled prompt set found: features are served without labels (pass --prompts FILE)");

            // the feature database of the suite's held-out corpus: dashboards on the Features page
            var databases = new List<string>();
            string evalCorpus = Path.Combine(dir, "corpus-eval.jsonl");
            if (File.Exists(evalCorpus))
            {
                string db = Path.Combine(dir, "features.sqlite");
                int ctx = Math.Min(m.Config.NCtx, set.Saes.Select(s => s.Config.Metadata.ContextSize ?? 0).Where(c => c > 0).DefaultIfEmpty(128).Min());
                var settings = new ScanSettings { Context = ctx, Tokens = 0 };
                try { ScanCommand.RunWithProgress(set, [saesDir], [evalCorpus], settings, ShardSpec.All, db, labels, asShard: false); }
                catch (IOException) when (File.Exists(db))
                {
                    // the suite was rebuilt since: the old database describes other SAEs
                    AnsiConsole.MarkupLine($"{Markup.Escape(db)} was built from an earlier suite: scanning again");
                    File.Delete(db);
                    ScanCommand.RunWithProgress(set, [saesDir], [evalCorpus], settings, ShardSpec.All, db, labels, asShard: false);
                }
                databases.Add(db);
            }

            ServeCommand.Serve([new TrackerSet { Name = name, Set = set, Labels = labels, ModelSource = modelPath }], r.GetValue(host)!, r.GetValue(port), databases: databases);
            return 0;
        }
        return cmd;
    }
}
