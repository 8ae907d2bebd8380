using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Models;

/// <summary>
/// Fresh random config.json files for the architectures of issue 12, as Hugging Face writes them, small enough for
/// tests: sliding windows of 2–5 (they bite on 3–14 tokens), Gemma 2 soft-caps of 5–20 (attention, on q/k weights
/// scaled ×3) and 2–10 (logits), head_dim ≠ hidden/heads where the family allows it, grouped-query attention.
/// The folder's weights come from python/arch_reference.py (torch_reference.py make --arch hf).
/// </summary>
internal static class ArchitectureCases
{
    /// <summary>Every case: a family and the variant the config exercises.</summary>
    public static readonly string[] All =
    [
        "gemma2", "neox-parallel", "neox-sequential", "llama-llama3", "llama-linear", "llama-dynamic", "qwen2", "mistral",
        "gpt2-gelu", "gpt2-relu", "gpt2-quick_gelu", "gpt2-silu",
    ];

    /// <summary>
    /// The weight dtype of each case's forward check; its gradient check uses the other one, so every family is checked
    /// with f32 and bf16 weights while each check starts Python once.
    /// </summary>
    public static string ForwardDType(string kase) => Array.IndexOf(All, kase) % 2 == 0 ? "f32" : "bf16";

    public static string Other(string dtype) => dtype == "f32" ? "bf16" : "f32";

