using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// SAE encode throughput at a GPT-2-small residual SAE shape (d_in 768 → d_sae 24576) on 4096 tokens, standard
/// ReLU and TopK k = 32: ours (<see cref="Sae.EncodeSparse"/>, what the analyses use, and the dense
/// <see cref="Sae.Encode"/>) against PyTorch running SAELens's encoder (bench/sae_torch.py) on as many threads
/// as we use, in the same run. Then one training step at that shape (SaeTrainer vs a PyTorch autograd + Adam step).
/// Options: --runs N (timed encodes per cell, default 7), --train-runs N (timed training steps, default 5),
/// --no-torch, --no-train.
/// </summary>
public static class SaeBench
{
    const int N = 4096, DIn = 768, DSae = 24576, K = 32;

    public static int Run(string[] args)
    {
        int runs = 7, trainRuns = 5;
        bool torch = true, train = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--runs": runs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--train-runs": trainRuns = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--no-torch": torch = false; break;
                case "--no-train": train = false; break;
                default:
                    Console.Error.WriteLine($"sae bench: unknown option '{args[i]}' (expected --runs N, --train-runs N, --no-torch, --no-train)");
                    return 2;
            }
        }
        if (runs < 1 || trainRuns < 1) { Console.Error.WriteLine("sae bench: --runs and --train-runs must be at least 1"); return 2; }
        int threads = Environment.ProcessorCount;
        double peak = PeakFlops.Measure(threads);
        AnsiConsole.MarkupLine($"machine peak (measured FMA, {threads} threads): [bold]{peak:F0}[/] GFLOP/s");

        Encode(runs, threads, peak, torch);
        if (train) TrainStep(trainRuns, threads, peak, torch);
        return 0;
    }

    // ───────────────────────────── encode ─────────────────────────────

    static void Encode(int runs, int threads, double peak, bool torch)
    {
        // x (N, DIn) ~ N(0, 1); W_enc ~ N(0, 1/DIn) so pre ~ N(0, 1) + b_enc; b_enc = -2.8 leaves ~60 of 24576
        // latents active per token under ReLU, like a trained SAE (the sparse result's size depends on it).
        var rng = new Random(0);
        var x = new Tensor([N, DIn], Gaussian(rng, N * DIn, 1.0));
        var wEnc = Gaussian(rng, DIn * DSae, 1 / Math.Sqrt(DIn));
        var wDec = Gaussian(rng, DSae * DIn, 1 / Math.Sqrt(DIn));
        var bEnc = Enumerable.Repeat(-2.8f, DSae).ToArray();
        var bDec = Gaussian(rng, DIn, 0.1);
        var standard = new Sae(new SaeConfig { Architecture = SaeArchitecture.Standard, DIn = DIn, DSae = DSae, DOut = DIn, ApplyBDecToInput = true },
            wEnc, bEnc, wDec, bDec);
        var topk = new Sae(new SaeConfig { Architecture = SaeArchitecture.TopK, DIn = DIn, DSae = DSae, DOut = DIn, K = K, ApplyBDecToInput = true },
            wEnc, bEnc, wDec, bDec);

        double flop = 2.0 * N * DIn * DSae;
        var ours = new Dictionary<string, double>();
        var l0 = new Dictionary<string, double>();
        foreach (var (name, sae) in new[] { ("standard", standard), ("topk", topk) })
        {
            SparseActivations? last = null;
            ours[$"{name}/sparse"] = MedianSeconds(() => last = sae.EncodeSparse(x), runs);
            l0[name] = last!.MeanL0;
            ours[$"{name}/dense"] = MedianSeconds(() => sae.Encode(x), runs);
            Console.Error.WriteLine($"  ours {name}: sparse {ours[$"{name}/sparse"]:F3} s, dense {ours[$"{name}/dense"]:F3} s, L0 {l0[name]:F1}");
        }

        Dictionary<string, double>? peer = null;
        string version = "";
        if (torch)
        {
            try
            {
                var j = BenchSupport.RunPythonJson("sae_torch.py", "encode", "--threads", threads.ToString(CultureInfo.InvariantCulture),
                    "--n", N.ToString(CultureInfo.InvariantCulture), "--d-in", DIn.ToString(CultureInfo.InvariantCulture),
                    "--d-sae", DSae.ToString(CultureInfo.InvariantCulture), "--k", K.ToString(CultureInfo.InvariantCulture),
                    "--runs", runs.ToString(CultureInfo.InvariantCulture));
                peer = j.GetProperty("seconds").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetDouble());
                version = j.GetProperty("torch").GetString() ?? "";
            }
            catch (Exception e) { AnsiConsole.MarkupLineInterpolated($"[yellow]torch timing skipped: {e.Message}[/]"); }
        }

        var table = new Table().Border(TableBorder.Rounded)
            .Title($"SAE encode, d_in {DIn} → d_sae {DSae}, {N} tokens, {threads} threads (median of {runs} after warm-up)")
            .AddColumn("architecture").AddColumn("implementation")
            .AddColumn(new TableColumn("tokens/s").RightAligned()).AddColumn(new TableColumn("GFLOP/s").RightAligned())
            .AddColumn(new TableColumn("% of peak").RightAligned()).AddColumn(new TableColumn("ours sparse ÷ this").RightAligned());
        string F0(double v) => v.ToString("F0", CultureInfo.InvariantCulture);
        foreach (string arch in new[] { "standard", "topk" })
        {
            string label = arch == "standard" ? "standard (ReLU)" : $"TopK k={K}";
            double reference = ours[$"{arch}/sparse"];
            void Row(string impl, double seconds) => table.AddRow(label, impl, F0(N / seconds), F0(flop / seconds / 1e9),
                $"{100 * flop / seconds / 1e9 / peak:F0}%", $"{seconds / reference:F2}×");
            Row($"FeatureLens EncodeSparse (L0 {l0[arch]:F1})", reference);
            Row("FeatureLens Encode (dense)", ours[$"{arch}/dense"]);
            if (peer != null)
            {
                Row($"PyTorch {version}, SAELens ops", peer[$"{arch}/saelens"]);
                Row($"PyTorch {version}, addmm + in-place", peer[$"{arch}/fused"]);
            }
        }
        table.AddRow("", "machine peak (measured FMA)", F0(peak * 1e9 / (flop / N)), F0(peak), "100%", "");
        AnsiConsole.Write(table);
        if (peer != null)
            foreach (string arch in new[] { "standard", "topk" })
            {
                double target = arch == "standard" ? 1.5 : 2.0;
                double vsSaeLens = peer[$"{arch}/saelens"] / ours[$"{arch}/sparse"];
                double vsBest = Math.Min(peer[$"{arch}/saelens"], peer[$"{arch}/fused"]) / ours[$"{arch}/sparse"];
                AnsiConsole.MarkupLine($"{arch}: EncodeSparse is [bold]{vsSaeLens:F2}×[/] PyTorch (SAELens ops), {vsBest:F2}× PyTorch's faster form (target ≥ {target:F1}×); " +
                                       $"dense Encode {peer[$"{arch}/saelens"] / ours[$"{arch}/dense"]:F2}× / {Math.Min(peer[$"{arch}/saelens"], peer[$"{arch}/fused"]) / ours[$"{arch}/dense"]:F2}×");
            }
    }

    // ───────────────────────────── training step ─────────────────────────────

    static void TrainStep(int runs, int threads, double peak, bool torch)
    {
        var rng = new Random(1);
        var batch = Gaussian(rng, N * DIn, 1.0);
        // Work model. Standard: five dense GEMMs of 2·N·DIn·DSae (forward encoder and decoder; backward dW_dec,
        // d(acts), dW_enc). TopK: only the forward encoder GEMM is dense; everything else touches k (+ k_aux) latents
        // per token (PyTorch's SAELens-style step still runs all five densely).
        double gemm = 2.0 * N * DIn * DSae;
        double FlopOf(string arch) => arch == "topk" ? gemm : 5 * gemm;
        var ours = new Dictionary<string, double>();
        var peer = new Dictionary<string, double>();
        string version = "";
        foreach (string arch in new[] { "standard", "topk" })
        {
            var options = new FeatureLens.Saes.Training.SaeTrainingOptions
            {
                Architecture = arch == "topk" ? SaeArchitecture.TopK : SaeArchitecture.Standard,
                DIn = DIn, DSae = DSae, K = K, BatchTokens = N, TotalTokens = (long)N * (runs + 2),
                L1Coefficient = 5.0, AuxKCoefficient = 1.0 / 32, DeadAfterTokens = N, // TopK: latents silent for a batch are dead, so AuxK runs
            };
            var trainer = new FeatureLens.Saes.Training.SaeTrainer(options);
            ours[arch] = MedianSeconds(() => trainer.Step(batch, N), runs);
            Console.Error.WriteLine($"  ours {arch} training step: {ours[arch]:F3} s");
            if (torch)
            {
                try
                {
                    var j = BenchSupport.RunPythonJson("sae_torch.py", "train", "--arch", arch, "--threads", threads.ToString(CultureInfo.InvariantCulture),
                        "--n", N.ToString(CultureInfo.InvariantCulture), "--d-in", DIn.ToString(CultureInfo.InvariantCulture),
                        "--d-sae", DSae.ToString(CultureInfo.InvariantCulture), "--k", K.ToString(CultureInfo.InvariantCulture),
                        "--runs", runs.ToString(CultureInfo.InvariantCulture), "--dead-after", N.ToString(CultureInfo.InvariantCulture));
                    peer[arch] = j.GetProperty("median_s").GetDouble();
                    version = j.GetProperty("torch").GetString() ?? "";
                }
                catch (Exception e) { AnsiConsole.MarkupLineInterpolated($"[yellow]torch training timing skipped: {e.Message}[/]"); }
            }
        }

        var table = new Table().Border(TableBorder.Rounded)
            .Title($"SAE training step (forward, backward, Adam), d_in {DIn} → d_sae {DSae}, {N} tokens, {threads} threads (median of {runs} after warm-up)")
            .AddColumn("architecture").AddColumn(new TableColumn("FeatureLens s/step").RightAligned()).AddColumn(new TableColumn("PyTorch s/step").RightAligned())
            .AddColumn(new TableColumn("ours ÷ PyTorch speed").RightAligned()).AddColumn(new TableColumn("ours tokens/s").RightAligned())
            .AddColumn(new TableColumn("ours GFLOP/s (work model)").RightAligned()).AddColumn(new TableColumn("% of peak").RightAligned());
        foreach (string arch in new[] { "standard", "topk" })
        {
            bool has = peer.TryGetValue(arch, out double p);
            table.AddRow(arch == "standard" ? "standard (ReLU + L1)" : $"TopK k={K} + AuxK", $"{ours[arch]:F3}", has ? $"{p:F3}" : "-",
                has ? $"{p / ours[arch]:F2}×" : "-", $"{N / ours[arch]:F0}",
                $"{FlopOf(arch) / ours[arch] / 1e9:F0} ({(arch == "topk" ? "1 GEMM" : "5 GEMMs")})", $"{100 * FlopOf(arch) / ours[arch] / 1e9 / peak:F0}%");
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLineInterpolated($"PyTorch {(version == "" ? "not run" : version)} (autograd, torch.optim.Adam, dense decoder as SAELens); peak {peak:F0} GFLOP/s; targets ≥ 1.5× (standard), ≥ 2× (TopK).");
    }

    // ───────────────────────────── helpers ─────────────────────────────

    /// <summary>Median wall seconds of <paramref name="runs"/> calls after one warm-up call.</summary>
    static double MedianSeconds(Action work, int runs)
    {
        work();
        var samples = new List<double>();
        for (int r = 0; r < runs; r++)
        {
            var sw = Stopwatch.StartNew();
            work();
            samples.Add(sw.Elapsed.TotalSeconds);
        }
        return BenchSupport.Median(samples);
    }

    static float[] Gaussian(Random rng, int count, double scale)
    {
        var a = new float[count];
        for (int i = 0; i < count; i++)
            a[i] = (float)(scale * Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        return a;
    }
}
