using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.Versioning;
using System.Security.Cryptography;
using System.Text;

namespace FeatureLens.Tests.Slurm;

/// <summary>The test classes that share one <see cref="SlurmCluster"/> per test run.</summary>
[CollectionDefinition(Name)]
public sealed class SlurmCollection : ICollectionFixture<SlurmCluster>
{
    public const string Name = "Slurm cluster";
}

/// <summary>A test that needs the real single-node Slurm cluster: skipped, saying why, when not run as root.</summary>
public sealed class SlurmFactAttribute : FactAttribute
{
    public SlurmFactAttribute()
    {
        if (!SlurmCluster.CanRun) Skip = SlurmCluster.SkipReason;
    }
}

/// <summary>
/// A real single-node Slurm cluster on this machine (Debian's slurm-wlm and munge, installed with apt-get when
/// missing): a private munged (its own key and socket), slurmctld and slurmd on free ports, every file in one
/// temporary folder, configured by its slurm.conf (<see cref="Environment"/> gives the <c>SLURM_CONF</c> the
/// client commands need). Ready in about a second once installed; stopped on dispose (jobs cancelled,
/// <c>scontrol shutdown</c>, munged stopped, then any process still tied to the folder killed). A cluster left
/// behind by a test run that died is stopped by the next run. Needs root (it installs packages and runs the
/// daemons as root and munge); otherwise <see cref="CanRun"/> is false and <see cref="SlurmFactAttribute"/>
/// skips the tests.
/// </summary>
public sealed class SlurmCluster : IDisposable
{
    [SupportedOSPlatformGuard("linux")]
    public static bool CanRun => OperatingSystem.IsLinux() && System.Environment.IsPrivilegedProcess;

    public const string SkipReason = "needs root: the Slurm tests install Debian's slurm-wlm and munge and start a single-node "
        + "Slurm cluster (munged, slurmctld, slurmd); run the tests as root, as CI does";

    private const string Prefix = "featurelens-slurm-";
    private static readonly string[] Tools =
        ["/usr/sbin/slurmctld", "/usr/sbin/slurmd", "/usr/sbin/munged", "/usr/bin/sbatch", "/usr/bin/scontrol", "/usr/bin/scancel", "/usr/bin/squeue", "/usr/bin/sinfo"];

    private readonly object gate = new();
    private bool disposed;

    /// <summary>The cluster's folder: slurm.conf, munge/, state/, spool/, log/, the pid files.</summary>
    public string Folder { get; } = "";

    /// <summary>The cluster's slurm.conf.</summary>
    public string Conf => Path.Combine(Folder, "slurm.conf");

    /// <summary>The single node (this machine's short host name).</summary>
    public string Node { get; } = System.Environment.MachineName;

    /// <summary>What the Slurm client commands need to reach this cluster.</summary>
    public IReadOnlyDictionary<string, string> Environment => new Dictionary<string, string> { ["SLURM_CONF"] = Conf };

    public SlurmCluster()
    {
        if (!CanRun) return;
        InstallIfMissing();
        StopStaleClusters();
        Folder = Path.Combine(Path.GetTempPath(), Prefix + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Folder);
        File.SetUnixFileMode(Folder, (UnixFileMode)0b111_101_101); // munged wants every folder above its socket searchable
        File.WriteAllText(Path.Combine(Folder, "owner.pid"), System.Environment.ProcessId.ToString(CultureInfo.InvariantCulture));
        AppDomain.CurrentDomain.ProcessExit += (_, _) => Dispose();
        try
        {
            var clock = Stopwatch.StartNew();
            StartMunge();
            WriteConf();
            Must("/usr/sbin/slurmctld", ["-f", Conf]);
            Must("/usr/sbin/slurmd", ["-f", Conf, "-N", Node]);
            WaitUntilIdle(TimeSpan.FromSeconds(60));
            Console.WriteLine($"Slurm cluster up in {clock.Elapsed.TotalSeconds:0.0} s: {Conf}");
        }
        catch (Exception e)
        {
            string logs = Logs();
            Dispose();
            throw new InvalidOperationException($"the test Slurm cluster did not start: {e.Message}\n{logs}", e);
        }
    }

    /// <summary>Runs a Slurm client command against this cluster; returns its exit code, stdout and stderr.</summary>
    public (int ExitCode, string Stdout, string Stderr) Client(string tool, params string[] args) =>
        Run("/usr/bin/" + tool, args, Environment, TimeSpan.FromSeconds(30));

