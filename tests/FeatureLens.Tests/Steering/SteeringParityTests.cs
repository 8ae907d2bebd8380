using System.Text.Json;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Steering;
using FeatureLens.Tests.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Steering;

/// <summary>
/// Steering against the independent torch reference (python/steering_reference.py): on small random GPT-2 and Llama
/// models, a feature's decoder row, a random vector and a clamped latent of a ReLU SAE (error term), at random positions;
/// greedy generation with the KV cache gives the tokens torch's full recompute picks and the same logits at every step
/// (relative error ≤ 1e-5); a sweep's strengths equal the additions scaled directly, with the same next-token KL.
/// </summary>
public sealed class SteeringParityTests(ITestOutputHelper output)
{
    static string Script => Path.Combine(AppContext.BaseDirectory, "python", "steering_reference.py");

    static Dictionary<string, object> SmallConfig(Random rng, string arch)
    {
        int nHeads = arch == "llama" ? 2 * rng.Next(1, 3) : rng.Next(2, 5);
        int dHead = 2 * rng.Next(2, 6);
        return new Dictionary<string, object>
        {
            ["d_model"] = nHeads * dHead, ["n_layers"] = rng.Next(2, 4), ["n_heads"] = nHeads, ["n_kv_heads"] = arch == "llama" ? nHeads / 2 : nHeads,
            ["d_mlp"] = rng.Next(17, 64), ["vocab"] = rng.Next(40, 120), ["n_ctx"] = 24,
            ["tied"] = rng.Next(2) == 0, ["rope_theta"] = 10000.0,
        };
    }

    static float[] RandomVector(Random rng, int d, float scale) => SaeTestData.Gaussian(rng, d, scale);

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void SteeredGenerationMatchesTorch(string arch)
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        var rng = new Random(seed);
        using var dir = new TempDir();
        var cfg = SmallConfig(rng, arch);
        string modelDir = TorchReference.MakeModel(dir.Path, arch, cfg, "f32", seed);
        using var model = HookedTransformer.Load(modelDir);
        int L = model.Config.NLayers, d = model.Config.DModel;
        string[] kinds = ["hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_mlp_out", "hook_attn_out"];
        string RandomHook() => $"blocks.{rng.Next(L)}.{kinds[rng.Next(kinds.Length)]}";

        var sae = SaeTestData.Random(rng, SaeArchitecture.Standard, d, rng.Next(16, 48), $"blocks.{rng.Next(L)}.hook_resid_post");
        var splice = new SaeSplice(sae, useErrorTerm: true);
        var feature = Steerer.Feature(sae, rng.Next(sae.DSae), 1 + 3 * (float)rng.NextDouble());
        var vector = new SteeringAddition(RandomHook(), RandomVector(rng, d, 0.5f), (float)(rng.NextDouble() * 4 - 2), "random vector");
        var clamp = new SteeringClamp(splice, rng.Next(sae.DSae), 2 + 4 * (float)rng.NextDouble(), "clamp");
        var where = (SteeringPositions)rng.Next(3);
        var steerer = new Steerer(model, [feature, vector], [clamp], where);
        int V = model.Config.VocabSize;
        int[] prompt = [.. Enumerable.Range(0, rng.Next(3, 7)).Select(_ => rng.Next(V))];
        float[] strengths = [1f, (float)(0.25 + rng.NextDouble()), -(float)rng.NextDouble()];
        string label = $"{arch}, positions {where}, vector at {vector.Hook}, SAE at {sae.Config.HookName} (seed {seed})";
        output.WriteLine(label);

        var runs = strengths.Select(k =>
        {
            var logits = new List<float[]>();
            var g = steerer.Generate(prompt, k, 6, new SamplingOptions(), (_, l) => logits.Add(l));
            return (k, g, logits);
        }).ToList();
        var baseline = steerer.Generate(prompt, null, 6, new SamplingOptions());

