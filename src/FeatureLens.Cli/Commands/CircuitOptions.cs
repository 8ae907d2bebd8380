using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using FeatureLens.Connections;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tokenizers;
using FeatureLens.Saes;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>The options attribute and patch share: model, SAEs, clean/corrupt prompts or ablation, metric, outputs.</summary>
internal sealed class CircuitOptions
{
    public readonly Option<string> Model = Cli.ModelOption();
    public readonly Option<string?> Tokenizer = Cli.TokenizerOption();
    public readonly Option<string?> Clean = new("--clean") { Description = "Clean prompt text (BOS prepended unless --no-bos)" };
    public readonly Option<string?> CleanTokens = new("--clean-tokens") { Description = "Clean prompt as comma-separated token ids" };
    public readonly Option<string?> Corrupt = new("--corrupt") { Description = "Corrupt prompt text (same token length as the clean one)" };
    public readonly Option<string?> CorruptTokens = new("--corrupt-tokens") { Description = "Corrupt prompt as comma-separated token ids" };
    public readonly Option<string?> Ablation = new("--ablation") { Description = "Instead of a corrupt prompt: zero (nodes set to 0) or mean (set to their mean over --mean-corpus)" };
    public readonly Option<string?> MeanCorpus = new("--mean-corpus") { Description = "Text corpus (one document per line or blank-line separated) for --ablation mean; the means are computed once and cached" };
    public readonly Option<long> MeanTokens = new("--mean-tokens") { Description = "Tokens of --mean-corpus to average over", DefaultValueFactory = _ => 20_000 };
    public readonly Option<string?> Metric = new("--metric") { Description = "logit:T, logit-diff:T1,T2, logprob:T, prob:T, loss or feature:HOOK:I, with an optional @POS (default @-1)" };
    public readonly Option<string?> Pairs = new("--pairs") { Description = "JSONL file of prompt pairs {\"clean\", \"corrupt\", \"metric\"} (texts, or token-id lists); effects are summed over the pairs" };
    public readonly Option<string[]> Saes = new("--sae") { Description = "SAE folder (or a folder of SAE folders), spliced with its error term; repeat for several" };
    public readonly Option<string?> Components = new("--components") { Description = "Component hooks whose nodes to include, as globs: e.g. 'blocks.*.hook_resid_pre,blocks.*.attn.hook_z,blocks.*.hook_mlp_out'" };
    public readonly Option<bool> NoBos = Cli.NoBosOption();
    public readonly Option<string?> Out = new("--out") { Description = "Output JSON file (the node-effects contract)" };
    public readonly Option<string?> Csv = new("--csv") { Description = "Also write the nodes as CSV" };
    public readonly Option<int?> Top = new("--top") { Description = "Keep only the N nodes of largest |effect| in the outputs" };

    public void AddTo(Command cmd)
    {
        foreach (Option o in new Option[] { Model, Tokenizer, Clean, CleanTokens, Corrupt, CorruptTokens, Ablation, MeanCorpus, MeanTokens, Metric, Pairs, Saes, Components, NoBos, Out, Csv, Top })
            cmd.Options.Add(o);
    }

