using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Saes.Training;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Saes;

public class SaeTrainingTests(ITestOutputHelper output)
{
    static SaeArchitecture Arch(string name) => name switch
    {
        "standard" => SaeArchitecture.Standard,
        "topk" => SaeArchitecture.TopK,
        "jumprelu" => SaeArchitecture.JumpRelu,
        _ => throw new ArgumentException(name),
    };

    internal static float[] Gaussian(Random rng, long n, double scale)
    {
        var a = new float[n];
        for (long i = 0; i < n; i++)
        {
            double u1 = 1 - rng.NextDouble(), u2 = rng.NextDouble();
            a[i] = (float)(scale * Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return a;
    }

    // ───────────────────────── gradients and one Adam step against PyTorch autograd ─────────────────────────

    [Theory]
    [InlineData("standard", true, false)]
    [InlineData("standard", true, true)]
    [InlineData("standard", false, true)]
    [InlineData("topk", true, false)]
    [InlineData("topk", false, false)]
    [InlineData("jumprelu", false, false)]
    [InlineData("jumprelu", true, false)]
    public void Gradients_and_one_Adam_step_match_torch_autograd(string arch, bool applyBDec, bool sparseLatents)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        // sparseLatents: ~2 % of latents fire (b_enc ≈ −2.2) and d_in ≥ 64, which sends the standard SAE down the
        // trainer's sparse backward (blocks at most 5 % dense) and its 64-column row-sum kernel
        int d = sparseLatents ? rng.Next(64, 100) : rng.Next(12, 40), m = sparseLatents ? rng.Next(300, 500) : rng.Next(48, 128);
        int n = rng.Next(24, 64), k = rng.Next(2, 9);
        double bandwidth = 0.4;
        var o = new SaeTrainingOptions
        {
            Architecture = Arch(arch), DIn = d, DSae = m, K = k, BatchTokens = n, TotalTokens = 10L * n,
            L1Coefficient = 0.05 + rng.NextDouble() * 0.2, L0Coefficient = 0.01 + rng.NextDouble() * 0.05,
            AuxKCoefficient = 0.1 + rng.NextDouble(), JumpReluBandwidth = bandwidth, DeadAfterTokens = 1000,
            ApplyBDecToInput = applyBDec, LearningRate = 1e-3, Seed = (ulong)seed,
        };
        var trainer = new SaeTrainer(o);
        var sae = trainer.Sae;
        float[] x, logTheta = [];
        bool[] dead = new bool[m];
        // draw until no pre-activation sits within 3e-5 of a kink (ReLU at 0, θ, θ ± ε/2, top-k ties): a float32
        // versus float64 difference there would flip a discrete choice and compare different functions
        int attempt = 0;
        while (true)
        {
            Gaussian(rng, (long)d * m, 1 / Math.Sqrt(d)).CopyTo(sae.WEnc, 0);
            Gaussian(rng, m, 0.3).CopyTo(sae.BEnc, 0);
            if (sparseLatents) for (int j = 0; j < m; j++) sae.BEnc[j] -= 2.2f;
            Gaussian(rng, (long)m * d, 0.3).CopyTo(sae.WDec, 0);
            Gaussian(rng, d, 0.3).CopyTo(sae.BDec, 0);
            x = Gaussian(rng, (long)n * d, 1.0);
            if (arch == "jumprelu")
            {
                logTheta = new float[m];
                for (int j = 0; j < m; j++) logTheta[j] = (float)Math.Log(0.2 + 0.4 * rng.NextDouble());
                trainer.SetLogThreshold(logTheta);
            }
            for (int j = 0; j < m; j++) dead[j] = rng.NextDouble() < 0.4;
            if (KinksAreFar(arch, x, sae, n, k, dead, bandwidth, applyBDec)) break;
            Assert.True(++attempt < 200, $"seed {seed}: no draw without near-kink pre-activations");
        }
        sae.InvalidateDecoderNorms();
        if (arch == "topk") for (int j = 0; j < m; j++) if (dead[j]) trainer.SetTokensSinceFired(j, o.DeadAfterTokens);

        using var dir = new TempDir();
        string inPath = dir.File("in.safetensors"), outPath = dir.File("out.safetensors");
        var w = new SafetensorsWriter();
        void Add(string name, float[] a, params int[] shape) => w.Add(name, new Tensor(shape, (float[])a.Clone()));
        Add("W_enc", sae.WEnc, d, m); Add("b_enc", sae.BEnc, m); Add("W_dec", sae.WDec, m, d); Add("b_dec", sae.BDec, d);
        Add("x", x, n, d);
        if (arch == "jumprelu") Add("log_threshold", logTheta, m);
        Add("dead_mask", dead.Select(b => b ? 1f : 0f).ToArray(), m);
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        w.Write(inPath, new Dictionary<string, string>
        {
            ["arch"] = arch, ["k"] = k.ToString(inv),
            ["coef"] = (arch == "jumprelu" ? o.L0Coefficient : o.L1Coefficient).ToString("R", inv),
            ["bandwidth"] = bandwidth.ToString("R", inv), ["aux_coef"] = o.AuxKCoefficient.ToString("R", inv),
            ["apply_b_dec"] = applyBDec ? "1" : "0", ["lr"] = o.LearningRate.ToString("R", inv),
            ["beta1"] = o.Beta1.ToString("R", inv), ["beta2"] = o.Beta2.ToString("R", inv), ["eps"] = o.AdamEpsilon.ToString("R", inv),
        });
        TorchReference.RunPython(Path.Combine(AppContext.BaseDirectory, "python", "sae_grad_reference.py"), inPath, outPath);

        var grads = trainer.ComputeGradients(x, n);
        using var r = SafetensorsFile.Open(outPath);
        string ctx = $"seed {seed}, {arch}, d={d} m={m} n={n} k={k} apply_b_dec={applyBDec}";
        double worst = 0;
        void Check(string what, ReadOnlySpan<float> ours, string refName, double tol)
        {
            double err = Compare.RelativeError(ours, r.ReadF32(refName).Data, $"{what} ({ctx})");
            output.WriteLine($"{what}: relative error {err:E2}");
            worst = Math.Max(worst, err);
            Assert.True(err <= tol, $"{what}: relative error {err:E3} > {tol:E0} ({ctx})");
        }
        Check("grad W_enc", grads.WEnc, "grad.W_enc", 1e-4);
        Check("grad b_enc", grads.BEnc, "grad.b_enc", 1e-4);
        Check("grad W_dec", grads.WDec, "grad.W_dec", 1e-4);
        Check("grad b_dec", grads.BDec, "grad.b_dec", 1e-4);
        if (arch == "jumprelu")
        {
            Assert.True(grads.LogThreshold!.Any(v => v != 0), $"threshold gradient is all zero: the test exercises nothing ({ctx})");
            Check("grad log_threshold", grads.LogThreshold, "grad.log_threshold", 1e-4);
        }
        Check("loss", [(float)grads.Loss], "loss", 1e-4);
        Check("mse", [(float)grads.Mse], "mse", 1e-4);
        if (arch != "topk") Check("sparsity loss", [(float)grads.SparsityLoss], "sparsity", 1e-4);
        else if (dead.Any(b => b)) Check("aux loss", [(float)grads.AuxLoss], "aux", 1e-4);

        trainer.Step(x, n);
        Check("Adam W_enc", sae.WEnc, "after.W_enc", 1e-5);
        Check("Adam b_enc", sae.BEnc, "after.b_enc", 1e-5);
        Check("Adam W_dec", sae.WDec, "after.W_dec", 1e-5);
        Check("Adam b_dec", sae.BDec, "after.b_dec", 1e-5);
        if (arch == "jumprelu") Check("Adam log_threshold", trainer.LogThreshold!, "after.log_threshold", 1e-5);
        output.WriteLine($"{ctx}: worst relative error {worst:E2}");
    }

    /// <summary>True when every pre-activation (computed in double) is at least 3e-5 from the places where the loss is not smooth.</summary>
    internal static bool KinksAreFar(string arch, float[] x, Sae sae, int n, int k, bool[] dead, double bandwidth, bool applyBDec)
    {
        const double Margin = 3e-5;
        int d = sae.DIn, m = sae.DSae;
        var pre = new double[m];
        for (int r = 0; r < n; r++)
        {
            for (int j = 0; j < m; j++)
            {
                double v = sae.BEnc[j];
                for (int i = 0; i < d; i++) v += (x[r * d + i] - (applyBDec ? sae.BDec[i] : 0)) * (double)sae.WEnc[i * m + j];
                pre[j] = v;
            }
            foreach (double v in pre) if (Math.Abs(v) < Margin) return false;
            if (arch == "jumprelu")
                for (int j = 0; j < m; j++)
                {
                    double th = sae.Threshold![j];
                    if (Math.Abs(pre[j] - th) < Margin || Math.Abs(pre[j] - th - bandwidth / 2) < Margin || Math.Abs(pre[j] - th + bandwidth / 2) < Margin) return false;
                }
            if (arch == "topk")
            {
                var sorted = pre.OrderByDescending(v => v).ToArray();
                if (sorted[k - 1] - sorted[k] < Margin) return false;
                var deadVals = pre.Where((v, j) => dead[j]).OrderByDescending(v => v).ToArray();
                int kAux = Math.Min(Math.Max(1, sae.DOut / 2), deadVals.Length);
                if (kAux > 0 && kAux < deadVals.Length && deadVals[kAux - 1] - deadVals[kAux] < Margin) return false;
            }
        }
        return true;
    }

    // ───────────────────────── learning a sparse dictionary ─────────────────────────

    /// <summary>x = Σ of 3 random atoms (of 48 unit vectors in d = 24) with magnitudes in [0.5, 2].</summary>
    sealed class SparseDictionary
    {
        readonly float[] _atoms;
        readonly int _d, _atomsCount;
        public SparseDictionary(Random rng, int d, int atoms)
        {
            _d = d; _atomsCount = atoms;
            _atoms = Gaussian(rng, (long)atoms * d, 1);
            for (int a = 0; a < atoms; a++)
            {
                var row = _atoms.AsSpan(a * d, d);
                float nrm = System.Numerics.Tensors.TensorPrimitives.Norm(row);
                System.Numerics.Tensors.TensorPrimitives.Divide(row, nrm, row);
            }
        }
        public float[] Batch(Random rng, int n)
        {
            var x = new float[n * _d];
            for (int r = 0; r < n; r++)
                for (int t = 0; t < 3; t++)
                {
                    int a = rng.Next(_atomsCount);
                    float mag = (float)(0.5 + 1.5 * rng.NextDouble());
                    for (int i = 0; i < _d; i++) x[r * _d + i] += mag * _atoms[a * _d + i];
                }
            return x;
        }
    }

    [Theory]
    [InlineData("topk")]
    [InlineData("standard")]
    [InlineData("jumprelu")]
    public void Training_on_a_sparse_dictionary_explains_most_variance(string arch)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int d = 24, n = 256, steps = 400;
        var dict = new SparseDictionary(rng, d, 48);
        var o = new SaeTrainingOptions
        {
            Architecture = Arch(arch), DIn = d, DSae = 96, K = 6, BatchTokens = n, TotalTokens = (long)steps * n,
            // 60 seeds: held-out EV min 0.932 (topk), 0.945 (standard), 0.970 (jumprelu) with these rates
            LearningRate = arch == "standard" ? 3e-3 : 1e-2, L1Coefficient = 0.2, L0Coefficient = 0.005, JumpReluBandwidth = 0.1, JumpReluInitThreshold = 0.3,
            // JumpReLU starts with unit decoder rows (W_enc = W_decᵀ) so that pre-activations clear the initial threshold
            DecoderInitNorm = arch == "jumprelu" ? 1.0 : 0.1,
            LrWarmupSteps = 20, Seed = (ulong)seed, DeadAfterTokens = 20 * n, ApplyBDecToInput = arch == "topk",
        };
        var trainer = new SaeTrainer(o);
        TrainStepStats? last = null;
        for (int s = 0; s < steps; s++) last = trainer.Step(dict.Batch(rng, n), n);
        output.WriteLine($"{arch}: {last}");
        // judged on 4096 held-out rows, not on the last (noisy) training batch
        int m = 4096;
        var x = dict.Batch(rng, m);
        var y = trainer.ExportSae().Forward(new Tensor(new[] { m, d }, x)).Output.Data;
        double sse = 0, sst = 0;
        for (int i = 0; i < d; i++)
        {
            double mean = 0;
            for (int r = 0; r < m; r++) mean += x[r * d + i];
            mean /= m;
            for (int r = 0; r < m; r++) { sse += Math.Pow(x[r * d + i] - y[r * d + i], 2); sst += Math.Pow(x[r * d + i] - mean, 2); }
        }
        double ev = 1 - sse / sst;
        output.WriteLine($"{arch}: held-out explained variance {ev:F4}");
        Assert.True(ev > 0.9, $"seed {seed}, {arch}: held-out explained variance {ev:F3} after {steps} steps (L0 {last!.L0:F1})");
        // at initialisation about half of the 96 latents fire; the dictionary uses 3 atoms per row
        Assert.True(last.L0 < 30, $"seed {seed}, {arch}: L0 {last.L0:F1} is not sparse");
    }

