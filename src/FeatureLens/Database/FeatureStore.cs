using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Microsoft.Data.Sqlite;

namespace FeatureLens.Database;

/// <summary>One example of a dashboard: the window the activation was computed in, the position, and the latent's values.</summary>
public sealed record DashboardExample(
    [property: JsonPropertyName("activation")] float Activation,
    [property: JsonPropertyName("tokens")] int[] Tokens,
    [property: JsonPropertyName("pos")] int Pos,
    [property: JsonPropertyName("values")] float[] Values,
    [property: JsonPropertyName("window")] long Window,
    [property: JsonPropertyName("interval")] int? Interval,
    [property: JsonPropertyName("text")] string[] Text);

/// <summary>A quantile interval: its activation range, how many firings fall in it, and the share of all firings.</summary>
public sealed record DashboardInterval(
    [property: JsonPropertyName("index")] int Index,
    [property: JsonPropertyName("lower")] double Lower,
    [property: JsonPropertyName("upper")] double Upper,
    [property: JsonPropertyName("count")] long Count,
    [property: JsonPropertyName("fraction")] double Fraction);

/// <summary>The activation histogram over the bins from the first to the last nonzero one (edges: one more than counts).</summary>
public sealed record DashboardHistogram(
    [property: JsonPropertyName("edges")] double[] Edges,
    [property: JsonPropertyName("counts")] long[] Counts);

/// <summary>A logit-lens token.</summary>
public sealed record DashboardToken(
    [property: JsonPropertyName("token")] int Token,
    [property: JsonPropertyName("value")] float Value,
    [property: JsonPropertyName("text")] string Text);

/// <summary>The decoder logit lens: the tokens the latent promotes and suppresses most.</summary>
public sealed record DashboardLogits(
    [property: JsonPropertyName("top")] DashboardToken[] Top,
    [property: JsonPropertyName("bottom")] DashboardToken[] Bottom);

/// <summary>A correlated latent (Pearson r over the partner sample).</summary>
public sealed record DashboardPartner(
    [property: JsonPropertyName("sae")] string Sae,
    [property: JsonPropertyName("feature")] int Feature,
    [property: JsonPropertyName("r")] double R);

/// <summary>A stored label with its scores (null where unknown).</summary>
public sealed record DashboardLabel(
    [property: JsonPropertyName("label")] string Label,
    [property: JsonPropertyName("f1")] double? F1,
    [property: JsonPropertyName("precision")] double? Precision,
    [property: JsonPropertyName("recall")] double? Recall,
    [property: JsonPropertyName("specialization")] double? Specialization);

/// <summary>Everything the database knows about one latent (SAEDashboard / Neuronpedia's feature page, as data).</summary>
public sealed record FeatureDashboard
{
    [JsonPropertyName("sae")] public required string Sae { get; init; }
    [JsonPropertyName("sae_name")] public required string SaeName { get; init; }
    [JsonPropertyName("feature")] public required int Feature { get; init; }
    [JsonPropertyName("tokens_scanned")] public required long TokensScanned { get; init; }
    [JsonPropertyName("count")] public required long Count { get; init; }
    [JsonPropertyName("frequency")] public required double Frequency { get; init; }
    [JsonPropertyName("max")] public required double Max { get; init; }
    [JsonPropertyName("mean")] public required double Mean { get; init; }
    [JsonPropertyName("mean_active")] public required double MeanActive { get; init; }
    [JsonPropertyName("top")] public required DashboardExample[] Top { get; init; }
    [JsonPropertyName("quantiles")] public required DashboardExample[] Quantiles { get; init; }
    [JsonPropertyName("intervals")] public required DashboardInterval[] Intervals { get; init; }
    [JsonPropertyName("histogram")] public required DashboardHistogram Histogram { get; init; }
    [JsonPropertyName("logits")] public DashboardLogits? Logits { get; init; }
    [JsonPropertyName("partners")] public required DashboardPartner[] Partners { get; init; }
    [JsonPropertyName("label")] public DashboardLabel? Label { get; init; }
}

