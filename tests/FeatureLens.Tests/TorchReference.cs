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