    /// <summary>The last lines of the daemons' logs (for failure messages).</summary>
    public string Logs()
    {
        var sb = new StringBuilder();
        foreach (string log in new[] { "log/slurmctld.log", "log/slurmd.log", "munge/munged.log" }.Select(l => Path.Combine(Folder, l)))
        {
            if (!File.Exists(log)) continue;
            sb.AppendLine(CultureInfo.InvariantCulture, $"--- {log} (last lines)");
            foreach (string line in File.ReadLines(log).TakeLast(15)) sb.AppendLine(line);
        }
        return sb.ToString();
    }

    private static void InstallIfMissing()
    {
        if (Tools.All(File.Exists)) return;
        var env = new Dictionary<string, string> { ["DEBIAN_FRONTEND"] = "noninteractive" };
        string[] install = ["install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=600", "slurm-wlm", "munge"];
        if (Run("apt-get", install, env, TimeSpan.FromMinutes(10)).ExitCode != 0)
        {
            Must("apt-get", ["update", "-qq"], env, TimeSpan.FromMinutes(10));
            Must("apt-get", install, env, TimeSpan.FromMinutes(10));
        }
        string[] missing = [.. Tools.Where(t => !File.Exists(t))];
        if (missing.Length > 0) throw new InvalidOperationException($"apt-get install slurm-wlm munge did not provide {string.Join(", ", missing)}");
    }

    [SupportedOSPlatform("linux")]
    private void StartMunge()
    {
        string munge = Path.Combine(Folder, "munge");
        Directory.CreateDirectory(munge);
        string key = Path.Combine(munge, "munge.key");
        File.WriteAllBytes(key, RandomNumberGenerator.GetBytes(1024));
        File.SetUnixFileMode(key, UnixFileMode.UserRead);
        Must("chown", ["-R", "munge:munge", munge]);
        File.SetUnixFileMode(munge, (UnixFileMode)0b111_101_101);
        Must("runuser", ["-u", "munge", "--", "/usr/sbin/munged", $"--socket={MungeSocket}", $"--key-file={key}",
            $"--log-file={Path.Combine(munge, "munged.log")}", $"--pid-file={Path.Combine(munge, "munged.pid")}",
            $"--seed-file={Path.Combine(munge, "munged.seed")}"]);
    }

    private string MungeSocket => Path.Combine(Folder, "munge", "munge.socket");

    private void WriteConf()
    {
        foreach (string d in new[] { "state", "spool", "log" }) Directory.CreateDirectory(Path.Combine(Folder, d));
        string F(string name) => Path.Combine(Folder, name);
        string conf = $"""
            # a single-node test cluster (tests/FeatureLens.Tests/Slurm/SlurmCluster.cs)
            ClusterName=featurelens-test
            SlurmctldHost={Node}(127.0.0.1)
            SlurmctldPort={FreePort()}
            SlurmdPort={FreePort()}
            SlurmUser=root
            SlurmdUser=root
            AuthType=auth/munge
            CredType=cred/munge
            AuthInfo=socket={MungeSocket}
            ProctrackType=proctrack/linuxproc
            TaskPlugin=task/none
            SelectType=select/cons_tres
            SelectTypeParameters=CR_Core
            AccountingStorageType=accounting_storage/none
            JobAcctGatherType=jobacct_gather/none
            MpiDefault=none
            ReturnToService=2
            MinJobAge=3600
            KillWait=5
            SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
            StateSaveLocation={F("state")}
            SlurmdSpoolDir={F("spool")}
            SlurmctldPidFile={F("slurmctld.pid")}
            SlurmdPidFile={F("slurmd.pid")}
            SlurmctldLogFile={F("log/slurmctld.log")}
            SlurmdLogFile={F("log/slurmd.log")}
            NodeName={Node} NodeAddr=127.0.0.1 CPUs={System.Environment.ProcessorCount} State=UNKNOWN
            PartitionName=debug Nodes={Node} Default=YES MaxTime=INFINITE State=UP

            """;
        File.WriteAllText(Conf, conf);
    }

    private static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Any, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    private void WaitUntilIdle(TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        string state = "";
        while (clock.Elapsed < timeout)
        {
            var r = Client("sinfo", "-h", "-n", Node, "-o", "%t");
            state = (r.Stdout + r.Stderr).Trim();
            if (r.ExitCode == 0 && state == "idle") return;
            Thread.Sleep(200);
        }
        throw new TimeoutException($"node {Node} not idle after {timeout.TotalSeconds} s (sinfo: '{state}')");
    }