    /// <summary>Loads the model and SAEs and builds the context, validating every option.</summary>
    public (HookedTransformer Model, CircuitContext Context) Build(ParseResult r)
    {
        string? outPath = r.GetValue(Out);
        if (outPath == null && r.GetValue(Csv) == null) throw new ArgumentException("give --out FILE.json (and/or --csv FILE.csv)");
        foreach (var p in new[] { outPath, r.GetValue(Csv) }.OfType<string>())
        {
            var dir = Path.GetDirectoryName(Path.GetFullPath(p))!;
            if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"{p}: the folder {dir} does not exist");
        }
        if (r.GetValue(Top) is int top && top <= 0) throw new ArgumentException($"--top must be positive (got {top})");
        var model = Cli.LoadModel(r.GetValue(Model)!, r.GetValue(Tokenizer));
        try
        {
            var saes = (r.GetValue(Saes) ?? []).Length > 0 ? SaeCommand.LoadSaes(r.GetValue(Saes)!) : [];
            bool bos = !r.GetValue(NoBos);
            int[] Ids(string? text, string? ids, string what) =>
                text != null && ids != null ? throw new ArgumentException($"give either --{what} or --{what}-tokens, not both")
                : ids != null ? Cli.ParseTokens(ids) : text != null ? Cli.Encode(model, text, bos) : throw new ArgumentException($"give --{what} TEXT or --{what}-tokens IDS");

            string? ablation = r.GetValue(Ablation);
            var kind = ablation switch
            {
                null => AblationKind.Corrupt,
                "zero" => AblationKind.Zero,
                "mean" => AblationKind.Mean,
                _ => throw new ArgumentException($"--ablation '{ablation}': expected zero or mean"),
            };
            int[][] clean, corrupt;
            List<Metric> metrics;
            if (r.GetValue(Pairs) is { } pairsPath)
            {
                if (r.GetValue(Clean) != null || r.GetValue(CleanTokens) != null || r.GetValue(Corrupt) != null || r.GetValue(CorruptTokens) != null)
                    throw new ArgumentException("--pairs replaces --clean/--corrupt; give one or the other");
                (clean, corrupt, metrics) = ReadPairs(pairsPath, model, bos, kind, r.GetValue(Metric));
            }
            else
            {
                string metricText = r.GetValue(Metric) ?? throw new ArgumentException("give --metric (e.g. logit-diff:T1,T2)");
                clean = [Ids(r.GetValue(Clean), r.GetValue(CleanTokens), "clean")];
                corrupt = kind == AblationKind.Corrupt ? [Ids(r.GetValue(Corrupt), r.GetValue(CorruptTokens), "corrupt")] : [];
                if (kind != AblationKind.Corrupt && (r.GetValue(Corrupt) != null || r.GetValue(CorruptTokens) != null))
                    throw new ArgumentException("--ablation replaces the corrupt prompt; give one or the other");
                metrics = [Connections.Metric.Parse(metricText)];
            }
            MeanActivations? means = kind == AblationKind.Mean ? Means(r, model, saes) : null;
            var ctx = new CircuitContext(model, saes, clean, metrics, kind == AblationKind.Corrupt ? corrupt : null, kind, means);
            return (model, ctx);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>The component hooks the --components globs select (none when not given).</summary>
    public List<string> ComponentHooks(ParseResult r, HookedTransformer model)
    {
        string? globs = r.GetValue(Components);
        if (string.IsNullOrWhiteSpace(globs)) return [];
        var f = HookNames.Glob(globs);
        var hooks = model.HookPointNames.Where(f).ToList();
        if (hooks.Count == 0) throw new ArgumentException($"--components '{globs}' matches no hook of this model");
        foreach (var h in hooks) Node.CheckComponentHook(model, h);
        return hooks;
    }

    static (int[][], int[][], List<Metric>) ReadPairs(string path, HookedTransformer model, bool bos, AblationKind kind, string? defaultMetric)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such --pairs file");
        var clean = new List<int[]>(); var corrupt = new List<int[]>(); var metrics = new List<Metric>();
        int line = 0;
        foreach (var raw in File.ReadLines(path))
        {
            line++;
            if (string.IsNullOrWhiteSpace(raw)) continue;
            try
            {
                using var doc = JsonDocument.Parse(raw);
                var e = doc.RootElement;
                int[] Prompt(string field, bool required)
                {
                    if (!e.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null)
                        return required ? throw new ArgumentException($"field '{field}' is missing") : [];
                    return v.ValueKind == JsonValueKind.String ? Cli.Encode(model, v.GetString()!, bos)
                        : v.ValueKind == JsonValueKind.Array ? v.EnumerateArray().Select(x => x.GetInt32()).ToArray()
                        : throw new ArgumentException($"field '{field}' must be a text or a list of token ids");
                }
                clean.Add(Prompt("clean", true));
                corrupt.Add(Prompt("corrupt", kind == AblationKind.Corrupt));
                string? m = e.TryGetProperty("metric", out var mv) && mv.ValueKind == JsonValueKind.String ? mv.GetString() : defaultMetric;
                metrics.Add(Connections.Metric.Parse(m ?? throw new ArgumentException("field 'metric' is missing and no --metric was given")));
            }
            catch (Exception ex) when (ex is JsonException or ArgumentException or InvalidOperationException or FormatException)
            {
                throw new InvalidDataException($"{path}:{line}: {ex.Message}");
            }
        }
        if (clean.Count == 0) throw new InvalidDataException($"{path}: no prompt pairs");
        return ([.. clean], [.. corrupt], metrics);
    }

