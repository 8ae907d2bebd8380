using System.CommandLine;
using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Connections;
using FeatureLens.Database;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens scan / merge / feature: the feature database (corpus scan into SQLite, shards, dashboards).</summary>
internal static class ScanCommand
{
    public static Command Build()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var sae = Cli.SaeOption();
        var corpus = new Option<string[]>("--corpus") { Description = "Corpus file(s): text (documents separated by blank lines) or JSONL with a \"text\" field; repeat for several, read in order", Required = true };
        var db = new Option<string>("--db") { Description = "The SQLite feature database to write (written as DB.partial, moved into place when complete; an interrupted scan resumes)", Required = true };
        var tokens = new Option<long>("--tokens") { Description = "Tokens to read from the corpus (0: all)", DefaultValueFactory = _ => 1_000_000 };
        var context = new Option<int?>("--context") { Description = "Tokens per window, BOS included (default: the SAEs' context_size, else 128)" };
        var batch = new Option<int>("--batch") { Description = "Windows per block (one forward pass and one committed transaction; the unit of sharding)", DefaultValueFactory = _ => 16 };
        var top = new Option<int>("--top") { Description = "Top examples kept per feature", DefaultValueFactory = _ => 20 };
        var partnerTokens = new Option<int>("--partner-tokens") { Description = "Tokens at the start of the stream over which correlated partners (Pearson r) are computed", DefaultValueFactory = _ => 32_768 };
        var shard = new Option<string?>("--shard") { Description = "Scan only shard I/N: every N-th block starting at block I (merge the N shard databases with featurelens merge)" };
        var labels = TrackCommand.LabelsOption();
        var labelPrompts = new Option<string?>("--label-prompts") { Description = "Compute labels from labelled prompts (JSONL {\"text\", \"label\"}) and store them with the features" };
        var slurm = new Option<int?>("--slurm") { Description = "Submit the scan to Slurm as N shards (a job array of scripts/slurm/scan.sbatch) and a dependent merge into --db" };
        var slurmWork = new Option<string?>("--slurm-work") { Description = "With --slurm: the folder for shard databases and logs, on a file system every node sees (default: DB.shards)" };
        var sbatch = new Option<string[]>("--sbatch") { Description = "With --slurm: an extra sbatch option for both jobs (e.g. --sbatch=--partition=cpu); repeat for several" };
        var wait = new Option<bool>("--wait") { Description = "With --slurm: wait until the merge has finished (and fail if a shard fails)" };
        var cmd = new Command("scan", "Scan a corpus with a model and SAEs into a SQLite feature database: per feature its frequency, max, means, histogram, top and quantile examples, logit lens, correlated partners and labels")
        {
            model, tokenizer, sae, corpus, db, tokens, context, batch, top, partnerTokens, shard, labels, labelPrompts, slurm, slurmWork, sbatch, wait,
        };
        cmd.SetAction(r =>
        {
            if (r.GetValue(slurm) is int n) return SubmitToSlurm(n, r.GetValue(db)!, r.GetValue(slurmWork), r.GetValue(sbatch) ?? [], r.GetValue(wait), r.GetValue(shard));
            if (r.GetValue(wait) || r.GetValue(slurmWork) != null || (r.GetValue(sbatch)?.Length ?? 0) > 0)
                throw new ArgumentException("--wait, --slurm-work and --sbatch go with --slurm N");
            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer));
            var saePaths = r.GetValue(sae)!;
            var set = new SaeSet(m, SaeCommand.LoadSaes(saePaths));
            int ctx = r.GetValue(context) ?? set.Saes.Select(s => s.Config.Metadata.ContextSize ?? 0).Where(c => c > 0).DefaultIfEmpty(128).Min();
            ctx = Math.Min(ctx, m.Config.NCtx);
            var settings = new ScanSettings
            {
                Context = ctx, Tokens = r.GetValue(tokens), BlockWindows = r.GetValue(batch), TopExamples = r.GetValue(top), PartnerTokens = r.GetValue(partnerTokens),
            };
            settings.Validate();
            var spec = r.GetValue(shard) is string s ? ShardSpec.Parse(s) : ShardSpec.All;
            FeatureLabelLookup? lookup = null;
            if (r.GetValue(labels) is string lp) lookup = FeatureLabels.Load(lp, set);
            if (r.GetValue(labelPrompts) is string pp)
            {
                if (lookup != null) throw new ArgumentException("--labels and --label-prompts: give one of them");
                lookup = FeatureLabels.Compute(set, FeatureLabels.ReadLabelledPrompts(pp).ToList());
            }
            var corpusFiles = r.GetValue(corpus)!;
            RunWithProgress(set, saePaths, corpusFiles, settings, spec, r.GetValue(db)!, lookup, asShard: r.GetValue(shard) != null);
            return 0;
        });
        return cmd;
    }

    /// <summary>A scan with a progress bar and a closing summary line (scan and demo).</summary>
    internal static ScanSummary RunWithProgress(SaeSet set, IReadOnlyList<string> saePaths, IReadOnlyList<string> corpusFiles, ScanSettings settings,
        ShardSpec spec, string db, FeatureLabelLookup? labels, bool asShard)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        ScanSummary summary = null!;
        AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(p =>
            {
                var task = p.AddTask($"scanning{(spec.Count > 1 ? $" shard {spec}" : "")}", maxValue: 1);
                summary = CorpusScan.Run(set, saePaths, corpusFiles, settings, spec, db, labels, new Progress<ScanProgress>(x =>
                {
                    task.Description = $"{x.Stage}{(spec.Count > 1 ? $" (shard {spec})" : "")}: {x.TokensDone:N0} tokens";
                    if (x.BlocksOwned is long total && total > 0) { task.MaxValue = total; task.Value = Math.Min(x.BlocksDone, total); }
                }), asShard: asShard);
                task.Value = task.MaxValue;
            });
        watch.Stop();
        if (summary.AlreadyComplete) AnsiConsole.MarkupLine($"{summary.Path.EscapeMarkup()} is already complete ({summary.Tokens:N0} tokens); nothing to do");
        else
            AnsiConsole.MarkupLine($"{(summary.Resumed ? "resumed and finished" : "scanned")} {summary.Tokens:N0} tokens ({summary.Blocks} blocks) in {watch.Elapsed.TotalSeconds:F1} s " +
                $"({summary.Tokens / Math.Max(1e-9, watch.Elapsed.TotalSeconds):F0} tokens/s) → {summary.Path.EscapeMarkup()} ({new FileInfo(summary.Path).Length / 1048576.0:F1} MiB)");
        return summary;
    }

    /// <summary>scan --slurm N: forwards this command line (less the Slurm options and --db) to N shard jobs and a merge job.</summary>
    static int SubmitToSlurm(int n, string db, string? work, string[] sbatchOptions, bool wait, string? shard)
    {
        if (shard != null) throw new ArgumentException("--slurm and --shard: Slurm assigns the shards; give --slurm N alone");
        var args = Environment.GetCommandLineArgs();
        int at = Array.IndexOf(args, "scan");
        if (at < 0) throw new InvalidOperationException("cannot find the scan arguments on this command line");
        var scanArgs = SlurmSubmit.WithoutOptions(args[(at + 1)..], ["--slurm", "--db", "--slurm-work", "--sbatch"], ["--wait"]);
        var slurm = new SlurmSubmit();
        var jobs = slurm.Submit(new SlurmScanRequest
        {
            FeatureLens = SlurmSubmit.CommandOfThisProcess(), ScanArguments = scanArgs, Shards = n, Database = Path.GetFullPath(db),
            WorkFolder = work == null ? null : Path.GetFullPath(work), SbatchOptions = sbatchOptions,
        });
        AnsiConsole.MarkupLine($"submitted scan array {jobs.ScanJobId} ({n} shards) and merge job {jobs.MergeJobId}; shards and logs in {jobs.WorkFolder.EscapeMarkup()}");
        if (!wait) return 0;
        slurm.Wait(jobs, Timeout.InfiniteTimeSpan, progress: msg => AnsiConsole.MarkupLine(msg.EscapeMarkup()));
        AnsiConsole.MarkupLine($"merged → {jobs.Database.EscapeMarkup()}");
        return 0;
    }

    public static Command Merge()
    {
        var output = new Option<string>("--out") { Description = "The merged feature database to write", Required = true };
        var shards = new Argument<string[]>("shards") { Description = "The shard databases (all N shards of one scan)", Arity = ArgumentArity.OneOrMore };
        var cmd = new Command("merge", "Merge the shard databases of a sharded scan (featurelens scan --shard I/N) into the database the unsharded scan writes") { output, shards };
        cmd.SetAction(r =>
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            var s = DatabaseMerge.Run(r.GetValue(output)!, r.GetValue(shards)!, msg => AnsiConsole.MarkupLine($"merge: {msg.EscapeMarkup()}"));
            AnsiConsole.MarkupLine($"merged {r.GetValue(shards)!.Length} shards: {s.Tokens:N0} tokens, {s.Blocks} blocks in {watch.Elapsed.TotalSeconds:F1} s → {s.Path.EscapeMarkup()}");
            return 0;
        });
        return cmd;
    }

    public static Command Feature()
    {
        var db = new Option<string>("--db") { Description = "A feature database (featurelens scan / merge)", Required = true };
        var sae = new Option<string>("--sae") { Description = "The SAE: its hook (blocks.3.hook_resid_post) or short name", Required = true };
        var feature = new Option<int>("--feature") { Description = "The latent index", Required = true };
        var json = new Option<string?>("--json") { Description = "Also write the whole dashboard as JSON to this file" };
        var examples = new Option<int>("--examples") { Description = "Top examples printed", DefaultValueFactory = _ => 10 };
        var connections = new Option<bool>("--connections") { Description = "Also compute the feature's upstream and downstream features over its top examples (needs --model and --sae-dir)" };
        var model = new Option<string?>("--model") { Description = "With --connections: the model the database was scanned with" };
        var tokenizer = Cli.TokenizerOption();
        var saeDirs = new Option<string[]>("--sae-dir") { Description = "With --connections: the SAE folders the database was scanned with (or a folder of them); repeat for several", AllowMultipleArgumentsPerToken = true };
        var connExamples = new Option<int>("--connection-examples") { Description = "With --connections: how many of the top examples to compute them over", DefaultValueFactory = _ => 8 };
        var top = new Option<int>("--top") { Description = "With --connections: partners listed on each side", DefaultValueFactory = _ => 10 };
        var cmd = new Command("feature", "Show a feature's dashboard from a feature database: statistics, top and quantile examples, histogram, logit lens, partners, label; with --connections its upstream and downstream features")
        {
            db, sae, feature, json, examples, connections, model, tokenizer, saeDirs, connExamples, top,
        };
        cmd.SetAction(r =>
        {
            bool conn = r.GetValue(connections);
            string? modelPath = r.GetValue(model);
            var dirs = r.GetValue(saeDirs) ?? [];
            if (!conn && (modelPath != null || dirs.Length > 0 || r.GetValue(tokenizer) != null))
                throw new ArgumentException("--model, --tokenizer and --sae-dir are for --connections: add --connections");
            if (conn && (modelPath == null || dirs.Length == 0))
                throw new ArgumentException("--connections needs the model and the SAE folders the database was scanned with: pass --model M --sae-dir DIR...");
            using var store = FeatureStore.Open(r.GetValue(db)!);
            var s = store.Sae(r.GetValue(sae)!);
            var d = store.Dashboard(s, r.GetValue(feature));
            FeatureConnectionsResult? c = null;
            if (conn)
            {
                if (r.GetValue(connExamples) < 1) throw new ArgumentException($"--connection-examples must be at least 1 (got {r.GetValue(connExamples)})");
                if (r.GetValue(top) < 1) throw new ArgumentException($"--top must be at least 1 (got {r.GetValue(top)})");
                using var m = Cli.LoadModel(modelPath!, r.GetValue(tokenizer));
                var sources = FeatureConnections.Match(store, m, SaeCommand.LoadSaes(dirs));
                c = FeatureConnections.Compute(store, s, d.Feature, sources, r.GetValue(connExamples), r.GetValue(top));
            }
            if (r.GetValue(json) is string path)
            {
                if (c == null) TrackCommand.WriteJson(path, d);
                else
                {
                    var o = JsonSerializer.SerializeToNode(d, TrackCommand.Json)!.AsObject();
                    o["upstream"] = JsonSerializer.SerializeToNode(c.Upstream, TrackCommand.Json);
                    o["downstream"] = JsonSerializer.SerializeToNode(c.Downstream, TrackCommand.Json);
                    o["connections"] = JsonSerializer.SerializeToNode(c, TrackCommand.Json);
                    TrackCommand.WriteJson(path, o);
                }
            }
            Print(d, r.GetValue(examples));
            if (c != null) PrintConnections(c);
            return 0;
        });
        return cmd;
    }

    static void PrintConnections(FeatureConnectionsResult c)
    {
        foreach (var (title, list, what) in new[]
        {
            ($"upstream features (gradient attribution to feature {c.Feature}@pos, zero ablation; over {c.Examples} top examples)", c.Upstream, "mean effect"),
            ($"downstream features (exact change when feature {c.Feature} is zeroed at every position; over {c.Examples} top examples)", c.Downstream, "mean change"),
        })
        {
            var t = new Table().Border(TableBorder.Rounded).AddColumns("SAE", "feature", what, "examples", "label");
            t.Title = new TableTitle(title);
            foreach (var p in list) t.AddRow(p.Sae.EscapeMarkup(), $"{p.Feature}", $"{p.Effect:G5}", $"{p.Fraction:P0}", (p.Label ?? "").EscapeMarkup());
            if (list.Length == 0) t.AddRow("", "", "", "", "none");
            AnsiConsole.Write(t);
        }
        if (c.UpstreamErrors.Length > 0)
            AnsiConsole.MarkupLine(("error nodes: " + string.Join(", ", c.UpstreamErrors.Select(e => $"{e.Sae} {e.Effect:G4}")) +
                (c.ErrorShare is double share ? $" — {share:P1} of all upstream |effect|" : "")).EscapeMarkup());
        if (c.MissingSaes.Length > 0)
            AnsiConsole.MarkupLine($"not loaded (no partners from them): {string.Join(", ", c.MissingSaes)}".EscapeMarkup());
    }

    static void Print(FeatureDashboard d, int examples)
    {
        AnsiConsole.MarkupLine($"[bold]{d.Sae.EscapeMarkup()} feature {d.Feature}[/]{(d.Label is { } l ? $" — {l.Label.EscapeMarkup()}{(l.F1 is double f1 ? $" (F1 {f1:F2})" : "")}" : "")}");
        AnsiConsole.MarkupLine($"fires on {d.Count:N0} of {d.TokensScanned:N0} tokens (frequency {d.Frequency:G4}); max {d.Max:G5}; mean {d.Mean:G4} over all tokens, {d.MeanActive:G4} when firing");
        if (d.Top.Length > 0)
        {
            var t = new Table().Border(TableBorder.Rounded).AddColumns("activation", "context (the firing token in brackets)");
            t.Title = new TableTitle("top examples");
            foreach (var e in d.Top.Take(examples)) t.AddRow($"{e.Activation:G5}", Context(e).EscapeMarkup());
            AnsiConsole.Write(t);
        }
        if (d.Intervals.Length > 0)
        {
            var t = new Table().Border(TableBorder.Rounded).AddColumns("interval", "share", "example");
            t.Title = new TableTitle("quantile intervals");
            foreach (var iv in d.Intervals)
            {
                var ex = d.Quantiles.FirstOrDefault(q => q.Interval == iv.Index);
                t.AddRow($"{iv.Lower:G3} – {iv.Upper:G3}", $"{iv.Fraction:P1}", ex == null ? "" : $"{ex.Activation:G4}: {Context(ex)}".EscapeMarkup());
            }
            AnsiConsole.Write(t);
        }
        if (d.Histogram.Counts.Length > 0)
        {
            var chart = new BarChart().Label("activation histogram (log-spaced bins)").Width(70);
            for (int i = 0; i < d.Histogram.Counts.Length; i++)
                chart.AddItem($"{d.Histogram.Edges[i]:G3}", d.Histogram.Counts[i], Color.SteelBlue);
            AnsiConsole.Write(chart);
        }
        if (d.Logits is { } lg)
        {
            var t = new Table().Border(TableBorder.Rounded).AddColumns("promoted", "value", "suppressed", "value");
            t.Title = new TableTitle("logit lens (decoder · final norm · W_U)");
            for (int i = 0; i < Math.Max(lg.Top.Length, lg.Bottom.Length); i++)
                t.AddRow(i < lg.Top.Length ? Quote(lg.Top[i].Text).EscapeMarkup() : "", i < lg.Top.Length ? $"{lg.Top[i].Value:G4}" : "",
                    i < lg.Bottom.Length ? Quote(lg.Bottom[i].Text).EscapeMarkup() : "", i < lg.Bottom.Length ? $"{lg.Bottom[i].Value:G4}" : "");
            AnsiConsole.Write(t);
        }
        if (d.Partners.Length > 0)
        {
            var t = new Table().Border(TableBorder.Rounded).AddColumns("correlated feature", "r");
            t.Title = new TableTitle("partners (Pearson r over the partner sample)");
            foreach (var p in d.Partners) t.AddRow($"{p.Sae} {p.Feature}".EscapeMarkup(), $"{p.R:F3}");
            AnsiConsole.Write(t);
        }
    }

    static string Quote(string s) => "'" + s.Replace("\n", "\\n", StringComparison.Ordinal) + "'";

    /// <summary>Up to 12 tokens either side of the firing token, which is bracketed.</summary>
    static string Context(DashboardExample e)
    {
        int lo = Math.Max(1, e.Pos - 12), hi = Math.Min(e.Text.Length - 1, e.Pos + 12);
        var sb = new System.Text.StringBuilder();
        for (int i = lo; i <= hi; i++) sb.Append(i == e.Pos ? $"[{e.Text[i]}]" : e.Text[i]);
        return sb.ToString().Replace("\n", "\\n", StringComparison.Ordinal);
    }
}
