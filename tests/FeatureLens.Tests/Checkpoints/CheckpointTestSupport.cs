using System.Text;

namespace FeatureLens.Tests.Checkpoints;

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
        string scriptPath = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"fl-ckpt-{Guid.NewGuid():N}.py");
        System.IO.File.WriteAllText(scriptPath, script);
        try { return TorchReference.RunPython(scriptPath, args); }
        finally { System.IO.File.Delete(scriptPath); }
    }
}
