using System.Text.Json;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Saes;
using Xunit.Abstractions;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Tests.Saes;

/// <summary>
/// <see cref="Sae"/> encode and decode agree with an independent PyTorch implementation of SAELens's
/// formulas (python/sae_reference.py) on fresh random SAEs: relative error ‖ours − torch‖/‖torch‖ ≤ 1e-5
/// on the encoder input, pre-activations, activations, reconstruction and output, and the same active
/// latents. One Python process per architecture runs every normalisation × apply_b_dec_to_input ×
/// rescale variant of it. Input rows are redrawn until every activation decision (sign of a
/// pre-activation, pre vs threshold, gate sign, the k-th vs (k+1)-th ranked value) has a margin of
/// 1e-4 relative to the row's largest value, so float rounding cannot flip a decision.
/// </summary>
public class SaeTorchParityTests(ITestOutputHelper output)
{
    const double Tolerance = 1e-5;
    const float DecisionMargin = 1e-4f;

    static string Script => Path.Combine(AppContext.BaseDirectory, "python", "sae_reference.py");

    /// <summary>One SAE to check: its architecture, normalisation and flags.</summary>
    sealed record Variant(SaeArchitecture Architecture, ActivationNormalization Normalization, bool ApplyBDec, bool Rescale)
    {
        public string Name => $"{SaeConfig.ArchitectureName(Architecture)}_{SaeConfig.NormalizationName(Normalization)}" +
                              (ApplyBDec ? "_bdec" : "") + (Rescale ? "_rescale" : "");
    }

    /// <summary>A random SAE and its inputs x (n, d_in).</summary>
    sealed record Case(Variant Variant, Sae Sae, float[] X, int N)
    {
        public string Describe => $"{Variant.Name} d_in={Sae.DIn} d_sae={Sae.DSae} d_out={Sae.DOut} k={Sae.Config.K} n={N}";
    }

    [Theory]
    [InlineData(SaeArchitecture.Standard)]
    [InlineData(SaeArchitecture.Gated)]
    [InlineData(SaeArchitecture.JumpRelu)]
    [InlineData(SaeArchitecture.TopK)]
    [InlineData(SaeArchitecture.Transcoder)]
    [InlineData(SaeArchitecture.SkipTranscoder)]
    [InlineData(SaeArchitecture.JumpReluTranscoder)]
    public void RandomSaeMatchesTorch(SaeArchitecture architecture)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        var config = new SaeConfig { Architecture = architecture };
        var variants = new List<Variant>();
        foreach (var norm in Enum.GetValues<ActivationNormalization>())
            foreach (bool bdec in config.IsTranscoder ? new[] { false } : new[] { false, true })
                foreach (bool rescale in architecture == SaeArchitecture.TopK ? new[] { false, true } : new[] { false })
                    variants.Add(new Variant(architecture, norm, bdec, rescale));
        var cases = variants.Select(v => MakeCase(v, rng, seed)).ToList();

        using var dir = new TempDir();
        string inPath = dir.File("in.safetensors"), outPath = dir.File("ref.safetensors");
        var writer = new SafetensorsWriter();
        var metadata = new Dictionary<string, string> { ["cases"] = string.Join(",", cases.Select(c => c.Variant.Name)) };
        foreach (var c in cases) AddCase(writer, metadata, c);
        writer.Write(inPath, metadata);
        TorchReference.RunPython(Script, inPath, outPath);

