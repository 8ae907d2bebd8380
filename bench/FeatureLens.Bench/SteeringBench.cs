using System.Diagnostics;
using System.Globalization;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Steering;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// Steered generation vs plain generation, greedy with the KV cache, N new tokens, on stories260K and (with --gpt2) the
/// GPT-2-small-shaped synthetic model: one direction added at a mid-depth residual hook at every position (the steering
/// `featurelens steer --vector` does). Runs alternate plain / steered; medians over --runs N (default 9). The target:
/// steering at most 5 % slower. The last line is `steering: N.N % slower than plain generation` (the stories260K case,
/// or the GPT-2 case when run).
/// </summary>
public static class SteeringBench
{
    public static int Run(string[] args)
    {
        int runs = 9, tokens = 200;
        bool gpt2 = false;
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--runs") runs = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--tokens") tokens = int.Parse(args[++i], CultureInfo.InvariantCulture);
            else if (args[i] == "--gpt2") gpt2 = true;
            else throw new ArgumentException($"steering bench: unknown option {args[i]} (--runs N, --tokens N, --gpt2)");
        }
        string shared = Path.Combine(BenchSupport.RepoRoot(), "..", "shared");
        var rows = new List<(string Case, int Tokens, double Plain, double Steered)>();
        using (var m = HookedTransformer.Load(Path.Combine(shared, "models", "stories260K", "stories260K.bin")))
            rows.Add(Measure("stories260K", m, tokens, runs));
        if (gpt2)
        {
            string folder = Path.Combine(BenchSupport.ModelsDir(), "gpt2-small-f32");
            if (!File.Exists(Path.Combine(folder, "config.json"))) SyntheticModel.Write(folder, Architecture.Gpt2, "gpt2-small", DType.F32, 1);
            using var g = HookedTransformer.Load(folder);
            rows.Add(Measure("GPT-2 small (synthetic)", g, Math.Min(tokens, 64), Math.Max(3, runs / 3)));
        }
        var t = new Table().Border(TableBorder.Rounded).AddColumns("model", "new tokens", "plain (ms, median)", "steered (ms, median)", "slower");
        foreach (var r in rows)
            t.AddRow(r.Case, r.Tokens.ToString(CultureInfo.InvariantCulture), (r.Plain * 1e3).ToString("F2", CultureInfo.InvariantCulture),
                (r.Steered * 1e3).ToString("F2", CultureInfo.InvariantCulture), Slower(r).ToString("F1", CultureInfo.InvariantCulture) + " %");
        AnsiConsole.MarkupLine($"CPU: {Markup.Escape(BenchSupport.CpuName())}, {runs} runs, greedy, KV cache");
        AnsiConsole.Write(t);
        Console.WriteLine($"steering: {Slower(rows[^1]).ToString("F1", CultureInfo.InvariantCulture)} % slower than plain generation");
        foreach (var r in rows)
            BenchSummary.Record("steering", $"{r.Case}: steered vs plain generation (ms)", (r.Steered * 1e3).ToString("F2", CultureInfo.InvariantCulture),
                (r.Plain * 1e3).ToString("F2", CultureInfo.InvariantCulture), r.Plain / r.Steered, "≤ 5 % slower", Slower(r) <= 5);
        return 0;
    }

    static double Slower((string, int, double Plain, double Steered) r) => (r.Steered / r.Plain - 1) * 100;

    static (string, int, double, double) Measure(string name, HookedTransformer m, int tokens, int runs)
    {
        int[] prompt = [m.Config.BosTokenId ?? 1];
        int L = m.Config.NLayers, d = m.Config.DModel;
        var rng = new Random(1);
        var dir = Enumerable.Range(0, d).Select(_ => (float)(rng.NextDouble() - 0.5) * 0.01f).ToArray();
        var steerer = new Steerer(m, [new SteeringAddition($"blocks.{L / 2}.hook_resid_post", dir, 1f, "bench")], []);
        // a run that stops early at BOS/EOS is scaled per generated token
        var greedy = new SamplingOptions();
        double Plain() { var sw = Stopwatch.StartNew(); int n = m.Generate(prompt, tokens, greedy).Count(); return sw.Elapsed.TotalSeconds / Math.Max(1, n) * tokens; }
        double Steered() { var sw = Stopwatch.StartNew(); int n = steerer.Generate(prompt, 1f, tokens, greedy).Tokens.Length; return sw.Elapsed.TotalSeconds / Math.Max(1, n) * tokens; }
        Plain(); Steered();   // warm-up
        var p = new List<double>(); var s = new List<double>();
        for (int i = 0; i < runs; i++) { p.Add(Plain()); s.Add(Steered()); }
        return (name, tokens, BenchSupport.Median(p), BenchSupport.Median(s));
    }
}
