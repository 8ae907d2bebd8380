using System.Diagnostics;
using System.Text;

namespace FeatureLens.Tests.Checkpoints;

/// <summary>A fresh folder under the system temp folder, deleted on dispose.</summary>
internal sealed class ScratchDir : IDisposable
{
    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "fl-ckpt-" + Guid.NewGuid().ToString("N"));

    public ScratchDir() => Directory.CreateDirectory(Path);

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

internal static class CheckpointTestSupport
{
    /// <summary>A fresh seed for this test run (printed in assertion messages).</summary>
    public static int NewSeed() => Random.Shared.Next();

    /// <summary>
    /// Writes a safetensors file byte by byte: u64 header length (or <paramref name="declaredHeaderLength"/>),
    /// the header text, then <paramref name="dataBytes"/> bytes of data.
    /// </summary>
    public static string WriteRawSafetensors(string path, string header, int dataBytes, ulong? declaredHeaderLength = null)
    {
        byte[] h = Encoding.UTF8.GetBytes(header);
        using var f = System.IO.File.Create(path);
        f.Write(BitConverter.GetBytes(declaredHeaderLength ?? (ulong)h.Length));
        f.Write(h);
        var data = new byte[dataBytes];
        Random.Shared.NextBytes(data);
        f.Write(data);
        return path;
    }

    /// <summary>Runs a Python program with Debian's python3 (which has torch); returns stdout or fails with stderr.</summary>
    public static string RunPython(string script, params string[] args)
    {
        const string python = "/usr/bin/python3";
        if (!System.IO.File.Exists(python)) throw new InvalidOperationException("needs /usr/bin/python3 with torch (Debian python3-torch)");
        string scriptPath = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"fl-ckpt-{Guid.NewGuid():N}.py");
        System.IO.File.WriteAllText(scriptPath, script);
        try
        {
            var psi = new ProcessStartInfo(python) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(scriptPath);
            foreach (var a in args) psi.ArgumentList.Add(a);
            psi.Environment["OMP_NUM_THREADS"] = "1";
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(120_000)) { p.Kill(true); throw new TimeoutException("python script timed out"); }
            if (p.ExitCode != 0) throw new InvalidOperationException($"python failed ({p.ExitCode}):\n{stderr.Result}\n{stdout.Result}");
            return stdout.Result;
        }
        finally
        {
            System.IO.File.Delete(scriptPath);
        }
    }
}
