using System.Buffers.Binary;
using System.Diagnostics;
using System.Text.Json.Nodes;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Tokenizers;
using Microsoft.Data.Sqlite;

namespace FeatureLens.Database;

/// <summary>Where a scan stands: blocks done of those it owns (total known once the stream has been read to its end).</summary>
public readonly record struct ScanProgress(long BlocksDone, long? BlocksOwned, long TokensDone, string Stage);

/// <summary>What a finished scan wrote.</summary>
public sealed record ScanSummary(string Path, long Tokens, long Blocks, long Windows, bool AlreadyComplete, bool Resumed)
{
    /// <summary>Where this run's time went.</summary>
    public ScanTimings Timings { get; init; } = new();
}

/// <summary>Wall-clock seconds of a scan's stages in this run (blocks resumed from an earlier run are not counted).</summary>
public sealed class ScanTimings
{
    /// <summary>Reading and tokenizing the corpus into windows.</summary>
    public double Tokenize { get; internal set; }
    /// <summary>The model's forward pass to the SAE hooks and the SAE encoders, every block.</summary>
    public double ModelAndEncode { get; internal set; }
    /// <summary>Counts, sums, maxima, histograms, top and sampled examples (<see cref="ScanAccumulator"/>), every block.</summary>
    public double Accumulate { get; internal set; }
    /// <summary>Packing the partner sample and each block's SQLite transaction (windows, sample, statistics, examples).</summary>
    public double Commit { get; internal set; }
    /// <summary>The decoder logit lens of every latent.</summary>
    public double LogitLens { get; internal set; }
    /// <summary>The feature table, partners (Pearson over the sample), the token index and the search index.</summary>
    public double Finalize { get; internal set; }
}

/// <summary>
/// <c>featurelens scan</c>: streams a corpus through the model with every SAE, block by block, into a feature database.
/// The corpus is packed into windows (<see cref="Corpus.Windows"/>: BOS + context − 1 tokens), numbered in stream order;
/// block b holds windows [b·W, (b+1)·W). A shard I/N runs the blocks b ≡ I (mod N). Every block is one forward pass and
/// one committed transaction, so an interrupted scan resumes at the first block not committed and ends with the same
/// database. The file is written as <c>PATH.partial</c> and moved to PATH when complete.
/// </summary>
public static class CorpusScan
{
    /// <summary>
    /// Runs (or resumes) a scan; <paramref name="labels"/> are stored with the features when given. A whole scan
    /// (<see cref="ShardSpec.All"/>, <paramref name="asShard"/> false) is finished for dashboards; a shard (any other
    /// spec, or 0/1 with <paramref name="asShard"/>) keeps its raw tables for <see cref="DatabaseMerge"/>.
    /// </summary>
    public static ScanSummary Run(SaeSet set, IReadOnlyList<string> saePaths, IReadOnlyList<string> corpus, ScanSettings settings, ShardSpec shard,
        string dbPath, FeatureLabelLookup? labels = null, IProgress<ScanProgress>? progress = null, bool asShard = false, CancellationToken cancel = default)
    {
        bool whole = shard.Count == 1 && !asShard;
        string shardName = whole ? "all" : shard.ToString();
        settings.Validate();
        if (corpus.Count == 0) throw new ArgumentException("--corpus: give at least one corpus file");
        foreach (var f in corpus) if (!File.Exists(f)) throw new FileNotFoundException($"corpus file not found: {f}");
        if (settings.Context > set.Model.Config.NCtx) throw new ArgumentException($"--context {settings.Context} exceeds the model's context of {set.Model.Config.NCtx} tokens");
        if (settings.Context > ushort.MaxValue) throw new ArgumentException($"--context must be at most {ushort.MaxValue}, got {settings.Context}");
        var tok = set.Model.Tokenizer ?? throw new ArgumentException("the model has no tokenizer beside it: pass --tokenizer PATH");
        int bos = tok.BosId ?? throw new ArgumentException("the tokenizer has no BOS token; scans put BOS at the start of every window");
        string full = Path.GetFullPath(dbPath);
        string dir = Path.GetDirectoryName(full)!;
        if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"--db: folder {dir} does not exist");
        var identity = ScanIdentity.Of(set, corpus, settings);

