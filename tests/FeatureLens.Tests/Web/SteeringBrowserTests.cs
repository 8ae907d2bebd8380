using System.Globalization;
using System.Text.Json;
using Microsoft.Playwright;

namespace FeatureLens.Tests.Web;

/// <summary>
/// End-to-end: Debian's headless Chromium (Playwright, no downloaded browser) on the Steering view: a typed feature and one
/// sent from the tracker's feature panel, both continuations side by side and the watched features' charts drawn; a bad
/// latent shows the server's message. Screenshots go to artifacts/screenshots/ under the repository root.
/// </summary>
[Collection(TrackerServerCollection.Name)]
public sealed class SteeringBrowserTests(TrackerServer server) : IAsyncLifetime
{
    BrowserSession session = null!;
    IPage page = null!;
    string Seed => $"server seed {server.Seed}";

    public async Task InitializeAsync()
    {
        session = await BrowserSession.OpenAsync(server.Url);
        page = session.Page;
        await page.WaitForFunctionAsync("() => document.body.dataset.ready === '1'", null, new PageWaitForFunctionOptions { Timeout = 30_000 });
    }

    public async Task DisposeAsync() => await session.DisposeAsync();

    async Task<T> Eval<T>(string js) => await page.EvaluateAsync<T>(js);

    async Task<string> Generate()
    {
        await page.ClickAsync("#steer-run");
        await page.WaitForFunctionAsync("() => ['true', 'error'].includes(document.body.dataset.steerReady)", null, new PageWaitForFunctionOptions { Timeout = 60_000 });
        return (await page.GetAttributeAsync("body", "data-steer-ready"))!;
    }

    [Fact]
    public async Task ATypedFeatureGeneratesBothContinuationsAndTheWatchChart()
    {
        var rng = new Random(Random.Shared.Next());
        int sae = rng.Next(server.Set.Saes.Count), latent = rng.Next(256);
        string feature = $"{server.Set.Hooks[sae]}:{latent}";
        string prompt = SteeringApiTests.Prompt(rng);
        await page.ClickAsync("#tab-steering");
        Assert.True(await page.IsVisibleAsync("#view-steering"));
        Assert.True(await page.IsHiddenAsync("#view-tracker"));
        await page.FillAsync("#steer-prompt", prompt);
        await page.FillAsync("#steer-feature", feature);
        await page.FillAsync("#steer-strength", "6");
        await page.ClickAsync("#steer-add");
        Assert.Equal("1", await page.GetAttributeAsync("#steer-terms", "data-rows"));
        Assert.Equal("1", await page.GetAttributeAsync("#steer-watch-list", "data-count"));   // a steered feature is watched
        await page.FillAsync("#steer-strengths", "0.5, 1");
        await page.FillAsync("#steer-max-new", "8");
        string state = await Generate();
        Assert.True(state == "true", $"{Seed}: {feature}: the run failed: {await page.TextContentAsync("#error-text")}");

        // baseline + one continuation per strength, side by side, each the server's text
        Assert.Equal(3, await page.Locator("#steer-continuations .continuation").CountAsync());
        string baseline = await Eval<string>("steeringState.result.result.baseline.text");
        Assert.Equal(baseline, await page.TextContentAsync("#steer-continuations .continuation.baseline .generated"));
        var texts = await Eval<string[]>("steeringState.result.result.steered.map(s => s.text)");
        Assert.Equal(texts, await Eval<string[]>("[...document.querySelectorAll('#steer-continuations .continuation.steered .generated')].map(e => e.textContent)"));
        Assert.Equal(new[] { 0.5, 1.0 }, await Eval<double[]>("steeringState.result.result.steered.map(s => s.strength)"));
        Assert.Contains(feature, await page.TextContentAsync("#steer-summary"));

        // the watched feature's chart: baseline + 2 strengths, one point per position of each sequence, drawn by Plotly
        var chart = await Eval<JsonElement>("(() => { const d = document.querySelector('.steer-watch-chart'); return { feature: d.dataset.feature, traces: d.data.length, lines: d.querySelectorAll('.scatterlayer .trace').length, points: d.data.reduce((n, t) => n + t.y.length, 0) }; })()");
        Assert.Equal(feature, chart.GetProperty("feature").GetString());
        Assert.Equal(3, chart.GetProperty("traces").GetInt32());
        Assert.Equal(3, chart.GetProperty("lines").GetInt32());
        int expectedPoints = await Eval<int>("(() => { const r = steeringState.result; return 3 * r.promptTokens.length + r.baselineTokens.length + r.steeredTokens.reduce((n, t) => n + t.length, 0); })()");
        Assert.Equal(expectedPoints, chart.GetProperty("points").GetInt32());
        Assert.Equal(1, await Eval<int>("window.__charts.steering.watchCharts"));
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(BrowserSession.Screenshots, "steering.png"), FullPage = true });

        // a latent beyond the SAE's width: the server's message in the panel's note and the banner
        await page.FillAsync("#steer-feature", $"{server.Set.Hooks[sae]}:{256 + rng.Next(1000)}");
        await page.ClickAsync("#steer-add");
        Assert.Equal("error", await Generate());
        Assert.True(await page.IsVisibleAsync("#steer-error-note"));
        Assert.Contains("features[1].latent", await page.TextContentAsync("#steer-error-note"));
        Assert.Contains("features[1].latent", await page.TextContentAsync("#error-text"));
        // removing it: the run succeeds again and the note goes
        await page.Locator("#steer-terms tbody tr").Nth(1).Locator(".term-remove").ClickAsync();
        Assert.Equal("true", await Generate());
        Assert.True(await page.IsHiddenAsync("#steer-error-note"));
    }

    [Fact]
    public async Task TheTrackersSteerButtonSendsTheFeatureToTheSteeringView()
    {
        // the tracker has inspected a feature on load
        await page.WaitForFunctionAsync("() => document.getElementById('feature-panel').dataset.feature && !document.getElementById('feature-panel').dataset.loading", null,
            new PageWaitForFunctionOptions { Timeout = 30_000 });
        string hook = await Eval<string>("window.state.feature.hook");
        int feature = await Eval<int>("window.state.feature.feature");
        await page.ClickAsync("#feature-steer");
        Assert.True(await page.IsVisibleAsync("#view-steering"));
        Assert.Equal("#steering", await Eval<string>("location.hash"));
        var row = page.Locator("#steer-terms tbody tr").First;
        Assert.Equal(hook, await row.GetAttributeAsync("data-hook"));
        Assert.Equal(feature.ToString(CultureInfo.InvariantCulture), await row.GetAttributeAsync("data-latent"));
        await page.FillAsync("#steer-max-new", "6");
        Assert.Equal("true", await Generate());
        Assert.Equal(2, await page.Locator("#steer-continuations .continuation").CountAsync());
        Assert.Equal(1, await page.Locator("#steer-watch-charts .steer-watch-chart").CountAsync());
        Assert.Equal($"{hook}:{feature}", await Eval<string>("document.querySelector('.steer-watch-chart').dataset.feature"));
        lock (session.ConsoleErrors) Assert.True(session.ConsoleErrors.Count == 0, $"{Seed}: console errors: {string.Join(" | ", session.ConsoleErrors)}");
    }
}