        // the torch jobs: each strength's additions scaled directly (coef = k × S), following our tokens
        var jobs = runs.Select(r => new
        {
            model = modelDir, prompt, path = r.g.Tokens, positions = where.ToString().ToLowerInvariant(),
            additions = new[] { feature, vector }.Select(a => new { hook = a.Hook, vector = a.Direction, coef = r.k * a.Scale }),
            clamps = new[]
            {
                new { hook = sae.Config.HookName, latent = clamp.Latent, value = clamp.Value, d_in = sae.DIn, d_sae = sae.DSae,
                    W_enc = sae.WEnc, b_enc = sae.BEnc, W_dec = sae.WDec, b_dec = sae.BDec },
            },
        }).ToList();
        string jobsPath = dir.File("jobs.json"), outPath = dir.File("out.json");
        File.WriteAllText(jobsPath, JsonSerializer.Serialize(jobs));
        TorchReference.RunPython(Script, jobsPath, outPath);
        using var doc = JsonDocument.Parse(File.ReadAllText(outPath));

        for (int j = 0; j < runs.Count; j++)
        {
            var (k, g, logits) = runs[j];
            var steps = doc.RootElement[j].GetProperty("steps").EnumerateArray().ToList();
            Assert.True(logits.Count <= steps.Count, $"{logits.Count} steps vs torch {steps.Count} ({label})");
            for (int s = 0; s < logits.Count; s++)
            {
                var torch = steps[s].GetProperty("logits").EnumerateArray().Select(x => x.GetSingle()).ToArray();
                double err = Compare.RelativeError(logits[s], torch, $"strength {k} step {s}");
                Assert.True(err <= 1e-5, $"strength {k} step {s}: logits relative error {err:E2} ({label})");
                if (s < g.Tokens.Length && steps[s].GetProperty("gap").GetDouble() > 1e-5)
                    Assert.True(g.Tokens[s] == steps[s].GetProperty("argmax").GetInt32(), $"strength {k} step {s}: token {g.Tokens[s]} vs torch {steps[s].GetProperty("argmax").GetInt32()} ({label})");
            }
            // not vacuous: steering moved the logits somewhere along the path
            double moved = Enumerable.Range(0, logits.Count).Max(s => steps[s].GetProperty("plain").EnumerateArray().Select((x, i) => Math.Abs(x.GetSingle() - logits[s][i])).Max());
            Assert.True(moved > 1e-3, $"strength {k}: steering changed no logit by more than 1e-3 ({label})");
            // the first step's unsteered logits are the baseline's, and the KL agrees with torch's
            var plain = steps[0].GetProperty("plain").EnumerateArray().Select(x => x.GetSingle()).ToArray();
            Assert.True(Compare.RelativeError(baseline.NextTokenLogits, plain, "baseline") <= 1e-5, $"baseline logits ({label})");
            double kl = SteeringSweep.Kl(baseline.NextTokenLogits, g.NextTokenLogits), klTorch = steps[0].GetProperty("kl").GetDouble();
            Assert.True(Math.Abs(kl - klTorch) <= 1e-4 * Math.Max(1, klTorch), $"strength {k}: KL {kl} vs torch {klTorch} ({label})");
        }

        // the sweep reports exactly these generations
        var sweep = SteeringSweep.Run(steerer, prompt, strengths, 6, new SamplingOptions(),
            new SweepOptions([0, V - 1], [], 0, t => t.ToString(System.Globalization.CultureInfo.InvariantCulture), ids => string.Join(",", ids)));
        Assert.Equal(baseline.Tokens, sweep.Baseline.Tokens);
        for (int j = 0; j < runs.Count; j++)
        {
            Assert.Equal(runs[j].g.Tokens, sweep.Steered[j].Tokens);
            Assert.Equal(SteeringSweep.Kl(baseline.NextTokenLogits, runs[j].g.NextTokenLogits), sweep.Steered[j].Kl);
            Assert.Equal(runs[j].g.NextTokenLogits[V - 1] - baseline.NextTokenLogits[V - 1], sweep.Steered[j].LogitChanges[1].Delta);
        }
    }
}
