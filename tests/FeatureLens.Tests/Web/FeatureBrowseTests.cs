using System.Text.Json;
using System.Text.RegularExpressions;
using FeatureLens.Database;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Web;

/// <summary>
/// FeatureStore's browse reads (pages sorted by frequency / max / label / index, FTS5 label search, token search) against
/// an oracle built from every feature's dashboard with LINQ, and NeuronpediaExport's JSON against the keys and meanings
/// SAEDashboard writes and Neuronpedia's importer reads.
/// </summary>
[Collection(FeatureDbServerCollection.Name)]
public sealed partial class FeatureBrowseTests(FeatureDbServer server, ITestOutputHelper output)
{
    string Seed => $"server seed {server.Seed}";

    [GeneratedRegex(@"[\p{L}\p{N}]+")]
    private static partial Regex Words();

    static int LabelCompare(string? a, string? b) => (a, b) switch
    {
        (null, null) => 0,
        (null, _) => 1,
        (_, null) => -1,
        _ => string.CompareOrdinal(a.ToLowerInvariant(), b.ToLowerInvariant()),
    };

    /// <summary>The oracle's order for a sort key and direction (ties by feature index; unlabelled last for label).</summary>
    static List<int> Sorted(IEnumerable<(int Feature, double Frequency, double Max, string? Label, bool FiresOn)> rows, string sort, bool desc)
    {
        var list = rows.ToList();
        list.Sort((x, y) =>
        {
            int c = sort switch
            {
                "frequency" => x.Frequency.CompareTo(y.Frequency) * (desc ? -1 : 1),
                "max" => x.Max.CompareTo(y.Max) * (desc ? -1 : 1),
                "label" => x.Label == null || y.Label == null ? LabelCompare(x.Label, y.Label) : LabelCompare(x.Label, y.Label) * (desc ? -1 : 1),
                _ => x.Feature.CompareTo(y.Feature) * (desc ? -1 : 1),
            };
            return c != 0 ? c : sort == "feature" ? 0 : x.Feature.CompareTo(y.Feature);
        });
        return [.. list.Select(r => r.Feature)];
    }

    List<int> AllPages(StoreSae sae, FeatureQuery q)
    {
        var got = new List<int>();
        for (int page = 0; ; page++)
        {
            var p = server.Store.Features(sae, q with { Page = page });
            got.AddRange(p.Rows.Select(r => r.Feature));
            if ((long)(page + 1) * q.PageSize >= p.Total) { Assert.Equal(p.Total, got.Count); break; }
        }
        return got;
    }

    [Fact]
    public void PagesSortedByEveryKeyMatchTheDashboards()
    {
        var rng = new Random(Random.Shared.Next());
        foreach (var sae in server.Store.Saes)
        {
            var all = server.AllFeatures(sae);
            foreach (var sort in FeatureStore.SortKeys)
                foreach (bool desc in new[] { true, false })
                {
                    int size = rng.Next(5, 40);
                    string what = $"{Seed}, {sae.Hook} sort {sort} {(desc ? "desc" : "asc")} page size {size}";
                    var got = AllPages(sae, new FeatureQuery { Sort = sort, Order = desc ? "desc" : "asc", PageSize = size });
                    Assert.True(Sorted(all, sort, desc).SequenceEqual(got), $"{what}: order differs");
                }
            // each row's values are the dashboard's
            var page = server.Store.Features(sae, new FeatureQuery { PageSize = FeatureStore.MaxPageSize });
            foreach (var r in page.Rows)
            {
                var d = server.Store.Dashboard(sae, r.Feature);
                Assert.Equal((d.Count, d.Frequency, d.Max, d.Mean, d.MeanActive), (r.Count, r.Frequency, r.Max, r.Mean, r.MeanActive));
                Assert.Equal(d.Label?.Label, r.Label);
                Assert.Equal(d.Label?.F1, r.F1);
                Assert.Equal(d.Label?.Specialization, r.Specialization);
            }
            // the default order: frequency, descending
            Assert.Equal(("frequency", "desc"), (page.Sort, page.Order));
            output.WriteLine($"{sae.Hook}: {page.Total} features, {page.Rows.Count(r => r.Label != null)} labelled");
        }
    }

