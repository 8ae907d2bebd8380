using System.Text.Json;
using Microsoft.Playwright;

namespace FeatureLens.Tests.Web;

/// <summary>
/// End-to-end: Debian's headless Chromium (Playwright, no downloaded browser) on the Circuits view. Screenshots go to
/// artifacts/screenshots/ under the repository root.
/// </summary>
[Collection(TrackerServerCollection.Name)]
public sealed class CircuitsBrowserTests(TrackerServer server) : IAsyncLifetime
{
    BrowserSession session = null!;
    IPage page = null!;
    List<string> consoleErrors = null!;
    string Seed => $"server seed {server.Seed}";

    static string Screenshots => BrowserSession.Screenshots;

    public async Task InitializeAsync()
    {
        session = await BrowserSession.OpenAsync(server.Url);
        page = session.Page;
        consoleErrors = session.ConsoleErrors;
        // the tracker analyses its example prompt on load
        await page.WaitForFunctionAsync("() => document.body.dataset.ready === '1'", null, new PageWaitForFunctionOptions { Timeout = 30_000 });
    }

    public async Task DisposeAsync() => await session.DisposeAsync();

    async Task<T> Eval<T>(string js) => await page.EvaluateAsync<T>(js);

    async Task<string> WaitCircuits()
    {
        await page.WaitForFunctionAsync("() => ['true', 'error'].includes(document.body.dataset.circuitsReady)", null, new PageWaitForFunctionOptions { Timeout = 60_000 });
        return (await page.GetAttributeAsync("body", "data-circuits-ready"))!;
    }

    async Task SwitchToCircuits()
    {
        await page.ClickAsync("#tab-circuits");
        Assert.True(await page.IsVisibleAsync("#view-circuits"));
        Assert.True(await page.IsHiddenAsync("#view-tracker"));
        Assert.Equal("true", await page.GetAttributeAsync("#tab-circuits", "aria-pressed"));
    }

    async Task Predict()
    {
        int runs = await Eval<int>("window.__charts.circuits.predictionRuns");
        await page.ClickAsync("#predict");
        await page.WaitForFunctionAsync($"() => window.__charts.circuits.predictionRuns > {runs}", null, new PageWaitForFunctionOptions { Timeout = 30_000 });
    }

