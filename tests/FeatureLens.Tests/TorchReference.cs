using System.Diagnostics;
using System.Text.Json;

namespace FeatureLens.Tests;

/// <summary>Runs the independent PyTorch reference (python/torch_reference.py) with Debian's python3-torch.</summary>
internal static class TorchReference
{
    public const string Python = "/usr/bin/python3";

    public static string Script => Path.Combine(AppContext.BaseDirectory, "python", "torch_reference.py");

    /// <summary>Runs the reference script with arguments; fails the test with its stderr when it fails.</summary>
    public static string Run(params string[] args) => RunPython(Script, args);

    /// <summary>Runs a Python file with Debian's python3 (which has torch); returns stdout or throws with stderr.</summary>
    public static string RunPython(string scriptPath, params string[] args)
    {
        if (!File.Exists(Python)) throw new InvalidOperationException("PyTorch oracle missing: install Debian's python3-torch (apt-get install python3-torch)");
        var psi = new ProcessStartInfo(Python) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(scriptPath);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["OMP_NUM_THREADS"] = "1";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(300_000)) { p.Kill(true); throw new TimeoutException($"{Path.GetFileName(scriptPath)} {string.Join(" ", args)} timed out"); }
        if (p.ExitCode != 0) throw new InvalidOperationException($"{Path.GetFileName(scriptPath)} {string.Join(" ", args)} failed ({p.ExitCode}):\n{stderr.Result}\n{stdout.Result}");
        return stdout.Result;
    }

    /// <summary>Writes a random Hugging Face model folder with PyTorch; returns the folder.</summary>
    public static string MakeModel(string dir, string arch, object config, string dtype, int seed, params string[] extra)
    {
        Directory.CreateDirectory(dir);
        string cfgPath = Path.Combine(dir, "make-config.json");
        File.WriteAllText(cfgPath, JsonSerializer.Serialize(config));
        string outDir = Path.Combine(dir, "model");
        Run(["make", "--arch", arch, "--config", cfgPath, "--dtype", dtype, "--seed", seed.ToString(CultureInfo.InvariantCulture), "--out", outDir, .. extra]);
        return outDir;
    }

    /// <summary>Runs the reference on each sequence; returns the safetensors file with "{b}/{hook}" tensors.</summary>
    public static string RunModel(string model, int[][] tokens, string outPath)
    {
        string tokPath = outPath + ".tokens.json";
        File.WriteAllText(tokPath, JsonSerializer.Serialize(tokens));
        Run("run", "--model", model, "--tokens", tokPath, "--out", outPath, "--hooks", "all");
        return outPath;
    }
}

/// <summary>
/// The independent autograd gradient oracle (python/grad_reference.py): float64 torch autograd with every
/// hook activation (and every hook of a spliced SAE) as a graph node.
/// </summary>
internal static class GradReference
{
    public static string Script => Path.Combine(AppContext.BaseDirectory, "python", "grad_reference.py");

    /// <summary>
    /// Runs the oracle: each sequence alone, metric summed over sequences. The file holds "{b}/{hook}",
    /// "{b}/{hook}.grad" (float32, TransformerLens shape without batch), "{b}/logits", "{b}/metric",
    /// "metric" and, with SAEs, "{b}/sae_margin" (the smallest relative distance of an SAE activation
    /// decision to its boundary).
    /// </summary>
    public static string Run(string model, int[][] tokens, string metric, string outPath, string? saesPath = null)
    {
        string tokPath = outPath + ".tokens.json";
        File.WriteAllText(tokPath, JsonSerializer.Serialize(tokens));
        var args = new List<string> { "--model", model, "--tokens", tokPath, "--metric", metric, "--out", outPath, "--hooks", "all" };
        if (saesPath != null) args.AddRange(["--saes", saesPath]);
        TorchReference.RunPython(Script, [.. args]);
        return outPath;
    }

