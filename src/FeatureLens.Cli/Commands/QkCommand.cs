using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using FeatureLens.Connections.Graphs;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>
/// featurelens qk: QK attribution in the local replacement model — one head's pre-softmax score for a (query, key)
/// position pair split into the contributions of the sources (transcoder features, error nodes, embeddings) on the query
/// side × the key side (<see cref="ReplacementModel.AttributeScore"/>). Reports each source's share of the score with the
/// other side whole (q_i·k/√d_head and q·k_j/√d_head, which with the bias terms sum to the score) and the largest pairs
/// q_i·k_j/√d_head among the strongest sources of each side.
/// </summary>
internal static class QkCommand
{
    public static Command Build()
    {
        var o = new GraphPromptOptions();
        var layer = new Option<int>("--layer") { Description = "The attention layer", Required = true };
        var head = new Option<int>("--head") { Description = "The head (query head under grouped-query attention)", Required = true };
        var qpos = new Option<int>("--query-pos") { Description = "The query position (negative counts from the end)", DefaultValueFactory = _ => -1 };
        var kpos = new Option<int>("--key-pos") { Description = "The key position (≤ the query position; negative counts from the end)", Required = true };
        var top = new Option<int>("--top") { Description = "Sources listed per side, and the side size for pairs", DefaultValueFactory = _ => 10 };
        var json = new Option<string?>("--json") { Description = "Write everything as JSON" };
        var cmd = new Command("qk", "QK attribution: one head's attention score for a query/key position pair split into source contributions on the query side × the key side, in the local replacement model")
        {
            layer, head, qpos, kpos, top, json,
        };
        o.AddTo(cmd);
        cmd.SetAction(r =>
        {
            int n = r.GetValue(top);
            if (n < 1) throw new ArgumentException($"--top must be positive (got {n})");
            using var m = o.LoadModel(r);
            int[] prompt = o.Prompt(r, m);
            int T = prompt.Length;
            int Pos(int p, string opt) => p < -T || p >= T ? throw new ArgumentException($"{opt} {p} is outside the prompt of {T} tokens") : p < 0 ? T + p : p;
            int q = Pos(r.GetValue(qpos), "--query-pos"), k = Pos(r.GetValue(kpos), "--key-pos");
            if (k > q) throw new ArgumentException($"--key-pos {k} is after --query-pos {q}: a causal head attends only to earlier positions");
            int L = r.GetValue(layer), H = r.GetValue(head);
            if (L < 0 || L >= m.Config.NLayers) throw new ArgumentException($"--layer {L}: the model has layers 0–{m.Config.NLayers - 1}");
            if (H < 0 || H >= m.Config.NHeads) throw new ArgumentException($"--head {H}: the model has heads 0–{m.Config.NHeads - 1}");
            var rm = ReplacementModel.Build(m, o.LoadTranscoders(r, m), prompt);
            var qk = rm.AttributeScore(L, H, q, k);
            var report = Summarise(qk, rm.Config.NLayers, n);
            Print(report, m.Tokenizer is { } tok ? i => tok.TokenText(prompt[i]) : i => prompt[i].ToString(CultureInfo.InvariantCulture));
            if (r.GetValue(json) is string path)
            {
                string tmp = path + ".tmp";
                File.WriteAllText(tmp, JsonSerializer.Serialize(report, JsonOptions));
                File.Move(tmp, path, overwrite: true);
            }
            return 0;
        });
        return cmd;
    }

    static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    internal sealed record SourceShare(string NodeId, int Pos, double Share);
    internal sealed record PairShare(string Query, string Key, double Value);
    internal sealed record QkReport(int Layer, int Head, int QueryPos, int KeyPos, double Score, double SumOfPairs,
        double QueryBiasShare, double KeyBiasShare, double BiasPair, List<SourceShare> Query, List<SourceShare> Key, List<PairShare> Pairs);

    /// <summary>Each source's share with the other side whole, the n strongest per side, and the pairs among them.</summary>
    internal static QkReport Summarise(QkAttribution qk, int nLayers, int n)
    {
        int S = qk.Sources.Count, HS = qk.QueryBias.Length;
        double scale = qk.ScoreScale > 0 ? qk.ScoreScale : 1 / Math.Sqrt(HS);
        double Dot(float[] a, int ia, float[] b) { double s = 0; for (int d = 0; d < HS; d++) s += (double)a[ia * HS + d] * b[d]; return s; }
        var qShare = Enumerable.Range(0, S).Select(i => Dot(qk.QueryContributions, i, qk.CleanKey) * scale).ToArray();
        var kShare = Enumerable.Range(0, S).Select(j => Dot(qk.KeyContributions, j, qk.CleanQuery) * scale).ToArray();
        var topQ = Enumerable.Range(0, S).OrderByDescending(i => Math.Abs(qShare[i])).Take(n).ToList();
        var topK = Enumerable.Range(0, S).OrderByDescending(j => Math.Abs(kShare[j])).Take(n).ToList();
        string Id(int s) => GraphJson.NodeId(qk.Sources[s], nLayers);
        var pairs = topQ.SelectMany(i => topK.Select(j => new PairShare(Id(i), Id(j), qk.Pair(i, j))))
            .OrderByDescending(p => Math.Abs(p.Value)).Take(n).ToList();
        return new QkReport(qk.Layer, qk.Head, qk.QueryPos, qk.KeyPos, qk.Score, qk.SumOfPairs(),
            Dot(qk.QueryBias, 0, qk.CleanKey) * scale, Dot(qk.KeyBias, 0, qk.CleanQuery) * scale, qk.Pair(-1, -1),
            [.. topQ.Select(i => new SourceShare(Id(i), qk.Sources[i].Pos, qShare[i]))],
            [.. topK.Select(j => new SourceShare(Id(j), qk.Sources[j].Pos, kShare[j]))], pairs);
    }

    static string Quote(string token) => "\"" + GraphJson.DisplayToken(token) + "\"";

    static void Print(QkReport r, Func<int, string> token)
    {
        AnsiConsole.MarkupLine(Markup.Escape(string.Create(CultureInfo.InvariantCulture,
            $"layer {r.Layer} head {r.Head}: query {r.QueryPos} {Quote(token(r.QueryPos))} → key {r.KeyPos} {Quote(token(r.KeyPos))}: score {r.Score:F4} (Σ of pairs {r.SumOfPairs:F4}); bias shares: query {r.QueryBiasShare:F4}, key {r.KeyBiasShare:F4}")));
        foreach (var (title, list) in new[] { ("query side: q_i·k/√d", r.Query), ("key side: q·k_j/√d", r.Key) })
        {
            var t = new Table().Border(TableBorder.Rounded).Title(title).AddColumns("source", "token", "share of the score");
            foreach (var s in list) t.AddRow(Markup.Escape(s.NodeId), Markup.Escape(Quote(token(s.Pos))), s.Share.ToString("F4", CultureInfo.InvariantCulture));
            AnsiConsole.Write(t);
        }
        var pt = new Table().Border(TableBorder.Rounded).Title("largest pairs q_i·k_j/√d").AddColumns("query source", "key source", "value");
        foreach (var p in r.Pairs) pt.AddRow(Markup.Escape(p.Query), Markup.Escape(p.Key), p.Value.ToString("F4", CultureInfo.InvariantCulture));
        AnsiConsole.Write(pt);
    }
}
