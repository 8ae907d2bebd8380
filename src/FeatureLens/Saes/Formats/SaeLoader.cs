using System.Text.RegularExpressions;

namespace FeatureLens.Saes.Formats;

/// <summary>
/// Loads SAEs from any community format FeatureLens reads, recognised by the files present:
/// SAELens (cfg.json + sae_weights.safetensors), sparsify (cfg.json + sae.safetensors), Gemma Scope
/// (params.npz), Llama Scope / lm_saes (hyperparams.json + checkpoints/final.safetensors) and circuit-tracer transcoder sets
/// (config.yaml + layer_N.safetensors). Every format ends as the same float32 <see cref="Sae"/>.
/// </summary>
public static class SaeLoader
{
    const int MaxSearchDepth = 5;
    static readonly Regex BlockIndex = new(@"^blocks\.(\d+)\.", RegexOptions.CultureInvariant);

    /// <summary>
    /// Loads one SAE. <paramref name="path"/> is a SAELens folder, a sparsify per-hook folder, a Gemma Scope
    /// params.npz (or the folder holding it), or a cfg.json / weights file inside such a folder.
    /// </summary>
    public static Sae Load(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string full = Path.GetFullPath(path);
        if (File.Exists(full))
        {
            string name = Path.GetFileName(full);
            if (full.EndsWith(".npz", StringComparison.OrdinalIgnoreCase)) return GemmaScopeFormat.Load(full);
            if (name is SaeLensFormat.ConfigFile or SaeLensFormat.WeightsFile or SparsifyFormat.WeightsFile or LlamaScopeFormat.ConfigFile)
                return LoadFolder(Path.GetDirectoryName(full)!);
            if (name.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) && Path.GetFileName(Path.GetDirectoryName(full)) == "checkpoints"
                && LlamaScopeFormat.IsFolder(Path.GetDirectoryName(Path.GetDirectoryName(full))!))
                return LlamaScopeFormat.Load(Path.GetDirectoryName(Path.GetDirectoryName(full))!);
            if (full.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) && CircuitTracerFormat.IsFolder(Path.GetDirectoryName(full)!))
                return CircuitTracerFormat.LoadFile(full);
            throw new InvalidDataException($"{full}: not an SAE file (expected a folder, cfg.json, {SaeLensFormat.WeightsFile}, {SparsifyFormat.WeightsFile} or a Gemma Scope {GemmaScopeFormat.WeightsFile})");
        }
        if (!Directory.Exists(full)) throw new FileNotFoundException($"SAE path not found: {full}", full);
        return LoadFolder(full);
    }

    static Sae LoadFolder(string dir)
    {
        if (SaeLensFormat.IsFolder(dir)) return SaeLensFormat.Load(dir);
        if (SparsifyFormat.IsFolder(dir)) return SparsifyFormat.Load(dir);
        if (LlamaScopeFormat.IsFolder(dir)) return LlamaScopeFormat.Load(dir);
        string npz = Path.Combine(dir, GemmaScopeFormat.WeightsFile);
        if (File.Exists(npz)) return GemmaScopeFormat.Load(npz);
        if (CircuitTracerFormat.IsFolder(dir))
        {
            var set = CircuitTracerFormat.LoadAll(dir);
            if (set.Count == 1) return set[0];
            throw new InvalidDataException($"{dir}: a circuit-tracer set of {set.Count} per-layer transcoders; load them all with LoadAll (or name one layer_N.safetensors)");
        }

        string hint = "";
        if (File.Exists(Path.Combine(dir, SaeLensFormat.ConfigFile)))
            hint = $" It has cfg.json but neither {SaeLensFormat.WeightsFile} (SAELens) nor {SparsifyFormat.WeightsFile} (sparsify).";
        else if (File.Exists(Path.Combine(dir, LlamaScopeFormat.ConfigFile)))
            hint = $" It has {LlamaScopeFormat.ConfigFile} (Llama Scope / lm_saes) but no checkpoints/final.safetensors (or sae_weights.safetensors).";
        else if (FindSaeFolders(dir, 0).Any())
            hint = " It holds SAE subfolders: load them all with LoadAll (or name one of them).";
        throw new InvalidDataException(
            $"{dir}: no SAE found (expected cfg.json + {SaeLensFormat.WeightsFile} for SAELens, cfg.json + {SparsifyFormat.WeightsFile} for sparsify, {GemmaScopeFormat.WeightsFile} for Gemma Scope, {LlamaScopeFormat.ConfigFile} + checkpoints/final.safetensors for Llama Scope, or config.yaml for circuit-tracer).{hint}");
    }

    /// <summary>True when <paramref name="dir"/> is one SAE folder in a format FeatureLens reads.</summary>
    public static bool LooksLikeSae(string dir) =>
        Directory.Exists(dir) && (SaeLensFormat.IsFolder(dir) || SparsifyFormat.IsFolder(dir) || LlamaScopeFormat.IsFolder(dir) || File.Exists(Path.Combine(dir, GemmaScopeFormat.WeightsFile))
            || CircuitTracerFormat.IsFolder(dir));

    /// <summary>
    /// Loads every SAE under <paramref name="path"/>: one SAE (folder or file), or a directory holding one
    /// folder per hook point (a sparsify run with layers.0/, layers.1/ …; a suite of SAELens folders; a
    /// Gemma Scope tree layer_N/width_…/average_l0_…/). Sorted by layer (from blocks.N. in the hook name;
    /// unknown last), then hook name, then path.
    /// </summary>
    public static IReadOnlyList<Sae> LoadAll(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        string full = Path.GetFullPath(path);
        if (File.Exists(full)) return [Load(full)];
        if (LooksLikeSae(full)) return LoadFolderAll(full);
        if (!Directory.Exists(full)) throw new FileNotFoundException($"SAE path not found: {full}", full);
        var dirs = FindSaeFolders(full, 0).ToList();
        if (dirs.Count == 0)
            throw new InvalidDataException($"{full}: no SAE folders found (searched {MaxSearchDepth} levels for cfg.json + {SaeLensFormat.WeightsFile}, cfg.json + {SparsifyFormat.WeightsFile}, {GemmaScopeFormat.WeightsFile}, {LlamaScopeFormat.ConfigFile} or config.yaml)");
        return dirs.SelectMany(LoadFolderAll)
            .OrderBy(s => LayerOf(s.Config.HookName) ?? int.MaxValue)
            .ThenBy(s => s.Config.HookName, StringComparer.Ordinal)
            .ThenBy(s => s.SourcePath, StringComparer.Ordinal)
            .ToList();
    }

    /// <summary>Every SAE of one folder: one, or a circuit-tracer set's per-layer transcoders.</summary>
    static IReadOnlyList<Sae> LoadFolderAll(string dir) =>
        CircuitTracerFormat.IsFolder(dir) && !SaeLensFormat.IsFolder(dir) && !SparsifyFormat.IsFolder(dir) && !LlamaScopeFormat.IsFolder(dir) ? CircuitTracerFormat.LoadAll(dir) : [LoadFolder(dir)];

    /// <summary>The block index of a TransformerLens hook name ("blocks.7.hook_resid_post" → 7), or null.</summary>
    public static int? LayerOf(string hookName)
    {
        var m = BlockIndex.Match(hookName);
        return m.Success && int.TryParse(m.Groups[1].Value, NumberStyles.None, CultureInfo.InvariantCulture, out int l) ? l : null;
    }

    // SAE folders below dir (not dir itself), not descending into an SAE folder; links are not followed.
    static IEnumerable<string> FindSaeFolders(string dir, int depth)
    {
        if (depth >= MaxSearchDepth) yield break;
        string[] subs;
        try { subs = Directory.GetDirectories(dir); }
        catch (UnauthorizedAccessException) { yield break; }
        Array.Sort(subs, StringComparer.Ordinal);
        foreach (var sub in subs)
        {
            if (new DirectoryInfo(sub).LinkTarget != null) continue;
            if (LooksLikeSae(sub)) yield return sub;
            else foreach (var d in FindSaeFolders(sub, depth + 1)) yield return d;
        }
    }
}
