using System.Diagnostics;
using System.Globalization;
using System.Numerics.Tensors;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// (c) A Llama-7B-shaped bf16 folder (synth-model): load time, peak RSS and forward latency for 64 tokens.
/// Weights stay bf16 in a memory map; the GEMM converts them while packing. Where the CPU has AVX512_BF16, also the
/// <c>--compute bf16</c> forward: its time, speed-up over our float32 forward, and logit error / top-1 agreement against it.
/// </summary>
public static class Llama7bBench
{
    public static int Run(string[] args)
    {
        int at = Array.IndexOf(args, "--repeats");
        int repeats = at >= 0 && at + 1 < args.Length ? int.Parse(args[at + 1], CultureInfo.InvariantCulture)
            : args.Length > 0 && int.TryParse(args[0], CultureInfo.InvariantCulture, out int r) ? r : 3;
        bool withTorch = !args.Contains("--no-torch");
        const int T = 64;
        string folder = Path.Combine(BenchSupport.ModelsDir(), "llama-7b-bf16");
        if (!File.Exists(Path.Combine(folder, "model.safetensors.index.json")))
        {
            AnsiConsole.MarkupLine($"[grey]writing {folder} (synth-model llama-7b bf16, ~13.5 GB)[/]");
            SyntheticModel.Write(folder, Architecture.Llama, "llama-7b", DType.BF16, 1);
        }
        var (load, runs, rss, f32Logits) = MeasureOurs(folder, T, repeats, ComputeMode.Float32);
        double first = runs[0], warm = BenchSupport.Median(runs.Skip(1));
        (double Load, List<double> Runs, double PeakRss, float[] Logits)? bf = GemmBf16.IsSupported ? MeasureOurs(folder, T, repeats, ComputeMode.BFloat16) : null;

        var table = new Table().Border(TableBorder.Rounded).Title($"Llama-7B-shaped bf16 folder, forward of {T} tokens")
            .AddColumns("implementation", "load (s)", "first forward (s)", $"forward, median of {repeats} (s)", "tokens/s", "peak RSS (GiB)");
        table.AddRow("FeatureLens (bf16 mapped, f32 compute)", $"{load:F2}", $"{first:F2}", $"{warm:F2}", $"{T / warm:F1}", $"{rss:F2}");
        double bfWarm = 0;
        if (bf is { } b)
        {
            bfWarm = BenchSupport.Median(b.Runs.Skip(1));
            table.AddRow("FeatureLens (--compute bf16: vdpbf16ps)", $"{b.Load:F2}", $"{b.Runs[0]:F2}", $"{bfWarm:F2}", $"{T / bfWarm:F1}", $"{b.PeakRss:F2}");
        }
        if (withTorch)
        {
            var j = BenchSupport.RunPythonJson("torch_forward.py", "--arch", "llama", "--model", folder, "--batch", "1", "--seq", T.ToString(),
                "--threads", "2", "--repeats", repeats.ToString());
            double torchS = j.GetProperty("median_s").GetDouble();
            BenchSummary.Record("llama7b", $"Llama-7B bf16 forward, {T} tokens, float32 compute (s)", $"{warm:F2}", $"{torchS:F2}", torchS / warm);
            table.AddRow($"PyTorch {ForwardBench.TorchVersion()} (bf16 in memory, f32 compute per layer)", $"{j.GetProperty("load_s").GetDouble():F2}", "",
                $"{j.GetProperty("median_s").GetDouble():F2}", $"{j.GetProperty("tokens_per_s").GetDouble():F1}", $"{j.GetProperty("peak_rss_gib").GetDouble():F2}");
        }
        AnsiConsole.Write(table);
        if (bf is { } c)
        {
            var (maxAbs, meanRel, top1) = Accuracy(f32Logits, c.Logits, T);
            AnsiConsole.MarkupLine($"--compute bf16: [bold]{warm / bfWarm:F2}×[/] our float32 forward (target ≥ 1.8×: {(warm / bfWarm >= 1.8 ? "met" : "NOT met")}); " +
                $"vs float32 logits: max |Δlogit| {maxAbs.Abs:F4} ({maxAbs.Rel:F4} of the logits' std), mean |Δlogit| {meanRel:F5} of the std, top-1 agreement {top1}/{T}");
            BenchSummary.Record("llama7b", $"--compute bf16 vs our float32 forward (s; top-1 {top1}/{T})", $"{bfWarm:F2}", $"{warm:F2}", warm / bfWarm, "≥ 1.8×", warm / bfWarm >= 1.8);
        }
        else AnsiConsole.MarkupLine($"[grey]--compute bf16 not measured: {Markup.Escape(GemmBf16.UnsupportedReason ?? "")}[/]");
        AnsiConsole.MarkupLine($"peak RSS target ≤ 16 GiB: [bold]{(rss <= 16 ? "met" : "NOT met")}[/] ({rss:F2} GiB; the mapped bf16 weights count toward RSS once touched)");
        BenchSummary.Record("llama7b", "peak RSS", $"{rss:F2} GiB", "", null, "≤ 16 GiB", rss <= 16);
        return 0;
    }

