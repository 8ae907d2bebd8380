using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using FeatureLens.Runtime.Kernels;
using FeatureLens.Runtime.Tensors;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// GEMM throughput: ours on 1 and 2 threads against torch.mm (OpenBLAS) on 1 and 2 threads, for
/// square and GPT-2 shapes, plus the machine's measured FMA peak.
/// Options: --runs N (timed samples per cell, default 7), --only TEXT (shapes whose name contains it),
/// --no-torch, --path Auto|Vector512|Vector256|Scalar, --cpu-time (divide by the process's CPU time
/// per thread instead of wall time: a load-independent estimate when other work shares the cores).
/// </summary>
public static class GemmBench
{
    /// <summary>One benchmark case: C[M,N] = A·B with the given layout (NN, NT = B seen transposed, TN = A seen transposed) and B dtype.</summary>
    sealed record Shape(string Name, int M, int K, int N, string Layout, DType BType);

    static readonly Shape[] Shapes =
    [
        new("square 1024^3", 1024, 1024, 1024, "NN", DType.F32),
        new("square 1024^3 x.W^T", 1024, 1024, 1024, "NT", DType.F32),
        new("square 1024^3 A^T.B", 1024, 1024, 1024, "TN", DType.F32),
        new("square 1024^3 bf16 B", 1024, 1024, 1024, "NN", DType.BF16),
        new("gpt2 qkv 1024x768x2304", 1024, 768, 2304, "NN", DType.F32),
        new("gpt2 attn.proj 1024x768x768", 1024, 768, 768, "NN", DType.F32),
        new("gpt2 mlp.fc 1024x768x3072", 1024, 768, 3072, "NN", DType.F32),
        new("gpt2 mlp.proj 1024x3072x768", 1024, 3072, 768, "NN", DType.F32),
        new("gpt2 unembed 1024x768x50257 W^T", 1024, 768, 50257, "NT", DType.F32),
        new("gpt2 mlp.fc bf16 W^T", 1024, 768, 3072, "NT", DType.BF16),
        new("decode M=1 768x2304 W^T", 1, 768, 2304, "NT", DType.F32),
        new("decode M=16 768x3072 W^T", 16, 768, 3072, "NT", DType.F32),
    ];

