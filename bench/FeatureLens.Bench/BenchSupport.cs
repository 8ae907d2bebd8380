using System.Diagnostics;
using System.Text.Json;

namespace FeatureLens.Bench;

/// <summary>What every benchmark needs: the repository, the PyTorch peer as a subprocess, medians.</summary>
public static class BenchSupport
{
    /// <summary>The folder holding FeatureLens.slnx (searched from the binary, then the working directory).</summary>
    public static string RepoRoot()
    {
        foreach (var start in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
            for (var dir = new DirectoryInfo(start); dir != null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "FeatureLens.slnx"))) return dir.FullName;
        throw new DirectoryNotFoundException($"no FeatureLens.slnx above {AppContext.BaseDirectory} or {Environment.CurrentDirectory}");
    }

    /// <summary>Where benchmark models are written once and reused (git-ignored).</summary>
    public static string ModelsDir() => Directory.CreateDirectory(Path.Combine(RepoRoot(), "bench", "models")).FullName;

    /// <summary>Runs bench/SCRIPT with Debian's python3 (torch) and parses the JSON it prints last.</summary>
    public static JsonElement RunPythonJson(string script, params string[] args)
    {
        var psi = new ProcessStartInfo("/usr/bin/python3") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(RepoRoot(), "bench", script));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start /usr/bin/python3");
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{script} {string.Join(" ", args)} exited with {p.ExitCode}: {stderr.Result.Trim()}");
        string last = stdout.Trim().Split('\n')[^1];
        return JsonDocument.Parse(last).RootElement.Clone();
    }

    public static double Median(IEnumerable<double> xs)
    {
        var a = xs.OrderBy(x => x).ToArray();
        return a.Length == 0 ? double.NaN : a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }

    /// <summary>The CPU as /proc/cpuinfo names it: "model name (family F, model M)".</summary>
    public static string CpuName()
    {
        string name = "?", family = "?", model = "?";
        foreach (var line in File.ReadLines("/proc/cpuinfo"))
        {
            int colon = line.IndexOf(':');
            if (colon < 0) { if (name != "?") break; continue; } // the first processor's block is enough
            string key = line[..colon].Trim(), value = line[(colon + 1)..].Trim();
            if (key == "model name") name = value;
            else if (key == "cpu family") family = value;
            else if (key == "model") model = value;
        }
        return $"{name} (family {family}, model {model})";
    }

    /// <summary>Peak resident memory of this process so far (VmHWM), in GiB.</summary>
    public static double PeakRssGiB()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmHWM:"))
                return long.Parse(line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)[1]) / (1024.0 * 1024.0); // "VmHWM:  N kB"
        return double.NaN;
    }

    /// <summary>Minor page faults of this process so far (/proc/self/stat field 10): each is a first touch of a fresh page.</summary>
    public static long MinorFaults()
    {
        string stat = File.ReadAllText("/proc/self/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');   // fields from 3 (state) on
        return long.Parse(fields[10 - 3], System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>A field of /proc/self/status given in kB (VmRSS, VmHWM, RssAnon, RssFile), in GiB.</summary>
    public static double StatusGiB(string field)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(field + ":", StringComparison.Ordinal))
                return long.Parse(line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) / (1024.0 * 1024.0);
        return double.NaN;
    }
}

/// <summary>Polls this process's VmRSS every 50 ms; above the limit it prints what is resident and exits (code 3).</summary>
public sealed class RssWatchdog : IDisposable
{
    volatile bool _stop;
    readonly Thread _thread;

    RssWatchdog(double limitGiB, string who)
    {
        _thread = new Thread(() =>
        {
            while (!_stop)
            {
                double rss = BenchSupport.StatusGiB("VmRSS");
                if (rss > limitGiB)
                {
                    Console.Error.WriteLine($"{who}: RSS {rss:F2} GiB passed {limitGiB} GiB; stopping. " +
                        $"RssAnon {BenchSupport.StatusGiB("RssAnon"):F2} GiB, RssFile {BenchSupport.StatusGiB("RssFile"):F2} GiB (mapped weights), GC heap {GC.GetTotalMemory(false) / 1073741824.0:F2} GiB");
                    Environment.Exit(3);
                }
                Thread.Sleep(50);
            }
        })
        { IsBackground = true, Name = "rss-watchdog" };
        _thread.Start();
    }

    public static RssWatchdog Start(double limitGiB, string who) => new(limitGiB, who);

    public void Dispose() { _stop = true; _thread.Join(); }
}
