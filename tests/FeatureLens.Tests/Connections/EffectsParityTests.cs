using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureLens.Connections;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Tests.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections;

/// <summary>Runs python/effects_reference.py (float64 torch: exact patched forwards, autograd gradients, autograd IG).</summary>
internal static class EffectsReference
{
    public static string Script => Path.Combine(AppContext.BaseDirectory, "python", "effects_reference.py");

    public static JsonObject NodeJson(Node n) => new()
    {
        ["kind"] = n.KindName, ["hook"] = n.Hook, ["pos"] = n.Pos, ["index"] = n.Index is int i ? i : null,
    };

    /// <summary>A job: one case's prompts, metric and tasks ((method, steps, nodes)).</summary>
    public static JsonObject Job(string model, string saesPath, int[][] clean, int[][]? corrupt, string metric,
        IReadOnlyList<(string Method, int Steps, IReadOnlyList<Node> Nodes)> tasks) => new()
        {
            ["model"] = model, ["saes"] = saesPath,
            ["clean"] = JsonSerializer.SerializeToNode(clean), ["corrupt"] = corrupt == null ? null : JsonSerializer.SerializeToNode(corrupt),
            ["ablation"] = corrupt == null ? "zero" : "corrupt", ["metric"] = metric,
            ["tasks"] = new JsonArray(tasks.Select(t => (JsonNode)new JsonObject
            {
                ["method"] = t.Method, ["steps"] = t.Steps, ["nodes"] = new JsonArray(t.Nodes.Select(n => (JsonNode)NodeJson(n)).ToArray()),
            }).ToArray()),
        };

    /// <summary>One oracle start for several jobs; returns one JSON answer per job.</summary>
    public static JsonArray RunJobs(string dir, IReadOnlyList<JsonObject> jobs)
    {
        string jobPath = Path.Combine(dir, "effects-jobs.json"), outPath = Path.Combine(dir, "effects-out.json");
        File.WriteAllText(jobPath, new JsonArray(jobs.Select(j => (JsonNode)j).ToArray()).ToJsonString());
        TorchReference.RunPython(Script, "--jobs", jobPath, "--out", outPath);
        return JsonNode.Parse(File.ReadAllText(outPath))!.AsArray();
    }
}

/// <summary>
/// Node effects (CONNECTIONS.md "Effects") against the torch oracle python/effects_reference.py on fresh random GPT-2
/// and Llama models (d_model ≤ 48, 2–3 layers) with 3 SAEs of different architectures spliced with their error terms
/// (standard or gated at a resid hook, topk at hook_mlp_out, jumprelu on hook_z whole or on one head) and component
/// nodes at hooks without an SAE (resid_pre, attn.hook_z per head at each position and at all positions, hook_mlp_out),
/// 1–2 prompt pairs, four metric kinds, one zero-ablation case:
/// <see cref="Attribution.Run"/> with <see cref="AttributionMethod.Gradient"/> for every reported node (every active
/// feature, every error and component node), with <see cref="AttributionMethod.IntegratedGradients"/> (3–5 steps) for
/// the same nodes, and <see cref="Patching.Run"/> for a sample of ~25 nodes of every kind.
/// <para>Tolerance (the contract): |ours − torch| ≤ 1e-4 · max(|torch|, F) per node, with the floor
/// F = <see cref="FloorFraction"/> × S, S = max(the largest |torch effect| of that method in the case, Σ|m(clean)|,
/// Σ|m(corrupt)|) (sums over the prompts). Every effect of at least 3% of S must so be 1e-4-relative accurate; smaller
/// ones to 3e-6·S absolute. Why not less: our effects come from a float32 forward/backward whose values carry ~1e-7–1e-6
/// relative rounding with respect to the scale of the tensors they are computed from (an exact effect is a difference of
/// two float32 metric values; a gradient effect a float32 gradient row dotted with a difference), so an effect far below
/// S cannot be 1e-4-relative accurate: over repeated runs the worst |ours − torch| seen was ~1.1e-6·S (exact effects, and an
/// IG error node whose effect is a float32 gradient row dotted with a large error difference that mostly cancels: 8.8e-5
/// relative to its own effect of 0.8% of S), every kind of node and method agreeing to ≤ 3e-6·S.</para>
/// Inputs are redrawn while an SAE decision of the clean or corrupt run (or, for a feature metric, the metric latent's
/// decision in any run the oracle makes) lies within 1e-5 (relative) of its boundary, where float32 rounding could flip it.
/// Everything runs with two Python starts: one makes the four models, one computes every case's effects.
/// </summary>
public class EffectsParityTests(ITestOutputHelper output)
{
    const double Tolerance = 1e-4, MinMargin = 1e-5;
    /// <summary>The floor's fraction of the case's effect scale (see the class summary).</summary>
    public const double FloorFraction = 3e-2;