        if (File.Exists(full))
        {
            using var existing = FeatureDatabase.OpenChecked(full, readOnly: true);
            var id = FeatureDatabase.Identity(existing, full);
            string? theirShard = FeatureDatabase.Meta(existing, "shard");
            if (id.Id == identity.Id && theirShard == shardName && FeatureDatabase.Meta(existing, "status") == "complete")
                return new ScanSummary(full, long.Parse(FeatureDatabase.NeedMeta(existing, "tokens", full), CultureInfo.InvariantCulture), 0, 0, true, false);
            throw new IOException($"{full} already exists and holds {(id.Id == identity.Id ? $"shard {theirShard} of this scan" : $"another scan (it differs in {id.Describe(identity)})")}; remove it or choose another --db");
        }

        string partial = full + ".partial";
        bool resumed = File.Exists(partial);
        var saes = set.Saes;
        int S = saes.Count;
        var acc = saes.Select((s, i) => new ScanAccumulator(i, s.DSae, settings.TopExamples, settings.IntervalExamples)).ToArray();
        var doneBlocks = new HashSet<long>();
        long tokens = 0;
        SqliteConnection db;
        if (resumed)
        {
            db = FeatureDatabase.OpenChecked(partial, readOnly: false);
            var id = FeatureDatabase.Identity(db, partial);
            if (id.Id != identity.Id)
            {
                db.Dispose();
                throw new InvalidDataException($"{partial}: an interrupted scan of something else (it differs in {id.Describe(identity)}); remove it to start this scan");
            }
            if (FeatureDatabase.Meta(db, "shard") != shardName)
            {
                string other = FeatureDatabase.Meta(db, "shard") ?? "?";
                db.Dispose();
                throw new InvalidDataException($"{partial}: an interrupted scan of {(other == "all" ? "the whole corpus" : $"shard {other}")}, not {(whole ? "the whole corpus" : $"shard {shard}")}; remove it or {(other == "all" ? "drop --shard" : $"pass --shard {other}")}");
            }
            tokens = LoadState(db, partial, acc, doneBlocks);
        }
        else
        {
            db = FeatureDatabase.Create(partial);
            WriteHeader(db, set, saePaths, corpus, settings, shardName, identity, labels);
        }

