using FeatureLens.Analysis;
using Microsoft.Data.Sqlite;

namespace FeatureLens.Database;

/// <summary>
/// Turns the raw tables of a whole scan (one unsharded run, or merged shards) into what dashboards read: the feature
/// table (frequency, max, means), partners (Pearson r over the partner sample), the token index of top examples and the
/// label search index. Deterministic: it reads the raw tables in key order.
/// </summary>
internal static class ScanFinalize
{
    public static void Run(SqliteConnection db, int[] dSae, ScanSettings settings, string path)
    {
        if (FeatureDatabase.Meta(db, "finalized") == "true") return; // done before an interruption (the sample is gone)
        int S = dSae.Length;
        var offset = new long[S + 1];
        for (int s = 0; s < S; s++) offset[s + 1] = offset[s] + dSae[s];
        long tokens = long.Parse(FeatureDatabase.NeedMeta(db, "tokens", path), CultureInfo.InvariantCulture);
        var partners = Partners(db, dSae, offset, settings.Partners, path);

        using var tx = db.BeginTransaction();
        FeatureDatabase.Exec(db, "DELETE FROM features; DELETE FROM partners; DELETE FROM example_tokens; DELETE FROM label_search;", tx);
        // features
        using (var ins = db.CreateCommand())
        {
            ins.Transaction = tx;
            ins.CommandText = "INSERT INTO features(sae, feature, count, frequency, max, mean, mean_active) VALUES($s, $f, $c, $q, $m, $mu, $ma)";
            var ps = ins.Parameters.Add("$s", SqliteType.Integer); var pf = ins.Parameters.Add("$f", SqliteType.Integer); var pc = ins.Parameters.Add("$c", SqliteType.Integer);
            var pq = ins.Parameters.Add("$q", SqliteType.Real); var pm = ins.Parameters.Add("$m", SqliteType.Real);
            var pmu = ins.Parameters.Add("$mu", SqliteType.Real); var pma = ins.Parameters.Add("$ma", SqliteType.Real);
            var acc = dSae.Select((d, s) => new ScanAccumulator(s, d, 1, 1)).ToArray();
            ScanStore.ReadStats(db, path, acc, (a, st) => a.MergeStats(st.Count, st.Sum, st.Max, st.Hist));
            for (int s = 0; s < S; s++)
                for (int j = 0; j < dSae[s]; j++)
                {
                    var a = acc[s];
                    double sum = ScanBins.FromFixed(a.Sum[j]);
                    ps.Value = s; pf.Value = j; pc.Value = a.Count[j];
                    pq.Value = tokens > 0 ? (double)a.Count[j] / tokens : 0.0;
                    pm.Value = (double)a.Max[j];
                    pmu.Value = tokens > 0 ? sum / tokens : 0.0;
                    pma.Value = a.Count[j] > 0 ? sum / a.Count[j] : 0.0;
                    ins.ExecuteNonQuery();
                }
        }
        // partners
        using (var ins = db.CreateCommand())
        {
            ins.Transaction = tx;
            ins.CommandText = "INSERT INTO partners(sae, feature, rank, partner_sae, partner_feature, r) VALUES($s, $f, $k, $ps, $pf, $r)";
            var ps = ins.Parameters.Add("$s", SqliteType.Integer); var pf = ins.Parameters.Add("$f", SqliteType.Integer); var pk = ins.Parameters.Add("$k", SqliteType.Integer);
            var pps = ins.Parameters.Add("$ps", SqliteType.Integer); var ppf = ins.Parameters.Add("$pf", SqliteType.Integer); var pr = ins.Parameters.Add("$r", SqliteType.Real);
            for (long g = 0; g < offset[S]; g++)
            {
                if (partners[g] is not { } list) continue;
                int s = SaeOf(offset, g);
                for (int k = 0; k < list.Length; k++)
                {
                    int sp = SaeOf(offset, list[k].Latent);
                    ps.Value = s; pf.Value = (int)(g - offset[s]); pk.Value = k; pps.Value = sp; ppf.Value = (int)(list[k].Latent - offset[sp]); pr.Value = list[k].R;
                    ins.ExecuteNonQuery();
                }
            }
        }
        // which token each top example fired on (search by token)
        using (var sel = db.CreateCommand())
        using (var ins = db.CreateCommand())
        {
            sel.Transaction = tx;
            sel.CommandText = "SELECT e.sae, e.feature, e.token, w.window, w.tokens FROM examples e JOIN windows w ON w.window = e.token / $c WHERE e.bin = -1";
            sel.Parameters.AddWithValue("$c", settings.Context);
            ins.Transaction = tx;
            ins.CommandText = "INSERT OR IGNORE INTO example_tokens(token_id, sae, feature) VALUES($t, $s, $f)";
            var pt = ins.Parameters.Add("$t", SqliteType.Integer); var ps = ins.Parameters.Add("$s", SqliteType.Integer); var pf = ins.Parameters.Add("$f", SqliteType.Integer);
            var rows = new List<(int S, int F, int Id)>();
            using (var r = sel.ExecuteReader())
                while (r.Read())
                {
                    long token = r.GetInt64(2);
                    var ids = FeatureDatabase.UnpackTokens((byte[])r[4], $"{path}: window {r.GetInt64(3)}");
                    int pos = (int)(token - r.GetInt64(3) * settings.Context);
                    if ((uint)pos >= (uint)ids.Length) throw new InvalidDataException($"{path}: example at stream token {token} lies outside its window");
                    rows.Add((r.GetInt32(0), r.GetInt32(1), ids[pos]));
                }
            foreach (var (s, f, id) in rows) { pt.Value = id; ps.Value = s; pf.Value = f; ins.ExecuteNonQuery(); }
        }
        FeatureDatabase.Exec(db, "INSERT INTO label_search(label, sae, feature) SELECT label, sae, feature FROM labels ORDER BY sae, feature", tx);
        // the partner sample has served its purpose (a finished database is not merged again): most of the file's size
        FeatureDatabase.Exec(db, "DELETE FROM sample", tx);
        FeatureDatabase.SetMeta(db, tx, "finalized", "true");
        tx.Commit();
        FeatureDatabase.Exec(db, "VACUUM");
    }

