using System.Diagnostics;
using System.Globalization;
using System.Numerics.Tensors;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;
using System.Text.Json;
using FeatureLens.Connections;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// Attribution patching with SAEs on the GPT-2-small shape, batch 8 × 128: 12 random TopK SAEs (768 → 24576, k 32)
/// spliced with their error term at blocks.L.hook_resid_post, L = 0..11. One iteration is
/// (1) a corrupt forward keeping every SAE's latents and error (hook_sae_acts_post, hook_sae_error) at all positions
///     (it stops after block 11: nothing reads its logits),
/// (2) a clean forward (full logits) + backward of logit-diff(token_a, token_b) at the last position of each sequence
///     (summed), keeping the latents, errors and their gradients,
/// (3) the attribution effects (a′ − a)·grad of every latent (B,T,m) and every error node (summed over d_model: (B,T)).
/// Ours is <see cref="HookedTransformer.Run"/> + <see cref="HookedTransformer.RunWithGradients"/> in this process on all
/// cores; the peer is PyTorch autograd (bench/attribution_torch.py) on the same model folder, SAE folders and tokens, at
/// 1 and 2 threads, in the same run. Both sides' metric and a sample of effects are compared (sanity check, relative
/// error ≤ 1e-3). Options: --runs N (timed iterations after one warm-up, default 3), --no-torch.
/// </summary>
public static class AttributionBench
{
    const int B = 8, T = 128, DSae = 24576, K = 32, TokenA = 5, TokenB = 7;