    // ───────────────────────── SAELens writer ─────────────────────────

    [Theory]
    [InlineData("standard")]
    [InlineData("topk")]
    [InlineData("jumprelu")]
    public void SaeWriter_writes_a_SAELens_folder_with_folded_normalisation(string arch)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int d = 16, n = 64;
        var o = new SaeTrainingOptions
        {
            Architecture = Arch(arch), DIn = d, DSae = 40, K = 5, BatchTokens = n, TotalTokens = 4L * n, Seed = (ulong)seed,
            Normalization = ActivationNormalization.ExpectedAverageOnlyIn, ApplyBDecToInput = true,
            Metadata = new SaeMetadata { ModelName = "gpt2", HookName = "blocks.3.hook_resid_post", ContextSize = 128, PrependBos = true, DatasetPath = "corpus.txt" },
        };
        var trainer = new SaeTrainer(o);
        var x = Gaussian(rng, (long)n * d, 7.0);
        for (int s = 0; s < 3; s++) trainer.Step(x, n);
        Assert.True(Math.Abs(trainer.NormScale - Math.Sqrt(d) / MeanNorm(x, n, d)) < 1e-4 * trainer.NormScale, $"seed {seed}: norm scale {trainer.NormScale}");

        using var dir = new TempDir();
        var exported = trainer.ExportSae();
        SaeWriter.Save(exported, dir.Path, trainer.FeatureFrequency());
        Assert.Empty(Directory.GetFiles(dir.Path, "*.tmp"));