    /// <summary>Corpus means of every SAE value hook and component hook, cached under ~/.cache/featurelens/means by a hash of their inputs.</summary>
    MeanActivations Means(ParseResult r, HookedTransformer model, List<Sae> saes)
    {
        string corpus = r.GetValue(MeanCorpus) ?? throw new ArgumentException("--ablation mean needs --mean-corpus FILE");
        if (!File.Exists(corpus)) throw new FileNotFoundException($"{corpus}: no such --mean-corpus file");
        long budget = r.GetValue(MeanTokens);
        if (budget <= 0) throw new ArgumentException($"--mean-tokens must be positive (got {budget})");
        var tok = model.Tokenizer ?? throw new InvalidOperationException("--ablation mean tokenizes the corpus: pass --tokenizer PATH");
        var splices = saes.Select(s => (IHookSplice)new SaeSplice(s, useErrorTerm: true)).ToList();
        var hooks = model.HookPointNames.Where(h => Node.ComponentKind(h) != null)
            .Concat(splices.Cast<SaeSplice>().SelectMany(s => new[] { s.ActsPostHook, s.InputHook + ".hook_sae_error" })).ToList();
        var fi = new FileInfo(corpus);
        string key = string.Join("|", Path.GetFullPath(r.GetValue(Model)!), string.Join(",", (r.GetValue(Saes) ?? []).Select(Path.GetFullPath)),
            fi.FullName, fi.Length.ToString(CultureInfo.InvariantCulture), fi.LastWriteTimeUtc.Ticks.ToString(CultureInfo.InvariantCulture),
            budget.ToString(CultureInfo.InvariantCulture), string.Join(",", hooks));
        string hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)))[..16];
        string cacheHome = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } x ? x : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        string dir = Path.Combine(cacheHome, "featurelens", "means");
        string file = Path.Combine(dir, hash + ".safetensors");
        if (File.Exists(file))
        {
            Console.Error.WriteLine($"mean ablation: corpus means from {file}");
            return MeanActivations.Load(file);
        }
        int ctxLen = Math.Min(128, model.Config.NCtx);
        var windows = Corpus.Windows(Corpus.Documents(corpus), tok, ctxLen, prependBos: !r.GetValue(NoBos), maxTokens: budget);
        MeanActivations means = null!;
        AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(p =>
            {
                var task = p.AddTask("corpus means for mean ablation", maxValue: budget);
                means = MeanActivations.Compute(model, splices, windows, hooks, progress: n => task.Value = Math.Min(n, budget));
            });
        Directory.CreateDirectory(dir);
        means.Save(file, new Dictionary<string, string> { ["corpus"] = fi.FullName, ["model"] = r.GetValue(Model)! });
        Console.Error.WriteLine($"mean ablation: averaged {means.Tokens} tokens; cached in {file}");
        return means;
    }

    /// <summary>Writes the outputs (top N when asked) and prints the largest effects.</summary>
    public void Report(ParseResult r, EffectsResult result, ExactCheck? check = null, IReadOnlyList<Edge>? edges = null)
    {
        if (r.GetValue(Top) is int top)
            result = new EffectsResult
            {
                Metric = result.Metric, Clean = result.Clean, Corrupt = result.Corrupt, Method = result.Method, Steps = result.Steps,
                Nodes = result.Nodes.OrderByDescending(n => Math.Abs(n.Effect)).Take(top).ToList(),
            };
        if (r.GetValue(Out) is { } o) EffectsJson.Write(o, result, check, edges);
        if (r.GetValue(Csv) is { } c) EffectsJson.WriteCsv(c, result);
        var t = new Table().Border(TableBorder.Rounded).AddColumns("node", "clean", "corrupt", "effect");
        foreach (var n in result.Nodes.OrderByDescending(n => Math.Abs(n.Effect)).Take(12))
            t.AddRow(Markup.Escape(n.Node.ToString()), n.Clean?.ToString("G4", CultureInfo.InvariantCulture) ?? "", n.Corrupt?.ToString("G4", CultureInfo.InvariantCulture) ?? "",
                n.Effect.ToString("G5", CultureInfo.InvariantCulture));
        AnsiConsole.MarkupLine(Markup.Escape($"{result.Metric}: clean {result.Clean:G6}" + (result.Corrupt is double cm ? $", corrupt {cm:G6}" : "") +
            $"; {EffectsJson.MethodName(result.Method)} effects of {result.Nodes.Count} nodes"));
        AnsiConsole.Write(t);
        if (edges != null)
        {
            var et = new Table().Border(TableBorder.Rounded).AddColumns("edge", "weight");
            foreach (var e in edges.Take(10)) et.AddRow(Markup.Escape($"{e.Source} → {e.Target}"), e.Weight.ToString("G5", CultureInfo.InvariantCulture));
            AnsiConsole.MarkupLine(Markup.Escape($"{edges.Count} edges (largest |weight| first)"));
            AnsiConsole.Write(et);
        }
        if (check != null)
            AnsiConsole.MarkupLine(Markup.Escape($"check against exact patching on the top {check.Nodes} nodes: Pearson r = {check.Pearson:F4}, " +
                $"largest disagreement {check.MaxAbsDifference:G4} at {check.WorstNode} (attributed {check.WorstAttributed:G4}, exact {check.WorstExact:G4})"));
    }

    /// <summary>Runs <paramref name="work"/> under a progress bar named <paramref name="what"/>; work reports (done, total).</summary>
    public static T WithProgress<T>(string what, Func<Action<int, int>, T> work)
    {
        T result = default!;
        AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(p =>
            {
                var task = p.AddTask(what, maxValue: 1);
                result = work((done, total) => { task.MaxValue = Math.Max(1, total); task.Value = done; });
            });
        return result;
    }
}