    public static JsonObject RandomConfig(Random rng, string kase)
    {
        double U(double a, double b) => a + (b - a) * rng.NextDouble();
        int nkv = rng.Next(1, 3), nh = nkv * rng.Next(1, 4), hs = 2 * rng.Next(2, 7), layers = rng.Next(2, 4);
        int c = new[] { 12, 16, 20, 24 }[rng.Next(4)];
        if (c == nh * hs) c += 4; // head_dim ≠ hidden / heads
        var j = new JsonObject
        {
            ["num_hidden_layers"] = layers, ["num_attention_heads"] = nh, ["num_key_value_heads"] = nkv, ["hidden_size"] = c,
            ["intermediate_size"] = rng.Next(17, 41), ["vocab_size"] = rng.Next(40, 91), ["max_position_embeddings"] = 32,
            ["rope_theta"] = rng.Next(2) == 0 ? 10000.0 : 500.0, ["rms_norm_eps"] = 1e-6,
        };
        string variant = kase.Contains('-', StringComparison.Ordinal) ? kase[(kase.IndexOf('-', StringComparison.Ordinal) + 1)..] : "";
        switch (kase.Split('-')[0])
        {
            case "gemma2":
                j["model_type"] = "gemma2"; j["architectures"] = new JsonArray("Gemma2ForCausalLM");
                j["head_dim"] = hs; j["query_pre_attn_scalar"] = hs * rng.Next(1, 4);
                j["attn_logit_softcapping"] = U(5, 20); j["final_logit_softcapping"] = U(2, 10);
                j["sliding_window"] = rng.Next(2, 6); j["hidden_activation"] = "gelu_pytorch_tanh"; j["tie_word_embeddings"] = true;
                j["attn_implementation"] = "eager";
                break;
            case "neox":
            {
                int h = rng.Next(2, 5);
                double pct = new[] { 0.25, 0.5, 1.0 }[rng.Next(3)];
                if ((int)(hs * pct) % 2 != 0) pct = 1.0;
                j = new JsonObject
                {
                    ["model_type"] = "gpt_neox", ["architectures"] = new JsonArray("GPTNeoXForCausalLM"), ["hidden_size"] = h * hs,
                    ["num_attention_heads"] = h, ["num_hidden_layers"] = layers, ["intermediate_size"] = rng.Next(17, 41),
                    ["vocab_size"] = rng.Next(40, 91), ["max_position_embeddings"] = 32, ["rotary_pct"] = pct,
                    ["rotary_emb_base"] = 10000.0, ["layer_norm_eps"] = 1e-5, ["use_parallel_residual"] = variant == "parallel",
                    ["hidden_act"] = "gelu", ["tie_word_embeddings"] = false,
                };
                break;
            }
            case "llama":
                j["model_type"] = "llama"; j["architectures"] = new JsonArray("LlamaForCausalLM");
                j["head_dim"] = hs; j["hidden_act"] = "silu"; j["tie_word_embeddings"] = rng.Next(2) == 0; j["attention_bias"] = rng.Next(2) == 0;
                if (variant == "plain") // what the runtime ran before issue 12 (a control for the test plumbing)
                {
                    j.Remove("head_dim"); j["attention_bias"] = false; j["hidden_size"] = nh * hs;
                    break;
                }
                j["rope_scaling"] = variant switch
                {
                    "llama3" => new JsonObject
                    {
                        ["rope_type"] = "llama3", ["factor"] = U(2, 32), ["low_freq_factor"] = U(0.5, 2), ["high_freq_factor"] = U(3, 8),
                        ["original_max_position_embeddings"] = rng.Next(16, 65),
                    },
                    "linear" => new JsonObject { ["type"] = "linear", ["factor"] = U(1.5, 8) },
                    _ => new JsonObject { ["rope_type"] = "dynamic", ["factor"] = U(1.5, 8), ["original_max_position_embeddings"] = rng.Next(3, 7) },
                };
                break;
            case "qwen2":
                j["model_type"] = "qwen2"; j["architectures"] = new JsonArray("Qwen2ForCausalLM");
                j["hidden_size"] = nh * hs; j["hidden_act"] = "silu"; j["tie_word_embeddings"] = rng.Next(2) == 0;
                j["use_sliding_window"] = true; j["sliding_window"] = rng.Next(2, 6); j["max_window_layers"] = rng.Next(0, layers);
                break;
            case "mistral":
                j["model_type"] = "mistral"; j["architectures"] = new JsonArray("MistralForCausalLM");
                j["head_dim"] = hs; j["hidden_act"] = "silu"; j["sliding_window"] = rng.Next(2, 6); j["tie_word_embeddings"] = false;
                break;
            case "gpt2":
            {
                int h = rng.Next(2, 5);
                j = new JsonObject
                {
                    ["model_type"] = "gpt2", ["architectures"] = new JsonArray("GPT2LMHeadModel"), ["n_embd"] = h * hs, ["n_head"] = h,
                    ["n_layer"] = layers, ["n_inner"] = rng.Next(17, 41), ["vocab_size"] = rng.Next(40, 91), ["n_positions"] = 32,
                    ["n_ctx"] = 32, ["layer_norm_epsilon"] = 1e-5, ["activation_function"] = variant,
                };
                break;
            }
            default: throw new ArgumentException($"unknown case {kase}", nameof(kase));
        }
        return j;
    }

    public static int Vocab(JsonObject cfg) => cfg["vocab_size"]!.GetValue<int>();

    /// <summary>Gemma 2's q/k weights are scaled ×3 so that its attention soft-cap bites.</summary>
    public static string QkGain(JsonObject cfg) => cfg["model_type"]!.GetValue<string>() == "gemma2" ? "3" : "1";

    public static string WriteJson(string path, object value)
    {
        File.WriteAllText(path, JsonSerializer.Serialize(value));
        return path;
    }

    /// <summary>
    /// Writes the random folder and runs the float32 oracle on it in one Python start: every hook (TransformerLens shape
    /// without batch) as "{b}/{hook}". Dynamic rope_scaling's run length L is the batch's longest sequence (the run's
    /// max position + 1), the same for every sequence; extraHooks adds blocks.L.mlp.hook_in / mlp.hook_out.
    /// </summary>
    public static (string Model, string Reference) MakeAndRun(TempDir dir, JsonObject cfg, string dtype, int seed, int[][] batch, bool extraHooks = false)
    {
        string model = dir.File("model"), reference = dir.File("ref.safetensors");
        var args = new List<string>
        {
            "make", "--arch", "hf", "--config", WriteJson(dir.File("config-in.json"), cfg), "--dtype", dtype,
            "--seed", seed.ToString(CultureInfo.InvariantCulture), "--out", model, "--qk-gain", QkGain(cfg),
            "--then-run", WriteJson(dir.File("tokens.json"), batch), reference,
            "--rope-len", batch.Max(s => s.Length).ToString(CultureInfo.InvariantCulture),
        };
        if (extraHooks) args.Add("--extra-hooks");
        TorchReference.Run([.. args]);
        return (model, reference);
    }