    /// <summary>
    /// Writes SAEs in the oracle's layout: metadata "saes" = JSON list of {name, hook_name, architecture,
    /// apply_b_dec_to_input, k, hook_head_index, hook_name_out}; tensors "{name}/W_enc" (d_in, d_sae), "b_enc",
    /// "W_dec" (d_sae, d_out), "b_dec", "threshold", "b_gate", "r_mag", "b_mag", "W_skip" (d_out, d_in) as present.
    /// No input normalisation and no decoder-norm rescaling (the oracle rejects neither; it does not model them).
    /// </summary>
    public static void WriteSaes(string path, IReadOnlyList<FeatureLens.Saes.Sae> saes)
    {
        var writer = new FeatureLens.Runtime.Checkpoints.SafetensorsWriter();
        var specs = new List<Dictionary<string, object?>>();
        for (int i = 0; i < saes.Count; i++)
        {
            var sae = saes[i];
            var cfg = sae.Config;
            if (cfg.Normalization != FeatureLens.Saes.ActivationNormalization.None || cfg.RescaleActsByDecoderNorm)
                throw new ArgumentException("the gradient oracle models neither input normalisation nor decoder-norm rescaling");
            string name = $"sae{i}";
            var spec = new Dictionary<string, object?>
            {
                ["name"] = name, ["hook_name"] = cfg.Metadata.HookName, ["architecture"] = FeatureLens.Saes.SaeConfig.ArchitectureName(cfg.Architecture),
                ["apply_b_dec_to_input"] = cfg.ApplyBDecToInput, ["k"] = cfg.K,
            };
            if (cfg.Metadata.HookHeadIndex is int h) spec["hook_head_index"] = h;
            if (cfg.IsTranscoder) spec["hook_name_out"] = cfg.Metadata.HookNameOut;
            specs.Add(spec);
            void Add(string t, float[]? data, params int[] shape)
            {
                if (data != null) writer.Add($"{name}/{t}", new FeatureLens.Runtime.Tensors.Tensor(shape, data));
            }
            Add("W_enc", sae.WEnc, sae.DIn, sae.DSae);
            Add("b_enc", sae.BEnc, sae.DSae);
            Add("W_dec", sae.WDec, sae.DSae, sae.DOut);
            Add("b_dec", sae.BDec, sae.DOut);
            Add("threshold", sae.Threshold, sae.DSae);
            Add("b_gate", sae.BGate, sae.DSae);
            Add("r_mag", sae.RMag, sae.DSae);
            Add("b_mag", sae.BMag, sae.DSae);
            Add("W_skip", sae.WSkip, sae.DOut, sae.DIn);
        }
        writer.Write(path, new Dictionary<string, string> { ["saes"] = JsonSerializer.Serialize(specs) });
    }
}

/// <summary>Comparison helpers with stated tolerances.</summary>
internal static class Compare
{
    /// <summary>‖a − b‖ / ‖b‖ over entries finite in both; infinities must coincide.</summary>
    public static double RelativeError(ReadOnlySpan<float> ours, ReadOnlySpan<float> reference, string what)
    {
        if (ours.Length != reference.Length) throw new Xunit.Sdk.XunitException($"{what}: {ours.Length} elements vs reference {reference.Length}");
        double num = 0, den = 0;
        for (int i = 0; i < ours.Length; i++)
        {
            float a = ours[i], b = reference[i];
            if (float.IsInfinity(b) || float.IsInfinity(a))
            {
                if (a != b) throw new Xunit.Sdk.XunitException($"{what}: element {i} is {a}, reference {b}");
                continue;
            }
            if (float.IsNaN(a) || float.IsNaN(b)) throw new Xunit.Sdk.XunitException($"{what}: NaN at element {i} (ours {a}, reference {b})");
            num += (double)(a - b) * (a - b);
            den += (double)b * b;
        }
        return den == 0 ? Math.Sqrt(num) : Math.Sqrt(num / den);
    }
}