/// <summary>One row of a feature browser page: the feature table's statistics and the label (null when unlabelled).</summary>
public sealed record FeatureRow(
    [property: JsonPropertyName("feature")] int Feature,
    [property: JsonPropertyName("count")] long Count,
    [property: JsonPropertyName("frequency")] double Frequency,
    [property: JsonPropertyName("max")] double Max,
    [property: JsonPropertyName("mean")] double Mean,
    [property: JsonPropertyName("mean_active")] double MeanActive,
    [property: JsonPropertyName("label")] string? Label,
    [property: JsonPropertyName("f1")] double? F1,
    [property: JsonPropertyName("specialization")] double? Specialization);

/// <summary>What the feature browser asks for: a sort, a page, and optional label and token filters (both must hold).</summary>
public sealed record FeatureQuery
{
    /// <summary>frequency | max | label | feature.</summary>
    public string Sort { get; init; } = "frequency";
    /// <summary>desc | asc; null: descending for frequency and max, ascending for label and feature.</summary>
    public string? Order { get; init; }
    /// <summary>0-based page number.</summary>
    public int Page { get; init; }
    /// <summary>Rows per page (1..<see cref="FeatureStore.MaxPageSize"/>).</summary>
    public int PageSize { get; init; } = 50;
    /// <summary>Words the label must contain (each as a word prefix, any case; SQLite FTS5 over the labels).</summary>
    public string? Label { get; init; }
    /// <summary>A token's text (" Lily"): only features one of whose top examples fires on that token.</summary>
    public string? Token { get; init; }
}

/// <summary>A token of the vocabulary a token search matched.</summary>
public sealed record VocabToken(
    [property: JsonPropertyName("token")] int Token,
    [property: JsonPropertyName("text")] string Text);

/// <summary>A page of the feature browser: the rows, how many features match in all, and the tokens a token search matched.</summary>
public sealed record FeaturePage(
    [property: JsonPropertyName("sae")] string Sae,
    [property: JsonPropertyName("sort")] string Sort,
    [property: JsonPropertyName("order")] string Order,
    [property: JsonPropertyName("page")] int Page,
    [property: JsonPropertyName("page_size")] int PageSize,
    [property: JsonPropertyName("total")] long Total,
    [property: JsonPropertyName("matched_tokens")] VocabToken[]? MatchedTokens,
    [property: JsonPropertyName("rows")] FeatureRow[] Rows);

/// <summary>An SAE of a feature database.</summary>
public sealed record StoreSae(int Index, string Hook, string Name, int DSae, string Architecture);

/// <summary>
/// A finished feature database opened for reading: feature dashboards (<see cref="Dashboard"/>). Shards must be merged
/// first; a scan still running (a <c>.partial</c> file) cannot be opened.
/// </summary>
public sealed class FeatureStore : IDisposable
{
    readonly SqliteConnection _db;
    readonly Dictionary<int, (long[] Count, Int128[] Sum, float[] Max, long[]?[] Hist)> _stats = [];
    readonly Lock _gate = new();
    string[]? _vocab;

    public string Path { get; }
    public IReadOnlyList<StoreSae> Saes { get; }
    public ScanSettings Settings { get; }
    public long Tokens { get; }
    /// <summary>The meta table (what the database was built from).</summary>
    public IReadOnlyDictionary<string, string> Meta { get; }

