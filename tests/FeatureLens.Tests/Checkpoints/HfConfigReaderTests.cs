using System.Text.Json.Nodes;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;

namespace FeatureLens.Tests.Checkpoints;

public class HfConfigReaderTests
{
    // The fields of the published gpt2 and Llama-2-7b-hf config.json files.
    const string Gpt2Json = """
    {
      "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
      "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
      "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
      "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": null,
      "summary_first_dropout": 0.1, "summary_proj_to_labels": true, "summary_type": "cls_index",
      "summary_use_proj": true, "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
      "vocab_size": 50257
    }
    """;

    const string LlamaJson = """
    {
      "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
      "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
      "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
      "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": null, "tie_word_embeddings": false,
      "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": true, "vocab_size": 32000
    }
    """;

    static string WriteConfig(TempDir dir, string json, Action<JsonObject>? edit = null)
    {
        var node = JsonNode.Parse(json)!.AsObject();
        edit?.Invoke(node);
        string path = dir.File("config.json");
        File.WriteAllText(path, node.ToJsonString());
        return path;
    }

    static T Fails<T>(string path, params string[] mentions) where T : Exception
    {
        var ex = Assert.ThrowsAny<T>(() => HfConfigReader.Read(path));
        Assert.Contains(path, ex.Message);
        foreach (var m in mentions) Assert.Contains(m, ex.Message);
        return ex;
    }

    [Fact]
    public void Reads_gpt2_small()
    {
        using var dir = new TempDir();
        string path = WriteConfig(dir, Gpt2Json);
        var c = HfConfigReader.Read(path);
        Assert.Equal(Architecture.Gpt2, c.Architecture);
        Assert.Equal((768, 12, 12, 12, 3072, 50257, 1024), (c.DModel, c.NLayers, c.NHeads, c.NKvHeads, c.DMlp, c.VocabSize, c.NCtx));
        Assert.Equal(1e-5f, c.NormEps);
        Assert.Equal(RopeLayout.None, c.Rope);
        Assert.True(c.TiedEmbeddings);
        Assert.Equal("gelu_new", c.Activation);
        Assert.Equal(50256, c.BosTokenId);
        Assert.Equal(50256, c.EosTokenId);
        Assert.Equal(path, c.Source);
    }

    [Fact]
    public void Gpt2_optional_fields_fall_back()
    {
        using var dir = new TempDir();
        int inner = 64 * Random.Shared.Next(1, 100);
        string path = WriteConfig(dir, Gpt2Json, o =>
        {
            o.Remove("model_type"); // architectures decides
            o.Remove("n_positions"); // n_ctx is used instead
            o["n_inner"] = inner;
            o["activation_function"] = "gelu_pytorch_tanh";
        });
        var c = HfConfigReader.Read(path);
        Assert.Equal(Architecture.Gpt2, c.Architecture);
        Assert.Equal(inner, c.DMlp);
        Assert.Equal(1024, c.NCtx);
        Assert.Equal("gelu_new", c.Activation);
    }

    [Fact]
    public void Reads_llama_2_7b()
    {
        using var dir = new TempDir();
        var c = HfConfigReader.Read(WriteConfig(dir, LlamaJson));
        Assert.Equal(Architecture.Llama, c.Architecture);
        Assert.Equal((4096, 32, 32, 32, 11008, 32000, 4096), (c.DModel, c.NLayers, c.NHeads, c.NKvHeads, c.DMlp, c.VocabSize, c.NCtx));
        Assert.Equal(1e-5f, c.NormEps);
        Assert.Equal(10000f, c.RopeTheta);
        Assert.Equal(RopeLayout.RotateHalf, c.Rope);
        Assert.False(c.TiedEmbeddings);
        Assert.Equal("silu", c.Activation);
        Assert.Equal((1, 2), (c.BosTokenId, c.EosTokenId));
    }

