using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tokenizers;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Saes.Training;
using Xunit.Abstractions;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Tests.Saes;

/// <summary>Transcoders and hook_z SAEs trained briefly on the real stories260K model, spliced and evaluated.</summary>
public class TranscoderStoriesTests(ITestOutputHelper output)
{
    static HookedTransformer Stories() => HookedTransformer.Load(Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin"));

    /// <summary>A small on-distribution corpus sampled from the model (JSONL), seeded.</summary>
    static string Corpus(HookedTransformer m, TempDir dir, int seed, int documents = 64)
    {
        string path = dir.File("corpus.jsonl");
        SaeSuite.SampleCorpus(m, path, documents, 128, seed);
        return path;
    }

    static Tensor Rows(Tensor t, int b, int len)
    {
        int d = (int)(t.Length / ((long)t.Shape[0] * t.Shape[1]));
        var r = new Tensor(len, d);
        Array.Copy(t.Data, (long)b * t.Shape[1] * d, r.Data, 0, (long)len * d);
        return r;
    }

    [Theory]
    [InlineData(SaeArchitecture.TopK, false)]
    [InlineData(SaeArchitecture.Standard, true)]
    public void A_transcoder_trained_briefly_learns_the_MLP_and_splices_in(SaeArchitecture latents, bool skip)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        using var dir = new TempDir();
        string corpus = Corpus(m, dir, seed);
        int layer = rng.Next(m.Config.NLayers);
        string hin = $"blocks.{layer}.ln2.hook_normalized", hout = $"blocks.{layer}.hook_mlp_out";
        var source = ModelActivationSource.FromCorpus(m, [hin, hout], corpus, 64, shuffleSeed: (ulong)seed);
        Assert.Equal([m.Config.DModel, m.Config.DModel], source.HookWidths);
        var o = new SaeTrainingOptions
        {
            Architecture = latents, Transcoder = true, DIn = m.Config.DModel, DOut = m.Config.DModel, SkipConnection = skip,
            DSae = 256, K = 8, L1Coefficient = 1e-3, DecoderInitNorm = 0.1, LearningRate = 3e-3, BatchTokens = 512, TotalTokens = (latents == SaeArchitecture.TopK ? 120L : 60L) * 512,
            DeadAfterTokens = 5000, Seed = (ulong)seed, OutputDir = dir.File("tc"),
            Metadata = new SaeMetadata { HookName = hin, HookNameOut = hout, ModelName = "stories260K" },
        };
        var ev = new List<double>();
        var result = new SaeTrainer(o).Train(source, new Inline(p => ev.Add(p.Stats.ExplainedVariance)));
        string ctx = $"seed {seed}, layer {layer}, {latents} skip={skip}";
        double first = ev.Take(5).Average(), last = ev.TakeLast(10).Average();
        output.WriteLine($"{ctx}: explained variance of mlp_out, first 5 steps {first:F3}, last 10 steps {last:F3}");
        Assert.True(last > 0.1, $"{ctx}: explained variance of mlp_out only {last:F3} after training");
        Assert.True(last > first + 0.2, $"{ctx}: explained variance did not rise ({first:F3} → {last:F3})");

        var tc = SaeLoader.Load(result.OutputDir);
        Assert.Equal(SaeConfig.TranscoderOf(latents, skip), tc.Config.Architecture);
        var tok = m.Tokenizer!;
        var windows = FeatureLens.Runtime.Tokenizers.Corpus.Windows(FeatureLens.Runtime.Tokenizers.Corpus.Documents(corpus), tok, 64, prependBos: true, maxTokens: 3000).ToList();
        var eval = SaeEvaluator.Evaluate(m, [tc], windows)[0];
        output.WriteLine($"{ctx}: held out L0 {eval.L0:F1}, EV {eval.ExplainedVariance:F3}, CE clean {eval.CeClean:F4} spliced {eval.CeSpliced:F4} zero {eval.CeZeroAblated:F4}, recovered {eval.LossRecovered:P1}");
        Assert.Equal(hout, eval.HookOut);
        Assert.True(eval.ExplainedVariance > 0.1, $"{ctx}: held-out explained variance {eval.ExplainedVariance:F3}");
        Assert.True(eval.LossRecovered > 0, $"{ctx}: loss recovered {eval.LossRecovered:P1}");
        // the whole replacement with one transcoder is that transcoder's own splice (two independent code paths)
        var rep = SaeEvaluator.EvaluateReplacement(m, [tc], windows);
        Assert.Equal(eval.CeSpliced, rep.CeReplaced, 9);
        Assert.Equal(eval.CeZeroAblated, rep.CeZeroAblated, 9);
        Assert.Equal(eval.CeClean, rep.CeClean, 9);
        // spliced with its error term the model is unchanged
        int[] ids = windows[0];
        var clean = m.Forward([ids]);
        var spliced = m.Run([ids], new RunOptions { Splices = [new SaeSplice(tc, useErrorTerm: true)] })!;
        double err = Compare.RelativeError(spliced.Data, clean.Data, "logits");
        Assert.True(err <= 1e-5, $"{ctx}: logits with the transcoder and its error term differ by {err:E2}");
    }