    public static int Run(string[] args)
    {
        int runs = 3;
        bool withTorch = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--runs": runs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--no-torch": withTorch = false; break;
                default:
                    Console.Error.WriteLine($"attribution bench: unknown option '{args[i]}' (expected --runs N, --no-torch)");
                    return 2;
            }
        }
        if (runs < 1) { Console.Error.WriteLine("attribution bench: --runs must be at least 1"); return 2; }

        string models = BenchSupport.ModelsDir();
        string folder = Path.Combine(models, "gpt2-small-f32");
        if (!File.Exists(Path.Combine(folder, "config.json")))
        {
            AnsiConsole.MarkupLine($"[grey]writing {folder} (synth-model gpt2-small f32)[/]");
            SyntheticModel.Write(folder, Architecture.Gpt2, "gpt2-small", DType.F32, 1);
        }
        var c = SyntheticModel.Preset(Architecture.Gpt2, "gpt2-small");
        string saeDir = Path.Combine(models, "attribution-saes");
        WriteSaesIfAbsent(saeDir, c.NLayers, c.DModel);
        var (clean, corrupt) = Tokens(c.VocabSize);
        string tokenFile = Path.Combine(models, "attribution-tokens.json");
        File.WriteAllText(tokenFile, JsonSerializer.Serialize(new { clean, corrupt, token_a = TokenA, token_b = TokenB }));

        int threads = Environment.ProcessorCount;
        double peak = PeakFlops.Measure(threads);

        // ---- PyTorch first, while this process holds nothing big (the two sides' heaps together may not fit in 24 GiB) ----
        var torch = new Dictionary<int, JsonElement>();
        if (withTorch)
            foreach (int t in new[] { 1, 2 })
            {
                try
                {
                    torch[t] = BenchSupport.RunPythonJson("attribution_torch.py", "--model", folder, "--saes", saeDir, "--tokens", tokenFile,
                        "--threads", t.ToString(CultureInfo.InvariantCulture), "--runs", runs.ToString(CultureInfo.InvariantCulture));
                    Console.Error.WriteLine($"  PyTorch {t} thread(s): {torch[t].GetProperty("median_s").GetDouble():F2} s (runs {string.Join(", ", torch[t].GetProperty("runs").EnumerateArray().Select(x => x.GetDouble().ToString("F2", CultureInfo.InvariantCulture)))}), peak RSS {torch[t].GetProperty("peak_rss_gib").GetDouble():F2} GiB");
                }
                catch (Exception e) { AnsiConsole.MarkupLineInterpolated($"[yellow]PyTorch at {t} thread(s) skipped: {e.Message}[/]"); }
            }

        // ---- ours ----
        using var watchdog = RssWatchdog.Start(20, "attribution");
        using var model = HookedTransformer.Load(folder);
        var saes = Enumerable.Range(0, c.NLayers).Select(l => SaeLoader.Load(Path.Combine(saeDir, $"blocks.{l}.hook_resid_post"))).ToList();
        var splices = saes.Select(s => (IHookSplice)new SaeSplice(s, useErrorTerm: true)).ToList();
        var hooks = saes.Select(s => s.Config.HookName).ToArray();
        var nodeNames = new HashSet<string>(hooks.SelectMany(h => new[] { h + ".hook_sae_acts_post", h + ".hook_sae_error" }), StringComparer.Ordinal);
        var metric = Metric.LogitDiff(TokenA, TokenB, -1);
        Effects Iteration()
        {
            var sw = Stopwatch.StartNew();
            var pause0 = GC.GetTotalPauseDuration();
            int gen2 = GC.CollectionCount(2);
            long faults0 = BenchSupport.MinorFaults();
            var corruptCache = new ActivationCache { Lengths = corrupt.Select(t => t.Length).ToArray() };
            model.Run(corrupt, new RunOptions { CacheFilter = nodeNames.Contains, Cache = corruptCache, Splices = splices, ReturnLogits = false });
            double tCorrupt = sw.Elapsed.TotalSeconds;
            // latent gradients only where a latent is active on the clean or corrupt run (what attribution reads; the
            // library's Attribution.Run does the same): the dense W_dec·g product is skipped
            var active = hooks.ToDictionary(h => h + ".hook_sae_acts_post", h => (Tensor?)corruptCache[h + ".hook_sae_acts_post"], StringComparer.Ordinal);
            var r = model.RunWithGradients(clean, metric, new GradientOptions
            {
                CacheFilter = nodeNames.Contains, GradFilter = nodeNames.Contains, Splices = splices, ActiveLatentGradients = active,
            });
            double tClean = sw.Elapsed.TotalSeconds;
            var e = Effects.Of(hooks, corruptCache, r);
            corruptCache.Dispose();   // its buffers go back to the pool for the next run (r is kept by the effects for the check)
            Console.Error.WriteLine($"  ours: corrupt forward {tCorrupt:F2} s, clean forward + backward {tClean - tCorrupt:F2} s, effects {sw.Elapsed.TotalSeconds - tClean:F2} s; RSS {BenchSupport.StatusGiB("VmRSS"):F2} GiB; GC pauses {(GC.GetTotalPauseDuration() - pause0).TotalSeconds:F2} s, {GC.CollectionCount(2) - gen2} gen-2 collections; {(BenchSupport.MinorFaults() - faults0) * 4 / 1024.0 / 1024.0:F2} GiB of fresh pages touched");
            return e;
        }
        long allocated0 = GC.GetTotalAllocatedBytes();
        var ours = Iteration(); // warm-up
        var samples = new List<double>();
        for (int i = 0; i < runs; i++)
        {
            // the previous iteration's buffers go back to the pool first, as a tool running one attribution after another does
            ours.Dispose();
            var sw = Stopwatch.StartNew();
            ours = Iteration();
            samples.Add(sw.Elapsed.TotalSeconds);
            Console.Error.WriteLine($"  ours: {samples[^1]:F2} s");
        }
        double oursS = BenchSupport.Median(samples);
        long allocated = GC.GetTotalAllocatedBytes() - allocated0;
        double oursPeakRss = BenchSupport.PeakRssGiB();
        Console.Error.WriteLine($"  ours: peak RSS {oursPeakRss:F2} GiB, {allocated / 1073741824.0 / (runs + 1):F1} GiB allocated per iteration");

        // ---- the work, in GEMM FLOPs (n = B·T tokens; per layer the linear layers have 4C² + 2CM weights) ----
        // forward of the blocks, each pass:     n·(2L(4C² + 2CM) + 2L·T·C)           (attention: QKᵀ and PV over T/2 keys on average)
        // unembedding, clean pass only:          2·n·C·V                               (the corrupt pass stops after block 11)
        // backward (activation gradients only):  n·(2L(4C² + 2CM) + 4L·T·C)           (every linear once; dQ, dK, dV, dP: twice the attention forward)
        //                                        + 2·B·C·V                             (the metric's B logit rows)
        // SAEs, each of the 12:                  encoder 2·n·C·m per pass (×2), TopK decoder 2·n·k·C per pass (×2), decoder backward
        //                                        W_dec·g at the ≤ 2k latents active on either run 2·n·2k·C (PyTorch's dense decoders
        //                                        do 2·n·m·C per pass and its backward W_dec·g 2·n·C·m for every latent: not counted)
        int L = c.NLayers, C = c.DModel, M = c.DMlp, V = c.VocabSize, n = B * T, S = saes.Count;
        double blocksFwd = (double)n * (2.0 * L * (4.0 * C * C + 2.0 * C * M) + 2.0 * L * T * C);
        double unembed = 2.0 * n * C * V;
        double blocksBwd = (double)n * (2.0 * L * (4.0 * C * C + 2.0 * C * M) + 4.0 * L * T * C) + 2.0 * B * C * V;
        double saeFlop = S * (2 * 2.0 * n * C * DSae + 2 * 2.0 * n * K * C + 2.0 * n * 2 * K * C);
        double flop = 2 * blocksFwd + unembed + blocksBwd + saeFlop;
        double torchExtra = S * (2 * 2.0 * n * DSae * C + 2.0 * n * C * DSae); // dense decoders and the dense W_dec·g, for the note

        // ---- agreement ----
        var checks = new List<string>();
        double worst = 0;
        if (torch.Count > 0)
        {
            var j = torch.Values.First();
            double tm = j.GetProperty("metric").GetDouble();
            double rel = Math.Abs(ours.Metric - tm) / Math.Max(Math.Abs(tm), 1e-6);
            worst = Math.Max(worst, rel);
            checks.Add($"metric {ours.Metric:G6} vs {tm:G6} (rel. error {rel:E1})");
            int compared = 0;
            double worstLatent = 0, worstError = 0;
            foreach (var h in j.GetProperty("sample").EnumerateArray())
            {
                string hook = h.GetProperty("hook").GetString()!;
                var (lat, err) = ours.PerHook[hook];
                // relative to the hook's largest |effect| (a bench sanity check, not a test: entries near 0 carry no information)
                double latScale = h.GetProperty("max_abs_latent").GetDouble(), errScale = h.GetProperty("max_abs_error").GetDouble();
                foreach (var e in h.GetProperty("latent").EnumerateArray())
                {
                    int b = e[0].GetInt32(), t = e[1].GetInt32(), f = e[2].GetInt32();
                    double theirs = e[3].GetDouble(), mine = lat.Data[((long)b * T + t) * DSae + f];
                    worstLatent = Math.Max(worstLatent, Math.Abs(mine - theirs) / latScale);
                    compared++;
                }
                foreach (var e in h.GetProperty("error").EnumerateArray())
                {
                    int b = e[0].GetInt32(), t = e[1].GetInt32();
                    double theirs = e[2].GetDouble(), mine = err.Data[(long)b * T + t];
                    worstError = Math.Max(worstError, Math.Abs(mine - theirs) / errScale);
                    compared++;
                }
            }
            worst = Math.Max(worst, Math.Max(worstLatent, worstError));
            checks.Add($"{compared} sampled effects (per hook the 4 largest latent effects and the 8 last-position error effects): " +
                       $"worst |ours − PyTorch| ÷ the hook's largest |effect| = {worstLatent:E1} (latents), {worstError:E1} (errors)");
        }

        // ---- table ----
        string version = torch.Count > 0 ? torch.Values.First().GetProperty("torch").GetString() ?? "" : "";
        var table = new Table().Border(TableBorder.Rounded)
            .Title($"Attribution patching, GPT-2-small shape, batch {B}×{T}, {S} TopK SAEs (768 → {DSae}, k {K}, error term): corrupt forward + clean forward + backward + effects (median of {runs} after warm-up)")
            .AddColumn("implementation").AddColumn(new TableColumn("s / iteration").RightAligned())
            .AddColumn(new TableColumn("FeatureLens ÷ this (speed)").RightAligned()).AddColumn(new TableColumn("GFLOP/s (work model)").RightAligned())
            .AddColumn(new TableColumn("% of peak").RightAligned()).AddColumn(new TableColumn("peak RSS (GiB)").RightAligned());
        void Row(string label, double s, double rss) => table.AddRow(label, $"{s:F2}", $"{s / oursS:F2}×", $"{flop / s / 1e9:F0}", $"{100 * flop / s / 1e9 / peak:F0}%", $"{rss:F2}");
        Row($"FeatureLens ({threads} cores)", oursS, oursPeakRss);
        foreach (var (t, j) in torch) Row($"PyTorch {version} autograd, {t} thread(s)", j.GetProperty("median_s").GetDouble(), j.GetProperty("peak_rss_gib").GetDouble());
        table.AddRow($"machine peak (measured FMA, {threads} cores)", $"{flop / (peak * 1e9):F2}", "", $"{peak:F0}", "100%", "");
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLineInterpolated($"CPU: {BenchSupport.CpuName()}; work model {flop / 1e9:F0} GFLOP per iteration (blocks forward {2 * blocksFwd / 1e9:F0}, unembedding {unembed / 1e9:F0}, backward {blocksBwd / 1e9:F0}, SAEs {saeFlop / 1e9:F0}); PyTorch's dense decoders and dense W_dec·g add {torchExtra / 1e9:F0} GFLOP of its own.");
        foreach (string line in checks) AnsiConsole.MarkupLineInterpolated($"check: {line}");
        if (torch.Count > 0)
        {
            AnsiConsole.MarkupLineInterpolated($"agreement (relative error ≤ 1e-3): {(worst <= 1e-3 ? "ok" : "NOT ok")}");
            double best = torch.Values.Min(j => j.GetProperty("median_s").GetDouble());
            AnsiConsole.MarkupLine($"target ≥ 2× PyTorch's best thread setting: {(best / oursS >= 2 ? "met" : "NOT met")}");
            BenchSummary.Record("attribution", $"GPT-2-small {B}×{T}, {S} SAEs: s per iteration", $"{oursS:F2} s", $"{best:F2} s", best / oursS, "≥ 2×", best / oursS >= 2);
            AnsiConsole.MarkupLine($"attribution: {best / oursS:F2}× PyTorch");
            return worst <= 1e-3 ? 0 : 1;
        }
        return 0;
    }

    /// <summary>Our effects: per hook, the latents' (B,T,m) and the errors' (B,T); the gradient result is kept for the check.</summary>
    sealed record Effects(float Metric, Dictionary<string, (Tensor Latent, Tensor Error)> PerHook, GradientResult? Result) : IDisposable
    {
        /// <summary>Hands every buffer back to the pool.</summary>
        public void Dispose()
        {
            foreach (var (lat, _) in PerHook.Values) BufferPool.Return(lat.Data);
            Result?.Dispose();
        }

        public static Effects Of(string[] hooks, ActivationCache corrupt, GradientResult r)
        {
            var perHook = new Dictionary<string, (Tensor, Tensor)>(StringComparer.Ordinal);
            var results = new (Tensor, Tensor)[hooks.Length];
            Parallel.For(0, hooks.Length, i =>
            {
                string post = hooks[i] + ".hook_sae_acts_post", err = hooks[i] + ".hook_sae_error";
                // latents: (a′ − a)·grad
                var a = r.Activations[post].Data; var g = r.Gradients[post].Data;
                var lat = new Tensor([B, T, DSae], BufferPool.Rent(B * T * DSae));   // every entry is written
                TensorPrimitives.Subtract(corrupt[post].Data, a, lat.Data);
                TensorPrimitives.Multiply(lat.Data, g, lat.Data);
                // error nodes: Σ_d (e′ − e)·grad, one per position
                var e = r.Activations[err].Data; var ge = r.Gradients[err].Data; var ec = corrupt[err].Data;
                int d = r.Activations[err].Shape[^1];
                var errEffect = new Tensor([B, T]);
                var diff = new float[d];
                for (int row = 0; row < B * T; row++)
                {
                    TensorPrimitives.Subtract(ec.AsSpan(row * d, d), e.AsSpan(row * d, d), diff);
                    errEffect.Data[row] = TensorPrimitives.Dot(diff, ge.AsSpan(row * d, d));
                }
                results[i] = (lat, errEffect);
            });
            for (int i = 0; i < hooks.Length; i++) perHook[hooks[i]] = results[i];
            return new Effects(r.Value, perHook, r);
        }
    }

    /// <summary>12 random TopK SAEs (k 32), one per blocks.L.hook_resid_post, written once as SAELens folders (both sides read them).</summary>
    internal static void WriteSaesIfAbsent(string dir, int layers, int dIn)
    {
        for (int l = 0; l < layers; l++)
        {
            string hook = $"blocks.{l}.hook_resid_post", sub = Path.Combine(dir, hook);
            if (File.Exists(Path.Combine(sub, SaeWriter.ConfigFile)) && File.Exists(Path.Combine(sub, SaeWriter.WeightsFile))) continue;
            AnsiConsole.MarkupLine($"[grey]writing {sub} (random TopK SAE, {dIn} → {DSae}, k {K})[/]");
            SaeWriter.Save(RandomTopK(new Random(100 + l), dIn, hook), sub);
        }
    }

    /// <summary>W_enc, W_dec ~ N(0, 1/d_in); b_enc ~ N(0, 0.1²), b_dec ~ N(0, 0.1²) (nonzero, so both sides apply them alike).</summary>
    static Sae RandomTopK(Random rng, int dIn, string hook)
    {
        float G() => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        var wEnc = new float[(long)dIn * DSae]; for (long i = 0; i < wEnc.Length; i++) wEnc[i] = G() / MathF.Sqrt(dIn);
        var wDec = new float[(long)DSae * dIn]; for (long i = 0; i < wDec.Length; i++) wDec[i] = G() / MathF.Sqrt(dIn);
        var bEnc = new float[DSae]; for (int i = 0; i < bEnc.Length; i++) bEnc[i] = 0.1f * G();
        var bDec = new float[dIn]; for (int i = 0; i < bDec.Length; i++) bDec[i] = 0.1f * G();
        var cfg = new SaeConfig
        {
            Architecture = SaeArchitecture.TopK, DIn = dIn, DSae = DSae, DOut = dIn, K = K, ApplyBDecToInput = true,
            Metadata = new SaeMetadata { HookName = hook },
        };
        return new Sae(cfg, wEnc, bEnc, wDec, bDec);
    }

    /// <summary>Clean: random tokens (seed 0). Corrupt: the same with 16 random positions of each sequence replaced.</summary>
    static (int[][] Clean, int[][] Corrupt) Tokens(int vocab)
    {
        var rng = new Random(0);
        var clean = Enumerable.Range(0, B).Select(_ => Enumerable.Range(0, T).Select(_ => rng.Next(vocab)).ToArray()).ToArray();
        var corrupt = clean.Select(s => (int[])s.Clone()).ToArray();
        foreach (var s in corrupt)
            for (int i = 0; i < 16; i++) s[rng.Next(T)] = rng.Next(vocab);
        return (clean, corrupt);
    }
}
