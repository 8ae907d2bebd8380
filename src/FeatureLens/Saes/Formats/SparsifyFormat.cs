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
/// (a leading model./transformer./gpt_neox. and GPT-2's h.N are accepted too). Any other folder name
/// leaves HookName empty, with the raw name in Metadata.Extra["sparsify_hookpoint"] for the caller to map.</para>
/// </summary>
public static class SparsifyFormat
{
    public const string ConfigFile = "cfg.json";
    public const string WeightsFile = "sae.safetensors";

    static readonly HashSet<string> Interpreted = ["k", "num_latents", "expansion_factor", "d_in", "signed", "transcode", "skip_connection", "activation"];
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
        if (c.Bool("transcode") == true)
            throw new InvalidDataException($"{cfgPath}: transcode = true: sparsify transcoders use TopK latents, and FeatureLens has no TopK transcoder architecture (its transcoders are ReLU or JumpReLU)");
        if (c.Bool("skip_connection") == true)
            throw new InvalidDataException($"{cfgPath}: skip_connection = true is not supported for TopK sparsify SAEs (FeatureLens's skip path exists only for skip transcoders)");

        var cfg = new SaeConfig
        {
            Architecture = SaeArchitecture.TopK,
            Format = "sparsify",
            ApplyBDecToInput = true,
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

        string hookpoint = Path.GetFileName(dir);
        cfg.Metadata.Extra["sparsify_hookpoint"] = hookpoint;
        cfg.Metadata.HookName = HookNameFor(hookpoint) ?? "";
        c.CopyRest(cfg.Metadata.Extra, Interpreted);

        if (!File.Exists(weights))
            throw new FileNotFoundException($"{dir}: sparsify folder has {ConfigFile} but no {WeightsFile}", weights);
        using var f = new SafetensorsSaeFile(SafetensorsFile.Open(weights));
        var names = new SaeTensorNames { WEnc = "encoder.weight", WEncStoredTransposed = true, BEnc = "encoder.bias" };
        return SaeAssembly.Build(cfg, f, names, cfgPath, ("d_in", dSaeField, "d_in"), dir);
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