/// <summary>featurelens attribute: node effects by gradient or integrated gradients (attribution patching).</summary>
internal static class AttributeCommand
{
    public static Command Build()
    {
        var o = new CircuitOptions();
        var method = new Option<string>("--method") { Description = "gradient or ig (integrated gradients)", DefaultValueFactory = _ => "gradient" };
        var steps = new Option<int>("--steps") { Description = "Integrated-gradient steps", DefaultValueFactory = _ => 10 };
        var checkExact = new Option<int?>("--check-exact") { Description = "Patch the N largest nodes exactly and report the correlation and largest disagreement" };
        var headsAll = new Option<bool>("--heads-all-positions") { Description = "One attn node per head over all positions (instead of one per position)" };
        var edgesOpt = new Option<int?>("--edges") { Description = "Also compute edges (u→d) into the N nodes of largest |effect| from every upstream node (one backward pass per target; with --method ig, ∂d/∂u is averaged along u's integration path)" };
        var maxEdges = new Option<int>("--max-edges") { Description = "Edges kept (largest |weight|)", DefaultValueFactory = _ => 1000 };
        var cmd = new Command("attribute", "Effects of SAE features, error nodes and components on a metric by attribution patching (gradient or integrated gradients)");
        o.AddTo(cmd);
        cmd.Options.Add(method); cmd.Options.Add(steps); cmd.Options.Add(checkExact); cmd.Options.Add(headsAll);
        cmd.Options.Add(edgesOpt); cmd.Options.Add(maxEdges);
        cmd.SetAction(r =>
        {
            var m = r.GetValue(method) switch
            {
                "gradient" => AttributionMethod.Gradient,
                "ig" => AttributionMethod.IntegratedGradients,
                var x => throw new ArgumentException($"--method '{x}': expected gradient or ig"),
            };
            if (r.GetValue(checkExact) is int ce && ce <= 0) throw new ArgumentException($"--check-exact must be positive (got {ce})");
            if (r.GetValue(edgesOpt) is int ed && ed <= 0) throw new ArgumentException($"--edges must be positive (got {ed})");
            if (r.GetValue(maxEdges) <= 0) throw new ArgumentException($"--max-edges must be positive (got {r.GetValue(maxEdges)})");
            var (model, ctx) = o.Build(r);
            using (model)
            {
                var select = new NodeSelection { Saes = ctx.Saes.Count > 0, Components = o.ComponentHooks(r, model), HeadsAllPositions = r.GetValue(headsAll) };
                var result = CircuitOptions.WithProgress(m == AttributionMethod.Gradient ? "gradient attribution" : $"integrated gradients ({r.GetValue(steps)} steps)",
                    p => Attribution.Run(ctx, select, m, r.GetValue(steps), p));
                ExactCheck? check = r.GetValue(checkExact) is int n ? CircuitOptions.WithProgress($"exact patching of the top {n} nodes", p => ExactChecks.Run(ctx, result, n, p)) : null;
                List<Edge>? edges = null;
                if (r.GetValue(edgesOpt) is int k)
                {
                    var targets = result.Nodes.OrderByDescending(x => Math.Abs(x.Effect)).Take(k).Select(x => x.Node).ToList();
                    edges = CircuitOptions.WithProgress($"edges into the top {targets.Count} nodes" + (m == AttributionMethod.IntegratedGradients ? $" (integrated gradients, {r.GetValue(steps)} steps)" : ""),
                        p => Edges.Run(ctx, select, targets, r.GetValue(maxEdges), p, m, r.GetValue(steps)));
                }
                o.Report(r, result, check, edges);
            }
            return 0;
        });
        return cmd;
    }
}

