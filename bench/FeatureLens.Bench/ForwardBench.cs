using System.Diagnostics;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// (b) GPT-2-small-shaped forward pass, batch 8 × 128 tokens, resid_post of all 12 layers cached and
/// logits computed: FeatureLens vs PyTorch (1 and 2 threads) on the same model folder, same run.
/// </summary>
public static class ForwardBench
{
    public static int Run(string[] args)
    {
        int repeats = args.Length > 0 ? int.Parse(args[0]) : 9;
        const int B = 8, T = 128;
        string folder = Path.Combine(BenchSupport.ModelsDir(), "gpt2-small-f32");
        if (!File.Exists(Path.Combine(folder, "config.json")))
        {
            AnsiConsole.MarkupLine($"[grey]writing {folder} (synth-model gpt2-small f32)[/]");
            SyntheticModel.Write(folder, Architecture.Gpt2, "gpt2-small", DType.F32, 1);
        }
        double peak = PeakFlops.Measure(Environment.ProcessorCount);

        using var model = HookedTransformer.Load(folder);
        var rng = new Random(0);
        int[][] tokens = Enumerable.Range(0, B).Select(_ => Enumerable.Range(0, T).Select(_ => rng.Next(model.Config.VocabSize)).ToArray()).ToArray();
        var filter = HookNames.Glob("blocks.*.hook_resid_post");
        model.RunWithCache(tokens, filter); // warm-up
        var ours = new List<double>();
        for (int i = 0; i < repeats; i++)
        {
            var sw = Stopwatch.StartNew();
            var (_, cache) = model.RunWithCache(tokens, filter);
            ours.Add(sw.Elapsed.TotalSeconds);
            if (cache.Count != 12) throw new InvalidOperationException("expected 12 cached residuals");
        }
        double oursTps = B * T / BenchSupport.Median(ours);

        var torch = new Dictionary<string, double>();
        foreach (string impl in new[] { "aten", "mkldnn" })
            foreach (int threads in new[] { 1, 2 })
            {
                var j = BenchSupport.RunPythonJson("torch_forward.py", "--arch", "gpt2", "--model", folder, "--batch", B.ToString(), "--seq", T.ToString(),
                    "--threads", threads.ToString(), "--repeats", repeats.ToString(), "--cache-resid", "--impl", impl);
                torch[$"{impl}/{threads}"] = j.GetProperty("tokens_per_s").GetDouble();
            }

        // FLOPs per token: 2·params of the matmuls per token + attention (2·2·T/2·C per layer on average) + unembedding
        var c = model.Config;
        double perToken = 2.0 * c.NLayers * (4.0 * c.DModel * c.DModel + 2.0 * c.DModel * c.DMlp) + 2.0 * c.NLayers * T * c.DModel + 2.0 * c.DModel * c.VocabSize;
        double peakTps = peak * 1e9 / perToken;

        var table = new Table().Border(TableBorder.Rounded).Title($"GPT-2-small forward, batch {B}×{T}, 12 resid_post cached + logits (median of {repeats})")
            .AddColumns("implementation", "tokens/s", "FeatureLens ÷ this", "% of peak");
        table.AddRow("FeatureLens (2 cores)", $"{oursTps:F0}", "1.00", $"{100 * oursTps / peakTps:F0}%");
        foreach (var (name, tps) in torch)
        {
            string label = name.StartsWith("aten") ? $"PyTorch {TorchVersion()} default (BLAS), {name[^1]} thread(s)" : $"PyTorch oneDNN (mkldnn tensors), {name[^1]} thread(s)";
            table.AddRow(label, $"{tps:F0}", $"{oursTps / tps:F2}", $"{100 * tps / peakTps:F0}%");
        }
        table.AddRow("machine peak (measured FMA, 2 cores)", $"{peakTps:F0}", "", $"{peak:F0} GFLOP/s; {perToken / 1e6:F0} MFLOP/token");
        AnsiConsole.Write(table);
        double bestDefault = Math.Max(torch["aten/1"], torch["aten/2"]);
        double bestDnn = Math.Max(torch["mkldnn/1"], torch["mkldnn/2"]);
        AnsiConsole.MarkupLine($"ratio vs PyTorch's best default setting: [bold]{oursTps / bestDefault:F2}×[/] (target ≥ 1.75×); vs its best oneDNN setting: {oursTps / bestDnn:F2}×");
        BenchSummary.Record("forward", $"GPT-2-small {B}×{T} vs PyTorch default (tok/s, % of peak)", $"{oursTps:F0} ({100 * oursTps / peakTps:F0} %)", $"{bestDefault:F0}", oursTps / bestDefault, "≥ 1.75× and ≥ 75 % of peak", oursTps / bestDefault >= 1.75 && oursTps / peakTps >= 0.75);
        BenchSummary.Record("forward", $"GPT-2-small {B}×{T} vs PyTorch oneDNN (tok/s)", $"{oursTps:F0}", $"{bestDnn:F0}", oursTps / bestDnn, "≥ 1.75×", oursTps / bestDnn >= 1.75);
        return 0;
    }

    static string? _torchVersion;
    internal static string TorchVersion()
    {
        if (_torchVersion != null) return _torchVersion;
        var psi = new ProcessStartInfo("/usr/bin/python3", ["-c", "import torch; print(torch.__version__)"]) { RedirectStandardOutput = true };
        using var p = Process.Start(psi)!;
        _torchVersion = p.StandardOutput.ReadToEnd().Trim();
        p.WaitForExit();
        return _torchVersion;
    }
}
