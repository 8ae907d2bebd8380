using System.Diagnostics;
using FeatureLens.Database;
using FeatureLens.Tests.Cli;

namespace FeatureLens.Tests.Database;

/// <summary>Shards merged == the unsharded scan (1–7 shards, uneven splits); a scan killed with SIGKILL resumes to the same database.</summary>
public class ScanShardTests
{
    [Fact]
    public void MergedShardsEqualTheUnshardedScanForOneToSevenShards()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var tmp = new TempDir();
        string corpus = ScanTestData.Corpus(rng, tmp.Path);
        var set = ScanTestData.Set(ScanTestData.Saes(rng, dSae: 32));
        var settings = ScanTestData.Settings(rng) with { Tokens = rng.Next(1200, 1800) };
        string whole = tmp.File("whole.sqlite");
        CorpusScan.Run(set, [], [corpus], settings, ShardSpec.All, whole);
        string expected = ScanTestData.Dump(whole);
        long blocks;
        using (var store = FeatureStore.Open(whole)) blocks = long.Parse(store.Meta["stream_blocks"], CultureInfo.InvariantCulture);
        Assert.True(blocks >= 7, $"seed {seed}: only {blocks} blocks");
        bool uneven = false;
        for (int n = 1; n <= 7; n++)
        {
            uneven |= blocks % n != 0;
            var shards = new List<string>();
            for (int i = 0; i < n; i++)
            {
                string p = tmp.File($"s{n}-{i}.sqlite");
                CorpusScan.Run(set, [], [corpus], settings, new ShardSpec(i, n), p, asShard: true);
                shards.Add(p);
            }
            // any order of the inputs
            var order = shards.OrderBy(_ => rng.Next()).ToList();
            string merged = tmp.File($"merged{n}.sqlite");
            DatabaseMerge.Run(merged, order);
            string got = ScanTestData.Dump(merged);
            if (got != expected) Assert.Fail($"seed {seed}: {n} shards merged differ from the unsharded scan at:\n{FirstDifference(expected, got)}");
            using var m = FeatureStore.Open(merged);
            Assert.Equal(n.ToString(CultureInfo.InvariantCulture), m.Meta["merged_from"]);
        }
        Assert.True(uneven, $"seed {seed}: {blocks} blocks split evenly for every shard count");
    }

    internal static string FirstDifference(string a, string b)
    {
        var la = a.Split('\n'); var lb = b.Split('\n');
        for (int i = 0; i < Math.Min(la.Length, lb.Length); i++)
            if (la[i] != lb[i]) return $"line {i}: expected '{la[i]}', got '{lb[i]}'";
        return $"lengths {la.Length} vs {lb.Length}";
    }

    [Fact]
    public void AScanKilledWithSigkillResumesToTheSameDatabase()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var tmp = new TempDir();
        string corpus = ScanTestData.Corpus(rng, tmp.Path, documents: 120);
        var saeDirs = ScanTestData.SaveSaes(ScanTestData.Saes(rng, dSae: 32), tmp.File("saes"));
        string ctx = rng.Next(24, 40).ToString(CultureInfo.InvariantCulture);
        string[] Args(string db) =>
        [
            "scan", "--model", FeatureLens.Tests.Analysis.AnalysisTestData.Stories, .. saeDirs.SelectMany(d => new[] { "--sae", d }), "--corpus", corpus, "--tokens", "4000",
            "--context", ctx, "--batch", "2", "--partner-tokens", "600", "--db", db,
        ];
        string whole = tmp.File("whole.sqlite");
        var r = CliTests.Run(Args(whole));
        Assert.True(r.ExitCode == 0, r.Stderr);

        string killed = tmp.File("killed.sqlite");
        var psi = CliTests.StartInfo(Args(killed));
        using (var p = Process.Start(psi)!)
        {
            _ = p.StandardOutput.ReadToEndAsync(); _ = p.StandardError.ReadToEndAsync();
            // wait until a few blocks are committed, then kill -9 mid-scan
            var watch = Stopwatch.StartNew();
            while (CommittedBlocks(killed + ".partial") < 3 && !p.HasExited && watch.Elapsed < TimeSpan.FromSeconds(90)) Thread.Sleep(20);
            Assert.False(p.HasExited, $"seed {seed}: the scan finished before it could be killed");
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
        }
        Assert.False(File.Exists(killed), "a killed scan must not leave a database in place");
        Assert.True(File.Exists(killed + ".partial"));
        long before = CommittedBlocks(killed + ".partial");
        r = CliTests.Run(Args(killed));
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("resumed", r.Text, StringComparison.Ordinal);
        Assert.False(File.Exists(killed + ".partial"));
        string want = ScanTestData.Dump(whole), got = ScanTestData.Dump(killed);
        if (want != got) Assert.Fail($"seed {seed}: resumed after {before} blocks, differs from the uninterrupted scan at {FirstDifference(want, got)}");
        // a second run of a finished scan does nothing
        r = CliTests.Run(Args(killed));
        Assert.True(r.ExitCode == 0, r.Stderr);
        Assert.Contains("already complete", r.Text, StringComparison.Ordinal);
    }

    static long CommittedBlocks(string path)
    {
        if (!File.Exists(path)) return 0;
        try
        {
            using var db = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path};Mode=ReadOnly;Pooling=False");
            db.Open();
            using var cmd = db.CreateCommand();
            cmd.CommandText = "SELECT count(*) FROM blocks";
            return Convert.ToInt64(cmd.ExecuteScalar(), CultureInfo.InvariantCulture);
        }
        catch (Microsoft.Data.Sqlite.SqliteException) { return 0; } // not created yet
    }
}
