using System.Text;
using FeatureLens.Database;

namespace FeatureLens.Tests.Slurm;

/// <summary>
/// The sharded scan's Slurm side on a real single-node cluster: SlurmSubmit submits scripts/slurm/scan.sbatch as a
/// job array and merge.sbatch as a dependent job, with FEATURELENS a stand-in command that records the arguments it
/// was given (the scan itself is tested on its own; this tests the argument passing, the sharding and the order).
/// </summary>
[Collection(SlurmCollection.Name)]
public class SlurmSubmitTests(SlurmCluster cluster)
{
    /// <summary>A stand-in for featurelens: writes its arguments (NUL-separated) to TARGET.args, where TARGET is the value
    /// of --db (scan) or --out (merge), its Slurm ids to TARGET.slurm, a time stamp to TARGET.end (scan, after a second's
    /// work) or TARGET.start (merge), then TARGET itself. Fails the scan of shard $FAKE_FAIL_SHARD on purpose.</summary>
    internal const string FakeFeatureLens = """
        #!/usr/bin/env bash
        set -euo pipefail
        sub=$1
        target=""
        prev=""
        for a in "$@"; do
          if [[ $prev == --db || $prev == --out ]]; then target=$a; fi
          prev=$a
        done
        [[ -n $target ]] || { echo "fake featurelens: no --db or --out in: $*" >&2; exit 9; }
        printf '%s\0' "$@" > "$target.args"
        echo "${SLURM_JOB_ID:-} ${SLURM_ARRAY_TASK_ID:-}" > "$target.slurm"
        case $sub in
          scan)
            if [[ " $* " == *" --shard ${FAKE_FAIL_SHARD:-none} "* ]]; then echo "fake scan: failing on purpose" >&2; exit 3; fi
            sleep 1
            date +%s.%N > "$target.end"
            echo "shard" > "$target" ;;
          merge)
            date +%s.%N > "$target.start"
            echo "merged" > "$target" ;;
          *) echo "fake featurelens: unknown command $sub" >&2; exit 9 ;;
        esac
        echo "fake featurelens $sub done"
        """;

