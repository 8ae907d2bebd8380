using System.Text.RegularExpressions;
using FeatureLens.Runtime.Checkpoints;

namespace FeatureLens.Saes.Formats;

/// <summary>
/// Llama Scope (fnlp/Llama3_1-8B-Base-LX{R,A,M,TC}-{8,32}x) and other folders written by OpenMOSS's lm_saes as Llama
/// Scope was released: <c>hyperparams.json</c> beside <c>checkpoints/final.safetensors</c> (or <c>sae_weights.safetensors</c>,
/// <c>checkpoints/pruned.safetensors</c>, searched in lm_saes's order). Tensors are torch Linear weights:
/// encoder.weight [d_sae, d_model], encoder.bias [d_sae], decoder.weight [d_model, d_sae], decoder.bias [d_model] (when
/// use_decoder_bias). The hooks are TransformerLens names (hook_point_in / hook_point_out), FeatureLens's own:
/// R = blocks.L.hook_resid_post, A = blocks.L.hook_attn_out, M = blocks.L.hook_mlp_out, TC = a transcoder from
/// blocks.L.ln2.hook_normalized to blocks.L.hook_mlp_out.
/// <para>The checkpoint is stored in the normalised space lm_saes trains in: with norm_activation "dataset-wise" the input is
/// multiplied by s_in = √d_model / dataset_average_activation_norm.in and the reconstruction is compared with the label
/// times s_out = √d_model / …out. The loader does what lm_saes's own <c>from_config</c> does before inference, so the
/// result takes and returns activations in the model's units: b_enc /= s_in, b_dec /= s_out, W_dec ·= s_in / s_out; then,
/// with sparsity_include_decoder_norm (lm_saes's default), every latent is rescaled to a unit decoder column (W_enc row and
/// b_enc times ‖W_dec column‖, the column divided by it), so latent activations are what lm_saes reports. act_fn
/// "jumprelu" (or "topk" with jump_relu_threshold &gt; 0, which lm_saes converts to JumpReLU for inference) keeps
/// pre-activations above the scalar jump_relu_threshold; "topk" keeps the top_k largest; "relu" is ReLU.
/// apply_decoder_bias_to_pre_encoder subtracts the (rescaled) decoder bias from the input first.</para>
/// <para>A decoder column of norm zero (a latent that can never contribute) is kept at zero with its encoder row zeroed
/// (lm_saes would divide by zero). Refused with messages naming the field: norm_activation "token-wise"/"batch-wise"
/// (the output scale would need the label), use_glu_encoder, act_fn "batchtopk" or unknown, negative thresholds,
/// per-latent log_jumprelu_threshold tensors (a later lm_saes layout whose activation scale differs).</para>
/// </summary>
public static class LlamaScopeFormat
{
    public const string ConfigFile = "hyperparams.json";

    /// <summary>Weight files in the order lm_saes looks for them.</summary>
    static readonly string[] WeightFiles = ["sae_weights.safetensors", "checkpoints/pruned.safetensors", "checkpoints/final.safetensors"];

    static readonly Regex HookName = new(
        @"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_attn_out|hook_mlp_in|hook_mlp_out|ln1\.hook_normalized|ln2\.hook_normalized|mlp\.hook_post|mlp\.hook_in|mlp\.hook_out)$",
        RegexOptions.CultureInvariant);

    static readonly HashSet<string> Interpreted =
    [
        "d_model", "d_sae", "expansion_factor", "hook_point_in", "hook_point_out", "use_decoder_bias", "apply_decoder_bias_to_pre_encoder",
        "act_fn", "jump_relu_threshold", "top_k", "norm_activation", "dataset_average_activation_norm", "sparsity_include_decoder_norm", "use_glu_encoder",
    ];

    /// <summary>True when <paramref name="dir"/> holds hyperparams.json and one of lm_saes's weight files.</summary>
    public static bool IsFolder(string dir) =>
        File.Exists(Path.Combine(dir, ConfigFile)) && WeightFiles.Any(w => File.Exists(Path.Combine(dir, w)));

    /// <summary>Loads the Llama Scope / lm_saes SAE or transcoder in <paramref name="dir"/>.</summary>
    public static Sae Load(string dir)
    {
        dir = Path.GetFullPath(dir.TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar));
        string cfgPath = Path.Combine(dir, ConfigFile);
        var c = new ConfigFields(cfgPath, SaeAssembly.ReadJsonObject(cfgPath));
        string? weights = WeightFiles.Select(w => Path.Combine(dir, w)).FirstOrDefault(File.Exists);
        if (weights is null)
        {
            string pt = WeightFiles.Select(w => Path.ChangeExtension(Path.Combine(dir, w), ".pt")).FirstOrDefault(File.Exists) ?? "";
            throw new FileNotFoundException(pt.Length > 0
                ? $"{dir}: only a pickled checkpoint {pt} is present; FeatureLens reads the safetensors files ({string.Join(", ", WeightFiles)})"
                : $"{dir}: {ConfigFile} but no weights ({string.Join(", ", WeightFiles)})", Path.Combine(dir, WeightFiles[^1]));
        }

