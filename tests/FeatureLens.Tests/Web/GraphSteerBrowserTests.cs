using System.Globalization;
using Microsoft.Playwright;

namespace FeatureLens.Tests.Web;

/// <summary>
/// End-to-end (headless Chromium): a feature node of a saved graph, its "Steer" button, the Steering tab holding that
/// transcoder feature in the graph's set, and a run that generates the baseline and the steered continuation.
/// </summary>
[Collection(GraphServerCollection.Name)]
public sealed class GraphSteerBrowserTests(GraphServer server) : IAsyncLifetime
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

    [Fact]
    public async Task AGraphFeatureNodesSteerButtonOpensTheSteeringTabWithItAndGenerates()
    {
        await page.SelectOptionAsync("#graph-picker", GraphServer.UnprunedId);
        await page.ClickAsync("#graph-load");
        await page.WaitForFunctionAsync("() => ['true', 'error'].includes(document.body.dataset.graphReady)", null, new PageWaitForFunctionOptions { Timeout = 60_000 });
        Assert.True(await page.GetAttributeAsync("body", "data-graph-ready") == "true", $"{Seed}: {await page.TextContentAsync("#error-text")}");

        var features = page.Locator("#graph-canvas .node.feature");
        var node = features.Nth(new Random(Random.Shared.Next()).Next(Math.Min(5, await features.CountAsync())));
        string id = (await node.GetAttributeAsync("data-id"))!;
        await node.ClickAsync();
        await page.WaitForSelectorAsync("#graph-steer");
        Assert.Equal(1, await page.Locator("#graph-panel #graph-steer").CountAsync());
        string hook = await page.EvaluateAsync<string>($"(() => {{ const v = window.graphState.view, n = v.nodes.find(n => n.nodeId === '{id}'); return v.metadata.transcoderList[Number(n.layer)]; }})()");
        int latent = await page.EvaluateAsync<int>($"(() => {{ const n = window.graphState.view.nodes.find(n => n.nodeId === '{id}'); return n.latent ?? n.feature; }})()");

        await page.ClickAsync("#graph-steer");
        Assert.True(await page.IsVisibleAsync("#view-steering"));
        Assert.Equal("#steering", await page.EvaluateAsync<string>("location.hash"));
        Assert.Equal(GraphServer.SetName, await page.InputValueAsync("#steer-set"));
        var row = page.Locator("#steer-terms tbody tr").First;
        Assert.Equal(hook, await row.GetAttributeAsync("data-hook"));
        Assert.Equal(latent.ToString(CultureInfo.InvariantCulture), await row.GetAttributeAsync("data-latent"));

        await page.FillAsync("#steer-prompt", GraphServer.SavedPrompt);
        await page.FillAsync("#steer-max-new", "6");
        await page.ClickAsync("#steer-run");
        await page.WaitForFunctionAsync("() => ['true', 'error'].includes(document.body.dataset.steerReady)", null, new PageWaitForFunctionOptions { Timeout = 60_000 });
        Assert.True(await page.GetAttributeAsync("body", "data-steer-ready") == "true", $"{Seed}: {hook}:{latent}: {await page.TextContentAsync("#error-text")}");
        Assert.Equal(2, await page.Locator("#steer-continuations .continuation").CountAsync());
        Assert.Equal($"{hook}:{latent}", await page.EvaluateAsync<string>("steeringState.result.additions[0].label"));
        Assert.Equal(1, await page.Locator("#steer-watch-charts .steer-watch-chart").CountAsync());
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(BrowserSession.Screenshots, "graph-steer.png"), FullPage = true });
        lock (session.ConsoleErrors) Assert.True(session.ConsoleErrors.Count == 0, $"{Seed}: console errors: {string.Join(" | ", session.ConsoleErrors)}");
    }
}
