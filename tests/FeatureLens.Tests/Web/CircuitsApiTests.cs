using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Connections;

namespace FeatureLens.Tests.Web;

/// <summary>The Circuits view's API (/api/predictions, /api/attribute) over a real server, against the library called directly.</summary>
[Collection(TrackerServerCollection.Name)]
public sealed class CircuitsApiTests(TrackerServer server) : IDisposable
{
    readonly HttpClient http = new() { BaseAddress = new Uri(server.Url), Timeout = TimeSpan.FromSeconds(120) };
    string Seed => $"server seed {server.Seed}";

    public void Dispose() => http.Dispose();

    /// <summary>A clean prompt and a corrupt one of the same token length: one word swapped for another of as many tokens.</summary>
    internal static (string Clean, string Corrupt) Pair(TrackerServer server, Random rng)
    {
        string[] words = ["Once", "upon", "a", "time", "there", "was", "a", "little", "girl", "named", "Lily", "she", "liked", "to", "play", "with", "her", "dog", "in", "the", "park"];
        string[] swaps = ["Tom", "Lily", "Sue", "Ben", "cat", "dog", "ball", "tree", "sun", "boy", "girl", "mom", "box", "car"];
        var tok = server.Model.Tokenizer!;
        for (int attempt = 0; ; attempt++)
        {
            var clean = Enumerable.Range(0, 8 + rng.Next(8)).Select(_ => words[rng.Next(words.Length)]).ToList();
            string a = swaps[rng.Next(swaps.Length)], b = swaps[rng.Next(swaps.Length)];
            if (a == b) continue;
            int at = rng.Next(1, clean.Count);
            clean.Insert(at, a);
            var corrupt = clean.ToList();
            corrupt[at] = b;
            string c = string.Join(" ", clean) + " and", d = string.Join(" ", corrupt) + " and";
            if (tok.Encode(c, addBos: true).Length == tok.Encode(d, addBos: true).Length) return (c, d);
            Assert.True(attempt < 1000, "no prompt pair of equal token length found");
        }
    }

