using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Tests.Saes;

/// <summary>SAEs spliced into the real stories260K forward pass.</summary>
public class SaeSpliceTests
{
    static HookedTransformer Stories() => HookedTransformer.Load(Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin"));

    static int[] RandomTokens(Random rng, int n) => [1, .. Enumerable.Range(0, n).Select(_ => 3 + rng.Next(500))];

    static Tensor Rows(Tensor t, int b, int len)
    {
        int d = t.Shape[^1];
        var r = new Tensor(len, d);
        Array.Copy(t.Data, (long)b * t.Shape[1] * d, r.Data, 0, (long)len * d);
        return r;
    }

    [Theory]
    [InlineData(SaeArchitecture.Standard)]
    [InlineData(SaeArchitecture.TopK)]
    [InlineData(SaeArchitecture.JumpRelu)]
    [InlineData(SaeArchitecture.Gated)]
    public void WithErrorTermTheModelIsUnchangedAndSaeHooksMatchDirectEncoding(SaeArchitecture arch)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        int layer = rng.Next(m.Config.NLayers);
        string hook = $"blocks.{layer}.hook_resid_post";
        var sae = SaeTestData.Random(rng, arch, m.Config.DModel, 96 + rng.Next(100), hook, k: 5 + rng.Next(10), applyBDec: rng.Next(2) == 0, inputScale: 1f);
        int[] a = RandomTokens(rng, 12 + rng.Next(8)), b = RandomTokens(rng, 5 + rng.Next(5));
        var (clean, cleanCache) = m.RunWithCache([a, b], n => n == hook);
        var cache = new ActivationCache { Lengths = [a.Length, b.Length] };
        var logits = m.Run([a, b], new RunOptions { Splices = [new SaeSplice(sae, useErrorTerm: true)], CacheFilter = n => n.Contains(".hook_sae_"), Cache = cache })!;
        double err = Compare.RelativeError(logits.Data, clean.Data, "logits");
        Assert.True(err <= 1e-6, $"seed {seed}: spliced-with-error logits differ from clean by {err:E2}");
        foreach (var (seq, bi) in new[] { (a, 0), (b, 1) })
        {
            var x = Rows(cleanCache[hook], bi, seq.Length);
            var acts = sae.Encode(x);
            var got = Rows(cache[hook + ".hook_sae_acts_post"], bi, seq.Length);
            double ea = Compare.RelativeError(got.Data, acts.Data, "acts_post"); Assert.True(ea <= 1e-6, $"seed {seed}: acts_post differs from Sae.Encode by {ea:E2} (seq {bi})");
            var (_, outp) = sae.Forward(x);
            var recons = Rows(cache[hook + ".hook_sae_output"], bi, seq.Length);
            var error = Rows(cache[hook + ".hook_sae_error"], bi, seq.Length);
            var expectedError = x.Data.Zip(outp.Data, (p, q) => p - q).ToArray();
            double ee = Compare.RelativeError(error.Data, expectedError, "error");
            Assert.True(ee <= 1e-5, $"seed {seed}: hook_sae_error differs by {ee:E2}");
            Assert.True(Compare.RelativeError(recons.Data, x.Data, "output") <= 1e-6);
            Assert.Equal(x.Data, Rows(cache[hook + ".hook_sae_input"], bi, seq.Length).Data);
        }
        // padding rows of the short sequence stay zero in SAE hooks
        Assert.All(cache[hook + ".hook_sae_acts_post"].Data.AsSpan((a.Length + b.Length) * sae.DSae).ToArray(), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void WithoutErrorTermTheReconstructionReplacesTheActivation()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        var hooks = new[] { "blocks.1.hook_resid_post", "blocks.3.hook_resid_post", "blocks.2.hook_mlp_out" };
        var saes = hooks.Select(h => SaeTestData.Random(rng, SaeArchitecture.TopK, m.Config.DModel, 128, h, k: 8, applyBDec: true)).ToList();
        int[] a = RandomTokens(rng, 15);
        var spliced = m.Run([a], new RunOptions { Splices = saes.Select(s => (IHookSplice)new SaeSplice(s)).ToList() })!;
        // the same thing by hand: replace each hook's activation with the SAE's output
        var manual = m.RunWithHooks([a], saes.Select(s => (s.Config.HookName, (HookFunction)((t, _) =>
        {
            var x = t.Reshape(t.Shape[1], t.Shape[2]);
            return s.Forward(x).Output.Reshape(t.Shape);
        }))).ToArray());
        Assert.Equal(manual.Data, spliced.Data);
        var clean = m.Forward(a);
        Assert.True(Compare.RelativeError(spliced.Data, clean.Data, "logits") > 1e-3, $"seed {seed}: splicing changed nothing");
    }

    [Fact]
    public void AblatingALatentWithTheErrorTermMovesTheOutputByItsDecodedChange()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        string hook = "blocks.2.hook_resid_post";
        var sae = SaeTestData.Random(rng, SaeArchitecture.Standard, m.Config.DModel, 200, hook);
        int[] a = RandomTokens(rng, 10);
        var (_, cc) = m.RunWithCache([a], n => n == hook);
        var x = Rows(cc[hook], 0, a.Length);
        var acts = sae.Encode(x);
        int best = Enumerable.Range(0, sae.DSae).MaxBy(j => Enumerable.Range(0, a.Length).Sum(t => acts.Data[t * sae.DSae + j]));
        using var attach = m.AddSplice(new SaeSplice(sae, useErrorTerm: true));
        Assert.Contains(hook + ".hook_sae_acts_post", m.HookPointNames);
        var cache = new ActivationCache { Lengths = [a.Length] };
        m.Run([a], new RunOptions
        {
            Hooks = [(hook + ".hook_sae_acts_post", (t, _) => { for (int p = 0; p < a.Length; p++) t.Data[p * sae.DSae + best] = 0; return null; })],
            CacheFilter = n => n == hook + ".hook_sae_output", Cache = cache,
        });
        var got = Rows(cache[hook + ".hook_sae_output"], 0, a.Length);
        for (int t = 0; t < a.Length; t++)
            for (int d = 0; d < sae.DIn; d++)
            {
                float expected = x.Data[t * sae.DIn + d] - acts.Data[t * sae.DSae + best] * sae.WDec[best * sae.DOut + d];
                Assert.True(Math.Abs(got.Data[t * sae.DIn + d] - expected) <= 1e-5f * (1 + Math.Abs(expected)), $"seed {seed}: t {t} d {d}: {got.Data[t * sae.DIn + d]} vs {expected}");
            }
    }