    [Fact]
    public void LabelSearchFindsEveryLabelHoldingEachWordAsAPrefix()
    {
        var rng = new Random(Random.Shared.Next());
        for (int trial = 0; trial < 8; trial++)
        {
            var sae = server.Store.Saes[rng.Next(server.Store.Saes.Count)];
            // one or two words, whole or cut to a prefix, in any case
            var words = Enumerable.Range(0, rng.Next(1, 3)).Select(_ =>
            {
                string w = FeatureDbServer.LabelWords[rng.Next(FeatureDbServer.LabelWords.Length)];
                w = w[..rng.Next(3, w.Length + 1)];
                return rng.Next(2) == 0 ? w.ToUpperInvariant() : w;
            }).ToList();
            string query = string.Join(rng.Next(2) == 0 ? " " : ", ", words);
            var expected = server.AllFeatures(sae)
                .Where(r => r.Label != null && words.All(w => Words().Matches(r.Label).Any(t => t.Value.StartsWith(w, StringComparison.OrdinalIgnoreCase))))
                .ToList();
            var got = AllPages(sae, new FeatureQuery { Label = query, Sort = "max", PageSize = 7 });
            Assert.True(Sorted(expected, "max", true).SequenceEqual(got), $"{Seed}: label '{query}' on {sae.Hook}: expected {string.Join(",", Sorted(expected, "max", true))}, got {string.Join(",", got)}");
            output.WriteLine($"label '{query}' on {sae.Hook}: {got.Count} features");
        }
        var s0 = server.Store.Saes[0];
        // FTS5 syntax in the box is taken as words, never as a query
        Assert.Equal(0, server.Store.Features(s0, new FeatureQuery { Label = "NEAR(\"x\" OR" }).Total);
    }

    [Fact]
    public void TokenSearchFindsTheFeaturesWhoseTopExamplesFireOnTheToken()
    {
        var rng = new Random(Random.Shared.Next());
        foreach (var sae in server.Store.Saes)
        {
            // tokens some top example fired on
            var texts = Enumerable.Range(0, sae.DSae).SelectMany(f => server.Store.Dashboard(sae, f).Top.Select(e => e.Text[e.Pos])).Distinct().ToList();
            Assert.NotEmpty(texts);
            for (int trial = 0; trial < 3; trial++)
            {
                string token = texts[rng.Next(texts.Count)];
                var all = server.AllFeatures(sae, token);
                var expected = all.Where(r => r.FiresOn).ToList();
                var page = server.Store.Features(sae, new FeatureQuery { Token = token, PageSize = FeatureStore.MaxPageSize });
                Assert.True(Sorted(expected, "frequency", true).SequenceEqual(page.Rows.Select(r => r.Feature)), $"{Seed}: token {JsonSerializer.Serialize(token)} on {sae.Hook}");
                Assert.NotNull(page.MatchedTokens);
                Assert.All(page.MatchedTokens!, t => Assert.Equal(token, t.Text));
                Assert.All(page.MatchedTokens!, t => Assert.Equal(token, server.Store.TokenText(t.Token)));
                output.WriteLine($"token {JsonSerializer.Serialize(token)} on {sae.Hook}: {expected.Count} features");
            }
        }
        // " Lily" without its space finds " Lily" (no token is "Lily" exactly in stories260K's vocabulary? then the trim rule applies)
        var lily = server.Store.FindTokens("Lily");
        Assert.Contains(lily, t => t.Text.Trim() == "Lily");
        // a token the vocabulary lacks: no features, no tokens, no error
        var none = server.Store.Features(server.Store.Saes[0], new FeatureQuery { Token = "zzqqzzqq" });
        Assert.Equal(0, none.Total);
        Assert.Empty(none.MatchedTokens!);
    }