    async Task Run()
    {
        await page.ClickAsync("#run-circuits");
        string state = await WaitCircuits();
        if (state != "true") Assert.Fail($"{Seed}: the Circuits run failed: {await page.TextContentAsync("#error-text")}");
    }

    void AssertNoConsoleErrors()
    {
        lock (consoleErrors) Assert.True(consoleErrors.Count == 0, $"{Seed}: console errors: {string.Join(" | ", consoleErrors)}");
    }

    [Fact]
    public async Task RunningDrawsTheHeatmapAndTableAndAFeatureOpensInTheTracker()
    {
        var rng = new Random(Random.Shared.Next());
        var (clean, corrupt) = CircuitsApiTests.Pair(server, rng);
        int cleanTokens = server.Model.Tokenizer!.Encode(clean, addBos: true).Length;
        await SwitchToCircuits();
        await page.FillAsync("#clean", clean);
        await page.FillAsync("#corrupt", corrupt);

        // the predictions fill both pickers; picking builds the metric
        await Predict();
        var ids = await Eval<int[]>("[...document.querySelectorAll('#target option')].map(o => Number(o.value))");
        Assert.Equal(10, ids.Length);
        Assert.Equal(ids, await Eval<int[]>("[...document.querySelectorAll('#alternative option')].map(o => Number(o.value))"));
        Assert.Equal(10, await page.Locator("#prediction-list .chip").CountAsync());
        Assert.Equal($"logit-diff:{ids[0]},{ids[1]}", await page.InputValueAsync("#metric"));
        int target = ids[2 + rng.Next(8)];
        await page.SelectOptionAsync("#target", target.ToString(CultureInfo.InvariantCulture));
        await page.SelectOptionAsync("#alternative", ids[0].ToString(CultureInfo.InvariantCulture));
        Assert.Equal($"logit-diff:{target},{ids[0]}", await page.InputValueAsync("#metric"));

        int top = 15 + rng.Next(20);
        await page.FillAsync("#top-nodes", top.ToString(CultureInfo.InvariantCulture));
        await Run();

        // the heatmap: one row per SAE, one column per clean token
        var heat = await Eval<JsonElement>("(() => { const d = document.getElementById('circuits-heatmap').data[0]; return { rows: d.z.length, cols: d.z[0].length, x: d.x.length, cells: window.__charts.circuits.heatmap.cells, images: document.querySelectorAll('#circuits-heatmap .hm image').length, zmid: d.zmid, zmin: d.zmin, zmax: d.zmax }; })()");
        Assert.Equal(5, heat.GetProperty("rows").GetInt32());
        Assert.Equal(cleanTokens, heat.GetProperty("cols").GetInt32());
        Assert.Equal(cleanTokens, heat.GetProperty("x").GetInt32());
        Assert.Equal(5 * cleanTokens, heat.GetProperty("cells").GetInt32());
        Assert.Equal((5 * cleanTokens).ToString(CultureInfo.InvariantCulture), await page.GetAttributeAsync("#circuits-heatmap", "data-cells"));
        Assert.True(heat.GetProperty("images").GetInt32() >= 1, "the heatmap image was not drawn");
        Assert.Equal(0, heat.GetProperty("zmid").GetDouble());
        Assert.Equal(-heat.GetProperty("zmax").GetDouble(), heat.GetProperty("zmin").GetDouble());   // diverging, centred at 0
        Assert.Contains($"logit-diff:{target},{ids[0]}", await page.TextContentAsync("#circuits-metric"));

        // the table: the top nodes by |effect|, largest first, labels on the feature rows
        int total = await Eval<int>("circuitsState.result.totalNodes");
        var rows = page.Locator("#circuits-table tbody tr");
        Assert.Equal(Math.Min(top, total), await rows.CountAsync());
        var effects = await Eval<double[]>("circuitsState.result.nodes.map(n => Math.abs(n.effect))");
        Assert.True(effects.Zip(effects.Skip(1)).All(p => p.First >= p.Second), $"{Seed}: not sorted by |effect|");
        var featureRows = page.Locator("#circuits-table tbody tr.feature");
        Assert.True(await featureRows.CountAsync() >= 1, $"{Seed}: no feature among the top {top} nodes");
        var first = featureRows.First;
        string sae = (await first.GetAttributeAsync("data-sae"))!;
        int feature = int.Parse((await first.GetAttributeAsync("data-feature"))!, CultureInfo.InvariantCulture);
        string label = server.Labels.Get(server.Set.Hooks[server.Set.IndexOf(sae)], feature)!.Label;
        Assert.Equal(label, (await first.Locator("td").Nth(7).TextContentAsync())!.Trim());
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Screenshots, "circuits.png"), FullPage = true });

        // clicking the feature opens it in the tracker's feature panel, on the clean prompt
        string id = $"{sae}:{feature}";
        await first.ClickAsync();
        await page.WaitForFunctionAsync($"() => document.getElementById('feature-panel').dataset.feature === {JsonSerializer.Serialize(id)} && document.body.dataset.ready === '1' && !document.getElementById('feature-panel').dataset.loading",
            null, new PageWaitForFunctionOptions { Timeout = 30_000 });
        Assert.True(await page.IsVisibleAsync("#view-tracker"));
        Assert.True(await page.IsHiddenAsync("#view-circuits"));
        Assert.Equal(clean, await page.InputValueAsync("#text"));
        Assert.Equal(id, await page.TextContentAsync("#feature-title"));
        Assert.Contains(label, await page.TextContentAsync("#feature-meta"));
        Assert.Equal(cleanTokens, await Eval<int>("document.querySelectorAll('#feature-tokens span').length"));
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Screenshots, "circuits-feature-in-tracker.png") });

        // back to the Circuits view: the results are still there
        await page.ClickAsync("#tab-circuits");
        Assert.True(await page.IsVisibleAsync("#circuits-results"));
        AssertNoConsoleErrors();
    }

    [Fact]
    public async Task TheExamplePromptsRunAsTheyAre()
    {
        await SwitchToCircuits();
        string clean = await page.InputValueAsync("#clean"), corrupt = await page.InputValueAsync("#corrupt");
        var tok = server.Model.Tokenizer!;
        Assert.Equal(tok.Encode(clean, addBos: true).Length, tok.Encode(corrupt, addBos: true).Length);
        await Predict();
        await Run();
        Assert.Equal(5 * tok.Encode(clean, addBos: true).Length, await Eval<int>("window.__charts.circuits.heatmap.cells"));
        AssertNoConsoleErrors();
    }

    [Fact]
    public async Task ZeroAblationWithIntegratedGradientsAndATypedMetric()
    {
        var rng = new Random(Random.Shared.Next());
        var (clean, _) = CircuitsApiTests.Pair(server, rng);
        int cleanTokens = server.Model.Tokenizer!.Encode(clean, addBos: true).Length;
        await SwitchToCircuits();
        await page.FillAsync("#clean", clean);
        await page.CheckAsync("#zero-ablation");
        Assert.True(await page.IsDisabledAsync("#corrupt"));
        await page.SelectOptionAsync("#method", "ig");
        Assert.True(await page.IsVisibleAsync("#steps"));
        await page.FillAsync("#steps", "4");
        await page.FillAsync("#metric", $"logprob:{rng.Next(10, 500)}");
        await Run();
        Assert.Equal("zero", await Eval<string>("circuitsState.result.ablation"));
        Assert.Equal("ig", await Eval<string>("circuitsState.result.method"));
        Assert.Equal(4, await Eval<int>("circuitsState.result.steps"));
        Assert.Equal(5 * cleanTokens, await Eval<int>("window.__charts.circuits.heatmap.cells"));
        Assert.True(await page.Locator("#circuits-table tbody tr").CountAsync() >= 1);
        Assert.Contains("zero ablation", await page.TextContentAsync("#circuits-metric"));
        AssertNoConsoleErrors();
    }

    [Fact]
    public async Task MismatchedLengthsShowTheErrorBanner()
    {
        var rng = new Random(Random.Shared.Next());
        var (clean, corrupt) = CircuitsApiTests.Pair(server, rng);
        await SwitchToCircuits();
        Assert.True(await page.IsHiddenAsync("#error"));
        await page.FillAsync("#clean", clean);
        await page.FillAsync("#corrupt", corrupt + " and the dog was happy");
        await page.FillAsync("#metric", "logit-diff:5,7");
        await page.ClickAsync("#run-circuits");
        Assert.Equal("error", await WaitCircuits());
        Assert.True(await page.IsVisibleAsync("#error"));
        Assert.Contains("same token length", await page.TextContentAsync("#error-text"));
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Screenshots, "circuits-error.png") });
        // a good pair clears the banner
        await page.FillAsync("#corrupt", corrupt);
        await Run();
        Assert.True(await page.IsHiddenAsync("#error"));
        lock (consoleErrors) Assert.All(consoleErrors, e => Assert.Contains("400", e));   // only the browser's own note of the failed request
    }

    [Fact]
    public async Task OpeningOnTheCircuitsHashShowsThatViewAndTheTrackerStillDraws()
    {
        // a fresh load (not a same-document hash change)
        await page.GotoAsync("about:blank");
        await page.GotoAsync(server.Url + "/#circuits");
        await page.WaitForFunctionAsync("() => document.body.dataset.ready === '1'", null, new PageWaitForFunctionOptions { Timeout = 30_000 });
        Assert.True(await page.IsVisibleAsync("#view-circuits"));
        Assert.True(await page.IsHiddenAsync("#view-tracker"));
        await page.ClickAsync("#tab-tracker");
        Assert.True(await page.IsVisibleAsync("#network"));
        // the network drawn while hidden is laid out again: its nodes spread over the box
        var spread = await Eval<double>("(() => { const xs = window.__cy.nodes().map(n => n.renderedPosition().x); return Math.max(...xs) - Math.min(...xs); })()");
        Assert.True(spread > 100, $"{Seed}: the network's nodes span {spread} px");
        Assert.True(await Eval<int>("document.querySelectorAll('.layer-chart .trace.bars .point').length") > 0);
        AssertNoConsoleErrors();
    }
}
