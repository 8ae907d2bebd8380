using System.Diagnostics;
using System.Globalization;
using FeatureLens.Connections;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// The backward pass's memory on a Llama-7B-shaped bf16 folder (the same synth-model folder as <see cref="Llama7bBench"/>):
/// <see cref="HookedTransformer.RunWithGradients"/> of a logit difference at the last of 64 tokens, keeping the gradient at
/// every blocks.L.hook_resid_post. Reports the first call (weights read from disk through the memory map), the warm calls,
/// and the process's peak RSS (VmHWM; target ≤ 16 GiB). A watchdog thread stops the process when its RSS passes 20 GiB
/// (the machine has 24). Then, unless --no-torch, PyTorch autograd on the same folder (bench/grad7b_torch.py: bf16
/// weights in memory, bf16 matmuls — a float32 upcast of the weights would not fit: autograd keeps each for the backward).
/// Options: [repeats] (warm calls, default 2), --no-torch.
/// </summary>
public static class Grad7bBench
{
    const int T = 64, TokenA = 5, TokenB = 7;
    const double KillAboveGiB = 20;

    public static int Run(string[] args)
    {
        int repeats = args.Length > 0 && int.TryParse(args[0], NumberStyles.None, CultureInfo.InvariantCulture, out int r) ? r : 2;
        bool withTorch = !args.Contains("--no-torch");
        string folder = Path.Combine(BenchSupport.ModelsDir(), "llama-7b-bf16");
        if (!File.Exists(Path.Combine(folder, "model.safetensors.index.json")))
        {
            AnsiConsole.MarkupLine($"[grey]writing {folder} (synth-model llama-7b bf16, ~13.5 GB)[/]");
            SyntheticModel.Write(folder, Architecture.Llama, "llama-7b", DType.BF16, 1);
        }
        using var watchdog = RssWatchdog.Start(KillAboveGiB, "grad7b");
        var (load, runs, rss, layers) = MeasureOurs(folder, repeats);
        double first = runs[0], warm = BenchSupport.Median(runs.Skip(1));

        var table = new Table().Border(TableBorder.Rounded)
            .Title($"Llama-7B-shaped bf16 folder, {T} tokens: forward + backward of logit-diff({TokenA},{TokenB}) at the last position, gradient kept at all {layers} hook_resid_post")
            .AddColumns("implementation", "load (s)", "first call (s)", $"warm call, median of {repeats} (s)", "peak RSS (GiB)");
        table.AddRow("FeatureLens RunWithGradients (bf16 mapped, f32 compute)", $"{load:F2}", $"{first:F2}", $"{warm:F2}", $"{rss:F2}");
        if (withTorch)
        {
            try
            {
                var j = BenchSupport.RunPythonJson("grad7b_torch.py", "--model", folder, "--seq", T.ToString(CultureInfo.InvariantCulture),
                    "--threads", "2", "--repeats", repeats.ToString(CultureInfo.InvariantCulture), "--token-a", TokenA.ToString(CultureInfo.InvariantCulture),
                    "--token-b", TokenB.ToString(CultureInfo.InvariantCulture), "--kill-above-gib", KillAboveGiB.ToString(CultureInfo.InvariantCulture));
                table.AddRow($"PyTorch {ForwardBench.TorchVersion()} autograd (bf16 in memory, bf16 matmuls), 2 threads", $"{j.GetProperty("load_s").GetDouble():F2}",
                    $"{j.GetProperty("first_s").GetDouble():F2}", $"{j.GetProperty("median_s").GetDouble():F2}", $"{j.GetProperty("peak_rss_gib").GetDouble():F2}");
            }
            catch (Exception e) { AnsiConsole.MarkupLineInterpolated($"[yellow]PyTorch skipped: {e.Message}[/]"); }
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLineInterpolated($"CPU: {BenchSupport.CpuName()}");
        BenchSummary.Record("grad7b", "Llama-7B bf16 gradient, peak RSS", $"{rss:F2} GiB", "", null, "≤ 16 GiB", rss <= 16);
        AnsiConsole.MarkupLine($"peak RSS target ≤ 16 GiB: [bold]{(rss <= 16 ? "met" : "NOT met")}[/] ({rss:F2} GiB; the mapped bf16 weights count toward RSS once touched)");
        return 0;
    }

    /// <summary>Load, one cold and <paramref name="repeats"/> warm calls; the model is released before PyTorch runs.</summary>
    static (double Load, List<double> Runs, double PeakRss, int Layers) MeasureOurs(string folder, int repeats)
    {
        var sw = Stopwatch.StartNew();
        using var model = HookedTransformer.Load(folder);
        double load = sw.Elapsed.TotalSeconds;
        var rng = new Random(0);
        int[][] tokens = [Enumerable.Range(0, T).Select(_ => rng.Next(model.Config.VocabSize)).ToArray()];
        var metric = Metric.LogitDiff(TokenA, TokenB, -1);
        var options = new GradientOptions { GradFilter = HookNames.Glob("blocks.*.hook_resid_post") };
        var runs = new List<double>();
        for (int i = 0; i < repeats + 1; i++)
        {
            sw.Restart();
            var g = model.RunWithGradients(tokens, metric, options);
            runs.Add(sw.Elapsed.TotalSeconds);
            if (g.Gradients.Count != model.Config.NLayers) throw new InvalidOperationException($"expected {model.Config.NLayers} gradients, got {g.Gradients.Count}");
            if (!float.IsFinite(g.Value) || g.Gradients.Values.Any(t => !float.IsFinite(t.Data[^1])))
                throw new InvalidOperationException("non-finite metric or gradient");
            Console.Error.WriteLine($"  ours: call {i + 1}: {runs[^1]:F2} s, metric {g.Value:G6}, RSS {RssGiB("VmRSS"):F2} GiB (anonymous {RssGiB("RssAnon"):F2}, " +
                                    $"mapped files {RssGiB("RssFile"):F2}; peak {BenchSupport.PeakRssGiB():F2}), GC heap {GC.GetTotalMemory(false) / 1073741824.0:F2} GiB");
        }
        return (load, runs, BenchSupport.PeakRssGiB(), model.Config.NLayers);
    }

    static double RssGiB(string field) => BenchSupport.StatusGiB(field);
}