    static int SaeOf(long[] offset, long g)
    {
        int s = 0;
        while (g >= offset[s + 1]) s++;
        return s;
    }

    /// <summary>
    /// Per latent (global index), its <paramref name="count"/> partners with the highest Pearson r &gt; 0 over the sample's
    /// counted tokens, among latents that fire together with it at least once (any other pair has r ≤ 0); ties by index.
    /// </summary>
    internal static (long Latent, double R)[]?[] Partners(SqliteConnection db, int[] dSae, long[] offset, int count, string path)
    {
        long G = offset[^1];
        var result = new (long, double)[]?[G];
        if (count == 0) return result;
        var rows = new List<(long Latent, float Value)[]>();
        using (var cmd = db.CreateCommand())
        {
            cmd.CommandText = "SELECT window, data FROM sample ORDER BY window";
            using var r = cmd.ExecuteReader();
            while (r.Read()) ScanStore.UnpackSampleWindow((byte[])r[1], offset, dSae, $"{path}: sample window {r.GetInt64(0)}", rows);
        }
        long n = rows.Count;
        if (n < 2) return result;
        var sx = new double[G]; var sxx = new double[G]; var fires = new List<(int Row, float Value)>?[G];
        for (int i = 0; i < rows.Count; i++)
            foreach (var (g, v) in rows[i])
            {
                sx[g] += v; sxx[g] += (double)v * v;
                (fires[g] ??= []).Add((i, v));
            }
        var local = new ThreadLocal<(double[] Sxy, bool[] Seen, List<long> Touched)>(() => (new double[G], new bool[G], []));
        Parallel.For(0L, G, g =>
        {
            if (fires[g] is not { } mine) return;
            var (sxy, seen, touched) = local.Value;
            foreach (var (row, x) in mine)
                foreach (var (h, y) in rows[row])
                {
                    if (h == g) continue;
                    if (!seen[h]) { seen[h] = true; touched.Add(h); }
                    sxy[h] += (double)x * y;
                }
            var best = new List<(long, double)>(count + 1);
            foreach (long h in touched)
            {
                double r = FeatureCorrelation.Pearson(n, sx[g], sxx[g], sx[h], sxx[h], sxy[h]);
                sxy[h] = 0; seen[h] = false;
                if (!(r > 0)) continue;
                if (best.Count == count && !(r > best[^1].Item2 || (r == best[^1].Item2 && h < best[^1].Item1))) continue;
                int i = best.Count;
                while (i > 0 && (r > best[i - 1].Item2 || (r == best[i - 1].Item2 && h < best[i - 1].Item1))) i--;
                best.Insert(i, (h, r));
                if (best.Count > count) best.RemoveAt(count);
            }
            touched.Clear();
            if (best.Count > 0) result[g] = [.. best];
        });
        local.Dispose();
        return result;
    }
}
