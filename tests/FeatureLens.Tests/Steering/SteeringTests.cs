using System.Text.Json;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Steering;
using FeatureLens.Tests.Cli;
using FeatureLens.Tests.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Steering;

/// <summary>
/// Clamping vs an independent recompute, contrastive vectors vs the mean of cached activations, featurelens steer's JSON
/// vs the library, and bad input, on stories260K with random SAEs.
/// </summary>
public sealed class SteeringTests(ITestOutputHelper output) : IDisposable
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");
    readonly TempDir _dir = new();
    public void Dispose() => _dir.Dispose();

    static readonly string[] Words = ["Lily", "Tom", "happy", "sad", "dog", "cat", "ran", "saw", "big", "little", "ball", "park", "cried", "smiled", "tree"];
    static string RandomText(Random rng) => string.Join(' ', Enumerable.Range(0, rng.Next(3, 9)).Select(_ => Words[rng.Next(Words.Length)]));

    [Fact]
    public void ClampEqualsTheDecodedChangeOfTheLatent()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        int L = model.Config.NLayers, d = model.Config.DModel;
        string hook = $"blocks.{rng.Next(L)}.hook_resid_post";
        var sae = SaeTestData.Random(rng, SaeArchitecture.Standard, d, rng.Next(32, 128), hook);
        int latent = rng.Next(sae.DSae);
        float value = 1 + 5 * (float)rng.NextDouble();
        var where = (SteeringPositions)rng.Next(3);
        var steerer = new Steerer(model, [], [new SteeringClamp(new SaeSplice(sae, true), latent, value, "c")], where);
        var tokens = model.Tokenizer!.Encode(RandomText(rng), true);
        int split = rng.Next(1, tokens.Length + 1);   // the "prompt" part
        var ours = model.Run([tokens], steerer.PassOptions(1f, 0, split))!;

        // independent: x += (value − f_latent(x)) · W_dec[latent] at the steered rows, f from Sae.Encode
        var direct = model.RunWithHooks([tokens], (hook, (act, _) =>
        {
            int T = act.Shape[1];
            var f = sae.Encode(new Tensor([T, d], (float[])act.Data.Clone()));
            for (int t = 0; t < T; t++)
            {
                if (!SteeringSpec.Covers(where, t, split)) continue;
                float c = value - f.Data[t * sae.DSae + latent];
                for (int j = 0; j < d; j++) act.Data[t * d + j] += c * sae.WDec[latent * d + j];
            }
            return null;
        }
        ));
        double err = Compare.RelativeError(ours.Data, direct.Data, "logits");
        Assert.True(err <= 1e-5, $"clamp vs recompute: {err:E2} (positions {where}, split {split}, seed {seed})");
        var plain = model.Forward(tokens);
        Assert.True(Compare.RelativeError(plain.Data, direct.Data, "plain") > 1e-4 || where == SteeringPositions.New && split == tokens.Length, $"the clamp changed nothing (seed {seed})");
    }

    [Fact]
    public void ContrastiveVectorIsTheMeanOfCachedDifferences()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        string hook = $"blocks.{rng.Next(model.Config.NLayers)}.hook_resid_{(rng.Next(2) == 0 ? "mid" : "post")}";
        int n = rng.Next(2, 5);
        var pos = Enumerable.Range(0, n).Select(_ => RandomText(rng)).ToList();
        var neg = Enumerable.Range(0, n).Select(_ => RandomText(rng)).ToList();
        string pf = _dir.File("pos.txt"), nf = _dir.File("neg.jsonl"), vf = _dir.File("v.safetensors");
        File.WriteAllLines(pf, pos);
        File.WriteAllLines(nf, neg.Select(t => JsonSerializer.Serialize(new { text = t })));
        foreach (var mode in new[] { ContrastPosition.Last, ContrastPosition.Mean })
        {
            var expect = new double[model.Config.DModel];
            foreach (var (text, sign) in pos.Select(t => (t, 1)).Concat(neg.Select(t => (t, -1))))
            {
                var ids = model.Tokenizer!.Encode(text, true);
                var (_, cache) = model.RunWithCache([ids], nm => nm == hook);
                var a = cache.Sequence(hook, 0);   // (T, d)
                int T = ids.Length, d = model.Config.DModel, from = mode == ContrastPosition.Last ? T - 1 : 0;
                for (int t = from; t < T; t++)
                    for (int j = 0; j < d; j++) expect[j] += sign * a.Data[t * d + j] / (T - from) / n;
            }
            var r = CliTests.Run("steering-vector", "--model", Stories, "--hook", hook, "--positive", pf, "--negative", nf, "--out", vf, "--position", mode.ToString().ToLowerInvariant());
            Assert.True(r.ExitCode == 0, r.Stderr);
            using var f = SafetensorsFile.Open(vf);
            var v = f.ReadF32(SteeringVectors.TensorName);
            Assert.Equal([model.Config.DModel], v.Shape);
            for (int j = 0; j < v.Length; j++)
                Assert.True(Math.Abs(v.Data[j] - expect[j]) <= 1e-5 * Math.Max(1, Math.Abs(expect[j])), $"{mode} entry {j}: {v.Data[j]} vs {expect[j]} (seed {seed})");
            Assert.Equal(hook, f.Metadata["hook"]);
            Assert.Equal(n.ToString(System.Globalization.CultureInfo.InvariantCulture), f.Metadata["count"]);
            Assert.Equal(mode.ToString().ToLowerInvariant(), f.Metadata["position"]);
        }
    }

    (string SaeDir, Sae Sae) WriteSae(Random rng, HookedTransformer model)
    {
        string hook = $"blocks.{rng.Next(model.Config.NLayers)}.hook_resid_post";
        var sae = SaeTestData.Random(rng, SaeArchitecture.Standard, model.Config.DModel, rng.Next(32, 96), hook);
        string dir = _dir.File("sae");
        SaeWriter.Save(sae, dir);
        return (dir, SaeLoader.Load(dir));
    }

    [Fact]
    public void SteerJsonMatchesTheLibrary()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        using var model = HookedTransformer.Load(Stories);
        var (saeDir, sae) = WriteSae(rng, model);
        string hook = sae.Config.HookName, vecHook = $"blocks.{rng.Next(model.Config.NLayers)}.hook_resid_mid";
        var vec = SaeTestData.Gaussian(rng, model.Config.DModel, 0.3f);
        string vf = _dir.File("vecs.safetensors");
        new SafetensorsWriter().Add("a", new Tensor([1, vec.Length], vec)).Add("b", new Tensor([3], [1, 2, 3])).Write(vf);
        int fl = rng.Next(sae.DSae), cl = rng.Next(sae.DSae);
        float fs = 1 + 2 * (float)rng.NextDouble(), cv = 3 * (float)rng.NextDouble(), vs = (float)rng.NextDouble();
        const string prompt = "Once upon a time, Lily";
        string json = _dir.File("steer.json");
        string F(float x) => x.ToString("R", System.Globalization.CultureInfo.InvariantCulture);
        var r = CliTests.Run("steer", "--model", Stories, "--prompt", prompt, "--sae", saeDir, "--feature", $"{hook}:{fl}={F(fs)}", "--clamp", $"{hook}:{cl}={F(cv)}",
            "--vector", $"{vf}:a@{vecHook}={F(vs)}", "--strengths", "0.5,2", "--logit", "5", "--logit", "9", "--max-new-tokens", "8", "--top-features", "3", "--json", json);
        Assert.True(r.ExitCode == 0, r.Stderr);

        var ids = model.Tokenizer!.Encode(prompt, true);
        var steerer = new Steerer(model, [Steerer.Feature(sae, fl, fs), new SteeringAddition(vecHook, vec, vs, "v")], [new SteeringClamp(new SaeSplice(sae, true), cl, cv, "c")]);
        var baseline = steerer.Generate(ids, null, 8, new SamplingOptions());
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.Equal(baseline.Tokens, root.GetProperty("baseline").GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()));
        Assert.False(string.IsNullOrEmpty(root.GetProperty("baseline").GetProperty("text").GetString()));
        var steered = root.GetProperty("steered").EnumerateArray().ToList();
        Assert.Equal(2, steered.Count);
        foreach (var (st, k) in steered.Zip(new[] { 0.5f, 2f }))
        {
            Assert.Equal(k, st.GetProperty("strength").GetSingle());
            var g = steerer.Generate(ids, k, 8, new SamplingOptions());
            Assert.Equal(g.Tokens, st.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()));
            Assert.True(st.GetProperty("text").ValueKind == JsonValueKind.String);
            Assert.True(Math.Abs(SteeringSweep.Kl(baseline.NextTokenLogits, g.NextTokenLogits) - st.GetProperty("kl").GetDouble()) <= 1e-9, $"KL at {k} (seed {seed})");
            var lc = st.GetProperty("logit_changes").EnumerateArray().ToList();
            Assert.Equal([5, 9], lc.Select(c => c.GetProperty("token").GetInt32()));
            foreach (var c in lc)
            {
                int t = c.GetProperty("token").GetInt32();
                Assert.True(Math.Abs(g.NextTokenLogits[t] - baseline.NextTokenLogits[t] - c.GetProperty("delta").GetDouble()) <= 1e-6, $"logit {t} at {k}");
            }
            // the features: the 3 latents whose mean moved most, recomputed here from cached runs
            var fs3 = st.GetProperty("features").EnumerateArray().ToList();
            Assert.Equal(3, fs3.Count);
            var splice = new SaeSplice(sae, true);
            double[] Mean(int[] seq, float? strength)
            {
                using var cache = new ActivationCache { Lengths = [seq.Length] };
                var o = steerer.PassOptions(strength, 0, ids.Length, [splice], n => n == splice.ActsPostHook, cache);
                model.Run([seq], o);
                var a = cache[splice.ActsPostHook];
                return Enumerable.Range(0, sae.DSae).Select(j => Enumerable.Range(0, seq.Length).Average(t => (double)a.Data[t * sae.DSae + j])).ToArray();
            }
            foreach (var f in fs3)
            {
                Assert.Equal(hook, f.GetProperty("hook").GetString());
                double delta = f.GetProperty("delta").GetDouble();
                Assert.True(Math.Abs(f.GetProperty("steered").GetDouble() - f.GetProperty("baseline").GetDouble() - delta) <= 1e-9);
            }
            var mb = Mean([.. ids, .. baseline.Tokens], null);
            Assert.True(Math.Abs(mb[fs3[0].GetProperty("latent").GetInt32()] - fs3[0].GetProperty("baseline").GetDouble()) <= 1e-5, $"baseline mean (seed {seed})");
        }
    }

    [Fact]
    public void BadSteeringInputIsAClearError()
    {
        var rng = new Random(Random.Shared.Next());
        using var model = HookedTransformer.Load(Stories);
        var (saeDir, sae) = WriteSae(rng, model);
        string hook = sae.Config.HookName, o = _dir.File("s.json");
        string wide = _dir.File("wide.npy"), nan = _dir.File("nan.safetensors"), ok = _dir.File("ok.safetensors");
        WriteNpy(wide, new float[model.Config.DModel + 3]);
        var bad = SaeTestData.Gaussian(rng, model.Config.DModel, 1f); bad[rng.Next(bad.Length)] = float.NaN;
        new SafetensorsWriter().Add("v", new Tensor([bad.Length], bad)).Write(nan);
        new SafetensorsWriter().Add("v", new Tensor([model.Config.DModel], SaeTestData.Gaussian(rng, model.Config.DModel, 1f))).Write(ok);
        void Fails(string expect, params string[] args)
        {
            var r = CliTests.Run(["steer", "--model", Stories, "--prompt", "Lily", "--sae", saeDir, "--max-new-tokens", "3", .. args, "--json", o]);
            Assert.True(r.ExitCode == 1, $"exit {r.ExitCode} for {string.Join(' ', args)}: {r.Stderr}");
            Assert.Contains(expect, r.Stderr, StringComparison.Ordinal);
            Assert.False(File.Exists(o));
        }
        Fails($"has {model.Config.DModel + 3} entries but hook 'blocks.0.hook_resid_post' has width {model.Config.DModel}", "--vector", $"{wide}@blocks.0.hook_resid_post=1");
        Fails("NaN", "--vector", $"{nan}:v@blocks.0.hook_resid_post=1");
        Fails("no tensor 'nope'", "--vector", $"{ok}:nope@blocks.0.hook_resid_post=1");
        Fails("'blocks.99.hook_resid_post' is not a hook point", "--vector", $"{ok}@blocks.99.hook_resid_post=1");
        Fails("--strengths '1,abc': 'abc' is not a finite number", "--feature", $"{hook}:0=1", "--strengths", "1,abc");
        Fails($"latent {sae.DSae} is outside [0, {sae.DSae})", "--feature", $"{hook}:{sae.DSae}=1");
        Fails($"latent {sae.DSae + 5} is outside [0, {sae.DSae})", "--clamp", $"{hook}:{sae.DSae + 5}=1");
        Fails("no SAE at that hook", "--feature", "blocks.0.hook_mlp_out:1=1");
        Fails("--positions 'middle'", "--feature", $"{hook}:0=1", "--positions", "middle");
        Fails("'x' is not a finite number", "--feature", $"{hook}:0=x");
        Fails("give at least one --feature, --clamp or --vector");
        var sv = CliTests.Run("steering-vector", "--model", Stories, "--hook", "blocks.9.hook_resid_post", "--positive", ok, "--negative", ok, "--out", _dir.File("v.safetensors"));
        Assert.Equal(1, sv.ExitCode);
        string p1 = _dir.File("p1.txt"), p2 = _dir.File("p2.txt");
        File.WriteAllLines(p1, ["a", "b"]); File.WriteAllLines(p2, ["c"]);
        sv = CliTests.Run("steering-vector", "--model", Stories, "--hook", "blocks.0.hook_resid_post", "--positive", p1, "--negative", p2, "--out", _dir.File("v.safetensors"));
        Assert.Equal(1, sv.ExitCode);
        Assert.Contains("--positive has 2 prompts but --negative has 1", sv.Stderr, StringComparison.Ordinal);
        Assert.False(File.Exists(_dir.File("v.safetensors")));
    }

    static void WriteNpy(string path, float[] data)
    {
        string header = $"{{'descr': '<f4', 'fortran_order': False, 'shape': ({data.Length},), }}";
        int total = 10 + header.Length + 1;
        header = header.PadRight(header.Length + (64 - total % 64) % 64) + "\n";
        using var s = File.Create(path);
        s.Write([0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0]);
        s.Write(BitConverter.GetBytes((ushort)header.Length));
        s.Write(System.Text.Encoding.ASCII.GetBytes(header));
        s.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()));
    }
}
