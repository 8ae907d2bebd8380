using System.Text.Json.Nodes;
using Microsoft.Data.Sqlite;

namespace FeatureLens.Database;

/// <summary>
/// The SQLite file a corpus scan writes (one file per scan or shard). Raw, mergeable state — per-SAE statistics blobs,
/// kept examples, the scanned windows' tokens, the partner sample, the logit lens — and, once finalised, the per-feature
/// table, partners and label search. <see cref="Schema"/> is the layout; <c>meta</c> says what the file was built from.
/// </summary>
public static class FeatureDatabase
{
    /// <summary>The value of meta 'format'.</summary>
    public const string Format = "featurelens-features";
    /// <summary>The value of meta 'version'.</summary>
    public const int Version = 1;

    /// <summary>Every table.</summary>
    internal const string Schema = """
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE saes(sae INTEGER PRIMARY KEY, hook TEXT NOT NULL, name TEXT NOT NULL, path TEXT NOT NULL, d_in INTEGER NOT NULL,
            d_sae INTEGER NOT NULL, architecture TEXT NOT NULL, fingerprint TEXT NOT NULL);
        CREATE TABLE vocab(token INTEGER PRIMARY KEY, text TEXT NOT NULL);
        CREATE TABLE blocks(block INTEGER PRIMARY KEY, windows INTEGER NOT NULL, tokens INTEGER NOT NULL);
        CREATE TABLE windows(window INTEGER PRIMARY KEY, tokens BLOB NOT NULL);
        CREATE TABLE stats(sae INTEGER PRIMARY KEY, data BLOB NOT NULL);
        CREATE TABLE examples(sae INTEGER NOT NULL, feature INTEGER NOT NULL, bin INTEGER NOT NULL, token INTEGER NOT NULL,
            activation REAL NOT NULL, priority INTEGER NOT NULL, vals BLOB NOT NULL, PRIMARY KEY(sae, feature, bin, token)) WITHOUT ROWID;
        CREATE TABLE sample(window INTEGER PRIMARY KEY, data BLOB NOT NULL);
        CREATE TABLE logit_lens(sae INTEGER NOT NULL, feature INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY(sae, feature)) WITHOUT ROWID;
        CREATE TABLE labels(sae INTEGER NOT NULL, feature INTEGER NOT NULL, label TEXT NOT NULL, f1 REAL, precision REAL, recall REAL,
            specialization REAL, PRIMARY KEY(sae, feature)) WITHOUT ROWID;
        CREATE TABLE features(sae INTEGER NOT NULL, feature INTEGER NOT NULL, count INTEGER NOT NULL, frequency REAL NOT NULL, max REAL NOT NULL,
            mean REAL NOT NULL, mean_active REAL NOT NULL, PRIMARY KEY(sae, feature)) WITHOUT ROWID;
        CREATE TABLE partners(sae INTEGER NOT NULL, feature INTEGER NOT NULL, rank INTEGER NOT NULL, partner_sae INTEGER NOT NULL,
            partner_feature INTEGER NOT NULL, r REAL NOT NULL, PRIMARY KEY(sae, feature, rank)) WITHOUT ROWID;
        CREATE TABLE example_tokens(token_id INTEGER NOT NULL, sae INTEGER NOT NULL, feature INTEGER NOT NULL, PRIMARY KEY(token_id, sae, feature)) WITHOUT ROWID;
        CREATE VIRTUAL TABLE label_search USING fts5(label, sae UNINDEXED, feature UNINDEXED);
        """;

    /// <summary>A connection to <paramref name="path"/> (no pooling: files are renamed into place after closing).</summary>
    internal static SqliteConnection Connect(string path, bool readOnly)
    {
        var cs = new SqliteConnectionStringBuilder { DataSource = path, Pooling = false, Mode = readOnly ? SqliteOpenMode.ReadOnly : SqliteOpenMode.ReadWriteCreate };
        var c = new SqliteConnection(cs.ToString());
        c.Open();
        return c;
    }

    /// <summary>
    /// A writer's settings: write-ahead log (each block one transaction, durable at its commit), and a page cache of up
    /// to 256 MiB — the examples table is rewritten in place block after block, and SQLite's default 2 MiB cache would
    /// send most of its B-tree pages back to the file between blocks.
    /// </summary>
    const string WriterPragmas = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-262144;";