    FeatureStore(string path, SqliteConnection db)
    {
        Path = path; _db = db;
        var meta = new Dictionary<string, string>();
        using (var cmd = db.CreateCommand())
        {
            cmd.CommandText = "SELECT key, value FROM meta";
            using var r = cmd.ExecuteReader();
            while (r.Read()) meta[r.GetString(0)] = r.GetString(1);
        }
        Meta = meta;
        if (meta.GetValueOrDefault("status") != "complete")
            throw new InvalidDataException($"{path}: the scan is not complete (status '{meta.GetValueOrDefault("status")}'); run featurelens scan again to resume it");
        if (meta.GetValueOrDefault("finalized") != "true" && meta.GetValueOrDefault("shard") == "all")
            throw new InvalidDataException($"{path}: the scan's feature tables were never computed (meta 'finalized' missing)");
        if (meta.GetValueOrDefault("shard") is { } sh && sh != "all")
            throw new InvalidDataException($"{path}: shard {sh} of a sharded scan; merge the shards first (featurelens merge --out F.sqlite SHARDS...)");
        Settings = ScanSettings.FromJson(JsonNode.Parse(meta.GetValueOrDefault("settings") ?? "null") ?? throw new InvalidDataException($"{path}: meta 'settings' is missing"), path);
        Tokens = long.Parse(meta.GetValueOrDefault("tokens") ?? throw new InvalidDataException($"{path}: meta 'tokens' is missing"), CultureInfo.InvariantCulture);
        var saes = new List<StoreSae>();
        using (var cmd = db.CreateCommand())
        {
            cmd.CommandText = "SELECT sae, hook, name, d_sae, architecture FROM saes ORDER BY sae";
            using var r = cmd.ExecuteReader();
            while (r.Read()) saes.Add(new StoreSae(r.GetInt32(0), r.GetString(1), r.GetString(2), r.GetInt32(3), r.GetString(4)));
        }
        if (saes.Count == 0 || saes.Where((s, i) => s.Index != i).Any()) throw new InvalidDataException($"{path}: the saes table is empty or not numbered 0, 1, …");
        Saes = saes;
    }

    /// <summary>Opens a finished (unsharded or merged) feature database read-only.</summary>
    public static FeatureStore Open(string path)
    {
        string full = System.IO.Path.GetFullPath(path);
        var db = FeatureDatabase.OpenChecked(full, readOnly: true);
        try { return new FeatureStore(full, db); }
        catch (SqliteException e) { db.Dispose(); throw new InvalidDataException($"{full}: corrupt feature database ({e.Message})"); }
        catch { db.Dispose(); throw; }
    }

    public void Dispose() => _db.Dispose();

    /// <summary>The SAE reading <paramref name="hookOrName"/> (its hook, its short name, or its index).</summary>
    public StoreSae Sae(string hookOrName)
    {
        var s = Saes.FirstOrDefault(x => x.Hook == hookOrName) ?? Saes.FirstOrDefault(x => x.Name == hookOrName);
        if (s == null && int.TryParse(hookOrName, NumberStyles.None, CultureInfo.InvariantCulture, out int i) && i < Saes.Count) s = Saes[i];
        return s ?? throw new ArgumentException($"--sae: {Path} has no SAE '{hookOrName}'; it has {string.Join(", ", Saes.Select(x => x.Hook))}");
    }

    /// <summary>The text of a token id ("" outside the stored vocabulary).</summary>
    public string TokenText(int id)
    {
        lock (_gate)
        {
            if (_vocab == null)
            {
                var v = new List<string>();
                using var cmd = _db.CreateCommand();
                cmd.CommandText = "SELECT token, text FROM vocab ORDER BY token";
                using var r = cmd.ExecuteReader();
                while (r.Read()) v.Add(r.GetString(1));
                _vocab = [.. v];
            }
            return (uint)id < (uint)_vocab.Length ? _vocab[id] : "";
        }
    }

    /// <summary>The largest page the feature browser serves.</summary>
    public const int MaxPageSize = 500;

    /// <summary>The sort keys of <see cref="Features"/>.</summary>
    public static readonly IReadOnlyList<string> SortKeys = ["frequency", "max", "label", "feature"];