    /// <summary>count sequences of distinct random lengths in [3, 14].</summary>
    public static int[][] Batch(Random rng, int count, int vocab) =>
        Enumerable.Range(3, 12).OrderBy(_ => rng.Next()).Take(count).Select(n => Enumerable.Range(0, n).Select(_ => rng.Next(vocab)).ToArray()).ToArray();

    /// <summary>Compares each named hook (and logits) of every sequence with the oracle: relative error ≤ tolerance.</summary>
    public static (double Worst, string At) CompareForward(Func<string, int, Runtime.Tensors.Tensor> ours, SafetensorsFile reference, int[][] batch,
        IEnumerable<string> names, double tolerance, string context)
    {
        double worst = 0; string at = "";
        var failures = new List<string>();
        for (int b = 0; b < batch.Length; b++)
        {
            foreach (string name in names.Append("logits"))
            {
                string refName = $"{b}/{name}";
                Assert.True(reference.Contains(refName), $"the oracle wrote no {refName} ({context})");
                var theirs = reference.ReadF32(refName);
                var mine = ours(name, b);
                Assert.True(mine.Shape.AsSpan().SequenceEqual(theirs.Shape),
                    $"{refName}: shape [{string.Join(",", mine.Shape)}] vs torch [{string.Join(",", theirs.Shape)}] ({context})");
                double err = Compare.RelativeError(mine.Data, theirs.Data, $"{refName} ({context})");
                if (err > worst) { worst = err; at = refName; }
                if (err > tolerance) failures.Add($"{refName}: relative error {err:E2}");
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} tensors beyond {tolerance:E0} ({context}):\n" + string.Join("\n", failures.Take(30)));
        return (worst, at);
    }
}

/// <summary>
/// Gemma 2, GPT-NeoX (parallel and sequential), Llama with llama3/linear/dynamic rope_scaling and head_dim ≠ hidden/heads,
/// Qwen 2 (q/k/v biases, sliding window on the upper layers), Mistral (sliding window) and GPT-2 with gelu/relu/quick_gelu/silu
/// agree with the independent PyTorch reference (python/arch_reference.py) on fresh random checkpoints: logits and every
/// hook point, relative error ‖ours − torch‖/‖torch‖ ≤ 1e-5 per tensor (the oracle's own float32 is within ~1e-6 of float64
/// on these models), batches of unequal lengths, f32 or bf16 weights (<see cref="ArchitectureCases.ForwardDType"/>; torch runs
/// on the same weights upcast to float32). The hook set must be the oracle's (TransformerLens's names).
/// </summary>
public class ArchitectureParityTests(ITestOutputHelper output)
{
    const double Tolerance = 1e-5;

