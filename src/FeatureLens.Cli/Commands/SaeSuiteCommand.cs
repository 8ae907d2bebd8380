using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tokenizers;
using FeatureLens.Saes;
using FeatureLens.Saes.Training;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>
/// featurelens sae suite: samples an on-distribution corpus from the model, trains one TopK SAE per layer on
/// blocks.L.hook_resid_post, evaluates them and lists example features. Rerunning resumes where it stopped.
/// </summary>
internal static class SaeSuiteCommand
{
    public static Command Build()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var output = new Option<string>("--out") { Description = "Suite folder: corpus-*.jsonl, saes/blocks.L.hook_resid_post/, eval.json, features.json", Required = true };
        var documents = new Option<int>("--documents") { Description = "Documents (stories) to sample from the model", DefaultValueFactory = _ => 4000 };
        var docTokens = new Option<int>("--document-tokens") { Description = "Maximum tokens per sampled document", DefaultValueFactory = _ => 256 };
        var seed = new Option<int>("--seed") { Description = "Seed of the corpus sample and of training", DefaultValueFactory = _ => 1 };
        var dSae = new Option<int>("--d-sae") { Description = "Latents per SAE", DefaultValueFactory = _ => 1024 };
        var k = new Option<int>("--k") { Description = "Latents per token (TopK)", DefaultValueFactory = _ => 16 };
        var tokens = new Option<long>("--tokens") { Description = "Training tokens per SAE", DefaultValueFactory = _ => 2_000_000 };
        var context = new Option<int>("--context") { Description = "Tokens per training sequence", DefaultValueFactory = _ => 128 };
        var evalTokens = new Option<long>("--eval-tokens") { Description = "Held-out tokens for evaluation and feature examples", DefaultValueFactory = _ => 60_000 };
        var transcoders = new Option<bool>("--transcoders") { Description = "Also train one TopK transcoder per layer (blocks.L.ln2.hook_normalized → blocks.L.hook_mlp_out) into transcoders/, evaluated one by one and all together (eval-transcoders.json)" };
        var attnSaes = new Option<bool>("--attn-saes") { Description = "Also train one TopK SAE per layer on blocks.L.attn.hook_z (heads flattened) into attn-saes/ (eval-attn-saes.json)" };
        var cmd = new Command("suite", "Build a demo SAE suite for a model: sample a corpus from it, train a TopK SAE on every blocks.L.hook_resid_post, evaluate them")
        {
            model, tokenizer, output, documents, docTokens, seed, dSae, k, tokens, context, evalTokens, transcoders, attnSaes,
        };
        cmd.SetAction((r, ct) => Task.FromResult(Execute(r, ct)));
        int Execute(ParseResult r, CancellationToken ct)
        {
            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer));
            var settings = new SuiteSettings(r.GetValue(documents), r.GetValue(docTokens), r.GetValue(seed), r.GetValue(dSae), r.GetValue(k),
                r.GetValue(tokens), r.GetValue(context), r.GetValue(evalTokens));
            string dir = r.GetValue(output)!;
            BuildSuite(m, r.GetValue(model)!, dir, settings, ct, force: true);
            if (r.GetValue(transcoders)) BuildExtra(m, r.GetValue(model)!, dir, settings, SuiteExtra.Transcoders, ct);
            if (r.GetValue(attnSaes)) BuildExtra(m, r.GetValue(model)!, dir, settings, SuiteExtra.AttnSaes, ct);
            return 0;
        }
        return cmd;
    }

    /// <summary>What a suite is built with (the command's options).</summary>
    public sealed record SuiteSettings(int Documents = 4000, int DocumentTokens = 256, int Seed = 1, int DSae = 1024, int K = 16,
        long Tokens = 2_000_000, int Context = 128, long EvalTokens = 60_000);

    /// <summary>
    /// Builds (or resumes) the suite in <paramref name="dir"/> and returns the SAE folder. Unless
    /// <paramref name="force"/>, a suite already completed with the same settings is reused as it is.
    /// </summary>
    public static string BuildSuite(HookedTransformer m, string modelPath, string dir, SuiteSettings settings, CancellationToken ct, bool force = false)
    {
        string saesDir = Path.Combine(dir, "saes"), done = Path.Combine(dir, "suite.json");
        string wantedSuite = JsonSerializer.Serialize(new { model = Path.GetFullPath(modelPath), settings });
        if (!force && File.Exists(done) && File.ReadAllText(done) == wantedSuite)
        {
            AnsiConsole.MarkupLine($"suite: reusing {Markup.Escape(dir)}");
            return saesDir;
        }
        {
            var clock = Stopwatch.StartNew();
            Directory.CreateDirectory(dir);
            var tok = m.Tokenizer ?? throw new InvalidOperationException("the suite needs the model's tokenizer: pass --tokenizer PATH");
            int nDocs = settings.Documents, seedValue = settings.Seed, ctx = Math.Min(settings.Context, m.Config.NCtx);

            // 1. corpus sampled from the model (reused when the same settings made it)
            string trainCorpus = Path.Combine(dir, "corpus-train.jsonl"), evalCorpus = Path.Combine(dir, "corpus-eval.jsonl");
            string corpusMeta = Path.Combine(dir, "corpus.json");
            string wanted = JsonSerializer.Serialize(new { model = Path.GetFullPath(modelPath), documents = nDocs, document_tokens = settings.DocumentTokens, seed = seedValue, temperature = 1.0 });
            if (!File.Exists(corpusMeta) || File.ReadAllText(corpusMeta) != wanted || !File.Exists(trainCorpus) || !File.Exists(evalCorpus))
            {
                string all = Path.Combine(dir, "corpus-all.jsonl");
                long sampled = 0;
                AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
                    .Start(p =>
                    {
                        var task = p.AddTask($"sampling {nDocs} documents from the model", maxValue: nDocs);
                        sampled = SaeSuite.SampleCorpus(m, all, nDocs, settings.DocumentTokens, seedValue, 1f, 1f, new SyncProgress<int>(n => task.Value = n));
                    });
                var lines = File.ReadAllLines(all);
                int nEval = Math.Max(1, lines.Length / 10);
                WriteLines(trainCorpus, lines[..^nEval]);
                WriteLines(evalCorpus, lines[^nEval..]);
                File.Delete(all);
                File.WriteAllText(corpusMeta, wanted);
                AnsiConsole.MarkupLine($"corpus: {lines.Length} documents, {sampled:N0} tokens ({lines.Length - nEval} for training, {nEval} held out) in {clock.Elapsed.TotalSeconds:F0} s");
            }
            else AnsiConsole.MarkupLine($"corpus: reusing {Markup.Escape(trainCorpus)}");

            // 2. one TopK SAE per layer on the residual stream
            var saes = new List<Sae>();
            for (int l = 0; l < m.Config.NLayers; l++)
            {
                string hook = $"blocks.{l}.hook_resid_post";
                var source = ModelActivationSource.FromCorpus(m, hook, trainCorpus, ctx, prependBos: true, batchSequences: Math.Max(1, 4096 / ctx), shuffleSeed: (ulong)seedValue);
                long total = settings.Tokens;
                int batchTokens = 4096;
                var options = new SaeTrainingOptions
                {
                    Architecture = SaeArchitecture.TopK, DIn = source.DIn, DSae = settings.DSae, K = settings.K,
                    LearningRate = 1e-3, LrWarmupSteps = 20, LrDecaySteps = (int)(total / batchTokens / 5),
                    BatchTokens = batchTokens, TotalTokens = total, Seed = (ulong)(seedValue * 100 + l), AuxKCoefficient = 1.0 / 32,
                    DeadAfterTokens = Math.Min(500_000, total / 4), ApplyBDecToInput = true, CheckpointEveryTokens = Math.Max(batchTokens, total / 4),
                    OutputDir = Path.Combine(dir, "saes", hook),
                    Metadata = new SaeMetadata { ModelName = Path.GetFileName(Path.TrimEndingDirectorySeparator(modelPath)), HookName = hook, DatasetPath = trainCorpus, ContextSize = ctx, PrependBos = true },
                };
                var result = SaeTrainCommand.Run(options, source, ct, $"layer {l}");
                saes.Add(SaeLoaderOrResult(result));
            }

            // 3. evaluation on held-out text
            long evalBudget = settings.EvalTokens;
            var windows = Corpus.Windows(Corpus.Documents(evalCorpus), tok, ctx, prependBos: true, maxTokens: evalBudget).ToList();
            IReadOnlyList<SaeEvalResult> evals = [];
            AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn())
                .Start(p =>
                {
                    var task = p.AddTask("evaluating", maxValue: windows.Sum(w => w.Length));
                    evals = SaeEvaluator.Evaluate(m, saes, windows, new SaeEvalOptions(), new SyncProgress<long>(n => task.Value = n));
                });
            SaeCommand.PrintResults(evals);
            SaeCommand.WriteJson(Path.Combine(dir, "eval.json"), evals);

            // 4. example features: each latent's strongest tokens in context
            var examples = TopExamples.Collect(m, saes, windows, topN: 8);
            WriteFeatures(Path.Combine(dir, "features.json"), examples, windows, tok);
            PrintExampleFeatures(examples, windows, tok);
            AnsiConsole.MarkupLine($"[green]suite built in {clock.Elapsed.TotalSeconds:F0} s[/]: {Markup.Escape(dir)}");
            File.WriteAllText(done + ".tmp", wantedSuite);
            File.Move(done + ".tmp", done, overwrite: true);
            return saesDir;
        }
    }

    /// <summary>What <c>--transcoders</c> and <c>--attn-saes</c> add to a suite.</summary>
    public enum SuiteExtra { Transcoders, AttnSaes }

    /// <summary>
    /// Trains (or resumes, or skips when finished) one TopK transcoder per layer — input blocks.L.ln2.hook_normalized (the
    /// MLP's normalised input before the norm's weight: with the norm scale frozen it is linear in the residual stream, and
    /// the transcoder replaces exactly what the MLP computes from it), target blocks.L.hook_mlp_out — or one TopK SAE per
    /// layer on blocks.L.attn.hook_z (heads flattened), on the suite's corpus with the suite's d_sae, k, tokens and
    /// context; then evaluates them on the held-out corpus (transcoders also all at once: the whole replacement).
    /// </summary>
    public static string BuildExtra(HookedTransformer m, string modelPath, string dir, SuiteSettings settings, SuiteExtra extra, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        var tok = m.Tokenizer ?? throw new InvalidOperationException("the suite needs the model's tokenizer: pass --tokenizer PATH");
        string trainCorpus = Path.Combine(dir, "corpus-train.jsonl"), evalCorpus = Path.Combine(dir, "corpus-eval.jsonl");
        if (!File.Exists(trainCorpus) || !File.Exists(evalCorpus)) throw new FileNotFoundException($"the suite's corpus is missing in {dir}: build the suite first", trainCorpus);
        int ctx = Math.Min(settings.Context, m.Config.NCtx), seedValue = settings.Seed;
        bool tc = extra == SuiteExtra.Transcoders;
        string folder = Path.Combine(dir, tc ? "transcoders" : "attn-saes");
        var trained = new List<Sae>();
        for (int l = 0; l < m.Config.NLayers; l++)
        {
            string input = tc ? $"blocks.{l}.ln2.hook_normalized" : $"blocks.{l}.attn.hook_z";
            string target = $"blocks.{l}.hook_mlp_out";
            string[] hooks = tc ? [input, target] : [input];
            var source = ModelActivationSource.FromCorpus(m, hooks, trainCorpus, ctx, prependBos: true, batchSequences: Math.Max(1, 4096 / ctx), shuffleSeed: (ulong)seedValue);
            long total = settings.Tokens;
            const int batchTokens = 4096;
            var options = new SaeTrainingOptions
            {
                Architecture = SaeArchitecture.TopK, Transcoder = tc, DIn = source.HookWidths[0], DOut = tc ? source.HookWidths[1] : 0,
                DSae = settings.DSae, K = settings.K,
                LearningRate = 1e-3, LrWarmupSteps = 20, LrDecaySteps = (int)(total / batchTokens / 5),
                BatchTokens = batchTokens, TotalTokens = total, Seed = (ulong)(seedValue * 100 + (tc ? 50 : 70) + l), AuxKCoefficient = 1.0 / 32,
                DeadAfterTokens = Math.Min(500_000, total / 4), ApplyBDecToInput = !tc, CheckpointEveryTokens = Math.Max(batchTokens, total / 4),
                OutputDir = Path.Combine(folder, tc ? target : input),
                Metadata = new SaeMetadata
                {
                    ModelName = Path.GetFileName(Path.TrimEndingDirectorySeparator(modelPath)), HookName = input, HookNameOut = tc ? target : null,
                    DatasetPath = trainCorpus, ContextSize = ctx, PrependBos = true,
                },
            };
            var result = SaeTrainCommand.Run(options, source, ct, tc ? $"transcoder {l}" : $"hook_z SAE {l}");
            var sae = SaeLoaderOrResult(result);
            trained.Add(sae);
        }

        var windows = Corpus.Windows(Corpus.Documents(evalCorpus), tok, ctx, prependBos: true, maxTokens: settings.EvalTokens).ToList();
        IReadOnlyList<SaeEvalResult> evals = [];
        ReplacementEvalResult? replacement = null;
        AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn())
            .Start(p =>
            {
                long all = windows.Sum(w => (long)w.Length);
                var task = p.AddTask(tc ? "evaluating transcoders" : "evaluating hook_z SAEs", maxValue: tc ? 2 * all : all);
                evals = SaeEvaluator.Evaluate(m, trained, windows, new SaeEvalOptions(), new SyncProgress<long>(n => task.Value = n));
                if (tc) replacement = SaeEvaluator.EvaluateReplacement(m, trained, windows, new SaeEvalOptions(), new SyncProgress<long>(n => task.Value = all + n));
            });
        SaeCommand.PrintResults(evals);
        if (replacement != null) SaeCommand.PrintReplacement(replacement);
        SaeCommand.WriteJson(Path.Combine(dir, tc ? "eval-transcoders.json" : "eval-attn-saes.json"), evals, replacement);
        AnsiConsole.MarkupLine($"[green]{(tc ? "transcoders" : "hook_z SAEs")} built and evaluated in {clock.Elapsed.TotalSeconds:F0} s[/]: {Markup.Escape(folder)}");
        return folder;
    }

    static Sae SaeLoaderOrResult(TrainResult result) => Saes.Formats.SaeLoader.Load(result.OutputDir);

    static void WriteLines(string path, IEnumerable<string> lines)
    {
        File.WriteAllLines(path + ".tmp", lines);
        File.Move(path + ".tmp", path, overwrite: true);
    }

    /// <summary>"… context [token]" for an example.</summary>
    public static string Context(LatentExample e, IReadOnlyList<int[]> windows, ITokenizer tok, int before = 6)
    {
        var seq = windows[e.Sequence];
        int from = Math.Max(1, e.Position - before);
        string left = tok.Decode(seq.AsSpan(from, e.Position - from));
        string token = tok.Decode(seq.AsSpan(e.Position, 1));
        return $"{left}[{token}]".Replace("\n", "\\n");
    }

    static readonly JsonSerializerOptions IndentedJson = new() { WriteIndented = true };

    static void WriteFeatures(string path, IReadOnlyList<LatentTopExamples> all, List<int[]> windows, ITokenizer tok)
    {
        var doc = all.Select(x => new
        {
            hook = x.Sae.Config.HookName,
            tokens = x.Tokens,
            latents = Enumerable.Range(0, x.Sae.DSae).Select(j => new
            {
                index = j,
                frequency = x.Tokens == 0 ? 0 : (double)x.FireCounts[j] / x.Tokens,
                examples = x.Examples[j].Select(e => new { activation = e.Activation, token = tok.Decode(windows[e.Sequence].AsSpan(e.Position, 1)), context = Context(e, windows, tok) }),
            }),
        });
        File.WriteAllText(path + ".tmp", JsonSerializer.Serialize(doc, IndentedJson));
        File.Move(path + ".tmp", path, overwrite: true);
    }

    /// <summary>
    /// For each SAE, the latents (firing on 0.1–8 % of tokens) whose top examples agree most on the token they
    /// fire on — the quickest to read — with their top activations in context.
    /// </summary>
    static void PrintExampleFeatures(IReadOnlyList<LatentTopExamples> all, List<int[]> windows, ITokenizer tok, int perLayer = 6)
    {
        foreach (var x in all)
        {
            var t = new Table().Border(TableBorder.Simple).AddColumn("latent").AddColumn("freq").AddColumn("agree").AddColumn(Markup.Escape("top activations (token in [ ])"));
            t.Title = new TableTitle(Markup.Escape(x.Sae.Config.HookName));
            var picks = Enumerable.Range(0, x.Sae.DSae)
                .Where(j => x.Tokens > 0 && x.FireCounts[j] >= 0.001 * x.Tokens && x.FireCounts[j] <= 0.08 * x.Tokens && x.Examples[j].Length >= 4)
                .Select(j => (j, agree: x.Examples[j].GroupBy(e => windows[e.Sequence][e.Position]).Max(g => g.Count())))
                .OrderByDescending(p => (double)p.agree / x.Examples[p.j].Length).ThenByDescending(p => x.FireCounts[p.j]).Take(perLayer);
            foreach (var (j, agree) in picks)
                t.AddRow(j.ToString(), ((double)x.FireCounts[j] / x.Tokens).ToString("P2"), $"{agree}/{x.Examples[j].Length}",
                    Markup.Escape(string.Join("  |  ", x.Examples[j].Take(4).Select(e => Context(e, windows, tok, 4)))));
            AnsiConsole.Write(t);
        }
    }
}