    /// <summary>Creates the tables in a new, empty file.</summary>
    internal static SqliteConnection Create(string path)
    {
        if (File.Exists(path)) File.Delete(path);
        foreach (var side in new[] { "-wal", "-shm", "-journal" }) if (File.Exists(path + side)) File.Delete(path + side);
        var c = Connect(path, false);
        Exec(c, WriterPragmas);
        Exec(c, Schema);
        return c;
    }

    /// <summary>
    /// Opens an existing file and checks that it is a feature database of this version: a clear error for a missing
    /// file, a file that is not SQLite, or a SQLite file of another kind.
    /// </summary>
    internal static SqliteConnection OpenChecked(string path, bool readOnly)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such feature database");
        SqliteConnection? c = null;
        try
        {
            c = Connect(path, readOnly);
            if (!readOnly) Exec(c, WriterPragmas);
            using var cmd = c.CreateCommand();
            cmd.CommandText = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'";
            if (Convert.ToInt64(cmd.ExecuteScalar(), CultureInfo.InvariantCulture) == 0)
                throw new InvalidDataException($"{path}: a SQLite database, but not a FeatureLens feature database (it has no 'meta' table)");
            var format = Meta(c, "format");
            if (format != Format) throw new InvalidDataException($"{path}: a SQLite database, but not a FeatureLens feature database (meta format is '{format ?? "missing"}', expected '{Format}')");
            var version = Meta(c, "version");
            if (version != Version.ToString(CultureInfo.InvariantCulture))
                throw new InvalidDataException($"{path}: feature database version {version ?? "missing"}; this FeatureLens reads version {Version}");
            return c;
        }
        catch (SqliteException e)
        {
            c?.Dispose();
            throw new InvalidDataException($"{path}: not a readable SQLite database ({e.Message})");
        }
        catch
        {
            c?.Dispose();
            throw;
        }
    }

    internal static void Exec(SqliteConnection c, string sql, SqliteTransaction? tx = null)
    {
        using var cmd = c.CreateCommand();
        cmd.Transaction = tx;
        cmd.CommandText = sql;
        cmd.ExecuteNonQuery();
    }

    internal static string? Meta(SqliteConnection c, string key)
    {
        using var cmd = c.CreateCommand();
        cmd.CommandText = "SELECT value FROM meta WHERE key = $k";
        cmd.Parameters.AddWithValue("$k", key);
        return cmd.ExecuteScalar() as string;
    }

    internal static void SetMeta(SqliteConnection c, SqliteTransaction? tx, string key, string value)
    {
        using var cmd = c.CreateCommand();
        cmd.Transaction = tx;
        cmd.CommandText = "INSERT INTO meta(key, value) VALUES($k, $v) ON CONFLICT(key) DO UPDATE SET value = excluded.value";
        cmd.Parameters.AddWithValue("$k", key);
        cmd.Parameters.AddWithValue("$v", value);
        cmd.ExecuteNonQuery();
    }

    internal static string NeedMeta(SqliteConnection c, string key, string path) =>
        Meta(c, key) ?? throw new InvalidDataException($"{path}: feature database lacks meta '{key}'");

    internal static ScanIdentity Identity(SqliteConnection c, string path) =>
        ScanIdentity.FromJson(JsonNode.Parse(NeedMeta(c, "identity", path)) ?? throw new InvalidDataException($"{path}: meta 'identity' is empty"), path);

    /// <summary>Writes everything, switches to a rollback journal and closes, so the file alone holds the database.</summary>
    internal static void Seal(SqliteConnection c)
    {
        Exec(c, "PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;");
        c.Close();
        c.Dispose();
    }

    /// <summary>Moves a sealed temporary file into place (replacing nothing: the caller checked the target is free).</summary>
    internal static void MoveIntoPlace(string partial, string path)
    {
        foreach (var side in new[] { "-wal", "-shm" }) if (File.Exists(partial + side)) File.Delete(partial + side);
        File.Move(partial, path, overwrite: false);
    }

    /// <summary>int32 little-endian token ids.</summary>
    internal static byte[] PackTokens(ReadOnlySpan<int> ids)
    {
        var b = new byte[ids.Length * 4];
        for (int i = 0; i < ids.Length; i++) System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(i * 4), ids[i]);
        return b;
    }

    internal static int[] UnpackTokens(byte[] b, string where)
    {
        if (b.Length % 4 != 0) throw new InvalidDataException($"{where}: token blob of {b.Length} bytes is not a list of int32");
        var ids = new int[b.Length / 4];
        for (int i = 0; i < ids.Length; i++) ids[i] = System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(b.AsSpan(i * 4));
        return ids;
    }
}
