using System.Text.RegularExpressions;

namespace FeatureLens.Saes.Formats;

/// <summary>
/// Gemma Scope's params.npz: W_enc [d_model, d_sae], W_dec [d_sae, d_model], b_enc [d_sae], b_dec [d_model],
/// threshold [d_sae] — a JumpReLU SAE that does not subtract b_dec from its input. There is no config file;
/// the hook comes from the path when it follows Gemma Scope's layout
/// <c>gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz</c> (a Hugging Face cache folder
/// <c>models--google--gemma-scope-2b-pt-res/snapshots/…</c> works too):
/// res → blocks.L.hook_resid_post, mlp → blocks.L.hook_mlp_out, att → blocks.L.attn.hook_z (heads flattened),
/// transcoders → a JumpReLU transcoder from blocks.L.mlp.hook_in (the MLP's input: the pre-MLP RMSNorm's output with its
/// (1 + w) weight, as circuit-tracer's mntss/gemma-scope-transcoders config reads them) to blocks.L.hook_mlp_out (after
/// Gemma 2's post-MLP norm). Elsewhere HookName is left empty for the caller to set.
/// </summary>
public static class GemmaScopeFormat
{
    public const string WeightsFile = "params.npz";

    static readonly Regex Release = new(@"gemma-scope-(\d+b)-(pt|it)-(res|mlp|att|transcoders)", RegexOptions.CultureInvariant);
    static readonly Regex LayerDir = new(@"^layer_(\d+)$", RegexOptions.CultureInvariant);
    static readonly Regex WidthDir = new(@"^width_(\w+)$", RegexOptions.CultureInvariant);
    static readonly Regex L0Dir = new(@"^average_l0_(\d+)$", RegexOptions.CultureInvariant);

    /// <summary>Loads a params.npz file.</summary>
    public static Sae Load(string npzPath)
    {
        npzPath = Path.GetFullPath(npzPath);
        var cfg = new SaeConfig { Architecture = SaeArchitecture.JumpRelu, Format = "Gemma Scope npz", ApplyBDecToInput = false };
        DescribePath(npzPath, cfg);
        using var f = new NpzSaeFile(NpzReader.Open(npzPath));
        var names = new SaeTensorNames();
        return SaeAssembly.Build(cfg, f, names, null, ("d_in", "d_sae", "d_out"), npzPath);
    }

    /// <summary>
    /// Loads a params.npz as a JumpReLU transcoder from <paramref name="hookIn"/> to <paramref name="hookOut"/> (circuit-tracer
    /// transcoder sets that list Gemma Scope files).
    /// </summary>
    internal static Sae LoadTranscoder(string npzPath, string hookIn, string hookOut, string? modelName, string format)
    {
        npzPath = Path.GetFullPath(npzPath);
        var cfg = new SaeConfig { Architecture = SaeArchitecture.JumpReluTranscoder, Format = format, ApplyBDecToInput = false };
        DescribePath(npzPath, cfg);
        cfg.Architecture = SaeArchitecture.JumpReluTranscoder;   // whatever release the path names, the set's config decides
        cfg.ReshapeHookZ = false;
        cfg.Metadata.HookName = hookIn;
        cfg.Metadata.HookNameOut = hookOut;
        if (modelName != null) cfg.Metadata.ModelName = modelName;
        using var f = new NpzSaeFile(NpzReader.Open(npzPath));
        return SaeAssembly.Build(cfg, f, new SaeTensorNames(), null, ("d_in", "d_sae", "d_out"), npzPath);
    }

    /// <summary>Fills hook, model and layout facts from a Gemma Scope path (nothing when the path does not follow the layout).</summary>
    static void DescribePath(string npzPath, SaeConfig cfg)
    {
        var parts = Path.GetDirectoryName(npzPath)!.Split(Path.DirectorySeparatorChar, Path.AltDirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries);
        var md = cfg.Metadata;
        int? layer = null;
        Match? release = null;
        foreach (var part in parts)
        {
            if (LayerDir.Match(part) is { Success: true } lm) layer = int.Parse(lm.Groups[1].Value, CultureInfo.InvariantCulture);
            else if (WidthDir.Match(part) is { Success: true } wm) md.Extra["width"] = wm.Groups[1].Value;
            else if (L0Dir.Match(part) is { Success: true } am) md.Extra["average_l0"] = int.Parse(am.Groups[1].Value, CultureInfo.InvariantCulture);
            else if (Release.Match(part) is { Success: true } rm) { release = rm; md.Extra["release"] = part.StartsWith("models--google--", StringComparison.Ordinal) ? part["models--google--".Length..] : part; }
        }
        if (release is null) return;
        string size = release.Groups[1].Value, kind = release.Groups[2].Value, site = release.Groups[3].Value;
        md.ModelName = $"gemma-2-{size}" + (kind == "it" ? "-it" : "");
        if (layer is not int l) return;
        md.Extra["layer"] = l;
        switch (site)
        {
            case "res": md.HookName = $"blocks.{l}.hook_resid_post"; break;
            case "mlp": md.HookName = $"blocks.{l}.hook_mlp_out"; break;
            case "att": md.HookName = $"blocks.{l}.attn.hook_z"; cfg.ReshapeHookZ = true; break;
            case "transcoders":
                cfg.Architecture = SaeArchitecture.JumpReluTranscoder;
                md.HookName = $"blocks.{l}.mlp.hook_in";
                md.HookNameOut = $"blocks.{l}.hook_mlp_out";
                break;
        }
    }
}
