using System.Net;
using System.Text.Json;
using FeatureLens.Connections;
using FeatureLens.Tests.Analysis;
using FeatureLens.Web;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Web;

/// <summary>
/// GET /api/databases/connections over the feature database server (its tracker set holds the model and two of the database's
/// three SAEs): the answer is <see cref="FeatureConnections.Compute"/>'s, serialized as the app does, computed once and then
/// served from memory; a feature of the SAE the server did not load, or a server with no model, is a 409 whose message says
/// to start serve with --model and the SAE folders; bad parameters are 400/404.
/// </summary>
[Collection(FeatureDbServerCollection.Name)]
public sealed class FeatureConnectionsApiTests(FeatureDbServer server, ITestOutputHelper output) : IDisposable
{
    readonly HttpClient http = new() { BaseAddress = new Uri(server.Url), Timeout = TimeSpan.FromSeconds(120) };

    public void Dispose() => http.Dispose();

    static async Task<(HttpStatusCode Status, string Body)> Get(HttpClient client, string path)
    {
        using var resp = await client.GetAsync(new Uri(path, UriKind.Relative));
        return (resp.StatusCode, await resp.Content.ReadAsStringAsync());
    }

    static string Error(string body)
    {
        using var doc = JsonDocument.Parse(body);
        return doc.RootElement.GetProperty("error").GetString()!;
    }

    [Fact]
    public async Task ConnectionsAreTheLibrarysAnswerComputedOnce()
    {
        var rng = new Random(Random.Shared.Next());
        var store = server.Store;
        var loaded = server.Saes.Take(2).ToList();   // the fixture's tracker set
        var sources = FeatureConnections.Match(store, AnalysisTestData.Model, loaded);
        foreach (var sae in store.Saes.Where(s => loaded.Any(l => l.Config.Metadata.HookName == s.Hook)))
        {
            var firing = Enumerable.Range(0, sae.DSae).Where(f => store.Dashboard(sae, f).Top.Length > 0).ToList();
            int f = firing[rng.Next(firing.Count)];
            int n = rng.Next(1, 4);
            string path = $"/api/databases/connections?db={FeatureDbServer.DbName}&sae={Uri.EscapeDataString(sae.Hook)}&feature={f}&examples={n}";
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var (status, body) = await Get(http, path);
            var first = sw.Elapsed;
            Assert.True(status == HttpStatusCode.OK, $"server seed {server.Seed}: {path}: {body}");
            var expected = FeatureConnections.Compute(store, sae, f, sources, n, 10);
            Assert.Equal(JsonSerializer.Serialize(expected, TrackerApp.Json), body);
            Assert.Equal(["blocks.1.attn.hook_z"], expected.MissingSaes);
            // the second answer comes from memory: the same bytes
            sw.Restart();
            var (status2, body2) = await Get(http, path);
            Assert.Equal(HttpStatusCode.OK, status2);
            Assert.Equal(body, body2);
            output.WriteLine($"server seed {server.Seed}: {sae.Hook} {f}, {n} examples: {first.TotalMilliseconds:F0} ms, then {sw.Elapsed.TotalMilliseconds:F0} ms from memory; " +
                $"{expected.Upstream.Length} upstream, {expected.Downstream.Length} downstream");
        }
    }

    [Fact]
    public async Task WithoutTheModelOrItsSaesTheAnswerSaysHowToStartServe()
    {
        // the SAE the server's set lacks
        var hz = server.Store.Sae("blocks.1.attn.hook_z");
        var (status, body) = await Get(http, $"/api/databases/connections?sae={Uri.EscapeDataString(hz.Hook)}&feature=0");
        Assert.Equal(HttpStatusCode.Conflict, status);
        Assert.Contains("start serve with --model and the SAE folders to see connections", Error(body), StringComparison.Ordinal);
        Assert.Contains("lacks the SAE at blocks.1.attn.hook_z", Error(body), StringComparison.Ordinal);

        // a server with the database only
        await using var app = TrackerApp.Build(new TrackerAppOptions { Databases = [server.DbPath], Urls = ["http://127.0.0.1:0"] });
        await app.StartAsync();
        using var client = new HttpClient { BaseAddress = new Uri(app.Urls.Single()) };
        (status, body) = await Get(client, $"/api/databases/connections?sae={Uri.EscapeDataString(server.Store.Saes[0].Hook)}&feature=1");
        Assert.Equal(HttpStatusCode.Conflict, status);
        Assert.Contains("this server has no model loaded", Error(body), StringComparison.Ordinal);
    }

    [Fact]
    public async Task BadRequestsAreClearErrors()
    {
        string hook = Uri.EscapeDataString(server.Store.Saes[0].Hook);
        var cases = new (string Query, HttpStatusCode Status, string Message)[]
        {
            ($"sae={hook}", HttpStatusCode.BadRequest, "feature is missing"),
            ($"sae={hook}&feature=64", HttpStatusCode.BadRequest, "feature 64 is outside [0, 64)"),
            ($"sae={hook}&feature=-1", HttpStatusCode.BadRequest, "feature -1 is outside [0, 64)"),
            ($"sae={hook}&feature=x", HttpStatusCode.BadRequest, "feature 'x' is not an integer"),
            ($"sae={hook}&feature=1&examples=0", HttpStatusCode.BadRequest, "examples must be between 1 and"),
            ($"sae={hook}&feature=1&top=1000", HttpStatusCode.BadRequest, "top must be between 1 and"),
            ("sae=blocks.9.hook_resid_post&feature=1", HttpStatusCode.NotFound, "no SAE 'blocks.9.hook_resid_post'"),
            ($"db=nope&sae={hook}&feature=1", HttpStatusCode.NotFound, "unknown feature database 'nope'"),
        };
        foreach (var (query, expected, message) in cases)
        {
            var (status, body) = await Get(http, "/api/databases/connections?" + query);
            Assert.True(status == expected, $"{query}: {status} {body}");
            Assert.Contains(message, Error(body), StringComparison.Ordinal);
        }
    }
}
