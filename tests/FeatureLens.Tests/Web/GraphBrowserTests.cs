using Microsoft.Playwright;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Web;

/// <summary>
/// End-to-end: Debian's headless Chromium (Playwright) on the Graph view, one walk through it: compute a graph from the
/// page, hover a node, click one for its ranked neighbours, move the node-threshold slider, group two nodes into a
/// supernode and see it again after a reload. Screenshots go to artifacts/screenshots/ under the repository root.
/// </summary>
[Collection(GraphServerCollection.Name)]
public sealed class GraphBrowserTests(GraphServer server, ITestOutputHelper output) : IAsyncLifetime
{
    BrowserSession session = null!;
    IPage page = null!;
    string Seed => $"server seed {server.Seed}";

    public async Task InitializeAsync()
    {
        session = await BrowserSession.OpenAsync(server.Url + "/#graph");
        page = session.Page;
        await page.WaitForFunctionAsync("() => document.querySelector('#graph-picker option') !== null", null, new PageWaitForFunctionOptions { Timeout = 30_000 });
    }

    public async Task DisposeAsync() => await session.DisposeAsync();

    async Task<string> WaitGraph()
    {
        await page.WaitForFunctionAsync("() => ['true', 'error'].includes(document.body.dataset.graphReady)", null, new PageWaitForFunctionOptions { Timeout = 60_000 });
        string state = (await page.GetAttributeAsync("body", "data-graph-ready"))!;
        if (state != "true") Assert.Fail($"{Seed}: the graph request failed: {await page.TextContentAsync("#error-text")}");
        return state;
    }

    async Task<int> DrawnNodes() => int.Parse((await page.GetAttributeAsync("#graph-canvas", "data-nodes"))!, System.Globalization.CultureInfo.InvariantCulture);

    async Task Shot(string name)
    {
        string path = Path.Combine(BrowserSession.Screenshots, name);
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = path, FullPage = true });
        output.WriteLine($"screenshot: {path}");
    }

    [Fact]
    public async Task ComputeHoverClickSlideAndGroupASupernodeThatSurvivesAReload()
    {
        var rng = new Random(Random.Shared.Next());
        string[] prompts = ["Lily and Ben played with a ball. Ben threw it to", "Once upon a time, a little dog ran to the"];
        string prompt = prompts[rng.Next(prompts.Length)];
        output.WriteLine($"{Seed}: \"{prompt}\"");
        Assert.True(await page.IsVisibleAsync("#view-graph"));

        // compute from the page
        await page.FillAsync("#graph-prompt", prompt);
        await page.FillAsync("#graph-max", "40");
        await page.ClickAsync("#graph-compute");
        await WaitGraph();
        string id = await page.EvaluateAsync<string>("window.graphState.view.id");
        Assert.True(File.Exists(Path.Combine(server.Folder, id + ".json")), $"{Seed}: the computed graph was not saved");
        int nodes = await DrawnNodes();
        Assert.True(nodes > server.Encode(prompt).Length, $"{Seed}: {nodes} nodes drawn");
        Assert.Equal(nodes, await page.Locator("#graph-canvas .node").CountAsync());
        Assert.True(await page.Locator("#graph-canvas .node.embedding").CountAsync() == server.Encode(prompt).Length, "one embedding node per token");
        Assert.True(await page.Locator("#graph-canvas line").CountAsync() > 0, "edges are drawn");
        await Shot("graph-computed.png");

        // hover: the tooltip names the node, its label, activation and influence
        var feature = page.Locator("#graph-canvas .node.feature").First;
        string featureId = (await feature.GetAttributeAsync("data-id"))!;
        await feature.HoverAsync();
        await page.WaitForSelectorAsync("#graph-tooltip:not([hidden])");
        string tip = (await page.TextContentAsync("#graph-tooltip"))!;
        Assert.Contains(featureId, tip);
        Assert.Contains("activation", tip);
        Assert.Contains("influence", tip);
        string clerp = await page.EvaluateAsync<string>($"window.graphState.view.nodes.find(n => n.nodeId === '{featureId}').clerp");
        Assert.False(string.IsNullOrEmpty(clerp));
        Assert.Contains(clerp, tip);
        await Shot("graph-hover.png");

        // click: the panel ranks upstream and downstream neighbours by |weight|
        var target = page.Locator("#graph-canvas .node.logit").First;
        await target.ClickAsync();
        await page.WaitForFunctionAsync("() => document.querySelectorAll('#graph-upstream tr').length > 0");
        string targetId = (await target.GetAttributeAsync("data-id"))!;
        Assert.Equal(targetId, await page.GetAttributeAsync("#graph-panel", "data-id"));
        var weights = await page.EvaluateAsync<double[]>("[...document.querySelectorAll('#graph-upstream tr td.num')].map(td => Math.abs(Number(td.textContent)))");
        int expectedUp = await page.EvaluateAsync<int>($"window.graphState.view.links.filter(l => l.target === '{targetId}').length");
        Assert.Equal(expectedUp, weights.Length);
        for (int i = 1; i < weights.Length; i++) Assert.True(weights[i - 1] >= weights[i] - 1e-4, $"{Seed}: upstream not ranked by |weight|: {string.Join(", ", weights)}");
        await Shot("graph-clicked.png");

        // the node-threshold slider re-prunes on the server
        await page.EvalOnSelectorAsync("#graph-node-threshold", "e => { e.value = '0.2'; e.dispatchEvent(new Event('input')); }");
        await WaitGraph();
        int fewer = await DrawnNodes();
        Assert.True(fewer < nodes, $"{Seed}: node threshold 0.2 drew {fewer} nodes, 0.8 drew {nodes}");
        Assert.Equal(0.2, await page.EvaluateAsync<double>("window.graphState.view.nodeThreshold"));
        await page.EvalOnSelectorAsync("#graph-node-threshold", "e => { e.value = '0.8'; e.dispatchEvent(new Event('input')); }");
        await WaitGraph();
        Assert.Equal(nodes, await DrawnNodes());

        // select two nodes (shift-click), group them, reload, load the graph again: the supernode is there
        var features = page.Locator("#graph-canvas .node.feature");
        Assert.True(await features.CountAsync() >= 2, $"{Seed}: fewer than two feature nodes drawn");
        string a = (await features.Nth(0).GetAttributeAsync("data-id"))!, b = (await features.Nth(1).GetAttributeAsync("data-id"))!;
        await features.Nth(0).ClickAsync(new LocatorClickOptions { Modifiers = [KeyboardModifier.Shift] });
        await features.Nth(1).ClickAsync(new LocatorClickOptions { Modifiers = [KeyboardModifier.Shift] });
        Assert.Equal(2, await page.Locator("#graph-canvas .node.selected").CountAsync());
        await page.FillAsync("#graph-group-name", "my group");
        int saves = await page.EvaluateAsync<int>("window.__charts.graph.saves");
        await page.ClickAsync("#graph-group");
        await page.WaitForFunctionAsync($"() => window.__charts.graph.saves > {saves}");
        Assert.Equal(1, await page.Locator("#graph-canvas .supernode").CountAsync());

        await page.ReloadAsync();
        await page.WaitForFunctionAsync("() => document.querySelector('#graph-picker option') !== null", null, new PageWaitForFunctionOptions { Timeout = 30_000 });
        await page.SelectOptionAsync("#graph-picker", id);
        await page.ClickAsync("#graph-load");
        await WaitGraph();
        Assert.Equal("my group", await page.GetAttributeAsync("#graph-canvas .supernode", "data-name"));
        Assert.Equal("1", await page.GetAttributeAsync("#graph-supernodes", "data-count"));
        var saved = FeatureLens.Connections.Graphs.GraphJson.Read(Path.Combine(server.Folder, id + ".json")).QParams.Supernodes.Single();
        Assert.Equal("my group", saved[0]);
        Assert.Equal(new HashSet<string> { a, b }, saved.Skip(1).ToHashSet());
        await Shot("graph-supernode.png");

        lock (session.ConsoleErrors) Assert.True(session.ConsoleErrors.Count == 0, $"{Seed}: console errors: {string.Join(" | ", session.ConsoleErrors)}");
    }
}