    /// <summary>Writes the stand-in into a folder whose name has a space; returns the two-word command that runs it
    /// (as "dotnet featurelens.dll" is two words).</summary>
    internal static string[] WriteFake(string folder)
    {
        string dir = Path.Combine(folder, "fake featurelens");
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, "featurelens.sh");
        File.WriteAllText(path, FakeFeatureLens + "\n");
        return ["/bin/bash", path];
    }

    /// <summary>Scan arguments with spaces, quotes, $, globs, ; and non-ASCII: any shell re-parsing would change them.</summary>
    internal static string[] AwkwardScanArguments(Random rng, string folder) =>
    [
        "--model", Path.Combine(folder, $"my model {rng.Next(1000)}"),
        "--sae", "sae $HOME *", "--sae", $"it's \"quoted\" {rng.Next(1000)}",
        "--corpus", $"a;b|c & d > e {rng.Next(1000)}.txt", "--corpus", "ünïcødé ‘corpus’",
        "--tokens", rng.Next(1000, 1_000_000).ToString(CultureInfo.InvariantCulture),
        "--context", rng.Next(8, 512).ToString(CultureInfo.InvariantCulture),
    ];

    internal static string[] ReadArgs(string path)
    {
        Assert.True(File.Exists(path), $"{path} was not written");
        string text = File.ReadAllText(path, Encoding.UTF8);
        Assert.EndsWith("\0", text, StringComparison.Ordinal);
        return text[..^1].Split('\0');
    }

    private static double Stamp(string path) => double.Parse(File.ReadAllText(path).Trim(), CultureInfo.InvariantCulture);

    [SlurmFact]
    public void A_four_shard_scan_array_and_its_merge_run_with_exact_arguments_shards_in_index_order_merge_last()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var tmp = new TempDir();
        string work = Path.Combine(tmp.Path, $"scan work {seed}");
        string db = Path.Combine(tmp.Path, $"merged db {seed}.sqlite");
        string[] featurelens = WriteFake(tmp.Path);
        string[] scanArgs = AwkwardScanArguments(rng, tmp.Path);
        const int n = 4;
        var slurm = new SlurmSubmit(cluster.Environment);
        var jobs = slurm.Submit(new SlurmScanRequest { FeatureLens = featurelens, ScanArguments = scanArgs, Shards = n, Database = db, WorkFolder = work });
        string ctx = $"seed {seed}, scan job {jobs.ScanJobId}, merge job {jobs.MergeJobId}, work folder {work}";
        var seen = new List<string>();
        try
        {
            slurm.Wait(jobs, TimeSpan.FromSeconds(120), TimeSpan.FromMilliseconds(250), seen.Add);
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException)
        {
            Assert.Fail($"{ctx}: {e.Message}\n{cluster.Logs()}");
        }
        Assert.NotEqual(jobs.ScanJobId, jobs.MergeJobId);
        Assert.Equal(Path.GetFullPath(db), jobs.Database);

        // every shard ran once, as array task I, with the scan arguments untouched and its own --shard I/N and --db
        var shardEnds = new double[n];
        for (int i = 0; i < n; i++)
        {
            string shard = jobs.ShardPath(i);
            Assert.Equal(Path.Combine(work, $"shard-{i}.sqlite"), shard);
            string[] expected = ["scan", .. scanArgs, "--shard", $"{i}/{n}", "--db", shard];
            Assert.Equal(expected, ReadArgs(shard + ".args"));
            Assert.Equal($"{i}", File.ReadAllText(shard + ".slurm").Trim().Split(' ')[1]);
            Assert.Equal("shard", File.ReadAllText(shard).Trim());
            shardEnds[i] = Stamp(shard + ".end");
            string log = File.ReadAllText(jobs.ScanLog(i));
            Assert.Contains("fake featurelens scan done", log, StringComparison.Ordinal);
            Assert.Contains($"shard {i}/{n} done", log, StringComparison.Ordinal);
        }
        Assert.False(File.Exists(Path.Combine(work, $"shard-{n}.sqlite")), ctx);

        // the merge ran once, after every shard, over the shards in index order
        string[] merge = ["merge", "--out", jobs.Database, .. Enumerable.Range(0, n).Select(jobs.ShardPath)];
        Assert.Equal(merge, ReadArgs(db + ".args"));
        Assert.Equal("merged", File.ReadAllText(db).Trim());
        double mergeStart = Stamp(db + ".start");
        Assert.True(mergeStart >= shardEnds.Max(), $"{ctx}: the merge started at {mergeStart}, before the last shard ended ({shardEnds.Max()})");
        Assert.Contains($"merged {n} shards into {jobs.Database}", File.ReadAllText(jobs.MergeLog), StringComparison.Ordinal);

        // Slurm's own account agrees: four completed tasks 0..3, then the merge
        var tasks = slurm.Query(jobs.ScanJobId);
        Assert.Equal(Enumerable.Range(0, n), tasks.Select(t => t.ArrayTaskId ?? -1).Order());
        Assert.All(tasks, t => Assert.True(t.Completed, $"{ctx}: task {t.ArrayTasks} {t.State}"));
        var mergeJob = Assert.Single(slurm.Query(jobs.MergeJobId));
        Assert.True(mergeJob.Completed, ctx);
        Assert.True(mergeJob.Start >= tasks.Max(t => t.End), $"{ctx}: merge started {mergeJob.Start}, last task ended {tasks.Max(t => t.End)}");

        // the work folder holds the scripts as they ran; the waiting reported progress
        Assert.Equal(SlurmSubmit.ScriptText("scan.sbatch"), File.ReadAllText(Path.Combine(work, "scan.sbatch")));
        Assert.Equal(SlurmSubmit.ScriptText("merge.sbatch"), File.ReadAllText(Path.Combine(work, "merge.sbatch")));
        Assert.Contains(seen, s => s.StartsWith("scan ", StringComparison.Ordinal));
    }

    [SlurmFact]
    public void A_failing_shard_fails_the_wait_naming_the_shard_and_its_log_and_the_merge_never_runs()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int n = rng.Next(2, 4), bad = rng.Next(n);
        using var tmp = new TempDir();
        string db = Path.Combine(tmp.Path, "merged.sqlite");
        var env = new Dictionary<string, string>(cluster.Environment) { ["FAKE_FAIL_SHARD"] = $"{bad}/{n}" };
        var slurm = new SlurmSubmit(env);
        var jobs = slurm.Submit(new SlurmScanRequest
        {
            FeatureLens = WriteFake(tmp.Path), ScanArguments = AwkwardScanArguments(rng, tmp.Path), Shards = n, Database = db,
        });
        Assert.Equal(db + ".shards", jobs.WorkFolder); // the default work folder
        string ctx = $"seed {seed}: {n} shards, shard {bad} fails; scan job {jobs.ScanJobId}, merge job {jobs.MergeJobId}";
        var e = Assert.Throws<InvalidOperationException>(() => slurm.Wait(jobs, TimeSpan.FromSeconds(120), TimeSpan.FromMilliseconds(250)));
        Assert.Contains($"shard {bad}: FAILED (exit code 3:0; log {jobs.ScanLog(bad)})", e.Message, StringComparison.Ordinal);
        Assert.Contains($"merge job {jobs.MergeJobId}", e.Message, StringComparison.Ordinal);
        Assert.Contains("fake scan: failing on purpose", File.ReadAllText(jobs.ScanLog(bad)), StringComparison.Ordinal);
        Assert.Contains($"shard {bad}/{n} failed (exit code 3)", File.ReadAllText(jobs.ScanLog(bad)), StringComparison.Ordinal);

        // the merge job is cancelled (never left pending on a dependency that cannot be met) and wrote nothing
        var clock = System.Diagnostics.Stopwatch.StartNew();
        SlurmJobRecord merge;
        while (!(merge = Assert.Single(slurm.Query(jobs.MergeJobId))).Failed && clock.Elapsed < TimeSpan.FromSeconds(30)) Thread.Sleep(200);
        Assert.True(merge.State == "CANCELLED", $"{ctx}: merge {merge.State} ({merge.Reason})");
        Assert.False(File.Exists(db), ctx);
        Assert.False(File.Exists(jobs.MergeLog), ctx);
    }

    [SlurmFact]
    public void An_sbatch_failure_surfaces_sbatch_s_own_error()
    {
        using var tmp = new TempDir();
        var slurm = new SlurmSubmit(cluster.Environment);
        string partition = "no-such-partition-" + Random.Shared.Next(1000).ToString(CultureInfo.InvariantCulture);
        var e = Assert.Throws<InvalidOperationException>(() => slurm.Submit(new SlurmScanRequest
        {
            FeatureLens = WriteFake(tmp.Path), ScanArguments = ["--model", "m"], Shards = 2, Database = tmp.File("db.sqlite"),
            WorkFolder = tmp.File("work"), SbatchOptions = [$"--partition={partition}"],
        }));
        Assert.StartsWith("sbatch failed submitting the scan job array (exit code 1): ", e.Message, StringComparison.Ordinal);
        Assert.Contains("invalid partition", e.Message, StringComparison.OrdinalIgnoreCase);
    }
}