/// <summary>featurelens patch: exact activation patching of nodes, sweeps or the top nodes of an attribution run.</summary>
internal static class PatchCommand
{
    public static Command Build()
    {
        var o = new CircuitOptions();
        var sweep = new Option<string?>("--sweep")
        {
            Description = "Nodes to patch one at a time: resid_pre (layer × position), heads (layer × head, all positions), heads-pos (layer × head × position), " +
                "mlp_out (layer × position), sae (every active feature and every error node); comma-separate several",
        };
        var from = new Option<string?>("--from") { Description = "Patch the nodes of an attribute/patch JSON file (with --top N: its N largest)" };
        var cmd = new Command("patch", "Exact activation patching: the metric's change when one node at a time takes its corrupt (or ablated) value");
        o.AddTo(cmd);
        cmd.Options.Add(sweep); cmd.Options.Add(from);
        cmd.SetAction(r =>
        {
            string? sw = r.GetValue(sweep), fromPath = r.GetValue(from);
            if ((sw == null) == (fromPath == null)) throw new ArgumentException("give --sweep KIND or --from FILE.json");
            var (model, ctx) = o.Build(r);
            using (model)
            {
                var nodes = new List<Node>();
                if (fromPath != null) nodes = r.GetValue(o.Top) is int top ? Sweeps.FromFile(fromPath, top) : EffectsJson.Read(fromPath).Nodes.Select(n => n.Node).ToList();
                else
                    foreach (var kind in sw!.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
                        nodes.AddRange(kind switch
                        {
                            "resid_pre" => Sweeps.ResidPre(ctx),
                            "heads" => Sweeps.Heads(ctx, allPositions: true),
                            "heads-pos" => Sweeps.Heads(ctx, allPositions: false),
                            "mlp_out" => Sweeps.MlpOut(ctx),
                            "sae" => ctx.Saes.Count > 0 ? Sweeps.SaeNodes(ctx) : throw new ArgumentException("--sweep sae needs --sae"),
                            _ => throw new ArgumentException($"--sweep '{kind}': expected resid_pre, heads, heads-pos, mlp_out or sae"),
                        });
                var result = CircuitOptions.WithProgress($"patching {nodes.Count} nodes", p => Patching.Run(ctx, nodes, p));
                o.Report(r, result);
            }
            return 0;
        });
        return cmd;
    }
}