        using var reference = SafetensorsFile.Open(outPath);
        var worst = new Dictionary<string, double>();
        foreach (var c in cases)
            foreach (var (what, err) in CheckCase(c, reference, $"seed {seed}, {c.Describe}"))
                worst[what] = Math.Max(worst.GetValueOrDefault(what), err);
        output.WriteLine($"seed {seed}, {cases.Count} variants of {SaeConfig.ArchitectureName(architecture)}; largest relative errors: " +
                         string.Join(", ", worst.Select(kv => $"{kv.Key} {kv.Value:E2}")));
    }

    /// <summary>Compares every encode/decode entry point of the case's SAE with the reference; returns (quantity, relative error) pairs.</summary>
    static List<(string, double)> CheckCase(Case c, SafetensorsFile reference, string context)
    {
        var sae = c.Sae;
        int n = c.N, dIn = sae.DIn, dSae = sae.DSae, dOut = sae.DOut;
        string p = c.Variant.Name + "/";
        float[] Ref(string name, int width)
        {
            var t = reference.ReadF32(p + name);
            Assert.True(t.Length == n * width, $"reference {p}{name} has {t.Length} elements, expected {n}×{width} ({context})");
            return t.Data;
        }
        var results = new List<(string, double)>();
        void Check(string what, ReadOnlySpan<float> ours, ReadOnlySpan<float> theirs)
        {
            double err = Compare.RelativeError(ours, theirs, $"{what} ({context})");
            Assert.True(err <= Tolerance, $"{what}: relative error {err:E3} > {Tolerance:E0} ({context})");
            results.Add((what, err));
        }
        float[] refSaeIn = Ref("sae_in", dIn), refPre = Ref("pre", dSae), refActs = Ref("acts", dSae);
        float[] refRecons = Ref("recons", dOut), refOutput = Ref("output", dOut);
        bool gated = c.Variant.Architecture == SaeArchitecture.Gated;

        // step by step: Preprocess → PreActivations → Activate → DecodeRaw → Postprocess
        var saeIn = new float[n * dIn];
        var norm = sae.Preprocess(c.X, saeIn, n);
        Assert.True((norm == null) == (c.Variant.Normalization is ActivationNormalization.None or ActivationNormalization.ExpectedAverageOnlyIn),
            $"Preprocess returned {(norm == null ? "no" : "a")} normalisation ({context})");
        Check("sae_in", saeIn, refSaeIn);
        var pre = new float[n * dSae];
        var gate = gated ? new float[n * dSae] : null;
        sae.PreActivations(saeIn, pre, n, gate);
        Check("pre", pre, refPre);
        if (gated) Check("gate", gate, Ref("gate", dSae));
        var acts = new float[n * dSae];
        sae.Activate(pre, acts, n, gate);
        Check("acts", acts, refActs);
        SameActiveSet(acts, refActs, n, dSae, "Activate", context);
        var recons = new float[n * dOut];
        sae.DecodeRaw(refActs, recons, n);
        Check("recons", recons, refRecons);
        var outBuf = new float[n * dOut];
        sae.Postprocess(recons, outBuf, n, norm, c.X);
        Check("output", outBuf, refOutput);

        // the tensor API: Encode, EncodeSparse, Decode (dense and sparse), Forward
        var x = new Tensor([n, dIn], (float[])c.X.Clone());
        var dense = sae.Encode(x);
        Assert.Equal(new[] { n, dSae }, dense.Shape);
        Check("Encode", dense.Data, refActs);
        SameActiveSet(dense.Data, refActs, n, dSae, "Encode", context);

        int blockRows = 1 + (c.X.Length + n) % Math.Max(1, n); // some block size in 1..n, varying per case
        var sparse = sae.EncodeSparse(x, blockRows);
        Assert.Equal(n, sparse.Rows);
        Assert.Equal(dSae, sparse.Columns);
        for (int r = 0; r < n; r++)
        {
            var idx = sparse.RowIndices(r);
            for (int e = 1; e < idx.Length; e++) Assert.True(idx[e - 1] < idx[e], $"EncodeSparse row {r}: indices not increasing ({context})");
            foreach (float v in sparse.RowValues(r)) Assert.True(v > 0, $"EncodeSparse row {r} keeps a non-positive value {v} ({context})");
        }
        Check("EncodeSparse", sparse.ToDense(), refActs);
        SameActiveSet(sparse.ToDense(), refActs, n, dSae, $"EncodeSparse (block {blockRows})", context);
        if (c.Variant.Architecture == SaeArchitecture.TopK)
            for (int r = 0; r < n; r++)
                Assert.True(sparse.Count(r) <= sae.Config.K, $"TopK row {r} has {sparse.Count(r)} active latents > k = {sae.Config.K} ({context})");

        if (c.Variant.Architecture == SaeArchitecture.SkipTranscoder)
        {
            Assert.Throws<InvalidOperationException>(() => sae.Decode(new Tensor([n, dSae], refActs)));
            Assert.Throws<InvalidOperationException>(() => sae.Decode(sparse));
        }
        else
        {
            var decoded = sae.Decode(new Tensor([n, dSae], (float[])refActs.Clone()), norm);
            Assert.Equal(new[] { n, dOut }, decoded.Shape);
            Check("Decode(dense)", decoded.Data, refOutput);
            var decodedSparse = sae.Decode(SparseActivations.FromDense(refActs, n, dSae), norm);
            Check("Decode(sparse)", decodedSparse.Data, refOutput);
            // without the normalisation, Decode gives hook_sae_recons
            Check("Decode(dense, no norm)", sae.Decode(new Tensor([n, dSae], (float[])refActs.Clone())).Data, refRecons);
        }

        // Forward on a rank-3 input (2, n/2, d_in) when n is even: shapes follow the input
        var xf = n % 2 == 0 ? new Tensor([2, n / 2, dIn], (float[])c.X.Clone()) : x;
        var (fActs, fOut) = sae.Forward(xf);
        Assert.Equal(xf.Shape[..^1].Append(dSae), fActs.Shape);
        Assert.Equal(xf.Shape[..^1].Append(dOut), fOut.Shape);
        Check("Forward acts", fActs.Data, refActs);
        Check("Forward output", fOut.Data, refOutput);
        Assert.True(c.X.AsSpan().SequenceEqual(x.Data), $"the input was modified ({context})");
        return results;
    }

    static void SameActiveSet(ReadOnlySpan<float> ours, ReadOnlySpan<float> theirs, int n, int dSae, string what, string context)
    {
        for (int r = 0; r < n; r++)
            for (int j = 0; j < dSae; j++)
            {
                bool a = ours[r * dSae + j] != 0, b = theirs[r * dSae + j] != 0;
                if (a != b)
                    Assert.Fail($"{what}: latent {j} of row {r} is {(a ? "active" : "inactive")} ({ours[r * dSae + j]}), torch says {(b ? "active" : "inactive")} ({theirs[r * dSae + j]}) ({context})");
            }
    }

    // ─────────────────────────────── random SAEs ───────────────────────────────

    static Case MakeCase(Variant v, Random rng, int seed)
    {
        var config = new SaeConfig
        {
            Architecture = v.Architecture, Normalization = v.Normalization, ApplyBDecToInput = v.ApplyBDec, RescaleActsByDecoderNorm = v.Rescale,
        };
        config.DIn = NotMultipleOf16(rng, 37, 96);
        config.DSae = NotMultipleOf16(rng, 100, 300);
        config.DOut = config.IsTranscoder ? NotMultipleOf16(rng, 20, 96) : config.DIn;
        if (v.Architecture == SaeArchitecture.TopK)
            config.K = rng.Next(4) == 0 ? rng.Next(1, config.DSae + 1) : rng.Next(1, 49); // sometimes k is most of d_sae (sparse and dense decode paths)
        int dIn = config.DIn, dSae = config.DSae, dOut = config.DOut;

        float[] W(int count, double scale) => Enumerable.Range(0, count).Select(_ => (float)(scale * Gaussian(rng))).ToArray();
        var wEnc = W(dIn * dSae, 1 / Math.Sqrt(dIn));
        var wDec = W(dSae * dOut, 1 / Math.Sqrt(dSae));
        for (int j = 0; j < dSae; j++) // decoder rows of different norms, so rescaling by them matters
        {
            float s = (float)(0.3 + 1.7 * rng.NextDouble());
            for (int i = 0; i < dOut; i++) wDec[j * dOut + i] *= s;
        }
        var bDec = W(dOut, 0.5);
        bool gated = v.Architecture == SaeArchitecture.Gated;
        var bEnc = gated ? null : W(dSae, 0.2);
        var threshold = config.HasThreshold ? Enumerable.Range(0, dSae).Select(_ => (float)(0.05 + 0.8 * rng.NextDouble())).ToArray() : null;
        var sae = new Sae(config, wEnc, bEnc, wDec, bDec, threshold,
            bGate: gated ? W(dSae, 0.2) : null, rMag: gated ? W(dSae, 0.3) : null, bMag: gated ? W(dSae, 0.2) : null,
            wSkip: v.Architecture == SaeArchitecture.SkipTranscoder ? W(dOut * dIn, 1 / Math.Sqrt(dIn)) : null);

        // inputs: a shared offset plus a per-row scale of noise (so layer_norm and rescaling do something)
        int n = rng.Next(3, 25);
        var offset = W(dIn, 0.7);
        var x = new float[n * dIn];
        var row = new float[dIn];
        for (int r = 0; r < n; r++)
        {
            for (int attempt = 0; ; attempt++)
            {
                if (attempt == 500) throw new InvalidOperationException($"seed {seed}, {v.Name}: no input row away from activation decision boundaries in 500 draws");
                double scale = Math.Exp(-1 + 2.5 * rng.NextDouble());
                for (int i = 0; i < dIn; i++) row[i] = offset[i] + (float)(scale * Gaussian(rng));
                if (ClearOfBoundaries(sae, row)) break;
            }
            row.CopyTo(x, r * dIn);
        }
        return new Case(v, sae, x, n);
    }

    /// <summary>True when every activation decision for this row has a relative margin of <see cref="DecisionMargin"/>.</summary>
    static bool ClearOfBoundaries(Sae sae, float[] row)
    {
        int dSae = sae.DSae;
        var saeIn = new float[sae.DIn];
        sae.Preprocess(row, saeIn, 1);
        var pre = new float[dSae];
        var gate = sae.Config.Architecture == SaeArchitecture.Gated ? new float[dSae] : null;
        sae.PreActivations(saeIn, pre, 1, gate);
        static float MaxAbs(ReadOnlySpan<float> a) { float m = 0; foreach (float v in a) m = Math.Max(m, Math.Abs(v)); return m; }
        float m = DecisionMargin * MaxAbs(pre);
        switch (sae.Config.Architecture)
        {
            case SaeArchitecture.Gated:
            {
                float mg = DecisionMargin * MaxAbs(gate);
                for (int j = 0; j < dSae; j++) if (Math.Abs(gate![j]) <= mg || Math.Abs(pre[j]) <= m) return false;
                return true;
            }
            case SaeArchitecture.JumpRelu or SaeArchitecture.JumpReluTranscoder:
                for (int j = 0; j < dSae; j++) if (Math.Abs(pre[j] - sae.Threshold![j]) <= m || Math.Abs(pre[j]) <= m) return false;
                return true;
            case SaeArchitecture.TopK:
            {
                var ranked = (float[])pre.Clone();
                if (sae.Config.RescaleActsByDecoderNorm)
                    for (int j = 0; j < dSae; j++) ranked[j] *= sae.DecoderNorms[j];
                float mr = DecisionMargin * MaxAbs(ranked);
                Array.Sort(ranked, (a, b) => b.CompareTo(a));
                int k = sae.Config.K;
                if (k < dSae && ranked[k - 1] - ranked[k] <= mr) return false;
                for (int i = 0; i < k; i++) if (Math.Abs(ranked[i]) <= mr) return false;
                return true;
            }
            default:
                for (int j = 0; j < dSae; j++) if (Math.Abs(pre[j]) <= m) return false;
                return true;
        }
    }

    static void AddCase(SafetensorsWriter writer, Dictionary<string, string> metadata, Case c)
    {
        var sae = c.Sae;
        var cfg = sae.Config;
        string p = c.Variant.Name + "/";
        metadata[c.Variant.Name] = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["architecture"] = SaeConfig.ArchitectureName(cfg.Architecture),
            ["normalize_activations"] = SaeConfig.NormalizationName(cfg.Normalization),
            ["apply_b_dec_to_input"] = cfg.ApplyBDecToInput,
            ["rescale_acts_by_decoder_norm"] = cfg.RescaleActsByDecoderNorm,
            ["k"] = cfg.K,
        });
        writer.Add(p + "x", new Tensor([c.N, sae.DIn], c.X));
        writer.Add(p + "W_enc", new Tensor([sae.DIn, sae.DSae], sae.WEnc));
        writer.Add(p + "W_dec", new Tensor([sae.DSae, sae.DOut], sae.WDec));
        writer.Add(p + "b_dec", new Tensor([sae.DOut], sae.BDec));
        if (cfg.Architecture == SaeArchitecture.Gated)
        {
            writer.Add(p + "b_gate", new Tensor([sae.DSae], sae.BGate));
            writer.Add(p + "r_mag", new Tensor([sae.DSae], sae.RMag));
            writer.Add(p + "b_mag", new Tensor([sae.DSae], sae.BMag));
        }
        else writer.Add(p + "b_enc", new Tensor([sae.DSae], sae.BEnc));
        if (cfg.HasThreshold) writer.Add(p + "threshold", new Tensor([sae.DSae], sae.Threshold));
        if (cfg.Architecture == SaeArchitecture.SkipTranscoder) writer.Add(p + "W_skip", new Tensor([sae.DOut, sae.DIn], sae.WSkip));
    }

    static int NotMultipleOf16(Random rng, int lo, int hi)
    {
        while (true)
        {
            int v = rng.Next(lo, hi + 1);
            if (v % 16 != 0) return v;
        }
    }

    internal static double Gaussian(Random rng) => Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble());

    // ─────────────────────────────── TopK.Select ───────────────────────────────

    /// <summary><see cref="TopK.Select"/> against a full sort (value descending, lower index first among equals).</summary>
    public class TopKSelect
    {
        [Fact]
        public void MatchesFullSortOnRandomRows()
        {
            int seed = Random.Shared.Next();
            var rng = new Random(seed);
            for (int trial = 0; trial < 400; trial++)
            {
                int n = trial < 40 ? trial + 1 : rng.Next(1, 700); // every length below 41 (lane tails), then any
                int k = rng.Next(3) == 0 ? rng.Next(1, n + 1) : rng.Next(1, Math.Min(n, 64) + 1);
                var row = new float[n];
                int style = rng.Next(4);
                for (int i = 0; i < n; i++)
                    row[i] = style switch
                    {
                        0 => (float)Gaussian(rng),                                  // distinct, negative and positive
                        1 => rng.Next(-3, 4),                                       // many duplicates
                        2 => -1f - rng.Next(5),                                     // all negative, duplicated
                        _ => rng.Next(10) == 0 ? 7.5f : (float)(Gaussian(rng) - 2), // a repeated maximum among negatives
                    };
                CheckAgainstSort(row, k, $"seed {seed}, trial {trial}, n {n}, k {k}, style {style}");
            }
        }

        [Fact]
        public void IgnoresNaNWhenEnoughNumbers()
        {
            int seed = Random.Shared.Next();
            var rng = new Random(seed);
            for (int trial = 0; trial < 200; trial++)
            {
                int n = rng.Next(2, 300);
                var row = new float[n];
                int numbers = 0;
                for (int i = 0; i < n; i++)
                {
                    bool nan = rng.Next(4) == 0;
                    row[i] = nan ? float.NaN : rng.Next(-20, 20) * 0.5f;
                    if (!nan) numbers++;
                }
                if (numbers == 0) continue;
                int k = rng.Next(1, numbers + 1);
                CheckAgainstSort(row, k, $"seed {seed}, NaN trial {trial}, n {n}, k {k}");
            }
        }

        [Fact]
        public void RejectsBadK()
        {
            var row = new float[] { 1, 2, 3 };
            var idx = new int[4]; var val = new float[4];
            Assert.Throws<ArgumentOutOfRangeException>(() => TopK.Select(row, 0, idx, val));
            Assert.Throws<ArgumentOutOfRangeException>(() => TopK.Select(row, 4, idx, val));
        }

        static void CheckAgainstSort(float[] row, int k, string context)
        {
            var idx = new int[k]; var val = new float[k];
            TopK.Select(row, k, idx, val);
            var expected = Enumerable.Range(0, row.Length).Where(i => !float.IsNaN(row[i]))
                .OrderByDescending(i => row[i]).ThenBy(i => i).Take(k).OrderBy(i => i).ToArray();
            var got = idx.Order().ToArray();
            Assert.True(expected.SequenceEqual(got),
                $"selected [{string.Join(",", got)}], full sort says [{string.Join(",", expected)}] for row [{string.Join(",", row)}] ({context})");
            for (int i = 0; i < k; i++)
                Assert.True(val[i].Equals(row[idx[i]]), $"value {val[i]} at index {idx[i]} but the row has {row[idx[i]]} ({context})");
        }
    }

    // ─────────────────────────────── SparseActivations ───────────────────────────────

    /// <summary><see cref="SparseActivations"/>: dense → sparse → dense, lookups, and rejection of inconsistent input.</summary>
    public class SparseActivationsRoundTrip
    {
        [Fact]
        public void DenseSparseDenseIsExact()
        {
            int seed = Random.Shared.Next();
            var rng = new Random(seed);
            for (int trial = 0; trial < 50; trial++)
            {
                int rows = rng.Next(1, 30), cols = rng.Next(1, 200);
                double density = rng.NextDouble() * (trial % 5 == 0 ? 1 : 0.1);
                var dense = new float[rows * cols];
                int nonZero = 0;
                for (int i = 0; i < dense.Length; i++)
                    if (rng.NextDouble() < density) { dense[i] = (float)Gaussian(rng) + (rng.Next(2) == 0 ? 3 : -3); nonZero++; } // never 0
                if (trial % 7 == 0) Array.Clear(dense, 0, cols); // an empty row
                nonZero = dense.Count(v => v != 0);
                string context = $"seed {seed}, trial {trial}, {rows}×{cols}";

                var sparse = SparseActivations.FromDense(dense, rows, cols);
                Assert.Equal(rows, sparse.Rows);
                Assert.Equal(cols, sparse.Columns);
                Assert.Equal(nonZero, sparse.Index.Length);
                Assert.Equal((double)nonZero / rows, sparse.MeanL0, 12);
                Assert.True(dense.AsSpan().SequenceEqual(sparse.ToDense()), $"round trip changed values ({context})");
                for (int r = 0; r < rows; r++)
                {
                    var ri = sparse.RowIndices(r);
                    Assert.Equal(sparse.Count(r), ri.Length);
                    Assert.Equal(Enumerable.Range(0, cols).Count(j => dense[r * cols + j] != 0), ri.Length);
                    for (int e = 1; e < ri.Length; e++) Assert.True(ri[e - 1] < ri[e], $"row {r} indices not increasing ({context})");
                    for (int j = 0; j < cols; j++) Assert.Equal(dense[r * cols + j], sparse.Get(r, j));
                }

                // the same through the Builder and the constructor
                var b = new SparseActivations.Builder(rows, cols);
                for (int r = 0; r < rows; r++) b.AddDenseRow(dense.AsSpan(r * cols, cols));
                var rebuilt = b.Build();
                var copy = new SparseActivations(rows, cols, (int[])rebuilt.RowStart.Clone(), (int[])rebuilt.Index.Clone(), (float[])rebuilt.Value.Clone());
                Assert.True(dense.AsSpan().SequenceEqual(copy.ToDense()), $"rebuilt matrix differs ({context})");
            }
        }

        [Fact]
        public void RejectsInconsistentInput()
        {
            Assert.Throws<ArgumentException>(() => new SparseActivations(2, 5, [0, 1], [3], [1f]));            // RowStart too short
            Assert.Throws<ArgumentException>(() => new SparseActivations(1, 5, [0, 2], [3], [1f]));            // RowStart end ≠ entries
            Assert.Throws<ArgumentException>(() => new SparseActivations(1, 5, [0, 1], [3], [1f, 2f]));        // Index/Value lengths differ
            var b = new SparseActivations.Builder(1, 4);
            Assert.Throws<ArgumentException>(() => b.AddDenseRow(new float[3]));
            Assert.Throws<InvalidOperationException>(() => b.Build());
            b.AddDenseRow([0, 2, 0, -1]);
            Assert.Throws<InvalidOperationException>(() => b.AddDenseRow(new float[4]));
            var s = b.Build();
            Assert.Equal(new[] { 1, 3 }, s.RowIndices(0).ToArray());
            Assert.Equal(new[] { 2f, -1f }, s.RowValues(0).ToArray());
        }
    }
}