    [Fact]
    public void Llama_defaults_and_grouped_query_attention()
    {
        using var dir = new TempDir();
        float theta = 10000f * Random.Shared.Next(1, 60);
        var c = HfConfigReader.Read(WriteConfig(dir, LlamaJson, o =>
        {
            o.Remove("num_key_value_heads");
            o.Remove("tie_word_embeddings");
            o["rope_theta"] = theta;
            o["head_dim"] = 128;
            o["eos_token_id"] = new JsonArray(128001, 128009);
        }));
        Assert.Equal(32, c.NKvHeads);
        Assert.False(c.TiedEmbeddings);
        Assert.Equal(theta, c.RopeTheta);
        Assert.Equal(128001, c.EosTokenId);

        var gqa = HfConfigReader.Read(WriteConfig(dir, LlamaJson, o => { o["num_key_value_heads"] = 8; o["tie_word_embeddings"] = true; }));
        Assert.Equal(8, gqa.NKvHeads);
        Assert.True(gqa.TiedEmbeddings);
    }

    [Theory]
    [InlineData("n_embd")]
    [InlineData("n_layer")]
    [InlineData("n_head")]
    [InlineData("vocab_size")]
    public void Gpt2_missing_field_is_named(string field)
    {
        using var dir = new TempDir();
        Fails<FormatException>(WriteConfig(dir, Gpt2Json, o => o.Remove(field)), $"'{field}'", "missing");
    }

    [Theory]
    [InlineData("hidden_size")]
    [InlineData("num_hidden_layers")]
    [InlineData("num_attention_heads")]
    [InlineData("intermediate_size")]
    [InlineData("max_position_embeddings")]
    public void Llama_missing_field_is_named(string field)
    {
        using var dir = new TempDir();
        Fails<FormatException>(WriteConfig(dir, LlamaJson, o => o.Remove(field)), $"'{field}'", "missing");
    }

    [Fact]
    public void Unknown_model_type_lists_the_supported_ones()
    {
        using var dir = new TempDir();
        Fails<FormatException>(WriteConfig(dir, LlamaJson, o => o["model_type"] = "falcon"), "'model_type'", "falcon", "\"gpt2\"", "\"llama\"", "\"gemma2\"", "\"gpt_neox\"");
        Fails<FormatException>(WriteConfig(dir, LlamaJson, o => { o.Remove("model_type"); o.Remove("architectures"); }), "'model_type'", "\"gpt2\"");
    }

    [Fact]
    public void Unsupported_settings_are_refused_by_name()
    {
        using var dir = new TempDir();
        Fails<NotSupportedException>(WriteConfig(dir, Gpt2Json, o => o["activation_function"] = "tanh"), "'activation_function'", "tanh");
        Fails<NotSupportedException>(WriteConfig(dir, LlamaJson, o => o["hidden_act"] = "gelu_10"), "'hidden_act'");
        Fails<NotSupportedException>(WriteConfig(dir, LlamaJson, o => o["rope_scaling"] = new JsonObject { ["type"] = "yarn", ["factor"] = 2.0 }),
            "'rope_scaling'", "yarn");
        Fails<FormatException>(WriteConfig(dir, LlamaJson, o => o["rope_scaling"] = new JsonObject { ["rope_type"] = "llama3", ["factor"] = 8.0 }),
            "'rope_scaling.low_freq_factor'", "missing");
        Fails<NotSupportedException>(WriteConfig(dir, LlamaJson, o => o["mlp_bias"] = true), "'mlp_bias'");
    }

    [Fact]
    public void Wrong_types_and_inconsistent_values_are_named()
    {
        using var dir = new TempDir();
        Fails<FormatException>(WriteConfig(dir, Gpt2Json, o => o["n_embd"] = "768"), "'n_embd'", "integer");
        Fails<FormatException>(WriteConfig(dir, LlamaJson, o => o["num_key_value_heads"] = 5), "n_kv_heads");
        Fails<FormatException>(WriteConfig(dir, Gpt2Json, o => o["n_head"] = 7), "n_heads");
        string bad = dir.File("config.json");
        File.WriteAllText(bad, "{\"model_type\": ");
        Fails<FormatException>(bad, "JSON");
    }
}
