using System.Net;
using System.Text.Json;
using FeatureLens.Database;
using FeatureLens.Web;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Web;

/// <summary>
/// The feature pages' API (/api/databases…) over a real server on a loopback port: every answer is byte-for-byte
/// FeatureStore's (or NeuronpediaExport's) answer serialized the way the app serializes, and bad requests are clear
/// errors with status codes that say what went wrong.
/// </summary>
[Collection(FeatureDbServerCollection.Name)]
public sealed class FeatureApiTests(FeatureDbServer server, ITestOutputHelper output) : IDisposable
{
    readonly HttpClient http = new() { BaseAddress = new Uri(server.Url), Timeout = TimeSpan.FromSeconds(60) };
    string Seed => $"server seed {server.Seed}";

    public void Dispose() => http.Dispose();

    async Task<(HttpStatusCode Status, string Body, HttpResponseMessage Response)> Get(string path)
    {
        var resp = await http.GetAsync(new Uri(path, UriKind.Relative));
        return (resp.StatusCode, await resp.Content.ReadAsStringAsync(), resp);
    }

    static string Json<T>(T x) => JsonSerializer.Serialize(x, TrackerApp.Json);

    [Fact]
    public async Task DatabasesPagesDashboardsAndExportsAreTheStoresAnswers()
    {
        var rng = new Random(Random.Shared.Next());
        var (status, body, _) = await Get("/api/databases");
        Assert.Equal(HttpStatusCode.OK, status);
        using (var doc = JsonDocument.Parse(body))
        {
            var db = doc.RootElement.GetProperty("databases").EnumerateArray().Single();
            Assert.Equal(FeatureDbServer.DbName, db.GetProperty("name").GetString());
            Assert.Equal(server.Store.Tokens, db.GetProperty("tokens_scanned").GetInt64());
            Assert.Equal(server.Store.Saes.Select(s => (s.Hook, s.DSae)), db.GetProperty("saes").EnumerateArray().Select(s => (s.GetProperty("hook").GetString()!, s.GetProperty("d_sae").GetInt32())));
            Assert.Equal(server.Store.Saes.Select(s => server.Saes.Single(x => x.Config.Metadata.HookName == s.Hook).Config.Architecture.ToString()), db.GetProperty("saes").EnumerateArray().Select(s => s.GetProperty("architecture").GetString()));
            Assert.Equal("stories260K.bin", db.GetProperty("model").GetProperty("name").GetString());
        }
        foreach (var sae in server.Store.Saes)
        {
            string sort = FeatureStore.SortKeys[rng.Next(FeatureStore.SortKeys.Count)];
            string order = rng.Next(2) == 0 ? "asc" : "desc";
            int size = rng.Next(5, 30), page = rng.Next(0, (sae.DSae + size - 1) / size);
            string label = FeatureDbServer.LabelWords[rng.Next(FeatureDbServer.LabelWords.Length)][..4];
            string token = server.Store.Dashboard(sae, Enumerable.Range(0, sae.DSae).First(f => server.Store.Dashboard(sae, f).Top.Length > 0)).Top[0] is var e ? e.Text[e.Pos] : "";
            var cases = new (string Query, FeatureQuery Expected)[]
            {
                ($"sort={sort}&order={order}&page={page}&size={size}", new FeatureQuery { Sort = sort, Order = order, Page = page, PageSize = size }),
                ($"label={Uri.EscapeDataString(label)}&sort=label", new FeatureQuery { Label = label, Sort = "label" }),
                ($"token={Uri.EscapeDataString(token)}&size=100", new FeatureQuery { Token = token, PageSize = 100 }),
                ("", new FeatureQuery()),
            };
            foreach (var (query, expected) in cases)
            {
                (status, body, _) = await Get($"/api/databases/features?db={FeatureDbServer.DbName}&sae={Uri.EscapeDataString(sae.Hook)}&{query}");
                Assert.True(status == HttpStatusCode.OK, $"{Seed}: {query}: {body}");
                Assert.Equal(Json(server.Store.Features(sae, expected)), body);
            }
            // dashboards: a random feature and the top one
            foreach (int f in new[] { rng.Next(sae.DSae), server.Store.Features(sae, new FeatureQuery()).Rows[0].Feature })
            {
                (status, body, _) = await Get($"/api/databases/feature?sae={Uri.EscapeDataString(sae.Hook)}&feature={f}");
                Assert.Equal(HttpStatusCode.OK, status);
                Assert.Equal(Json(server.Store.Dashboard(sae, f)), body);
            }
            // export: a download of NeuronpediaExport's batch
            var feats = Enumerable.Range(0, sae.DSae).OrderBy(_ => rng.Next()).Take(3).ToList();
            (status, body, var resp) = await Get($"/api/databases/export?db={FeatureDbServer.DbName}&sae={Uri.EscapeDataString(sae.Hook)}&features={string.Join(",", feats)}");
            Assert.Equal(HttpStatusCode.OK, status);
            Assert.Equal(NeuronpediaExport.Build(server.Store, sae, feats).ToJsonString(), body);
            Assert.Equal("attachment", resp.Content.Headers.ContentDisposition?.DispositionType ?? resp.Headers.GetValues("Content-Disposition").First().Split(';')[0]);
            Assert.Contains($"{FeatureDbServer.DbName}-{sae.Hook}-3-features.json", resp.Content.Headers.ContentDisposition?.ToString() ?? string.Join("", resp.Headers.GetValues("Content-Disposition")));
            resp.Dispose();
        }
        output.WriteLine($"{Seed}: {server.Store.Saes.Count} SAEs checked");
    }

