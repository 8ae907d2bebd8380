using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// forward-arch: float32 forward tokens/s of the Gemma 2 and Llama 3.x architectures at their real widths
/// (synth-model gemma-2-2b and llama-3.2-1b, truncated to --layers blocks so a run stays within minutes; embeddings and
/// unembedding whole), batch 4 × 128 with full logits: FeatureLens vs bench/arch_forward_torch.py (the same forward
/// written from the formulas in PyTorch, reading the same safetensors) with 1 and 2 threads, same run, and the
/// agreement of the two implementations' logits at the last position of each sequence.
/// Options: --presets a,b (default gemma-2-2b,llama-3.2-1b; any real-shape preset), --model DIR (a folder instead),
/// --layers N (default 4), --batch B (4), --seq T (128), --repeats R (3), --no-torch.
/// </summary>
public static class ForwardArchBench
{
    public static int Run(string[] args)
    {
        string Opt(string name, string fallback)
        {
            int i = Array.IndexOf(args, name);
            return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
        }
        int layers = int.Parse(Opt("--layers", "4"), CultureInfo.InvariantCulture);
        int B = int.Parse(Opt("--batch", "4"), CultureInfo.InvariantCulture);
        int T = int.Parse(Opt("--seq", "128"), CultureInfo.InvariantCulture);
        int repeats = int.Parse(Opt("--repeats", "3"), CultureInfo.InvariantCulture);
        bool withTorch = !args.Contains("--no-torch");
        var folders = new List<(string Label, string Folder)>();
        if (Opt("--model", "") is { Length: > 0 } model) folders.Add((Path.GetFileName(Path.GetFullPath(model).TrimEnd('/')), Path.GetFullPath(model)));
        else
            foreach (string preset in Opt("--presets", "gemma-2-2b,llama-3.2-1b").Split(','))
                folders.Add(($"{preset}, first {layers} of {SyntheticModel.Preset(preset).NLayers} layers", EnsureFolder(preset, layers)));

        double peak = PeakFlops.Measure(Environment.ProcessorCount);
        foreach (var (label, folder) in folders) RunOne(label, folder, B, T, repeats, withTorch, peak);
        return 0;
    }

    /// <summary>bench/models/PRESET-LN-f32, written once (after checking the free disk space).</summary>
    static string EnsureFolder(string preset, int layers)
    {
        string folder = Path.Combine(BenchSupport.ModelsDir(), $"{preset}-L{layers}-f32");
        if (File.Exists(Path.Combine(folder, "config.json")) && Directory.GetFiles(folder, "*.safetensors").Length > 0) return folder;
        var config = SyntheticModel.Truncate(SyntheticModel.Preset(preset), layers);
        long bytes = SyntheticModel.TensorShapes(config).Sum(t => Tensor.ElementCount(t.Shape)) * 4;
        DiskSpace.Require(BenchSupport.ModelsDir(), bytes, $"synth-model {preset} --layers {layers} (f32)");
        AnsiConsole.MarkupLine($"[grey]writing {folder} (synth-model {preset} --layers {layers}, f32, {bytes / 1e9:F1} GB)[/]");
        SyntheticModel.Write(folder, config, DType.F32, 1);
        return folder;
    }

