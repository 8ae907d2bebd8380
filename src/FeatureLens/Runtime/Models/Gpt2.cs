using FeatureLens.Runtime.Checkpoints;

namespace FeatureLens.Runtime.Models;

/// <summary>
/// GPT-2: learned positions, LayerNorm with bias, fused QKV Conv1D, gelu_new MLP, unembedding tied to
/// the token embedding. This file is the one place that maps Hugging Face GPT-2 tensor names.
/// </summary>
public static class Gpt2
{
    /// <summary>Maps a Hugging Face GPT-2 checkpoint (optionally prefixed "transformer.") onto <see cref="TransformerWeights"/>.</summary>
    public static TransformerWeights LoadWeights(ModelConfig cfg, ITensorSource source)
    {
        string prefix = source.Contains("transformer.wte.weight") ? "transformer." : "";
        var r = new CheckpointReader(source, prefix);
        int C = cfg.DModel, M = cfg.DMlp;
        // grown layer by layer: a config that claims more layers than the checkpoint holds fails at the first missing tensor
        var layers = new List<LayerWeights>();
        for (int l = 0; l < cfg.NLayers; l++)
        {
            string h = $"h.{l}.";
            // c_attn is one (C, 3C) Conv1D: columns [0,C) are q, [C,2C) k, [2C,3C) v.
            var cAttn = r.Conv1D(h + "attn.c_attn.weight", C, 3 * C);
            var bAttn = r.Vector(h + "attn.c_attn.bias", 3 * C);
            layers.Add(new LayerWeights
            {
                Ln1Weight = r.Vector(h + "ln_1.weight", C),
                Ln1Bias = r.Vector(h + "ln_1.bias", C),
                Wq = cAttn.ColSlice(0, C), Wk = cAttn.ColSlice(C, C), Wv = cAttn.ColSlice(2 * C, C),
                Bq = bAttn[..C], Bk = bAttn[C..(2 * C)], Bv = bAttn[(2 * C)..],
                Wo = r.Conv1D(h + "attn.c_proj.weight", C, C),
                Bo = r.Vector(h + "attn.c_proj.bias", C),
                Ln2Weight = r.Vector(h + "ln_2.weight", C),
                Ln2Bias = r.Vector(h + "ln_2.bias", C),
                WIn = r.Conv1D(h + "mlp.c_fc.weight", C, M),
                BIn = r.Vector(h + "mlp.c_fc.bias", M),
                WOut = r.Conv1D(h + "mlp.c_proj.weight", M, C),
                BOut = r.Vector(h + "mlp.c_proj.bias", C),
            });
        }
        var wte = r.Tensor("wte.weight", cfg.VocabSize, C);
        var weights = new TransformerWeights
        {
            TokenEmbedding = wte,
            PositionEmbedding = r.Tensor("wpe.weight", cfg.NCtx, C),
            Layers = [.. layers],
            FinalNormWeight = r.Vector("ln_f.weight", C),
            FinalNormBias = r.Vector("ln_f.bias", C),
            Unembed = wte.AsMatrix().T,
            Source = source,
        };
        // Causal-mask buffers and a duplicate tied lm_head are not weights.
        r.RejectUnused(n => n.EndsWith(".attn.bias", StringComparison.Ordinal) || n.EndsWith(".attn.masked_bias", StringComparison.Ordinal) || n == "lm_head.weight", "GPT-2");
        return weights;
    }
}
