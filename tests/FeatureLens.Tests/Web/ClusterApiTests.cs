using System.Net;
using System.Text.Json;
using FeatureLens.Clustering;
using FeatureLens.Web;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Web;

/// <summary>
/// The cluster view's API over a real server: GET /api/clusters lists the files the library wrote, GET /api/clusters/ID is
/// each file's bytes, unknown ids are 404s naming what is served, and a bad clusters file stops the app at startup with
/// a message naming the file and the field.
/// </summary>
[Collection(ClusterServerCollection.Name)]
public sealed class ClusterApiTests(ClusterServer server, ITestOutputHelper output) : IDisposable
{
    readonly HttpClient http = new() { BaseAddress = new Uri(server.Url), Timeout = TimeSpan.FromSeconds(60) };
    readonly TempDir dir = new();

    public void Dispose() { http.Dispose(); dir.Dispose(); }

    async Task<(HttpStatusCode Status, string Body)> Get(string path)
    {
        using var resp = await http.GetAsync(new Uri(path, UriKind.Relative));
        return (resp.StatusCode, await resp.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task ServedFilesAreTheFilesContent()
    {
        var (status, body) = await Get("/api/clusters");
        Assert.True(status == HttpStatusCode.OK, body);
        using var list = JsonDocument.Parse(body);
        var files = list.RootElement.GetProperty("files").EnumerateArray().ToList();
        Assert.Equal(["hier", "louv"], files.Select(f => f.GetProperty("id").GetString()));
        foreach (var (f, path) in files.Zip(new[] { server.Hierarchical, server.Louvain }))
        {
            var data = ClusterFile.Read(path);
            Assert.Equal(Path.GetFullPath(path), f.GetProperty("path").GetString());
            Assert.Equal(data.Features.Count, f.GetProperty("features").GetInt32());
            Assert.Equal(data.ClusterNames.Count, f.GetProperty("clusters").GetInt32());
            Assert.Equal(data.Transcoders, f.GetProperty("transcoders").EnumerateArray().Select(x => x.GetString()!));
            (status, body) = await Get($"/api/clusters/{f.GetProperty("id").GetString()}");
            Assert.Equal(HttpStatusCode.OK, status);
            Assert.Equal(File.ReadAllText(path), body);
        }
        (status, body) = await Get("/api/clusters/nope");
        Assert.Equal(HttpStatusCode.NotFound, status);
        Assert.Contains("unknown clusters file 'nope'; served: hier, louv", body, StringComparison.Ordinal);
        output.WriteLine($"server seed {server.Seed}: {files.Count} files served as written");
    }

    [Fact]
    public void BadClustersFileStopsTheAppWithAClearError()
    {
        string good = File.ReadAllText(server.Hierarchical);
        var root = System.Text.Json.Nodes.JsonNode.Parse(good)!.AsObject();
        int n = root["features"]!.AsArray().Count;
        var cases = new (string Name, Func<string> Text, string Message)[]
        {
            ("notjson", () => "{ nope", "not valid JSON"),
            ("schema", () => Edit(o => o["schema"] = "other"), "'schema' is not \"featurelens.clusters\""),
            ("nofeatures", () => Edit(o => o.Remove("features")), "'features' must be an array"),
            ("heat", () => Edit(o => o["heatmap"]!["features"]!.AsArray()[0] = n + 3), "'heatmap.features' must be feature indices in [0, " + n + ")"),
            ("cos", () => Edit(o => o["heatmap"]!["cosine"]!.AsArray().RemoveAt(0)), "'heatmap.cosine' must be a"),
            ("dendro", () => Edit(o => o["dendrogram"]!.AsArray()[0] = new System.Text.Json.Nodes.JsonArray(0, n + 5, 0.1, 2)), "'dendrogram[0]' must be a linkage row"),
            ("members", () => Edit(o => o["clusters"]!.AsArray()[0]!.AsObject().Remove("members")), "'clusters[0].members' must be an array"),
        };
        string Edit(Action<System.Text.Json.Nodes.JsonObject> edit)
        {
            var o = System.Text.Json.Nodes.JsonNode.Parse(good)!.AsObject();
            edit(o);
            return o.ToJsonString();
        }
        foreach (var (name, text, message) in cases)
        {
            string path = dir.File(name + ".json");
            File.WriteAllText(path, text());
            var e = Assert.ThrowsAny<Exception>(() => TrackerApp.Build(new TrackerAppOptions { Clusters = [path], Urls = ["http://127.0.0.1:0"] }));
            Assert.True(e is InvalidDataException or ArgumentException, $"{name}: {e.GetType().Name}: {e.Message}");
            Assert.Contains(path, e.Message, StringComparison.Ordinal);
            Assert.Contains(message, e.Message, StringComparison.Ordinal);
        }
        var dup = Assert.Throws<ArgumentException>(() => TrackerApp.Build(new TrackerAppOptions { Clusters = [server.Hierarchical, CopyTo(dir.File("sub"), server.Hierarchical)], Urls = ["http://127.0.0.1:0"] }));
        Assert.Contains("two clusters files are named 'hier'", dup.Message, StringComparison.Ordinal);
        Assert.Throws<FileNotFoundException>(() => TrackerApp.Build(new TrackerAppOptions { Clusters = [dir.File("missing.json")], Urls = ["http://127.0.0.1:0"] }));
    }

    static string CopyTo(string folder, string file)
    {
        Directory.CreateDirectory(folder);
        string to = Path.Combine(folder, Path.GetFileName(file));
        File.Copy(file, to, overwrite: true);
        return to;
    }
}
