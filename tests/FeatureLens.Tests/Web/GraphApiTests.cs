using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using FeatureLens.Connections.Graphs;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Web;

/// <summary>
/// The Graph page's API (/api/graphs…) over a real server with random transcoders on stories260K: compute, list, load,
/// re-pruning against <see cref="GraphPruning.Prune"/> called directly on the library's graph, qParams saved and read back
/// with <see cref="GraphJson.Read"/>, and bad input.
/// </summary>
[Collection(GraphServerCollection.Name)]
public sealed class GraphApiTests(GraphServer server, ITestOutputHelper output) : IDisposable
{
    readonly HttpClient http = new() { BaseAddress = new Uri(server.Url), Timeout = TimeSpan.FromSeconds(120) };
    string Seed => $"server seed {server.Seed}";

    public void Dispose() => http.Dispose();

    async Task<(HttpStatusCode Status, JsonElement Body)> Send(HttpMethod method, string path, object? body = null)
    {
        using var req = new HttpRequestMessage(method, path);
        if (body != null) req.Content = JsonContent.Create(body);
        using var resp = await http.SendAsync(req);
        string text = await resp.Content.ReadAsStringAsync();
        using var doc = JsonDocument.Parse(text);
        return (resp.StatusCode, doc.RootElement.Clone());
    }

    static string Inv(double x) => x.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>The kept node ids and links (source, target, weight) of a pruning, as GraphJson names them.</summary>
    static (HashSet<string> Nodes, HashSet<(string, string, float)> Links) Expected(AttributionGraph g, PruneResult p)
    {
        var ids = g.Nodes.Select(n => GraphJson.NodeId(n, g.NLayers)).ToArray();
        var nodes = Enumerable.Range(0, ids.Length).Where(i => p.NodeKept[i]).Select(i => ids[i]).ToHashSet(StringComparer.Ordinal);
        var links = new HashSet<(string, string, float)>();
        for (int r = 0; r < g.Rows.Count; r++)
        {
            int t = g.RowNode(r);
            if (!p.NodeKept[t]) continue;
            foreach (int s in p.KeptSources![r])
                if (p.NodeKept[s]) links.Add((ids[s], ids[t], g.Rows.Get(r, s)));
        }
        return (nodes, links);
    }

    static (HashSet<string> Nodes, HashSet<(string, string, float)> Links) Got(JsonElement view) => (
        view.GetProperty("nodes").EnumerateArray().Select(n => n.GetProperty("nodeId").GetString()!).ToHashSet(StringComparer.Ordinal),
        view.GetProperty("links").EnumerateArray().Select(l => (l.GetProperty("source").GetString()!, l.GetProperty("target").GetString()!,
            (float)l.GetProperty("weight").GetDouble())).ToHashSet());

    void AssertSame((HashSet<string> Nodes, HashSet<(string, string, float)> Links) expected, (HashSet<string> Nodes, HashSet<(string, string, float)> Links) got, string what)
    {
        Assert.True(expected.Nodes.SetEquals(got.Nodes), $"{Seed}, {what}: nodes differ: expected {expected.Nodes.Count}, got {got.Nodes.Count}; " +
            $"missing {string.Join(",", expected.Nodes.Except(got.Nodes).Take(5))}, extra {string.Join(",", got.Nodes.Except(expected.Nodes).Take(5))}");
        Assert.True(expected.Links.SetEquals(got.Links), $"{Seed}, {what}: links differ: expected {expected.Links.Count}, got {got.Links.Count}");
    }

