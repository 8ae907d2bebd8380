using System.Text.Json;
using System.Text.Json.Serialization;
using FeatureLens.Analysis;
using FeatureLens.Database;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace FeatureLens.Web;

/// <summary>
/// The feature activation tracker as a web app: a JSON API over <see cref="FeatureTracker"/> and
/// <see cref="FeatureEvolution"/>, and the page in wwwroot (Plotly.js and Cytoscape.js, served locally).
/// <code>
/// GET  /api/sets                                   the model + SAE sets, their SAEs and the request limits
/// POST /api/track   {set, text, top, rankBy, tokenIndex, threshold}   → TrackResult
/// GET|POST /api/feature {set, sae, feature, text}  → a feature's per-token activations, label and evolution
/// POST /api/predictions {set, text, top}           → the top next-token predictions after the text (the Circuits view's metric picker)
/// POST /api/attribute {set, clean, corrupt | ablation: "zero", metric, method: gradient|ig, steps, top}
///                                                  → node effects of the set's SAEs on the metric (<see cref="AttributeResponse"/>)
/// POST /api/steer {set, prompt, features: [{hook, latent, strength}], clamps: [{hook, latent, value}], strengths, positions,
///                  maxNewTokens, temperature, topP, seed, watch: [{hook, latent}], logits, topFeatures}
///                                                  → baseline and steered continuations (<see cref="SteerResponse"/>)
/// GET  /api/graphs                                 the saved graph files of the graphs folder (<see cref="GraphListResponse"/>)
/// POST /api/graphs {set, prompt, maxFeatureNodes, nodeThreshold, edgeThreshold} → a new attribution graph, saved (<see cref="GraphView"/>)
/// GET  /api/graphs/progress?set=                   the graph being computed for the set: phase, rows done of total
/// GET  /api/graphs/{id}?nodeThreshold=&amp;edgeThreshold=  the graph re-pruned (<see cref="GraphView"/>)
/// POST /api/graphs/{id}/qparams {pinnedIds, supernodes}  → saved into the file's qParams
/// GET  /api/databases                              the feature databases (serve --db) and their SAEs (<see cref="DatabasesResponse"/>)
/// GET  /api/databases/features?db=&amp;sae=&amp;sort=frequency|max|label|feature&amp;order=&amp;page=&amp;size=&amp;label=&amp;token=
///                                                  → a page of the SAE's features (<see cref="FeaturePage"/>)
/// GET  /api/databases/feature?db=&amp;sae=&amp;feature=     → the feature's dashboard (<see cref="FeatureDashboard"/>)
/// GET  /api/databases/export?db=&amp;sae=&amp;features=1,2|all → SAEDashboard / Neuronpedia batch JSON, as a download
/// GET  /api/databases/connections?db=&amp;sae=&amp;feature=&amp;examples=&amp;top= → upstream / downstream features over the top examples
///                                                  (<see cref="FeatureLens.Connections.FeatureConnectionsResult"/>; 409 without the database's model + SAEs)
/// GET  /api/clusters                               the clusters files (serve --clusters) (<see cref="ClusterListResponse"/>)
/// GET  /api/clusters/{id}                          one clusters file's JSON as it is on disk
/// </code>
/// Errors are JSON <c>{"error": "..."}</c>: 400 for bad input, 404 for unknown routes, 413 for oversize text or bodies.
/// </summary>
public static class TrackerApp
{
    /// <summary>camelCase JSON of the library records (enums as strings, NaN written as "NaN" rather than failing).</summary>
    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        NumberHandling = JsonNumberHandling.AllowReadingFromString | JsonNumberHandling.AllowNamedFloatingPointLiterals,
        DefaultIgnoreCondition = JsonIgnoreCondition.Never,
        // responses are application/json read by JSON.parse, never inlined into HTML
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>Builds the app (not started): call <c>Run()</c>, or <c>StartAsync()</c> and read the bound address from <c>Urls</c>.</summary>
    public static WebApplication Build(TrackerAppOptions options)
    {
        // The kernels fan out over the thread pool (Parallel.For) from inside a request; keep enough pool threads
        // ready that a request never waits for the pool to grow (its injection delay is ~0.5 s per thread).
        ThreadPool.GetMinThreads(out int workers, out int io);
        ThreadPool.SetMinThreads(Math.Max(workers, 4 * Environment.ProcessorCount + 4), io);
        ArgumentNullException.ThrowIfNull(options);
        if (options.Sets.Count == 0 && options.Databases.Count == 0 && options.Clusters.Count == 0)
            throw new ArgumentException("the app needs at least one model + SAE set, feature database or clusters file");
        var dup = options.Sets.GroupBy(s => s.Name, StringComparer.OrdinalIgnoreCase).FirstOrDefault(g => g.Count() > 1);
        if (dup != null) throw new ArgumentException($"two SAE sets are named '{dup.Key}'; give each a different name");
        if (options.MaxTextChars <= 0) throw new ArgumentException("MaxTextChars must be positive");
        if (options.MaxRequestBytes < 1024) throw new ArgumentException("MaxRequestBytes must be at least 1024");
        if (options.GraphCacheSize < 1) throw new ArgumentException("GraphCacheSize must be at least 1");
        if (options.MaxGraphFeatureNodes < 1) throw new ArgumentException("MaxGraphFeatureNodes must be at least 1");

        string webRoot = options.WebRoot ?? Path.Combine(AppContext.BaseDirectory, "wwwroot");
        foreach (string needed in new[] { "index.html", "app.js", "js/api.js", "js/views/tracker.js", "js/views/circuits.js", "js/views/graph.js", "js/views/features.js", "js/views/steering.js", "js/views/clusters.js", "app.css", "lib/plotly.min.js", "lib/cytoscape.min.js" })
            if (!File.Exists(Path.Combine(webRoot, needed)))
                throw new FileNotFoundException($"the web app's file {needed} is missing under {webRoot}: build src/FeatureLens.Web (its build runs npm install and copies the browser bundles)");

        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = [],
            ContentRootPath = AppContext.BaseDirectory,
            WebRootPath = webRoot,
            ApplicationName = typeof(TrackerApp).Assembly.GetName().Name,
        });
        builder.WebHost.UseUrls([.. options.Urls]);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxRequestBytes;
        });
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        var tracker = new TrackerService(options);
        builder.Services.AddSingleton(tracker);
        builder.Services.AddSingleton(new CircuitService(tracker));
        builder.Services.AddSingleton(new GraphService(tracker, options));
        builder.Services.AddSingleton(new SteeringService(tracker));
        builder.Services.AddSingleton(new ClusterService(options.Clusters));
        var featureService = new FeatureService(options.Databases, tracker, options.Sets);
        builder.Services.AddSingleton(featureService);

        var app = builder.Build();
        app.Lifetime.ApplicationStopped.Register(featureService.Dispose);
        app.UseExceptionHandler(errorApp => errorApp.Run(WriteError));
        app.UseStatusCodePages(async ctx =>
        {
            var r = ctx.HttpContext.Response;
            if (r.HasStarted || r.ContentLength > 0) return;
            string message = r.StatusCode switch
            {
                404 => $"no such page or endpoint: {ctx.HttpContext.Request.Path}",
                405 => $"{ctx.HttpContext.Request.Method} is not allowed on {ctx.HttpContext.Request.Path}",
                _ => $"HTTP {r.StatusCode}",
            };
            await Results.Json(new ApiError(message), Json, statusCode: r.StatusCode).ExecuteAsync(ctx.HttpContext);
        });
        app.Use(async (ctx, next) =>
        {
            // the page loads nothing from elsewhere; Plotly needs inline styles, nothing needs inline or eval'd script
            var h = ctx.Response.Headers;
            h["Content-Security-Policy"] = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'";
            h["X-Content-Type-Options"] = "nosniff";
            h["Referrer-Policy"] = "no-referrer";
            await next();
        });
        app.UseDefaultFiles();
        app.UseStaticFiles();

        var api = app.MapGroup("/api");
        api.MapGet("/sets", (TrackerService s) => Results.Json(s.Describe(), Json));
        api.MapPost("/track", async (HttpContext ctx, TrackerService s) =>
            Results.Json(s.Track(await ReadBody<TrackRequest>(ctx)), Json));
        api.MapPost("/feature", async (HttpContext ctx, TrackerService s) =>
            Results.Json(s.Feature(await ReadBody<FeatureRequest>(ctx)), Json));
        api.MapGet("/feature", (HttpContext ctx, TrackerService s) =>
        {
            var q = ctx.Request.Query;
            int? feature = q.TryGetValue("feature", out var f) ? (int.TryParse(f, out int v) ? v : throw new ApiException(400, $"feature '{f}' is not an integer")) : null;
            return Results.Json(s.Feature(new FeatureRequest(q["set"], q["sae"], feature, q["text"])), Json);
        });
        api.MapPost("/predictions", async (HttpContext ctx, CircuitService s) =>
            Results.Json(s.Predictions(await ReadBody<PredictionsRequest>(ctx)), Json));
        api.MapPost("/attribute", async (HttpContext ctx, CircuitService s) =>
            Results.Json(s.Attribute(await ReadBody<AttributeRequest>(ctx)), Json));
        api.MapPost("/steer", async (HttpContext ctx, SteeringService s) =>
            Results.Json(s.Steer(await ReadBody<SteerRequest>(ctx)), Json));
        api.MapGet("/graphs", (GraphService s) => Results.Json(s.List(), Json));
        api.MapPost("/graphs", async (HttpContext ctx, GraphService s) =>
            Results.Json(s.Compute(await ReadBody<GraphComputeRequest>(ctx), ctx.RequestAborted), Json));
        api.MapGet("/graphs/progress", (HttpContext ctx, GraphService s) => Results.Json(s.Progress(ctx.Request.Query["set"]), Json));
        api.MapGet("/graphs/{id}", (string id, HttpContext ctx, GraphService s) =>
            Results.Json(s.Load(id, QueryDouble(ctx, "nodeThreshold"), QueryDouble(ctx, "edgeThreshold")), Json));
        api.MapPost("/graphs/{id}/qparams", async (string id, HttpContext ctx, GraphService s) =>
            Results.Json(s.SaveQParams(id, await ReadBody<GraphQParamsRequest>(ctx)), Json));
        api.MapGet("/databases", (FeatureService s) => Results.Json(s.List(), Json));
        api.MapGet("/databases/features", (HttpContext ctx, FeatureService s) =>
        {
            var q = ctx.Request.Query;
            var query = new FeatureQuery
            {
                Sort = q.TryGetValue("sort", out var sort) && !string.IsNullOrEmpty(sort) ? sort.ToString() : "frequency",
                Order = q["order"], Page = QueryInt(ctx, "page") ?? 0, PageSize = QueryInt(ctx, "size") ?? 50,
                Label = string.IsNullOrWhiteSpace(q["label"]) ? null : q["label"].ToString(),
                Token = string.IsNullOrEmpty(q["token"]) ? null : q["token"].ToString(),
            };
            return Results.Json(s.Page(q["db"], q["sae"], query), Json);
        });
        api.MapGet("/databases/feature", (HttpContext ctx, FeatureService s) =>
            Results.Json(s.Dashboard(ctx.Request.Query["db"], ctx.Request.Query["sae"], QueryInt(ctx, "feature") ?? throw new ApiException(400, "feature is missing: give the feature index")), Json));
        api.MapGet("/databases/connections", (HttpContext ctx, FeatureService s) =>
            Results.Json(s.Connections(ctx.Request.Query["db"], ctx.Request.Query["sae"], QueryInt(ctx, "feature") ?? throw new ApiException(400, "feature is missing: give the feature index"),
                QueryInt(ctx, "examples"), QueryInt(ctx, "top")), Json));
        api.MapGet("/databases/export", (HttpContext ctx, FeatureService s) =>
        {
            var (batch, fileName) = s.Export(ctx.Request.Query["db"], ctx.Request.Query["sae"], ctx.Request.Query["features"]);
            ctx.Response.Headers.ContentDisposition = new System.Net.Mime.ContentDisposition { FileName = fileName, DispositionType = "attachment" }.ToString();
            return Results.Text(batch.ToJsonString(), "application/json");
        });
        api.MapGet("/clusters", (ClusterService s) => Results.Json(s.List(), Json));
        api.MapGet("/clusters/{id}", (string id, ClusterService s) => Results.Text(s.Get(id), "application/json"));
        api.Map("/{**rest}", (HttpContext ctx) => Results.Json(new ApiError($"no API endpoint {ctx.Request.Method} {ctx.Request.Path}"), Json, statusCode: 404));
        return app;
    }

    static int? QueryInt(HttpContext ctx, string name)
    {
        if (!ctx.Request.Query.TryGetValue(name, out var v) || string.IsNullOrEmpty(v)) return null;
        return int.TryParse(v, System.Globalization.NumberStyles.AllowLeadingSign, System.Globalization.CultureInfo.InvariantCulture, out int i) ? i
            : throw new ApiException(400, $"{name} '{v}' is not an integer");
    }

    static double? QueryDouble(HttpContext ctx, string name)
    {
        if (!ctx.Request.Query.TryGetValue(name, out var v) || string.IsNullOrEmpty(v)) return null;
        return double.TryParse(v, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double d) ? d
            : throw new ApiException(400, $"{name} '{v}' is not a number");
    }

    static async Task<T> ReadBody<T>(HttpContext ctx) where T : class
    {
        if (ctx.Request.ContentType is not { } type || !type.StartsWith("application/json", StringComparison.OrdinalIgnoreCase))
            throw new ApiException(415, "send the request body as JSON (Content-Type: application/json)");
        try
        {
            return await JsonSerializer.DeserializeAsync<T>(ctx.Request.Body, Json, ctx.RequestAborted)
                ?? throw new ApiException(400, "the request body is empty: send a JSON object");
        }
        catch (JsonException e)
        {
            string where = e.Path is { Length: > 1 } p ? $" at {p}" : "";
            throw new ApiException(400, $"the request body is not the JSON this endpoint expects{where}: {FirstLine(e.Message)}");
        }
    }

    /// <summary>Turns any exception into {"error": message} with a status that says what went wrong; never a stack trace.</summary>
    static async Task WriteError(HttpContext ctx)
    {
        var e = ctx.Features.Get<IExceptionHandlerFeature>()?.Error;
        (int status, string message) = e switch
        {
            ApiException a => (a.Status, a.Message),
            BadHttpRequestException b when b.StatusCode == 413 => (413, "the request body is larger than the server accepts"),
            BadHttpRequestException b => (b.StatusCode, FirstLine(b.Message)),
            ArgumentException or FormatException or InvalidDataException or KeyNotFoundException or IndexOutOfRangeException => (400, FirstLine(e.Message)),
            InvalidOperationException => (400, FirstLine(e.Message)),
            OperationCanceledException => (499, "the request was cancelled"),
            null => (500, "unknown error"),
            _ => (500, $"internal error: {FirstLine(e.Message)}"),
        };
        if (status >= 500)
            ctx.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("FeatureLens.Web").LogError(e, "request {Path} failed", ctx.Request.Path);
        ctx.Response.StatusCode = status;
        await ctx.Response.WriteAsJsonAsync(new ApiError(message), Json);
    }

    static string FirstLine(string s) { int nl = s.IndexOf('\n'); return (nl < 0 ? s : s[..nl]).Trim(); }
}

/// <summary>An error the API reports to the client with <see cref="Status"/>.</summary>
public sealed class ApiException(int status, string message) : Exception(message)
{
    public int Status { get; } = status;
}

/// <summary>The body of every error response.</summary>
public sealed record ApiError(string Error);
