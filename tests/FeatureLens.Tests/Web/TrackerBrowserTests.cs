using System.Text.Json;
using Microsoft.Playwright;

namespace FeatureLens.Tests.Web;

/// <summary>
/// End-to-end: Debian's headless Chromium (driven by Playwright, no downloaded browser) on the tracker page. Screenshots go to
/// artifacts/screenshots/ under the repository root.
/// </summary>
[Collection(TrackerServerCollection.Name)]
public sealed class TrackerBrowserTests(TrackerServer server) : IAsyncLifetime
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
        await WaitSettled();   // the page analyses its example prompt on load
    }

    public async Task DisposeAsync() => await session.DisposeAsync();

    /// <summary>Waits until the page is done (data-ready "1") or failed ("error"); returns the state.</summary>
    async Task<string> WaitSettled()
    {
        await page.WaitForFunctionAsync("() => ['1', 'error'].includes(document.body.dataset.ready)", null, new PageWaitForFunctionOptions { Timeout = 30_000 });
        return (await page.GetAttributeAsync("body", "data-ready"))!;
    }

    async Task WaitReady(string what)
    {
        string state = await WaitSettled();
        if (state != "1") Assert.Fail($"{Seed}: {what}: the page shows an error: {await page.TextContentAsync("#error-text")}");
    }

    async Task<T> Eval<T>(string js) => await page.EvaluateAsync<T>(js);

    static string Prompt(Random rng)
    {
        string[] words = ["Once", "upon", "a", "time", "there", "was", "a", "little", "boy", "named", "Tim", "he", "had", "a", "red", "ball", "and", "a", "cat", "they", "were", "happy"];
        return string.Join(" ", Enumerable.Range(0, 14 + rng.Next(10)).Select(_ => words[rng.Next(words.Length)])) + ".";
    }

    async Task Analyse(string text, int top, double threshold)
    {
        await page.FillAsync("#text", text);
        await page.FillAsync("#top", top.ToString(CultureInfo.InvariantCulture));
        await page.FillAsync("#threshold", threshold.ToString("0.0#", System.Globalization.CultureInfo.InvariantCulture));
        int runs = await Eval<int>("window.__charts.runs");
        await page.ClickAsync("#analyse");
        await WaitReady($"analysing '{text}' with top {top}");
        await page.WaitForFunctionAsync($"() => window.__charts.runs > {runs}");
    }

    async Task<int> EdgesAt(double threshold)
    {
        int runs = await Eval<int>("window.__charts.runs");
        await page.FillAsync("#threshold", threshold.ToString("0.0#", System.Globalization.CultureInfo.InvariantCulture));
        // moving the slider re-runs the analysis by itself
        await page.WaitForFunctionAsync($"() => window.__charts.runs > {runs} && document.body.dataset.ready === '1'", null, new PageWaitForFunctionOptions { Timeout = 30_000 });
        Assert.Equal(threshold, await Eval<double>("window.__charts.network.threshold"), 6);
        return await Eval<int>("window.__cy.edges().length");
    }

    void AssertNoConsoleErrors()
    {
        lock (consoleErrors) Assert.True(consoleErrors.Count == 0, $"{Seed}: console errors: {string.Join(" | ", consoleErrors)}");
    }

    [Fact]
    public async Task AnalysingAPromptDrawsEveryChart()
    {
        var rng = new Random(Random.Shared.Next());
        int top = 5 + rng.Next(16);
        await Analyse(Prompt(rng), top, 0.3);

        // one horizontal bar chart per SAE, with top-N bars drawn in each
        var bars = await Eval<int[]>("[...document.querySelectorAll('.layer-chart')].map(d => d.querySelectorAll('.trace.bars .point').length)");
        Assert.True(bars.Length == 5 && bars.All(b => b == top), $"{Seed}: bars per layer chart {string.Join(",", bars)}, expected 5 × {top}");
        Assert.Equal(bars, await Eval<int[]>("window.__charts.layers.map(l => l.bars)"));
        // one y tick (the feature) per bar: feature indices are categories, not numbers on an axis
        var ticks = await Eval<int[]>("[...document.querySelectorAll('.layer-chart')].map(d => d.querySelectorAll('.ytick').length)");
        Assert.True(ticks.All(t => t == top), $"{Seed}: y ticks per layer chart {string.Join(",", ticks)}, expected {top}");
        // the grouped comparison: one trace per layer, top-N bars each
        Assert.Equal(5 * top, await Eval<int>("document.querySelectorAll('#comparison-chart .trace.bars .point').length"));
        // the heatmap has rows × columns cells: 5 SAEs × the union of their top features
        var heat = await Eval<JsonElement>("(() => { const z = document.getElementById('heatmap-chart').data[0].z; return { rows: z.length, cols: z[0].length, cells: window.__charts.heatmap.cells, images: document.querySelectorAll('#heatmap-chart .hm image').length }; })()");
        int rows = heat.GetProperty("rows").GetInt32(), cols = heat.GetProperty("cols").GetInt32();
        Assert.Equal(5, rows);
        Assert.Equal(5 * top, cols);
        Assert.Equal(rows * cols, heat.GetProperty("cells").GetInt32());
        Assert.True(heat.GetProperty("images").GetInt32() >= 1, "the heatmap image was not drawn");
        // the network: every top feature is a node
        Assert.Equal(5 * top, await Eval<int>("window.__cy.nodes().length"));
        Assert.Equal(await Eval<int>("window.__cy.nodes().length"), int.Parse((await page.GetAttributeAsync("#network", "data-nodes"))!, CultureInfo.InvariantCulture));
        Assert.True(await Eval<bool>("document.querySelector('#network canvas') !== null"), "cytoscape drew no canvas");
        // the feature table has a row per top feature, with label, F1 and specialization and hover tooltips
        Assert.Equal(5 * top, await page.Locator("#feature-table tbody tr").CountAsync());
        var firstRow = page.Locator("#feature-table tbody tr").First;
        Assert.Matches(@"^[a-z]+ \d$", (await firstRow.Locator("td").Nth(5).TextContentAsync())!);
        Assert.Contains("F1", (await firstRow.Locator("td").Nth(5).GetAttributeAsync("title"))!);
        Assert.Matches(@"^0\.\d\d$|^1\.00$", (await firstRow.Locator("td").Nth(6).TextContentAsync())!);
        Assert.EndsWith("%", (await firstRow.Locator("td").Nth(7).TextContentAsync())!);
        // the feature panel (strongest feature of the deepest layer) highlights tokens and plots its evolution
        Assert.StartsWith("L4 resid_post:", await page.GetAttributeAsync("#feature-panel", "data-feature"));
        int tokens = await Eval<int>("document.querySelectorAll('#feature-tokens span').length");
        Assert.True(tokens > 10, $"{Seed}: {tokens} token spans");
        Assert.True(await Eval<int>("document.querySelectorAll('#feature-tokens span[style*=background]').length") >= 1, "no token is highlighted");
        Assert.True(await Eval<int>("document.querySelectorAll('#evolution-chart .scatterlayer .trace').length") >= 2, "the evolution plot has fewer than 2 chain members");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Screenshots, "tracker-analysed.png"), FullPage = true });
        AssertNoConsoleErrors();
    }

    [Fact]
    public async Task RaisingTheThresholdNeverAddsEdges()
    {
        var rng = new Random(Random.Shared.Next());
        await Analyse(Prompt(rng), 12, 0.1);
        int nodes = await Eval<int>("window.__cy.nodes().length");
        var edges = new List<int> { await Eval<int>("window.__cy.edges().length") };
        foreach (double t in new[] { 0.3, 0.5, 0.7, 0.9 }) edges.Add(await EdgesAt(t));
        Assert.True(edges.Zip(edges.Skip(1)).All(p => p.First >= p.Second), $"{Seed}: edges at thresholds 0.1..0.9: {string.Join(",", edges)}");
        Assert.True(edges[0] > edges[^1], $"{Seed}: the edge count did not change between thresholds 0.1 and 0.9: {string.Join(",", edges)}");
        Assert.Equal(nodes, await Eval<int>("window.__cy.nodes().length"));
        await EdgesAt(0.3);
        await page.Locator("#network").ScrollIntoViewIfNeededAsync();
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Screenshots, "tracker-network.png") });
        AssertNoConsoleErrors();
    }

    [Fact]
    public async Task ClickingANetworkNodeShowsThatFeature()
    {
        var rng = new Random(Random.Shared.Next());
        await Analyse(Prompt(rng), 8, 0.3);
        await page.Locator("#network").ScrollIntoViewIfNeededAsync();
        // let the scroll settle and have cytoscape forget where its container was before it
        await Eval<bool>("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => { window.__cy.resize(); r(true); })))");
        // the node farthest from its nearest neighbour, so that a click at its centre hits only it; not the one already shown
        var target = await Eval<JsonElement>(@"(() => {
            const cy = window.__cy, shown = document.getElementById('feature-panel').dataset.feature;
            const nodes = cy.nodes().filter(n => n.id() !== shown).toArray();
            let best = null, bestGap = -1;
            for (const n of nodes) {
                const p = n.renderedPosition();
                let gap = Infinity;
                for (const m of cy.nodes().toArray()) if (m !== n) { const q = m.renderedPosition(); gap = Math.min(gap, Math.hypot(p.x - q.x, p.y - q.y)); }
                if (gap > bestGap) { bestGap = gap; best = n; }
            }
            const r = cy.container().getBoundingClientRect(), p = best.renderedPosition();
            return { id: best.id(), x: r.left + p.x, y: r.top + p.y };
        })()");
        string id = target.GetProperty("id").GetString()!;
        await page.Mouse.ClickAsync(target.GetProperty("x").GetSingle(), target.GetProperty("y").GetSingle());
        await page.WaitForFunctionAsync($"() => document.getElementById('feature-panel').dataset.feature === {JsonSerializer.Serialize(id)} && document.body.dataset.ready === '1'",
            null, new PageWaitForFunctionOptions { Timeout = 30_000 });
        Assert.Equal(id, await page.TextContentAsync("#feature-title"));
        Assert.True(await Eval<bool>($"window.__cy.$id({JsonSerializer.Serialize(id)}).hasClass('selected')"));
        // the panel's highlighting is the feature's activation per token as the tracker computed it
        string sae = id[..id.LastIndexOf(':')];
        int feature = int.Parse(id[(id.LastIndexOf(':') + 1)..], CultureInfo.InvariantCulture);
        var perToken = await Eval<float[]>($"state.result.layers.find(l => l.name === {JsonSerializer.Serialize(sae)}).top.find(f => f.feature === {feature}).perToken");
        var shown = await Eval<float[]>("[...document.querySelectorAll('#feature-tokens span')].map(s => Number(s.dataset.act))");
        Assert.Equal(perToken.Length, shown.Length);
        // data-act holds the value rounded for display (4 decimals): compare within that rounding
        for (int i = 0; i < shown.Length; i++) Assert.True(Math.Abs(perToken[i] - shown[i]) <= 1e-4 + 1e-6 * Math.Abs(perToken[i]), $"token {i}: shown {shown[i]}, activation {perToken[i]}");
        Assert.Equal(perToken.Count(a => a > 0), await Eval<int>("document.querySelectorAll('#feature-tokens span[style*=background]').length"));
        string label = server.Labels.Get($"blocks.{sae[1]}.hook_resid_post", feature)!.Label;
        Assert.Contains(label, await page.TextContentAsync("#feature-meta"));
        Assert.Contains("F1", await page.TextContentAsync("#feature-meta"));
        Assert.True(await Eval<int>("window.__charts.evolution.traces") >= 2);
        await page.Locator("#feature-panel").ScrollIntoViewIfNeededAsync();
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Screenshots, "tracker-feature.png") });
        AssertNoConsoleErrors();
    }

    [Fact]
    public async Task OversizeTextShowsTheErrorBanner()
    {
        var rng = new Random(Random.Shared.Next());
        Assert.True(await page.IsHiddenAsync("#error"));
        string text = string.Concat(Enumerable.Range(0, 300).Select(_ => Prompt(rng) + " "));
        Assert.True(text.Length > TrackerServer.MaxTextChars);
        await page.FillAsync("#text", text);
        await page.ClickAsync("#analyse");
        Assert.Equal("error", await WaitSettled());
        Assert.True(await page.IsVisibleAsync("#error"));
        Assert.Contains($"the limit is {TrackerServer.MaxTextChars}", await page.TextContentAsync("#error-text"));
        Assert.True(await page.IsVisibleAsync("#results"), "the earlier results should stay on the page");
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(Screenshots, "tracker-error.png") });
        // a good prompt clears the banner
        await Analyse(Prompt(rng), 5, 0.5);
        Assert.True(await page.IsHiddenAsync("#error"));
        lock (consoleErrors) Assert.All(consoleErrors, e => Assert.Contains("413", e));   // only the browser's own note of the failed request
    }
}