    [Fact]
    public void BadQueriesAreClearErrors()
    {
        var s = server.Store.Saes[0];
        Assert.Contains("sort must be one of frequency, max, label, feature", Assert.Throws<ArgumentException>(() => server.Store.Features(s, new FeatureQuery { Sort = "loudness" })).Message);
        Assert.Contains("order must be asc or desc", Assert.Throws<ArgumentException>(() => server.Store.Features(s, new FeatureQuery { Order = "sideways" })).Message);
        Assert.Contains("page must be 0 or more", Assert.Throws<ArgumentException>(() => server.Store.Features(s, new FeatureQuery { Page = -1 })).Message);
        Assert.Contains("page size must be between 1 and 500", Assert.Throws<ArgumentException>(() => server.Store.Features(s, new FeatureQuery { PageSize = 0 })).Message);
        Assert.Contains("page 2 is past the last page", Assert.Throws<ArgumentException>(() => server.Store.Features(s, new FeatureQuery { Page = 2 })).Message);
        Assert.Contains("has no words", Assert.Throws<ArgumentException>(() => server.Store.Features(s, new FeatureQuery { Label = " ,;" })).Message);
        Assert.Contains("token search is empty", Assert.Throws<ArgumentException>(() => server.Store.Features(s, new FeatureQuery { Token = "" })).Message);
    }

    // What Neuronpedia's importer reads from a SAEDashboard batch (hijohnnylin/neuronpedia,
    // utils/neuronpedia-utils/neuronpedia_utils/convert-saedashboard-to-neuronpedia-export.py, _process_batch), written out
    // here independently of NeuronpediaExport's own lists.
    static readonly string[] ImporterFeatureKeys =
    [
        "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1", "correlated_neurons_indices",
        "correlated_neurons_pearson", "correlated_neurons_l1", "correlated_features_indices", "correlated_features_pearson",
        "correlated_features_l1", "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_heights",
        "freq_hist_data_bar_values", "logits_hist_data_bar_heights", "logits_hist_data_bar_values", "decoder_weights_dist", "activations",
    ];
    static readonly string[] ImporterActivationKeys = ["tokens", "values", "bin_contains", "bin_max", "bin_min", "qualifying_token_index"];
    // and what SAEDashboard's NeuronpediaDashboardFeature.to_dict adds (jbloomAus/SAEDashboard sae_dashboard/neuronpedia/neuronpedia_dashboard.py)
    static readonly string[] DashboardOnlyKeys = ["n_prompts_total", "n_tokens_in_prompt", "dataset"];

