using System.Text.Json;
using FeatureLens.Database;
using FeatureLens.Tests.Analysis;
using FeatureLens.Tests.Cli;

namespace FeatureLens.Tests.Database;

/// <summary>The scan, merge and feature commands end to end, and bad input: clear errors, exit 1, nothing half-written in place.</summary>
public class ScanCliTests
{
    static string[] ScanArgs(IEnumerable<string> saeDirs, string corpus, string db, params string[] extra) =>
    [
        "scan", "--model", AnalysisTestData.Stories, .. saeDirs.SelectMany(d => new[] { "--sae", d }), "--corpus", corpus, "--tokens", "1200",
        "--context", "32", "--batch", "4", "--partner-tokens", "400", "--db", db, .. extra,
    ];

    [Fact]
    public void FeatureJsonHoldsEveryDashboardField()
    {
        var rng = new Random(Random.Shared.Next());
        using var tmp = new TempDir();
        string corpus = ScanTestData.Corpus(rng, tmp.Path);
        var saes = ScanTestData.Saes(rng, dSae: 24);
        var dirs = ScanTestData.SaveSaes(saes, tmp.File("saes"));
        string db = tmp.File("f.sqlite");
        string prompts = Path.Combine(TestPaths.RepoRoot, "data", "prompts", "stories260K-labelled.jsonl");
        var r = CliTests.Run(ScanArgs(dirs, corpus, db, "--label-prompts", prompts));
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("scanned", r.Text, StringComparison.Ordinal);
        // labels computed from the prompt set are stored and searchable
        using (var c = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={db};Mode=ReadOnly;Pooling=False"))
        {
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = "SELECT (SELECT count(*) FROM labels), (SELECT count(*) FROM label_search WHERE label_search MATCH 'dialogue OR animals OR nature OR food')";
            using var rd = cmd.ExecuteReader();
            rd.Read();
            Assert.True(rd.GetInt64(0) > 0, "no labels stored");
            Assert.True(rd.GetInt64(1) > 0, "the FTS5 label index finds nothing");
        }
        // the most frequent latent of the first SAE
        int feature;
        using (var store = FeatureStore.Open(db))
        {
            var s = store.Saes[0];
            feature = Enumerable.Range(0, s.DSae).OrderByDescending(j => store.Dashboard(s, j).Count).First();
        }
        string json = tmp.File("f.json");
        r = CliTests.Run("feature", "--db", db, "--sae", "blocks.0.hook_resid_post", "--feature", feature.ToString(CultureInfo.InvariantCulture), "--json", json);
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("top examples", r.Text, StringComparison.Ordinal);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.True(root.GetProperty("frequency").GetDouble() > 0);
        Assert.True(root.GetProperty("max").GetDouble() > 0);
        Assert.True(root.GetProperty("mean").GetDouble() > 0);
        Assert.False(string.IsNullOrEmpty(root.GetProperty("label").GetProperty("label").GetString()));
        foreach (var list in new[] { "top", "quantiles" })
        {
            Assert.True(root.GetProperty(list).GetArrayLength() > 0, list);
            foreach (var e in root.GetProperty(list).EnumerateArray())
            {
                var tokens = e.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()).ToArray();
                var values = e.GetProperty("values").EnumerateArray().Select(t => t.GetSingle()).ToArray();
                int pos = e.GetProperty("pos").GetInt32();
                Assert.Equal(1, tokens[0]); // BOS of stories260K's tokenizer
                Assert.Equal(tokens.Length, values.Length);
                Assert.Equal(e.GetProperty("activation").GetSingle(), values[pos]);
            }
        }
        var hist = root.GetProperty("histogram");
        Assert.Equal(hist.GetProperty("edges").GetArrayLength(), hist.GetProperty("counts").GetArrayLength() + 1);
        foreach (var side in new[] { "top", "bottom" })
            foreach (var t in root.GetProperty("logits").GetProperty(side).EnumerateArray()) { t.GetProperty("token").GetInt32(); t.GetProperty("value").GetSingle(); }
        foreach (var p in root.GetProperty("partners").EnumerateArray())
        {
            Assert.StartsWith("blocks.", p.GetProperty("sae").GetString(), StringComparison.Ordinal);
            p.GetProperty("feature").GetInt32();
            Assert.InRange(p.GetProperty("r").GetDouble(), 0, 1);
        }
    }

