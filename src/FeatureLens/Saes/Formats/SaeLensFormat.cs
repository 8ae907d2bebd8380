using System.Text.Json.Nodes;
using FeatureLens.Runtime.Checkpoints;

namespace FeatureLens.Saes.Formats;

/// <summary>
/// SAELens folders: cfg.json + sae_weights.safetensors. Two config generations are read:
/// <list type="bullet">
/// <item>v6: SAE fields at the top level (architecture, d_in, d_sae, apply_b_dec_to_input, normalize_activations,
/// reshape_activations, k, rescale_acts_by_decoder_norm, d_out) and a <c>metadata</c> object (model_name,
/// hook_name, hook_head_index, hook_name_out, context_size, prepend_bos, dataset_path, neuronpedia_id, …).</item>
/// <item>older flat configs: everything at the top level, with the old names hook_point → hook_name,
/// hook_point_head_index → hook_head_index, activation_fn_str / activation_fn ("relu", "topk") and
/// activation_fn_kwargs.k; an architecture of "standard" (or none) with activation "topk" is a TopK SAE.</item>
/// </list>
/// Tensors: W_enc [d_in, d_sae], b_enc [d_sae], W_dec [d_sae, d_out], b_dec [d_out]; jumprelu threshold
/// [d_sae] (or log_threshold, exponentiated); gated b_gate, r_mag, b_mag (no b_enc); skip transcoders
/// W_skip [d_out, d_in]. Fields the loader does not interpret are kept in <see cref="SaeMetadata.Extra"/>.
/// </summary>
public static class SaeLensFormat
{
    /// <summary>The config file of a SAELens folder.</summary>
    public const string ConfigFile = "cfg.json";
    /// <summary>The weights file of a SAELens folder.</summary>
    public const string WeightsFile = "sae_weights.safetensors";

    static readonly string[] ArchitectureNames =
    [
        "standard", "gated", "jumprelu", "topk", "transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder",
        "topk_transcoder", "topk_skip_transcoder",
    ];

    // Top-level fields the loader interprets (both generations); everything else goes to Metadata.Extra.
    static readonly HashSet<string> ConfigKeys =
    [
        "architecture", "d_in", "d_sae", "d_out", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
        "reshape_activations", "k", "rescale_acts_by_decoder_norm", "metadata", "activation_fn_str", "activation_fn",
        "activation_fn_kwargs", "finetuning_scaling_factor", "hook_name_out",
    ];
    static readonly HashSet<string> MetadataKeys =
    [
        "model_name", "hook_name", "hook_head_index", "hook_name_out", "context_size", "prepend_bos", "dataset_path", "neuronpedia_id",
        // flat-config spellings
        "hook_point", "hook_point_head_index",
    ];

    /// <summary>True when <paramref name="dir"/> holds cfg.json and sae_weights.safetensors.</summary>
    public static bool IsFolder(string dir) =>
        File.Exists(Path.Combine(dir, ConfigFile)) && File.Exists(Path.Combine(dir, WeightsFile));

    /// <summary>Loads the SAELens SAE in <paramref name="dir"/>.</summary>
    public static Sae Load(string dir)
    {
        dir = Path.GetFullPath(dir);
        string cfgPath = Path.Combine(dir, ConfigFile);
        string weights = Path.Combine(dir, WeightsFile);
        var cfg = ParseConfig(cfgPath, out bool foldScalingFactor);
        if (!File.Exists(weights))
            throw new FileNotFoundException($"{dir}: SAELens folder has {ConfigFile} but no {WeightsFile}", weights);
        using var f = new SafetensorsSaeFile(SafetensorsFile.Open(weights));
        var sae = SaeAssembly.Build(cfg, f, new SaeTensorNames(), cfgPath, ("d_in", "d_sae", "d_out"), dir);
        if (foldScalingFactor) FoldScalingFactor(sae, f);
        return sae;
    }