    /// <summary>
    /// A page of <paramref name="sae"/>'s features for the browser: sorted by frequency, max, label (unlabelled last) or
    /// index, ties by index; filtered by label words (FTS5 prefix match, every word) and by a token the top examples
    /// fire on (<see cref="FindTokens"/>). Bad sort keys, orders, pages and empty searches are ArgumentExceptions.
    /// </summary>
    public FeaturePage Features(StoreSae sae, FeatureQuery query)
    {
        ArgumentNullException.ThrowIfNull(query);
        string sort = (query.Sort ?? "frequency").Trim().ToLowerInvariant();
        if (!SortKeys.Contains(sort)) throw new ArgumentException($"sort must be one of {string.Join(", ", SortKeys)} (got '{query.Sort}')");
        string order = query.Order?.Trim().ToLowerInvariant() is { Length: > 0 } o ? o : sort is "frequency" or "max" ? "desc" : "asc";
        if (order is not ("asc" or "desc")) throw new ArgumentException($"order must be asc or desc (got '{query.Order}')");
        if (query.PageSize is < 1 or > MaxPageSize) throw new ArgumentException($"page size must be between 1 and {MaxPageSize} (got {query.PageSize})");
        if (query.Page < 0) throw new ArgumentException($"page must be 0 or more (got {query.Page})");
        var where = new List<string> { "f.sae = $s" };
        string? match = null;
        if (query.Label != null)
        {
            var words = System.Text.RegularExpressions.Regex.Matches(query.Label, @"[\p{L}\p{N}]+").Select(m => m.Value).ToList();
            if (words.Count == 0) throw new ArgumentException($"label search '{query.Label}' has no words to look for");
            match = string.Join(" ", words.Select(w => "\"" + w + "\"*"));
            where.Add("f.feature IN (SELECT feature FROM label_search WHERE label_search MATCH $q AND sae = $s)");
        }
        VocabToken[]? matched = null;
        if (query.Token != null)
        {
            if (query.Token.Length == 0) throw new ArgumentException("token search is empty: give a token's text, e.g. ' Lily'");
            matched = FindTokens(query.Token);
            where.Add(matched.Length == 0 ? "0" : $"f.feature IN (SELECT feature FROM example_tokens WHERE sae = $s AND token_id IN ({string.Join(",", matched.Select(t => t.Token.ToString(CultureInfo.InvariantCulture)))}))");
        }
        string dir = order == "desc" ? "DESC" : "ASC";
        string orderBy = sort switch
        {
            "frequency" => $"f.frequency {dir}, f.feature",
            "max" => $"f.max {dir}, f.feature",
            "label" => $"l.label IS NULL, l.label COLLATE NOCASE {dir}, f.feature",
            _ => $"f.feature {dir}",
        };
        string from = "FROM features f LEFT JOIN labels l ON l.sae = f.sae AND l.feature = f.feature WHERE " + string.Join(" AND ", where);
        lock (_gate)
        {
            void Bind(SqliteCommand c)
            {
                c.Parameters.AddWithValue("$s", sae.Index);
                if (match != null) c.Parameters.AddWithValue("$q", match);
            }
            long total;
            using (var cmd = _db.CreateCommand())
            {
                cmd.CommandText = "SELECT count(*) " + from;
                Bind(cmd);
                total = Convert.ToInt64(cmd.ExecuteScalar(), CultureInfo.InvariantCulture);
            }
            long pages = Math.Max(1, (total + query.PageSize - 1) / query.PageSize);
            if (query.Page >= pages)
                throw new ArgumentException($"page {query.Page} is past the last page: {total} feature(s) match, {pages} page(s) of {query.PageSize} (pages count from 0)");
            var rows = new List<FeatureRow>();
            using (var cmd = _db.CreateCommand())
            {
                cmd.CommandText = "SELECT f.feature, f.count, f.frequency, f.max, f.mean, f.mean_active, l.label, l.f1, l.specialization " + from +
                    $" ORDER BY {orderBy} LIMIT $n OFFSET $o";
                Bind(cmd);
                cmd.Parameters.AddWithValue("$n", query.PageSize);
                cmd.Parameters.AddWithValue("$o", (long)query.Page * query.PageSize);
                using var r = cmd.ExecuteReader();
                while (r.Read())
                    rows.Add(new FeatureRow(r.GetInt32(0), r.GetInt64(1), r.GetDouble(2), r.GetDouble(3), r.GetDouble(4), r.GetDouble(5),
                        r.IsDBNull(6) ? null : r.GetString(6), r.IsDBNull(7) ? null : r.GetDouble(7), r.IsDBNull(8) ? null : r.GetDouble(8)));
            }
            return new FeaturePage(sae.Hook, sort, order, query.Page, query.PageSize, total, matched, [.. rows]);
        }
    }

