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
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var partners = Partners(db, dSae, offset, settings.Partners, path);

        using var tx = db.BeginTransaction();
        FeatureDatabase.Exec(db, "DELETE FROM features; DELETE FROM partners; DELETE FROM example_tokens; DELETE FROM label_search;", tx);
        // features
        using (var ins = new SqliteRows(db, "INSERT INTO features(sae, feature, count, frequency, max, mean, mean_active) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)"))
        {
            var acc = dSae.Select((d, s) => new ScanAccumulator(s, d, 1, 1)).ToArray();
            ScanStore.ReadStats(db, path, acc, (a, st) => a.MergeStats(st.Count, st.Sum, st.Max, st.Hist));
            for (int s = 0; s < S; s++)
                for (int j = 0; j < dSae[s]; j++)
                {
                    var a = acc[s];
                    double sum = ScanBins.FromFixed(a.Sum[j]);
                    ins.Set(1, s).Set(2, j).Set(3, a.Count[j]).Set(4, tokens > 0 ? (double)a.Count[j] / tokens : 0.0).Set(5, (double)a.Max[j])
                        .Set(6, tokens > 0 ? sum / tokens : 0.0).Set(7, a.Count[j] > 0 ? sum / a.Count[j] : 0.0).Run();
                }
        }
        // partners
        using (var ins = new SqliteRows(db, "INSERT INTO partners(sae, feature, rank, partner_sae, partner_feature, r) VALUES(?1, ?2, ?3, ?4, ?5, ?6)"))
            for (long g = 0; g < offset[S]; g++)
            {
                if (partners[g] is not { } list) continue;
                int s = SaeOf(offset, g);
                for (int k = 0; k < list.Length; k++)
                {
                    int sp = SaeOf(offset, list[k].Latent);
                    ins.Set(1, s).Set(2, g - offset[s]).Set(3, k).Set(4, sp).Set(5, list[k].Latent - offset[sp]).Set(6, list[k].R).Run();
                }
            }
        // which token each top example fired on (search by token)
        using (var sel = db.CreateCommand())
        using (var ins = new SqliteRows(db, "INSERT OR IGNORE INTO example_tokens(token_id, sae, feature) VALUES(?1, ?2, ?3)"))
        {
            sel.Transaction = tx;
            sel.CommandText = "SELECT e.sae, e.feature, e.token, w.window, w.tokens FROM examples e JOIN windows w ON w.window = e.token / $c WHERE e.bin = -1";
            sel.Parameters.AddWithValue("$c", settings.Context);
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
            // in key order, once each: appended to the index rather than inserted at random
            rows.Sort((a, b) => a.Id != b.Id ? a.Id.CompareTo(b.Id) : a.S != b.S ? a.S.CompareTo(b.S) : a.F.CompareTo(b.F));
            for (int i = 0; i < rows.Count; i++)
            {
                if (i > 0 && rows[i] == rows[i - 1]) continue;
                ins.Set(1, rows[i].Id).Set(2, rows[i].S).Set(3, rows[i].F).Run();
            }
        }
        FeatureDatabase.Exec(db, "INSERT INTO label_search(label, sae, feature) SELECT label, sae, feature FROM labels ORDER BY sae, feature", tx);
        // the partner sample has served its purpose (a finished database is not merged again): most of the file's size
        FeatureDatabase.Exec(db, "DELETE FROM sample", tx);
        FeatureDatabase.SetMeta(db, tx, "finalized", "true");
        tx.Commit();
        FeatureDatabase.Exec(db, "VACUUM");
    }

    /// <summary>
    /// sxy[h] += x·y over latent g's rows (its values x) and each row's other latents h (values y); returns how many h
    /// were touched, listed in <paramref name="touched"/> (every product is &gt; 0: a zero sum marks an h not yet seen).
    /// </summary>
    static int CoFiring(int g, ReadOnlySpan<int> rows, ReadOnlySpan<float> xs, ReadOnlySpan<int> rowStart, ReadOnlySpan<int> lat,
        ReadOnlySpan<float> val, Span<double> sxy, Span<int> touched)
    {
        int n = 0;
        for (int c = 0; c < rows.Length; c++)
        {
            double x = xs[c];
            int row = rows[c];
            var hs = lat[rowStart[row]..rowStart[row + 1]];
            var ys = val[rowStart[row]..rowStart[row + 1]];
            for (int e = 0; e < hs.Length; e++)
            {
                int h = hs[e];
                if (h == g) continue;
                ref double acc = ref sxy[h];
                touched[n] = h;
                n += acc == 0 ? 1 : 0;
                acc += x * ys[e];
            }
        }
        return n;
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
        if (G > int.MaxValue) throw new InvalidOperationException($"{G} latents in all: more than partner search indexes");
        // the sample as compressed rows (row → its latents and values) and columns (latent → its rows and values)
        var rowStart = new int[rows.Count + 1];
        for (int i = 0; i < rows.Count; i++) rowStart[i + 1] = checked(rowStart[i] + rows[i].Length);
        var lat = new int[rowStart[^1]]; var val = new float[rowStart[^1]];
        var colStart = new int[G + 1];
        var sx = new double[G]; var sxx = new double[G];
        for (int i = 0, e = 0; i < rows.Count; i++)
            foreach (var (g, v) in rows[i])
            {
                lat[e] = (int)g; val[e] = v; e++;
                sx[g] += v; sxx[g] += (double)v * v;
                colStart[g + 1]++;
            }
        rows.Clear();
        for (long g = 0; g < G; g++) colStart[g + 1] += colStart[g];
        var colRow = new int[lat.Length]; var colVal = new float[lat.Length];
        var fill = colStart[..^1].ToArray();
        for (int i = 0; i < rowStart.Length - 1; i++)
            for (int e = rowStart[i]; e < rowStart[i + 1]; e++) { int at = fill[lat[e]]++; colRow[at] = i; colVal[at] = val[e]; }
        // 1/√(n·Σx² − (Σx)²) per latent; 0 where Pearson treats the latent as constant (r undefined)
        var invSd = new double[G];
        for (long g = 0; g < G; g++)
        {
            double v = n * sxx[g] - sx[g] * sx[g];
            invSd[g] = v <= 1e-12 * n * sxx[g] ? 0 : 1 / Math.Sqrt(v);
        }
        // per latent g: Σ x_g·y_h over the rows where g fires, for every h firing with it. Every sample value is > 0, so a
        // product is > 0 and a zero sum marks an h not yet seen.
        var local = new ThreadLocal<(double[] Sxy, int[] Touched)>(() => (new double[G], new int[G]));
        Parallel.For(0, (int)G, g =>
        {
            if (colStart[g] == colStart[g + 1]) return;
            var (sxy, touched) = local.Value;
            var best = new List<(long, double)>(count + 1);
            double sg = sx[g];
            bool constant = !(invSd[g] > 0);
            var myRows = colRow.AsSpan(colStart[g], colStart[g + 1] - colStart[g]);
            var myVals = colVal.AsSpan(colStart[g], colStart[g + 1] - colStart[g]);
            int nTouched = CoFiring(g, myRows, myVals, rowStart, lat, val, sxy, touched);
            for (int t = 0; t < nTouched; t++)
            {
                int h = touched[t];
                double sxyH = sxy[h];
                sxy[h] = 0;
                // r's numerator decides its sign; with the list full, r̃ (r up to rounding: the same products, the square
                // root split in two) screens out what cannot enter it, and only the rest gets the exact r
                double num = n * sxyH - sg * sx[h];
                if (constant || !(num > 0) || !(invSd[h] > 0)) continue;
                if (best.Count == count && num * invSd[h] * invSd[g] < best[^1].Item2 * (1 - 1e-9)) continue;
                double r = FeatureCorrelation.Pearson(n, sx[g], sxx[g], sx[h], sxx[h], sxyH);
                if (!(r > 0)) continue;
                if (best.Count == count && !(r > best[^1].Item2 || (r == best[^1].Item2 && h < best[^1].Item1))) continue;
                int i = best.Count;
                while (i > 0 && (r > best[i - 1].Item2 || (r == best[i - 1].Item2 && h < best[i - 1].Item1))) i--;
                best.Insert(i, (h, r));
                if (best.Count > count) best.RemoveAt(count);
            }
            if (best.Count > 0) result[g] = [.. best];
        });
        local.Dispose();
        return result;
    }
}
