using System.Text.Json;
using FeatureLens.Database;
using Microsoft.Playwright;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Web;

/// <summary>
/// End-to-end in Debian's headless Chromium (Playwright): the feature browser (sorting, paging, label and token search)
/// and the feature page (highlighted tokens equal to the stored activations, the Plotly histogram drawn, partner links
/// that navigate), and the tracker's "dashboard" link. No console errors. Screenshots in artifacts/screenshots/.
/// </summary>
[Collection(FeatureDbServerCollection.Name)]
public sealed class FeatureBrowserTests(FeatureDbServer server, ITestOutputHelper output)
{
    string Seed => $"server seed {server.Seed}";

    static async Task WaitReady(IPage page, string what)
    {
        await page.WaitForFunctionAsync("() => ['1', 'error'].includes(document.body.dataset.featuresReady)", null, new PageWaitForFunctionOptions { Timeout = 30_000 });
        string state = (await page.GetAttributeAsync("body", "data-features-ready"))!;
        if (state != "1") Assert.Fail($"{what}: the page failed: {await page.TextContentAsync("#error-text")}");
    }

    static async Task<int[]> Rows(IPage page) =>
        await page.EvaluateAsync<int[]>("[...document.querySelectorAll('#features-table tbody tr')].map(tr => Number(tr.dataset.feature))");

    async Task Shot(IPage page, string name)
    {
        string path = Path.Combine(BrowserSession.Screenshots, name);
        await page.ScreenshotAsync(new PageScreenshotOptions { Path = path, FullPage = true });
        output.WriteLine($"screenshot: {path}");
    }

    [Fact]
    public async Task BrowseSortSearchOpenAFeatureAndFollowAPartner()
    {
        var rng = new Random(Random.Shared.Next());
        var store = server.Store;
        // an SAE with partners somewhere, so the partner link can be followed
        var sae = store.Saes.First(s => Enumerable.Range(0, s.DSae).Any(f => store.Dashboard(s, f).Partners.Length > 0));
        output.WriteLine($"{Seed}: {sae.Hook}");
        await using var session = await BrowserSession.OpenAsync($"{server.Url}/#features/{FeatureDbServer.DbName}/{Uri.EscapeDataString(sae.Hook)}");
        var page = session.Page;
        await WaitReady(page, "the browser");
        int[] Expect(FeatureQuery q) => [.. store.Features(sae, q with { PageSize = 50 }).Rows.Select(r => r.Feature)];

        // default: frequency, descending, first page of 50; then the second page
        Assert.Equal(Expect(new FeatureQuery()), await Rows(page));
        await page.ClickAsync("#fnext");
        await page.WaitForFunctionAsync("() => window.__charts.features.page.page === 1");
        await WaitReady(page, "page 2");
        Assert.Equal(Expect(new FeatureQuery { Page = 1 }), await Rows(page));

        // sort by max (descending), again (ascending), by label
        await page.ClickAsync("#features-table button[data-sort=max]");
        await page.WaitForFunctionAsync("() => window.__charts.features.page.sort === 'max' && window.__charts.features.page.page === 0");
        await WaitReady(page, "sort by max");
        Assert.Equal(Expect(new FeatureQuery { Sort = "max", Order = "desc" }), await Rows(page));
        await page.ClickAsync("#features-table button[data-sort=max]");
        await page.WaitForFunctionAsync("() => window.__charts.features.page.order === 'asc'");
        await WaitReady(page, "sort by max ascending");
        Assert.Equal(Expect(new FeatureQuery { Sort = "max", Order = "asc" }), await Rows(page));
        await page.ClickAsync("#features-table button[data-sort=label]");
        await page.WaitForFunctionAsync("() => window.__charts.features.page.sort === 'label'");
        await WaitReady(page, "sort by label");
        Assert.Equal(Expect(new FeatureQuery { Sort = "label" }), await Rows(page));

        // label search (FTS5)
        string word = FeatureDbServer.LabelWords[rng.Next(FeatureDbServer.LabelWords.Length)];
        await page.FillAsync("#flabel", word);
        int loads = await page.EvaluateAsync<int>("window.featuresState.seq");
        await page.ClickAsync("#fsearch");
        await page.WaitForFunctionAsync($"() => window.featuresState.seq > {loads}");
        await WaitReady(page, $"label search '{word}'");
        Assert.Equal(Expect(new FeatureQuery { Sort = "label", Label = word }), await Rows(page));

        // token search, typed in quotes as a user would: ' Lily' style
        var fired = Enumerable.Range(0, sae.DSae).Select(f => store.Dashboard(sae, f)).First(d => d.Top.Length > 0).Top[0];
        string token = fired.Text[fired.Pos];
        await page.FillAsync("#flabel", "");
        await page.FillAsync("#ftoken", $"'{token}'");
        loads = await page.EvaluateAsync<int>("window.featuresState.seq");
        await page.ClickAsync("#fsearch");
        await page.WaitForFunctionAsync($"() => window.featuresState.seq > {loads}");
        await WaitReady(page, $"token search {JsonSerializer.Serialize(token)}");
        var expected = Expect(new FeatureQuery { Sort = "label", Token = token });
        Assert.NotEmpty(expected);
        Assert.Equal(expected, await Rows(page));
        Assert.Contains(JsonSerializer.Serialize(token), await page.TextContentAsync("#fmatched"));
        await Shot(page, "features-browser.png");

        // open a feature with partners from its row
        await page.FillAsync("#ftoken", "");
        await page.ClickAsync("#fclear");
        await page.WaitForFunctionAsync("() => window.__charts.features.page.total > 0 && document.body.dataset.featuresReady === '1'");
        int feature = Enumerable.Range(0, sae.DSae).First(f => store.Dashboard(sae, f).Partners.Length > 0 && store.Dashboard(sae, f).Top.Length > 0);
        var all = store.Features(sae, new FeatureQuery { Sort = "label", PageSize = FeatureStore.MaxPageSize }).Rows.Select(r => r.Feature).ToList();
        if (all.IndexOf(feature) >= 50) await page.ClickAsync("#fnext");
        await page.WaitForSelectorAsync($"#features-table tbody tr[data-feature='{feature}']");
        await page.ClickAsync($"#features-table tbody tr[data-feature='{feature}'] td:nth-child(3)");
        await page.WaitForFunctionAsync($"() => window.__charts.features.dashboard && window.__charts.features.dashboard.feature === {feature}");
        await WaitReady(page, $"feature {feature}");
        Assert.EndsWith($"#features/{FeatureDbServer.DbName}/{Uri.EscapeDataString(sae.Hook)}/{feature}", page.Url);
        var d = store.Dashboard(sae, feature);

        // top examples: one per example; every token's value is the stored one, the firing token marked and lit
        var examples = page.Locator("#fp-top .example");
        Assert.Equal(d.Top.Length, await examples.CountAsync());
        for (int i = 0; i < d.Top.Length; i++)
        {
            var e = d.Top[i];
            var spans = await examples.Nth(i).EvaluateAsync<string[][]>("el => [...el.querySelectorAll('span.tok')].map(s => [s.dataset.i, s.dataset.act, s.className, s.style.backgroundColor])");
            Assert.NotEmpty(spans);
            foreach (var s in spans)
            {
                int at = int.Parse(s[0], CultureInfo.InvariantCulture);
                float value = float.Parse(s[1], CultureInfo.InvariantCulture);
                Assert.Equal(e.Values[at], value);
                Assert.Equal(at == e.Pos, s[2].Contains("fire", StringComparison.Ordinal));
                Assert.Equal(e.Values[at] > 0, s[3].Length > 0);
            }
            Assert.Contains(spans, s => s[2].Contains("fire", StringComparison.Ordinal));
        }
        Assert.Equal(d.Top.Sum(e => e.Values.Skip(Math.Max(0, e.Pos - 32)).Take(Math.Min(e.Values.Length - 1, e.Pos + 8) - Math.Max(0, e.Pos - 32) + 1).Count(v => v > 0)),
            await page.EvaluateAsync<int>("window.__charts.features.dashboard.highlighted"));
        Assert.Equal(d.Quantiles.Length, await page.Locator("#fp-quantiles .example").CountAsync());
        Assert.Equal(d.Intervals.Length, await page.Locator("#fp-quantiles .interval").CountAsync());

        // the histogram: Plotly drew one bar per stored bin
        await page.WaitForFunctionAsync("() => document.getElementById('fp-hist').dataset.ready === '1'");
        Assert.Equal(d.Histogram.Counts.Length.ToString(CultureInfo.InvariantCulture), await page.GetAttributeAsync("#fp-hist", "data-bars"));
        Assert.Equal(d.Histogram.Counts.Length, await page.Locator("#fp-hist.js-plotly-plot .bars g.point").CountAsync());
        // logit lens and label
        Assert.Equal(d.Logits!.Top.Length, await page.Locator("#fp-pos tbody tr").CountAsync());
        Assert.Equal(d.Logits.Bottom.Length, await page.Locator("#fp-neg tbody tr").CountAsync());
        if (d.Label != null) Assert.Contains(d.Label.Label, await page.TextContentAsync("#fp-label"));
        Assert.Contains(store.Tokens.ToString("N0", CultureInfo.InvariantCulture), await page.TextContentAsync("#fp-meta"));
        // upstream / downstream: computed by the server (its set holds two of the three SAEs), or a note when this SAE is not loaded
        await page.WaitForFunctionAsync("() => ['1', 'note'].includes(document.body.dataset.connectionsReady)", null, new PageWaitForFunctionOptions { Timeout = 60_000 });
        var loaded = server.Saes.Take(2).ToList();
        if (loaded.Any(l => l.Config.Metadata.HookName == sae.Hook))
        {
            Assert.Equal("1", await page.GetAttributeAsync("body", "data-connections-ready"));
            var c = FeatureLens.Connections.FeatureConnections.Compute(store, sae, feature, FeatureLens.Connections.FeatureConnections.Match(store, FeatureLens.Tests.Analysis.AnalysisTestData.Model, loaded));
            foreach (var (table, list) in new[] { ("#fp-upstream", c.Upstream), ("#fp-downstream", c.Downstream) })
            {
                var hrefs = await page.EvaluateAsync<string[]>($"[...document.querySelectorAll('{table} a.partner')].map(a => a.getAttribute('href'))");
                Assert.Equal(list.Select(p => $"#features/{FeatureDbServer.DbName}/{Uri.EscapeDataString(p.Sae)}/{p.Feature}"), hrefs);
                if (list.Length == 0) Assert.Contains(" of this one", await page.TextContentAsync($"{table} tbody"));
            }
            Assert.Contains($"over {c.Examples} top example(s)", await page.TextContentAsync("#fp-connections"));
            Assert.Contains("not loaded in the server", await page.TextContentAsync("#fp-connections"));
            Assert.True(c.Upstream.Length + c.Downstream.Length > 0, $"{Seed}: no partners on either side");
        }
        else
        {
            Assert.Equal("note", await page.GetAttributeAsync("body", "data-connections-ready"));
            Assert.Contains("start serve with --model and the SAE folders to see connections", await page.TextContentAsync("#fp-connections"));
        }
        Assert.Equal($"/api/databases/export?db={FeatureDbServer.DbName}&sae={Uri.EscapeDataString(sae.Hook)}&features={feature}",
            await page.GetAttributeAsync("#fp-export", "href"));
        await Shot(page, "feature-page.png");

        // follow the first partner
        Assert.Equal(d.Partners.Length, await page.Locator("#fp-partners a.partner").CountAsync());
        var partner = d.Partners[0];
        await page.ClickAsync("#fp-partners a.partner >> nth=0");
        await page.WaitForFunctionAsync($"() => window.__charts.features.dashboard.feature === {partner.Feature} && window.__charts.features.dashboard.sae === {JsonSerializer.Serialize(partner.Sae)}");
        await WaitReady(page, "the partner");
        Assert.EndsWith($"/{Uri.EscapeDataString(partner.Sae)}/{partner.Feature}", page.Url);
        Assert.Equal(store.Dashboard(store.Sae(partner.Sae), partner.Feature).Top.Length, await page.Locator("#fp-top .example").CountAsync());
        // back to the browser of that SAE
        await page.ClickAsync("#fp-back");
        await page.WaitForFunctionAsync($"() => !document.getElementById('features-browser').hidden && window.__charts.features.page.sae === {JsonSerializer.Serialize(partner.Sae)}");
        await WaitReady(page, "back to the browser");

        // a feature whose connections this server cannot compute (its SAE is not in the loaded set) is answered 409 and
        // shown as a note; Chromium logs every 4xx fetch as a console error, so that one is expected, with the note shown
        const string Conflict = "Failed to load resource: the server responded with a status of 409 (Conflict)";
        if (session.ConsoleErrors.Contains(Conflict))
            Assert.Contains("start serve with --model and the SAE folders to see connections", await page.TextContentAsync("#fp-connections"));
        var errors = session.ConsoleErrors.Where(e => e != Conflict).ToList();
        Assert.True(errors.Count == 0, $"{Seed}: console errors: {string.Join(" | ", errors)}");
    }

    [Fact]
    public async Task TheTrackersFeaturePanelLinksToTheFeaturePage()
    {
        var sae = server.Saes[0];
        string hook = sae.Config.Metadata.HookName;
        int feature = new Random(Random.Shared.Next()).Next(sae.DSae);
        await using var session = await BrowserSession.OpenAsync(server.Url + "/");
        var page = session.Page;
        await page.WaitForFunctionAsync("() => document.body.dataset.ready === '1'", null, new PageWaitForFunctionOptions { Timeout = 60_000 });
        await page.EvaluateAsync($"() => import('/js/views/tracker.js').then(m => m.showFeature({{ sae: {JsonSerializer.Serialize(hook)}, feature: {feature} }}))");
        await page.WaitForSelectorAsync("#feature-meta a.dashboard-link", new PageWaitForSelectorOptions { Timeout = 30_000 });
        Assert.Equal($"#features/{FeatureDbServer.DbName}/{Uri.EscapeDataString(hook)}/{feature}", await page.GetAttributeAsync("#feature-meta a.dashboard-link", "href"));
        await page.ClickAsync("#feature-meta a.dashboard-link");
        await page.WaitForFunctionAsync($"() => window.__charts.features.dashboard && window.__charts.features.dashboard.feature === {feature}", null, new PageWaitForFunctionOptions { Timeout = 30_000 });
        await WaitReady(page, "the linked feature page");
        Assert.True(await page.IsVisibleAsync("#view-features"));
        Assert.Contains($"feature {feature}", await page.TextContentAsync("#fp-title"));
        Assert.True(session.ConsoleErrors.Count == 0, $"{Seed}: console errors: {string.Join(" | ", session.ConsoleErrors)}");
    }
}