    public static TheoryData<string, string> Cases
    {
        get
        {
            var d = new TheoryData<string, string>();
            foreach (string c in ArchitectureCases.All) d.Add(c, ArchitectureCases.ForwardDType(c));
            d.Add("gemma2", "bf16"); // Gemma's (1 + w) norms on bf16 weights
            d.Add("llama-plain", "bf16"); // a config the runtime ran before issue 12: a control for this test's own plumbing
            return d;
        }
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void RandomCheckpointMatchesTorch(string kase, string dtype)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        var cfg = ArchitectureCases.RandomConfig(rng, kase);
        var batch = ArchitectureCases.Batch(rng, 3, ArchitectureCases.Vocab(cfg));
        string context = $"seed {seed}, {kase} {dtype}, lengths [{string.Join(",", batch.Select(s => s.Length))}], config {cfg.ToJsonString()}";
        output.WriteLine(context);
        var (modelDir, refPath) = ArchitectureCases.MakeAndRun(dir, cfg, dtype, seed, batch);

        using var model = HookedTransformer.Load(modelDir);
        using var reference = SafetensorsFile.Open(refPath);
        var oracleNames = reference.Entries.Select(e => e.Name).Where(n => n.StartsWith("0/", StringComparison.Ordinal))
            .Select(n => n[2..]).Where(n => n is not "logits" and not "tokens").ToHashSet();
        var missing = oracleNames.Except(model.HookPointNames).ToList();
        var extra = model.HookPointNames.Except(oracleNames).ToList();
        Assert.True(missing.Count == 0 && extra.Count == 0,
            $"hook points differ from the oracle's: missing [{string.Join(", ", missing.Take(8))}], extra [{string.Join(", ", extra.Take(8))}] ({context})");

        var (logits, cache) = model.RunWithCache(batch);
        var (worst, at) = ArchitectureCases.CompareForward(
            (name, b) => name == "logits" ? HookNames.SliceSequence(name, logits, b, batch[b].Length) : cache.Sequence(name, b),
            reference, batch, model.HookPointNames, Tolerance, context);
        output.WriteLine($"worst relative error {worst:E2} at {at}");

        if (!kase.EndsWith("dynamic", StringComparison.Ordinal)) // dynamic NTK depends on the run's length by definition
        {
            var batchLogits = model.Forward(batch);
            for (int b = 0; b < batch.Length; b++)
            {
                var alone = model.Forward(batch[b]);
                var inBatch = HookNames.SliceSequence("logits", batchLogits, b, batch[b].Length);
                Assert.True(alone.Data.AsSpan().SequenceEqual(inBatch.Data), $"sequence {b} differs alone vs in the padded batch ({context})");
            }
        }
    }

    /// <summary>circuit-tracer's extra hooks blocks.L.mlp.hook_in / mlp.hook_out (Gemma 2: before ln2_post) match the oracle.</summary>
    [Theory]
    [InlineData("gemma2")]
    [InlineData("neox-parallel")]
    public void ExtraMlpHooksMatchTorch(string kase)
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        var cfg = ArchitectureCases.RandomConfig(rng, kase);
        var batch = ArchitectureCases.Batch(rng, 2, ArchitectureCases.Vocab(cfg));
        string context = $"seed {seed}, {kase}, lengths [{string.Join(",", batch.Select(s => s.Length))}], config {cfg.ToJsonString()}";
        output.WriteLine(context);
        var (modelDir, refPath) = ArchitectureCases.MakeAndRun(dir, cfg, "f32", seed, batch, extraHooks: true);
        using var model = HookedTransformer.Load(modelDir);
        using var reference = SafetensorsFile.Open(refPath);
        var extras = HookNames.ExtraFor(model.Config);
        Assert.Equal(2 * model.Config.NLayers, extras.Count);
        Assert.DoesNotContain(extras[0], model.HookPointNames);
        var (logits, cache) = model.RunWithCache(batch, n => extras.Contains(n) || n.EndsWith("hook_mlp_out", StringComparison.Ordinal));
        var (worst, at) = ArchitectureCases.CompareForward(
            (name, b) => name == "logits" ? HookNames.SliceSequence(name, logits, b, batch[b].Length) : cache.Sequence(name, b),
            reference, batch, extras, Tolerance, context);
        output.WriteLine($"worst relative error {worst:E2} at {at}");
    }
}

/// <summary>
/// config.json values the runtime cannot honour are refused by <see cref="HookedTransformer.Load"/> with an error naming the
/// field: an unknown or unsupported rope_scaling type, Gemma 2 without head_dim, and Gemma 2 attention soft-capping with an
/// attention implementation that ignores it (sdpa, flash_attention_2). Valid neighbours of each still load.
/// </summary>
public class ArchitectureConfigBadInputTests(ITestOutputHelper output)
{
    static string MakeFolder(TempDir dir, string kase, int seed)
    {
        var cfg = ArchitectureCases.RandomConfig(new Random(seed), kase);
        string model = dir.File(kase);
        TorchReference.Run("make", "--arch", "hf", "--config", ArchitectureCases.WriteJson(dir.File(kase + ".json"), cfg), "--dtype", "f32",
            "--seed", seed.ToString(CultureInfo.InvariantCulture), "--out", model);
        return model;
    }