    /// <summary>
    /// Parses a SAELens cfg.json (either generation) into a config whose dimensions are 0 where the file
    /// does not state them. <paramref name="foldScalingFactor"/> is set for old files with
    /// finetuning_scaling_factor: true, whose weights carry a per-latent scaling_factor.
    /// </summary>
    internal static SaeConfig ParseConfig(string cfgPath, out bool foldScalingFactor)
    {
        var top = new ConfigFields(cfgPath, SaeAssembly.ReadJsonObject(cfgPath));
        var meta = top.Object("metadata");
        bool v6 = meta is not null;
        var cfg = new SaeConfig { Format = v6 ? "SAELens v6" : "SAELens (flat config)" };
        var md = cfg.Metadata;
        // v6 keeps where-it-belongs fields in metadata; flat configs keep them at the top level.
        var m = meta ?? top;

        // architecture (and the old way of saying topk: an activation function)
        string? arch = top.String("architecture");
        string? actFn = top.String("activation_fn_str") ?? top.String("activation_fn");
        if (arch is not null && Array.IndexOf(ArchitectureNames, arch) < 0)
            throw new InvalidDataException($"{cfgPath}: field 'architecture' is \"{arch}\", which FeatureLens does not support (expected one of {string.Join(", ", ArchitectureNames)})");
        if ((arch is null or "standard") && actFn is not null && actFn != "relu")
        {
            if (actFn != "topk")
                throw new InvalidDataException($"{cfgPath}: activation function \"{actFn}\" is not supported (expected \"relu\" or \"topk\")");
            arch = "topk";
        }
        cfg.Architecture = (arch ?? "standard") switch
        {
            "gated" => SaeArchitecture.Gated,
            "jumprelu" => SaeArchitecture.JumpRelu,
            "topk" => SaeArchitecture.TopK,
            "transcoder" => SaeArchitecture.Transcoder,
            "skip_transcoder" => SaeArchitecture.SkipTranscoder,
            "jumprelu_transcoder" => SaeArchitecture.JumpReluTranscoder,
            "jumprelu_skip_transcoder" => SaeArchitecture.JumpReluSkipTranscoder,
            "topk_transcoder" => SaeArchitecture.TopKTranscoder,
            "topk_skip_transcoder" => SaeArchitecture.TopKSkipTranscoder,
            _ => SaeArchitecture.Standard,
        };

        cfg.DIn = top.Int("d_in") ?? 0;
        cfg.DSae = top.Int("d_sae") ?? 0;
        cfg.DOut = cfg.IsTranscoder ? top.Int("d_out") ?? 0 : 0;

        if (cfg.IsTopK)
        {
            int? k = top.Int("k") ?? top.Object("activation_fn_kwargs")?.Int("k");
            cfg.K = k ?? throw new InvalidDataException($"{cfgPath}: a topk SAE needs field 'k' (or 'activation_fn_kwargs.k'); neither is present");
            cfg.RescaleActsByDecoderNorm = top.Bool("rescale_acts_by_decoder_norm") ?? false;
        }
        else if (top.Bool("rescale_acts_by_decoder_norm") == true)
            throw new InvalidDataException($"{cfgPath}: rescale_acts_by_decoder_norm is true but the architecture is {arch ?? "standard"}; it is only defined for topk SAEs");

        // SAELens defaults apply_b_dec_to_input to true; b_dec cannot be subtracted when d_out != d_in, so transcoders default to false.
        cfg.ApplyBDecToInput = top.Bool("apply_b_dec_to_input") ?? !cfg.IsTranscoder;
        cfg.Normalization = ParseNormalization(top, cfgPath, md.Extra);

        md.ModelName = m.String("model_name");
        md.HookName = m.String("hook_name") ?? m.String("hook_point") ?? "";
        md.HookHeadIndex = m.Int("hook_head_index") ?? m.Int("hook_point_head_index");
        md.HookNameOut = m.String("hook_name_out") ?? top.String("hook_name_out");
        md.ContextSize = m.Int("context_size");
        md.PrependBos = m.Bool("prepend_bos");
        md.DatasetPath = m.String("dataset_path");
        md.NeuronpediaId = m.String("neuronpedia_id");
        if (cfg.IsTranscoder && string.IsNullOrEmpty(md.HookNameOut))
            throw new InvalidDataException($"{cfgPath}: a {arch} needs 'hook_name_out' (the hook its decoder writes){(v6 ? " in 'metadata'" : "")}; it is missing");

        string? reshape = top.String("reshape_activations");
        cfg.ReshapeHookZ = reshape switch
        {
            "hook_z" => true,
            "none" => false,
            // as SAELens: an SAE on hook_z reads the heads flattened, unless it reads one head
            null => md.HookName.EndsWith("hook_z", StringComparison.Ordinal) && md.HookHeadIndex is null,
            _ => throw new InvalidDataException($"{cfgPath}: field 'reshape_activations' is \"{reshape}\", expected \"none\" or \"hook_z\""),
        };

        foldScalingFactor = top.Bool("finetuning_scaling_factor") ?? false;

        // keep what we do not interpret
        if (meta is ConfigFields mf) mf.CopyRest(md.Extra, MetadataKeys);
        top.CopyRest(md.Extra, v6 ? ConfigKeys : new HashSet<string>(ConfigKeys.Concat(MetadataKeys)));
        if (top.Object("activation_fn_kwargs") is ConfigFields kw && kw.Json.Any(p => p.Key != "k"))
            md.Extra["activation_fn_kwargs"] = kw.Json.DeepClone();
        return cfg;
    }

