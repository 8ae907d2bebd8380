using FeatureLens.Tests.Analysis;
using FeatureLens.Tests.Cli;
using FeatureLens.Tests.Database;

namespace FeatureLens.Tests.Slurm;

/// <summary>
/// The real sharded scan on the real single-node cluster: <c>featurelens scan --slurm 4 --wait</c> submits a 4-task job
/// array of scan shards and the dependent merge; the merged database equals the unsharded scan's, table by table.
/// </summary>
[Collection(SlurmCollection.Name)]
public class SlurmScanTests(SlurmCluster cluster)
{
    [SlurmFact]
    public void AFourShardSlurmScanMergesToTheUnshardedDatabase()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var tmp = new TempDir();
        string corpus = ScanTestData.Corpus(rng, tmp.Path);
        var saeDirs = ScanTestData.SaveSaes(ScanTestData.Saes(rng, dSae: 32), tmp.File("saes"));
        string[] Args(string db) =>
        [
            "scan", "--model", AnalysisTestData.Stories, .. saeDirs.SelectMany(d => new[] { "--sae", d }), "--corpus", corpus,
            "--tokens", rng.Next(1500, 2500).ToString(CultureInfo.InvariantCulture), "--context", "32", "--batch", "3", "--partner-tokens", "500", "--db", db,
        ];
        var args = Args(tmp.File("whole.sqlite"));
        var r = CliTests.Run(args);
        Assert.True(r.ExitCode == 0, r.Stderr);

        string merged = tmp.File("slurm.sqlite");
        var slurmArgs = args.ToArray();
        slurmArgs[^1] = merged;
        r = CliTests.RunWithEnv(new Dictionary<string, string>(cluster.Environment), [.. slurmArgs, "--slurm", "4", "--wait"]);
        Assert.True(r.ExitCode == 0, $"seed {seed}: {r.Stderr}\n{r.Text}\n{cluster.Logs()}");
        Assert.Contains("4 shards", r.Text, StringComparison.Ordinal);
        for (int i = 0; i < 4; i++) Assert.True(File.Exists(Path.Combine(merged + ".shards", $"shard-{i}.sqlite")), $"shard {i} missing");
        string want = ScanTestData.Dump(tmp.File("whole.sqlite")), got = ScanTestData.Dump(merged);
        if (want != got) Assert.Fail($"seed {seed}: the Slurm scan differs from the unsharded scan at {ScanShardTests.FirstDifference(want, got)}");
    }
}
