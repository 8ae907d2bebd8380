using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Analysis;
using FeatureLens.Tests.Saes;

namespace FeatureLens.Tests.Culture;

/// <summary>
/// The library is used from programs whose culture is not invariant: what it reads and writes must not change with
/// the culture of the calling thread. Each scenario runs on a thread of its own whose culture is set (so parallel
/// test classes never see it) and is compared with the same scenario under the invariant culture.
/// </summary>
public class CultureTests
{
    // de-DE: decimal comma and '.' grouping; tr-TR: dotted/dotless i in case mappings and comparisons
    public static TheoryData<string> Cultures => new() { "de-DE", "tr-TR" };

    [Fact]
    public void TheCulturesUnderTestReallyDifferFromInvariant()
    {
        // without ICU (or with InvariantGlobalization) every culture formats like the invariant one and the test proves nothing
        Assert.Equal("0,5", 0.5.ToString(CultureInfo.GetCultureInfo("de-DE")));
        Assert.NotEqual("I", "i".ToUpper(CultureInfo.GetCultureInfo("tr-TR")));
    }

    [Theory]
    [MemberData(nameof(Cultures))]
    public void LabelImportAndExportDoNotDependOnTheCulture(string culture) => Compare(culture, Labels);

    [Theory]
    [MemberData(nameof(Cultures))]
    public void ConfigReadersDoNotDependOnTheCulture(string culture) => Compare(culture, Configs);

    [Theory]
    [MemberData(nameof(Cultures))]
    public void JsonAndCsvWritersDoNotDependOnTheCulture(string culture) => Compare(culture, Writers);

    /// <summary>Runs <paramref name="scenario"/> under the invariant culture and under <paramref name="culture"/>; every output must be equal.</summary>
    static void Compare(string culture, Func<Dictionary<string, string>> scenario)
    {
        var expected = RunIn(CultureInfo.InvariantCulture, scenario);
        var actual = RunIn(CultureInfo.GetCultureInfo(culture), scenario);
        Assert.Equal(expected.Keys.Order(StringComparer.Ordinal), actual.Keys.Order(StringComparer.Ordinal));
        foreach (var (name, text) in expected)
            Assert.True(text == actual[name], $"{name} differs under {culture}:\n--- invariant ---\n{text}\n--- {culture} ---\n{actual[name]}");
    }

    static T RunIn<T>(CultureInfo culture, Func<T> work)
    {
        T result = default!;
        Exception? error = null;
        var thread = new Thread(() =>
        {
            CultureInfo.CurrentCulture = culture;
            CultureInfo.CurrentUICulture = culture;
            try { result = work(); }
            catch (Exception e) { error = e; }
        });
        thread.Start();
        thread.Join();
        if (error != null) throw new InvalidOperationException($"the scenario failed under '{culture.Name}'", error);
        return result;
    }

    /// <summary>Each run writes into a temporary folder of its own: its path is replaced by a placeholder.</summary>
    static Dictionary<string, string> WithoutTempPath(Dictionary<string, string> output, TempDir dir) =>
        output.ToDictionary(kv => kv.Key, kv => kv.Value.Replace(dir.Path, "<temp>", StringComparison.Ordinal), StringComparer.Ordinal);

    static string R(double? v) => v is double x ? x.ToString("R", CultureInfo.InvariantCulture) : "null";

    static string Dump(FeatureLabelLookup labels) => string.Join("\n", labels.All()
        .OrderBy(x => x.Hook, StringComparer.Ordinal).ThenBy(x => x.Feature)
        .Select(x => $"{x.Hook}|{x.Feature.ToString(CultureInfo.InvariantCulture)}|{x.Label.Label}|{R(x.Label.F1)}|{R(x.Label.Precision)}|{R(x.Label.Recall)}|{R(x.Label.Specialization)}|{x.Label.Source}"));

    /// <summary>Random SAEs on stories260K, the same for every run (fixed seed).</summary>
    static SaeSet FixedSet(SaeArchitecture arch = SaeArchitecture.Standard, int k = 0) =>
        AnalysisTestData.Set(new Random(20240607), 48, arch, k, 1, 3);

