using FeatureLens.Connections;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Steering;
using FeatureLens.Tests.Cli;
using FeatureLens.Tests.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Steering;

/// <summary>
/// compare-vector: cosines and the SAE's encoding vs brute force in double precision, the NNLS fits vs the KKT conditions,
/// steering with the vector vs its reconstruction vs direct hooked runs, the vector node's gradient effect vs torch autograd
/// (grad_reference.py) and its exact effect vs a direct run, and bad input — on stories260K with random SAEs and vectors.
/// </summary>
public sealed class VectorComparisonTests(ITestOutputHelper output) : IDisposable
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
    readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    static double Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b) { double s = 0; for (int i = 0; i < a.Length; i++) s += (double)a[i] * b[i]; return s; }

    [Fact]
    public void CosinesAndEncodingMatchBruteForce()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int d = rng.Next(8, 48), n = rng.Next(16, 200);
        var sae = SaeTestData.Random(rng, SaeArchitecture.Standard, d, n, "blocks.0.hook_resid_post", applyBDec: rng.Next(2) == 0);
        var v = SaeTestData.Gaussian(rng, d, 1 + 3 * (float)rng.NextDouble());
        var dec = VectorComparison.DecoderCosines(sae, v);
        var enc = VectorComparison.EncoderCosines(sae, v);
        var col = new float[d];
        for (int i = 0; i < n; i++)
        {
            var row = sae.WDec.AsSpan(i * d, d);
            double expect = Dot(row, v) / Math.Sqrt(Dot(row, row) * Dot(v, v));
            Assert.True(Math.Abs(dec[i] - expect) <= 1e-12, $"decoder cosine {i}: {dec[i]} vs {expect} (seed {seed})");
            for (int j = 0; j < d; j++) col[j] = sae.WEnc[j * n + i];
            expect = Dot(col, v) / Math.Sqrt(Dot(col, col) * Dot(v, v));
            Assert.True(Math.Abs(enc[i] - expect) <= 1e-12, $"encoder cosine {i}: {enc[i]} vs {expect} (seed {seed})");
        }
        var top = VectorComparison.Top(dec, 5);
        Assert.Equal(Enumerable.Range(0, n).OrderByDescending(i => dec[i]).Take(5), top.Select(t => t.Latent));

        // the SAE's encoding: ReLU((v − b_dec?)·W_enc + b_enc) in double
        var fit = VectorComparison.Encoding(sae, v);
        var acts = new double[n];
        for (int i = 0; i < n; i++)
        {
            double pre = sae.BEnc[i];
            for (int j = 0; j < d; j++) pre += ((double)v[j] - (sae.Config.ApplyBDecToInput ? sae.BDec[j] : 0)) * sae.WEnc[j * n + i];
            acts[i] = Math.Max(0, pre);
        }
        Assert.Equal(acts.Count(a => a > 0), fit.Atoms);
        foreach (var t in fit.Terms)
            Assert.True(Math.Abs(t.Coefficient - acts[t.Latent]) <= 1e-5 * Math.Max(1, acts[t.Latent]), $"encoding latent {t.Latent}: {t.Coefficient} vs {acts[t.Latent]} (seed {seed})");
        var r = v.Select((x, j) => (double)x - Enumerable.Range(0, n).Sum(i => acts[i] * sae.WDec[i * d + j])).ToArray();
        double explained = 1 - r.Sum(x => x * x) / Dot(v, v);
        Assert.True(Math.Abs(fit.Explained - explained) <= 1e-5 * Math.Max(1, Math.Abs(explained)), $"explained {fit.Explained} vs {explained} (seed {seed})");
    }

    [Fact]
    public void NnlsFitsSatisfyTheKktConditions()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int d = rng.Next(8, 64), n = rng.Next(32, 300);
        var sae = SaeTestData.Random(rng, SaeArchitecture.Standard, d, n, "blocks.0.hook_resid_post");
        // a planted non-negative mixture of a few rows plus noise, so the fit has something to find
        var v = SaeTestData.Gaussian(rng, d, 0.05f);
        foreach (int i in Enumerable.Range(0, rng.Next(2, 6)).Select(_ => rng.Next(n)))
            for (int j = 0; j < d; j++) v[j] += (0.5f + (float)rng.NextDouble()) * sae.WDec[i * d + j];
        var fits = VectorComparison.Nnls(sae, v, 16);
        Assert.NotEmpty(fits);
        double vv = Dot(v, v), prev = double.NegativeInfinity;
        foreach (var f in fits)
        {
            Assert.True(f.Terms.Length <= f.Atoms, $"{f.Atoms} steps but {f.Terms.Length} terms (seed {seed})");
            var r = VectorComparison.Residual(sae, v, f.Terms);
            // KKT on the support: c > 0 and ∂/∂c_i ½‖v − Dᵀc‖² = −d_i·r = 0 (relative to ‖d_i‖‖v‖)
            foreach (var t in f.Terms)
            {
                Assert.True(t.Coefficient > 0, $"k={f.Atoms}: coefficient {t.Coefficient} of latent {t.Latent} (seed {seed})");
                var row = sae.WDec.AsSpan(t.Latent * d, d);
                double g = 0;
                for (int j = 0; j < d; j++) g += row[j] * r[j];
                Assert.True(Math.Abs(g) <= 1e-9 * Math.Sqrt(Dot(row, row) * vv), $"k={f.Atoms}: gradient {g:E2} at latent {t.Latent} (seed {seed})");
            }
            double explained = 1 - r.Sum(x => x * x) / vv;
            Assert.True(Math.Abs(f.Explained - explained) <= 1e-12, $"k={f.Atoms}: explained {f.Explained} vs {explained} (seed {seed})");
            Assert.True(f.Explained >= prev - 1e-12, $"k={f.Atoms}: explained fell from {prev} to {f.Explained} (seed {seed})");
            prev = f.Explained;
        }
        // step 1 is the best-aligned row with its least-squares coefficient d·v/‖d‖²
        var cos = VectorComparison.DecoderCosines(sae, v);
        int best = Enumerable.Range(0, n).OrderByDescending(i => cos[i]).First();
        var t0 = Assert.Single(fits[0].Terms);
        Assert.Equal(best, t0.Latent);
        var b = sae.WDec.AsSpan(best * d, d);
        Assert.True(Math.Abs(t0.Coefficient - Dot(b, v) / Dot(b, b)) <= 1e-9 * t0.Coefficient, $"1-atom coefficient (seed {seed})");
        output.WriteLine($"seed {seed}: explained {string.Join(", ", fits.Select(f => $"{f.Atoms}:{f.Explained:F4}"))}");
    }

    /// <summary>Next-token softmax of the last row of logits (T, V) in double.</summary>
    static double[] LogSoftmaxLast(float[] logits, int T, int V)
    {
        var row = logits.AsSpan((T - 1) * V, V);
        double m = double.NegativeInfinity, s = 0;
        foreach (float x in row) m = Math.Max(m, x);
        foreach (float x in row) s += Math.Exp(x - m);
        double lz = m + Math.Log(s);
        var lp = new double[V];
        for (int i = 0; i < V; i++) lp[i] = row[i] - lz;
        return lp;
    }

    static float[] Steered(HookedTransformer model, int[] tokens, string hook, float[] dir, float s) =>
        model.RunWithHooks([tokens], (hook, (act, _) =>
        {
            int w = dir.Length;
            for (int t = 0; t < act.Shape[1]; t++)
                for (int j = 0; j < w; j++) act.Data[t * w + j] += s * dir[j];
            return null;
        }
    )).Data;

    [Fact]
    public void BehaviourKlMatchesDirectSteeredRuns()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        int d = model.Config.DModel, V = model.Config.VocabSize;
        string hook = $"blocks.{rng.Next(model.Config.NLayers)}.hook_resid_post";
        var sae = SaeTestData.Random(rng, SaeArchitecture.Standard, d, rng.Next(32, 128), hook);
        var v = SaeTestData.Gaussian(rng, d, 0.3f + (float)rng.NextDouble());
        float s = 0.5f + 3 * (float)rng.NextDouble();
        var prompts = Enumerable.Range(0, rng.Next(1, 3)).Select(_ => model.Tokenizer!.Encode("Once upon a time " + string.Join(' ', Enumerable.Range(0, rng.Next(1, 6)).Select(_ => rng.Next(2) == 0 ? "Lily" : "happy dog")), true)).ToList();
        var fits = VectorComparison.Nnls(sae, v, 4);
        var rows = VectorComparison.Behaviour(model, hook, v, s, sae, fits, prompts);
        Assert.Equal(fits.Count, rows.Count);
        for (int k = 0; k < fits.Count; k++)
        {
            var rec = new float[d];
            foreach (var t in fits[k].Terms) for (int j = 0; j < d; j++) rec[j] += (float)(t.Coefficient * sae.WDec[t.Latent * d + j]);
            double kl = 0;
            foreach (var p in prompts)
            {
                var a = LogSoftmaxLast(Steered(model, p, hook, v, s), p.Length, V);
                var b = LogSoftmaxLast(Steered(model, p, hook, rec, s), p.Length, V);
                kl += Enumerable.Range(0, V).Sum(i => Math.Exp(a[i]) * (a[i] - b[i]));
            }
            kl /= prompts.Count;
            Assert.True(Math.Abs(rows[k].Kl - kl) <= 1e-5 * Math.Max(1, kl), $"k={fits[k].Atoms}: KL {rows[k].Kl} vs direct {kl} (seed {seed})");
            Assert.Equal(fits[k].Explained, rows[k].Explained);
        }
    }

    [Fact]
    public void VectorNodeEffectMatchesTorchGradientAndADirectRun()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        int d = model.Config.DModel, V = model.Config.VocabSize;
        string hook = $"blocks.{rng.Next(model.Config.NLayers)}.hook_resid_{(rng.Next(2) == 0 ? "mid" : "post")}";
        var v = SaeTestData.Gaussian(rng, d, 0.5f);
        float s = 0.5f + (float)rng.NextDouble();
        var tokens = Enumerable.Range(0, rng.Next(1, 3)).Select(_ => model.Tokenizer!.Encode(string.Join(' ', Enumerable.Range(0, rng.Next(2, 7)).Select(_ => rng.Next(2) == 0 ? "Tom saw" : "a big cat")), true)).ToArray();
        int t1 = rng.Next(V), t2 = (t1 + 1 + rng.Next(V - 1)) % V;
        var metric = Metric.Parse($"logit-diff:{t1},{t2}");
        var e = VectorComparison.NodeEffect(model, hook, v, s, metric, tokens);

        string refPath = GradReference.Run(Stories, tokens, metric.ToString(), _dir.File("grad.safetensors"));
        using var f = SafetensorsFile.Open(refPath);
        double grad = 0, clean = 0;
        for (int b = 0; b < tokens.Length; b++)
        {
            var g = f.ReadF32($"{b}/{hook}.grad").Data;   // (T, d)
            for (int t = 0; t < tokens[b].Length; t++) grad += Dot(g.AsSpan(t * d, d), v);
            clean += f.ReadF32($"{b}/metric").Data[0];
        }
        grad *= s;
        Assert.True(Math.Abs(e.Gradient - grad) <= 1e-4 * Math.Max(1, Math.Abs(grad)), $"gradient effect {e.Gradient} vs torch {grad} (seed {seed})");
        Assert.True(Math.Abs(e.Clean - clean) <= 1e-5 * Math.Max(1, Math.Abs(clean)), $"clean {e.Clean} vs torch {clean} (seed {seed})");

        double exact = 0;
        foreach (var p in tokens)
        {
            var steered = Steered(model, p, hook, v, s);
            var plain = model.Forward(p).Data;
            int last = (p.Length - 1) * V;
            exact += (steered[last + t1] - steered[last + t2]) - (plain[last + t1] - plain[last + t2]);
        }
        Assert.True(Math.Abs(e.Exact - exact) <= 1e-5 * Math.Max(1, Math.Abs(exact)), $"exact effect {e.Exact} vs direct {exact} (seed {seed})");
        output.WriteLine($"seed {seed}: {hook}, gradient {e.Gradient:F5}, exact {e.Exact:F5}");
    }

    [Fact]
    public void BadInputGivesClearErrors()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        int d = model.Config.DModel;
        string hook = "blocks.1.hook_resid_post";
        var sae = SaeTestData.Random(rng, SaeArchitecture.Standard, d, 64, hook);
        var wrong = SaeTestData.Gaussian(rng, d + 1 + rng.Next(5), 1f);
        Assert.Contains($"{wrong.Length} entries but {d}", Assert.Throws<ArgumentException>(() => VectorComparison.DecoderCosines(sae, wrong)).Message);
        var nan = SaeTestData.Gaussian(rng, d, 1f);
        int bad = rng.Next(d);
        nan[bad] = float.NaN;
        Assert.Contains($"entry {bad}", Assert.Throws<ArgumentException>(() => VectorComparison.Nnls(sae, nan, 4)).Message);
        Assert.Contains("zero", Assert.Throws<ArgumentException>(() => VectorComparison.EncoderCosines(sae, new float[d])).Message);

        string saeDir = _dir.File("sae");
        SaeWriter.Save(sae, saeDir);
        string vf = _dir.File("v.safetensors"), wf = _dir.File("w.safetensors");
        SteeringVectors.Save(vf, SaeTestData.Gaussian(rng, d, 1f), hook, 1, ContrastPosition.Last, null);
        SteeringVectors.Save(wf, wrong, hook, 1, ContrastPosition.Last, null);
        var r = CliTests.Run("compare-vector", "--model", Stories, "--vector", vf, "--sae", saeDir, "--hook", "blocks.1.hook_nonsense");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("blocks.1.hook_nonsense", r.Stderr);
        r = CliTests.Run("compare-vector", "--model", Stories, "--vector", wf, "--sae", saeDir);
        Assert.Equal(1, r.ExitCode);
        Assert.Contains($"{wrong.Length} entries but {d}", r.Stderr);
        r = CliTests.Run("compare-vector", "--model", Stories, "--vector", vf, "--sae", saeDir, "--hook", "blocks.0.hook_resid_post");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("no SAE writes the vector's hook", r.Stderr);
        r = CliTests.Run("compare-vector", "--model", Stories, "--vector", vf, "--sae", saeDir, "--metric", "logit:3");
        Assert.Equal(1, r.ExitCode);
        Assert.Contains("--metric needs --prompt", r.Stderr);

        // and a good run writes JSON that agrees with the library
        string json = _dir.File("c.json");
        r = CliTests.Run("compare-vector", "--model", Stories, "--vector", vf, "--sae", saeDir, "--prompt", "Lily saw a dog", "--strength", "2", "--metric", "logit:5", "--json", json);
        Assert.True(r.ExitCode == 0, r.Stderr + $" (seed {seed})");
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json));
        var first = doc.RootElement.GetProperty("saes")[0];
        var v = SteeringVectors.Read(vf, null);
        var loaded = SaeLoader.Load(saeDir);
        int best = VectorComparison.Top(VectorComparison.DecoderCosines(loaded, v), 1)[0].Latent;
        Assert.Equal(best, first.GetProperty("decoder_matches")[0].GetProperty("latent").GetInt32());
        Assert.Equal(first.GetProperty("nnls").GetArrayLength(), first.GetProperty("behaviour").GetArrayLength());
        Assert.True(doc.RootElement.GetProperty("node_effect").GetProperty("exact").ValueKind == System.Text.Json.JsonValueKind.Number);
    }
}
