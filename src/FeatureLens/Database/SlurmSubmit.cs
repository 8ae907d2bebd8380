using System.Diagnostics;
using System.Reflection;
using System.Text.RegularExpressions;

namespace FeatureLens.Database;

/// <summary>A sharded corpus scan to run on a Slurm cluster: scripts/slurm/scan.sbatch as a job array of
/// <see cref="Shards"/> tasks, then scripts/slurm/merge.sbatch as a job that starts when every task succeeded.</summary>
public sealed record SlurmScanRequest
{
    /// <summary>The command that runs featurelens on the compute nodes, one word per item:
    /// <c>["/opt/featurelens/featurelens"]</c> or <c>["dotnet", "/opt/featurelens/featurelens.dll"]</c>
    /// (<see cref="SlurmSubmit.CommandOfThisProcess"/> gives the running CLI's).</summary>
    public required IReadOnlyList<string> FeatureLens { get; init; }

    /// <summary>The arguments of <c>featurelens scan</c> except <c>--shard</c> and <c>--db</c>, which each task sets.
    /// Relative paths are resolved by the jobs in the submitting process's working directory.</summary>
    public required IReadOnlyList<string> ScanArguments { get; init; }

    /// <summary>N: the number of shards, one array task each.</summary>
    public required int Shards { get; init; }

    /// <summary>The merged database the merge job writes.</summary>
    public required string Database { get; init; }

    /// <summary>A folder every node sees (a shared file system): the shards (<c>shard-I.sqlite</c>), the logs
    /// (<c>logs/</c>) and the two scripts as submitted. Default: <see cref="DefaultWorkFolder"/>.</summary>
    public string? WorkFolder { get; init; }

    /// <summary>The work folder when none is given: the database's path with <c>.shards</c> appended
    /// (<c>/data/scan.sqlite</c> → <c>/data/scan.sqlite.shards/</c>).</summary>
    public static string DefaultWorkFolder(string database) => Path.GetFullPath(database) + ".shards";

    /// <summary>Options for sbatch given to both jobs, e.g. <c>--partition=gpu</c>, <c>--time=04:00:00</c>,
    /// <c>--cpus-per-task=8</c>, <c>--account=lab</c>.</summary>
    public IReadOnlyList<string> SbatchOptions { get; init; } = [];
}

/// <summary>The two submitted jobs of a sharded scan and where their files go.</summary>
public sealed record SlurmScanJobs(string ScanJobId, string MergeJobId, int Shards, string WorkFolder, string Database)
{
    /// <summary>The folder of the scripts' logs: <c>scan-I.log</c>, <c>merge.log</c>, and Slurm's own
    /// <c>slurm-*.out</c> files (what a script printed before it opened its log).</summary>
    public string LogFolder => Path.Combine(WorkFolder, "logs");

    /// <summary>The database shard <paramref name="index"/> writes.</summary>
    public string ShardPath(int index) => Path.Combine(WorkFolder, $"shard-{index.ToString(CultureInfo.InvariantCulture)}.sqlite");

    /// <summary>The log of shard <paramref name="index"/>.</summary>
    public string ScanLog(int index) => Path.Combine(LogFolder, $"scan-{index.ToString(CultureInfo.InvariantCulture)}.log");

    /// <summary>The log of the merge.</summary>
    public string MergeLog => Path.Combine(LogFolder, "merge.log");
}

/// <summary>One line of <c>scontrol show job -o</c>: a job, one task of an array, or the still pending tasks of an
/// array (<see cref="ArrayTasks"/> a range such as <c>2-3</c>).</summary>
public sealed record SlurmJobRecord(string JobId, string? ArrayTasks, string State, string Reason, string ExitCode, DateTime? Start, DateTime? End)
{
    /// <summary>The array task index when this line is exactly one task.</summary>
    public int? ArrayTaskId => int.TryParse(ArrayTasks, NumberStyles.None, CultureInfo.InvariantCulture, out int i) ? i : null;

    /// <summary>The job ended well.</summary>
    public bool Completed => State == "COMPLETED";