        int dModel = c.Int("d_model") ?? throw new InvalidDataException($"{cfgPath}: field 'd_model' is missing");
        if (dModel <= 0) throw new InvalidDataException($"{cfgPath}: field 'd_model' must be positive, got {dModel}");
        int dSae = c.Int("d_sae") ?? 0;
        string dSaeSource = $"d_sae = {dSae} from {ConfigFile} field 'd_sae'";
        if (dSae <= 0)
        {
            int ef = c.Int("expansion_factor") ?? throw new InvalidDataException($"{cfgPath}: fields 'd_sae' and 'expansion_factor' are both missing (d_sae = d_model · expansion_factor)");
            dSae = checked(dModel * ef);
            dSaeSource = $"d_sae = {dSae} = d_model · expansion_factor ({ef})";
            if (dSae <= 0) throw new InvalidDataException($"{cfgPath}: field 'expansion_factor' must be positive, got {ef}");
        }

        string hookIn = Hook(c, "hook_point_in", null);
        string hookOut = Hook(c, "hook_point_out", hookIn);
        bool transcoder = hookOut != hookIn;

        if (c.Bool("use_glu_encoder") == true)
            throw new InvalidDataException($"{cfgPath}: use_glu_encoder = true (a sigmoid-gated encoder) is not supported");
        bool useDecoderBias = c.Bool("use_decoder_bias") ?? true;
        bool bDecToInput = c.Bool("apply_decoder_bias_to_pre_encoder")
            ?? throw new InvalidDataException($"{cfgPath}: field 'apply_decoder_bias_to_pre_encoder' is missing (lm_saes's default for it changed between versions, so the file must state it)");
        if (bDecToInput && transcoder)
            throw new InvalidDataException($"{cfgPath}: apply_decoder_bias_to_pre_encoder = true for a transcoder ('{hookIn}' → '{hookOut}'): the decoder bias lives in the output space and cannot be subtracted from the input");
        bool includeDecoderNorm = c.Bool("sparsity_include_decoder_norm") ?? true;

        // activation
        string actFn = (c.String("act_fn") ?? "relu").ToLowerInvariant();
        double threshold = c.Double("jump_relu_threshold") ?? 0;
        if (!double.IsFinite(threshold) || threshold < 0)
            throw new InvalidDataException($"{cfgPath}: field 'jump_relu_threshold' is {threshold}; it must be a finite number ≥ 0");
        SaeArchitecture latents;
        int k = 0;
        switch (actFn)
        {
            case "jumprelu": latents = SaeArchitecture.JumpRelu; break;
            case "topk" when threshold > 0: latents = SaeArchitecture.JumpRelu; break;   // lm_saes converts it for inference
            case "topk":
                latents = SaeArchitecture.TopK;
                k = c.Int("top_k") ?? throw new InvalidDataException($"{cfgPath}: act_fn 'topk' needs field 'top_k'");
                break;
            case "relu": latents = SaeArchitecture.Standard; break;
            default:
                throw new InvalidDataException($"{cfgPath}: field 'act_fn' is '{actFn}', expected jumprelu, topk or relu" + (actFn == "batchtopk" ? " (batchtopk depends on the whole batch and has no per-token inference rule)" : ""));
        }

        // normalisation
        double sIn = 1, sOut = 1;
        string norm = c.String("norm_activation") ?? "token-wise";
        switch (norm)
        {
            case "dataset-wise":
                var avg = c.Object("dataset_average_activation_norm")
                    ?? throw new InvalidDataException($"{cfgPath}: norm_activation 'dataset-wise' needs field 'dataset_average_activation_norm' ({{\"in\": …, \"out\": …}})");
                double nIn = AverageNorm(avg, "in", hookIn), nOut = AverageNorm(avg, "out", hookOut);
                sIn = Math.Sqrt(dModel) / nIn;
                sOut = Math.Sqrt(dModel) / nOut;
                break;
            case "inference" or "none": break;
            default:
                throw new InvalidDataException($"{cfgPath}: field 'norm_activation' is '{norm}'; FeatureLens reads 'dataset-wise', 'inference' and 'none' (token-wise and batch-wise rescale the output by the label's own norm, which inference does not have)");
        }

        var cfg = new SaeConfig
        {
            Architecture = transcoder ? SaeConfig.TranscoderOf(latents, false) : latents,
            DIn = dModel, DSae = dSae, DOut = dModel, K = k, ApplyBDecToInput = bDecToInput, Format = "Llama Scope (lm_saes)",
        };
        cfg.Metadata.HookName = hookIn;
        if (transcoder) cfg.Metadata.HookNameOut = hookOut;
        var dir0 = Path.GetFileName(dir);
        if (dir0.StartsWith("Llama3_1-8B", StringComparison.Ordinal)) cfg.Metadata.ModelName = "meta-llama/Llama-3.1-8B";
        cfg.Metadata.Extra["lm_saes_folder"] = dir0;
        cfg.Metadata.Extra["input_scale"] = sIn;
        cfg.Metadata.Extra["output_scale"] = sOut;
        c.CopyRest(cfg.Metadata.Extra, Interpreted);
        cfg.Validate(cfgPath);

