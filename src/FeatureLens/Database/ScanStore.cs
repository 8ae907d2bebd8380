using System.Buffers.Binary;
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
        using var del = db.CreateCommand();
        del.Transaction = tx;
        del.CommandText = "DELETE FROM examples WHERE sae = $s AND feature = $f AND bin = $b AND token = $t";
        var ds = del.Parameters.Add("$s", SqliteType.Integer); var df = del.Parameters.Add("$f", SqliteType.Integer);
        var db_ = del.Parameters.Add("$b", SqliteType.Integer); var dt = del.Parameters.Add("$t", SqliteType.Integer);
        using var ins = db.CreateCommand();
        ins.Transaction = tx;
        ins.CommandText = "INSERT INTO examples(sae, feature, bin, token, activation, priority, vals) VALUES($s, $f, $b, $t, $a, $p, $v)";
        var s_ = ins.Parameters.Add("$s", SqliteType.Integer); var f_ = ins.Parameters.Add("$f", SqliteType.Integer);
        var b_ = ins.Parameters.Add("$b", SqliteType.Integer); var t_ = ins.Parameters.Add("$t", SqliteType.Integer);
        var a_ = ins.Parameters.Add("$a", SqliteType.Real); var p_ = ins.Parameters.Add("$p", SqliteType.Integer); var v_ = ins.Parameters.Add("$v", SqliteType.Blob);
        for (int s = 0; s < acc.Length; s++)
        {
            var (deleted, inserted) = acc[s].TakeChanges();
            foreach (var (f, bin, token) in deleted) { ds.Value = s; df.Value = f; db_.Value = bin; dt.Value = token; del.ExecuteNonQuery(); }
            foreach (var (f, e) in inserted)
            {
                s_.Value = s; f_.Value = f; b_.Value = e.Bin; t_.Value = e.Token; a_.Value = (double)e.Activation;
                p_.Value = unchecked((long)e.Priority); v_.Value = e.Values;
                ins.ExecuteNonQuery();
            }
        }
    }

    /// <summary>
    /// One window's active latents for the partner sample: per position a uint16 count (0xFFFF: BOS, not counted), then
    /// that many (uint16 SAE, int32 latent, float32 value) entries.
    /// </summary>
    public static byte[] PackSampleWindow(float[][] acts, int[] dSae, int b, int T, int length, bool[] skip)
    {
        using var ms = new MemoryStream();
        Span<byte> buf = stackalloc byte[10];
        for (int t = 0; t < length; t++)
        {
            if (skip[t]) { BinaryPrimitives.WriteUInt16LittleEndian(buf, 0xFFFF); ms.Write(buf[..2]); continue; }
            int n = 0;
            for (int s = 0; s < acts.Length; s++)
            {
                var row = new ReadOnlySpan<float>(acts[s], (b * T + t) * dSae[s], dSae[s]);
                foreach (float v in row) if (v > 0) n++;
            }
            if (n >= 0xFFFF) throw new InvalidOperationException($"{n} active latents at one position: more than the partner sample's format holds");
            BinaryPrimitives.WriteUInt16LittleEndian(buf, (ushort)n); ms.Write(buf[..2]);
            for (int s = 0; s < acts.Length; s++)
            {
                var row = new ReadOnlySpan<float>(acts[s], (b * T + t) * dSae[s], dSae[s]);
                for (int j = 0; j < row.Length; j++)
                {
                    if (!(row[j] > 0)) continue;
                    BinaryPrimitives.WriteUInt16LittleEndian(buf, (ushort)s);
                    BinaryPrimitives.WriteInt32LittleEndian(buf[2..], j);
                    BinaryPrimitives.WriteSingleLittleEndian(buf[6..], row[j]);
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
                row[i] = (saeOffset[s] + j, BinaryPrimitives.ReadSingleLittleEndian(data.AsSpan(o + 6)));
            }
            rows.Add(row);
        }
    }
}
