using System.Globalization;
using System.Text;
using System.Text.Json;

namespace FeatureLens.Connections;

/// <summary>How well attribution agrees with exact patching on its largest nodes (<c>--check-exact N</c>).</summary>
public sealed record ExactCheck(int Nodes, double Pearson, double MaxAbsDifference, Node WorstNode, double WorstAttributed, double WorstExact);

/// <summary>
/// The JSON and CSV of node effects (the contract of CONNECTIONS.md): <c>{"metric": {"name", "clean", "corrupt"}, "method",
/// "steps", "nodes": [{"id", "hook", "kind", "feature", "pos", "clean", "corrupt", "effect"}]}</c>, plus <c>"check"</c> when
/// attribution was checked against exact patching and <c>"edges"</c> [{"source", "target", "weight"}] (node ids) when edges were asked for. Files are written to a temporary name and moved into place.
/// </summary>
public static class EffectsJson
{
    public static string MethodName(AttributionMethod m) => m switch
    {
        AttributionMethod.Gradient => "gradient",
        AttributionMethod.IntegratedGradients => "ig",
        _ => "exact",
    };

    public static void Write(string path, EffectsResult r, ExactCheck? check = null, IReadOnlyList<Edge>? edges = null)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartObject("metric");
            w.WriteString("name", r.Metric);
            w.WriteNumber("clean", r.Clean);
            if (r.Corrupt is double c) w.WriteNumber("corrupt", c); else w.WriteNull("corrupt");
            w.WriteEndObject();
            w.WriteString("method", MethodName(r.Method));
            if (r.Steps is int s) w.WriteNumber("steps", s); else w.WriteNull("steps");
            if (check != null)
            {
                w.WriteStartObject("check");
                w.WriteNumber("nodes", check.Nodes);
                w.WriteNumber("pearson", double.IsFinite(check.Pearson) ? check.Pearson : 0);
                w.WriteNumber("max_abs_difference", check.MaxAbsDifference);
                w.WriteString("worst_node", check.WorstNode.ToString());
                w.WriteNumber("worst_attributed", check.WorstAttributed);
                w.WriteNumber("worst_exact", check.WorstExact);
                w.WriteEndObject();
            }
            w.WriteStartArray("nodes");
            foreach (var n in r.Nodes)
            {
                w.WriteStartObject();
                w.WriteString("id", n.Node.ToString());
                w.WriteString("hook", n.Node.Hook);
                w.WriteString("kind", n.Node.KindName);
                if (n.Node.Index is int i) w.WriteNumber("feature", i); else w.WriteNull("feature");
                w.WriteNumber("pos", n.Node.Pos);
                if (n.Clean is double cl) w.WriteNumber("clean", cl); else w.WriteNull("clean");
                if (n.Corrupt is double co) w.WriteNumber("corrupt", co); else w.WriteNull("corrupt");
                w.WriteNumber("effect", n.Effect);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            if (edges != null)
            {
                w.WriteStartArray("edges");
                foreach (var e in edges)
                {
                    w.WriteStartObject();
                    w.WriteString("source", e.Source.ToString());
                    w.WriteString("target", e.Target.ToString());
                    w.WriteNumber("weight", e.Weight);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            }
            w.WriteEndObject();
        }
        WriteAtomic(path, ms.ToArray());
    }

    /// <summary>One row per node: hook,kind,feature,pos,clean,corrupt,effect (empty cells for nulls).</summary>
    public static void WriteCsv(string path, EffectsResult r)
    {
        var sb = new StringBuilder("hook,kind,feature,pos,clean,corrupt,effect\n");
        static string F(double? v) => v is double d ? d.ToString("R", CultureInfo.InvariantCulture) : "";
        foreach (var n in r.Nodes)
            sb.Append(CultureInfo.InvariantCulture, $"{n.Node.Hook},{n.Node.KindName},{(n.Node.Index is int i ? i.ToString(CultureInfo.InvariantCulture) : "")},{n.Node.Pos},{F(n.Clean)},{F(n.Corrupt)},{F(n.Effect)}\n");
        WriteAtomic(path, Encoding.UTF8.GetBytes(sb.ToString()));
    }

