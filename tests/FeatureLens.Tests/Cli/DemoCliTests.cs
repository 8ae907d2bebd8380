using System.Diagnostics;
using System.Net.Http.Json;
using System.Text.Json;

namespace FeatureLens.Tests.Cli;

/// <summary>featurelens demo: suite, labels and the tracker in one command (a small suite, a real server).</summary>
public class DemoCliTests
{
    static string Stories => Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin");

    [Fact]
    public async Task DemoBuildsASuiteLabelsItAndServesTheTracker()
    {
        using var dir = new TempDir();
        int port = 20000 + Random.Shared.Next(20000);
        var psi = CliTests.StartInfo("demo", "--model", Stories, "--out", dir.File("suite"), "--port", port.ToString(CultureInfo.InvariantCulture),
            "--documents", "48", "--tokens", "24576", "--d-sae", "128", "--k", "8");
        using var p = new Process { StartInfo = psi };
        var listening = new TaskCompletionSource();
        var output = new System.Text.StringBuilder();
        p.OutputDataReceived += (_, e) => { if (e.Data == null) return; lock (output) output.AppendLine(e.Data); if (e.Data.Contains("listening on")) listening.TrySetResult(); };
        p.ErrorDataReceived += (_, e) => { if (e.Data != null) lock (output) output.AppendLine(e.Data); };
        p.Start(); p.BeginOutputReadLine(); p.BeginErrorReadLine();
        try
        {
            var done = await Task.WhenAny(listening.Task, Task.Delay(180_000));
            Assert.True(done == listening.Task, "demo never started listening:\n" + output);
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") };
            var sets = JsonDocument.Parse(await http.GetStringAsync("/api/sets")).RootElement.GetProperty("sets")[0];
            Assert.Equal(5, sets.GetProperty("saes").GetArrayLength());
            Assert.True(sets.GetProperty("labels").GetInt32() > 0, "no feature got a label");
            var resp = await http.PostAsJsonAsync("/api/track", new { set = sets.GetProperty("name").GetString(), text = "Once upon a time, Tom saw a big dog.", top = 5 });
            Assert.True(resp.IsSuccessStatusCode, await resp.Content.ReadAsStringAsync());
            Assert.True(File.Exists(Path.Combine(dir.File("suite"), "labels.csv")));
            // the held-out corpus scanned into a feature database, served on the Features page
            var dbs = JsonDocument.Parse(await http.GetStringAsync("/api/databases")).RootElement;
            Assert.True(File.Exists(Path.Combine(dir.File("suite"), "features.sqlite")), "no feature database:\n" + output);
            Assert.Contains("features", dbs.GetRawText(), StringComparison.Ordinal);
            Assert.Contains("blocks.4.hook_resid_post", dbs.GetRawText(), StringComparison.Ordinal);
        }
        finally
        {
            if (!p.HasExited)
            {
                using (var term = Process.Start("kill", ["-TERM", p.Id.ToString(CultureInfo.InvariantCulture)])!) term.WaitForExit();
                if (!p.WaitForExit(30_000)) p.Kill(true);
            }
        }
        Assert.Equal(0, p.ExitCode);
    }
}
