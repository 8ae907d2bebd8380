using System.Diagnostics;
using System.Net.Http.Json;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Runtime.Tokenizers;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Web;
using Spectre.Console;

namespace FeatureLens.Bench;

/// <summary>
/// The feature activation tracker as a client sees it: POST /api/track latency against the real server on
/// loopback on a warm server, for (a) stories260K with its 5 SAEs on a 64-token prompt (the suite's SAEs when
/// suites/stories260K exists, else 5 random TopK SAEs of the same shape), and (b) a GPT-2-small-shaped
/// synthetic model with 12 random TopK residual SAEs of 24576 latents on a 128-token prompt (the stories
/// tokenizer encodes the text; its ids are valid GPT-2 ids). Then (c) corpus correlation tokens/s over
/// 100k tokens of the shared corpora with the stories SAEs. Options: --runs N (timed requests, default 30).
/// </summary>
public static class TrackerBench
{
    public static int Run(string[] args)
    {
        int runs = 30;
        string only = "all";
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--runs" when i + 1 < args.Length: runs = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture); break;
                case "--only" when i + 1 < args.Length && args[i + 1] is "stories" or "gpt2": only = args[++i]; break;
                default:
                    Console.Error.WriteLine($"tracker bench: unknown option '{args[i]}' (expected --runs N, --only stories|gpt2)");
                    return 2;
            }
        }
        string shared = Path.Combine(BenchSupport.RepoRoot(), "..", "shared");
        string storiesPath = Path.Combine(shared, "models", "stories260K", "stories260K.bin");
        var rows = new List<(string Case, double Median, double P90, double Target, string Note)>();

        // (a) stories260K
        if (only != "gpt2")
            using (var m = HookedTransformer.Load(storiesPath))
            {
                string suite = Path.Combine(BenchSupport.RepoRoot(), "suites", "stories260K", "saes");
                var saes = Directory.Exists(suite) ? SaeLoader.LoadAll(suite).ToList()
                    : Enumerable.Range(0, m.Config.NLayers).Select(l => RandomTopK(new Random(l), 64, 1024, 16, $"blocks.{l}.hook_resid_post")).ToList();
                string note = Directory.Exists(suite) ? "the suite's 5 trained TopK SAEs (1024 latents, k 16)" : "5 random TopK SAEs (1024 latents, k 16); suites/stories260K not built";
                string text = PromptOf(m.Tokenizer!, File.ReadAllText(Path.Combine(shared, "corpora", "tinyshakespeare.txt"))[..4000], 64);
                var (med, p90) = Latency(new SaeSet(m, saes), text, runs);
                rows.Add(("stories260K, 5 SAEs, 64 tokens", med, p90, 0.015, note));

                // (c) corpus correlation over the shared corpora
                var docs = Corpus.Documents(Path.Combine(shared, "corpora", "tinyshakespeare.txt")).Concat(Corpus.Documents(Path.Combine(shared, "corpora", "wikitext-2-raw-test.txt")));
                var windows = Corpus.Windows(docs, m.Tokenizer!, 128, prependBos: true, maxTokens: 100_000).ToList();
                long tokens = windows.Sum(w => (long)w.Length);
                var sw = Stopwatch.StartNew();
                var net = FeatureCorrelation.Corpus(new SaeSet(m, saes), windows, new CorrelationOptions { Threshold = 0.5 });
                double secs = sw.Elapsed.TotalSeconds;
                AnsiConsole.MarkupLine($"corpus correlation ({note}): {tokens:N0} tokens of the shared corpora in {secs:F2} s = [bold]{tokens / secs:N0} tokens/s[/]; {net.Nodes.Count} nodes, {net.Edges.Count} edges at |r| ≥ 0.5");
            }

        // (b) GPT-2-small shape, 12 SAEs of 24576 latents
        if (only != "stories") LatencyGpt2(shared, storiesPath, runs, rows);
        Table(rows);
        return 0;
    }

    static void LatencyGpt2(string shared, string storiesPath, int runs, List<(string Case, double Median, double P90, double Target, string Note)> rows)
    {
        string folder = Path.Combine(BenchSupport.ModelsDir(), "gpt2-small-f32");
        if (!File.Exists(Path.Combine(folder, "config.json")))
        {
            AnsiConsole.MarkupLine($"[grey]writing {folder} (synth-model gpt2-small f32)[/]");
            SyntheticModel.Write(folder, Architecture.Gpt2, "gpt2-small", DType.F32, 1);
        }
        using (var plain = HookedTransformer.Load(folder))
        {
            var g = new HookedTransformer(plain.Config, plain.Weights, TokenizerLoader.Load(Path.Combine(Path.GetDirectoryName(storiesPath)!, "tok512.bin"), 512));
            var saes = Enumerable.Range(0, g.Config.NLayers).Select(l => RandomTopK(new Random(100 + l), g.Config.DModel, 24576, 32, $"blocks.{l}.hook_resid_post")).ToList();
            string text = PromptOf(g.Tokenizer!, File.ReadAllText(Path.Combine(shared, "corpora", "wikitext-2-raw-test.txt"))[..8000], 128);
            var (med, p90) = Latency(new SaeSet(g, saes), text, Math.Max(5, runs / 3));
            rows.Add(("GPT-2-small shape, 12 SAEs × 24576, 128 tokens", med, p90, 0.5, "synthetic weights, random TopK SAEs (k 32); ~90 GFLOP"));
        }
    }

    static void Table(List<(string Case, double Median, double P90, double Target, string Note)> rows)
    {

        var t = new Table().Border(TableBorder.Rounded).AddColumns("case", "median", "p90", "target", "", "SAEs");
        foreach (var r in rows)
        {
            BenchSummary.Record("tracker", $"{r.Case}: median latency", $"{r.Median * 1000:F1} ms", "", null, $"≤ {r.Target * 1000:F0} ms", r.Median <= r.Target);
            t.AddRow(r.Case, $"{r.Median * 1000:F1} ms", $"{r.P90 * 1000:F1} ms", $"≤ {r.Target * 1000:F0} ms", r.Median <= r.Target ? "[green]met[/]" : "[red]missed[/]", Markup.Escape(r.Note));
        }
        t.Title = new TableTitle("POST /api/track latency from an HTTP client on loopback");
        AnsiConsole.Write(t);
    }

    /// <summary>
    /// Median and 90th percentile seconds of POST /api/track on a warm server: requests are first sent for at least
    /// 3 s (and 5 requests), so that the JIT's tiered recompilation has settled, as on a server in use.
    /// </summary>
    static (double Median, double P90) Latency(SaeSet set, string text, int runs)
    {
        var app = TrackerApp.Build(new TrackerAppOptions { Sets = [new TrackerSet { Name = "bench", Set = set }], Urls = ["http://127.0.0.1:0"] });
        app.StartAsync().GetAwaiter().GetResult();
        try
        {
            using var http = new HttpClient { BaseAddress = new Uri(app.Urls.First()) };
            var body = new { set = "bench", text, top = 10, threshold = 0.5 };
            var warm = Stopwatch.StartNew();
            for (int i = 0; i < 5 || warm.Elapsed.TotalSeconds < 3; i++) Post(http, body);
            var times = new List<double>();
            for (int i = 0; i < runs; i++)
            {
                var sw = Stopwatch.StartNew();
                Post(http, body);
                times.Add(sw.Elapsed.TotalSeconds);
            }
            times.Sort();
            return (BenchSupport.Median(times), times[(int)Math.Min(times.Count - 1, Math.Ceiling(0.9 * times.Count) - 1)]);
        }
        finally
        {
            app.StopAsync().GetAwaiter().GetResult();
        }
    }

    static void Post(HttpClient http, object body)
    {
        using var resp = http.PostAsJsonAsync("/api/track", body).GetAwaiter().GetResult();
        string content = resp.Content.ReadAsStringAsync().GetAwaiter().GetResult();
        if (!resp.IsSuccessStatusCode) throw new InvalidOperationException($"/api/track answered {(int)resp.StatusCode}: {content}");
    }

    /// <summary>Text that encodes to about <paramref name="tokens"/> tokens (BOS included).</summary>
    static string PromptOf(ITokenizer tok, string source, int tokens)
    {
        var ids = tok.Encode(source, addBos: false);
        return tok.Decode(ids.AsSpan(0, Math.Min(ids.Length, tokens - 1)));
    }

    static Sae RandomTopK(Random rng, int dIn, int dSae, int k, string hook)
    {
        float G() => (float)(Math.Sqrt(-2 * Math.Log(1 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        var wEnc = new float[(long)dIn * dSae]; for (long i = 0; i < wEnc.Length; i++) wEnc[i] = G() / MathF.Sqrt(dIn);
        var wDec = new float[(long)dSae * dIn]; for (long i = 0; i < wDec.Length; i++) wDec[i] = G() / MathF.Sqrt(dIn);
        var cfg = new SaeConfig { Architecture = SaeArchitecture.TopK, DIn = dIn, DSae = dSae, DOut = dIn, K = k, Metadata = new SaeMetadata { HookName = hook } };
        return new Sae(cfg, wEnc, new float[dSae], wDec, new float[dIn]);
    }
}
