using System.Diagnostics;
using FeatureLens.Database;

namespace FeatureLens.Tests.Slurm;

/// <summary>The Slurm scripts run directly by bash with the variables Slurm sets (no cluster, no root), and
/// SlurmSubmit's checks that need no cluster.</summary>
public class SlurmScriptTests
{
    private static string Script(string name) => Path.Combine(TestPaths.RepoRoot, "scripts", "slurm", name);

    private static (int ExitCode, string Stdout, string Stderr) Bash(IReadOnlyDictionary<string, string> env, params string[] args)
    {
        var psi = new ProcessStartInfo("/bin/bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args) psi.ArgumentList.Add(a);
        foreach (string k in psi.Environment.Keys.Where(k => k.StartsWith("SLURM_", StringComparison.Ordinal)).ToList()) psi.Environment.Remove(k);
        foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(30_000)) { p.Kill(true); throw new TimeoutException($"bash {string.Join(' ', args)} timed out"); }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    private static Dictionary<string, string> ArrayTask(int id, int n, int min = 0, int? max = null) => new()
    {
        ["SLURM_ARRAY_TASK_ID"] = id.ToString(CultureInfo.InvariantCulture), ["SLURM_ARRAY_TASK_COUNT"] = n.ToString(CultureInfo.InvariantCulture),
        ["SLURM_ARRAY_TASK_MIN"] = min.ToString(CultureInfo.InvariantCulture), ["SLURM_ARRAY_TASK_MAX"] = (max ?? n - 1).ToString(CultureInfo.InvariantCulture),
        ["SLURM_ARRAY_JOB_ID"] = "77",
    };

    [Fact]
    public void The_embedded_scripts_are_the_repository_s_scripts()
    {
        foreach (string name in new[] { "scan.sbatch", "merge.sbatch" })
            Assert.Equal(File.ReadAllText(Script(name)), SlurmSubmit.ScriptText(name));
        Assert.Contains("scan.sbatch and merge.sbatch", Assert.Throws<ArgumentException>(() => SlurmSubmit.ScriptText("other.sbatch")).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Scan_sbatch_runs_shard_I_of_N_with_the_arguments_untouched()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        int n = rng.Next(1, 12), id = rng.Next(n);
        using var tmp = new TempDir();
        string outdir = Path.Combine(tmp.Path, "out dir $x");
        string[] fake = SlurmSubmitTests.WriteFake(tmp.Path);
        string[] scanArgs = SlurmSubmitTests.AwkwardScanArguments(rng, tmp.Path);
        var r = Bash(ArrayTask(id, n), [Script("scan.sbatch"), outdir, .. fake, "--", .. scanArgs]);
        Assert.True(r.ExitCode == 0, $"seed {seed}: {r.Stderr}");
        string shard = Path.Combine(outdir, $"shard-{id}.sqlite");
        Assert.Equal(["scan", .. scanArgs, "--shard", $"{id}/{n}", "--db", shard], SlurmSubmitTests.ReadArgs(shard + ".args"));
        string log = Path.Combine(outdir, "logs", $"scan-{id}.log");
        Assert.Contains($"log in {log}", r.Stdout, StringComparison.Ordinal);
        Assert.Contains($"shard {id}/{n} done", File.ReadAllText(log), StringComparison.Ordinal);
    }

    [Fact]
    public void Scan_sbatch_refuses_what_would_shard_wrongly_with_a_clear_message()
    {
        using var tmp = new TempDir();
        string[] fake = SlurmSubmitTests.WriteFake(tmp.Path);
        string outdir = tmp.File("out");
        void Refused(IReadOnlyDictionary<string, string> env, string[] args, string message)
        {
            var r = Bash(env, [Script("scan.sbatch"), .. args]);
            Assert.Equal(2, r.ExitCode);
            Assert.Contains("scan.sbatch: error: " + message, r.Stderr, StringComparison.Ordinal);
            Assert.False(File.Exists(Path.Combine(outdir, "shard-1.sqlite")));
        }
        Refused(new Dictionary<string, string>(), [outdir, .. fake, "--", "--model", "m"], "not a job-array task");
        Refused(ArrayTask(1, 4, min: 1, max: 4), [outdir, .. fake, "--", "--model", "m"], "the array must be 0-3");
        Refused(ArrayTask(1, 4), [outdir, .. fake, "--model", "m"], "no '--' between the featurelens command and the scan arguments");
        Refused(ArrayTask(1, 4), [outdir, "--", "--model", "m"], "the featurelens command (the words before '--') is missing");
        Refused(ArrayTask(1, 4), [outdir, .. fake, "--", "--model", "m", "--db", "x.sqlite"], "the scan arguments must not contain --db");
        Refused(ArrayTask(1, 4), [outdir, .. fake, "--", "--shard=0/2"], "the scan arguments must not contain --shard=0/2");

        // a failing scan fails the task with its exit code, logged
        var env = new Dictionary<string, string>(ArrayTask(1, 4)) { ["FAKE_FAIL_SHARD"] = "1/4" };
        var failed = Bash(env, [Script("scan.sbatch"), outdir, .. fake, "--", "--model", "m"]);
        Assert.Equal(3, failed.ExitCode);
        Assert.Contains("shard 1/4 failed (exit code 3)", File.ReadAllText(Path.Combine(outdir, "logs", "scan-1.log")), StringComparison.Ordinal);
    }

    [Fact]
    public void Merge_sbatch_merges_the_shards_in_index_order_and_refuses_a_missing_shard()
    {
        int seed = Random.Shared.Next();
        int n = new Random(seed).Next(2, 13); // past 10: index order, not the shell's glob order (shard-10 before shard-2)
        using var tmp = new TempDir();
        string outdir = Path.Combine(tmp.Path, "out dir");
        Directory.CreateDirectory(outdir);
        string db = Path.Combine(tmp.Path, "merged 'db'.sqlite");
        string[] fake = SlurmSubmitTests.WriteFake(tmp.Path);
        string[] shards = [.. Enumerable.Range(0, n).Select(i => Path.Combine(outdir, $"shard-{i}.sqlite"))];
        foreach (string s in shards.Skip(1)) File.WriteAllText(s, "shard");

        var missing = Bash(new Dictionary<string, string>(), Script("merge.sbatch"), outdir, n.ToString(CultureInfo.InvariantCulture), db, fake[0], fake[1]);
        Assert.Equal(2, missing.ExitCode);
        Assert.Contains($"merge.sbatch: error: 1 of {n} shard databases are missing: {shards[0]}", missing.Stderr, StringComparison.Ordinal);
        Assert.False(File.Exists(db));

        File.WriteAllText(shards[0], "shard");
        var r = Bash(new Dictionary<string, string>(), Script("merge.sbatch"), outdir, n.ToString(CultureInfo.InvariantCulture), db, fake[0], fake[1]);
        Assert.True(r.ExitCode == 0, $"seed {seed}: {r.Stderr}");
        Assert.Equal(["merge", "--out", db, .. shards], SlurmSubmitTests.ReadArgs(db + ".args"));
        Assert.Contains($"merged {n} shards into {db}", File.ReadAllText(Path.Combine(outdir, "logs", "merge.log")), StringComparison.Ordinal);

        var bad = Bash(new Dictionary<string, string>(), Script("merge.sbatch"), outdir, "0", db, fake[0]);
        Assert.Equal(2, bad.ExitCode);
        Assert.Contains("N (the shard count) must be a positive integer, got '0'", bad.Stderr, StringComparison.Ordinal);
    }

    private static SlurmScanRequest Request(string folder, int shards = 4, string[]? scanArgs = null, string[]? command = null) => new()
    {
        FeatureLens = command ?? ["featurelens"], ScanArguments = scanArgs ?? ["--model", "m"], Shards = shards,
        Database = Path.Combine(folder, "db.sqlite"), WorkFolder = Path.Combine(folder, "work"),
    };

    [Fact]
    public void Submitting_without_sbatch_on_PATH_says_a_Slurm_cluster_is_needed()
    {
        using var tmp = new TempDir();
        var slurm = new SlurmSubmit(new Dictionary<string, string> { ["PATH"] = tmp.Path });
        var e = Assert.Throws<InvalidOperationException>(() => slurm.Submit(Request(tmp.Path)));
        Assert.StartsWith("sbatch not found on PATH: --slurm needs a Slurm cluster", e.Message, StringComparison.Ordinal);
        Assert.StartsWith("scontrol not found on PATH", Assert.Throws<InvalidOperationException>(() => slurm.Query("1")).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Bad_requests_are_refused_before_anything_is_submitted()
    {
        using var tmp = new TempDir();
        var slurm = new SlurmSubmit(new Dictionary<string, string> { ["PATH"] = tmp.Path });
        void Bad(SlurmScanRequest r, string message) =>
            Assert.Contains(message, Assert.Throws<ArgumentException>(() => slurm.Submit(r)).Message, StringComparison.Ordinal);
        int n = -Random.Shared.Next(0, 3);
        Bad(Request(tmp.Path, shards: n), $"the shard count (--slurm N) must be at least 1, got {n}");
        Bad(Request(tmp.Path, scanArgs: ["--model", "m", "--db", "x"]), "the scan arguments must not contain --db");
        Bad(Request(tmp.Path, scanArgs: ["--shard=1/2"]), "the scan arguments must not contain --shard=1/2");
        Bad(Request(tmp.Path, command: []), "the featurelens command is empty");
        Bad(Request(tmp.Path, command: ["dotnet", "--", "x.dll"]), "must not contain '--'");
        Bad(Request(tmp.Path) with { Database = Path.Combine(tmp.Path, "work", "shard-3.sqlite") }, "would be overwritten by a shard");
        Assert.False(Directory.Exists(Path.Combine(tmp.Path, "work")));
    }

    [Fact]
    public void The_scan_arguments_to_forward_are_the_command_line_without_the_Slurm_options()
    {
        string[] args = ["--model", "m m", "--slurm", "4", "--sae", "a", "--wait", "--db=out.sqlite", "--sae", "b", "--sbatch:--time=1:00", "--corpus", "c:d", "--db", "x"];
        Assert.Equal(["--model", "m m", "--sae", "a", "--sae", "b", "--corpus", "c:d"], SlurmSubmit.WithoutOptions(args, ["--slurm", "--db", "--sbatch"], ["--wait"]));
        Assert.Contains("--db needs a value", Assert.Throws<ArgumentException>(() => SlurmSubmit.WithoutOptions(["--model", "m", "--db"], ["--db"], [])).Message, StringComparison.Ordinal);
        Assert.Equal(Path.GetFullPath("x/scan.sqlite") + ".shards", SlurmScanRequest.DefaultWorkFolder("x/scan.sqlite"));
    }

    [Fact]
    public void The_featurelens_command_of_a_process_is_its_apphost_or_dotnet_and_its_dll()
    {
        Assert.Equal(["/opt/fl/featurelens"], SlurmSubmit.CommandOf("/opt/fl/featurelens", "/opt/fl/featurelens.dll"));
        Assert.Equal(["/usr/share/dotnet/dotnet", "/opt/my fl/featurelens.dll"], SlurmSubmit.CommandOf("/usr/share/dotnet/dotnet", "/opt/my fl/featurelens.dll"));
        Assert.Throws<InvalidOperationException>(() => SlurmSubmit.CommandOf("/usr/bin/dotnet", ""));
    }

    [Fact]
    public void Scontrol_lines_are_read_field_by_field()
    {
        var r = SlurmSubmit.ParseRecord("JobId=12 ArrayJobId=10 ArrayTaskId=2 JobName=featurelens-scan JobState=FAILED Reason=NonZeroExitCode "
            + "ExitCode=3:0 StartTime=2026-12-03T13:04:41 EndTime=2026-12-03T13:04:45 Command=/w/scan.sbatch /w a JobState=COMPLETED");
        Assert.Equal(("12", "2", 2, "FAILED", "NonZeroExitCode", "3:0"), (r.JobId, r.ArrayTasks, r.ArrayTaskId, r.State, r.Reason, r.ExitCode));
        Assert.True(r.Failed);
        Assert.Equal(new DateTime(2026, 12, 3, 13, 4, 45), r.End);
        var pending = SlurmSubmit.ParseRecord("JobId=10 ArrayJobId=10 ArrayTaskId=2-3%2 JobState=PENDING Reason=Resources ExitCode=0:0 StartTime=Unknown");
        Assert.Equal(("2-3%2", (int?)null, false, false, (DateTime?)null), (pending.ArrayTasks, pending.ArrayTaskId, pending.Completed, pending.Failed, pending.Start));
    }
}