        var cfg = JsonNode.Parse(File.ReadAllText(dir.File("cfg.json")))!.AsObject();
        Assert.Equal(arch, (string?)cfg["architecture"]);
        Assert.Equal(d, (int)cfg["d_in"]!);
        Assert.Equal(40, (int)cfg["d_sae"]!);
        Assert.Equal("float32", (string?)cfg["dtype"]);
        Assert.True((bool)cfg["apply_b_dec_to_input"]!);
        Assert.Equal("expected_average_only_in", (string?)cfg["normalize_activations"]);
        Assert.Equal("none", (string?)cfg["reshape_activations"]);
        if (arch == "topk") { Assert.Equal(5, (int)cfg["k"]!); Assert.False((bool)cfg["rescale_acts_by_decoder_norm"]!); }
        else Assert.Null(cfg["k"]);
        var meta = cfg["metadata"]!.AsObject();
        Assert.Equal("gpt2", (string?)meta["model_name"]);
        Assert.Equal("blocks.3.hook_resid_post", (string?)meta["hook_name"]);
        Assert.Equal(128, (int)meta["context_size"]!);
        Assert.Equal("corpus.txt", (string?)meta["dataset_path"]);
        Assert.NotNull(meta["featurelens_version"]);

        using (var f = SafetensorsFile.Open(dir.File("sae_weights.safetensors")))
        {
            Assert.Equal([d, 40], f.Entry("W_enc").Shape);
            Assert.Equal([40, d], f.Entry("W_dec").Shape);
            Assert.Equal(exported.WEnc, f.ReadF32("W_enc").Data);
            Assert.Equal(exported.BDec, f.ReadF32("b_dec").Data);
            Assert.Equal(arch == "jumprelu", f.Contains("threshold"));
            Assert.All(f.Entries, e => Assert.Equal(DType.F32, e.DType));
        }
        using (var f = SafetensorsFile.Open(dir.File("sparsity.safetensors")))
        {
            var log = f.ReadF32("log_feature_sparsity").Data;
            var freq = trainer.FeatureFrequency();
            for (int j = 0; j < log.Length; j++) Assert.Equal((float)Math.Log10(freq[j] + 1e-10), log[j]);
        }

