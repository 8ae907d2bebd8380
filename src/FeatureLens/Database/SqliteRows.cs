using Microsoft.Data.Sqlite;
using SQLitePCL;

namespace FeatureLens.Database;

/// <summary>
/// One prepared statement run once per row through SQLite's own interface (bind, step, reset): a scan writes millions of
/// example rows, and a <see cref="SqliteCommand"/> costs several microseconds a row in parameter handling alone. Runs
/// inside whatever transaction the connection has open.
/// </summary>
internal sealed class SqliteRows : IDisposable
{
    readonly SqliteConnection _db;
    readonly sqlite3_stmt _stmt;
    readonly string _sql;

    public SqliteRows(SqliteConnection db, string sql)
    {
        _db = db; _sql = sql;
        int rc = raw.sqlite3_prepare_v2(db.Handle, sql, out _stmt);
        if (rc != raw.SQLITE_OK) throw Error(rc, "preparing");
    }

    /// <summary>Binds parameter <paramref name="i"/> (1-based) to an integer.</summary>
    public SqliteRows Set(int i, long v) { Check(raw.sqlite3_bind_int64(_stmt, i, v)); return this; }

    /// <summary>Binds parameter <paramref name="i"/> (1-based) to a real.</summary>
    public SqliteRows Set(int i, double v) { Check(raw.sqlite3_bind_double(_stmt, i, v)); return this; }

    /// <summary>Binds parameter <paramref name="i"/> (1-based) to a blob.</summary>
    public SqliteRows Set(int i, ReadOnlySpan<byte> v) { Check(raw.sqlite3_bind_blob(_stmt, i, v)); return this; }

    /// <summary>Runs the statement with the bound values and makes it ready for the next row.</summary>
    public void Run()
    {
        int rc = raw.sqlite3_step(_stmt);
        raw.sqlite3_reset(_stmt);
        if (rc != raw.SQLITE_DONE) throw Error(rc, "running");
    }

    void Check(int rc)
    {
        if (rc != raw.SQLITE_OK) throw Error(rc, "binding a value of");
    }

    SqliteException Error(int rc, string what) =>
        new($"SQLite error {rc} {what} '{_sql}': {raw.sqlite3_errmsg(_db.Handle).utf8_to_string()}", rc);

    public void Dispose() => _stmt.Dispose();
}