        try
        {
            var timings = new ScanTimings();
            long tRead = Stopwatch.GetTimestamp();
            var windowBatch = new List<int[]>(settings.BlockWindows);
            long window = 0, block = 0, doneNow = doneBlocks.Count;
            long? ownedTotal = settings.Tokens > 0 ? OwnedBlocks(EstimatedBlocks(settings), shard) : null;
            progress?.Report(new ScanProgress(doneNow, ownedTotal, tokens, "scanning"));
            var windows = Corpus.Windows(corpus.SelectMany(Corpus.Documents), tok, settings.Context, prependBos: true, maxTokens: settings.Tokens);
            foreach (var w in windows)
            {
                windowBatch.Add(w);
                window++;
                if (windowBatch.Count < settings.BlockWindows) continue;
                if (ScanBlock(block, window - windowBatch.Count)) progress?.Report(new ScanProgress(++doneNow, ownedTotal, tokens, "scanning"));
                windowBatch.Clear();
                block++;
            }
            if (windowBatch.Count > 0)
            {
                if (ScanBlock(block, window - windowBatch.Count)) progress?.Report(new ScanProgress(++doneNow, ownedTotal, tokens, "scanning"));
                block++;
            }
            if (window == 0) throw new InvalidDataException($"the corpus ({string.Join(", ", corpus)}) holds no text to scan");

            bool ScanBlock(long b, long firstWindow)
            {
                cancel.ThrowIfCancellationRequested();
                if (!shard.Owns(b) || doneBlocks.Contains(b)) return false;
                timings.Tokenize += Stopwatch.GetElapsedTime(tRead).TotalSeconds;
                tokens += ProcessBlock(db, set, settings, acc, bos, b, firstWindow, windowBatch, timings);
                tRead = Stopwatch.GetTimestamp();
                doneBlocks.Add(b);
                return true;
            }

            using (var tx = db.BeginTransaction())
            {
                FeatureDatabase.SetMeta(db, tx, "stream_windows", window.ToString(CultureInfo.InvariantCulture));
                FeatureDatabase.SetMeta(db, tx, "stream_blocks", block.ToString(CultureInfo.InvariantCulture));
                tx.Commit();
            }
            progress?.Report(new ScanProgress(doneNow, OwnedBlocks(block, shard), tokens, "logit lens"));
            timings.Tokenize += Stopwatch.GetElapsedTime(tRead).TotalSeconds;
            long tLens = Stopwatch.GetTimestamp();
            WriteLogitLens(db, set, settings, shard, cancel);
            timings.LogitLens = Stopwatch.GetElapsedTime(tLens).TotalSeconds;
            if (whole)
            {
                progress?.Report(new ScanProgress(doneNow, doneNow, tokens, "partners"));
                long tFinal = Stopwatch.GetTimestamp();
                ScanFinalize.Run(db, set.Saes.Select(s => s.DSae).ToArray(), settings, partial);
                timings.Finalize = Stopwatch.GetElapsedTime(tFinal).TotalSeconds;
            }
            using (var tx = db.BeginTransaction())
            {
                FeatureDatabase.SetMeta(db, tx, "status", "complete");
                tx.Commit();
            }
            FeatureDatabase.Seal(db);
            FeatureDatabase.MoveIntoPlace(partial, full);
            return new ScanSummary(full, tokens, doneNow, window, false, resumed) { Timings = timings };
        }
        finally { db.Dispose(); }
    }

    static long EstimatedBlocks(ScanSettings s)
    {
        long windows = Math.Max(1, (s.Tokens + s.Context - 1) / s.Context);
        return (windows + s.BlockWindows - 1) / s.BlockWindows;
    }

    static long OwnedBlocks(long blocks, ShardSpec shard) => blocks <= shard.Index ? 0 : (blocks - shard.Index + shard.Count - 1) / shard.Count;

    static void WriteHeader(SqliteConnection db, SaeSet set, IReadOnlyList<string> saePaths, IReadOnlyList<string> corpus, ScanSettings settings,
        string shard, ScanIdentity identity, FeatureLabelLookup? labels)
    {
        using var tx = db.BeginTransaction();
        void Meta(string k, string v) => FeatureDatabase.SetMeta(db, tx, k, v);
        Meta("format", FeatureDatabase.Format);
        Meta("version", FeatureDatabase.Version.ToString(CultureInfo.InvariantCulture));
        Meta("identity", identity.ToJson().ToJsonString());
        Meta("id", identity.Id);
        Meta("shard", shard);
        Meta("status", "scanning");
        Meta("tokens", "0");
        Meta("settings", settings.ToJson().ToJsonString());
        var cfg = set.Model.Config;
        Meta("model", new JsonObject
        {
            ["name"] = ScanIdentity.NameOf(cfg), ["source"] = cfg.Source, ["architecture"] = cfg.Architecture.ToString(), ["n_layers"] = cfg.NLayers,
            ["d_model"] = cfg.DModel, ["d_vocab"] = cfg.VocabSize, ["bos"] = set.Model.Tokenizer?.BosId,
        }.ToJsonString());
        Meta("corpus", new JsonArray([.. corpus.Select(f => (JsonNode)new JsonObject { ["file"] = Path.GetFileName(f), ["bytes"] = new FileInfo(f).Length })]).ToJsonString());
        using (var cmd = db.CreateCommand())
        {
            cmd.Transaction = tx;
            cmd.CommandText = "INSERT INTO saes(sae, hook, name, path, d_in, d_sae, architecture, fingerprint) VALUES($i, $h, $n, $p, $di, $d, $a, $f)";
            for (int i = 0; i < set.Saes.Count; i++)
            {
                var s = set.Saes[i];
                cmd.Parameters.Clear();
                cmd.Parameters.AddWithValue("$i", i); cmd.Parameters.AddWithValue("$h", set.Hooks[i]); cmd.Parameters.AddWithValue("$n", set.Names[i]);
                cmd.Parameters.AddWithValue("$p", s.SourcePath ?? (i < saePaths.Count ? saePaths[i] : ""));
                cmd.Parameters.AddWithValue("$di", s.DIn); cmd.Parameters.AddWithValue("$d", s.DSae);
                cmd.Parameters.AddWithValue("$a", s.Config.Architecture.ToString()); cmd.Parameters.AddWithValue("$f", identity.Saes[i]);
                cmd.ExecuteNonQuery();
            }
        }
        if (set.Model.Tokenizer is { } tok)
            using (var cmd = db.CreateCommand())
            {
                cmd.Transaction = tx;
                cmd.CommandText = "INSERT INTO vocab(token, text) VALUES($t, $s)";
                var pt = cmd.Parameters.Add("$t", SqliteType.Integer); var ps = cmd.Parameters.Add("$s", SqliteType.Text);
                for (int v = 0; v < tok.VocabSize; v++) { pt.Value = v; ps.Value = tok.TokenText(v); cmd.ExecuteNonQuery(); }
            }
        if (labels != null)
            using (var cmd = db.CreateCommand())
            {
                cmd.Transaction = tx;
                cmd.CommandText = "INSERT INTO labels(sae, feature, label, f1, precision, recall, specialization) VALUES($s, $f, $l, $f1, $p, $r, $sp)";
                foreach (var (hook, feature, label) in labels.All())
                {
                    int s = set.Hooks.ToList().IndexOf(hook);
                    if (s < 0 || feature < 0 || feature >= set.Saes[s].DSae) continue;
                    cmd.Parameters.Clear();
                    cmd.Parameters.AddWithValue("$s", s); cmd.Parameters.AddWithValue("$f", feature); cmd.Parameters.AddWithValue("$l", label.Label);
                    cmd.Parameters.AddWithValue("$f1", (object?)label.F1 ?? DBNull.Value); cmd.Parameters.AddWithValue("$p", (object?)label.Precision ?? DBNull.Value);
                    cmd.Parameters.AddWithValue("$r", (object?)label.Recall ?? DBNull.Value); cmd.Parameters.AddWithValue("$sp", (object?)label.Specialization ?? DBNull.Value);
                    cmd.ExecuteNonQuery();
                }
            }
        tx.Commit();
    }

    /// <summary>Reads a partial scan back: done blocks, counted tokens, statistics and examples.</summary>
    static long LoadState(SqliteConnection db, string path, ScanAccumulator[] acc, HashSet<long> doneBlocks)
    {
        long tokens = 0;
        using (var cmd = db.CreateCommand())
        {
            cmd.CommandText = "SELECT block, tokens FROM blocks";
            using var r = cmd.ExecuteReader();
            while (r.Read()) { doneBlocks.Add(r.GetInt64(0)); tokens += r.GetInt64(1); }
        }
        ScanStore.ReadStats(db, path, acc, (a, st) => a.MergeStats(st.Count, st.Sum, st.Max, st.Hist));
        ScanStore.ReadExamples(db, path, acc, stored: true);
        return tokens;
    }

    /// <summary>Runs one block, adds it to the accumulators and commits it; returns the tokens counted (non-BOS).</summary>
    static long ProcessBlock(SqliteConnection db, SaeSet set, ScanSettings settings, ScanAccumulator[] acc, int bos, long block, long firstWindow, List<int[]> windows,
        ScanTimings timings)
    {
        var batch = windows.ToArray();
        long t0 = Stopwatch.GetTimestamp();
        var acts = FeatureTracker.RunSparseLatents(set, batch);
        long t1 = Stopwatch.GetTimestamp();
        timings.ModelAndEncode += Stopwatch.GetElapsedTime(t0, t1).TotalSeconds;
        int B = batch.Length, C = settings.Context;
        var row0 = new int[B];
        for (int b = 1; b < B; b++) row0[b] = row0[b - 1] + batch[b - 1].Length;
        var skips = batch.Select(w => w.Select(t => t == bos).ToArray()).ToArray();
        long counted = skips.Sum(s => (long)s.Count(x => !x));
        Parallel.For(0, acc.Length, s =>
        {
            for (int b = 0; b < B; b++)
                acc[s].AddWindow(acts[s], row0[b], batch[b].Length, (firstWindow + b) * C, skips[b]);
        });
        long t2 = Stopwatch.GetTimestamp();
        timings.Accumulate += Stopwatch.GetElapsedTime(t1, t2).TotalSeconds;
        var sample = new List<(long Window, byte[] Data)>();
        for (int b = 0; b < B; b++)
            if (firstWindow + b < settings.PartnerWindows)
                sample.Add((firstWindow + b, ScanStore.PackSampleWindow(acts, row0[b], batch[b].Length, skips[b])));

        using var tx = db.BeginTransaction();
        using (var cmd = db.CreateCommand())
        {
            cmd.Transaction = tx;
            cmd.CommandText = "INSERT INTO windows(window, tokens) VALUES($w, $t)";
            var pw = cmd.Parameters.Add("$w", SqliteType.Integer); var pt = cmd.Parameters.Add("$t", SqliteType.Blob);
            for (int b = 0; b < B; b++) { pw.Value = firstWindow + b; pt.Value = FeatureDatabase.PackTokens(batch[b]); cmd.ExecuteNonQuery(); }
        }
        using (var cmd = db.CreateCommand())
        {
            cmd.Transaction = tx;
            cmd.CommandText = "INSERT INTO sample(window, data) VALUES($w, $d)";
            var pw = cmd.Parameters.Add("$w", SqliteType.Integer); var pd = cmd.Parameters.Add("$d", SqliteType.Blob);
            foreach (var (w, data) in sample) { pw.Value = w; pd.Value = data; cmd.ExecuteNonQuery(); }
        }
        ScanStore.WriteAccumulators(db, tx, acc);
        using (var cmd = db.CreateCommand())
        {
            cmd.Transaction = tx;
            cmd.CommandText = "INSERT INTO blocks(block, windows, tokens) VALUES($b, $w, $t); UPDATE meta SET value = CAST(CAST(value AS INTEGER) + $t AS TEXT) WHERE key = 'tokens'";
            cmd.Parameters.AddWithValue("$b", block); cmd.Parameters.AddWithValue("$w", B); cmd.Parameters.AddWithValue("$t", counted);
            cmd.ExecuteNonQuery();
        }
        tx.Commit();
        timings.Commit += Stopwatch.GetElapsedTime(t2).TotalSeconds;
        return counted;
    }

    /// <summary>The logit lens of the latents this shard owns (global latent index ≡ shard index mod N), one commit per SAE.</summary>
    static void WriteLogitLens(SqliteConnection db, SaeSet set, ScanSettings settings, ShardSpec shard, CancellationToken cancel)
    {
        if (settings.LogitTokens == 0) return;
        long offset = 0;
        for (int s = 0; s < set.Saes.Count; s++)
        {
            var sae = set.Saes[s];
            long first = offset;
            offset += sae.DSae;
            long have;
            using (var cmd = db.CreateCommand())
            {
                cmd.CommandText = "SELECT count(*) FROM logit_lens WHERE sae = $s";
                cmd.Parameters.AddWithValue("$s", s);
                have = Convert.ToInt64(cmd.ExecuteScalar(), CultureInfo.InvariantCulture);
            }
            if (have > 0 || !LogitLens.Supports(set.Model, sae)) continue; // written before an interruption, or no lens
            var owned = Enumerable.Range(0, sae.DSae).Where(j => (first + j) % shard.Count == shard.Index).ToList();
            using var tx = db.BeginTransaction();
            using var ins = db.CreateCommand();
            ins.Transaction = tx;
            ins.CommandText = "INSERT INTO logit_lens(sae, feature, data) VALUES($s, $f, $d)";
            var ps = ins.Parameters.Add("$s", SqliteType.Integer); var pf = ins.Parameters.Add("$f", SqliteType.Integer); var pd = ins.Parameters.Add("$d", SqliteType.Blob);
            LogitLens.Compute(set.Model, sae, owned, settings.LogitTokens, chunk =>
            {
                cancel.ThrowIfCancellationRequested();
                foreach (var (j, top, bottom) in chunk) { ps.Value = s; pf.Value = j; pd.Value = LogitLens.Pack(top, bottom); ins.ExecuteNonQuery(); }
            });
            tx.Commit();
        }
    }
}