    [Fact]
    public void ExportIsTheBatchJsonNeuronpediaReadsWithTheDashboardsValues()
    {
        var rng = new Random(Random.Shared.Next());
        var sae = server.Store.Saes[rng.Next(server.Store.Saes.Count)];
        var chosen = Enumerable.Range(0, sae.DSae).OrderBy(_ => rng.Next()).Take(rng.Next(2, 6)).ToList();
        using var tmp = new TempDir();
        string path = tmp.File("batch.json");
        NeuronpediaExport.Write(path, NeuronpediaExport.Build(server.Store, sae, chosen, saeSet: "res-test"));
        using var doc = JsonDocument.Parse(File.ReadAllText(path));
        var root = doc.RootElement;
        string what = $"{Seed}, {sae.Hook} features {string.Join(",", chosen)}";
        Assert.Equal(["model_id", "layer", "sae_set", "features"], root.EnumerateObject().Select(p => p.Name));
        Assert.Equal("stories260K.bin", root.GetProperty("model_id").GetString());
        Assert.Equal(NeuronpediaExport.LayerOf(sae.Hook), root.GetProperty("layer").GetInt32());
        Assert.Equal(int.Parse(sae.Hook.Split('.')[1], CultureInfo.InvariantCulture), root.GetProperty("layer").GetInt32());
        Assert.Equal("res-test", root.GetProperty("sae_set").GetString());
        var feats = root.GetProperty("features").EnumerateArray().ToList();
        Assert.Equal(chosen, feats.Select(f => f.GetProperty("feature_index").GetInt32()));
        foreach (var f in feats)
        {
            var d = server.Store.Dashboard(sae, f.GetProperty("feature_index").GetInt32());
            var keys = f.EnumerateObject().Select(p => p.Name).ToHashSet();
            Assert.True(keys.SetEquals(ImporterFeatureKeys.Concat(DashboardOnlyKeys)), $"{what}: keys {string.Join(",", keys)}");
            foreach (var k in ImporterFeatureKeys.Where(k => k != "feature_index" && k != "frac_nonzero"))
                Assert.Equal(JsonValueKind.Array, f.GetProperty(k).ValueKind);
            double[] Nums(string k) => [.. f.GetProperty(k).EnumerateArray().Select(x => x.GetDouble())];
            string[] Strs(string k) => [.. f.GetProperty(k).EnumerateArray().Select(x => x.GetString()!)];
            Assert.Equal(d.Frequency, f.GetProperty("frac_nonzero").GetDouble());
            Assert.Equal(d.Logits!.Top.Select(t => t.Text), Strs("pos_str"));
            Assert.Equal(d.Logits.Top.Select(t => (double)t.Value), Nums("pos_values"));
            Assert.Equal(d.Logits.Bottom.Select(t => t.Text), Strs("neg_str"));
            Assert.Equal(d.Logits.Bottom.Select(t => (double)t.Value), Nums("neg_values"));
            // the histogram: parallel bars (Neuronpedia indexes the heights by the values' positions), every firing counted once
            var heights = Nums("freq_hist_data_bar_heights");
            var values = Nums("freq_hist_data_bar_values");
            Assert.Equal(heights.Length, values.Length);
            Assert.Equal(d.Count, (long)heights.Sum());
            for (int i = 0; i < values.Length; i++) Assert.InRange(values[i], d.Histogram.Edges[i], d.Histogram.Edges[i + 1]);
            // partners within the SAE: index and r, in rank order
            var same = d.Partners.Where(p => p.Sae == sae.Hook).ToList();
            Assert.Equal(same.Select(p => (double)p.Feature), Nums("correlated_features_indices"));
            Assert.Equal(same.Select(p => p.R), Nums("correlated_features_pearson"));
            Assert.Equal(server.Store.Settings.Context, f.GetProperty("n_tokens_in_prompt").GetInt32());
            // activations: the top examples (bin_min −1, bin_max the max, bin_contains −1), then each interval's examples
            var acts = f.GetProperty("activations").EnumerateArray().ToList();
            Assert.Equal(d.Top.Length + d.Quantiles.Length, acts.Count);
            var examples = d.Top.Concat(d.Quantiles).ToList();
            for (int i = 0; i < acts.Count; i++)
            {
                var a = acts[i];
                var e = examples[i];
                Assert.True(a.EnumerateObject().Select(p => p.Name).ToHashSet().SetEquals(ImporterActivationKeys), $"{what}: activation keys");
                var toks = a.GetProperty("tokens").EnumerateArray().Select(x => x.GetString()!).ToArray();
                var vals = a.GetProperty("values").EnumerateArray().Select(x => (float)x.GetDouble()).ToArray();
                Assert.Equal(e.Text, toks);
                Assert.Equal(e.Values, vals);
                int q = a.GetProperty("qualifying_token_index").GetInt32();
                Assert.Equal(e.Pos, q);
                Assert.Equal(e.Activation, vals[q]);
                if (i < d.Top.Length)
                    Assert.Equal((-1.0, d.Max, -1.0), (a.GetProperty("bin_min").GetDouble(), a.GetProperty("bin_max").GetDouble(), a.GetProperty("bin_contains").GetDouble()));
                else
                {
                    var iv = d.Intervals[e.Interval!.Value];
                    Assert.Equal((iv.Lower, iv.Upper, iv.Fraction), (a.GetProperty("bin_min").GetDouble(), a.GetProperty("bin_max").GetDouble(), a.GetProperty("bin_contains").GetDouble()));
                    Assert.InRange(e.Activation, iv.Lower, iv.Upper);
                }
            }
        }
        Assert.Contains("listed twice", Assert.Throws<ArgumentException>(() => NeuronpediaExport.Build(server.Store, sae, [1, 1])).Message);
        Assert.Contains("'x' is not a feature index", Assert.Throws<ArgumentException>(() => NeuronpediaExport.ParseFeatures("1,x", sae.DSae)).Message);
        Assert.Contains($"outside [0, {sae.DSae})", Assert.Throws<ArgumentException>(() => NeuronpediaExport.ParseFeatures($"{sae.DSae}", sae.DSae)).Message);
    }
}