    [Fact]
    public void A_hook_z_SAE_trains_on_flattened_heads_and_splices_into_hook_z()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        using var dir = new TempDir();
        string corpus = Corpus(m, dir, seed, documents: 32);
        int layer = rng.Next(m.Config.NLayers);
        string hook = $"blocks.{layer}.attn.hook_z";
        int nh = m.Config.NHeads, hs = m.Config.DHead;
        var source = ModelActivationSource.FromCorpus(m, hook, corpus, 64, shuffleSeed: (ulong)seed);
        Assert.Equal(nh * hs, source.DIn);
        var o = new SaeTrainingOptions
        {
            Architecture = SaeArchitecture.TopK, DIn = nh * hs, DSae = 128, K = 8, LearningRate = 3e-3, BatchTokens = 512, TotalTokens = 20L * 512,
            ApplyBDecToInput = true, Seed = (ulong)seed, OutputDir = dir.File("z"),
            Metadata = new SaeMetadata { HookName = hook, ModelName = "stories260K" },
        };
        var ev = new List<double>();
        var result = new SaeTrainer(o).Train(source, new Inline(p => ev.Add(p.Stats.ExplainedVariance)));
        string ctx = $"seed {seed}, {hook}";
        output.WriteLine($"{ctx}: explained variance first {ev[0]:F3}, last {ev[^1]:F3}");
        Assert.True(ev.TakeLast(5).Average() > ev.Take(3).Average(), $"{ctx}: explained variance did not rise");
        var sae = SaeLoader.Load(result.OutputDir);
        Assert.True(sae.Config.ReshapeHookZ, $"{ctx}: a whole-hook_z SAE says reshape_activations: hook_z");

        int[] a = [1, .. Enumerable.Range(0, 10 + rng.Next(10)).Select(_ => 3 + rng.Next(500))], b = [1, .. Enumerable.Range(0, 5).Select(_ => 3 + rng.Next(500))];
        var (clean, cc) = m.RunWithCache([a, b], n => n == hook);
        Assert.Equal(4, cc[hook].Rank);   // [batch, pos, heads, d_head]
        var cache = new ActivationCache { Lengths = [a.Length, b.Length] };
        var withError = m.Run([a, b], new RunOptions { Splices = [new SaeSplice(sae, useErrorTerm: true)], CacheFilter = n => n.Contains(".hook_sae_"), Cache = cache })!;
        double e = Compare.RelativeError(withError.Data, clean.Data, "logits");
        Assert.True(e <= 1e-6, $"{ctx}: logits with the SAE and its error term differ by {e:E2}");
        foreach (var (seq, bi) in new[] { (a, 0), (b, 1) })
        {
            var z = Rows(cc[hook], bi, seq.Length);   // (pos, heads·d_head): the heads flattened
            Assert.Equal(sae.Encode(z).Data, Rows(cache[hook + ".hook_sae_acts_post"], bi, seq.Length).Data);
        }
        // without the error term the SAE's output replaces hook_z: the same as a hook writing Forward(z) there
        var replaced = m.Run([a], new RunOptions { Splices = [new SaeSplice(sae)] })!;
        var manual = m.RunWithHooks([a], (hook, (t, _) => sae.Forward(new Tensor([t.Shape[0] * t.Shape[1], nh * hs], t.Data)).Output.Reshape(t.Shape)));
        Assert.Equal(manual.Data, replaced.Data);
    }

    sealed class Inline(Action<TrainProgress> act) : IProgress<TrainProgress>
    {
        public void Report(TrainProgress value) => act(value);
    }
}