        using var f = new SafetensorsSaeFile(SafetensorsFile.Open(weights));
        string file = f.FileName;
        string dims = $"d_model = {dModel} from {ConfigFile} field 'd_model', {dSaeSource}";
        StoredTensor Need(string name) => f.Contains(name) ? f.Read(name)
            : throw new InvalidDataException($"{file}: tensor '{name}' is missing; an lm_saes SAE has encoder.weight, encoder.bias, decoder.weight" + (useDecoderBias ? " and decoder.bias" : ""));
        if (f.Contains("log_jumprelu_threshold"))
            throw new InvalidDataException($"{file}: tensor 'log_jumprelu_threshold' (per-latent thresholds of a later lm_saes layout) is not supported; Llama Scope checkpoints use the scalar {ConfigFile} field 'jump_relu_threshold'");
        if (latents == SaeArchitecture.JumpRelu && !c.Has("jump_relu_threshold"))
            throw new InvalidDataException($"{cfgPath}: act_fn 'jumprelu' needs field 'jump_relu_threshold'");

        // encoder.weight [d_sae, d_model] → (d_model, d_sae); decoder.weight [d_model, d_sae] → (d_sae, d_model)
        var wEnc = (float[])SaeOrientation.Matrix(Need("encoder.weight"), file, dModel, dSae, "d_model", "d_sae", true, dims).Clone();
        var wDec = (float[])SaeOrientation.Matrix(Need("decoder.weight"), file, dSae, dModel, "d_sae", "d_model", true, dims).Clone();
        var bEnc = (float[])SaeOrientation.Vector(Need("encoder.bias"), file, dSae, "d_sae", dims).Clone();
        float[] bDec = useDecoderBias ? (float[])SaeOrientation.Vector(Need("decoder.bias"), file, dModel, "d_model", dims).Clone() : new float[dModel];
        cfg.StorageDType = f.Read("encoder.bias").StorageDType;

        // lm_saes's standardisation for inference (in double, rounded once)
        double decScale = sIn / sOut;
        for (int j = 0; j < dSae; j++) bEnc[j] = (float)(bEnc[j] / sIn);
        for (int i = 0; i < dModel; i++) bDec[i] = (float)(bDec[i] / sOut);
        var norms = new double[dSae];
        for (int j = 0; j < dSae; j++)
        {
            double ss = 0;
            for (int i = 0; i < dModel; i++)
            {
                double v = wDec[(long)j * dModel + i] * decScale;
                ss += v * v;
            }
            norms[j] = Math.Sqrt(ss);
        }
        for (int j = 0; j < dSae; j++)
        {
            double n = norms[j];
            double rowScale = includeDecoderNorm ? (n > 0 ? decScale / n : 0) : decScale;
            for (int i = 0; i < dModel; i++) wDec[(long)j * dModel + i] = (float)(wDec[(long)j * dModel + i] * rowScale);
            if (!includeDecoderNorm) continue;
            for (int i = 0; i < dModel; i++) wEnc[(long)i * dSae + j] = (float)(wEnc[(long)i * dSae + j] * n);
            bEnc[j] = (float)(bEnc[j] * n);
        }
        float[]? thr = null;
        if (latents == SaeArchitecture.JumpRelu)
        {
            thr = new float[dSae];
            Array.Fill(thr, (float)threshold);
        }
        return new Sae(cfg, wEnc, bEnc, wDec, bDec, thr) { SourcePath = dir };
    }

    static string Hook(ConfigFields c, string field, string? fallback)
    {
        string? v = c.String(field);
        if (v is null)
            return fallback ?? throw new InvalidDataException($"{c.Path}: field '{field}' is missing (the TransformerLens hook the SAE reads, e.g. blocks.12.hook_resid_post)");
        if (!HookName.IsMatch(v))
            throw new InvalidDataException($"{c.Path}: field '{field}' is '{v}', not a per-block TransformerLens hook FeatureLens knows (blocks.L.hook_resid_post, hook_attn_out, hook_mlp_out, ln2.hook_normalized, …)");
        return v;
    }

    // lm_saes of Llama Scope's time keys the norms "in"/"out"; later versions key them by hook name.
    static double AverageNorm(ConfigFields avg, string key, string hook)
    {
        double? v = avg.Has(key) ? avg.Double(key) : avg.Has(hook) ? avg.Double(hook) : null;
        if (v is not double d)
            throw new InvalidDataException($"{avg.Path}: the average norm for the {(key == "in" ? "input" : "output")} ('{key}' or '{hook}') is missing");
        if (!double.IsFinite(d) || d <= 0)
            throw new InvalidDataException($"{avg.Path}: '{key}' is {d}; an average activation norm must be a positive number");
        return d;
    }
}