    async Task<(HttpStatusCode Status, JsonElement Body)> Post(string path, object body)
    {
        using var resp = await http.PostAsJsonAsync(path, body);
        string text = await resp.Content.ReadAsStringAsync();
        Assert.True(resp.Content.Headers.ContentType?.MediaType == "application/json", $"{path} answered {resp.StatusCode} with {resp.Content.Headers.ContentType}: {text}");
        return (resp.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    static void AssertError(HttpStatusCode expected, (HttpStatusCode Status, JsonElement Body) r, params string[] mentions)
    {
        Assert.True(r.Status == expected, $"expected {expected}, got {r.Status}: {r.Body}");
        string error = r.Body.GetProperty("error").GetString()!;
        foreach (string m in mentions) Assert.Contains(m, error, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain(" at FeatureLens", error);
        Assert.DoesNotContain("Exception", error);
    }

    /// <summary>The top next-token predictions of the clean prompt as the model computes them.</summary>
    int[] TopPredictions(string text, int n)
    {
        var ids = FeatureTracker.Encode(server.Set, text);
        var logits = server.Model.Forward(ids);
        int v = logits.Shape[^1];
        var last = logits.Data.AsSpan((ids.Length - 1) * v, v).ToArray();
        return Enumerable.Range(0, v).OrderByDescending(i => last[i]).ThenBy(i => i).Take(n).ToArray();
    }

    [Fact]
    public async Task PredictionsAreTheModelsTopNextTokens()
    {
        var rng = new Random(Random.Shared.Next());
        var (text, _) = Pair(server, rng);
        int top = 3 + rng.Next(10);
        var r = await Post("/api/predictions", new { set = TrackerServer.SetName, text, top });
        Assert.True(r.Status == HttpStatusCode.OK, $"{Seed}: {r.Body}");
        var ids = FeatureTracker.Encode(server.Set, text);
        Assert.Equal(FeatureTracker.TokenTexts(server.Set, ids), r.Body.GetProperty("tokens").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(ids.Length - 1, r.Body.GetProperty("position").GetInt32());
        var preds = r.Body.GetProperty("predictions").EnumerateArray().ToList();
        Assert.Equal(TopPredictions(text, top), preds.Select(p => p.GetProperty("id").GetInt32()));
        var probs = preds.Select(p => p.GetProperty("probability").GetDouble()).ToList();
        Assert.True(probs.Zip(probs.Skip(1)).All(p => p.First >= p.Second), $"{Seed}: probabilities not descending: {string.Join(",", probs)}");
        Assert.True(probs.Sum() is > 0 and <= 1 + 1e-9, $"{Seed}: probabilities sum to {probs.Sum()}");
        var tok = server.Model.Tokenizer!;
        Assert.All(preds, p => Assert.Equal(tok.Decode([p.GetProperty("id").GetInt32()]), p.GetProperty("token").GetString()));
        // the default is 10
        var d = await Post("/api/predictions", new { text });
        Assert.Equal(10, d.Body.GetProperty("predictions").GetArrayLength());
    }

    [Theory]
    [InlineData("gradient", false)]
    [InlineData("ig", true)]
    public async Task AttributeGivesTheLibrarysEffects(string method, bool zeroAblation)
    {
        var rng = new Random(Random.Shared.Next());
        var (clean, corrupt) = Pair(server, rng);
        var best = TopPredictions(clean, 2);
        string metric = $"logit-diff:{best[0]},{best[1]}";
        int top = 10 + rng.Next(40), steps = 3 + rng.Next(5);
        var r = await Post("/api/attribute", zeroAblation
            ? new { set = TrackerServer.SetName, clean, corrupt = (string?)null, ablation = (string?)"zero", metric, method, steps, top }
            : new { set = TrackerServer.SetName, clean, corrupt = (string?)corrupt, ablation = (string?)null, metric, method, steps, top });
        Assert.True(r.Status == HttpStatusCode.OK, $"{Seed}: {r.Body}");
        var b = r.Body;

        // the same attribution through the library
        var cleanIds = FeatureTracker.Encode(server.Set, clean);
        var ctx = new CircuitContext(server.Model, server.Set.Saes, [cleanIds], [Metric.Parse(metric)],
            zeroAblation ? null : [FeatureTracker.Encode(server.Set, corrupt)], zeroAblation ? AblationKind.Zero : AblationKind.Corrupt);
        var expected = Attribution.Run(ctx, new NodeSelection(), method == "ig" ? AttributionMethod.IntegratedGradients : AttributionMethod.Gradient, steps);

        Assert.Equal(expected.Metric, b.GetProperty("metric").GetProperty("name").GetString());
        Assert.Equal(expected.Clean, b.GetProperty("metric").GetProperty("clean").GetDouble(), 1e-9);
        if (zeroAblation) Assert.Equal(JsonValueKind.Null, b.GetProperty("metric").GetProperty("corrupt").ValueKind);
        else Assert.Equal(expected.Corrupt!.Value, b.GetProperty("metric").GetProperty("corrupt").GetDouble(), 1e-9);
        Assert.Equal(method, b.GetProperty("method").GetString());
        Assert.Equal(zeroAblation ? "zero" : "corrupt", b.GetProperty("ablation").GetString());
        Assert.Equal(FeatureTracker.TokenTexts(server.Set, cleanIds), b.GetProperty("tokens").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(expected.Nodes.Count, b.GetProperty("totalNodes").GetInt32());

        // the top nodes: the library's nodes with the same effects, sorted by |effect|, none left out that is larger
        static double Tol(double x) => 1e-6 + 1e-6 * Math.Abs(x);
        var byNode = expected.Nodes.ToDictionary(n => (n.Node.Hook, n.Node.KindName, n.Node.Index, n.Node.Pos));
        var nodes = b.GetProperty("nodes").EnumerateArray().ToList();
        Assert.Equal(Math.Min(top, expected.Nodes.Count), nodes.Count);
        var ranked = expected.Nodes.Select(n => Math.Abs(n.Effect)).OrderByDescending(x => x).ToList();
        for (int i = 0; i < nodes.Count; i++)
        {
            var n = nodes[i];
            string hook = n.GetProperty("hook").GetString()!, kind = n.GetProperty("kind").GetString()!;
            int? feature = n.GetProperty("feature").ValueKind == JsonValueKind.Null ? null : n.GetProperty("feature").GetInt32();
            int pos = n.GetProperty("pos").GetInt32();
            Assert.True(byNode.TryGetValue((hook, kind, feature, pos), out var want), $"{Seed}: node {kind} {hook}[{feature}]@{pos} is not in the library's result");
            double effect = n.GetProperty("effect").GetDouble();
            Assert.True(Math.Abs(effect - want.Effect) <= Tol(want.Effect), $"{Seed}: {want.Node}: effect {effect}, library {want.Effect}");
            Assert.True(Math.Abs(Math.Abs(effect) - ranked[i]) <= Tol(ranked[i]), $"{Seed}: rank {i}: |effect| {Math.Abs(effect)}, library's {i}-th largest {ranked[i]}");
            int sae = server.Set.IndexOf(hook);
            Assert.Equal(server.Set.Names[sae], n.GetProperty("sae").GetString());
            Assert.Equal(server.Set.Layers[sae], n.GetProperty("layer").GetInt32());
            Assert.Equal(FeatureTracker.TokenTexts(server.Set, cleanIds)[pos], n.GetProperty("token").GetString());
            if (kind == "feature")
            {
                Assert.Equal(want.Clean!.Value, n.GetProperty("clean").GetDouble(), 1e-6);
                Assert.Equal(want.Corrupt!.Value, n.GetProperty("corrupt").GetDouble(), 1e-6);
                Assert.Equal(server.Labels.Get(hook, feature!.Value)!.Label, n.GetProperty("label").GetProperty("label").GetString());
            }
            else
            {
                Assert.Equal("error", kind);
                Assert.Equal(JsonValueKind.Null, n.GetProperty("label").ValueKind);
            }
        }

        // the grid: every SAE × every clean position, Σ|effect| and Σ effect of all the library's nodes there
        var grid = b.GetProperty("grid");
        Assert.Equal(server.Set.Names, grid.GetProperty("rows").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(server.Set.Hooks, grid.GetProperty("hooks").EnumerateArray().Select(e => e.GetString()));
        var abs = grid.GetProperty("abs").EnumerateArray().Select(row => row.EnumerateArray().Select(e => e.GetDouble()).ToArray()).ToArray();
        var sum = grid.GetProperty("sum").EnumerateArray().Select(row => row.EnumerateArray().Select(e => e.GetDouble()).ToArray()).ToArray();
        Assert.Equal(server.Set.Hooks.Count, abs.Length);
        for (int s = 0; s < server.Set.Hooks.Count; s++)
        {
            Assert.Equal(cleanIds.Length, abs[s].Length);
            for (int p = 0; p < cleanIds.Length; p++)
            {
                var here = expected.Nodes.Where(n => n.Node.Hook == server.Set.Hooks[s] && n.Node.Pos == p).ToList();
                double wantAbs = here.Sum(n => Math.Abs(n.Effect)), wantSum = here.Sum(n => n.Effect);
                Assert.True(Math.Abs(abs[s][p] - wantAbs) <= Tol(wantAbs), $"{Seed}: grid |effect| {server.Set.Names[s]} pos {p}: {abs[s][p]}, library {wantAbs}");
                Assert.True(Math.Abs(sum[s][p] - wantSum) <= Tol(wantAbs), $"{Seed}: grid effect {server.Set.Names[s]} pos {p}: {sum[s][p]}, library {wantSum}");
            }
        }
        Assert.True(abs.Sum(row => row.Sum()) > 0, $"{Seed}: every effect is zero");
    }

    [Fact]
    public async Task BadAttributeRequestsAre400sNamingTheField()
    {
        var rng = new Random(Random.Shared.Next());
        var (clean, corrupt) = Pair(server, rng);
        const string metric = "logit-diff:5,7";
        // clean and corrupt of different token lengths
        string longer = corrupt + " the dog and the cat";
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt = longer, metric }), "clean", "corrupt", "same token length");
        // metrics
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt }), "metric is missing");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt, metric = "logit-diff:5" }), "metric", "two token ids");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt, metric = "entropy" }), "metric", "unknown kind");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt, metric = "logit:99999" }), "metric", "outside the vocabulary");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt, metric = "logit:5@400" }), "metric", "position");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt, metric = "feature:blocks.0.hook_mlp_out:3" }), "metric", "no SAE is spliced");
        // prompts and ablation
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean = " ", corrupt, metric }), "clean is empty");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, metric }), "corrupt is empty");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt, ablation = "zero", metric }), "corrupt", "choose one");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, ablation = "mean", metric }), "ablation 'mean'");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, ablation = "random", metric }), "ablation must be zero");
        // options
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { set = "no-such-set", clean, corrupt, metric }), "unknown set 'no-such-set'");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt, metric, method = "exact" }), "method must be gradient or ig");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt, metric, method = "ig", steps = 0 }), "steps must be between 1 and 64");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt, metric, steps = 65 }), "steps must be between 1 and 64");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt, metric, top = 0 }), "top must be between 1 and 500");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/attribute", new { clean, corrupt, metric, top = "many" }), "$.top");
        // predictions
        AssertError(HttpStatusCode.BadRequest, await Post("/api/predictions", new { text = "" }), "text", "empty");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/predictions", new { text = clean, top = 0 }), "top must be between 1 and 50");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/predictions", new { set = "nope", text = clean }), "unknown set 'nope'");
    }

    [Fact]
    public async Task OversizePromptsAre413NamingTheField()
    {
        string longText = string.Concat(Enumerable.Repeat("Once upon a time there was a dog. ", 100))[..(TrackerServer.MaxTextChars + 1)];
        var (clean, corrupt) = Pair(server, new Random(Random.Shared.Next()));
        AssertError(HttpStatusCode.RequestEntityTooLarge, await Post("/api/attribute", new { clean = longText, corrupt, metric = "logit:5" }), "clean:", $"the limit is {TrackerServer.MaxTextChars}");
        AssertError(HttpStatusCode.RequestEntityTooLarge, await Post("/api/attribute", new { clean, corrupt = longText, metric = "logit:5" }), "corrupt:", $"the limit is {TrackerServer.MaxTextChars}");
        AssertError(HttpStatusCode.RequestEntityTooLarge, await Post("/api/predictions", new { text = longText }), "text:", "the limit is");
        AssertError(HttpStatusCode.RequestEntityTooLarge, await Post("/api/attribute", new { clean, corrupt, metric = "logit:5", padding = new string('x', 40_000) }), "larger than the server accepts");
    }
}