    /// <summary>(arch, metric kind, zero ablation).</summary>
    static readonly (string Arch, string Metric, bool Zero)[] Cases =
        [("gpt2", "logit-diff", false), ("llama", "feature", false), ("gpt2", "logprob", true), ("llama", "prob", false)];

    static Dictionary<string, object> SmallConfig(Random rng, string arch)
    {
        int nHeads = arch == "llama" ? 2 * rng.Next(1, 3) : rng.Next(2, 5);
        int group = arch == "llama" ? (nHeads == 4 && rng.Next(2) == 0 ? 4 : 2) : 1;
        int dHead = 2 * rng.Next(2, 48 / (2 * nHeads) + 1);
        return new Dictionary<string, object>
        {
            ["d_model"] = nHeads * dHead, ["n_layers"] = rng.Next(2, 4), ["n_heads"] = nHeads, ["n_kv_heads"] = nHeads / group,
            ["d_mlp"] = rng.Next(17, 64), ["vocab"] = rng.Next(40, 120), ["n_ctx"] = 16,
            ["tied"] = rng.Next(2) == 0, ["rope_theta"] = rng.Next(2) == 0 ? 10000.0 : 500.0,
        };
    }

    sealed class Case : IDisposable
    {
        public required string Arch, MetricKind, ModelDir, SaePath, Label;
        public required bool Zero;
        public required Random Rng;
        public required Dictionary<string, object> Config;
        public HookedTransformer Model = null!;
        public List<Sae> Saes = null!;
        public string[] Components = null!;
        public int Steps;
        public string Context = "";
        public int[][] Clean = null!;
        public int[][]? Corrupt;
        public string Metric = "";
        public EffectsResult[] Ours = null!;
        public TimeSpan OurTime;
        public void Dispose() => Model?.Dispose();
    }

    [Fact]
    public void EffectsMatchTorch()
    {
        int seed = Random.Shared.Next();
        using var dir = new TempDir();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var cases = Cases.Select((c, i) =>
        {
            var rng = new Random(seed + i);
            return new Case
            {
                Arch = c.Arch, MetricKind = c.Metric, Zero = c.Zero, Rng = rng, Config = SmallConfig(rng, c.Arch),
                ModelDir = dir.File($"model{i}"), SaePath = dir.File($"saes{i}.safetensors"), Label = $"case {i} (seed {seed + i})",
            };
        }).ToList();
        try
        {
            string specs = dir.File("models.json");
            File.WriteAllText(specs, JsonSerializer.Serialize(cases.Select((c, i) => new { arch = c.Arch, config = c.Config, dtype = "f32", seed = seed + i, @out = c.ModelDir })));
            TorchReference.RunPython(EffectsReference.Script, "--make-models", specs);
            output.WriteLine($"models made in {sw.Elapsed.TotalSeconds:F1} s");
            foreach (var c in cases) Setup(c);
            var pending = cases.ToList();
            var failures = new List<string>();
            for (int attempt = 0; pending.Count > 0; attempt++)
            {
                Assert.True(attempt < 5, $"no inputs with SAE decisions clear of their boundaries in 5 draws: {string.Join("; ", pending.Select(c => c.Context))}");
                foreach (var c in pending) Draw(c, attempt);
                var t0 = sw.Elapsed;
                var answers = EffectsReference.RunJobs(dir.Path, pending.Select(Job).ToList());
                output.WriteLine($"oracle for {pending.Count} cases: {(sw.Elapsed - t0).TotalSeconds:F1} s");
                var redraw = new List<Case>();
                for (int i = 0; i < pending.Count; i++)
                {
                    var c = pending[i];
                    var reference = answers[i]!.AsObject();
                    double margin = Math.Min(reference["sae_margin"]?.GetValue<double>() ?? double.PositiveInfinity, reference["metric_margin"]?.GetValue<double>() ?? double.PositiveInfinity);
                    output.WriteLine(c.Context);
                    if (margin < MinMargin)
                    {
                        output.WriteLine($"an SAE decision is {margin:E1} from its boundary; redrawing the prompts");
                        redraw.Add(c);
                        continue;
                    }
                    failures.AddRange(CompareCase(c, reference, margin));
                }
                pending = redraw;
            }
            output.WriteLine($"total {sw.Elapsed.TotalSeconds:F1} s");
            Assert.True(failures.Count == 0, $"{failures.Count} effects beyond {Tolerance:E0}:\n" + string.Join("\n", failures.Take(40)) +
                                             (failures.Count > 40 ? $"\n... and {failures.Count - 40} more" : ""));
        }
        finally
        {
            foreach (var c in cases) c.Dispose();
        }
    }

