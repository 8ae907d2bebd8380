using System.Globalization;

namespace FeatureLens.Steering;

/// <summary>Where steering acts: every position (the default), the prompt's positions only, or the generated tokens' positions only.</summary>
public enum SteeringPositions
{
    /// <summary>Every position, prompt and generated.</summary>
    All,
    /// <summary>Positions 0 … prompt length − 1.</summary>
    Prompt,
    /// <summary>Positions from the prompt's length on (the generated tokens; the first new token is then chosen unsteered).</summary>
    New,
}

/// <summary>Parsing of the steering terms the CLI and the web app take.</summary>
public static class SteeringSpec
{
    /// <summary>all | prompt | new.</summary>
    public static SteeringPositions ParsePositions(string s) => s.Trim().ToLowerInvariant() switch
    {
        "all" => SteeringPositions.All,
        "prompt" => SteeringPositions.Prompt,
        "new" => SteeringPositions.New,
        _ => throw new ArgumentException($"--positions '{s}': expected all, prompt or new"),
    };

    /// <summary>True when absolute position <paramref name="pos"/> is steered.</summary>
    public static bool Covers(SteeringPositions where, int pos, int promptLength) => where switch
    {
        SteeringPositions.Prompt => pos < promptLength,
        SteeringPositions.New => pos >= promptLength,
        _ => true,
    };

    /// <summary>"HOOK:I=S" (a feature addition, <paramref name="option"/> "--feature") or "HOOK:I=V" (a clamp, "--clamp").</summary>
    public static (string Hook, int Latent, float Value) ParseLatentTerm(string option, string term)
    {
        int eq = term.LastIndexOf('=');
        int colon = eq < 0 ? -1 : term.LastIndexOf(':', eq);
        if (eq < 0 || colon <= 0)
            throw new ArgumentException($"{option} '{term}': expected HOOK:LATENT=VALUE, e.g. blocks.3.hook_resid_post:42=4");
        string hook = term[..colon].Trim();
        string latent = term[(colon + 1)..eq].Trim();
        if (!int.TryParse(latent, NumberStyles.None, CultureInfo.InvariantCulture, out int i))
            throw new ArgumentException($"{option} '{term}': latent '{latent}' is not a non-negative integer");
        return (hook, i, ParseNumber(option, term, term[(eq + 1)..]));
    }

    /// <summary>"FILE[:NAME]@HOOK=S": a vector from a safetensors tensor NAME (or the file's only tensor) or a .npy file.</summary>
    public static (string File, string? Name, string Hook, float Scale) ParseVectorTerm(string term)
    {
        const string option = "--vector";
        int eq = term.LastIndexOf('=');
        int at = eq < 0 ? -1 : term.LastIndexOf('@', eq);
        if (eq < 0 || at <= 0)
            throw new ArgumentException($"{option} '{term}': expected FILE[:NAME]@HOOK=SCALE, e.g. happy.safetensors@blocks.2.hook_resid_post=4");
        string source = term[..at], hook = term[(at + 1)..eq].Trim();
        if (hook.Length == 0) throw new ArgumentException($"{option} '{term}': the hook is empty");
        float scale = ParseNumber(option, term, term[(eq + 1)..]);
        var (file, name) = ParseVectorSource(source);
        return (file, name, hook, scale);
    }

    /// <summary>"FILE[:NAME]": FILE:NAME unless the whole text names a file (a path may itself hold ':').</summary>
    public static (string File, string? Name) ParseVectorSource(string source)
    {
        int colon = source.LastIndexOf(':');
        if (colon > 0 && !File.Exists(source) && colon < source.Length - 1) return (source[..colon], source[(colon + 1)..]);
        return (source, null);
    }

    /// <summary>"a,b,c" → finite numbers.</summary>
    public static float[] ParseStrengths(string s)
    {
        var parts = s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) throw new ArgumentException("--strengths is empty: give comma-separated numbers, e.g. 0.5,1,2");
        return parts.Select(p => ParseNumber("--strengths", s, p)).ToArray();
    }

    static float ParseNumber(string option, string term, string text)
    {
        if (!float.TryParse(text.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out float v) || !float.IsFinite(v))
            throw new ArgumentException($"{option} '{term}': '{text.Trim()}' is not a finite number");
        return v;
    }
}