    [Fact]
    public async Task ComputeListsTheGraphAndRepruningIsExactlyGraphPruning()
    {
        var rng = new Random(Random.Shared.Next());
        string[] prompts = ["Lily saw a cat in the garden. She said", "Once upon a time, Tom had a red ball. He gave it to", "The sun was hot and the dog was"];
        string prompt = prompts[rng.Next(prompts.Length)];
        int maxFeatures = rng.Next(15, 50);
        double nt = Math.Round(0.5 + 0.4 * rng.NextDouble(), 3), et = Math.Round(0.85 + 0.14 * rng.NextDouble(), 3);
        output.WriteLine($"{Seed}: \"{prompt}\" maxFeatureNodes {maxFeatures}, thresholds {nt} / {et}");

        var (status, view) = await Send(HttpMethod.Post, "/api/graphs", new { set = GraphServer.SetName, prompt, maxFeatureNodes = maxFeatures, nodeThreshold = nt, edgeThreshold = et });
        Assert.True(status == HttpStatusCode.OK, $"{Seed}: {view}");
        string id = view.GetProperty("id").GetString()!;
        Assert.True(view.GetProperty("full").GetBoolean());
        Assert.Equal(GraphServer.SetName, view.GetProperty("set").GetString());

        // the library on the same input: the graph, pruned at the request's thresholds and at fresh ones
        var reference = GraphRun.Compute(server.Model, server.Transcoders, server.Encode(prompt), new GraphRunOptions { MaxFeatureNodes = maxFeatures, NodeThreshold = nt, EdgeThreshold = et }, server.Labels);
        Assert.Equal(reference.Graph.Nodes.Count, view.GetProperty("heldNodes").GetInt32());
        AssertSame(Expected(reference.Graph, reference.Pruned), Got(view), "computed");
        // labels arrive as clerps
        // (random thresholds can prune every feature away; the node sets were compared above, so then there is nothing to check)
        foreach (var feature in view.GetProperty("nodes").EnumerateArray().Where(n => n.GetProperty("featureType").GetString() == "cross layer transcoder").Take(1))
        {
            int layer = int.Parse(feature.GetProperty("layer").GetString()!, CultureInfo.InvariantCulture);
            Assert.Equal(server.Labels.Get(reference.Replacement.Transcoders[layer].Config.Metadata.HookName, feature.GetProperty("latent").GetInt32())!.Label,
                feature.GetProperty("clerp").GetString());
        }

        // saved in the folder, listed, and readable as a graph file
        var file = GraphJson.Read(Path.Combine(server.Folder, id + ".json"));
        Assert.Equal(prompt, file.Metadata.Prompt);
        var (ls, list) = await Send(HttpMethod.Get, "/api/graphs");
        Assert.Equal(HttpStatusCode.OK, ls);
        var listed = list.GetProperty("graphs").EnumerateArray().Single(g => g.GetProperty("id").GetString() == id);
        Assert.Equal(file.Nodes.Count, listed.GetProperty("nodes").GetInt32());
        Assert.True(listed.GetProperty("cached").GetBoolean());
        Assert.Contains(list.GetProperty("graphs").EnumerateArray(), g => g.GetProperty("id").GetString() == GraphServer.UnprunedId);

        // the progress route answers (nothing running now)
        var (ps, progress) = await Send(HttpMethod.Get, $"/api/graphs/progress?set={GraphServer.SetName}");
        Assert.Equal(HttpStatusCode.OK, ps);
        Assert.False(progress.GetProperty("running").GetBoolean());

        for (int k = 0; k < 3; k++)
        {
            double nt2 = Math.Round(rng.NextDouble(), 3), et2 = Math.Round(0.5 + 0.5 * rng.NextDouble(), 3);
            var (s2, v2) = await Send(HttpMethod.Get, $"/api/graphs/{id}?nodeThreshold={Inv(nt2)}&edgeThreshold={Inv(et2)}");
            Assert.True(s2 == HttpStatusCode.OK, $"{Seed}: {v2}");
            AssertSame(Expected(reference.Graph, GraphPruning.Prune(reference.Graph, nt2, et2)), Got(v2), $"re-pruned at {nt2} / {et2}");
        }
    }