    /// <summary>
    /// The vocabulary tokens whose text is <paramref name="text"/> exactly (" Lily"); when there are none, those whose text
    /// equals it with leading and trailing whitespace removed on both sides ("Lily" finds " Lily" and "Lily").
    /// </summary>
    public VocabToken[] FindTokens(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var list = new List<VocabToken>();
        lock (_gate)
        {
            foreach (string sql in new[] { "SELECT token, text FROM vocab WHERE text = $t ORDER BY token", "SELECT token, text FROM vocab WHERE trim(text, ' ' || char(9, 10, 13)) = $u ORDER BY token" })
            {
                using var cmd = _db.CreateCommand();
                cmd.CommandText = sql;
                cmd.Parameters.AddWithValue("$t", text);
                cmd.Parameters.AddWithValue("$u", text.Trim(' ', '\t', '\n', '\r'));
                using var r = cmd.ExecuteReader();
                while (r.Read()) list.Add(new VocabToken(r.GetInt32(0), r.GetString(1)));
                if (list.Count > 0) break;
            }
        }
        return [.. list];
    }

    /// <summary>The scan's model as the meta table records it (name, source, architecture, n_layers, d_model, d_vocab); empty when absent.</summary>
    public IReadOnlyDictionary<string, string> ModelInfo
    {
        get
        {
            var d = new Dictionary<string, string>();
            if (Meta.GetValueOrDefault("model") is { } m && JsonNode.Parse(m) is JsonObject o)
                foreach (var (k, v) in o) if (v != null) d[k] = v.ToString();
            return d;
        }
    }

    (long[] Count, Int128[] Sum, float[] Max, long[]?[] Hist) Stats(StoreSae sae)
    {
        lock (_gate)
        {
            if (_stats.TryGetValue(sae.Index, out var st)) return st;
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT data FROM stats WHERE sae = $s";
            cmd.Parameters.AddWithValue("$s", sae.Index);
            var blob = cmd.ExecuteScalar() as byte[] ?? throw new InvalidDataException($"{Path}: no statistics for SAE {sae.Hook}");
            return _stats[sae.Index] = ScanAccumulator.ReadStats(blob, sae.DSae, $"{Path}: stats of {sae.Hook}");
        }
    }