    public void Dispose()
    {
        lock (gate)
        {
            if (disposed || Folder.Length == 0) return;
            disposed = true;
        }
        if (File.Exists(Conf))
        {
            // cancel every job of this cluster and wait until none is left (their slurmstepd processes end with them)
            Client("scancel", "--user=root");
            var clock = Stopwatch.StartNew();
            while (clock.Elapsed < TimeSpan.FromSeconds(15))
            {
                var q = Client("squeue", "-h");
                if (q.ExitCode != 0 || q.Stdout.Trim().Length == 0) break;
                Thread.Sleep(200);
            }
            Client("scontrol", "shutdown");
        }
        if (File.Exists(Path.Combine(Folder, "munge", "munged.pid")))
            Run("/usr/sbin/munged", ["--stop", $"--socket={MungeSocket}"], null, TimeSpan.FromSeconds(15));
        KillDaemons(Folder, TimeSpan.FromSeconds(10));
        try { Directory.Delete(Folder, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>Waits for the daemons named in a cluster folder's pid files to exit, then kills every process
    /// still tied to the folder: the daemons (their command lines name it), the jobs' slurmstepd (its working
    /// folder is the cluster's log folder) and job processes (their SLURM_CONF is the cluster's).</summary>
    private static void KillDaemons(string folder, TimeSpan grace)
    {
        string[] pidFiles = ["slurmd.pid", "slurmctld.pid", "munge/munged.pid"];
        var clock = Stopwatch.StartNew();
        foreach (string pidFile in pidFiles.Select(p => Path.Combine(folder, p)))
        {
            if (!File.Exists(pidFile) || !int.TryParse(File.ReadAllText(pidFile).Trim(), CultureInfo.InvariantCulture, out int pid)) continue;
            while (Belongs(pid, folder) && clock.Elapsed < grace) Thread.Sleep(100);
        }
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), CultureInfo.InvariantCulture, out int pid) || pid == System.Environment.ProcessId || !Belongs(pid, folder)) continue;
            try
            {
                using var p = Process.GetProcessById(pid);
                p.Kill();
                p.WaitForExit(5000);
            }
            catch (ArgumentException) { } // exited meanwhile
            catch (InvalidOperationException) { }
            catch (System.ComponentModel.Win32Exception) { }
        }
    }

    /// <summary>Whether a process belongs to the cluster in <paramref name="folder"/>: its command line names the
    /// folder, it runs in it, or its SLURM_CONF is the folder's slurm.conf.</summary>
    private static bool Belongs(int pid, string folder)
    {
        string proc = $"/proc/{pid.ToString(CultureInfo.InvariantCulture)}";
        try
        {
            if (File.ReadAllText(proc + "/cmdline").Replace('\0', ' ').Contains(folder, StringComparison.Ordinal)) return true;
            string? cwd = new DirectoryInfo(proc + "/cwd").LinkTarget;
            if (cwd is not null && (cwd == folder || cwd.StartsWith(folder + "/", StringComparison.Ordinal))) return true;
            return File.ReadAllText(proc + "/environ").Split('\0').Contains("SLURM_CONF=" + Path.Combine(folder, "slurm.conf"));
        }
        catch (IOException) { return false; }
        catch (UnauthorizedAccessException) { return false; }
    }

    /// <summary>Stops the daemons of clusters whose test run died without disposing them, and deletes their folders.</summary>
    private static void StopStaleClusters()
    {
        foreach (string dir in Directory.EnumerateDirectories(Path.GetTempPath(), Prefix + "*"))
        {
            string owner = Path.Combine(dir, "owner.pid");
            if (File.Exists(owner) && int.TryParse(File.ReadAllText(owner).Trim(), CultureInfo.InvariantCulture, out int pid)
                && Directory.Exists($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}")) continue;
            KillDaemons(dir, TimeSpan.Zero);
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    private static void Must(string exe, string[] args, IReadOnlyDictionary<string, string>? env = null, TimeSpan? timeout = null)
    {
        var r = Run(exe, args, env, timeout ?? TimeSpan.FromSeconds(60));
        if (r.ExitCode != 0) throw new InvalidOperationException($"{exe} {string.Join(' ', args)} failed (exit code {r.ExitCode}): {r.Stderr.Trim()} {r.Stdout.Trim()}");
    }

    private static (int ExitCode, string Stdout, string Stderr) Run(string exe, string[] args, IReadOnlyDictionary<string, string>? env, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args) psi.ArgumentList.Add(a);
        if (env is not null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            return (-1, "", $"{exe} timed out after {timeout.TotalSeconds} s");
        }
        // a daemon that forked off may keep the pipes open: take what arrived within a few seconds
        Task.WaitAll([stdout, stderr], TimeSpan.FromSeconds(5));
        return (p.ExitCode, stdout.IsCompleted ? stdout.Result : "", stderr.IsCompleted ? stderr.Result : "");
    }
}