    /// <summary>CSV and Neuronpedia JSONL import (numbers with decimals and exponents), then CSV export.</summary>
    static Dictionary<string, string> Labels()
    {
        var set = FixedSet();
        using var dir = new TempDir();
        var output = new Dictionary<string, string>();

        string csv = dir.File("labels.csv");
        File.WriteAllText(csv,
            "hook,layer,feature,label,f1,precision,recall,specialization\r\n" +
            "blocks.1.hook_resid_post,,3,\"Idiom, İstanbul\",0.5,0.125,1e-1,0.3333333333333333\r\n" +
            ",3,7,indefinite ınk,1E-05,,2.5e-3,0.75\r\n" +
            "L1 resid_post,,11,INFO,1,0,0.0,1.0\r\n");
        var fromCsv = FeatureLabels.Load(csv, set, out var csvStats);
        output["csv import"] = Dump(fromCsv) + "\n" + csvStats;

        string jsonl = dir.File("np.jsonl");
        File.WriteAllText(jsonl,
            "{\"layer\":\"1-res-jb\",\"index\":\"5\",\"description\":\"first\",\"scores\":[0.25,0.5]}\n" +
            "{\"layer\":\"1-res-jb\",\"index\":5,\"description\":\"better\",\"score\":0.75}\n" +
            "{\"layer\":3,\"index\":\"9\",\"description\":\"Iİıi\",\"score\":1.5e-1}\n");
        var fromJsonl = FeatureLabels.Load(jsonl, set, out var npStats);
        output["neuronpedia import"] = Dump(fromJsonl) + "\n" + npStats;

        fromCsv.Set("blocks.3.hook_resid_post", 1, new FeatureLabel { Label = "computed", F1 = 2.0 / 3, Precision = 0.1 + 0.2, Recall = 1e-7, Specialization = 12345.678, Source = "computed" });
        string exported = dir.File("out.csv");
        FeatureLabels.SaveCsv(fromCsv, set, exported);
        output["csv export"] = File.ReadAllText(exported);
        output["csv export, read back"] = Dump(FeatureLabels.Load(exported, set));
        return WithoutTempPath(output, dir);
    }

    /// <summary>HF config.json, SAELens cfg.json and sparsify cfg.json readers, with fractional and exponent fields.</summary>
    static Dictionary<string, string> Configs()
    {
        using var dir = new TempDir();
        var output = new Dictionary<string, string>();

        string gpt2 = dir.File("gpt2.json");
        File.WriteAllText(gpt2, """
            {"activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "layer_norm_epsilon": 1e-05,
             "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024,
             "vocab_size": 50257, "initializer_range": 0.02}
            """);
        output["hf gpt2"] = ModelConfigText(HfConfigReader.Read(gpt2));
        string llama = dir.File("llama.json");
        File.WriteAllText(llama, """
            {"architectures": ["LlamaForCausalLM"], "hidden_act": "silu", "hidden_size": 256, "intermediate_size": 688,
             "max_position_embeddings": 512, "model_type": "llama", "num_attention_heads": 8, "num_hidden_layers": 2,
             "num_key_value_heads": 4, "rms_norm_eps": 1.5e-6, "rope_theta": 10000.0, "tie_word_embeddings": false, "vocab_size": 1000}
            """);
        output["hf llama"] = ModelConfigText(HfConfigReader.Read(llama));

        // SAELens: a saved SAE whose cfg.json is edited to carry fractional fields the reader interprets and keeps
        var sae = SaeTestData.Random(new Random(7), SaeArchitecture.JumpRelu, 16, 24, "blocks.1.hook_resid_post");
        string saelens = Path.Combine(dir.Path, "saelens");
        SaeWriter.Save(sae, saelens);
        string cfgPath = Path.Combine(saelens, SaeWriter.ConfigFile);
        var cfg = JsonNode.Parse(File.ReadAllText(cfgPath))!.AsObject();
        cfg["l1_coefficient"] = 8e-5;
        cfg["lr"] = 0.0004;
        cfg["context_size"] = 128;
        cfg["model_name"] = "TINY-İ-model";
        File.WriteAllText(cfgPath, cfg.ToJsonString());
        var loaded = SaeLensFormat.Load(saelens);
        output["saelens cfg.json"] = SaeWriter.ConfigJson(loaded.Config).ToJsonString() + "\n" + loaded.Config.Metadata.Extra.ToJsonString();

        // sparsify: cfg.json + sae.safetensors (encoder.weight stored [d_sae, d_in])
        var topk = SaeTestData.Random(new Random(8), SaeArchitecture.TopK, 16, 24, "blocks.1.hook_resid_post", k: 4);
        string sparsify = Path.Combine(dir.Path, "layers.1");
        Directory.CreateDirectory(sparsify);
        File.WriteAllText(Path.Combine(sparsify, SparsifyFormat.ConfigFile),
            """{"expansion_factor": 32, "normalize_decoder": true, "num_latents": 24, "k": 4, "multi_topk": false, "d_in": 16, "lr": 0.00025, "auxk_alpha": 0.03125}""");
        var wEncT = new float[24 * 16];
        for (int i = 0; i < 16; i++) for (int j = 0; j < 24; j++) wEncT[j * 16 + i] = topk.WEnc[i * 24 + j];
        new SafetensorsWriter()
            .Add("encoder.weight", DType.F32, [24, 16], MemoryMarshal.AsBytes(wEncT.AsSpan()).ToArray())
            .Add("encoder.bias", DType.F32, [24], MemoryMarshal.AsBytes(topk.BEnc.AsSpan()).ToArray())
            .Add("W_dec", DType.F32, [24, 16], MemoryMarshal.AsBytes(topk.WDec.AsSpan()).ToArray())
            .Add("b_dec", DType.F32, [16], MemoryMarshal.AsBytes(topk.BDec.AsSpan()).ToArray())
            .Write(Path.Combine(sparsify, SparsifyFormat.WeightsFile));
        var sp = SparsifyFormat.Load(sparsify);
        output["sparsify cfg.json"] = SaeWriter.ConfigJson(sp.Config).ToJsonString() + "\n" + sp.Config.Metadata.Extra.ToJsonString();
        return WithoutTempPath(output, dir);
    }

