using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Models;

/// <summary>
/// GPT-NeoX (Pythia): LayerNorm with bias, attention and MLP in parallel on resid_pre (use_parallel_residual) or in
/// sequence, partial rotary (rotary_pct of each head), q/k/v fused per head in one query_key_value Linear, exact-GELU
/// MLP with biases, untied embed_out. This file is the one place that maps Hugging Face GPT-NeoX tensor names.
/// </summary>
public static unsafe class GptNeoX
{
    /// <summary>Maps a Hugging Face GPT-NeoX checkpoint onto <see cref="TransformerWeights"/>.</summary>
    public static TransformerWeights LoadWeights(ModelConfig cfg, ITensorSource source)
    {
        var r = new CheckpointReader(source);
        int C = cfg.DModel, M = cfg.DMlp, NH = cfg.NHeads, HS = cfg.DHead;
        var owned = new List<object>();
        var layers = new List<LayerWeights>();
        for (int l = 0; l < cfg.NLayers; l++)
        {
            string p = $"gpt_neox.layers.{l}.";
            // query_key_value is (NH·3·HS, C): rows [h·3HS, h·3HS+HS) are head h's q, the next HS its k, then its v
            var qkv = r.Tensor(p + "attention.query_key_value.weight", 3 * NH * HS, C);
            var qkvBias = r.Vector(p + "attention.query_key_value.bias", 3 * NH * HS);
            var (wq, wk, wv) = (Unfuse(qkv, NH, HS, C, 0, owned), Unfuse(qkv, NH, HS, C, 1, owned), Unfuse(qkv, NH, HS, C, 2, owned));
            float[] Bias(int part)
            {
                var b = new float[NH * HS];
                for (int h = 0; h < NH; h++) Array.Copy(qkvBias, (h * 3 + part) * HS, b, h * HS, HS);
                return b;
            }
            layers.Add(new LayerWeights
            {
                Ln1Weight = r.Vector(p + "input_layernorm.weight", C),
                Ln1Bias = r.Vector(p + "input_layernorm.bias", C),
                Wq = wq, Wk = wk, Wv = wv,
                Bq = Bias(0), Bk = Bias(1), Bv = Bias(2),
                Wo = r.Linear(p + "attention.dense.weight", C, NH * HS),
                Bo = r.Vector(p + "attention.dense.bias", C),
                Ln2Weight = r.Vector(p + "post_attention_layernorm.weight", C),
                Ln2Bias = r.Vector(p + "post_attention_layernorm.bias", C),
                WIn = r.Linear(p + "mlp.dense_h_to_4h.weight", M, C),
                BIn = r.Vector(p + "mlp.dense_h_to_4h.bias", M),
                WOut = r.Linear(p + "mlp.dense_4h_to_h.weight", C, M),
                BOut = r.Vector(p + "mlp.dense_4h_to_h.bias", C),
            });
        }
        var embed = r.Tensor("gpt_neox.embed_in.weight", cfg.VocabSize, C);
        bool tied = cfg.TiedEmbeddings;
        var weights = new TransformerWeights
        {
            TokenEmbedding = embed,
            Layers = [.. layers],
            FinalNormWeight = r.Vector("gpt_neox.final_layer_norm.weight", C),
            FinalNormBias = r.Vector("gpt_neox.final_layer_norm.bias", C),
            Unembed = tied ? embed.AsMatrix().T : r.Linear("embed_out.weight", cfg.VocabSize, C),
            Source = source,
            Owned = owned,
        };
        r.RejectUnused(n => n.EndsWith(".attention.bias", StringComparison.Ordinal) || n.EndsWith(".attention.masked_bias", StringComparison.Ordinal)
                            || n.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal) || (tied && n == "embed_out.weight"), "GPT-NeoX");
        return weights;
    }

    /// <summary>
    /// One of q (part 0), k (1), v (2) of a per-head fused (NH·3·HS, C) weight, repacked as its own (NH·HS, C) rows in
    /// the checkpoint's dtype and seen as (C, NH·HS) for x·W.
    /// </summary>
    static MatrixView Unfuse(WeightTensor qkv, int NH, int HS, int C, int part, List<object> owned)
    {
        int size = qkv.DType.Size();
        long rowBytes = (long)C * size;
        var buf = new NativeBuffer(NH * HS * rowBytes);
        owned.Add(buf);
        for (int h = 0; h < NH; h++)
            Buffer.MemoryCopy(qkv.Pointer + (h * 3 + part) * HS * rowBytes, buf.Pointer + h * HS * rowBytes, HS * rowBytes, HS * rowBytes);
        return new MatrixView(buf.Pointer, qkv.DType, NH * HS, C, C, 1).T;
    }
}