    /// <summary>max |Δ| (absolute, and over the float32 logits' std), mean |Δ| over that std, and top-1 agreement over the T positions.</summary>
    static ((double Abs, double Rel) Max, double MeanRel, int Top1) Accuracy(float[] f32, float[] bf, int T)
    {
        int V = f32.Length / T, top1 = 0;
        double sum = 0, sumSq = 0, maxAbs = 0, sumAbs = 0;
        for (int i = 0; i < f32.Length; i++)
        {
            sum += f32[i]; sumSq += (double)f32[i] * f32[i];
            double d = Math.Abs((double)bf[i] - f32[i]);
            maxAbs = Math.Max(maxAbs, d); sumAbs += d;
        }
        for (int t = 0; t < T; t++)
            if (TensorPrimitives.IndexOfMax(f32.AsSpan(t * V, V)) == TensorPrimitives.IndexOfMax(bf.AsSpan(t * V, V))) top1++;
        double mean = sum / f32.Length, std = Math.Sqrt(sumSq / f32.Length - mean * mean);
        return ((maxAbs, maxAbs / std), sumAbs / f32.Length / std, top1);
    }

    /// <summary>Load, one cold and <paramref name="repeats"/> warm forwards (last logits kept); the model is released before PyTorch runs.</summary>
    static (double Load, List<double> Runs, double PeakRss, float[] Logits) MeasureOurs(string folder, int T, int repeats, ComputeMode compute)
    {
        var sw = Stopwatch.StartNew();
        using var model = HookedTransformer.Load(folder);
        model.Compute = compute;
        double load = sw.Elapsed.TotalSeconds;
        var rng = new Random(0);
        int[] tokens = Enumerable.Range(0, T).Select(_ => rng.Next(model.Config.VocabSize)).ToArray();
        var runs = new List<double>();
        float[] last = [];
        var process = Process.GetCurrentProcess();
        for (int i = 0; i < repeats + 1; i++)
        {
            process.Refresh();
            var cpu0 = process.TotalProcessorTime;
            sw.Restart();
            var logits = model.Forward(tokens);
            runs.Add(sw.Elapsed.TotalSeconds);
            process.Refresh();
            // the CPU time says how much of the wall time the process really ran (a shared core shows as cpu < wall)
            AnsiConsole.MarkupLine($"[grey]{compute} forward {i}: wall {runs[^1]:F2} s, process CPU {(process.TotalProcessorTime - cpu0).TotalSeconds:F2} s[/]");
            if (!float.IsFinite(logits.Data[^1])) throw new InvalidOperationException("non-finite logits");
            last = logits.Data;
        }
        return (load, runs, BenchSupport.PeakRssGiB(), last);
    }
}
