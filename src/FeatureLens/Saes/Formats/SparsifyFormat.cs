using System.Text.RegularExpressions;
using FeatureLens.Runtime.Checkpoints;

namespace FeatureLens.Saes.Formats;

/// <summary>
/// EleutherAI sparsify: one folder per hook point, named after the module it hooks (<c>layers.3</c>,
/// <c>embed_tokens</c>, <c>layers.3.mlp</c>), holding cfg.json (k, num_latents or expansion_factor, d_in, …)
/// and sae.safetensors: encoder.weight [d_sae, d_in], encoder.bias [d_sae], W_dec [d_sae, d_in], b_dec [d_in].
/// Encoding is TopK of ReLU((x − b_dec)·encoder.weightᵀ + encoder.bias), i.e. a TopK SAE with
/// apply_b_dec_to_input = true.
/// <para>Hook names: <c>layers.N</c> is the output of block N → blocks.N.hook_resid_post;
/// <c>embed_tokens</c> → blocks.0.hook_resid_pre; <c>layers.N.mlp</c> → blocks.N.hook_mlp_out
/// (a leading model./transformer./gpt_neox. and GPT-2's h.N are accepted too; Pythia runs name them layers.N as on
/// GPTNeoXModel). When the run's config.json beside the folder names a Gemma 2 model, <c>layers.N.mlp</c> is the MLP
/// module's output before the post-MLP norm → blocks.N.mlp.hook_out. Any other folder name leaves HookName empty, with the
/// raw name in Metadata.Extra["sparsify_hookpoint"] for the caller to map.</para>
/// <para>Transcoders (<c>transcode: true</c>) read the hooked module's input and predict its output, without subtracting
/// b_dec: <c>layers.N.mlp</c> → blocks.N.mlp.hook_in → blocks.N.mlp.hook_out (the MLP's input after the norm's weight, and its
/// output), <c>layers.N</c> → blocks.N.hook_resid_pre → blocks.N.hook_resid_post; with <c>skip_connection</c> the output adds
/// x·W_skipᵀ (W_skip [d_in, d_in]).</para>
/// </summary>
public static class SparsifyFormat
{
    public const string ConfigFile = "cfg.json";
    public const string WeightsFile = "sae.safetensors";

    static readonly HashSet<string> Interpreted = ["k", "num_latents", "expansion_factor", "d_in", "signed", "transcode", "skip_connection", "activation", "normalize_io"];
    static readonly Regex Layer = new(@"^(?:(?:model|transformer|gpt_neox|base_model\.model\.model)\.)?(?:layers|h)\.(\d+)(\.mlp)?$", RegexOptions.CultureInvariant);
    static readonly Regex Embed = new(@"^(?:(?:model|transformer|gpt_neox)\.)?(?:embed_tokens|wte|embed_in)$", RegexOptions.CultureInvariant);

    /// <summary>True when <paramref name="dir"/> holds cfg.json and sae.safetensors.</summary>
    public static bool IsFolder(string dir) =>
        File.Exists(Path.Combine(dir, ConfigFile)) && File.Exists(Path.Combine(dir, WeightsFile));