    /// <summary>The dashboard of latent <paramref name="feature"/> of <paramref name="sae"/>.</summary>
    public FeatureDashboard Dashboard(StoreSae sae, int feature)
    {
        if ((uint)feature >= (uint)sae.DSae) throw new ArgumentException($"--feature {feature} is outside [0, {sae.DSae}) (d_sae of {sae.Hook})");
        var st = Stats(sae);
        long count = st.Count[feature];
        double sum = ScanBins.FromFixed(st.Sum[feature]);
        var examples = new List<ScanExample>();
        lock (_gate)
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT bin, token, activation, priority, vals FROM examples WHERE sae = $s AND feature = $f ORDER BY bin, token";
            cmd.Parameters.AddWithValue("$s", sae.Index); cmd.Parameters.AddWithValue("$f", feature);
            using var r = cmd.ExecuteReader();
            while (r.Read())
                examples.Add(new ScanExample { Bin = r.GetInt32(0), Token = r.GetInt64(1), Activation = (float)r.GetDouble(2), Priority = unchecked((ulong)r.GetInt64(3)), Values = (byte[])r[4] });
        }
        var top = examples.Where(e => e.Bin < 0).ToList();
        top.Sort(ScanExample.TopOrder);
        var (intervals, groups) = Intervals(st.Hist[feature], count, st.Max[feature]);
        var quantiles = new List<(ScanExample E, int Interval)>();
        for (int i = 0; i < groups.Count; i++)
        {
            var (lo, hi) = groups[i];
            var kept = examples.Where(e => e.Bin >= lo && e.Bin <= hi).ToList();
            kept.Sort(ScanExample.SampleOrder);
            var chosen = kept.Take(Settings.IntervalExamples).ToList();
            chosen.Sort(ScanExample.TopOrder);
            quantiles.AddRange(chosen.Select(e => (e, i)));
        }
        return new FeatureDashboard
        {
            Sae = sae.Hook, SaeName = sae.Name, Feature = feature, TokensScanned = Tokens, Count = count,
            Frequency = Tokens > 0 ? (double)count / Tokens : 0, Max = st.Max[feature], Mean = Tokens > 0 ? sum / Tokens : 0, MeanActive = count > 0 ? sum / count : 0,
            Top = [.. top.Select(e => Example(e, null))],
            Quantiles = [.. quantiles.Select(q => Example(q.E, q.Interval))],
            Intervals = intervals,
            Histogram = Histogram(st.Hist[feature], st.Max[feature]),
            Logits = Logits(sae, feature), Partners = Partners(sae, feature), Label = Label(sae, feature),
        };
    }

    /// <summary>
    /// The quantile intervals of a latent: its populated sampling bins from lowest to highest, split into at most
    /// Settings.Intervals contiguous groups of equal numbers of bins (each bin its own interval when there are fewer),
    /// listed highest first; the inclusive sampling-bin range of each.
    /// </summary>
    (DashboardInterval[], List<(int Lo, int Hi)>) Intervals(long[]? hist, long count, float max)
    {
        var groups = new List<(int, int)>();
        if (hist == null || count == 0) return ([], groups);
        int lo = ScanBins.SamplingBin(Array.FindIndex(hist, c => c != 0)), hi = ScanBins.SamplingBin(Array.FindLastIndex(hist, c => c != 0));
        int n = hi - lo + 1, I = Settings.Intervals;
        if (n <= I) for (int b = lo; b <= hi; b++) groups.Add((b, b));
        else for (int g = 0; g < I; g++) groups.Add((lo + (int)((long)g * n / I), lo + (int)((long)(g + 1) * n / I) - 1));
        var list = new List<DashboardInterval>();
        var kept = new List<(int, int)>();
        foreach (var (a, b) in groups)
        {
            int h0 = a * ScanBins.HistogramBinsPerSamplingBin, h1 = (b + 1) * ScanBins.HistogramBinsPerSamplingBin; // [h0, h1)
            long c = 0;
            for (int h = h0; h < h1; h++) c += hist[h];
            if (c == 0) continue;
            double lower = h0 == 0 ? 0 : ScanBins.Edge(h0), upper = Math.Min(ScanBins.Edge(h1), max);
            if (h1 >= ScanBins.Bins) upper = max;
            list.Add(new DashboardInterval(0, lower, upper, c, (double)c / count));
            kept.Add((a, b));
        }
        // highest interval first, as SAEDashboard shows them
        list.Reverse(); kept.Reverse();
        return ([.. list.Select((x, i) => x with { Index = i })], kept);
    }

    static DashboardHistogram Histogram(long[]? hist, float max)
    {
        if (hist == null) return new DashboardHistogram([], []);
        int lo = Array.FindIndex(hist, c => c != 0), hi = Array.FindLastIndex(hist, c => c != 0);
        if (lo < 0) return new DashboardHistogram([], []);
        var edges = new double[hi - lo + 2];
        for (int b = lo; b <= hi + 1; b++) edges[b - lo] = b == 0 ? 0 : ScanBins.Edge(b);
        if (hi == ScanBins.Bins - 1) edges[^1] = Math.Max(edges[^1], max);
        return new DashboardHistogram(edges, hist[lo..(hi + 1)]);
    }

    DashboardExample Example(ScanExample e, int? interval)
    {
        int C = Settings.Context;
        long window = e.Token / C;
        int pos = (int)(e.Token - window * C);
        int[] tokens;
        lock (_gate)
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT tokens FROM windows WHERE window = $w";
            cmd.Parameters.AddWithValue("$w", window);
            tokens = FeatureDatabase.UnpackTokens(cmd.ExecuteScalar() as byte[] ?? throw new InvalidDataException($"{Path}: window {window} of an example is missing"), $"{Path}: window {window}");
        }
        if (pos >= tokens.Length) throw new InvalidDataException($"{Path}: example at position {pos} outside window {window} of {tokens.Length} tokens");
        return new DashboardExample(e.Activation, tokens, pos, ScanExample.UnpackValues(e.Values, tokens.Length, $"{Path}: window {window}"), window, interval,
            [.. tokens.Select(TokenText)]);
    }

    DashboardLogits? Logits(StoreSae sae, int feature)
    {
        byte[]? blob;
        lock (_gate)
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT data FROM logit_lens WHERE sae = $s AND feature = $f";
            cmd.Parameters.AddWithValue("$s", sae.Index); cmd.Parameters.AddWithValue("$f", feature);
            blob = cmd.ExecuteScalar() as byte[];
        }
        if (blob == null) return null;
        var (top, bottom) = LogitLens.Unpack(blob, $"{Path}: logit lens of {sae.Hook} {feature}");
        return new DashboardLogits([.. top.Select(t => new DashboardToken(t.Token, t.Value, TokenText(t.Token)))], [.. bottom.Select(t => new DashboardToken(t.Token, t.Value, TokenText(t.Token)))]);
    }

    DashboardPartner[] Partners(StoreSae sae, int feature)
    {
        var list = new List<DashboardPartner>();
        lock (_gate)
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT partner_sae, partner_feature, r FROM partners WHERE sae = $s AND feature = $f ORDER BY rank";
            cmd.Parameters.AddWithValue("$s", sae.Index); cmd.Parameters.AddWithValue("$f", feature);
            using var r = cmd.ExecuteReader();
            while (r.Read())
            {
                int ps = r.GetInt32(0);
                if ((uint)ps >= (uint)Saes.Count) throw new InvalidDataException($"{Path}: a partner of {sae.Hook} {feature} names SAE {ps}");
                list.Add(new DashboardPartner(Saes[ps].Hook, r.GetInt32(1), r.GetDouble(2)));
            }
        }
        return [.. list];
    }

    /// <summary>The stored label of latent <paramref name="feature"/> of <paramref name="sae"/> (null when unlabelled).</summary>
    public DashboardLabel? LabelOf(StoreSae sae, int feature)
    {
        ArgumentNullException.ThrowIfNull(sae);
        return Label(sae, feature);
    }

    DashboardLabel? Label(StoreSae sae, int feature)
    {
        lock (_gate)
        {
            using var cmd = _db.CreateCommand();
            cmd.CommandText = "SELECT label, f1, precision, recall, specialization FROM labels WHERE sae = $s AND feature = $f";
            cmd.Parameters.AddWithValue("$s", sae.Index); cmd.Parameters.AddWithValue("$f", feature);
            using var r = cmd.ExecuteReader();
            if (!r.Read()) return null;
            double? D(int i) => r.IsDBNull(i) ? null : r.GetDouble(i);
            return new DashboardLabel(r.GetString(0), D(1), D(2), D(3), D(4));
        }
    }
}
