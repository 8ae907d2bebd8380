using System.Buffers.Binary;
using FeatureLens.Saes;
using Microsoft.Data.Sqlite;

namespace FeatureLens.Database;

/// <summary>Reading and writing the raw, mergeable tables (statistics, examples, the partner sample).</summary>
internal static class ScanStore
{
    /// <summary>Reads every SAE's statistics blob and hands it to <paramref name="use"/>.</summary>
    public static void ReadStats(SqliteConnection db, string path, ScanAccumulator[] acc,
        Action<ScanAccumulator, (long[] Count, Int128[] Sum, float[] Max, long[]?[] Hist)> use)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = "SELECT sae, data FROM stats ORDER BY sae";
        using var r = cmd.ExecuteReader();
        while (r.Read())
        {
            int s = r.GetInt32(0);
            if ((uint)s >= (uint)acc.Length) throw new InvalidDataException($"{path}: statistics for SAE {s}, the database has {acc.Length} SAEs");
            use(acc[s], ScanAccumulator.ReadStats((byte[])r[1], acc[s].DSae, $"{path}: stats of SAE {s}"));
        }
    }

    /// <summary>Reads every kept example into the accumulators (marked stored when they stay in this database).</summary>
    public static void ReadExamples(SqliteConnection db, string path, ScanAccumulator[] acc, bool stored)
    {
        using var cmd = db.CreateCommand();
        cmd.CommandText = "SELECT sae, feature, bin, token, activation, priority, vals FROM examples ORDER BY sae, feature, bin, token";
        using var r = cmd.ExecuteReader();
        while (r.Read())
        {
            int s = r.GetInt32(0), j = r.GetInt32(1), bin = r.GetInt32(2);
            if ((uint)s >= (uint)acc.Length || (uint)j >= (uint)acc[s].DSae || bin < -1 || bin >= ScanBins.SamplingBins)
                throw new InvalidDataException($"{path}: example (SAE {s}, feature {j}, bin {bin}) is outside the database's SAEs");
            acc[s].AddStored(j, new ScanExample
            {
                Bin = bin, Token = r.GetInt64(3), Activation = (float)r.GetDouble(4), Priority = unchecked((ulong)r.GetInt64(5)), Values = (byte[])r[6],
            }, stored);
        }
    }

    /// <summary>Writes the statistics blobs and the examples changed since the last call, inside <paramref name="tx"/>.</summary>
    public static void WriteAccumulators(SqliteConnection db, SqliteTransaction tx, ScanAccumulator[] acc)
    {
        var blobs = new byte[acc.Length][];
        Parallel.For(0, acc.Length, s => blobs[s] = acc[s].StatsBlob());
        using (var cmd = db.CreateCommand())
        {
            cmd.Transaction = tx;
            cmd.CommandText = "INSERT INTO stats(sae, data) VALUES($s, $d) ON CONFLICT(sae) DO UPDATE SET data = excluded.data";
            var ps = cmd.Parameters.Add("$s", SqliteType.Integer); var pd = cmd.Parameters.Add("$d", SqliteType.Blob);
            for (int s = 0; s < acc.Length; s++) { ps.Value = s; pd.Value = blobs[s]; cmd.ExecuteNonQuery(); }
        }
        using var del = new SqliteRows(db, "DELETE FROM examples WHERE sae = ?1 AND feature = ?2 AND bin = ?3 AND token = ?4");
        using var ins = new SqliteRows(db, "INSERT INTO examples(sae, feature, bin, token, activation, priority, vals) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)");
        for (int s = 0; s < acc.Length; s++)
        {
            var (deleted, inserted) = acc[s].TakeChanges();
            foreach (var (f, bin, token) in deleted) del.Set(1, s).Set(2, f).Set(3, bin).Set(4, token).Run();
            foreach (var (f, e) in inserted)
                ins.Set(1, s).Set(2, f).Set(3, e.Bin).Set(4, e.Token).Set(5, (double)e.Activation).Set(6, unchecked((long)e.Priority)).Set(7, e.Values).Run();
        }
    }

    /// <summary>
    /// One window's active latents for the partner sample: per position a uint16 count (0xFFFF: BOS, not counted), then
    /// that many (uint16 SAE, int32 latent, float32 value) entries.
    /// </summary>
    public static byte[] PackSampleWindow(SparseActivations[] acts, int row0, int length, bool[] skip)
    {
        using var ms = new MemoryStream();
        Span<byte> buf = stackalloc byte[10];
        for (int t = 0; t < length; t++)
        {
            if (skip[t]) { BinaryPrimitives.WriteUInt16LittleEndian(buf, 0xFFFF); ms.Write(buf[..2]); continue; }
            int n = 0;
            foreach (var a in acts)
                foreach (float v in a.RowValues(row0 + t)) if (v > 0) n++;
            if (n >= 0xFFFF) throw new InvalidOperationException($"{n} active latents at one position: more than the partner sample's format holds");
            BinaryPrimitives.WriteUInt16LittleEndian(buf, (ushort)n); ms.Write(buf[..2]);
            for (int s = 0; s < acts.Length; s++)
            {
                var idx = acts[s].RowIndices(row0 + t); var val = acts[s].RowValues(row0 + t);
                for (int i = 0; i < idx.Length; i++)
                {
                    if (!(val[i] > 0)) continue;
                    BinaryPrimitives.WriteUInt16LittleEndian(buf, (ushort)s);
                    BinaryPrimitives.WriteInt32LittleEndian(buf[2..], idx[i]);
                    BinaryPrimitives.WriteSingleLittleEndian(buf[6..], val[i]);
                    ms.Write(buf);
                }
            }
        }
        return ms.ToArray();
    }

    /// <summary>Reads <see cref="PackSampleWindow"/>'s bytes: per counted position, its (global latent, value) entries.</summary>
    public static void UnpackSampleWindow(byte[] data, long[] saeOffset, int[] dSae, string where, List<(long Latent, float Value)[]> rows)
    {
        int o = 0;
        while (o < data.Length)
        {
            if (o + 2 > data.Length) throw new InvalidDataException($"{where}: partner sample is truncated");
            int n = BinaryPrimitives.ReadUInt16LittleEndian(data.AsSpan(o)); o += 2;
            if (n == 0xFFFF) continue;
            if (o + n * 10L > data.Length) throw new InvalidDataException($"{where}: partner sample is truncated");
            var row = new (long, float)[n];
            for (int i = 0; i < n; i++, o += 10)
            {
                int s = BinaryPrimitives.ReadUInt16LittleEndian(data.AsSpan(o));
                int j = BinaryPrimitives.ReadInt32LittleEndian(data.AsSpan(o + 2));
                if (s >= dSae.Length || (uint)j >= (uint)dSae[s]) throw new InvalidDataException($"{where}: partner sample names SAE {s} latent {j}, outside the database's SAEs");
                float v = BinaryPrimitives.ReadSingleLittleEndian(data.AsSpan(o + 6));
                if (!(v > 0) || !float.IsFinite(v)) throw new InvalidDataException($"{where}: partner sample holds activation {v} for SAE {s} latent {j}; only positive, finite activations are sampled");
                row[i] = (saeOffset[s] + j, v);
            }
            rows.Add(row);
        }
    }
}