    [Fact]
    public void BadInputGivesClearErrorsAndWritesNothingInPlace()
    {
        var rng = new Random(Random.Shared.Next());
        using var tmp = new TempDir();
        string corpus = ScanTestData.Corpus(rng, tmp.Path);
        var dirsA = ScanTestData.SaveSaes(ScanTestData.Saes(rng, dSae: 16), tmp.File("saesA"));
        var dirsB = ScanTestData.SaveSaes(ScanTestData.Saes(rng, dSae: 16), tmp.File("saesB"));

        void Fails(string[] args, string expected, params string[] absent)
        {
            var r = CliTests.Run(args);
            Assert.True(r.ExitCode == 1, $"{string.Join(" ", args)}: exit {r.ExitCode}\n{r.Stderr}");
            Assert.Contains(expected, r.Stderr, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", r.Stderr, StringComparison.Ordinal); // no stack trace
            foreach (var f in absent) Assert.False(File.Exists(f), $"{f} was written");
        }

        // a missing corpus
        string none = tmp.File("none.sqlite");
        Fails(ScanArgs(dirsA, tmp.File("missing.txt"), none), "corpus file not found", none, none + ".partial");
        // not SQLite, and a foreign SQLite file
        string junk = tmp.File("junk.sqlite");
        File.WriteAllBytes(junk, [.. Enumerable.Range(0, 4096).Select(_ => (byte)rng.Next(256))]);
        Fails(["feature", "--db", junk, "--sae", "0", "--feature", "0"], "not a readable SQLite database");
        string foreign = tmp.File("foreign.sqlite");
        using (var c = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={foreign};Pooling=False"))
        {
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = "CREATE TABLE meta(key TEXT, value TEXT); INSERT INTO meta VALUES('format', 'something else')";
            cmd.ExecuteNonQuery();
        }
        Fails(["feature", "--db", foreign, "--sae", "0", "--feature", "0"], "not a FeatureLens feature database");

        // scans and shards of A
        string a = tmp.File("a.sqlite");
        Assert.Equal(0, CliTests.Run(ScanArgs(dirsA, corpus, a)).ExitCode);
        string a0 = tmp.File("a0.sqlite"), a1 = tmp.File("a1.sqlite"), b1 = tmp.File("b1.sqlite");
        Assert.Equal(0, CliTests.Run(ScanArgs(dirsA, corpus, a0, "--shard", "0/2")).ExitCode);
        Assert.Equal(0, CliTests.Run(ScanArgs(dirsA, corpus, a1, "--shard", "1/2")).ExitCode);
        Assert.Equal(0, CliTests.Run(ScanArgs(dirsB, corpus, b1, "--shard", "1/2")).ExitCode);

        // a database of another scan in the way; a partial scan of another SAE set
        Fails(ScanArgs(dirsB, corpus, a), "differs in the SAEs");
        string b = tmp.File("b.sqlite");
        File.Copy(a, b + ".partial");
        Fails(ScanArgs(dirsB, corpus, b), "an interrupted scan of something else", b);
        // shard files are not dashboards until merged
        Fails(["feature", "--db", a0, "--sae", "0", "--feature", "0"], "merge the shards first");
        // merges: shards of different scans, a missing shard, a shard twice, an unfinished one
        string m = tmp.File("m.sqlite");
        Fails(["merge", "--out", m, a0, b1], "shards of different scans", m, m + ".partial");
        Fails(["merge", "--out", m, a0], "needs all 2 shards; missing 1/2", m);
        Fails(["merge", "--out", m, a0, a0], "given twice", m);
        string unfinished = tmp.File("unfinished.sqlite");
        File.Copy(a1, unfinished);
        using (var c = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={unfinished};Pooling=False"))
        {
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = "UPDATE meta SET value = 'scanning' WHERE key = 'status'";
            cmd.ExecuteNonQuery();
        }
        Fails(["merge", "--out", m, a0, unfinished], "not complete", m);
        // the good merge, then a second one onto it
        Assert.Equal(0, CliTests.Run("merge", "--out", m, a1, a0).ExitCode);
        Fails(["merge", "--out", m, a0, a1], "already exists");
        // dashboards: an unknown SAE, a latent out of range
        Fails(["feature", "--db", m, "--sae", "blocks.7.hook_resid_post", "--feature", "0"], "has no SAE 'blocks.7.hook_resid_post'");
        Fails(["feature", "--db", m, "--sae", "blocks.0.hook_resid_post", "--feature", "16"], "outside [0, 16)");
        // export: a latent out of range, an unknown SAE; nothing written
        string export = tmp.File("export.json");
        Fails(["export", "--db", m, "--sae", "blocks.0.hook_resid_post", "--features", "16", "--out", export], "outside [0, 16)", export);
        Fails(["export", "--db", m, "--sae", "blocks.7.hook_resid_post", "--all", "--out", export], "has no SAE", export);
        Assert.Equal(0, CliTests.Run("export", "--db", m, "--sae", "blocks.0.hook_resid_post", "--features", "1,2", "--out", export).ExitCode);
        Assert.True(File.Exists(export));
        // bad settings
        Fails(ScanArgs(dirsA, corpus, none, "--shard", "2/2"), "--shard expects I/N", none);
        Fails([.. ScanArgs(dirsA, corpus, none)[..^2], "--db", none, "--batch", "0"], "--batch", none);
    }
}
