using System.Text.Json.Nodes;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Tests.Models;

/// <summary>Checkpoints that contradict their config give errors naming the file, tensor or field.</summary>
public class ModelBadInputTests
{
    static string TinyModel(TempDir dir, Architecture arch)
    {
        string path = Path.Combine(dir.Path, "m");
        SyntheticModel.Write(path, arch, "tiny", DType.F32, Random.Shared.Next());
        return path;
    }

    static void EditConfig(string folder, Action<JsonObject> edit)
    {
        string p = Path.Combine(folder, "config.json");
        var json = JsonNode.Parse(File.ReadAllText(p))!.AsObject();
        edit(json);
        File.WriteAllText(p, json.ToJsonString());
    }

    [Theory]
    [InlineData(Architecture.Gpt2, "n_embd", "h.0.attn.c_attn.weight")]
    [InlineData(Architecture.Llama, "intermediate_size", "gate_proj.weight")]
    public void ShapesThatContradictConfigNameTheTensor(Architecture arch, string field, string tensor)
    {
        using var dir = new TempDir();
        string m = TinyModel(dir, arch);
        EditConfig(m, j => j[field] = j[field]!.GetValue<int>() * 2);
        var e = Assert.Throws<InvalidDataException>(() => HookedTransformer.Load(m));
        Assert.Contains(tensor, e.Message);
        Assert.Contains("config.json implies", e.Message);
        Assert.Contains(m, e.Message);
    }

    [Theory]
    [InlineData(Architecture.Gpt2, "n_layer", "h.2.")]
    [InlineData(Architecture.Llama, "num_hidden_layers", "model.layers.2.")]
    public void AConfigClaimingABillionLayersFailsAtTheFirstMissingLayer(Architecture arch, string field, string firstMissing)
    {
        using var dir = new TempDir();
        string m = TinyModel(dir, arch);
        EditConfig(m, j => j[field] = 1_000_000_000);
        var e = Assert.Throws<InvalidDataException>(() => HookedTransformer.Load(m));
        Assert.Contains(firstMissing, e.Message);
        Assert.Contains("missing", e.Message);
    }

    [Fact]
    public void MissingAndExtraTensorsAreNamed()
    {
        using var dir = new TempDir();
        string m = TinyModel(dir, Architecture.Gpt2);
        string file = Path.Combine(m, "model.safetensors");
        // rewrite the checkpoint without one tensor and with a stranger
        var kept = new SafetensorsWriter();
        using (var f = SafetensorsFile.Open(file))
        {
            foreach (var e in f.Entries.Where(e => e.Name != "h.1.mlp.c_fc.bias"))
                kept.Add(e.Name, f.ReadF32(e.Name));
            kept.Add("h.0.attn.mystery", new Tensor([3], [1f, 2f, 3f]));
        }
        kept.Write(file);
        var missing = Assert.Throws<InvalidDataException>(() => HookedTransformer.Load(m));
        Assert.Contains("'h.1.mlp.c_fc.bias' is missing", missing.Message);

        var withExtra = new SafetensorsWriter();
        using (var f = SafetensorsFile.Open(file))
        {
            foreach (var e in f.Entries) withExtra.Add(e.Name, f.ReadF32(e.Name));
            withExtra.Add("h.1.mlp.c_fc.bias", new Tensor([256], Enumerable.Range(0, 256).Select(i => i * 1e-3f).ToArray()));
        }
        withExtra.Write(file);
        var extra = Assert.Throws<InvalidDataException>(() => HookedTransformer.Load(m));
        Assert.Contains("'h.0.attn.mystery'", extra.Message);
        Assert.Contains("unexpected", extra.Message);
    }

    [Fact]
    public void UnknownArchitectureAndMissingConfigAreExplained()
    {
        using var dir = new TempDir();
        string m = TinyModel(dir, Architecture.Llama);
        EditConfig(m, j => { j["model_type"] = "bert"; j["architectures"] = new JsonArray("BertModel"); });
        var e = Assert.ThrowsAny<Exception>(() => HookedTransformer.Load(m));
        Assert.Contains("model_type", e.Message);
        Assert.Contains("bert", e.Message);
        File.Delete(Path.Combine(m, "config.json"));
        var e2 = Assert.Throws<FileNotFoundException>(() => HookedTransformer.Load(m));
        Assert.Contains("config.json", e2.Message);
        var e3 = Assert.ThrowsAny<Exception>(() => HookedTransformer.Load(Path.Combine(dir.Path, "nothing-here")));
        Assert.Contains("nothing-here", e3.Message);
    }

    [Fact]
    public void AHugeContextInConfigAllocatesOnlyWhatIsUsed()
    {
        using var dir = new TempDir();
        string m = TinyModel(dir, Architecture.Llama);
        EditConfig(m, j => j["max_position_embeddings"] = 1_000_000_000);
        using var model = HookedTransformer.Load(m);
        Assert.Equal(1_000_000_000, model.Config.NCtx);
        var logits = model.Forward([1, 2, 3]);
        Assert.All(logits.Data, v => Assert.True(float.IsFinite(v)));
        Assert.InRange(model.Generate([1], 3, new SamplingOptions()).Count(), 0, 3); // the KV cache is sized by the request, not the context
    }

    [Fact]
    public void Bf16SyntheticModelRunsOnItsOwnWeightsWithoutAFloat32Copy()
    {
        using var dir = new TempDir();
        string path = Path.Combine(dir.Path, "bf");
        SyntheticModel.Write(path, Architecture.Llama, "tiny", DType.BF16, Random.Shared.Next());
        using var m = HookedTransformer.Load(path);
        Assert.Equal(DType.BF16, m.Weights.Layers[0].Wq.DType);
        Assert.Equal(DType.BF16, m.Weights.TokenEmbedding.DType);
        var logits = m.Forward([1, 2, 3, 4, 5]);
        Assert.All(logits.Data, v => Assert.True(float.IsFinite(v)));
    }
}