    /// <summary>Loads the sparsify SAE in <paramref name="dir"/>; refuses features FeatureLens cannot honour.</summary>
    public static Sae Load(string dir)
    {
        dir = Path.GetFullPath(dir.TrimEnd(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar));
        string cfgPath = Path.Combine(dir, ConfigFile);
        string weights = Path.Combine(dir, WeightsFile);
        var c = new ConfigFields(cfgPath, SaeAssembly.ReadJsonObject(cfgPath));

        if (c.Bool("signed") == true)
            throw new InvalidDataException($"{cfgPath}: signed = true (latents may be negative) is not supported; FeatureLens's TopK SAEs keep only positive activations");
        string? activation = c.String("activation");
        if (activation is not null and not "topk")
            throw new InvalidDataException($"{cfgPath}: activation \"{activation}\" is not supported (only \"topk\")");
        if (c.Bool("normalize_io") == true)
            throw new InvalidDataException($"{cfgPath}: normalize_io = true (input/output rescaled by stored average norms) is not supported");
        bool transcode = c.Bool("transcode") == true, skip = c.Bool("skip_connection") == true;
        if (skip && !transcode)
            throw new InvalidDataException($"{cfgPath}: skip_connection = true without transcode is not supported (FeatureLens's skip path exists only for skip transcoders)");

        var cfg = new SaeConfig
        {
            Architecture = transcode ? SaeConfig.TranscoderOf(SaeArchitecture.TopK, skip) : SaeArchitecture.TopK,
            Format = transcode ? "sparsify transcoder" : "sparsify",
            ApplyBDecToInput = !transcode,
            K = c.Int("k") ?? throw new InvalidDataException($"{cfgPath}: field 'k' (latents kept per token) is missing"),
            DIn = c.Int("d_in") ?? 0,
        };
        int numLatents = c.Int("num_latents") ?? 0;
        string dSaeField = "num_latents";
        if (numLatents <= 0 && c.Int("expansion_factor") is int ef)
        {
            if (cfg.DIn <= 0)
                throw new InvalidDataException($"{cfgPath}: num_latents is {(c.Has("num_latents") ? "0" : "absent")} and d_in is missing, so num_latents = expansion_factor·d_in cannot be computed");
            numLatents = checked(ef * cfg.DIn);
            dSaeField = $"expansion_factor ({ef}) × d_in";
        }
        cfg.DSae = numLatents;
        if (transcode && cfg.DIn > 0) cfg.DOut = cfg.DIn;   // sparsify's transcoders map d_in to d_in

        string hookpoint = Path.GetFileName(dir);
        cfg.Metadata.Extra["sparsify_hookpoint"] = hookpoint;
        string? runModel = RunModel(dir);
        if (runModel != null) cfg.Metadata.ModelName = runModel;
        bool gemma2 = runModel != null && GemmaTwo.IsMatch(runModel);
        if (transcode)
        {
            var hooks = TranscoderHooksFor(hookpoint)
                ?? throw new InvalidDataException($"{cfgPath}: transcode = true at hook point '{hookpoint}': FeatureLens maps sparsify transcoders at layers.N.mlp (MLP input → output) and layers.N (block input → output) only");
            cfg.Metadata.HookName = hooks.In;
            cfg.Metadata.HookNameOut = hooks.Out;
        }
        else
        {
            cfg.Metadata.HookName = HookNameFor(hookpoint) ?? "";
            if (gemma2 && cfg.Metadata.HookName.EndsWith(".hook_mlp_out", StringComparison.Ordinal))
                cfg.Metadata.HookName = cfg.Metadata.HookName[..^"hook_mlp_out".Length] + "mlp.hook_out";
        }
        c.CopyRest(cfg.Metadata.Extra, Interpreted);

        if (!File.Exists(weights))
            throw new FileNotFoundException($"{dir}: sparsify folder has {ConfigFile} but no {WeightsFile}", weights);
        using var f = new SafetensorsSaeFile(SafetensorsFile.Open(weights));
        var names = new SaeTensorNames { WEnc = "encoder.weight", WEncStoredTransposed = true, BEnc = "encoder.bias" };
        return SaeAssembly.Build(cfg, f, names, cfgPath, ("d_in", dSaeField, "d_in"), dir);
    }

    static readonly Regex GemmaTwo = new(@"gemma-?2", RegexOptions.CultureInvariant | RegexOptions.IgnoreCase);

    /// <summary>The "model" field of the sparsify run's config.json beside the hook point folder, if any.</summary>
    static string? RunModel(string dir)
    {
        string runCfg = Path.Combine(Path.GetDirectoryName(dir) ?? dir, "config.json");
        if (!File.Exists(runCfg)) return null;
        try
        {
            return System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(runCfg)) is System.Text.Json.Nodes.JsonObject o
                && o.TryGetPropertyValue("model", out var m) && m is System.Text.Json.Nodes.JsonValue v && v.TryGetValue(out string? s) ? s : null;
        }
        catch (System.Text.Json.JsonException) { return null; }   // not a sparsify run config
    }

    /// <summary>
    /// The (input, output) hooks of a sparsify transcoder at <paramref name="hookpoint"/>, or null: layers.N.mlp →
    /// blocks.N.mlp.hook_in → blocks.N.mlp.hook_out; layers.N → blocks.N.hook_resid_pre → blocks.N.hook_resid_post.
    /// </summary>
    public static (string In, string Out)? TranscoderHooksFor(string hookpoint)
    {
        var m = Layer.Match(hookpoint);
        if (!m.Success) return null;
        string b = $"blocks.{m.Groups[1].Value}.";
        return m.Groups[2].Success ? (b + "mlp.hook_in", b + "mlp.hook_out") : (b + "hook_resid_pre", b + "hook_resid_post");
    }

    /// <summary>
    /// The TransformerLens hook for a sparsify hook point name, or null when it is not one FeatureLens
    /// knows: layers.N → blocks.N.hook_resid_post, embed_tokens → blocks.0.hook_resid_pre,
    /// layers.N.mlp → blocks.N.hook_mlp_out.
    /// </summary>
    public static string? HookNameFor(string hookpoint)
    {
        var m = Layer.Match(hookpoint);
        if (m.Success) return $"blocks.{m.Groups[1].Value}." + (m.Groups[2].Success ? "hook_mlp_out" : "hook_resid_post");
        if (Embed.IsMatch(hookpoint)) return "blocks.0.hook_resid_pre";
        return null;
    }
}