    public static EffectsResult Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such attribution file");
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
            var root = doc.RootElement;
            var metric = root.GetProperty("metric");
            var nodes = new List<NodeEffect>();
            int k = 0;
            foreach (var e in root.GetProperty("nodes").EnumerateArray())
            {
                string kind = e.GetProperty("kind").GetString() ?? "";
                if (!Enum.TryParse<NodeKind>(kind, ignoreCase: true, out var nk))
                    throw new InvalidDataException($"{path}: nodes[{k}].kind '{kind}' is not feature, error, resid, attn or mlp");
                int? index = e.TryGetProperty("feature", out var f) && f.ValueKind == JsonValueKind.Number ? f.GetInt32() : null;
                var node = new Node(nk, e.GetProperty("hook").GetString() ?? throw new InvalidDataException($"{path}: nodes[{k}].hook is null"), e.GetProperty("pos").GetInt32(), index);
                nodes.Add(new NodeEffect(node, e.GetProperty("effect").GetDouble(), Num(e, "clean"), Num(e, "corrupt")));
                k++;
            }
            string method = root.GetProperty("method").GetString() ?? "";
            return new EffectsResult
            {
                Metric = metric.GetProperty("name").GetString() ?? "", Clean = metric.GetProperty("clean").GetDouble(), Corrupt = Num(metric, "corrupt"),
                Method = method switch
                {
                    "gradient" => AttributionMethod.Gradient,
                    "ig" => AttributionMethod.IntegratedGradients,
                    "exact" => AttributionMethod.Exact,
                    _ => throw new InvalidDataException($"{path}: method '{method}' is not gradient, ig or exact")
                },
                Steps = Num(root, "steps") is double st ? (int)st : null, Nodes = nodes,
            };
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new InvalidDataException($"{path}: not an attribute/patch JSON file ({e.Message})");
        }
    }

    static double? Num(JsonElement e, string name) => e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : null;

    internal static void WriteAtomic(string path, byte[] bytes)
    {
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"{path}: the folder {dir} does not exist");
        string tmp = Path.Combine(dir, $".{Path.GetFileName(full)}.{Environment.ProcessId}.tmp");
        File.WriteAllBytes(tmp, bytes);
        File.Move(tmp, full, overwrite: true);
    }
}

/// <summary>Checks attribution against exact patching on its largest nodes.</summary>
public static class ExactChecks
{
    public static ExactCheck Run(CircuitContext ctx, EffectsResult attributed, int n, Action<int, int>? progress = null)
    {
        if (n <= 0) throw new ArgumentException($"--check-exact must be positive (got {n})");
        var top = attributed.Nodes.OrderByDescending(x => Math.Abs(x.Effect)).Take(n).ToList();
        var exact = Patching.Run(ctx, top.Select(t => t.Node).ToList(), progress).Nodes.ToDictionary(x => x.Node, x => x.Effect);
        double[] xs = top.Select(t => t.Effect).ToArray(), ys = top.Select(t => exact[t.Node]).ToArray();
        int worst = 0;
        for (int i = 1; i < xs.Length; i++) if (Math.Abs(xs[i] - ys[i]) > Math.Abs(xs[worst] - ys[worst])) worst = i;
        return new ExactCheck(top.Count, Pearson(xs, ys), Math.Abs(xs[worst] - ys[worst]), top[worst].Node, xs[worst], ys[worst]);
    }

    static double Pearson(double[] x, double[] y)
    {
        int n = x.Length;
        if (n < 2) return double.NaN;
        double mx = x.Average(), my = y.Average(), sxy = 0, sxx = 0, syy = 0;
        for (int i = 0; i < n; i++) { sxy += (x[i] - mx) * (y[i] - my); sxx += (x[i] - mx) * (x[i] - mx); syy += (y[i] - my) * (y[i] - my); }
        return sxy / Math.Sqrt(sxx * syy);
    }
}
