using System.Globalization;
using System.Text.Json;
using FeatureLens.Runtime.Kernels;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// The machine header every `bench/run.sh` run prints first (CPU, family, AVX-512 width as reported and as measured,
/// the FMA peak) and the summary table it prints last: each benchmark records its headline ratios into the file named by
/// FL_BENCH_SUMMARY (one JSON object per line), and `summary` prints them all.
/// </summary>
public static class BenchSummary
{
    const string FileVariable = "FL_BENCH_SUMMARY";

    /// <summary>One headline figure: ours, the peer's, their ratio (higher is better for us), the target and whether it is met.</summary>
    public static void Record(string bench, string what, string ours, string peer, double? ratio, string target = "", bool? met = null)
    {
        string? file = Environment.GetEnvironmentVariable(FileVariable);
        if (string.IsNullOrEmpty(file)) return;
        var line = JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["bench"] = bench, ["what"] = what, ["ours"] = ours, ["peer"] = peer,
            ["ratio"] = ratio is double r && double.IsFinite(r) ? Math.Round(r, 3) : null, ["target"] = target, ["met"] = met,
        });
        File.AppendAllText(file, line + "\n");
    }

    /// <summary>`machine`: the CPU as CPUID reports it, the AVX-512 width measured (512-bit vs 256-bit FMA rate) and the FMA peak.</summary>
    public static int Machine()
    {
        var cpu = CpuInfo.Current;
        AnsiConsole.MarkupLineInterpolated($"[bold]CPU[/]: {BenchSupport.CpuName()}; {cpu}");
        double peak1 = PeakFlops.Measure(1), peak2 = PeakFlops.Measure(Math.Min(2, Environment.ProcessorCount));
        string width = "no AVX-512";
        if (cpu.Avx512)
        {
            double ymm = PeakFlops.Measure256(1);
            width = peak1 / ymm < 1.3 ? $"512-bit FMAs at the 256-bit rate ({peak1:F0} vs {ymm:F0} GFLOP/s on one core): double-pumped" : $"512-bit FMAs at {peak1 / ymm:F1}× the 256-bit rate: full width";
        }
        AnsiConsole.MarkupLineInterpolated($"[bold]AVX-512 measured[/]: {width}");
        AnsiConsole.MarkupLineInterpolated($"[bold]FMA peak measured[/]: {peak1:F0} GFLOP/s on 1 thread, {peak2:F0} GFLOP/s on {Math.Min(2, Environment.ProcessorCount)} threads");
        Record("machine", "FMA peak, 1 / 2 threads (GFLOP/s)", $"{peak1:F0} / {peak2:F0}", "", null);
        return 0;
    }

    /// <summary>`summary`: every recorded figure as one table, with the CPU again.</summary>
    public static int Print()
    {
        string? file = Environment.GetEnvironmentVariable(FileVariable);
        if (string.IsNullOrEmpty(file) || !File.Exists(file)) { AnsiConsole.MarkupLine("[grey]no benchmark figures recorded[/]"); return 0; }
        var table = new Table().Border(TableBorder.Rounded).Title($"Summary — {Markup.Escape(BenchSupport.CpuName())}, {Markup.Escape(CpuInfo.Current.Avx512Width)}")
            .AddColumns("bench", "measurement", "ours", "peer", "ours ÷ peer", "target", "met");
        foreach (var line in File.ReadLines(file))
        {
            if (line.Trim().Length == 0) continue;
            var j = JsonDocument.Parse(line).RootElement;
            string S(string name) => j.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : "";
            string ratio = j.GetProperty("ratio").ValueKind == JsonValueKind.Number ? j.GetProperty("ratio").GetDouble().ToString("F2", CultureInfo.InvariantCulture) + "×" : "";
            var met = j.GetProperty("met");
            string metText = met.ValueKind == JsonValueKind.True ? "[green]yes[/]" : met.ValueKind == JsonValueKind.False ? "[red]no[/]" : "";
            table.AddRow(Markup.Escape(S("bench")), Markup.Escape(S("what")), Markup.Escape(S("ours")), Markup.Escape(S("peer")), ratio, Markup.Escape(S("target")), metText);
        }
        AnsiConsole.Write(table);
        return 0;
    }
}