    [Fact]
    public async Task BadRequestsAreClearErrors()
    {
        string hook = Uri.EscapeDataString(server.Store.Saes[0].Hook);
        var cases = new (string Path, HttpStatusCode Status, string Message)[]
        {
            ($"/api/databases/features?sae={hook}&sort=loudness", HttpStatusCode.BadRequest, "sort must be one of frequency, max, label, feature"),
            ($"/api/databases/features?sae={hook}&order=up", HttpStatusCode.BadRequest, "order must be asc or desc"),
            ($"/api/databases/features?sae={hook}&page=99", HttpStatusCode.BadRequest, "page 99 is past the last page"),
            ($"/api/databases/features?sae={hook}&page=x", HttpStatusCode.BadRequest, "page 'x' is not an integer"),
            ($"/api/databases/features?sae={hook}&size=100000", HttpStatusCode.BadRequest, "page size must be between 1 and 500"),
            ($"/api/databases/features?sae={hook}&label=%2C%3B", HttpStatusCode.BadRequest, "has no words"),
            ("/api/databases/features?db=nope&sae=x", HttpStatusCode.NotFound, "unknown feature database 'nope'"),
            ("/api/databases/features?sae=blocks.9.hook_resid_post", HttpStatusCode.NotFound, "no SAE 'blocks.9.hook_resid_post'"),
            ("/api/databases/features", HttpStatusCode.BadRequest, "sae is missing"),
            ($"/api/databases/feature?sae={hook}", HttpStatusCode.BadRequest, "feature is missing"),
            ($"/api/databases/feature?sae={hook}&feature=100000", HttpStatusCode.BadRequest, "outside [0, 64)"),
            ($"/api/databases/feature?sae={hook}&feature=1.5", HttpStatusCode.BadRequest, "feature '1.5' is not an integer"),
            ($"/api/databases/export?sae={hook}", HttpStatusCode.BadRequest, "features is missing"),
            ($"/api/databases/export?sae={hook}&features=1,x", HttpStatusCode.BadRequest, "'x' is not a feature index"),
        };
        foreach (var (path, expected, message) in cases)
        {
            var (status, body, resp) = await Get(path);
            resp.Dispose();
            Assert.True(status == expected, $"{path}: {status} {body}");
            using var doc = JsonDocument.Parse(body);
            Assert.Contains(message, doc.RootElement.GetProperty("error").GetString(), StringComparison.Ordinal);
        }
    }
}