    static string ModelConfigText(ModelConfig c) => JsonSerializer.Serialize(c, AnalysisTestData.WebJson);

    /// <summary>SaeWriter's cfg.json, the tracker's result JSON, SAE evaluation JSON and the label CSV of computed labels.</summary>
    static Dictionary<string, string> Writers()
    {
        using var dir = new TempDir();
        var output = new Dictionary<string, string>();
        var sae = SaeTestData.Random(new Random(9), SaeArchitecture.Standard, 16, 24, "blocks.2.hook_resid_post");
        sae.Config.Metadata.Extra["lr"] = 0.0003;
        sae.Config.Metadata.Extra["note"] = "ISTANBUL istanbul";
        string saved = Path.Combine(dir.Path, "sae");
        SaeWriter.Save(sae, saved, featureSparsity: [.. Enumerable.Range(0, 24).Select(j => -1.5f - j / 7f)]);
        output["SaeWriter cfg.json"] = File.ReadAllText(Path.Combine(saved, SaeWriter.ConfigFile));

        var set = FixedSet(SaeArchitecture.TopK, k: 6);
        var labels = new FeatureLabelLookup();
        labels.Set(set.Hooks[0], 2, new FeatureLabel { Label = "Iı", F1 = 0.25, Precision = 1.0 / 3, Recall = 0.5, Specialization = 0.125, Source = "computed" });
        var tracked = FeatureTracker.Track(set, AnalysisTestData.Prompt, new TrackOptions { TopN = 5 }, labels);
        output["tracker result JSON"] = JsonSerializer.Serialize(tracked, AnalysisTestData.WebJson);

        var windows = new[] { FeatureTracker.Encode(set, AnalysisTestData.Prompt) };
        var evals = SaeEvaluator.Evaluate(set.Model, set.Saes, windows, new SaeEvalOptions());
        output["sae eval JSON"] = JsonSerializer.Serialize(evals, SnakeCaseJson);

        string csv = dir.File("labels.csv");
        FeatureLabels.SaveCsv(labels, set, csv);
        output["label CSV"] = File.ReadAllText(csv, Encoding.UTF8);
        return WithoutTempPath(output, dir);
    }

    // the CLI's options for the evaluation JSON (featurelens sae eval --json)
    static readonly JsonSerializerOptions SnakeCaseJson = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };
}