    [Fact]
    public async Task AnUnprunedFileReprunesExactlyAndAPrunedOneOnlyGetsSparser()
    {
        var rng = new Random(Random.Shared.Next());
        double nt = Math.Round(0.3 + 0.6 * rng.NextDouble(), 3), et = Math.Round(0.8 + 0.19 * rng.NextDouble(), 3);
        output.WriteLine($"{Seed}: thresholds {nt} / {et}");
        var (s, v) = await Send(HttpMethod.Get, $"/api/graphs/{GraphServer.UnprunedId}?nodeThreshold={Inv(nt)}&edgeThreshold={Inv(et)}");
        Assert.True(s == HttpStatusCode.OK, $"{Seed}: {v}");
        Assert.True(v.GetProperty("full").GetBoolean());
        AssertSame(Expected(server.SavedGraph, GraphPruning.Prune(server.SavedGraph, nt, et)), Got(v), "unpruned file re-pruned");

        // a pruned file: by default everything it holds; lower thresholds give a subset
        var held = GraphJson.Read(Path.Combine(server.Folder, GraphServer.PrunedId + ".json"));
        var (s1, all) = await Send(HttpMethod.Get, $"/api/graphs/{GraphServer.PrunedId}");
        Assert.True(s1 == HttpStatusCode.OK, $"{Seed}: {all}");
        Assert.False(all.GetProperty("full").GetBoolean());
        Assert.Equal(GraphPruning.DefaultNodeThreshold, all.GetProperty("fileNodeThreshold").GetDouble());
        Assert.True(held.Nodes.Select(n => n.NodeId).ToHashSet().SetEquals(Got(all).Nodes), $"{Seed}: a pruned file at thresholds 1 shows every node it holds");
        Assert.Equal(held.Links.Count, all.GetProperty("links").GetArrayLength());
        var (s2, sparse) = await Send(HttpMethod.Get, $"/api/graphs/{GraphServer.PrunedId}?nodeThreshold={Inv(nt)}&edgeThreshold={Inv(et)}");
        Assert.True(s2 == HttpStatusCode.OK, $"{Seed}: {sparse}");
        var got = Got(sparse);
        Assert.True(got.Nodes.IsSubsetOf(Got(all).Nodes) && got.Nodes.Count < Got(all).Nodes.Count, $"{Seed}: re-pruning a pruned file must give fewer of its nodes");
    }

    [Fact]
    public async Task PinsAndSupernodesAreSavedIntoTheFilesQParams()
    {
        var rng = new Random(Random.Shared.Next());
        // a copy of the unpruned file, so the other tests' file stays as it is
        string id = $"qparams-{rng.Next():x}";
        File.Copy(Path.Combine(server.Folder, GraphServer.UnprunedId + ".json"), Path.Combine(server.Folder, id + ".json"));
        var before = GraphJson.Read(Path.Combine(server.Folder, id + ".json"));
        var ids = before.Nodes.Select(n => n.NodeId).OrderBy(_ => rng.Next()).ToList();
        string[] pinned = [.. ids.Take(rng.Next(1, 4))];
        string[][] supernodes = [["say a name", .. ids.Skip(4).Take(2)], ["dog ✓ \"quoted\"", .. ids.Skip(6).Take(rng.Next(2, 5))]];
        output.WriteLine($"{Seed}: pins {string.Join(",", pinned)}");

        var (s, q) = await Send(HttpMethod.Post, $"/api/graphs/{id}/qparams", new { pinnedIds = pinned, supernodes });
        Assert.True(s == HttpStatusCode.OK, $"{Seed}: {q}");
        var after = GraphJson.Read(Path.Combine(server.Folder, id + ".json"));
        Assert.Equal(pinned, after.QParams.PinnedIds);
        Assert.Equal(supernodes.Length, after.QParams.Supernodes.Count);
        for (int i = 0; i < supernodes.Length; i++) Assert.Equal(supernodes[i], after.QParams.Supernodes[i]);
        // everything else of the file is as it was
        Assert.Equal(before.Metadata.Prompt, after.Metadata.Prompt);
        Assert.Equal(before.Nodes, after.Nodes);
        Assert.Equal(before.Links, after.Links);
        Assert.Empty(Directory.GetFiles(server.Folder, "*.tmp"));
        // and the page gets them back when it loads the graph
        var (s2, v) = await Send(HttpMethod.Get, $"/api/graphs/{id}");
        Assert.Equal(HttpStatusCode.OK, s2);
        Assert.Equal(pinned, v.GetProperty("qParams").GetProperty("pinnedIds").EnumerateArray().Select(x => x.GetString()!).ToArray());
        Assert.Equal(supernodes[1], v.GetProperty("qParams").GetProperty("supernodes")[1].EnumerateArray().Select(x => x.GetString()!).ToArray());

        // a bad request leaves the file untouched
        var (s3, e3) = await Send(HttpMethod.Post, $"/api/graphs/{id}/qparams", new { pinnedIds = new[] { "99_1_1" }, supernodes = Array.Empty<string[]>() });
        Assert.Equal(HttpStatusCode.BadRequest, s3);
        Assert.Contains("pinnedIds[0] '99_1_1' is not a node", e3.GetProperty("error").GetString());
        Assert.Equal(pinned, GraphJson.Read(Path.Combine(server.Folder, id + ".json")).QParams.PinnedIds);
    }