    public static int Run(string[] args)
    {
        int runs = 7;
        string? only = null;
        bool torch = true, cpuTime = false;
        GemmPath path = GemmPath.Auto;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--runs": runs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--only": only = args[++i]; break;
                case "--no-torch": torch = false; break;
                case "--cpu-time": cpuTime = true; break;
                case "--path": path = Enum.Parse<GemmPath>(args[++i], ignoreCase: true); break;
                default:
                    Console.Error.WriteLine($"gemm bench: unknown option '{args[i]}' (expected --runs N, --only TEXT, --no-torch, --path P)");
                    return 2;
            }
        }
        var shapes = Shapes.Where(s => only == null || s.Name.Contains(only, StringComparison.OrdinalIgnoreCase)).ToArray();
        if (shapes.Length == 0) { Console.Error.WriteLine($"gemm bench: no shape matches '{only}'"); return 2; }

        AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 150); // keep the table on one line per shape when piped
        double peak1 = PeakFlops.Measure(1), peak2 = PeakFlops.Measure(2);
        AnsiConsole.MarkupLine($"FMA peak: [bold]{peak1:F0}[/] GFLOP/s on 1 thread, [bold]{peak2:F0}[/] GFLOP/s on 2 threads");

        Dictionary<string, double[]>? torchResults = null;
        string torchVersion = "";
        if (torch)
        {
            try { (torchVersion, torchResults) = RunTorch(shapes, runs); }
            catch (Exception e) { AnsiConsole.MarkupLineInterpolated($"[yellow]torch timing skipped: {e.Message}[/]"); }
        }

        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("shape").AddColumn(new TableColumn("ours 1T").RightAligned()).AddColumn(new TableColumn("ours 2T").RightAligned())
            .AddColumn(new TableColumn("torch 1T").RightAligned()).AddColumn(new TableColumn("torch 2T").RightAligned())
            .AddColumn(new TableColumn("ours/torch 1T").RightAligned()).AddColumn(new TableColumn("ours/torch 2T").RightAligned())
            .AddColumn(new TableColumn("% peak 1T").RightAligned()).AddColumn(new TableColumn("% peak 2T").RightAligned());
        foreach (var s in shapes)
        {
            double ours1 = TimeOurs(s, 1, path, runs, cpuTime), ours2 = TimeOurs(s, 2, path, runs, cpuTime);
            double[]? t = s.BType == DType.F32 && torchResults != null && torchResults.TryGetValue(s.Name, out var tr) ? tr : null;
            string F(double v) => v.ToString("F1", CultureInfo.InvariantCulture);
            table.AddRow(s.Name, F(ours1), F(ours2),
                t == null ? "-" : F(t[0]), t == null ? "-" : F(t[1]),
                t == null ? "-" : (ours1 / t[0]).ToString("F2", CultureInfo.InvariantCulture) + "x",
                t == null ? "-" : (ours2 / t[1]).ToString("F2", CultureInfo.InvariantCulture) + "x",
                $"{100 * ours1 / peak1:F0}%", $"{100 * ours2 / peak2:F0}%");
            Console.Error.WriteLine($"  done {s.Name}: {F(ours1)} / {F(ours2)} GFLOP/s");
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLineInterpolated($"GFLOP/s, median of {runs} samples after warm-up; path {Gemm.Resolve(path)}; torch {(torchVersion == "" ? "not run" : torchVersion)} (float32 only).");
        return 0;
    }

    /// <summary>Median GFLOP/s of our GEMM on <paramref name="threads"/> threads.</summary>
    static unsafe double TimeOurs(Shape s, int threads, GemmPath path, int runs, bool cpuTime)
    {
        int bSize = s.BType.Size();
        long aCount = (long)s.M * s.K, bCount = (long)s.K * s.N, cCount = (long)s.M * s.N;
        float* a = (float*)NativeMemory.AlignedAlloc((nuint)(aCount * 4), 64);
        byte* b = (byte*)NativeMemory.AlignedAlloc((nuint)(bCount * bSize), 64);
        float* c = (float*)NativeMemory.AlignedAlloc((nuint)(cCount * 4), 64);
        try
        {
            var rng = new Random(1234);
            for (long i = 0; i < aCount; i++) a[i] = (float)(rng.NextDouble() * 2 - 1);
            for (long i = 0; i < bCount; i++)
            {
                float v = (float)(rng.NextDouble() * 2 - 1);
                switch (s.BType)
                {
                    case DType.F32: ((float*)b)[i] = v; break;
                    case DType.BF16: ((ushort*)b)[i] = FloatConvert.F32ToBF16(v); break;
                    default: ((Half*)b)[i] = (Half)v; break;
                }
            }
            var av = s.Layout == "TN" ? MatrixView.F32(a, s.K, s.M).T : MatrixView.F32(a, s.M, s.K);
            var bv = s.Layout == "NT" ? new MatrixView(b, s.BType, s.N, s.K, s.K, 1).T : new MatrixView(b, s.BType, s.K, s.N, s.N, 1);
            double flop = 2.0 * s.M * s.N * s.K;
            Gemm.Multiply(av, bv, c, s.N, false, path, threads); // warm-up (JIT, buffers)
            var sw = Stopwatch.StartNew();
            Gemm.Multiply(av, bv, c, s.N, false, path, threads);
            double once = Math.Max(sw.Elapsed.TotalSeconds, 1e-6);
            int inner = Math.Max(1, (int)(0.05 / once));
            var samples = new double[runs];
            var process = Process.GetCurrentProcess();
            for (int r = 0; r < runs; r++)
            {
                process.Refresh();
                var cpu0 = process.TotalProcessorTime;
                sw.Restart();
                for (int i = 0; i < inner; i++) Gemm.Multiply(av, bv, c, s.N, false, path, threads);
                double seconds = sw.Elapsed.TotalSeconds;
                process.Refresh();
                if (cpuTime) seconds = (process.TotalProcessorTime - cpu0).TotalSeconds / threads;
                samples[r] = flop * inner / seconds / 1e9;
            }
            Array.Sort(samples);
            return samples[runs / 2];
        }
        finally
        {
            NativeMemory.AlignedFree(a); NativeMemory.AlignedFree(b); NativeMemory.AlignedFree(c);
        }
    }

    /// <summary>Runs bench/gemm_torch.py with /usr/bin/python3; returns torch's version and name → [GFLOP/s 1T, 2T].</summary>
    static (string, Dictionary<string, double[]>) RunTorch(Shape[] shapes, int runs)
    {
        string script = FindScript();
        var list = shapes.Where(s => s.BType == DType.F32).Select(s => new { name = s.Name, m = s.M, k = s.K, n = s.N, layout = s.Layout });
        var psi = new ProcessStartInfo("/usr/bin/python3") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(script);
        psi.ArgumentList.Add(JsonSerializer.Serialize(list));
        psi.ArgumentList.Add(runs.ToString(CultureInfo.InvariantCulture));
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start /usr/bin/python3");
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{script} exited with {p.ExitCode}: {stderr.Result.Trim()}");
        using var doc = JsonDocument.Parse(stdout);
        var results = new Dictionary<string, double[]>();
        foreach (var prop in doc.RootElement.GetProperty("results").EnumerateObject())
            results[prop.Name] = [prop.Value.GetProperty("1").GetDouble(), prop.Value.GetProperty("2").GetDouble()];
        return (doc.RootElement.GetProperty("torch").GetString() ?? "?", results);
    }

    /// <summary>bench/gemm_torch.py, found by walking up from the binary to the directory holding FeatureLens.slnx.</summary>
    static string FindScript()
    {
        // The binary may live in an --artifacts-path outside the repository: try the working directory too.
        foreach (var start in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
            for (var dir = new DirectoryInfo(start); dir != null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "FeatureLens.slnx")))
                    return Path.Combine(dir.FullName, "bench", "gemm_torch.py");
        throw new FileNotFoundException($"bench/gemm_torch.py not found: no FeatureLens.slnx above {AppContext.BaseDirectory} or {Environment.CurrentDirectory}");
    }
}
