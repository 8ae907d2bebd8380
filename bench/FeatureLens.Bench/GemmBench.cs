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
/// --shape MxKxN[:NN|NT|TN][:f32|bf16|f16] (instead of the built-in list, repeatable), --no-torch, --path Auto|Vector512|Vector256|Scalar, --cpu-time (divide by the process's CPU time
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
        var extra = new List<Shape>();
        GemmPath path = GemmPath.Auto;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--runs": runs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--only": only = args[++i]; break;
                case "--no-torch": torch = false; break;
                case "--cpu-time": cpuTime = true; break;
                case "--shape": extra.Add(ParseShape(args[++i])); break;
                case "--path": path = Enum.Parse<GemmPath>(args[++i], ignoreCase: true); break;
                default:
                    Console.Error.WriteLine($"gemm bench: unknown option '{args[i]}' (expected --runs N, --only TEXT, --no-torch, --path P)");
                    return 2;
            }
        }
        var shapes = extra.Count > 0 ? extra.ToArray()
            : Shapes.Where(s => only == null || s.Name.Contains(only, StringComparison.OrdinalIgnoreCase)).ToArray();
        if (shapes.Length == 0) { Console.Error.WriteLine($"gemm bench: no shape matches '{only}'"); return 2; }

        double peak1 = PeakFlops.Measure(1), peak2 = PeakFlops.Measure(2);
        AnsiConsole.MarkupLine($"FMA peak: [bold]{peak1:F0}[/] GFLOP/s on 1 thread, [bold]{peak2:F0}[/] GFLOP/s on 2 threads");
        if (cpuTime)
        {
            // Per-thread CPU time leaves out time spent waiting for a core, so compare with two whole cores.
            peak2 = 2 * peak1;
            AnsiConsole.MarkupLine($"--cpu-time: GFLOP/s per CPU-second of each thread; % of peak on 2 threads is against 2 x {peak1:F0}");
        }

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
            bool decode = s.M <= 16;
            string target = decode ? "≥ 1.2× on 2T" : "≥ 1.1× and ≥ 90 % of peak on 2T";
            bool? met = t == null ? null : decode ? ours2 / t[1] >= 1.2 : ours2 / t[1] >= 1.1 && ours2 / peak2 >= 0.9;
            BenchSummary.Record("gemm", $"{s.Name}, 2 threads (GFLOP/s, % of peak)", $"{F(ours2)} ({100 * ours2 / peak2:F0} %)", t == null ? "" : F(t[1]), t == null ? null : ours2 / t[1], t == null ? "" : target, met);
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLineInterpolated($"GFLOP/s, median of {runs} samples after warm-up; path {Gemm.Resolve(path)}; torch {(torchVersion == "" ? "not run" : torchVersion)} (float32 only).");
        return 0;
    }

    /// <summary>Parses "MxKxN[:layout][:dtype]", e.g. "1024x768x3072:NT:bf16".</summary>
    static Shape ParseShape(string text)
    {
        var parts = text.Split(':');
        var dims = parts[0].Split('x').Select(d => int.Parse(d, CultureInfo.InvariantCulture)).ToArray();
        if (dims.Length != 3) throw new FormatException($"--shape '{text}': expected MxKxN[:NN|NT|TN][:f32|bf16|f16]");
        string layout = parts.Length > 1 ? parts[1].ToUpperInvariant() : "NN";
        if (layout is not ("NN" or "NT" or "TN")) throw new FormatException($"--shape '{text}': layout must be NN, NT or TN");
        var type = parts.Length > 2 ? parts[2].ToLowerInvariant() switch
        {
            "f32" => DType.F32,
            "bf16" => DType.BF16,
            "f16" => DType.F16,
            _ => throw new FormatException($"--shape '{text}': dtype must be f32, bf16 or f16"),
        } : DType.F32;
        return new Shape(text, dims[0], dims[1], dims[2], layout, type);
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

    /// <summary>Runs bench/gemm_torch.py with /usr/bin/python3 on 1 and 2 threads; returns "torch version, BLAS" and name → [GFLOP/s 1T, 2T].</summary>
    static (string, Dictionary<string, double[]>) RunTorch(Shape[] shapes, int runs)
    {
        string script = FindScript();
        var list = JsonSerializer.Serialize(shapes.Where(s => s.BType == DType.F32).Select(s => new { name = s.Name, m = s.M, k = s.K, n = s.N, layout = s.Layout }));
        var results = new Dictionary<string, double[]>();
        string version = "";
        foreach (int threads in new[] { 1, 2 })
        {
            var psi = new ProcessStartInfo("/usr/bin/python3") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(script);
            psi.ArgumentList.Add(list);
            psi.ArgumentList.Add(runs.ToString(CultureInfo.InvariantCulture));
            psi.ArgumentList.Add(threads.ToString(CultureInfo.InvariantCulture));
            // OpenBLAS sizes its thread pool from the environment at load time; torch.set_num_threads does not reach it.
            foreach (var name in new[] { "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS" })
                psi.Environment[name] = threads.ToString(CultureInfo.InvariantCulture);
            using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start /usr/bin/python3");
            var stderr = p.StandardError.ReadToEndAsync();
            string stdout = p.StandardOutput.ReadToEnd();
            p.WaitForExit();
            if (p.ExitCode != 0) throw new InvalidOperationException($"{script} exited with {p.ExitCode}: {stderr.Result.Trim()}");
            using var doc = JsonDocument.Parse(stdout);
            foreach (var prop in doc.RootElement.GetProperty("results").EnumerateObject())
            {
                if (!results.TryGetValue(prop.Name, out var pair)) results[prop.Name] = pair = new double[2];
                pair[threads - 1] = prop.Value.GetDouble();
            }
            version = $"{doc.RootElement.GetProperty("torch").GetString()} with {doc.RootElement.GetProperty("blas").GetString()}";
        }
        return (version, results);
    }

    static string FindScript() => Path.Combine(BenchSupport.RepoRoot(), "bench", "gemm_torch.py");
}
