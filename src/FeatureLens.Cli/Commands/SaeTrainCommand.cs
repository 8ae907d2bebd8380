using System.CommandLine;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Training;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens sae train: an SAE on activations streamed from a model over a corpus, or from a cached file.</summary>
internal static class SaeTrainCommand
{
    public static Command Build()
    {
        var model = new Option<string?>("--model") { Description = "Model whose activations to train on (a HF folder, llama2.c .bin or cached repo id)" };
        var tokenizer = Cli.TokenizerOption();
        var hook = new Option<string>("--hook") { Description = "Hook point, e.g. blocks.3.hook_resid_post", Required = true };
        var corpus = new Option<string?>("--corpus") { Description = "Text (documents separated by blank lines) or JSONL with a \"text\" field" };
        var activations = new Option<string?>("--activations") { Description = "Train on a cached [N, d_in] activation tensor ('activations') in this safetensors file instead of running the model" };
        var actTensor = new Option<string>("--activations-tensor") { Description = "Tensor name in the --activations file (e.g. a hook name from 'featurelens run')", DefaultValueFactory = _ => "activations" };
        var arch = new Option<string>("--architecture") { Description = "standard (ReLU + L1), topk or jumprelu", DefaultValueFactory = _ => "topk" };
        var dSae = new Option<int>("--d-sae") { Description = "Number of latents", Required = true };
        var k = new Option<int>("--k") { Description = "Latents per token (topk)", DefaultValueFactory = _ => 32 };
        var tokens = new Option<long>("--tokens") { Description = "Training tokens", Required = true };
        var output = new Option<string>("--out") { Description = "Output folder (SAELens layout; checkpoints/ inside; rerun the same command to resume)", Required = true };
        var batch = new Option<int>("--batch-tokens") { Description = "Tokens per optimiser step", DefaultValueFactory = _ => 4096 };
        var lr = new Option<double>("--lr") { Description = "Adam learning rate", DefaultValueFactory = _ => 4e-4 };
        var l1 = new Option<double>("--l1-coefficient") { Description = "standard: decoder-norm-weighted L1 coefficient", DefaultValueFactory = _ => 5.0 };
        var l0 = new Option<double>("--l0-coefficient") { Description = "jumprelu: L0 coefficient", DefaultValueFactory = _ => 1.0 };
        var warmup = new Option<int>("--lr-warmup-steps") { Description = "Linear learning-rate warm-up steps", DefaultValueFactory = _ => 0 };
        var decay = new Option<int?>("--lr-decay-steps") { Description = "Linear decay to 0 over the last N steps (default: the last 20%)" };
        var sparsityWarmup = new Option<int>("--l1-warmup-steps") { Description = "Steps over which the L1/L0 coefficient ramps up", DefaultValueFactory = _ => 0 };
        var context = new Option<int>("--context") { Description = "Tokens per sequence when streaming from the model", DefaultValueFactory = _ => 128 };
        var seed = new Option<ulong>("--seed") { Description = "Seed for initialisation, shuffling and resampling", DefaultValueFactory = _ => 42 };
        var normalize = new Option<string>("--normalize-activations") { Description = "none or expected_average_only_in (scale to norm √d_in while training, folded into the saved weights)", DefaultValueFactory = _ => "none" };
        var bdec = new Option<bool>("--apply-b-dec-to-input") { Description = "Subtract b_dec from the input before encoding" };
        var checkpointEvery = new Option<long>("--checkpoint-every") { Description = "Checkpoint every N tokens (0: only at the end or on Ctrl-C)", DefaultValueFactory = _ => 0 };
        var resample = new Option<int>("--resample-every") { Description = "standard/jumprelu: resample dead latents every N steps (0: never)", DefaultValueFactory = _ => 0 };
        var deadAfter = new Option<long>("--dead-after") { Description = "A latent is dead after this many tokens without firing", DefaultValueFactory = _ => 1_000_000 };
        var hookOut = new Option<string?>("--hook-out") { Description = "Train a transcoder: predict this hook (e.g. blocks.3.hook_mlp_out) from --hook (e.g. blocks.3.ln2.hook_normalized)" };
        var skip = new Option<bool>("--skip") { Description = "Transcoders: also train a linear skip path x·W_skipᵀ" };
        var auxK = new Option<double>("--aux-k-coefficient") { Description = "topk: AuxK loss coefficient on dead latents", DefaultValueFactory = _ => 1.0 / 32 };
        var cmd = new Command("train", "Train an SAE or, with --hook-out, a transcoder (standard ReLU+L1, TopK with AuxK, JumpReLU; --skip for a skip path) and write a SAELens folder; resumes after interruption")
        {
            model, tokenizer, hook, corpus, activations, actTensor, arch, dSae, k, tokens, output, batch, lr, l1, l0, warmup, decay, sparsityWarmup,
            context, seed, normalize, bdec, checkpointEvery, resample, deadAfter, auxK, hookOut, skip,
        };
        cmd.SetAction((r, ct) => Task.FromResult(Execute(r, ct)));
        int Execute(ParseResult r, CancellationToken ct)
        {
            string? modelPath = r.GetValue(model), corpusPath = r.GetValue(corpus), actPath = r.GetValue(activations);
            if (actPath == null && (modelPath == null || corpusPath == null)) throw new ArgumentException("give --model and --corpus (or --activations FILE)");
            string hookName = r.GetValue(hook)!;
            string? outHook = r.GetValue(hookOut);
            if (outHook != null && actPath != null) throw new ArgumentException("--hook-out trains a transcoder from the model's activations: give --model and --corpus, not --activations");
            if (r.GetValue(skip) && outHook == null) throw new ArgumentException("--skip is for transcoders: give --hook-out too");
            var architecture = r.GetValue(arch) switch
            {
                "standard" or "relu" => SaeArchitecture.Standard,
                "topk" => SaeArchitecture.TopK,
                "jumprelu" => SaeArchitecture.JumpRelu,
                var other => throw new ArgumentException($"--architecture '{other}': expected standard, topk or jumprelu"),
            };
            var norm = r.GetValue(normalize) switch
            {
                "none" => ActivationNormalization.None,
                "expected_average_only_in" => ActivationNormalization.ExpectedAverageOnlyIn,
                var other => throw new ArgumentException($"--normalize-activations '{other}': expected none or expected_average_only_in"),
            };
            HookedTransformer? m = null;
            IActivationSource source;
            int ctx = r.GetValue(context);
            try
            {
                if (actPath != null) source = new CachedActivationSource(actPath, r.GetValue(actTensor)!);
                else
                {
                    m = Cli.LoadModel(modelPath!, r.GetValue(tokenizer));
                    string[] hookNames = outHook != null ? [hookName, outHook] : [hookName];
                    source = ModelActivationSource.FromCorpus(m, hookNames, corpusPath!, Math.Min(ctx, m.Config.NCtx), prependBos: true,
                        batchSequences: Math.Max(1, 4096 / ctx), shuffleSeed: r.GetValue(seed));
                }
                long total = r.GetValue(tokens);
                int batchTokens = r.GetValue(batch);
                long steps = batchTokens > 0 ? total / batchTokens : 0;
                var options = new SaeTrainingOptions
                {
                    Architecture = architecture, Transcoder = outHook != null, SkipConnection = r.GetValue(skip),
                    DIn = outHook != null ? ((ModelActivationSource)source).HookWidths[0] : source.DIn,
                    DOut = outHook != null ? ((ModelActivationSource)source).HookWidths[1] : 0, DSae = r.GetValue(dSae), K = architecture == SaeArchitecture.TopK ? r.GetValue(k) : 0,
                    LearningRate = r.GetValue(lr), L1Coefficient = r.GetValue(l1), L0Coefficient = r.GetValue(l0),
                    LrWarmupSteps = r.GetValue(warmup), LrDecaySteps = r.GetValue(decay) ?? (int)(steps / 5), L1WarmupSteps = r.GetValue(sparsityWarmup),
                    BatchTokens = batchTokens, TotalTokens = total, Seed = r.GetValue(seed), Normalization = norm, ApplyBDecToInput = r.GetValue(bdec),
                    CheckpointEveryTokens = r.GetValue(checkpointEvery), ResampleDeadEvery = r.GetValue(resample), DeadAfterTokens = r.GetValue(deadAfter),
                    AuxKCoefficient = architecture == SaeArchitecture.TopK ? r.GetValue(auxK) : 0,
                    OutputDir = r.GetValue(output),
                    Metadata = new SaeMetadata
                    {
                        ModelName = modelPath != null ? Path.GetFileName(Path.TrimEndingDirectorySeparator(modelPath)) : null,
                        HookName = hookName, HookNameOut = outHook, DatasetPath = corpusPath ?? actPath, ContextSize = actPath == null ? ctx : null, PrependBos = actPath == null ? true : null,
                    },
                };
                TrainResult result;
                try { result = Run(options, source, ct); }
                catch (OperationCanceledException)
                {
                    Console.Error.WriteLine($"interrupted: a checkpoint of the last completed step is in {Path.Combine(options.OutputDir!, SaeTrainer.CheckpointsFolder)}; run the same command again to resume");
                    return 130;
                }
                Console.Error.WriteLine($"wrote {result.OutputDir} ({result.Steps} steps, {result.Tokens:N0} tokens" +
                    (result.ResumedFromStep > 0 ? $", resumed from step {result.ResumedFromStep}" : "") + ")");
                return 0;
            }
            finally
            {
                m?.Dispose();
            }
        }
        return cmd;
    }

    /// <summary>Trains with a progress bar showing loss, L0, explained variance and dead latents.</summary>
    public static TrainResult Run(SaeTrainingOptions options, IActivationSource source, CancellationToken ct, string? label = null)
    {
        var trainer = new SaeTrainer(options);
        TrainResult? result = null;
        AnsiConsole.Progress().AutoClear(false).HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
            .Start(p =>
            {
                string name = label ?? options.Metadata.HookName;
                var task = p.AddTask(Markup.Escape(name), maxValue: Math.Max(1, options.TotalSteps));
                result = trainer.Train(source, new SyncProgress<TrainProgress>(pr =>
                {
                    var s = pr.Stats;
                    task.Value = s.Step;
                    task.Description = Markup.Escape($"{name} loss {s.Loss:G4} L0 {s.L0:F1} EV {s.ExplainedVariance:F3} dead {s.DeadLatents}");
                }), ct);
                task.Value = task.MaxValue;
            });
        return result!;
    }
}

/// <summary>An IProgress that reports on the calling thread (Progress&lt;T&gt; posts to the thread pool, out of order).</summary>
internal sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
