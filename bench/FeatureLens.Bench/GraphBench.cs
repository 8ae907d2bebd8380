using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// Attribution graphs (<see cref="GraphRun.Compute"/>: the local replacement model, direct-effect rows by batched backward
/// passes with node selection by influence, pruning) in two settings:
/// (1) stories260K (../shared/models/stories260K) with 5 random TopK transcoders (64 → 1024, k 16, the suite's shape), 64 tokens;
/// (2) the GPT-2-small shape (synth-model gpt2-small f32) with 12 random TopK transcoders (768 → 24576, k 32), 128 tokens,
///     at most 7500 feature nodes.
/// Tokens are random (seed 0) after BOS. The peer (bench/graph_torch.py) is PyTorch doing the same rows the way circuit-tracer
/// does — one clean forward, the frozen replacement model as one autograd graph over a batch of prompt copies, one
/// autograd.grad per batch of targets — for exactly the targets FeatureLens computed rows for (its selected features and the
/// logit nodes), at 2 threads, in the same run. Ours also pays for what the peer skips: influence estimates during selection
/// and pruning. Sampled rows are compared (relative to the row's largest entry). Options: --case stories|gpt2|all,
/// --max-feature-nodes N (default 7500), --no-torch.
/// </summary>
public static class GraphBench
{
    public static int Run(string[] args)
    {
        string which = "all";
        int maxFeatures = 7500;
        bool withTorch = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--case": which = args[++i]; break;
                case "--max-feature-nodes": maxFeatures = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--no-torch": withTorch = false; break;
                default:
                    Console.Error.WriteLine($"graph bench: unknown option '{args[i]}' (expected --case stories|gpt2|all, --max-feature-nodes N, --no-torch)");
                    return 2;
            }
        }
        if (which is not ("stories" or "gpt2" or "all")) { Console.Error.WriteLine($"graph bench: --case '{which}': expected stories, gpt2 or all"); return 2; }
        string models = BenchSupport.ModelsDir();
        var table = new Table().Border(TableBorder.Rounded)
            .Title("Attribution graphs: replacement model + direct-effect rows (batched backward passes) + selection + pruning, one run each")
            .AddColumns("setting", "rows", "sources", "FeatureLens s", "PyTorch s (2 threads)", "FeatureLens ÷ PyTorch (speed)", "FeatureLens peak RSS GiB", "PyTorch peak RSS GiB", "sampled rows: worst |Δ| ÷ row max");
        double? lastRatio = null;
        var ratios = new List<double>();
        if (which is "stories" or "all")
        {
            string stories = Path.Combine(BenchSupport.RepoRoot(), "..", "shared", "models", "stories260K", "stories260K.bin");
            if (!File.Exists(stories)) AnsiConsole.MarkupLine($"[yellow]stories260K not found at {Markup.Escape(stories)}: case skipped[/]");
            else
            {
                string tcDir = Path.Combine(models, "graph-transcoders-stories260K");
                using var m = HookedTransformer.Load(stories);
                WriteTranscodersIfAbsent(tcDir, m.Config.NLayers, m.Config.DModel, 1024, 16);
                lastRatio = Case("stories260K, 5 transcoders × 1024, 64 tokens", m, stories, tcDir, 64, maxFeatures, withTorch, table);
                if (lastRatio is double r) ratios.Add(r);
            }
        }
        if (which is "gpt2" or "all")
        {
            string folder = Path.Combine(models, "gpt2-small-f32");
            if (!File.Exists(Path.Combine(folder, "config.json")))
            {
                AnsiConsole.MarkupLine($"[grey]writing {folder} (synth-model gpt2-small f32)[/]");
                SyntheticModel.Write(folder, Architecture.Gpt2, "gpt2-small", DType.F32, 1);
            }
            string tcDir = Path.Combine(models, "graph-transcoders-gpt2");
            using var m = HookedTransformer.Load(folder);
            WriteTranscodersIfAbsent(tcDir, m.Config.NLayers, m.Config.DModel, 24576, 32);
            lastRatio = Case($"GPT-2-small shape, 12 transcoders × 24576, 128 tokens, ≤ {maxFeatures} features", m, folder, tcDir, 128, maxFeatures, withTorch, table);
            if (lastRatio is double r) ratios.Add(r);
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLineInterpolated($"CPU: {BenchSupport.CpuName()}, {Environment.ProcessorCount} cores");
        if (ratios.Count > 0)
        {
            AnsiConsole.MarkupLine($"target ≥ 2× PyTorch: {(ratios.Min() >= 2 ? "met" : "NOT met")}");
            AnsiConsole.MarkupLine($"graph: {ratios.Min():F2}× PyTorch");
            BenchSummary.Record("graph", "attribution graph, slowest case (speed)", "", "", ratios.Min(), "≥ 2×", ratios.Min() >= 2);
        }
        return 0;
    }

    static double? Case(string label, HookedTransformer m, string modelPath, string tcDir, int T, int maxFeatures, bool withTorch, Table table)
    {
        var rng = new Random(0);
        int bos = m.Config.BosTokenId ?? 1;
        int[] tokens = [bos, .. Enumerable.Range(1, T - 1).Select(_ => rng.Next(3, m.Config.VocabSize))];
        var tcs = SaeLoader.LoadAll(tcDir);
        AnsiConsole.MarkupLineInterpolated($"[grey]{label}: FeatureLens…[/]");
        var sw = Stopwatch.StartNew();
        var result = GraphRun.Compute(m, tcs, tokens, new GraphRunOptions { MaxFeatureNodes = maxFeatures });
        double ours = sw.Elapsed.TotalSeconds;
        double oursRss = BenchSupport.PeakRssGiB();
        var g = result.Graph;
        var targets = Enumerable.Range(0, g.Rows.Count).Select(r => g.Nodes[g.RowNode(r)]).ToList();
        int S = result.Replacement.Sources.Count;
        Console.Error.WriteLine($"  ours: {ours:F2} s, {targets.Count} rows over {S} sources, {result.Pruned.KeptNodeCount} nodes kept; peak RSS {oursRss:F2} GiB");

        string theirs = "", theirsRss = "", ratio = "", check = "";
        double? speed = null;
        if (withTorch)
        {
            int[] sample = [0, targets.Count / 2, targets.Count - 1];
            string workFile = Path.Combine(BenchSupport.ModelsDir(), "graph-work.json");
            File.WriteAllText(workFile, JsonSerializer.Serialize(new
            {
                tokens,
                targets = targets.Select(t => new[] { t.Kind == GraphNodeKind.Logit ? 3 : 0, t.Layer, t.Pos, t.Index }).ToArray(),
                sample,
            }));
            try
            {
                AnsiConsole.MarkupLineInterpolated($"[grey]{label}: PyTorch…[/]");
                var j = BenchSupport.RunPythonJson("graph_torch.py", "--model", modelPath, "--transcoders", tcDir, "--work", workFile, "--threads", "2");
                double t = j.GetProperty("seconds").GetDouble();
                theirs = $"{t:F2}"; theirsRss = $"{j.GetProperty("peak_rss_gib").GetDouble():F2}";
                speed = t / ours; ratio = $"{speed:F2}×";
                if (j.GetProperty("sources").GetInt32() != S) check = $"source counts differ ({j.GetProperty("sources").GetInt32()} vs {S}): not compared";
                else
                {
                    // our rows for the sampled targets, dense over every source (the graph keeps selected columns only)
                    var st = sample.Select(i => targets[i]).ToList();
                    var rows = new float[st.Count * S]; var inputs = new float[st.Count]; var biases = new float[st.Count];
                    result.Replacement.ComputeRows(st, rows, inputs, biases);
                    double worst = 0;
                    int k = 0;
                    foreach (var s in j.GetProperty("sample").EnumerateArray())
                    {
                        var top = s.GetProperty("top").EnumerateArray().ToList();
                        double max = Math.Abs(top[0][1].GetDouble());
                        foreach (var e in top)
                            worst = Math.Max(worst, Math.Abs(rows[k * S + e[0].GetInt32()] - e[1].GetDouble()) / Math.Max(max, 1e-30));
                        k++;
                    }
                    check = $"{worst:E1} over {k} rows × 8 largest entries";
                }
                Console.Error.WriteLine($"  PyTorch: {t:F2} s, peak RSS {theirsRss} GiB");
            }
            catch (Exception e) { AnsiConsole.MarkupLineInterpolated($"[yellow]PyTorch skipped: {e.Message}[/]"); }
        }
        table.AddRow(label, targets.Count.ToString(CultureInfo.InvariantCulture), S.ToString(CultureInfo.InvariantCulture), $"{ours:F2}", theirs, ratio, $"{oursRss:F2}", theirsRss, check);
        return speed;
    }

    /// <summary>Random TopK transcoders (ln2.hook_normalized → hook_mlp_out), one per layer, written once as SAELens folders.</summary>
    static void WriteTranscodersIfAbsent(string dir, int layers, int d, int dSae, int k)
    {
        for (int l = 0; l < layers; l++)
        {
            string hook = $"blocks.{l}.ln2.hook_normalized", sub = Path.Combine(dir, $"blocks.{l}.hook_mlp_out");
            if (File.Exists(Path.Combine(sub, SaeWriter.ConfigFile)) && File.Exists(Path.Combine(sub, SaeWriter.WeightsFile))) continue;
            AnsiConsole.MarkupLine($"[grey]writing {sub} (random TopK transcoder, {d} → {dSae}, k {k})[/]");
            var rng = new Random(200 + l);
            float G() => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
            var wEnc = new float[(long)d * dSae]; for (long i = 0; i < wEnc.Length; i++) wEnc[i] = G() / MathF.Sqrt(d);
            var wDec = new float[(long)dSae * d]; for (long i = 0; i < wDec.Length; i++) wDec[i] = G() / MathF.Sqrt(dSae);
            var bEnc = new float[dSae]; for (int i = 0; i < bEnc.Length; i++) bEnc[i] = 0.1f * G();
            var bDec = new float[d]; for (int i = 0; i < bDec.Length; i++) bDec[i] = 0.1f * G();
            var cfg = new SaeConfig
            {
                Architecture = SaeArchitecture.TopKTranscoder, DIn = d, DSae = dSae, DOut = d, K = k,
                Metadata = new SaeMetadata { HookName = hook, HookNameOut = $"blocks.{l}.hook_mlp_out" },
            };
            SaeWriter.Save(new Sae(cfg, wEnc, bEnc, wDec, bDec), sub);
        }
    }
}
