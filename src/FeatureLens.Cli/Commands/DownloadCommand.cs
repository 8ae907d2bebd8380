using System.CommandLine;
using FeatureLens.Runtime.Checkpoints;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>
/// featurelens download: fetch a model repo from the Hugging Face Hub into the standard cache (the only command that
/// uses the network). Progress goes to stderr; stdout gets the snapshot folder alone, so that
/// <c>--model "$(featurelens download ORG/NAME)"</c> works (so does <c>--model ORG/NAME</c> afterwards).
/// </summary>
internal static class DownloadCommand
{
    public static Command Build()
    {
        var repo = new Argument<string>("repo-id") { Description = "Hugging Face model repo, e.g. karpathy/tinyllamas" };
        var include = new Option<string[]>("--include")
        {
            Description = "Only files matching these globs (fnmatch: '*' also matches '/'; 'dir/' means everything below dir); several are OR-ed",
            AllowMultipleArgumentsPerToken = true,
        };
        var revision = new Option<string>("--revision") { Description = "Branch, tag or commit", DefaultValueFactory = _ => "main" };
        var retries = new Option<int>("--retries") { Description = "Retries per file after a dropped connection (each resumes from the bytes on disk)", DefaultValueFactory = _ => 5 };
        var cmd = new Command("download",
            "Download files of a Hugging Face Hub model repo into the Hugging Face cache (HF_HOME, HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN honoured); resumable, size and sha256 checked")
        {
            repo, include, revision, retries,
        };
        cmd.SetAction(async (r, ct) =>
        {
            int maxRetries = r.GetValue(retries);
            if (maxRetries < 0) throw new ArgumentException($"--retries {maxRetries}: expected 0 or more");
            using var downloader = new HubDownloader() { MaxRetries = maxRetries };
            var console = AnsiConsole.Create(new AnsiConsoleSettings
            {
                Out = new AnsiConsoleOutput(Console.Error),
                Ansi = Console.IsErrorRedirected ? AnsiSupport.No : AnsiSupport.Detect,
                ColorSystem = Console.IsErrorRedirected ? ColorSystemSupport.NoColors : ColorSystemSupport.Detect,
                Interactive = Console.IsErrorRedirected ? InteractionSupport.No : InteractionSupport.Detect,
            });
            if (Console.IsErrorRedirected) console.Profile.Width = 240; // logs get whole lines
            string repoId = r.GetValue(repo)!, rev = r.GetValue(revision)!;
            console.MarkupLine($"[grey]{Markup.Escape($"{repoId} @ {rev} from {downloader.Endpoint} into {downloader.CacheRoot}")}[/]");
            DownloadResult? result = null;
            try
            {
                await console.Progress().AutoClear(false).HideCompleted(false)
                    .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(),
                        new DownloadedColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                    .StartAsync(async p =>
                    {
                        var tasks = new Dictionary<string, ProgressTask>();
                        result = await downloader.DownloadAsync(repoId, rev, r.GetValue(include), new SyncProgress<DownloadProgress>(e => Show(console, p, tasks, e)), ct);
                    });
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                Console.Error.WriteLine("interrupted: partial files are kept as blobs/*.incomplete in the cache; run the same command again to resume");
                return 130;
            }
            int cached = result!.Files.Count(f => f.WasCached);
            Console.Error.WriteLine(
                $"{repoId} @ {rev} (commit {result.Commit}): {result.Files.Count - cached} files downloaded ({result.BytesTransferred:N0} bytes), {cached} already in the cache. " +
                $"Use --model {repoId} or the folder below.");
            Console.Out.WriteLine(result.SnapshotFolder);
            return 0;
        });
        return cmd;
    }

    /// <summary>One bar per transferred file, in bytes; cached files get no bar.</summary>
    static void Show(IAnsiConsole console, ProgressContext p, Dictionary<string, ProgressTask> tasks, DownloadProgress e)
    {
        if (e.Stage == DownloadStage.Cached) return;
        if (!tasks.TryGetValue(e.File, out var task))
        {
            task = p.AddTask(Markup.Escape(e.File), maxValue: Math.Max(1, e.TotalBytes ?? 1));
            task.IsIndeterminate = e.TotalBytes is null;
            tasks[e.File] = task;
        }
        if (e.TotalBytes is long total && total > 0) { task.MaxValue = total; task.IsIndeterminate = false; }
        switch (e.Stage)
        {
            case DownloadStage.Started or DownloadStage.Transferring:
                task.Value = e.Bytes;
                task.Description = Markup.Escape(e.File);
                break;
            case DownloadStage.Retrying:
                task.Description = Markup.Escape($"{e.File} (retrying)");
                console.MarkupLine($"[yellow]{Markup.Escape($"{e.File}: {e.Message}, resuming from byte {e.Bytes:N0}")}[/]");
                break;
            case DownloadStage.Done:
                task.MaxValue = Math.Max(1, e.Bytes);
                task.Value = task.MaxValue;
                task.Description = Markup.Escape(e.File);
                task.StopTask();
                break;
        }
    }
}
