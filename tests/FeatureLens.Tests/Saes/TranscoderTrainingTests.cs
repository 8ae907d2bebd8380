using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Saes.Training;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Saes;

/// <summary>Transcoder training: one step against PyTorch autograd (sae_grad_reference.py with a target and W_skip),
/// for ReLU, TopK and JumpReLU latents, with and without the skip connection, d_in ≠ d_out.</summary>
public class TranscoderTrainingTests(ITestOutputHelper output)
{
    static SaeArchitecture Arch(string name) => name switch
    {
        "standard" => SaeArchitecture.Standard,
        "topk" => SaeArchitecture.TopK,
        "jumprelu" => SaeArchitecture.JumpRelu,
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [InlineData("standard", false, false)]
    [InlineData("standard", true, false)]
    [InlineData("standard", true, true)]
    [InlineData("topk", false, false)]
    [InlineData("topk", true, false)]
    [InlineData("jumprelu", false, false)]
    [InlineData("jumprelu", true, false)]
    public void Transcoder_gradients_and_one_Adam_step_match_torch_autograd(string arch, bool skip, bool sparseLatents)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        // sparseLatents: ~2 % of latents fire, d_out ≥ 64: the standard trainer's sparse backward and its 64-column kernel
        int d = sparseLatents ? rng.Next(64, 100) : rng.Next(12, 40);
        int dOut = sparseLatents ? rng.Next(64, 100) : rng.Next(12, 40);
        if (dOut == d) dOut++;
        int m = sparseLatents ? rng.Next(300, 500) : rng.Next(48, 128);
        int n = rng.Next(24, 64), k = rng.Next(2, 9);
        double bandwidth = 0.4;
        var o = new SaeTrainingOptions
        {
            Architecture = Arch(arch), Transcoder = true, DIn = d, DOut = dOut, SkipConnection = skip, DSae = m, K = k,
            BatchTokens = n, TotalTokens = 10L * n,
            L1Coefficient = 0.05 + rng.NextDouble() * 0.2, L0Coefficient = 0.01 + rng.NextDouble() * 0.05,
            AuxKCoefficient = 0.1 + rng.NextDouble(), JumpReluBandwidth = bandwidth, DeadAfterTokens = 1000,
            LearningRate = 1e-3, Seed = (ulong)seed,
        };
        var trainer = new SaeTrainer(o);
        var sae = trainer.Sae;
        Assert.Equal(SaeConfig.TranscoderOf(Arch(arch), skip), sae.Config.Architecture);
        Assert.Equal(d + dOut, trainer.RowWidth);
        float[] x, y, logTheta = [];
        bool[] dead = new bool[m];
        int attempt = 0;
        while (true)
        {
            SaeTrainingTests.Gaussian(rng, (long)d * m, 1 / Math.Sqrt(d)).CopyTo(sae.WEnc, 0);
            SaeTrainingTests.Gaussian(rng, m, 0.3).CopyTo(sae.BEnc, 0);
            if (sparseLatents) for (int j = 0; j < m; j++) sae.BEnc[j] -= 2.2f;
            SaeTrainingTests.Gaussian(rng, (long)m * dOut, 0.3).CopyTo(sae.WDec, 0);
            SaeTrainingTests.Gaussian(rng, dOut, 0.3).CopyTo(sae.BDec, 0);
            if (skip) SaeTrainingTests.Gaussian(rng, (long)dOut * d, 0.2).CopyTo(sae.WSkip!, 0);
            x = SaeTrainingTests.Gaussian(rng, (long)n * d, 1.0);
            y = SaeTrainingTests.Gaussian(rng, (long)n * dOut, 1.0);
            if (arch == "jumprelu")
            {
                logTheta = new float[m];
                for (int j = 0; j < m; j++) logTheta[j] = (float)Math.Log(0.2 + 0.4 * rng.NextDouble());
                trainer.SetLogThreshold(logTheta);
            }
            for (int j = 0; j < m; j++) dead[j] = rng.NextDouble() < 0.4;
            if (SaeTrainingTests.KinksAreFar(arch, x, sae, n, k, dead, bandwidth, applyBDec: false)) break;
            Assert.True(++attempt < 200, $"seed {seed}: no draw without near-kink pre-activations");
        }
        sae.InvalidateDecoderNorms();
        if (arch == "topk") for (int j = 0; j < m; j++) if (dead[j]) trainer.SetTokensSinceFired(j, o.DeadAfterTokens);

        using var dir = new TempDir();
        string inPath = dir.File("in.safetensors"), outPath = dir.File("out.safetensors");
        var w = new SafetensorsWriter();
        void Add(string name, float[] a, params int[] shape) => w.Add(name, new Tensor(shape, (float[])a.Clone()));
        Add("W_enc", sae.WEnc, d, m); Add("b_enc", sae.BEnc, m); Add("W_dec", sae.WDec, m, dOut); Add("b_dec", sae.BDec, dOut);
        Add("x", x, n, d); Add("y", y, n, dOut);
        if (skip) Add("W_skip", sae.WSkip!, dOut, d);
        if (arch == "jumprelu") Add("log_threshold", logTheta, m);
        Add("dead_mask", dead.Select(b => b ? 1f : 0f).ToArray(), m);
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        w.Write(inPath, new Dictionary<string, string>
        {
            ["arch"] = arch, ["k"] = k.ToString(inv),
            ["coef"] = (arch == "jumprelu" ? o.L0Coefficient : o.L1Coefficient).ToString("R", inv),
            ["bandwidth"] = bandwidth.ToString("R", inv), ["aux_coef"] = o.AuxKCoefficient.ToString("R", inv),
            ["apply_b_dec"] = "0", ["lr"] = o.LearningRate.ToString("R", inv),
            ["beta1"] = o.Beta1.ToString("R", inv), ["beta2"] = o.Beta2.ToString("R", inv), ["eps"] = o.AdamEpsilon.ToString("R", inv),
        });
        TorchReference.RunPython(Path.Combine(AppContext.BaseDirectory, "python", "sae_grad_reference.py"), inPath, outPath);

        // the batch: each row is the input, then the target
        var batch = new float[(long)n * (d + dOut)];
        for (int r = 0; r < n; r++)
        {
            x.AsSpan(r * d, d).CopyTo(batch.AsSpan(r * (d + dOut), d));
            y.AsSpan(r * dOut, dOut).CopyTo(batch.AsSpan(r * (d + dOut) + d, dOut));
        }
        var grads = trainer.ComputeGradients(batch, n);
        using var r2 = SafetensorsFile.Open(outPath);
        string ctx = $"seed {seed}, {arch} transcoder, skip={skip}, d_in={d} d_out={dOut} m={m} n={n} k={k}";
        double worst = 0;
        void Check(string what, ReadOnlySpan<float> ours, string refName, double tol)
        {
            double err = Compare.RelativeError(ours, r2.ReadF32(refName).Data, $"{what} ({ctx})");
            output.WriteLine($"{what}: relative error {err:E2}");
            worst = Math.Max(worst, err);
            Assert.True(err <= tol, $"{what}: relative error {err:E3} > {tol:E0} ({ctx})");
        }
        Check("grad W_enc", grads.WEnc, "grad.W_enc", 1e-4);
        Check("grad b_enc", grads.BEnc, "grad.b_enc", 1e-4);
        Check("grad W_dec", grads.WDec, "grad.W_dec", 1e-4);
        Check("grad b_dec", grads.BDec, "grad.b_dec", 1e-4);
        if (skip) Check("grad W_skip", grads.WSkip!, "grad.W_skip", 1e-4);
        if (arch == "jumprelu") Check("grad log_threshold", grads.LogThreshold!, "grad.log_threshold", 1e-4);
        Check("loss", [(float)grads.Loss], "loss", 1e-4);
        Check("mse", [(float)grads.Mse], "mse", 1e-4);
        if (arch != "topk") Check("sparsity loss", [(float)grads.SparsityLoss], "sparsity", 1e-4);
        else if (dead.Any(b => b)) Check("aux loss", [(float)grads.AuxLoss], "aux", 1e-4);

        trainer.Step(batch, n);
        Check("Adam W_enc", sae.WEnc, "after.W_enc", 1e-4);
        Check("Adam b_enc", sae.BEnc, "after.b_enc", 1e-4);
        Check("Adam W_dec", sae.WDec, "after.W_dec", 1e-4);
        Check("Adam b_dec", sae.BDec, "after.b_dec", 1e-4);
        if (skip) Check("Adam W_skip", sae.WSkip!, "after.W_skip", 1e-4);
        if (arch == "jumprelu") Check("Adam log_threshold", trainer.LogThreshold!, "after.log_threshold", 1e-4);
        output.WriteLine($"{ctx}: worst relative error {worst:E2}");
    }