    [Fact]
    public void TranscoderReadsOneHookAndWritesAnother()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        string hin = "blocks.1.ln2.hook_normalized", hout = "blocks.1.hook_mlp_out";
        var tc = SaeTestData.Random(rng, SaeArchitecture.SkipTranscoder, m.Config.DModel, 150, hin, dOut: m.Config.DModel, hookOut: hout);
        int[] a = RandomTokens(rng, 9);
        var (clean, cc) = m.RunWithCache([a], n => n == hin || n == hout);
        var cache = new ActivationCache { Lengths = [a.Length] };
        var withErr = m.Run([a], new RunOptions { Splices = [new SaeSplice(tc, useErrorTerm: true)], CacheFilter = n => n.Contains(".hook_sae_"), Cache = cache })!;
        Assert.True(Compare.RelativeError(withErr.Data, clean.Data, "logits") <= 1e-6);
        var (_, expected) = tc.Forward(Rows(cc[hin], 0, a.Length));
        var recons = Rows(cache[hin + ".hook_sae_recons"], 0, a.Length);
        var acts = tc.Encode(Rows(cc[hin], 0, a.Length));
        Assert.Equal(acts.Data, Rows(cache[hin + ".hook_sae_acts_post"], 0, a.Length).Data);
        var replaced = new ActivationCache { Lengths = [a.Length] };
        // without the error term the transcoder's output replaces hook_mlp_out (whose own cache entry is the value before)
        var replacedLogits = m.Run([a], new RunOptions { Splices = [new SaeSplice(tc)], CacheFilter = n => n == hin + ".hook_sae_output", Cache = replaced })!;
        var manual = m.RunWithHooks([a], (hout, (t, _) => tc.Forward(Rows(cc[hin], 0, a.Length)).Output.Reshape(t.Shape)));
        Assert.Equal(manual.Data, replacedLogits.Data);
        double e = Compare.RelativeError(Rows(replaced[hin + ".hook_sae_output"], 0, a.Length).Data, expected.Data, "transcoder output");
        Assert.True(e <= 1e-6, $"seed {seed}: transcoder output differs from Forward by {e:E2}");
        // recons excludes the skip path; output = recons + x·W_skipᵀ
        Assert.True(Compare.RelativeError(recons.Data, expected.Data, "recons") > 1e-4);
    }

    [Fact]
    public void HeadIndexedSaeReadsAndWritesOneHeadOfHookZ()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        string hook = "blocks.0.attn.hook_z";
        int h = rng.Next(m.Config.NHeads);
        var sae = SaeTestData.Random(rng, SaeArchitecture.Standard, m.Config.DHead, 40, hook);
        sae.Config.Metadata.HookHeadIndex = h;
        int[] a = RandomTokens(rng, 7);
        var (_, cc) = m.RunWithCache([a], n => n == hook);
        var cache = new ActivationCache { Lengths = [a.Length] };
        m.Run([a], new RunOptions { Splices = [new SaeSplice(sae)], CacheFilter = n => n.StartsWith(hook, StringComparison.Ordinal), Cache = cache });
        var z = cc[hook];
        int hs = m.Config.DHead, nh = m.Config.NHeads;
        var head = new Tensor(a.Length, hs);
        for (int t = 0; t < a.Length; t++) Array.Copy(z.Data, (t * nh + h) * hs, head.Data, t * hs, hs);
        Assert.Equal(sae.Encode(head).Data, Rows(cache[hook + ".hook_sae_acts_post"], 0, a.Length).Data);
        Assert.Equal([1, a.Length, 40], cache[hook + ".hook_sae_acts_post"].Shape);
    }

    [Fact]
    public void WidthMismatchAndUnknownHookAreClearErrors()
    {
        var rng = new Random(Random.Shared.Next());
        using var m = Stories();
        var wrong = SaeTestData.Random(rng, SaeArchitecture.Standard, 48, 64, "blocks.0.hook_resid_post");
        var e = Assert.Throws<ArgumentException>(() => m.Run([[1, 5, 6]], new RunOptions { Splices = [new SaeSplice(wrong)] }));
        Assert.Contains("d_in = 48", e.Message);
        Assert.Contains("width 64", e.Message);
        var unknown = SaeTestData.Random(rng, SaeArchitecture.Standard, 64, 64, "blocks.9.hook_resid_post");
        e = Assert.Throws<ArgumentException>(() => m.AddSplice(new SaeSplice(unknown)));
        Assert.Contains("blocks.9.hook_resid_post", e.Message);
        var mlp = SaeTestData.Random(rng, SaeArchitecture.Standard, 64, 64, "blocks.0.mlp.hook_post");
        e = Assert.Throws<ArgumentException>(() => m.AddSplice(new SaeSplice(mlp)));
        Assert.Contains("d_mlp", e.Message);
        var pattern = SaeTestData.Random(rng, SaeArchitecture.Standard, 64, 64, "blocks.0.attn.hook_pattern");
        e = Assert.Throws<ArgumentException>(() => m.AddSplice(new SaeSplice(pattern)));
        Assert.Contains("attention pattern", e.Message);
        // SAE hook names are only valid while the SAE is attached
        Assert.Throws<ArgumentException>(() => m.RunWithHooks([[1, 5]], ("blocks.0.hook_resid_post.hook_sae_acts_post", (t, _) => null)));
    }
}
