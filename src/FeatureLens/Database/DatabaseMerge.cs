using System.Text.Json.Nodes;
using Microsoft.Data.Sqlite;

namespace FeatureLens.Database;

/// <summary>
/// <c>featurelens merge</c>: combines the shards of one scan into the database the unsharded scan would have written.
/// Every raw statistic merges exactly (integer counts, fixed-point sums, maxima, histogram counts; examples chosen by a
/// total order — activation then stream position for top examples, a hash priority for quantile samples), and the
/// finished tables are then computed from the merged raw tables just as an unsharded scan computes them.
/// </summary>
public static class DatabaseMerge
{
    /// <summary>Merges <paramref name="shards"/> (all N shards of one scan, any order) into <paramref name="outPath"/>.</summary>
    public static ScanSummary Run(string outPath, IReadOnlyList<string> shards, Action<string>? progress = null)
    {
        if (shards.Count == 0) throw new ArgumentException("merge: give the shard databases to merge");
        string full = Path.GetFullPath(outPath);
        if (File.Exists(full)) throw new IOException($"--out: {full} already exists; remove it or choose another path");
        if (!Directory.Exists(Path.GetDirectoryName(full))) throw new DirectoryNotFoundException($"--out: folder {Path.GetDirectoryName(full)} does not exist");
        var paths = shards.Select(Path.GetFullPath).ToList();
        if (paths.Distinct().Count() != paths.Count) throw new ArgumentException("merge: a shard database is given twice");
        if (paths.Contains(full)) throw new ArgumentException("merge: --out is one of the shards");

        // check every shard before writing anything
        ScanIdentity? identity = null; string? firstPath = null;
        var seen = new Dictionary<int, string>();
        long streamBlocks = -1;
        int N = -1;
        foreach (var p in paths)
        {
            using var db = FeatureDatabase.OpenChecked(p, readOnly: true);
            if (FeatureDatabase.Meta(db, "status") != "complete")
                throw new InvalidDataException($"{p}: the shard's scan is not complete (resume it with featurelens scan ... --shard {FeatureDatabase.Meta(db, "shard")})");
            var id = FeatureDatabase.Identity(db, p);
            if (identity == null) { identity = id; firstPath = p; }
            else if (id.Id != identity.Id) throw new InvalidDataException($"{p} and {firstPath} are shards of different scans: they differ in {id.Describe(identity)}");
            string shardText = FeatureDatabase.NeedMeta(db, "shard", p);
            if (shardText == "all" || FeatureDatabase.Meta(db, "finalized") == "true")
                throw new InvalidDataException($"{p}: a finished scan, not a shard (shards are written by featurelens scan --shard I/N)");
            var shard = ShardSpec.Parse(shardText);
            if (N < 0) N = shard.Count;
            else if (shard.Count != N) throw new InvalidDataException($"{p}: shard {shard} of a {shard.Count}-way scan, but {firstPath} is of a {N}-way scan");
            if (seen.TryGetValue(shard.Index, out var other)) throw new InvalidDataException($"{p} and {other} are both shard {shard}");
            seen[shard.Index] = p;
            long sb = long.Parse(FeatureDatabase.NeedMeta(db, "stream_blocks", p), CultureInfo.InvariantCulture);
            if (streamBlocks >= 0 && sb != streamBlocks) throw new InvalidDataException($"{p}: the corpus stream has {sb} blocks, {firstPath}'s has {streamBlocks}");
            streamBlocks = sb;
        }
        if (seen.Count != N)
            throw new ArgumentException($"merge: a {N}-way scan needs all {N} shards; missing {string.Join(", ", Enumerable.Range(0, N).Where(i => !seen.ContainsKey(i)).Select(i => $"{i}/{N}"))}");
        var ordered = Enumerable.Range(0, N).Select(i => seen[i]).ToList();

        string partial = full + ".partial";
        var outDb = FeatureDatabase.Create(partial);
        try
        {
            int[] dSae;
            ScanSettings settings;
            long tokens = 0;
            Attach(outDb, ordered[0]);
            using (var tx = outDb.BeginTransaction())
            {
                FeatureDatabase.Exec(outDb, """
                    INSERT INTO meta SELECT key, value FROM s.meta WHERE key NOT IN ('shard', 'status', 'tokens');
                    INSERT INTO saes SELECT * FROM s.saes; INSERT INTO vocab SELECT * FROM s.vocab; INSERT INTO labels SELECT * FROM s.labels;
                    """, tx);
                FeatureDatabase.SetMeta(outDb, tx, "shard", "all");
                FeatureDatabase.SetMeta(outDb, tx, "status", "merging");
                FeatureDatabase.SetMeta(outDb, tx, "merged_from", N.ToString(CultureInfo.InvariantCulture));
                tx.Commit();
            }
            FeatureDatabase.Exec(outDb, "DETACH DATABASE s");
            settings = ScanSettings.FromJson(JsonNode.Parse(FeatureDatabase.NeedMeta(outDb, "settings", partial))!, partial);
            using (var cmd = outDb.CreateCommand())
            {
                cmd.CommandText = "SELECT d_sae FROM saes ORDER BY sae";
                var list = new List<int>();
                using var r = cmd.ExecuteReader();
                while (r.Read()) list.Add(r.GetInt32(0));
                dSae = [.. list];
            }
            var acc = dSae.Select((d, s) => new ScanAccumulator(s, d, settings.TopExamples, settings.IntervalExamples)).ToArray();
            foreach (var p in ordered)
            {
                progress?.Invoke($"reading {Path.GetFileName(p)}");
                Attach(outDb, p);
                using (var tx = outDb.BeginTransaction())
                {
                    try
                    {
                        FeatureDatabase.Exec(outDb, """
                            INSERT INTO blocks SELECT * FROM s.blocks; INSERT INTO windows SELECT * FROM s.windows;
                            INSERT INTO sample SELECT * FROM s.sample; INSERT INTO logit_lens SELECT * FROM s.logit_lens;
                            """, tx);
                    }
                    catch (SqliteException e) when (e.SqliteErrorCode == 19) // constraint: a block, window or latent twice
                    {
                        throw new InvalidDataException($"{p}: holds blocks, windows or logit-lens rows another shard also holds ({e.Message})");
                    }
                    tx.Commit();
                }
                FeatureDatabase.Exec(outDb, "DETACH DATABASE s");
                using var shardDb = FeatureDatabase.OpenChecked(p, readOnly: true);
                ScanStore.ReadStats(shardDb, p, acc, (a, st) => a.MergeStats(st.Count, st.Sum, st.Max, st.Hist));
                ScanStore.ReadExamples(shardDb, p, acc, stored: false);
                tokens += long.Parse(FeatureDatabase.NeedMeta(shardDb, "tokens", p), CultureInfo.InvariantCulture);
            }
            long blocks;
            using (var cmd = outDb.CreateCommand())
            {
                cmd.CommandText = "SELECT count(*), coalesce(min(block), 0), coalesce(max(block), -1) FROM blocks";
                using var r = cmd.ExecuteReader();
                r.Read();
                blocks = r.GetInt64(0);
                if (blocks != streamBlocks || r.GetInt64(1) != 0 || r.GetInt64(2) != streamBlocks - 1)
                    throw new InvalidDataException($"merge: the shards hold {blocks} of the stream's {streamBlocks} blocks; a shard is incomplete");
            }
            using (var tx = outDb.BeginTransaction())
            {
                ScanStore.WriteAccumulators(outDb, tx, acc);
                FeatureDatabase.SetMeta(outDb, tx, "tokens", tokens.ToString(CultureInfo.InvariantCulture));
                tx.Commit();
            }
            progress?.Invoke("partners");
            ScanFinalize.Run(outDb, dSae, settings, partial);
            using (var tx = outDb.BeginTransaction())
            {
                FeatureDatabase.SetMeta(outDb, tx, "status", "complete");
                tx.Commit();
            }
            long windows = long.Parse(FeatureDatabase.NeedMeta(outDb, "stream_windows", partial), CultureInfo.InvariantCulture);
            FeatureDatabase.Seal(outDb);
            FeatureDatabase.MoveIntoPlace(partial, full);
            return new ScanSummary(full, tokens, blocks, windows, false, false);
        }
        catch
        {
            outDb.Dispose();
            foreach (var f in new[] { partial, partial + "-wal", partial + "-shm" }) if (File.Exists(f)) File.Delete(f);
            throw;
        }
        finally { outDb.Dispose(); }
    }

    // ATTACH and DETACH are not allowed inside a transaction
    static void Attach(SqliteConnection db, string path)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = "ATTACH DATABASE $p AS s";
        cmd.Parameters.AddWithValue("$p", path);
        cmd.ExecuteNonQuery();
    }
}
