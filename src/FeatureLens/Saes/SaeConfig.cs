using System.Text.Json.Nodes;

namespace FeatureLens.Saes;

/// <summary>The encoder/decoder family of an SAE (SAELens <c>architecture</c> names in comments).</summary>
public enum SaeArchitecture
{
    /// <summary>"standard": ReLU(x·W_enc + b_enc).</summary>
    Standard,
    /// <summary>"gated": a gate path (b_gate) decides which latents fire, a magnitude path (r_mag, b_mag) how much.</summary>
    Gated,
    /// <summary>"jumprelu": ReLU(pre)·[pre &gt; threshold].</summary>
    JumpRelu,
    /// <summary>"topk": the k largest pre-activations, ReLU'd; the rest zero.</summary>
    TopK,
    /// <summary>"transcoder": reads one hook (d_in), writes another (d_out); ReLU latents.</summary>
    Transcoder,
    /// <summary>"skip_transcoder": a transcoder plus a linear skip path x·W_skipᵀ.</summary>
    SkipTranscoder,
    /// <summary>"jumprelu_transcoder": a transcoder with JumpReLU latents.</summary>
    JumpReluTranscoder,
    /// <summary>"jumprelu_skip_transcoder": a JumpReLU transcoder plus the skip path x·W_skipᵀ.</summary>
    JumpReluSkipTranscoder,
    /// <summary>"topk_transcoder" (FeatureLens's name; SAELens has none): a transcoder with TopK latents.</summary>
    TopKTranscoder,
    /// <summary>"topk_skip_transcoder" (FeatureLens's name): a TopK transcoder plus the skip path x·W_skipᵀ.</summary>
    TopKSkipTranscoder,
}

/// <summary>How inputs are normalised before encoding (SAELens <c>normalize_activations</c>).</summary>
public enum ActivationNormalization
{
    /// <summary>"none".</summary>
    None,
    /// <summary>"expected_average_only_in": a training-time constant that SAELens folds into the weights when saving, so inference applies nothing.</summary>
    ExpectedAverageOnlyIn,
    /// <summary>"constant_norm_rescale": each token is scaled to norm √d_in; the output is scaled back.</summary>
    ConstantNormRescale,
    /// <summary>"layer_norm": each token is centred and divided by (std + 1e-5) (unbiased std); the output gets std and mean back.</summary>
    LayerNorm,
}

/// <summary>Where an SAE belongs: the model, hook and data it was trained on (SAELens <c>metadata</c>).</summary>
public sealed class SaeMetadata
{
    public string? ModelName { get; set; }
    /// <summary>The TransformerLens hook the SAE reads, e.g. "blocks.3.hook_resid_post".</summary>
    public string HookName { get; set; } = "";
    public int? HookHeadIndex { get; set; }
    /// <summary>For transcoders: the hook whose activation the decoder predicts.</summary>
    public string? HookNameOut { get; set; }
    public int? ContextSize { get; set; }
    public bool? PrependBos { get; set; }
    public string? DatasetPath { get; set; }
    public string? NeuronpediaId { get; set; }
    /// <summary>Every other metadata field, kept so a re-saved config loses nothing.</summary>
    public JsonObject Extra { get; set; } = new();
}

/// <summary>
/// The configuration of a sparse autoencoder (or transcoder), independent of the file format it came
/// from. Shapes: W_enc (d_in, d_sae), W_dec (d_sae, d_out), b_dec (d_out); d_out = d_in except for transcoders.
/// </summary>
public sealed class SaeConfig
{
    public SaeArchitecture Architecture { get; set; } = SaeArchitecture.Standard;
    public int DIn { get; set; }
    public int DSae { get; set; }
    /// <summary>Output width; equals <see cref="DIn"/> except for transcoders.</summary>
    public int DOut { get; set; }
    /// <summary>Latents kept per token (TopK only).</summary>
    public int K { get; set; }
    /// <summary>TopK: rank pre-activations scaled by each latent's decoder norm, and divide them out before decoding.</summary>
    public bool RescaleActsByDecoderNorm { get; set; }
    /// <summary>Subtract b_dec from the (normalised) input before encoding.</summary>
    public bool ApplyBDecToInput { get; set; }
    public ActivationNormalization Normalization { get; set; } = ActivationNormalization.None;
    /// <summary>SAELens <c>reshape_activations: hook_z</c>: the hook's (pos, head, d_head) is flattened to d_in = head·d_head.</summary>
    public bool ReshapeHookZ { get; set; }
    /// <summary>The dtype the weights were stored in ("float32", "float16", "bfloat16"); computation is float32.</summary>
    public string StorageDType { get; set; } = "float32";
    public SaeMetadata Metadata { get; set; } = new();
    /// <summary>Where it was read from, in words (e.g. "SAELens v6", "sparsify", "Gemma Scope npz").</summary>
    public string Format { get; set; } = "";

    public bool IsTranscoder => Architecture is SaeArchitecture.Transcoder or SaeArchitecture.SkipTranscoder or SaeArchitecture.JumpReluTranscoder
        or SaeArchitecture.JumpReluSkipTranscoder or SaeArchitecture.TopKTranscoder or SaeArchitecture.TopKSkipTranscoder;
    /// <summary>JumpReLU latents (an SAE or a transcoder): a threshold per latent.</summary>
    public bool HasThreshold => Architecture is SaeArchitecture.JumpRelu or SaeArchitecture.JumpReluTranscoder or SaeArchitecture.JumpReluSkipTranscoder;
    /// <summary>TopK latents (an SAE or a transcoder): the k largest pre-activations per token.</summary>
    public bool IsTopK => Architecture is SaeArchitecture.TopK or SaeArchitecture.TopKTranscoder or SaeArchitecture.TopKSkipTranscoder;
    /// <summary>Plain ReLU latents (standard SAE, transcoder, skip transcoder).</summary>
    public bool IsRelu => Architecture is SaeArchitecture.Standard or SaeArchitecture.Transcoder or SaeArchitecture.SkipTranscoder;
    /// <summary>A skip transcoder: the output adds x·W_skipᵀ (W_skip is (d_out, d_in)).</summary>
    public bool HasSkip => Architecture is SaeArchitecture.SkipTranscoder or SaeArchitecture.JumpReluSkipTranscoder or SaeArchitecture.TopKSkipTranscoder;