    /// <summary>Loads the model; draws the SAEs, component hooks and IG steps.</summary>
    static void Setup(Case c)
    {
        var rng = c.Rng;
        var cfg = c.Config;
        int C = (int)cfg["d_model"], L = (int)cfg["n_layers"], NH = (int)cfg["n_heads"], HS = C / NH;
        c.Model = HookedTransformer.Load(c.ModelDir);
        // SAEs: resid (standard or gated), mlp_out (topk), hook_z (jumprelu; whole hook or one head); components elsewhere
        int lm = rng.Next(L), lz = rng.Next(L);
        bool residPost = rng.Next(2) == 0 || c.MetricKind == "feature";
        string residHook = residPost ? $"blocks.{L - 1}.hook_resid_post" : "blocks.0.hook_resid_pre";
        c.Saes =
        [
            SaeTestData.Random(rng, c.MetricKind == "feature" || rng.Next(2) == 0 ? SaeArchitecture.Standard : SaeArchitecture.Gated, C, rng.Next(20, 48), residHook),
            SaeTestData.Random(rng, SaeArchitecture.TopK, C, rng.Next(20, 48), $"blocks.{lm}.hook_mlp_out", k: rng.Next(2, 8)),
        ];
        if (rng.Next(2) == 0) c.Saes.Add(SaeTestData.Random(rng, SaeArchitecture.JumpRelu, C, rng.Next(20, 48), $"blocks.{lz}.attn.hook_z", inputScale: 0.5f));
        else
        {
            var head = SaeTestData.Random(rng, SaeArchitecture.JumpRelu, HS, rng.Next(12, 32), $"blocks.{lz}.attn.hook_z", inputScale: 0.5f);
            head.Config.Metadata.HookHeadIndex = rng.Next(NH);
            c.Saes.Add(head);
        }
        GradReference.WriteSaes(c.SaePath, c.Saes);
        c.Components =
        [
            $"blocks.{(residPost ? rng.Next(L) : rng.Next(1, L))}.hook_resid_pre",
            $"blocks.{(lz + 1 + rng.Next(L - 1)) % L}.attn.hook_z",
            $"blocks.{(lm + 1 + rng.Next(L - 1)) % L}.hook_mlp_out",
        ];
        c.Steps = rng.Next(3, 6);
    }