    /// <summary>The job ended and did not complete: failed, cancelled, timed out, out of memory, lost its node.</summary>
    public bool Failed => State is "FAILED" or "CANCELLED" or "TIMEOUT" or "NODE_FAIL" or "OUT_OF_MEMORY" or "PREEMPTED" or "BOOT_FAIL" or "DEADLINE";
}

/// <summary>
/// Submits a sharded corpus scan to Slurm and waits for it: <c>sbatch --parsable --array=0-(N-1) scan.sbatch</c>, then
/// <c>sbatch --parsable --dependency=afterok:SCAN --kill-on-invalid-dep=yes merge.sbatch</c>. The two scripts are
/// embedded in this library (from scripts/slurm/) and written into the work folder at submission, so the folder
/// records exactly what ran and the library needs no file beside it. Needs the Slurm client commands (sbatch,
/// scontrol, scancel) on PATH, configured for the cluster (slurm.conf, or <c>SLURM_CONF</c>).
/// </summary>
/// <param name="environment">Variables set for the Slurm commands (and, through sbatch's default
/// <c>--export=ALL</c>, for the jobs) on top of this process's, e.g. <c>SLURM_CONF</c>; <c>PATH</c> here is also
/// where the commands are looked for.</param>
public sealed partial class SlurmSubmit(IReadOnlyDictionary<string, string>? environment = null)
{
    /// <summary>How long one Slurm command may take before it counts as hung.</summary>
    public TimeSpan CommandTimeout { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>Submits the scan array and the dependent merge job; returns their job ids. When the merge cannot
    /// be submitted, the scan array is cancelled, so nothing runs without its merge.</summary>
    public SlurmScanJobs Submit(SlurmScanRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        Validate(request);
        string database = Path.GetFullPath(request.Database);
        string work = Path.GetFullPath(request.WorkFolder ?? SlurmScanRequest.DefaultWorkFolder(database));
        var jobs0 = new SlurmScanJobs("", "", request.Shards, work, database);
        Directory.CreateDirectory(jobs0.LogFolder);
        string scanScript = WriteScript(work, "scan.sbatch");
        string mergeScript = WriteScript(work, "merge.sbatch");
        // Slurm expands %A, %a, %j in --output; a literal % in the folder is written %%
        string slurmLogs = jobs0.LogFolder.Replace("%", "%%", StringComparison.Ordinal);
        string n = request.Shards.ToString(CultureInfo.InvariantCulture);

        var scanArgs = new List<string> { "--parsable", $"--array=0-{(request.Shards - 1).ToString(CultureInfo.InvariantCulture)}",
            $"--output={slurmLogs}/slurm-scan-%A_%a.out" };
        scanArgs.AddRange(request.SbatchOptions);
        scanArgs.Add(scanScript);
        scanArgs.Add(work);
        scanArgs.AddRange(request.FeatureLens);
        scanArgs.Add("--");
        scanArgs.AddRange(request.ScanArguments);
        string scanJob = Sbatch(scanArgs, "the scan job array");

        var mergeArgs = new List<string> { "--parsable", $"--dependency=afterok:{scanJob}", "--kill-on-invalid-dep=yes",
            $"--output={slurmLogs}/slurm-merge-%j.out" };
        mergeArgs.AddRange(request.SbatchOptions);
        mergeArgs.AddRange([mergeScript, work, n, database]);
        mergeArgs.AddRange(request.FeatureLens);
        string mergeJob;
        try
        {
            mergeJob = Sbatch(mergeArgs, "the merge job");
        }
        catch (InvalidOperationException e)
        {
            var cancel = Run("scancel", [scanJob]);
            string what = cancel.ExitCode == 0 ? $"the scan job array {scanJob} was cancelled" : $"cancelling the scan job array {scanJob} failed too: {cancel.Stderr.Trim()}";
            throw new InvalidOperationException($"{e.Message}; {what}", e);
        }
        return jobs0 with { ScanJobId = scanJob, MergeJobId = mergeJob };
    }

    /// <summary>The state of a job or of every task of an array job (<c>scontrol show job -o ID</c>); empty when
    /// slurmctld does not know the id (never submitted, or finished longer than its MinJobAge ago).</summary>
    public IReadOnlyList<SlurmJobRecord> Query(string jobId)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(jobId);
        var r = Run("scontrol", ["show", "job", "-o", jobId]);
        if (r.ExitCode != 0)
        {
            if (r.Stderr.Contains("Invalid job id", StringComparison.OrdinalIgnoreCase)) return [];
            throw new InvalidOperationException($"scontrol show job {jobId} failed (exit code {r.ExitCode}): {r.Stderr.Trim()}");
        }
        var records = new List<SlurmJobRecord>();
        foreach (string line in r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            records.Add(ParseRecord(line));
        return records;
    }

    /// <summary>
    /// Blocks until the merge job has completed (polling <c>scontrol show job</c>). Throws when a shard or the merge
    /// fails, naming the shards, their exit codes and logs (a merge still waiting on a failed shard is cancelled);
    /// <see cref="TimeoutException"/> after <paramref name="timeout"/> (the jobs keep running).
    /// </summary>
    /// <param name="jobs">What <see cref="Submit"/> returned.</param>
    /// <param name="timeout">How long to wait for the merge to complete (<see cref="Timeout.InfiniteTimeSpan"/>: as long as it takes).</param>
    /// <param name="pollInterval">The time between two looks at the jobs (default 1 s).</param>
    /// <param name="progress">Called with a one-line summary whenever it changes ("scan 2/4 shards done, merge PENDING").</param>
    /// <param name="cancellation">Stops the waiting (not the jobs).</param>
    public void Wait(SlurmScanJobs jobs, TimeSpan timeout, TimeSpan? pollInterval = null, Action<string>? progress = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        var poll = pollInterval ?? TimeSpan.FromSeconds(1);
        var clock = Stopwatch.StartNew();
        string last = "";
        while (true)
        {
            var scan = Query(jobs.ScanJobId);
            var merge = Query(jobs.MergeJobId);
            var failed = scan.Where(t => t.Failed).OrderBy(t => t.ArrayTaskId ?? -1).ToList();
            if (failed.Count > 0)
            {
                string shards = string.Join("; ", failed.Select(t => t.ArrayTaskId is int i
                    ? $"shard {i}: {t.State} (exit code {t.ExitCode}; log {jobs.ScanLog(i)})"
                    : $"tasks {t.ArrayTasks}: {t.State} ({t.Reason})"));
                string mergeNote = CancelIfPending(merge, jobs.MergeJobId);
                throw new InvalidOperationException(
                    $"the Slurm scan {jobs.ScanJobId} failed: {failed.Count} of {jobs.Shards} shards did not complete — {shards}; {mergeNote}");
            }
            if (merge.Count == 0)
                throw new InvalidOperationException($"Slurm no longer knows the merge job {jobs.MergeJobId} (slurmctld forgets a finished job after its MinJobAge): see {jobs.MergeLog} and whether {jobs.Database} exists");
            var m = merge[0];
            if (m.Completed) return;
            if (m.Failed)
                throw new InvalidOperationException($"the Slurm merge job {jobs.MergeJobId} {m.State} (exit code {m.ExitCode}, reason {m.Reason}): see {jobs.MergeLog} and {jobs.LogFolder}");
            int done = scan.Count(t => t.Completed && t.ArrayTaskId is not null);
            string status = $"scan {done}/{jobs.Shards} shards done, merge {m.State}";
            if (status != last) { progress?.Invoke(status); last = status; }
            if (timeout != Timeout.InfiniteTimeSpan && clock.Elapsed > timeout)
                throw new TimeoutException($"the Slurm scan did not finish within {timeout.TotalSeconds.ToString("0", CultureInfo.InvariantCulture)} s ({status}); jobs {jobs.ScanJobId} (scan) and {jobs.MergeJobId} (merge) keep running");
            cancellation.WaitHandle.WaitOne(poll);
            cancellation.ThrowIfCancellationRequested();
        }
    }

    /// <summary>The command that runs the featurelens CLI this process is: the apphost itself, or
    /// <c>dotnet featurelens.dll</c> when started through dotnet.</summary>
    public static IReadOnlyList<string> CommandOfThisProcess()
    {
        string process = Environment.ProcessPath ?? throw new InvalidOperationException("the path of this process is unknown: give the featurelens command explicitly");
        string entry = Assembly.GetEntryAssembly()?.Location ?? "";
        return CommandOf(process, entry);
    }

    /// <summary>The command that re-runs a process: <c>[processPath]</c>, or <c>[dotnet, entryAssembly]</c> when the
    /// process is the dotnet host.</summary>
    public static IReadOnlyList<string> CommandOf(string processPath, string entryAssembly)
    {
        ArgumentException.ThrowIfNullOrEmpty(processPath);
        if (!Path.GetFileNameWithoutExtension(processPath).Equals("dotnet", StringComparison.OrdinalIgnoreCase)) return [processPath];
        if (string.IsNullOrEmpty(entryAssembly))
            throw new InvalidOperationException($"this process is {processPath} but its entry assembly is unknown: give the featurelens command explicitly");
        return [processPath, entryAssembly];
    }

    /// <summary>
    /// A command line without some of its options, for forwarding the rest: <c>scan --slurm 4 --wait --db F ...</c>
    /// gives the arguments each shard's <c>featurelens scan</c> gets. Removes each option in
    /// <paramref name="withValue"/> with its value (<c>--db F</c>, <c>--db=F</c>, <c>--db:F</c>) and each flag in
    /// <paramref name="flags"/>; everything else stays, in order.
    /// </summary>
    public static IReadOnlyList<string> WithoutOptions(IReadOnlyList<string> args, IEnumerable<string> withValue, IEnumerable<string> flags)
    {
        ArgumentNullException.ThrowIfNull(args);
        var valued = withValue.ToHashSet(StringComparer.Ordinal);
        var flagSet = flags.ToHashSet(StringComparer.Ordinal);
        var kept = new List<string>(args.Count);
        for (int i = 0; i < args.Count; i++)
        {
            string a = args[i];
            int sep = a.IndexOfAny(['=', ':']);
            string name = sep > 0 ? a[..sep] : a;
            if (flagSet.Contains(a) || (sep > 0 && flagSet.Contains(name))) continue;
            if (valued.Contains(a))
            {
                if (i + 1 >= args.Count) throw new ArgumentException($"{a} needs a value");
                i++;
                continue;
            }
            if (sep > 0 && valued.Contains(name)) continue;
            kept.Add(a);
        }
        return kept;
    }

    /// <summary>The text of an embedded script (<c>scan.sbatch</c> or <c>merge.sbatch</c>), as in scripts/slurm/.</summary>
    public static string ScriptText(string name)
    {
        using var stream = typeof(SlurmSubmit).Assembly.GetManifestResourceStream("FeatureLens.Slurm." + name)
            ?? throw new ArgumentException($"no embedded Slurm script '{name}' (there are scan.sbatch and merge.sbatch)", nameof(name));
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    private static void Validate(SlurmScanRequest r)
    {
        if (r.Shards < 1) throw new ArgumentException($"the shard count (--slurm N) must be at least 1, got {r.Shards}", nameof(r));
        if (r.FeatureLens is null || r.FeatureLens.Count == 0 || r.FeatureLens.Any(string.IsNullOrEmpty))
            throw new ArgumentException("the featurelens command is empty: give the words that run featurelens on the compute nodes, e.g. [\"dotnet\", \"/opt/featurelens/featurelens.dll\"]", nameof(r));
        if (r.FeatureLens.Contains("--"))
            throw new ArgumentException("the featurelens command must not contain '--' (scan.sbatch separates the command from the scan arguments with it)", nameof(r));
        ArgumentNullException.ThrowIfNull(r.ScanArguments);
        foreach (string a in r.ScanArguments)
            if (a is "--shard" or "--db" || a.StartsWith("--shard=", StringComparison.Ordinal) || a.StartsWith("--db=", StringComparison.Ordinal))
                throw new ArgumentException($"the scan arguments must not contain {a}: each shard's task sets its own --shard I/N and --db (the merged database is the request's Database)", nameof(r));
        if (string.IsNullOrWhiteSpace(r.Database)) throw new ArgumentException("the merged database path (--db) is empty", nameof(r));
        if (r.WorkFolder is not null && string.IsNullOrWhiteSpace(r.WorkFolder)) throw new ArgumentException("the work folder is empty: give a folder every node sees", nameof(r));
        string db = Path.GetFullPath(r.Database), work = Path.GetFullPath(r.WorkFolder ?? SlurmScanRequest.DefaultWorkFolder(db));
        if (Path.GetDirectoryName(db) == work && ShardName().IsMatch(Path.GetFileName(db)))
            throw new ArgumentException($"the merged database {db} would be overwritten by a shard: choose another name or folder", nameof(r));
    }

    private static string WriteScript(string folder, string name)
    {
        string path = Path.Combine(folder, name);
        string temp = path + ".tmp-" + Environment.ProcessId.ToString(CultureInfo.InvariantCulture);
        File.WriteAllText(temp, ScriptText(name));
        if (!OperatingSystem.IsWindows())
            File.SetUnixFileMode(temp, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead
                | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        File.Move(temp, path, overwrite: true);
        return path;
    }

    private string Sbatch(List<string> args, string what)
    {
        var r = Run("sbatch", args);
        if (r.ExitCode != 0)
            throw new InvalidOperationException($"sbatch failed submitting {what} (exit code {r.ExitCode}): {r.Stderr.Trim()}");
        string id = r.Stdout.Trim().Split('\n')[0].Split(';')[0].Trim();
        if (!JobId().IsMatch(id))
            throw new InvalidOperationException($"sbatch --parsable printed no job id submitting {what}: '{r.Stdout.Trim()}' {r.Stderr.Trim()}");
        return id;
    }

    private string CancelIfPending(IReadOnlyList<SlurmJobRecord> merge, string mergeJob)
    {
        if (merge.Count == 0) return $"the merge job {mergeJob} is gone";
        if (merge[0].Failed) return $"the merge job {mergeJob} is {merge[0].State}";
        if (merge[0].Completed) return $"the merge job {mergeJob} completed";
        var r = Run("scancel", [mergeJob]);
        return r.ExitCode == 0 ? $"the merge job {mergeJob} was cancelled" : $"cancelling the merge job {mergeJob} failed: {r.Stderr.Trim()}";
    }

    internal static SlurmJobRecord ParseRecord(string line)
    {
        string? Field(string key)
        {
            var m = Regex.Match(line, $@"(?:^|\s){key}=(\S*)", RegexOptions.CultureInvariant);
            return m.Success ? m.Groups[1].Value : null;
        }
        DateTime? Time(string key) => DateTime.TryParseExact(Field(key), "yyyy-MM-ddTHH:mm:ss", CultureInfo.InvariantCulture, DateTimeStyles.None, out var t) ? t : null;
        string jobId = Field("JobId") ?? throw new InvalidDataException($"scontrol show job printed a line without JobId: {line}");
        return new SlurmJobRecord(jobId, Field("ArrayTaskId"), Field("JobState") ?? "UNKNOWN", Field("Reason") ?? "", Field("ExitCode") ?? "", Time("StartTime"), Time("EndTime"));
    }

    private (int ExitCode, string Stdout, string Stderr) Run(string tool, IEnumerable<string> args)
    {
        string path = (environment is not null && environment.TryGetValue("PATH", out var p) ? p : Environment.GetEnvironmentVariable("PATH")) ?? "";
        string exe = path.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries).Select(d => Path.Combine(d, tool)).FirstOrDefault(File.Exists)
            ?? throw new InvalidOperationException($"{tool} not found on PATH: --slurm needs a Slurm cluster (its client commands sbatch, scontrol and scancel)");
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args) psi.ArgumentList.Add(a);
        if (environment is not null) foreach (var (k, v) in environment) psi.Environment[k] = v;
        using var process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {exe}");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(CommandTimeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{tool} {string.Join(' ', psi.ArgumentList)} did not answer within {CommandTimeout.TotalSeconds.ToString("0", CultureInfo.InvariantCulture)} s (is slurmctld reachable?)");
        }
        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    [GeneratedRegex(@"^\d+$")]
    private static partial Regex JobId();

    [GeneratedRegex(@"^shard-\d+\.sqlite$")]
    private static partial Regex ShardName();
}
