using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Models;

/// <summary>
/// Logits and every hook point agree with an independent PyTorch implementation on fresh random models:
/// relative error ‖ours − torch‖/‖torch‖ ≤ 1e-5 per tensor (bf16/f16 weights: torch runs on the same
/// weights upcast to float32).
/// </summary>
public class TorchParityTests(ITestOutputHelper output)
{
    const double Tolerance = 1e-5;

    public static TheoryData<string, string> Cases => new()
    {
        { "gpt2", "f32" }, { "gpt2", "bf16" }, { "llama", "f32" }, { "llama", "bf16" }, { "llama", "f16" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void RandomModelMatchesTorch(string arch, string dtype)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        // Fresh config: head size even (RoPE), d_model usually not a multiple of 16, GQA ratios 1..3.
        int nHeads = rng.Next(2, 7);
        int group = arch == "llama" ? new[] { 1, 2, 3 }.Where(g => nHeads % g == 0).OrderBy(_ => rng.Next()).First() : 1;
        int dHead = 2 * rng.Next(3, 11);
        var cfg = new Dictionary<string, object>
        {
            ["d_model"] = nHeads * dHead, ["n_layers"] = rng.Next(1, 4), ["n_heads"] = nHeads, ["n_kv_heads"] = nHeads / group,
            ["d_mlp"] = rng.Next(17, 120), ["vocab"] = rng.Next(60, 300), ["n_ctx"] = 64,
            ["tied"] = rng.Next(2) == 0, ["rope_theta"] = rng.Next(2) == 0 ? 10000.0 : 500.0,
        };
        string context = $"seed {seed}, {arch} {dtype}, config {System.Text.Json.JsonSerializer.Serialize(cfg)}";
        output.WriteLine(context);
        string modelDir = TorchReference.MakeModel(dir.Path, arch, cfg, dtype, seed);

        int vocab = (int)cfg["vocab"];
        int[][] batch = Enumerable.Range(0, 3).Select(_ => Enumerable.Range(0, 2 * rng.Next(2, 12) + 1).Select(_ => rng.Next(vocab)).ToArray()).ToArray();
        string refPath = TorchReference.RunModel(modelDir, batch, Path.Combine(dir.Path, "ref.safetensors"));

        using var model = HookedTransformer.Load(modelDir);
        var (logits, cache) = model.RunWithCache(batch);
        using var reference = SafetensorsFile.Open(refPath);
        Assert.Equal(model.HookPointNames.Count, cache.Count);
        double worst = 0; string worstName = "";
        for (int b = 0; b < batch.Length; b++)
        {
            foreach (string name in model.HookPointNames.Append("logits"))
            {
                var ours = name == "logits" ? HookNames.SliceSequence(name, logits, b, batch[b].Length) : cache.Sequence(name, b);
                string refName = $"{b}/{name}";
                Assert.True(reference.Contains(refName), $"reference lacks {refName} ({context})");
                var theirs = reference.ReadF32(refName);
                Assert.True(ours.Shape.AsSpan().SequenceEqual(theirs.Shape), $"{name}: shape [{string.Join(",", ours.Shape)}] vs torch [{string.Join(",", theirs.Shape)}] ({context})");
                double err = Compare.RelativeError(ours.Data, theirs.Data, $"{refName} ({context})");
                if (err > worst) { worst = err; worstName = refName; }
                Assert.True(err <= Tolerance, $"{refName}: relative error {err:E2} > {Tolerance:E0} ({context})");
            }
        }
        output.WriteLine($"worst relative error {worst:E2} at {worstName}");

        // Each sequence alone gives exactly (bit for bit) what it gives inside the padded batch
        // (same path: no hooks; caching hook_result sums heads one by one, a different rounding).
        var batchLogits = model.Forward(batch);
        for (int b = 0; b < batch.Length; b++)
        {
            var alone = model.Forward(batch[b]);
            var inBatch = HookNames.SliceSequence("logits", batchLogits, b, batch[b].Length);
            Assert.True(alone.Data.AsSpan().SequenceEqual(inBatch.Data), $"sequence {b} differs alone vs in batch ({context})");
        }
    }
}

/// <summary>Real-world checkpoint layouts: GPT-2 with the "transformer." prefix, sharded with an index.</summary>
public class ShardedCheckpointParityTests
{
    [Fact]
    public void PrefixedShardedGpt2MatchesTorch()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        var cfg = new Dictionary<string, object>
        {
            ["d_model"] = 4 * 10, ["n_layers"] = 3, ["n_heads"] = 4, ["n_kv_heads"] = 4, ["d_mlp"] = 70, ["vocab"] = 211, ["n_ctx"] = 40,
        };
        string model = TorchReference.MakeModel(dir.Path, "gpt2", cfg, "bf16", seed, "--prefix", "--max-shard-mb", "0.02");
        Assert.True(File.Exists(Path.Combine(model, "model.safetensors.index.json")), "expected a sharded folder");
        Assert.True(Directory.GetFiles(model, "model-*-of-*.safetensors").Length > 1);
        int[][] batch = [Enumerable.Range(0, 13).Select(_ => rng.Next(211)).ToArray()];
        string refPath = TorchReference.RunModel(model, batch, Path.Combine(dir.Path, "ref.safetensors"));
        using var m = HookedTransformer.Load(model);
        using var reference = SafetensorsFile.Open(refPath);
        double err = Compare.RelativeError(m.Forward(batch).Data, reference.ReadF32("0/logits").Data, $"logits (seed {seed})");
        Assert.True(err <= 1e-5, $"sharded prefixed GPT-2 logits: relative error {err:E2} (seed {seed})");
    }
}

/// <summary>The oracle checks itself: hook invariants, both RoPE layouts, and llama2.c's reference generation.</summary>
public class TorchReferenceSelfCheck
{
    [Fact]
    public void ReferenceImplementationPassesItsSelfChecks()
    {
        string script = Path.Combine(Path.GetDirectoryName(TorchReference.Script)!, "selfcheck.py");
        string output = TorchReference.RunPython(script, "--shared", TestPaths.Shared);
        Assert.Contains("0 failures", output);
    }
}