    /// <summary>Draws prompts and the metric, and computes our effects.</summary>
    static void Draw(Case c, int attempt)
    {
        var rng = c.Rng;
        int vocab = (int)c.Config["vocab"], NH = (int)c.Config["n_heads"];
        int pairs = rng.Next(1, 3);
        c.Clean = Enumerable.Range(0, pairs).Select(b => Enumerable.Range(0, rng.Next(4, 9) + b).Select(_ => rng.Next(vocab)).ToArray()).ToArray();
        c.Corrupt = c.Zero ? null : c.Clean.Select(x =>
        {
            var y = (int[])x.Clone();
            for (int k = rng.Next(1, 4); k > 0; k--) y[rng.Next(y.Length)] = rng.Next(vocab);
            return y;
        }).ToArray();
        c.Metric = c.MetricKind == "feature" ? FeatureMetric(c.Model, c.Saes[0], c.Clean) : GradientCheck.RandomMetric(rng, c.MetricKind, vocab, c.Clean);
        string saeList = string.Join(", ", c.Saes.Select(s => $"{SaeConfig.ArchitectureName(s.Config.Architecture)}@{s.Config.Metadata.HookName}" +
            (s.Config.Metadata.HookHeadIndex is int h ? $"[head {h}]" : "") + $" d_sae={s.DSae}" + (s.Config.K > 0 ? $" k={s.Config.K}" : "")));
        c.Context = $"{c.Label}, {c.Arch}, attempt {attempt}, metric {c.Metric}, {(c.Zero ? "zero ablation" : "corrupt prompts")}, " +
                    $"clean [{string.Join(" | ", c.Clean.Select(x => string.Join(",", x)))}]" +
                    (c.Corrupt == null ? "" : $", corrupt [{string.Join(" | ", c.Corrupt.Select(x => string.Join(",", x)))}]") +
                    $", IG steps {c.Steps}, config {JsonSerializer.Serialize(c.Config)}, SAEs {saeList}, components {string.Join(", ", c.Components)}";

        var sw = System.Diagnostics.Stopwatch.StartNew();
        var ctx = new CircuitContext(c.Model, c.Saes, c.Clean, c.Clean.Select(_ => Metric.Parse(c.Metric)).ToList(), c.Corrupt,
            c.Zero ? AblationKind.Zero : AblationKind.Corrupt);
        var select = new NodeSelection { Saes = true, Components = c.Components };
        var grad = Attribution.Run(ctx, select, AttributionMethod.Gradient);
        var gradHeads = Attribution.Run(ctx, new NodeSelection { Saes = false, Components = [c.Components[1]], HeadsAllPositions = true }, AttributionMethod.Gradient);
        var ig = Attribution.Run(ctx, select, AttributionMethod.IntegratedGradients, c.Steps);
        var exact = Patching.Run(ctx, Sample(rng, grad.Nodes.Select(n => n.Node).ToList(), c.Components[1], NH));
        c.Ours = [grad, gradHeads, ig, exact];
        c.OurTime = sw.Elapsed;
    }

    static JsonObject Job(Case c) => EffectsReference.Job(c.ModelDir, c.SaePath, c.Clean, c.Corrupt, c.Metric,
        c.Ours.Select(r => (r.Method switch { AttributionMethod.Gradient => "gradient", AttributionMethod.IntegratedGradients => "ig", _ => "exact" },
                            r.Steps ?? 0, (IReadOnlyList<Node>)r.Nodes.Select(n => n.Node).ToList())).ToList());

