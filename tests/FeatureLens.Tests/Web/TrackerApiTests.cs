using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Tests.Saes;
using FeatureLens.Web;

namespace FeatureLens.Tests.Web;

/// <summary>The tracker's JSON API over a real server on a loopback port.</summary>
[Collection(TrackerServerCollection.Name)]
public sealed class TrackerApiTests(TrackerServer server) : IDisposable
{
    readonly HttpClient http = new() { BaseAddress = new Uri(server.Url), Timeout = TimeSpan.FromSeconds(60) };
    string Seed => $"seed {server.Seed}";

    public void Dispose() => http.Dispose();

    static string Prompt(Random rng)
    {
        string[] words = ["Once", "upon", "a", "time", "there", "was", "a", "little", "girl", "named", "Lily", "she", "liked", "to", "play", "with", "her", "dog", "in", "the", "park", "sun"];
        return string.Join(" ", Enumerable.Range(0, 12 + rng.Next(10)).Select(_ => words[rng.Next(words.Length)])) + ".";
    }

    async Task<(HttpStatusCode Status, JsonElement Body)> Post(string path, object body)
    {
        using var resp = await http.PostAsJsonAsync(path, body);
        string text = await resp.Content.ReadAsStringAsync();
        Assert.True(resp.Content.Headers.ContentType?.MediaType == "application/json", $"{path} answered {resp.StatusCode} with {resp.Content.Headers.ContentType}: {text}");
        return (resp.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    static void AssertError(HttpStatusCode expected, (HttpStatusCode Status, JsonElement Body) r, string mentions)
    {
        Assert.True(r.Status == expected, $"expected {expected}, got {r.Status}: {r.Body}");
        string error = r.Body.GetProperty("error").GetString()!;
        Assert.Contains(mentions, error, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain(" at FeatureLens", error);   // no stack traces
        Assert.DoesNotContain("Exception", error);
    }

    [Fact]
    public async Task SetsListsTheModelItsSaesAndTheLimits()
    {
        var body = JsonDocument.Parse(await http.GetStringAsync("/api/sets")).RootElement;
        var set = body.GetProperty("sets").EnumerateArray().Single();
        Assert.Equal(TrackerServer.SetName, set.GetProperty("name").GetString());
        Assert.Equal(5, set.GetProperty("layers").GetInt32());
        Assert.Equal(5 * 256, set.GetProperty("labels").GetInt32());
        var saes = set.GetProperty("saes").EnumerateArray().ToList();
        Assert.Equal(Enumerable.Range(0, 5).Select(l => $"blocks.{l}.hook_resid_post"), saes.Select(s => s.GetProperty("hook").GetString()));
        Assert.All(saes, s => { Assert.Equal(256, s.GetProperty("dSae").GetInt32()); Assert.Equal(8, s.GetProperty("k").GetInt32()); });
        var limits = body.GetProperty("limits");
        Assert.Equal(TrackerServer.MaxTextChars, limits.GetProperty("maxTextChars").GetInt32());
        Assert.Equal(5, limits.GetProperty("topMin").GetInt32());
        Assert.Equal(20, limits.GetProperty("topMax").GetInt32());
    }

    [Fact]
    public async Task TrackReturnsTheLibraryResultAsCamelCaseJson()
    {
        var rng = new Random(Random.Shared.Next());
        string text = Prompt(rng);
        int top = 5 + rng.Next(16);
        double threshold = Math.Round(0.1 + 0.8 * rng.NextDouble(), 2);
        var r = await Post("/api/track", new { set = TrackerServer.SetName, text, top, rankBy = "max", threshold });
        Assert.True(r.Status == HttpStatusCode.OK, $"{Seed}: {r.Body}");

        // the same call through the library gives the same result
        var expected = FeatureTracker.Track(server.Set, text, new TrackOptions { TopN = top, CorrelationThreshold = threshold }, server.Labels);
        var b = r.Body;
        Assert.Equal(text, b.GetProperty("text").GetString());
        Assert.Equal(expected.TokenIds, b.GetProperty("tokenIds").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(expected.Tokens, b.GetProperty("tokens").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal("Max", b.GetProperty("options").GetProperty("rankBy").GetString());
        var layers = b.GetProperty("layers").EnumerateArray().ToList();
        Assert.Equal(5, layers.Count);
        for (int l = 0; l < 5; l++)
        {
            var got = layers[l];
            Assert.Equal(expected.Layers[l].Name, got.GetProperty("name").GetString());
            var features = got.GetProperty("top").EnumerateArray().ToList();
            Assert.True(features.Count == expected.Layers[l].Top.Count && features.Count == top, $"{Seed}: layer {l} has {features.Count} top features, expected {top}");
            for (int i = 0; i < features.Count; i++)
            {
                var want = expected.Layers[l].Top[i];
                Assert.Equal(want.Feature, features[i].GetProperty("feature").GetInt32());
                Assert.Equal(want.Score, features[i].GetProperty("score").GetDouble(), 1e-9);
                Assert.Equal(want.PerToken, features[i].GetProperty("perToken").EnumerateArray().Select(e => e.GetSingle()));
                Assert.Equal(want.Label!.Label, features[i].GetProperty("label").GetProperty("label").GetString());
                Assert.Equal(want.Label.F1!.Value, features[i].GetProperty("label").GetProperty("f1").GetDouble(), 1e-12);
            }
        }
        var heat = b.GetProperty("heatmap");
        Assert.Equal(expected.Heatmap.Rows, heat.GetProperty("rows").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(expected.Heatmap.Columns.Count, heat.GetProperty("columns").GetArrayLength());
        var net = b.GetProperty("network");
        Assert.Equal(threshold, net.GetProperty("threshold").GetDouble());
        Assert.Equal(expected.Network.Nodes.Count, net.GetProperty("nodes").GetArrayLength());
        Assert.Equal(expected.Network.Edges.Count, net.GetProperty("edges").GetArrayLength());
        Assert.All(net.GetProperty("edges").EnumerateArray(), e => Assert.True(Math.Abs(e.GetProperty("r").GetDouble()) >= threshold - 1e-9, $"{Seed}: {e}"));
    }

    [Fact]
    public async Task FeatureReturnsPerTokenActivationsLabelAndEvolution()
    {
        var rng = new Random(Random.Shared.Next());
        string text = Prompt(rng);
        int sae = rng.Next(5), feature = rng.Next(256);
        string name = server.Set.Names[sae];
        var post = await Post("/api/feature", new { set = TrackerServer.SetName, sae = name, feature, text });
        Assert.True(post.Status == HttpStatusCode.OK, $"{Seed}: {post.Body}");
        var expected = FeatureEvolution.Analyze(server.Set, sae, feature, text, labels: server.Labels);
        var b = post.Body;
        Assert.Equal($"{name}:{feature}", b.GetProperty("id").GetString());
        Assert.Equal(server.Set.Hooks[sae], b.GetProperty("hook").GetString());
        Assert.Equal(server.Labels.Get(server.Set.Hooks[sae], feature)!.Label, b.GetProperty("label").GetProperty("label").GetString());
        var self = expected.Chain.Single(c => c.SaeIndex == sae);
        Assert.Equal(self.PerToken, b.GetProperty("perToken").EnumerateArray().Select(e => e.GetSingle()));
        var chain = b.GetProperty("evolution").GetProperty("chain").EnumerateArray().ToList();
        Assert.Equal(expected.Chain.Select(c => (c.SaeIndex, c.Feature)), chain.Select(c => (c.GetProperty("saeIndex").GetInt32(), c.GetProperty("feature").GetInt32())));
        Assert.Equal(4, b.GetProperty("evolution").GetProperty("matches").GetArrayLength());

        // GET with a query string gives the same answer, and the hook name works as the SAE's name
        string q = $"/api/feature?set={TrackerServer.SetName}&sae={Uri.EscapeDataString(server.Set.Hooks[sae])}&feature={feature}&text={Uri.EscapeDataString(text)}";
        var get = JsonDocument.Parse(await http.GetStringAsync(q)).RootElement;
        Assert.Equal(b.GetProperty("perToken").ToString(), get.GetProperty("perToken").ToString());
    }

    [Fact]
    public async Task BadInputIsA400WithAMessage()
    {
        var rng = new Random(Random.Shared.Next());
        string text = Prompt(rng);
        AssertError(HttpStatusCode.BadRequest, await Post("/api/track", new { set = TrackerServer.SetName, text = "" }), "empty");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/track", new { set = TrackerServer.SetName, text = "   " }), "empty");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/track", new { set = "no-such-set", text }), "unknown set 'no-such-set'");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/track", new { text, top = 21 }), "top must be between 5 and 20");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/track", new { text, top = 4 }), "top must be between 5 and 20");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/track", new { text, threshold = 0.95 }), "threshold must be between");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/track", new { text, rankBy = "median" }), "rankBy must be");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/track", new { text, rankBy = "atToken" }), "tokenIndex");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/track", new { text, top = "many" }), "$.top");
        int feature = 256 + rng.Next(1000);
        AssertError(HttpStatusCode.BadRequest, await Post("/api/feature", new { sae = "L1 resid_post", feature, text }), $"has no feature {feature}");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/feature", new { sae = "L1 resid_post", feature = -1, text }), "has no feature -1");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/feature", new { sae = "L7 resid_post", feature = 3, text }), "unknown SAE 'L7 resid_post'");
        AssertError(HttpStatusCode.BadRequest, await Post("/api/feature", new { sae = "L1 resid_post", text }), "feature is missing");

        using var broken = await http.PostAsync("/api/track", new StringContent("{\"text\": ", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, broken.StatusCode);
        Assert.Contains("not the JSON", JsonDocument.Parse(await broken.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetString());
        using var notFound = await http.GetAsync("/api/nothing-here");
        Assert.Equal(HttpStatusCode.NotFound, notFound.StatusCode);
        Assert.Contains("/api/nothing-here", JsonDocument.Parse(await notFound.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetString());
    }

    [Fact]
    public async Task OversizeTextAndBodiesAre413()
    {
        var rng = new Random(Random.Shared.Next());
        string longText = string.Concat(Enumerable.Range(0, 400).Select(_ => Prompt(rng) + " "));
        Assert.True(longText.Length > TrackerServer.MaxTextChars);
        AssertError(HttpStatusCode.RequestEntityTooLarge, await Post("/api/track", new { text = longText[..(TrackerServer.MaxTextChars + 1)] }), $"the limit is {TrackerServer.MaxTextChars}");
        AssertError(HttpStatusCode.RequestEntityTooLarge, await Post("/api/feature", new { sae = "L0 resid_post", feature = 1, text = longText[..(TrackerServer.MaxTextChars + 1)] }), "characters");
        // within the character limit but more tokens than the model's context (512): each digit is a token
        string digits = string.Concat(Enumerable.Range(0, 1000).Select(_ => (char)('0' + rng.Next(10)) + " "))[..TrackerServer.MaxTextChars];
        AssertError(HttpStatusCode.RequestEntityTooLarge, await Post("/api/track", new { text = digits }), "at most 512");
        // a body over MaxRequestBytes is refused before it is parsed
        var big = await Post("/api/track", new { text = longText, padding = new string('x', 40_000) });
        AssertError(HttpStatusCode.RequestEntityTooLarge, big, "larger than the server accepts");
    }

    [Fact]
    public async Task ConcurrentRequestsAllSucceed()
    {
        var rng = new Random(Random.Shared.Next());
        var prompts = Enumerable.Range(0, 8).Select(_ => Prompt(rng)).ToList();
        var results = await Task.WhenAll(prompts.Select(p => Post("/api/track", new { text = p, top = 5 })));
        for (int i = 0; i < prompts.Count; i++)
        {
            Assert.True(results[i].Status == HttpStatusCode.OK, results[i].Body.ToString());
            Assert.Equal(prompts[i], results[i].Body.GetProperty("text").GetString());
        }
    }

    [Fact]
    public async Task PageAndBrowserBundlesAreServedLocally()
    {
        string html = await http.GetStringAsync("/");
        Assert.Contains("<link rel=\"icon\" href=\"data:,\">", html);
        Assert.DoesNotContain("http://", html.Replace("http://www.w3.org", ""));
        Assert.DoesNotContain("https://", html);
        foreach (string path in new[] { "/app.js", "/app.css", "/lib/plotly.min.js", "/lib/cytoscape.min.js" })
        {
            using var resp = await http.GetAsync(path);
            Assert.True(resp.StatusCode == HttpStatusCode.OK, $"{path}: {resp.StatusCode}");
        }
        using var page = await http.GetAsync("/");
        Assert.Contains("default-src 'self'", page.Headers.GetValues("Content-Security-Policy").Single());
    }

    [Fact]
    public void TheDefaultAddressIsLoopback()
    {
        var options = new TrackerAppOptions { Sets = [] };
        Assert.Equal(["http://127.0.0.1:8600"], options.Urls);
        Assert.StartsWith("http://127.0.0.1:", server.Url);
    }

    /// <summary>featurelens serve loads the SAEs from disk (--sae, and a --config file with a second set and its labels), prints its loopback URL, answers, and stops on Ctrl-C (SIGINT).</summary>
    [Fact]
    public async Task ServeCommandListensOnLoopbackAndStopsOnCtrlC()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var dir = new TempDir();
        for (int l = 0; l < 3; l++)
            SaeWriter.Save(SaeTestData.Random(rng, SaeArchitecture.TopK, 64, 128, $"blocks.{l}.hook_resid_post", k: 4), Path.Combine(dir.Path, "saes", $"blocks.{l}.hook_resid_post"));
        // a config naming a second set (two of the SAEs, relative paths) with a labels CSV
        int labelled = rng.Next(128);
        File.WriteAllText(dir.File("labels.csv"), $"layer,feature,label,f1,specialization\n0,{labelled},dogs and cats,0.8,0.6\n");
        File.WriteAllText(dir.File("serve.json"), JsonSerializer.Serialize(new
        {
            sets = new[] { new { name = "two", model = TrackerServer.ModelPath, sae = new[] { "saes/blocks.0.hook_resid_post", "saes/blocks.2.hook_resid_post" }, labels = "labels.csv" } },
        }));
        var psi = FeatureLens.Tests.Cli.CliTests.StartInfo("serve", "--model", TrackerServer.ModelPath, "--sae", Path.Combine(dir.Path, "saes"), "--config", dir.File("serve.json"), "--port", "0");
        using var p = new Process { StartInfo = psi };
        var url = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var output = new StringBuilder();
        p.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (output) output.AppendLine(e.Data);
            var m = System.Text.RegularExpressions.Regex.Match(e.Data, @"listening on (http://\S+)");
            if (m.Success) url.TrySetResult(m.Groups[1].Value);
        };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        p.Start(); p.BeginOutputReadLine(); p.BeginErrorReadLine();
        try
        {
            var done = await Task.WhenAny(url.Task, Task.Delay(60_000));
            Assert.True(done == url.Task, $"seed {seed}: serve printed no URL: {output}");
            string address = await url.Task;
            Assert.StartsWith("http://127.0.0.1:", address);
            using var client = new HttpClient { BaseAddress = new Uri(address) };
            var sets = JsonDocument.Parse(await client.GetStringAsync("/api/sets")).RootElement.GetProperty("sets");
            Assert.Equal("stories260K", sets[0].GetProperty("name").GetString());
            Assert.Equal(3, sets[0].GetProperty("saes").GetArrayLength());
            Assert.Equal("two", sets[1].GetProperty("name").GetString());
            Assert.Equal(["L0 resid_post", "L2 resid_post"], sets[1].GetProperty("saes").EnumerateArray().Select(e => e.GetProperty("name").GetString()));
            Assert.Equal(1, sets[1].GetProperty("labels").GetInt32());
            using (var f = await client.PostAsJsonAsync("/api/feature", new { set = "two", sae = "L0 resid_post", feature = labelled, text = "The dog and the cat." }))
            {
                string body = await f.Content.ReadAsStringAsync();
                Assert.True(f.IsSuccessStatusCode, body);
                var label = JsonDocument.Parse(body).RootElement.GetProperty("label");
                Assert.Equal("dogs and cats", label.GetProperty("label").GetString());
                Assert.Equal(0.8, label.GetProperty("f1").GetDouble(), 9);
            }
            using var resp = await client.PostAsJsonAsync("/api/track", new { text = "Lily saw a big dog.", top = 5 });
            Assert.True(resp.IsSuccessStatusCode, await resp.Content.ReadAsStringAsync());
            using (var kill = Process.Start("kill", ["-INT", p.Id.ToString(CultureInfo.InvariantCulture)])!) kill.WaitForExit();
            Assert.True(p.WaitForExit(30_000), $"serve did not stop on SIGINT: {output}");
            p.WaitForExit();
            Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}: {output}");
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
        }
    }
}