        // SaeLoader reads the folder back as the same SAE
        var loaded = SaeLoader.Load(dir.Path);
        Assert.Equal(exported.Config.Architecture, loaded.Config.Architecture);
        Assert.Equal(exported.Config.K, loaded.Config.K);
        Assert.True(loaded.Config.ApplyBDecToInput);
        Assert.Equal("blocks.3.hook_resid_post", loaded.Config.HookName);
        Assert.Equal("gpt2", loaded.Config.Metadata.ModelName);
        AssertSameWeights(exported, loaded, $"seed {seed}, {arch} reloaded");

        // the folded SAE on raw x reproduces the live SAE on x·s, scaled back by 1/s
        float s2 = trainer.NormScale;
        var raw = new Tensor([n, d], x);
        var scaled = new Tensor([n, d], x.Select(v => v * s2).ToArray());
        var (actsRaw, outRaw) = exported.Forward(raw);
        var (actsScaled, outScaled) = trainer.Sae.Forward(scaled);
        Assert.True(Compare.RelativeError(actsRaw.Data, actsScaled.Data, "acts") < 1e-4, $"seed {seed}: folded activations differ");
        Assert.True(Compare.RelativeError(outRaw.Data, outScaled.Data.Select(v => v / s2).ToArray(), "output") < 1e-4, $"seed {seed}: folded output differs");
    }

    static double MeanNorm(float[] x, int n, int d)
    {
        double s = 0;
        for (int r = 0; r < n; r++) s += System.Numerics.Tensors.TensorPrimitives.Norm(x.AsSpan(r * d, d));
        return s / n;
    }

    // ───────────────────────── determinism, resume, NaN ─────────────────────────

    /// <summary>Rows from an array, optionally poisoned with a value at one row.</summary>
    sealed class ArraySource(float[] data, int d, long poisonRow = -1, float poison = float.NaN) : IActivationSource
    {
        long _pos;
        public int DIn => d;
        public long Position => _pos;
        public long Rows => data.Length / d;
        public int Next(Span<float> batch, int maxRows)
        {
            int rows = (int)Math.Min(maxRows, Rows - _pos);
            for (int r = 0; r < rows; r++)
            {
                data.AsSpan((int)((_pos + r) * d), d).CopyTo(batch.Slice(r * d, d));
                if (_pos + r == poisonRow) batch[r * d + d / 2] = poison;
            }
            _pos += rows;
            return rows;
        }
        public void Seek(long position) => _pos = position;
        public string Describe() => "test array";
    }

    sealed class SyncProgress(Action<TrainProgress> act) : IProgress<TrainProgress>
    {
        public void Report(TrainProgress value) => act(value);
    }

    static SaeTrainingOptions SmallOptions(string arch, int seed, string outDir) => new()
    {
        Architecture = Arch(arch), DIn = 16, DSae = 64, K = 4, BatchTokens = 32, TotalTokens = 12 * 32, Seed = (ulong)seed,
        LearningRate = 2e-3, L1Coefficient = 0.05, LrWarmupSteps = 3, LrDecaySteps = 4, L1WarmupSteps = 2,
        DeadAfterTokens = 64, AuxKCoefficient = 0.5, ResampleDeadEvery = arch == "topk" ? 0 : 4,
        Normalization = ActivationNormalization.ExpectedAverageOnlyIn, NormEstimationBatches = 2,
        CheckpointEveryTokens = 3 * 32, OutputDir = outDir,
        Metadata = new SaeMetadata { ModelName = "test", HookName = "blocks.0.hook_resid_post", DatasetPath = "array" },
    };

    static void AssertSameWeights(Sae a, Sae b, string ctx)
    {
        Assert.True(a.WEnc.AsSpan().SequenceEqual(b.WEnc), $"{ctx}: W_enc differs");
        Assert.True(a.BEnc.AsSpan().SequenceEqual(b.BEnc), $"{ctx}: b_enc differs");
        Assert.True(a.WDec.AsSpan().SequenceEqual(b.WDec), $"{ctx}: W_dec differs");
        Assert.True(a.BDec.AsSpan().SequenceEqual(b.BDec), $"{ctx}: b_dec differs");
        if (a.Threshold != null) Assert.True(a.Threshold.AsSpan().SequenceEqual(b.Threshold), $"{ctx}: threshold differs");
    }

    [Theory]
    [InlineData("topk")]
    [InlineData("standard")]
    [InlineData("jumprelu")]
    public void Cancelled_and_resumed_training_gives_bit_identical_weights(string arch)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        // 200 rows: the 12 batches of 32 wrap around the data once
        var data = Gaussian(rng, 200L * 16, 3.0);
        using var dirA = new TempDir();
        using var dirB = new TempDir();

        var full = new SaeTrainer(SmallOptions(arch, seed, dirA.Path)).Train(new ArraySource(data, 16), null, default);
        Assert.Equal(12, full.Steps);

        int cancelAt = 2 + rng.Next(8);
        using var cts = new CancellationTokenSource();
        var progress = new SyncProgress(p => { if (p.Stats.Step == cancelAt) cts.Cancel(); });
        Assert.ThrowsAny<OperationCanceledException>(() => new SaeTrainer(SmallOptions(arch, seed, dirB.Path)).Train(new ArraySource(data, 16), progress, cts.Token));
        string latest = Path.Combine(dirB.Path, "checkpoints", "latest", SaeTrainer.StateFile);
        using (var f = SafetensorsFile.Open(latest)) Assert.Equal(cancelAt.ToString(CultureInfo.InvariantCulture), f.Metadata["step"]);

        var resumedTrainer = new SaeTrainer(SmallOptions(arch, seed, dirB.Path));
        var resumed = resumedTrainer.Train(new ArraySource(data, 16), null, default);
        Assert.Equal(cancelAt, resumed.ResumedFromStep);
        Assert.Equal(12, resumed.Steps);
        AssertSameWeights(full.Sae, resumed.Sae, $"seed {seed}, {arch}, cancelled at {cancelAt}");
        Assert.Equal(full.FeatureFrequency, resumed.FeatureFrequency);

        // the saved folders match too, and a different learning rate refuses to resume
        using (var fa = SafetensorsFile.Open(Path.Combine(dirA.Path, "sae_weights.safetensors")))
        using (var fb = SafetensorsFile.Open(Path.Combine(dirB.Path, "sae_weights.safetensors")))
            Assert.True(fa.RawBytes("W_dec").SequenceEqual(fb.RawBytes("W_dec")), $"seed {seed}: saved W_dec differs");
        var other = SmallOptions(arch, seed, dirB.Path);
        other.LearningRate = 1e-3;
        var ex = Assert.Throws<ArgumentException>(() => new SaeTrainer(other).Train(new ArraySource(data, 16), null, default));
        Assert.Contains("lr", ex.Message);
    }

    [Fact]
    public void Same_seed_gives_bit_identical_weights_and_another_seed_does_not()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        var data = Gaussian(rng, 96L * 16, 1.0);
        Sae Run(int s)
        {
            var o = SmallOptions("topk", s, "unused");
            var t = new SaeTrainer(o);
            for (int i = 0; i < 3; i++) t.Step(data.AsSpan(i * 32 * 16, 32 * 16), 32);
            return t.Sae;
        }
        var a = Run(seed); var b = Run(seed); var c = Run(seed + 1);
        AssertSameWeights(a, b, $"seed {seed}");
        Assert.False(a.WDec.AsSpan().SequenceEqual(c.WDec), $"seed {seed}: a different seed gave the same weights");
    }

    [Theory]
    [InlineData(float.NaN, "activations")]
    [InlineData(float.PositiveInfinity, "activations")]
    [InlineData(3e25f, "loss")]
    public void A_non_finite_value_stops_training_and_keeps_the_last_checkpoint(float poison, string quantity)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        var data = Gaussian(rng, 400L * 16, 1.0);
        using var dir = new TempDir();
        var o = SmallOptions("standard", seed, dir.Path);
        o.Normalization = ActivationNormalization.None;
        o.CheckpointEveryTokens = 32;
        int badStep = 3 + rng.Next(4);
        var src = new ArraySource(data, 16, poisonRow: (badStep - 1) * 32L + rng.Next(32), poison: poison);
        string state = Path.Combine(dir.Path, "checkpoints", "latest", SaeTrainer.StateFile);
        byte[]? before = null;
        var progress = new SyncProgress(p => { if (p.Stats.Step == badStep - 1) before = File.ReadAllBytes(state); });
        var ex = Assert.Throws<NonFiniteTrainingException>(() => new SaeTrainer(o).Train(src, progress, default));
        Assert.Equal(badStep, ex.Step);
        Assert.Equal(quantity, ex.Quantity);
        Assert.Contains($"step {badStep}", ex.Message);
        Assert.NotNull(before);
        Assert.Equal(before, File.ReadAllBytes(state));
        using var f = SafetensorsFile.Open(state);
        Assert.Equal((badStep - 1).ToString(CultureInfo.InvariantCulture), f.Metadata["step"]);
    }

    // ───────────────────────── options and sources ─────────────────────────

    [Fact]
    public void Invalid_options_are_refused_with_the_option_named()
    {
        SaeTrainingOptions Good() => new() { Architecture = SaeArchitecture.TopK, DIn = 8, DSae = 32, K = 4, BatchTokens = 16, TotalTokens = 64 };
        _ = new SaeTrainer(Good());   // the defaults are valid
        void Bad(Action<SaeTrainingOptions> edit, string word)
        {
            var o = Good(); edit(o);
            var ex = Assert.Throws<ArgumentException>(() => new SaeTrainer(o));
            Assert.Contains(word, ex.Message);
        }
        Bad(o => o.K = 0, "k");
        Bad(o => o.K = 33, "k");
        Bad(o => o.DIn = 0, "d_in");
        Bad(o => o.Architecture = SaeArchitecture.Gated, "gated");
        Bad(o => o.LearningRate = double.NaN, "learning rate");
        Bad(o => o.TotalTokens = 8, "total tokens");
        Bad(o => o.LrDecaySteps = 10, "lr_decay_steps");
        Bad(o => o.Beta2 = 1, "beta2");
        Bad(o => o.Normalization = ActivationNormalization.LayerNorm, "normalize_activations");
        Bad(o => o.ResampleDeadEvery = 5, "resampling");
        var t = new SaeTrainer(Good());
        Assert.Throws<ArgumentException>(() => t.Step(new float[8 * 3], 4));
        Assert.Throws<ArgumentException>(() => t.Train(new ArraySource(new float[64], 8), null, default));
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.F16)]
    [InlineData(DType.BF16)]
    public void Cached_activations_read_back_in_order_and_seek(DType dtype)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int d = 12, rows = 150;
        var data = Gaussian(rng, (long)rows * d, 2.0);
        using var dir = new TempDir();
        string path = dir.File("acts.safetensors");
        float[] expect;
        if (dtype == DType.F32)
        {
            CachedActivationSource.Write(path, new ArraySource(data, d), rows);
            expect = data;
        }
        else
        {
            var bytes = new byte[data.Length * 2];
            var u = MemoryMarshal.Cast<byte, ushort>(bytes.AsSpan());
            var h = MemoryMarshal.Cast<byte, Half>(bytes.AsSpan());
            expect = new float[data.Length];
            for (int i = 0; i < data.Length; i++)
            {
                if (dtype == DType.F16) { h[i] = (Half)data[i]; expect[i] = (float)h[i]; }
                else { u[i] = FloatConvert.F32ToBF16(data[i]); expect[i] = BitConverter.UInt32BitsToSingle((uint)u[i] << 16); }
            }
            new SafetensorsWriter().Add("activations", dtype, [rows, d], bytes).Write(path);
        }
        using var src = new CachedActivationSource(path);
        Assert.Equal(d, src.DIn);
        var buf = new float[64 * d];
        var all = new List<float>();
        int got;
        while ((got = src.Next(buf, 64)) > 0) all.AddRange(buf.AsSpan(0, got * d).ToArray());
        Assert.Equal(expect, all.ToArray());
        src.Seek(97);
        Assert.Equal(10, src.Next(buf, 10));
        Assert.Equal(expect.AsSpan(97 * d, 10 * d).ToArray(), buf.AsSpan(0, 10 * d).ToArray());
        Assert.Throws<InvalidDataException>(() => CachedActivationSource.Write(dir.File("short.safetensors"), new ArraySource(data, d), rows + 1));
        Assert.False(File.Exists(dir.File("short.safetensors")));
    }
    [Fact]
    public void Model_activations_match_a_cached_run_and_seek_reproduces_shuffled_rows()
    {
        string bin = Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
        using var model = FeatureLens.Runtime.Models.HookedTransformer.Load(bin);
        var tok = model.Tokenizer!;
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        string[] words = ["the", "cat", "sat", "on", "a", "mat", "and", "Lily", "was", "happy", "dog", "ran", "to", "park"];
        var texts = Enumerable.Range(0, 12).Select(_ => string.Join(" ", Enumerable.Range(0, rng.Next(5, 20)).Select(_ => words[rng.Next(words.Length)])) + ".").ToList();
        const string hook = "blocks.1.hook_resid_post";
        int ctx = 16, d = model.Config.DModel;

        var plain = new ModelActivationSource(model, hook, texts, ctx, prependBos: true, batchSequences: 2);
        Assert.Equal(d, plain.DIn);
        var rows = new float[48 * d];
        Assert.Equal(48, plain.Next(rows, 48));
        // sequence 0 = BOS + the first 15 tokens of the stream (documents joined by BOS)
        var stream = new List<int>();
        foreach (var t in texts) { if (stream.Count > 0) stream.Add(tok.BosId!.Value); stream.AddRange(tok.Encode(t, addBos: false)); }
        int[] seq0 = [tok.BosId!.Value, .. stream.Take(ctx - 1)];
        var (_, cache) = model.RunWithCache([seq0], n => n == hook);
        var expect = cache.Sequence(hook, 0).Data;
        Assert.True(Compare.RelativeError(rows.AsSpan(0, ctx * d), expect, "sequence 0") < 1e-6, $"seed {seed}: rows differ from RunWithCache");

        var shuffled = new ModelActivationSource(model, hook, texts, ctx, prependBos: true, batchSequences: 2, shuffleSeed: (ulong)seed);
        var all = new float[64 * d];
        Assert.Equal(64, shuffled.Next(all, 64));
        Assert.False(all.AsSpan(0, 32 * d).SequenceEqual(rows.AsSpan(0, 32 * d)), $"seed {seed}: shuffling changed nothing");
        long p = rng.Next(1, 50);
        shuffled.Seek(p);
        var again = new float[(64 - p) * d];
        Assert.Equal(64 - (int)p, shuffled.Next(again, 64 - (int)p));
        Assert.True(again.AsSpan().SequenceEqual(all.AsSpan((int)p * d)), $"seed {seed}: rows after Seek({p}) differ");
        Assert.Equal(64, shuffled.Position);
    }
}
