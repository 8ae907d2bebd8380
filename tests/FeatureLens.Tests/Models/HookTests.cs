using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Tests.Models;

/// <summary>Hooks read and replace activations; the cache keeps exactly what was asked.</summary>
public class HookTests
{
    static HookedTransformer Stories() => HookedTransformer.Load(Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin"));

    static int[] RandomTokens(Random rng, int n) => [1, .. Enumerable.Range(0, n).Select(_ => 3 + rng.Next(500))];

    [Fact]
    public void CacheKeepsOnlyFilteredNamesWithTransformerLensShapes()
    {
        using var m = Stories();
        var rng = new Random(Random.Shared.Next());
        int[] seq = RandomTokens(rng, 9);
        var (_, cache) = m.RunWithCache([seq, seq[..5]], HookNames.Glob("blocks.*.hook_resid_post,blocks.1.attn.hook_*"));
        Assert.Equal(5 + 9, cache.Count); // 5 resid_post; q k v rot_q rot_k attn_scores pattern z result
        var c = m.Config;
        Assert.Equal([2, 10, c.DModel], cache["blocks.3.hook_resid_post"].Shape);
        Assert.Equal([2, 10, c.NHeads, c.DHead], cache["blocks.1.attn.hook_q"].Shape);
        Assert.Equal([2, 10, c.NKvHeads, c.DHead], cache["blocks.1.attn.hook_k"].Shape);
        Assert.Equal([2, c.NHeads, 10, 10], cache["blocks.1.attn.hook_pattern"].Shape);
        Assert.Equal([2, 10, c.NHeads, c.DModel], cache["blocks.1.attn.hook_result"].Shape);
        // padding of the short sequence is zero
        Assert.All(cache["blocks.3.hook_resid_post"].Data.AsSpan((10 + 5) * c.DModel).ToArray(), v => Assert.Equal(0f, v));
        // hook_result summed over heads is attn_out (no o bias in Llama)
        var (_, full) = m.RunWithCache([seq], HookNames.Glob("blocks.1.attn.hook_result,blocks.1.hook_attn_out"));
        var res = full["blocks.1.attn.hook_result"]; var attnOut = full["blocks.1.hook_attn_out"];
        var sum = new float[attnOut.Length];
        for (int t = 0; t < 10; t++)
            for (int h = 0; h < c.NHeads; h++)
                for (int d = 0; d < c.DModel; d++) sum[t * c.DModel + d] += res.Data[(t * c.NHeads + h) * c.DModel + d];
        Assert.True(Compare.RelativeError(sum, attnOut.Data, "sum of hook_result") <= 1e-5);
    }

    [Fact]
    public void CachingScoresAndPatternsDoesNotChangeTheNumbers()
    {
        using var m = Stories();
        var rng = new Random(Random.Shared.Next());
        int[][] batch = [RandomTokens(rng, 20), RandomTokens(rng, 7)];
        var plain = m.Forward(batch);
        var (cached, _) = m.RunWithCache(batch, HookNames.Glob("blocks.*.attn.hook_pattern,blocks.*.attn.hook_attn_scores"));
        Assert.Equal(plain.Data, cached.Data); // the materialised path does the fused path's arithmetic
    }

    [Fact]
    public void PatchingAResidualWithAnotherRunsActivationReproducesThatRun()
    {
        using var m = Stories();
        var rng = new Random(Random.Shared.Next());
        int[] a = RandomTokens(rng, 12), b = RandomTokens(rng, 12);
        var (logitsA, cacheA) = m.RunWithCache([a], n => n == "blocks.2.hook_resid_post");
        var patched = m.RunWithHooks([b], ("blocks.2.hook_resid_post", (act, _) => cacheA["blocks.2.hook_resid_post"]));
        Assert.Equal(logitsA.Data, patched.Data);
        var clean = m.Forward(b);
        Assert.NotEqual(clean.Data, patched.Data);
    }

    [Fact]
    public void InPlaceEditsAndReplacementsTakeEffectAndPersistentHooksCanBeRemoved()
    {
        using var m = Stories();
        var rng = new Random(Random.Shared.Next());
        int[] seq = RandomTokens(rng, 8);
        var clean = m.Forward(seq);
        // zero-ablate layer 0's MLP in place
        var ablated = m.RunWithHooks([seq], ("blocks.0.hook_mlp_out", (act, hook) => { Assert.Equal(0, hook.Layer); act.Span.Clear(); return null; }));
        Assert.NotEqual(clean.Data, ablated.Data);
        // the same via a replacement tensor
        var replaced = m.RunWithHooks([seq], ("blocks.0.hook_mlp_out", (act, _) => new Tensor(act.Shape)));
        Assert.Equal(ablated.Data, replaced.Data);
        // editing the attention pattern changes the output
        HookFunction uniformPattern = (act, _) =>
        {
            int T = act.Shape[2];
            for (int i = 0; i < act.Length; i++) { int q = (i / T) % T, k = i % T; act.Data[i] = k <= q ? 1f / (q + 1) : 0f; }
            return null;
        };
        var uniform = m.RunWithHooks([seq], ("blocks.0.attn.hook_pattern", uniformPattern));
        Assert.NotEqual(clean.Data, uniform.Data);
        // persistent hooks
        using (m.AddHook("blocks.0.hook_mlp_out", (act, _) => { act.Span.Clear(); return null; }))
            Assert.Equal(ablated.Data, m.Forward(seq).Data);
        Assert.Equal(clean.Data, m.Forward(seq).Data);
    }

    [Fact]
    public void BadHooksAndTokensGiveClearErrors()
    {
        using var m = Stories();
        var e1 = Assert.Throws<ArgumentException>(() => m.RunWithHooks([[1, 2]], ("blocks.9.hook_resid_post", (a, _) => null)));
        Assert.Contains("blocks.9.hook_resid_post", e1.Message);
        var e2 = Assert.Throws<InvalidOperationException>(() => m.RunWithHooks([[1, 2]], ("blocks.0.hook_resid_post", (a, _) => new Tensor(1, 2, 3))));
        Assert.Contains("blocks.0.hook_resid_post", e2.Message);
        var e3 = Assert.Throws<ArgumentOutOfRangeException>(() => m.Forward([1, 512]));
        Assert.Contains("512", e3.Message);
        Assert.Contains("[0, 512)", e3.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => m.Forward([1, -3]));
        var e4 = Assert.Throws<ArgumentException>(() => m.Forward(Array.Empty<int>()));
        Assert.Contains("empty", e4.Message);
        var e5 = Assert.Throws<ArgumentException>(() => m.Forward(Enumerable.Repeat(5, 513).ToArray()));
        Assert.Contains("context", e5.Message);
    }
}