    static void EditConfig(string folder, Action<JsonObject> edit)
    {
        string p = Path.Combine(folder, "config.json");
        var json = JsonNode.Parse(File.ReadAllText(p))!.AsObject();
        edit(json);
        File.WriteAllText(p, json.ToJsonString());
    }

    static void AssertRefused(string folder, string field, string what)
    {
        var e = Assert.ThrowsAny<Exception>(() => { using var m = HookedTransformer.Load(folder); });
        Assert.True(e is InvalidDataException or ArgumentException or FormatException or NotSupportedException,
            $"{what}: expected a clear error naming '{field}', got {e.GetType().Name}: {e.Message}");
        Assert.Contains(field, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void UnsupportedRopeScalingIsRefusedNamingTheField()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        using var dir = new TempDir();
        string m = MakeFolder(dir, "llama-linear", seed);
        using (var ok = HookedTransformer.Load(m)) Assert.NotNull(ok); // linear loads
        EditConfig(m, j => j["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0, ["original_max_position_embeddings"] = 16 });
        AssertRefused(m, "rope_scaling", "yarn");
        EditConfig(m, j => j["rope_scaling"] = new JsonObject { ["type"] = "mystery", ["factor"] = 2.0 });
        AssertRefused(m, "rope_scaling", "unknown type");
        EditConfig(m, j => j["rope_scaling"] = new JsonObject { ["rope_type"] = "longrope", ["factor"] = 2.0 });
        AssertRefused(m, "rope_scaling", "longrope");
    }

    [Fact]
    public void Gemma2WithoutHeadDimOrWithSoftcapIgnoringAttentionIsRefused()
    {
        int seed = Random.Shared.Next();
        output.WriteLine($"seed {seed}");
        using var dir = new TempDir();
        string m = MakeFolder(dir, "gemma2", seed);
        string original = File.ReadAllText(Path.Combine(m, "config.json"));
        using (var ok = HookedTransformer.Load(m)) Assert.NotNull(ok); // eager loads

        EditConfig(m, j => j.Remove("head_dim"));
        AssertRefused(m, "head_dim", "gemma2 without head_dim");

        foreach (var (key, impl) in new[] { ("attn_implementation", "sdpa"), ("_attn_implementation", "flash_attention_2"), ("attn_implementation", "flash_attention_2"), ("_attn_implementation", "sdpa") })
        {
            File.WriteAllText(Path.Combine(m, "config.json"), original);
            EditConfig(m, j => { j.Remove("attn_implementation"); j[key] = impl; });
            AssertRefused(m, "attn_implementation", $"gemma2 soft-capping with {key} {impl}");
        }
        // without soft-capping, sdpa computes the same thing: accepted
        File.WriteAllText(Path.Combine(m, "config.json"), original);
        EditConfig(m, j => { j["attn_logit_softcapping"] = null; j["attn_implementation"] = "sdpa"; });
        using (var ok = HookedTransformer.Load(m)) Assert.Equal(0f, ok.Config.AttnSoftcap);
    }
}

/// <summary>The architecture oracle checks itself: legacy paths, finite differences, limits and identities (arch_selfcheck.py).</summary>
public class ArchReferenceSelfCheck(ITestOutputHelper output)
{
    [Fact]
    public void ArchitectureOraclePassesItsSelfChecks()
    {
        string script = Path.Combine(Path.GetDirectoryName(TorchReference.Script)!, "arch_selfcheck.py");
        string text = TorchReference.RunPython(script, "--quick");
        output.WriteLine(text.Length > 4000 ? text[^4000..] : text);
        Assert.Contains("\n0 failures", text, StringComparison.Ordinal);
    }
}