    [Fact]
    public async Task BadInputGetsClearMessages()
    {
        async Task Expect(HttpMethod m, string path, object? body, HttpStatusCode code, string fragment)
        {
            var (s, e) = await Send(m, path, body);
            Assert.True(s == code, $"{m} {path}: expected {code}, got {s}: {e}");
            string msg = e.GetProperty("error").GetString()!;
            Assert.True(msg.Contains(fragment, StringComparison.Ordinal), $"{m} {path}: '{msg}' should mention '{fragment}'");
        }
        string id = GraphServer.UnprunedId;
        await Expect(HttpMethod.Get, $"/api/graphs/{id}?nodeThreshold=1.5", null, HttpStatusCode.BadRequest, "nodeThreshold must be between 0 and 1 (got 1.5)");
        await Expect(HttpMethod.Get, $"/api/graphs/{id}?edgeThreshold=-0.1", null, HttpStatusCode.BadRequest, "edgeThreshold must be between 0 and 1");
        await Expect(HttpMethod.Get, $"/api/graphs/{id}?nodeThreshold=lots", null, HttpStatusCode.BadRequest, "nodeThreshold 'lots' is not a number");
        await Expect(HttpMethod.Get, "/api/graphs/no-such-graph", null, HttpStatusCode.NotFound, "unknown graph 'no-such-graph'");
        await Expect(HttpMethod.Get, "/api/graphs/..%2Fsecret", null, HttpStatusCode.BadRequest, "is not a graph id");
        await Expect(HttpMethod.Post, "/api/graphs", new { set = GraphServer.SetName, prompt = new string('a', GraphServer.MaxTextChars + 1) }, HttpStatusCode.RequestEntityTooLarge, "prompt: the text is");
        await Expect(HttpMethod.Post, "/api/graphs", new { set = GraphServer.SetName, prompt = "  " }, HttpStatusCode.BadRequest, "prompt: the text is empty");
        await Expect(HttpMethod.Post, "/api/graphs", new { set = GraphServer.PlainSet, prompt = "Hi" }, HttpStatusCode.BadRequest, "set 'plain' has no transcoders");
        await Expect(HttpMethod.Post, "/api/graphs", new { set = "nope", prompt = "Hi" }, HttpStatusCode.BadRequest, "unknown set 'nope'");
        await Expect(HttpMethod.Post, "/api/graphs", new { set = GraphServer.SetName, prompt = "Hi", maxFeatureNodes = 0 }, HttpStatusCode.BadRequest, "maxFeatureNodes must be between 1 and");
        await Expect(HttpMethod.Post, "/api/graphs", new { set = GraphServer.SetName, prompt = "Hi", nodeThreshold = 2 }, HttpStatusCode.BadRequest, "nodeThreshold must be between 0 and 1");
        await Expect(HttpMethod.Post, $"/api/graphs/{id}/qparams", new { supernodes = new[] { new[] { "lonely", "E_1_0" } } }, HttpStatusCode.BadRequest, "at least two nodes");
        await Expect(HttpMethod.Post, $"/api/graphs/{id}/qparams", new { supernodes = new[] { new[] { "x", "E_1_0", "nope" } } }, HttpStatusCode.BadRequest, "supernodes[0][2] 'nope' is not a node");

        // an unreadable file is listed with its error and refused with a message naming it
        File.WriteAllText(Path.Combine(server.Folder, "broken.json"), "{\"metadata\": 3}");
        var (_, list) = await Send(HttpMethod.Get, "/api/graphs");
        var broken = list.GetProperty("graphs").EnumerateArray().Single(g => g.GetProperty("id").GetString() == "broken");
        Assert.Contains("metadata", broken.GetProperty("error").GetString());
        await Expect(HttpMethod.Get, "/api/graphs/broken", null, HttpStatusCode.BadRequest, "graph 'broken' cannot be read");
        File.Delete(Path.Combine(server.Folder, "broken.json"));
    }
}