    [Fact]
    public void A_saved_transcoder_is_a_SAELens_folder_that_loads_back_with_its_hooks_and_skip()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int d = rng.Next(8, 20), dOut = d + rng.Next(1, 6), m = rng.Next(20, 40), n = 32;
        var o = new SaeTrainingOptions
        {
            Architecture = SaeArchitecture.TopK, Transcoder = true, DIn = d, DOut = dOut, SkipConnection = true, DSae = m, K = 3,
            BatchTokens = n, TotalTokens = 3L * n, Seed = (ulong)seed,
            Metadata = new SaeMetadata { HookName = "blocks.0.ln2.hook_normalized", HookNameOut = "blocks.0.hook_mlp_out", ModelName = "test" },
        };
        using var dir = new TempDir();
        o.OutputDir = dir.File("tc");
        var rows = SaeTrainingTests.Gaussian(rng, 8L * n * (d + dOut), 1.0);
        var result = new SaeTrainer(o).Train(new RowsSource(rows, d + dOut));
        var loaded = SaeLoader.Load(o.OutputDir);
        Assert.Equal(SaeArchitecture.TopKSkipTranscoder, loaded.Config.Architecture);
        Assert.Equal("blocks.0.ln2.hook_normalized", loaded.Config.HookName);
        Assert.Equal("blocks.0.hook_mlp_out", loaded.Config.OutputHookName);
        Assert.Equal((d, dOut, 3), (loaded.DIn, loaded.DOut, loaded.Config.K));
        Assert.Equal(result.Sae.WSkip, loaded.WSkip);
        Assert.Contains(loaded.WSkip!, v => v != 0);
        var x = new Tensor([4, d], SaeTrainingTests.Gaussian(rng, 4L * d, 1.0));
        Assert.Equal(result.Sae.Forward(x).Output.Data, loaded.Forward(x).Output.Data);
    }

    [Fact]
    public void Transcoder_options_are_checked_with_the_option_named()
    {
        void Bad(Action<SaeTrainingOptions> edit, string word)
        {
            var o = new SaeTrainingOptions { Architecture = SaeArchitecture.TopK, Transcoder = true, DIn = 8, DOut = 10, DSae = 16, K = 2, BatchTokens = 4, TotalTokens = 8 };
            edit(o);
            var e = Assert.Throws<ArgumentException>(() => new SaeTrainer(o));
            Assert.Contains(word, e.Message, StringComparison.Ordinal);
        }
        Bad(o => o.ApplyBDecToInput = true, "apply_b_dec_to_input");
        Bad(o => o.Normalization = ActivationNormalization.ExpectedAverageOnlyIn, "normalize_activations");
        Bad(o => { o.Transcoder = false; }, "d_out");
        Bad(o => { o.Transcoder = false; o.DOut = 0; o.SkipConnection = true; }, "skip connection");
        var t = new SaeTrainer(new SaeTrainingOptions { Architecture = SaeArchitecture.TopK, Transcoder = true, DIn = 8, DOut = 10, DSae = 16, K = 2, BatchTokens = 4, TotalTokens = 8, OutputDir = "unused" });
        var e2 = Assert.Throws<ArgumentException>(() => t.Train(new RowsSource(new float[64], 8)));
        Assert.Contains("d_in + d_out", e2.Message, StringComparison.Ordinal);
    }

    /// <summary>An in-memory source of rows of a given width.</summary>
    sealed class RowsSource(float[] data, int width) : IActivationSource
    {
        long _pos;
        public int DIn => width;
        public long Position => _pos;
        public int Next(Span<float> batch, int maxRows)
        {
            int rows = (int)Math.Min(maxRows, data.Length / width - _pos);
            data.AsSpan((int)(_pos * width), rows * width).CopyTo(batch);
            _pos += rows;
            return rows;
        }
        public void Seek(long position) => _pos = position;
        public string Describe() => "in-memory rows";
    }
}
