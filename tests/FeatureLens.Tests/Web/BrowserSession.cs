using Microsoft.Playwright;

namespace FeatureLens.Tests.Web;

/// <summary>
/// Debian's headless Chromium driven by Playwright (no downloaded browser), one page at 1400×900 whose console errors and
/// page errors are collected, opened on a URL. Screenshots go to artifacts/screenshots/ under the repository root.
/// </summary>
internal sealed class BrowserSession : IAsyncDisposable
{
    const string Chromium = "/usr/bin/chromium";
    IPlaywright _playwright = null!;
    IBrowser _browser = null!;

    public IPage Page { get; private set; } = null!;
    /// <summary>Console errors and uncaught page errors seen so far.</summary>
    public List<string> ConsoleErrors { get; } = [];

    public static string Screenshots
    {
        get { string dir = Path.Combine(TestPaths.RepoRoot, "artifacts", "screenshots"); Directory.CreateDirectory(dir); return dir; }
    }

    public static async Task<BrowserSession> OpenAsync(string url)
    {
        Assert.True(File.Exists(Chromium), $"{Chromium} is missing: install Debian's chromium (apt-get install chromium); scripts/test.sh does so when run as root");
        var s = new BrowserSession();
        s._playwright = await Playwright.CreateAsync();
        s._browser = await s._playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = Chromium,
            Headless = true,
            Args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
        });
        s.Page = await s._browser.NewPageAsync(new BrowserNewPageOptions { ViewportSize = new ViewportSize { Width = 1400, Height = 900 } });
        s.Page.Console += (_, m) => { if (m.Type == "error") lock (s.ConsoleErrors) s.ConsoleErrors.Add(m.Text); };
        s.Page.PageError += (_, e) => { lock (s.ConsoleErrors) s.ConsoleErrors.Add("page error: " + e); };
        await s.Page.GotoAsync(url);
        return s;
    }

    public async ValueTask DisposeAsync()
    {
        if (_browser != null) await _browser.DisposeAsync();
        _playwright?.Dispose();
    }
}
