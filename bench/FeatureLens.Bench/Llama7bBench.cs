using System.Diagnostics;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// (c) A Llama-7B-shaped bf16 folder (synth-model): load time, peak RSS and forward latency for 64 tokens.
/// Weights stay bf16 in a memory map; the GEMM converts them while packing.
/// </summary>
public static class Llama7bBench
{
    public static int Run(string[] args)
    {
        int repeats = args.Length > 0 ? int.Parse(args[0]) : 3;
        bool withTorch = !args.Contains("--no-torch");
        const int T = 64;
        string folder = Path.Combine(BenchSupport.ModelsDir(), "llama-7b-bf16");
        if (!File.Exists(Path.Combine(folder, "model.safetensors.index.json")))
        {
            AnsiConsole.MarkupLine($"[grey]writing {folder} (synth-model llama-7b bf16, ~13.5 GB)[/]");
            SyntheticModel.Write(folder, Architecture.Llama, "llama-7b", DType.BF16, 1);
        }
        var (load, runs, rss) = MeasureOurs(folder, T, repeats);
        double first = runs[0], warm = BenchSupport.Median(runs.Skip(1));

        var table = new Table().Border(TableBorder.Rounded).Title($"Llama-7B-shaped bf16 folder, forward of {T} tokens")
            .AddColumns("implementation", "load (s)", "first forward (s)", $"forward, median of {repeats} (s)", "tokens/s", "peak RSS (GiB)");
        table.AddRow("FeatureLens (bf16 mapped, f32 compute)", $"{load:F2}", $"{first:F2}", $"{warm:F2}", $"{T / warm:F1}", $"{rss:F2}");
        if (withTorch)
        {
            var j = BenchSupport.RunPythonJson("torch_forward.py", "--arch", "llama", "--model", folder, "--batch", "1", "--seq", T.ToString(),
                "--threads", "2", "--repeats", repeats.ToString());
            table.AddRow($"PyTorch {ForwardBench.TorchVersion()} (bf16 in memory, f32 compute per layer)", $"{j.GetProperty("load_s").GetDouble():F2}", "",
                $"{j.GetProperty("median_s").GetDouble():F2}", $"{j.GetProperty("tokens_per_s").GetDouble():F1}", $"{j.GetProperty("peak_rss_gib").GetDouble():F2}");
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine($"peak RSS target ≤ 16 GiB: [bold]{(rss <= 16 ? "met" : "NOT met")}[/] ({rss:F2} GiB; the mapped bf16 weights count toward RSS once touched)");
        return 0;
    }

    /// <summary>Load, one cold and <paramref name="repeats"/> warm forwards; the model is released before PyTorch runs.</summary>
    static (double Load, List<double> Runs, double PeakRss) MeasureOurs(string folder, int T, int repeats)
    {
        var sw = Stopwatch.StartNew();
        using var model = HookedTransformer.Load(folder);
        double load = sw.Elapsed.TotalSeconds;
        var rng = new Random(0);
        int[] tokens = Enumerable.Range(0, T).Select(_ => rng.Next(model.Config.VocabSize)).ToArray();
        var runs = new List<double>();
        for (int i = 0; i < repeats + 1; i++)
        {
            sw.Restart();
            var logits = model.Forward(tokens);
            runs.Add(sw.Elapsed.TotalSeconds);
            if (!float.IsFinite(logits.Data[^1])) throw new InvalidOperationException("non-finite logits");
        }
        return (load, runs, BenchSupport.PeakRssGiB());
    }
}