    static void RunOne(string label, string folder, int B, int T, int repeats, bool withTorch, double peak)
    {
        var config = HfConfigJson(folder);
        var rng = new Random(0);
        int[][] tokens = [.. Enumerable.Range(0, B).Select(_ => Enumerable.Range(0, T).Select(_ => rng.Next(config.Vocab)).ToArray())];
        string tokFile = Path.Combine(Path.GetTempPath(), $"featurelens-forward-arch-{Environment.ProcessId}.tokens");
        string logitsFile = tokFile + ".logits";
        File.WriteAllBytes(tokFile, MemoryMarshal.AsBytes(tokens.SelectMany(t => t).ToArray().AsSpan()).ToArray());
        try
        {
            // Ours first (the model is released before PyTorch runs).
            double? oursTps = null;
            float[]? ours = null;
            string? oursError = null;
            try
            {
                using var m = HookedTransformer.Load(folder);
                var logits = m.Forward(tokens); // warm-up
                var times = new List<double>();
                for (int i = 0; i < repeats; i++)
                {
                    var sw = Stopwatch.StartNew();
                    logits = m.Forward(tokens);
                    times.Add(sw.Elapsed.TotalSeconds);
                }
                oursTps = B * T / BenchSupport.Median(times);
                int V = m.Config.VocabSize;
                ours = new float[B * V];
                for (int b = 0; b < B; b++) Array.Copy(logits.Data, ((long)b * T + T - 1) * V, ours, (long)b * V, V);
            }
            catch (Exception e) when (e is NotSupportedException or FormatException or InvalidDataException or ArgumentException or KeyNotFoundException)
            {
                oursError = e.Message;
            }

            var torch = new List<(int Threads, double Tps, double Max)>();
            float[]? theirs = null;
            if (withTorch)
                foreach (int threads in new[] { 1, 2 })
                {
                    var j = BenchSupport.RunPythonJson("arch_forward_torch.py", "--model", folder, "--tokens", tokFile, "--batch", $"{B}", "--seq", $"{T}",
                        "--threads", $"{threads}", "--repeats", $"{repeats}", "--logits-out", logitsFile);
                    torch.Add((threads, j.GetProperty("tokens_per_s").GetDouble(), j.GetProperty("max_abs_logit").GetDouble()));
                    theirs = MemoryMarshal.Cast<byte, float>(File.ReadAllBytes(logitsFile)).ToArray();
                }

            double perToken = FlopsPerToken(config, T);
            double peakTps = peak * 1e9 / perToken;
            var table = new Table().Border(TableBorder.Rounded)
                .Title($"{Markup.Escape(label)} ({config.ModelType}), float32 forward, batch {B}×{T}, full logits (median of {repeats}); {BenchSupport.CpuName()}")
                .AddColumns("implementation", "tokens/s", "FeatureLens ÷ this", "% of peak");
            table.AddRow("FeatureLens (2 cores)", oursTps is double o ? $"{o:F0}" : "[red]cannot run yet[/]", oursTps is null ? "" : "1.00",
                oursTps is double o2 ? $"{100 * o2 / peakTps:F0}%" : "");
            foreach (var (threads, tps, _) in torch)
                table.AddRow($"PyTorch {ForwardBench.TorchVersion()} (formulas, aten/OpenBLAS), {threads} thread(s)", $"{tps:F0}",
                    oursTps is double o3 ? $"{o3 / tps:F2}" : "", $"{100 * tps / peakTps:F0}%");
            table.AddRow("machine peak (measured FMA, 2 cores)", $"{peakTps:F0}", "", $"{peak:F0} GFLOP/s; {perToken / 1e9:F2} GFLOP/token");
            AnsiConsole.Write(table);
            if (oursTps is double ot && torch.Count > 0)
            {
                double bestTorch = torch.Max(t => t.Item2);
                BenchSummary.Record("forward-arch", $"{label} {B}×{T} (tok/s, % of peak)", $"{ot:F0} ({100 * ot / peakTps:F0} %)", $"{bestTorch:F0}", ot / bestTorch);
            }
            if (oursError is not null) AnsiConsole.MarkupLine($"[yellow]FeatureLens could not load {Markup.Escape(folder)}: {Markup.Escape(oursError)}[/]");
            if (ours is not null && theirs is not null)
            {
                double maxDiff = 0, maxAbs = 0;
                for (int i = 0; i < ours.Length; i++)
                {
                    maxDiff = Math.Max(maxDiff, Math.Abs(ours[i] - theirs[i]));
                    maxAbs = Math.Max(maxAbs, Math.Abs(theirs[i]));
                }
                AnsiConsole.MarkupLine($"logits agreement (last position of {B} sequences × {ours.Length / B} tokens): max |Δ| = [bold]{maxDiff:E2}[/], " +
                    $"max |logit| = {maxAbs:F2}, relative {maxDiff / Math.Max(maxAbs, 1e-30):E2}");
            }
        }
        finally
        {
            File.Delete(tokFile);
            File.Delete(logitsFile);
        }
    }

    sealed record Shape(string ModelType, int C, int Layers, int Heads, int KvHeads, int HeadDim, int Mlp, int Vocab, bool Gated, int[] Windows);

    /// <summary>The numbers FLOPs depend on, from config.json itself (the runtime's reader may not know the family yet).</summary>
    static Shape HfConfigJson(string folder)
    {
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllBytes(Path.Combine(folder, "config.json")));
        var r = doc.RootElement;
        int Get(string name, int fallback = 0) => r.TryGetProperty(name, out var v) && v.ValueKind == System.Text.Json.JsonValueKind.Number ? v.GetInt32() : fallback;
        string type = r.GetProperty("model_type").GetString()!;
        int c = Get("hidden_size"), heads = Get("num_attention_heads"), layers = Get("num_hidden_layers");
        int window = Get("sliding_window");
        bool useSliding = !r.TryGetProperty("use_sliding_window", out var us) || us.ValueKind != System.Text.Json.JsonValueKind.False;
        int[] windows = [.. Enumerable.Range(0, layers).Select(l => type switch
        {
            "gemma2" => l % 2 == 0 ? window : 0,
            "mistral" => window,
            "qwen2" => useSliding && l >= Get("max_window_layers") ? window : 0,
            _ => 0,
        })];
        return new Shape(type, c, layers, heads, Get("num_key_value_heads", heads), Get("head_dim", c / heads), Get("intermediate_size"),
            Get("vocab_size"), type != "gpt_neox", windows);
    }

    /// <summary>
    /// Multiply-adds × 2 per token: the projections (q, k, v, o), the MLP (3 matrices gated, 2 plain), attention scores and
    /// weighted values over the keys each query sees on average (≤ window), and the unembedding.
    /// </summary>
    static double FlopsPerToken(Shape s, int T)
    {
        double proj = (double)s.C * s.HeadDim * (2 * s.Heads + 2 * s.KvHeads);
        double mlp = (s.Gated ? 3.0 : 2.0) * s.C * s.Mlp;
        double attn = 0;
        foreach (int w in s.Windows)
        {
            double keys = Enumerable.Range(0, T).Average(i => w > 0 ? Math.Min(i + 1, w) : i + 1);
            attn += 2.0 * keys * s.Heads * s.HeadDim;
        }
        return 2.0 * (s.Layers * (proj + mlp) + (double)s.C * s.Vocab) + 2.0 * attn;
    }
}