    List<string> CompareCase(Case c, JsonObject reference, double margin)
    {
        var failures = new List<string>();
        var grad = c.Ours[0];
        double cleanRef = reference["clean_metric"]!.AsArray().Sum(v => Math.Abs(v!.GetValue<double>()));
        double cleanSum = reference["clean_metric"]!.AsArray().Sum(v => v!.GetValue<double>());
        if (Math.Abs(grad.Clean - cleanSum) > Tolerance * Math.Max(Math.Abs(cleanSum), 1e-2))
            failures.Add($"clean metric {grad.Clean} vs torch {cleanSum} ({c.Context})");
        // the metric's own scale: the clean (and corrupt) metric values, summed in absolute value over prompts
        double metricScale = Math.Max(cleanRef, reference["corrupt_metric"] is JsonArray cm ? cm.Sum(v => Math.Abs(v!.GetValue<double>())) : 0);
        var worst = new SortedDictionary<string, (double Err, string At)>(StringComparer.Ordinal);
        var refTasks = reference["tasks"]!.AsArray();
        for (int t = 0; t < c.Ours.Length; t++)
        {
            var r = c.Ours[t];
            string method = r.Method switch { AttributionMethod.Gradient => "gradient", AttributionMethod.IntegratedGradients => "ig", _ => "exact" };
            var want = refTasks[t]!["effects"]!.AsArray().Select(v => v!.GetValue<double>()).ToArray();
            Assert.Equal(r.Nodes.Count, want.Length);
            double scale = Math.Max(want.Max(Math.Abs), metricScale), floor = FloorFraction * scale;
            for (int i = 0; i < want.Length; i++)
            {
                var n = r.Nodes[i];
                double diff = Math.Abs(n.Effect - want[i]), err = diff / Math.Max(Math.Abs(want[i]), floor);
                string key = $"{method} {n.Node.KindName}{(n.Node.Kind == NodeKind.Attn && n.Node.Pos < 0 ? " (all positions)" : "")}";
                if (!worst.TryGetValue(key, out var w) || err > w.Err)
                    worst[key] = (err, $"{n.Node}: ours {n.Effect:E6} torch {want[i]:E6}, |diff|/S {diff / scale:E1}");
                if (err > Tolerance) failures.Add($"{c.Label}: {method} {n.Node}: ours {n.Effect:E8}, torch {want[i]:E8}, error {err:E2} (floor {floor:E2}) ({c.Context})");
            }
        }
        output.WriteLine($"{c.Label}: {grad.Nodes.Count} gradient/IG nodes, {c.Ours[1].Nodes.Count} all-position heads, {c.Ours[3].Nodes.Count} patched; " +
                         $"decision margin {margin:E1}; oracle {reference["runs"]} runs in {reference["seconds"]!.GetValue<double>():F2} s; ours {c.OurTime.TotalSeconds:F2} s");
        foreach (var (k, v) in worst) output.WriteLine($"  worst {k}: {v.Err:E2} ({v.At})");
        return failures;
    }

    /// <summary>~20 nodes: features (the largest gradient effects and random ones), errors, resid, heads (per position and all positions), mlp.</summary>
    static List<Node> Sample(Random rng, List<Node> nodes, string hz, int nHeads)
    {
        var picked = new List<Node>();
        void Take(IEnumerable<Node> from, int count) => picked.AddRange(from.Where(n => !picked.Contains(n)).OrderBy(_ => rng.Next()).Take(count));
        foreach (var sae in nodes.Where(n => n.Kind == NodeKind.Feature).GroupBy(n => n.Hook)) Take(sae, 3);
        foreach (var sae in nodes.Where(n => n.Kind == NodeKind.Error).GroupBy(n => n.Hook)) Take(sae, 2);
        Take(nodes.Where(n => n.Kind == NodeKind.Resid), 3);
        Take(nodes.Where(n => n.Kind == NodeKind.Attn), 3);
        Take(nodes.Where(n => n.Kind == NodeKind.Mlp), 2);
        var h1 = rng.Next(nHeads);
        picked.Add(new Node(NodeKind.Attn, hz, -1, h1));
        picked.Add(new Node(NodeKind.Attn, hz, -1, (h1 + 1) % nHeads));
        return picked;
    }

    /// <summary>feature:HOOK:I for the latent of the SAE with the largest summed activation at the last position of the clean prompts.</summary>
    static string FeatureMetric(HookedTransformer model, Sae sae, int[][] clean)
    {
        var splice = new SaeSplice(sae, useErrorTerm: true);
        var cache = new ActivationCache { Lengths = clean.Select(s => s.Length).ToArray() };
        model.Run(clean, new RunOptions { Splices = [splice], CacheFilter = n => n == splice.ActsPostHook, Cache = cache });
        var sums = new double[sae.DSae];
        for (int b = 0; b < clean.Length; b++)
        {
            var acts = cache.Sequence(splice.ActsPostHook, b);
            int p = clean[b].Length - 1;
            for (int j = 0; j < sae.DSae; j++) sums[j] += acts.Data[p * sae.DSae + j];
        }
        int best = Array.IndexOf(sums, sums.Max());
        return $"feature:{splice.InputHook}:{best}";
    }
}

/// <summary>The effects oracle checks itself (gradient = small-step limit of exact, IG completeness, zero ablation).</summary>
public class EffectsReferenceSelfCheck
{
    [Fact]
    public void EffectsOracleIsConsistent()
    {
        string output = TorchReference.RunPython(EffectsReference.Script, "--selfcheck");
        Assert.Contains("\n0 failures", output);
    }
}