    /// <summary>
    /// normalize_activations: one of the four names, or (old files) a bool. true is read as
    /// expected_average_only_in — the training-time rescale to average norm √d_in that SAELens folds into
    /// the weights when saving — so nothing is applied at inference; false means none.
    /// </summary>
    static ActivationNormalization ParseNormalization(ConfigFields top, string cfgPath, JsonObject extra)
    {
        if (!top.Json.TryGetPropertyValue("normalize_activations", out var v) || v is null) return ActivationNormalization.None;
        if (v is JsonValue jv && jv.TryGetValue(out bool b))
        {
            extra["normalize_activations_was_bool"] = b;
            return b ? ActivationNormalization.ExpectedAverageOnlyIn : ActivationNormalization.None;
        }
        string? s = top.String("normalize_activations");
        return s switch
        {
            "none" => ActivationNormalization.None,
            "expected_average_only_in" => ActivationNormalization.ExpectedAverageOnlyIn,
            "constant_norm_rescale" => ActivationNormalization.ConstantNormRescale,
            "layer_norm" => ActivationNormalization.LayerNorm,
            _ => throw new InvalidDataException($"{cfgPath}: field 'normalize_activations' is \"{s}\", expected none, expected_average_only_in, constant_norm_rescale or layer_norm"),
        };
    }

    /// <summary>
    /// Old SAELens fine-tuned SAEs multiply latents by scaling_factor [d_sae] before decoding:
    /// (f ⊙ s)·W_dec = f·(diag(s)·W_dec), so row j of W_dec is scaled by s[j].
    /// </summary>
    static void FoldScalingFactor(Sae sae, SafetensorsSaeFile f)
    {
        if (!f.Contains("scaling_factor"))
            throw new InvalidDataException($"{f.FileName}: cfg.json says finetuning_scaling_factor is true, but tensor 'scaling_factor' is missing");
        var s = SaeOrientation.Vector(f.Read("scaling_factor"), f.FileName, sae.DSae, "d_sae", $"d_sae = {sae.DSae}");
        for (int j = 0; j < sae.DSae; j++)
        {
            var row = sae.WDec.AsSpan(j * sae.DOut, sae.DOut);
            System.Numerics.Tensors.TensorPrimitives.Multiply(row, s[j], row);
        }
        sae.InvalidateDecoderNorms();
        sae.Config.Metadata.Extra["scaling_factor_folded_into_W_dec"] = true;
    }
}