    /// <summary>The transcoder architecture with the given latents (ReLU: <see cref="SaeArchitecture.Standard"/>,
    /// <see cref="SaeArchitecture.JumpRelu"/> or <see cref="SaeArchitecture.TopK"/>), with or without the skip path.</summary>
    public static SaeArchitecture TranscoderOf(SaeArchitecture latents, bool skip) => (latents, skip) switch
    {
        (SaeArchitecture.Standard, false) => SaeArchitecture.Transcoder,
        (SaeArchitecture.Standard, true) => SaeArchitecture.SkipTranscoder,
        (SaeArchitecture.JumpRelu, false) => SaeArchitecture.JumpReluTranscoder,
        (SaeArchitecture.JumpRelu, true) => SaeArchitecture.JumpReluSkipTranscoder,
        (SaeArchitecture.TopK, false) => SaeArchitecture.TopKTranscoder,
        (SaeArchitecture.TopK, true) => SaeArchitecture.TopKSkipTranscoder,
        _ => throw new ArgumentException($"no transcoder has {ArchitectureName(latents)} latents (standard/ReLU, jumprelu or topk)", nameof(latents)),
    };

    /// <summary>The hook the SAE reads.</summary>
    public string HookName => Metadata.HookName;
    /// <summary>The hook the SAE writes when spliced: the input hook, or hook_name_out for transcoders.</summary>
    public string OutputHookName => IsTranscoder && !string.IsNullOrEmpty(Metadata.HookNameOut) ? Metadata.HookNameOut! : Metadata.HookName;

    /// <summary>SAELens's architecture string for this architecture.</summary>
    public static string ArchitectureName(SaeArchitecture a) => a switch
    {
        SaeArchitecture.Standard => "standard",
        SaeArchitecture.Gated => "gated",
        SaeArchitecture.JumpRelu => "jumprelu",
        SaeArchitecture.TopK => "topk",
        SaeArchitecture.Transcoder => "transcoder",
        SaeArchitecture.SkipTranscoder => "skip_transcoder",
        SaeArchitecture.JumpReluTranscoder => "jumprelu_transcoder",
        SaeArchitecture.JumpReluSkipTranscoder => "jumprelu_skip_transcoder",
        SaeArchitecture.TopKTranscoder => "topk_transcoder",
        SaeArchitecture.TopKSkipTranscoder => "topk_skip_transcoder",
        _ => throw new ArgumentOutOfRangeException(nameof(a)),
    };

    /// <summary>SAELens's normalize_activations string.</summary>
    public static string NormalizationName(ActivationNormalization n) => n switch
    {
        ActivationNormalization.None => "none",
        ActivationNormalization.ExpectedAverageOnlyIn => "expected_average_only_in",
        ActivationNormalization.ConstantNormRescale => "constant_norm_rescale",
        ActivationNormalization.LayerNorm => "layer_norm",
        _ => throw new ArgumentOutOfRangeException(nameof(n)),
    };

    /// <summary>Checks the fields agree with each other; <paramref name="where"/> names the source in messages.</summary>
    public void Validate(string where)
    {
        if (DIn <= 0) throw new InvalidDataException($"{where}: d_in must be positive, got {DIn}");
        if (DSae <= 0) throw new InvalidDataException($"{where}: d_sae must be positive, got {DSae}");
        if (DOut <= 0) throw new InvalidDataException($"{where}: d_out must be positive, got {DOut}");
        if (!IsTranscoder && DOut != DIn) throw new InvalidDataException($"{where}: d_out ({DOut}) must equal d_in ({DIn}) for a {ArchitectureName(Architecture)} SAE");
        if (IsTopK && (K <= 0 || K > DSae))
            throw new InvalidDataException($"{where}: {ArchitectureName(Architecture)} SAE needs 0 < k <= d_sae ({DSae}), got k = {K}");
        if (ApplyBDecToInput && DOut != DIn)
            throw new InvalidDataException($"{where}: apply_b_dec_to_input needs d_out == d_in (b_dec is subtracted from the input), got d_in {DIn}, d_out {DOut}");
        if (RescaleActsByDecoderNorm && !IsTopK)
            throw new InvalidDataException($"{where}: rescale_acts_by_decoder_norm is only defined for topk SAEs, not {ArchitectureName(Architecture)}");
    }

    public SaeConfig Clone()
    {
        var c = (SaeConfig)MemberwiseClone();
        c.Metadata = new SaeMetadata
        {
            ModelName = Metadata.ModelName, HookName = Metadata.HookName, HookHeadIndex = Metadata.HookHeadIndex,
            HookNameOut = Metadata.HookNameOut, ContextSize = Metadata.ContextSize, PrependBos = Metadata.PrependBos,
            DatasetPath = Metadata.DatasetPath, NeuronpediaId = Metadata.NeuronpediaId, Extra = (JsonObject)Metadata.Extra.DeepClone(),
        };
        return c;
    }
}
