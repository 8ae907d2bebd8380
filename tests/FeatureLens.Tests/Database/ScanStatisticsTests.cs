using FeatureLens.Analysis;
using FeatureLens.Database;
using FeatureLens.Runtime.Tokenizers;
using FeatureLens.Saes;
using FeatureLens.Tests.Analysis;

namespace FeatureLens.Tests.Database;

/// <summary>
/// Every statistic of a scan against a brute-force recount: all activations of every latent collected from the same
/// forward passes (the scan's blocks, so the float32 activations are identical), counted in double precision and
/// ranked by direct sorting; partners by dense two-pass Pearson; the logit lens in double precision.
/// </summary>
public class ScanStatisticsTests
{
    // the documented sampling priority: splitmix64 over (token, SAE, latent)
    static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    static ulong Priority(int sae, int feature, long token) =>
        Mix(Mix((ulong)token + 0x9E3779B97F4A7C15UL * (ulong)(sae + 1)) ^ ((ulong)(uint)feature * 0xD6E8FEB86659FD93UL));

    static int HistBin(float x) => Math.Clamp((int)Math.Floor(Math.Log10(x) * 10) + 60, 0, 119);

    [Fact]
    public void EveryStatisticMatchesABruteForceRecount()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var tmp = new TempDir();
        string corpus = ScanTestData.Corpus(rng, tmp.Path);
        var saes = ScanTestData.Saes(rng);
        var set = ScanTestData.Set(saes);
        var settings = ScanTestData.Settings(rng);
        string db = tmp.File("scan.sqlite");
        CorpusScan.Run(set, [], [corpus], settings, ShardSpec.All, db);
        using var store = FeatureStore.Open(db);
        string where = $"seed {seed}, {settings}";

        // ---- brute force: every firing of every latent, from the scan's own blocks ----
        var tok = set.Model.Tokenizer!;
        int bos = tok.BosId!.Value, C = settings.Context, S = set.Saes.Count;
        var windows = Corpus.Windows(Corpus.Documents(corpus), tok, C, prependBos: true, maxTokens: settings.Tokens).ToList();
        var fires = set.Saes.Select(s => Enumerable.Range(0, s.DSae).Select(_ => new List<(long Token, float X)>()).ToArray()).ToArray();
        var column = new Dictionary<(int S, long Window), float[]>(); // (sae, window) → (len, d) activations
        var sampleRows = new List<double[]>(); // per counted sample token: all latents (global index)
        int G = set.Saes.Sum(s => s.DSae);
        long counted = 0;
        foreach (var (chunk, ci) in windows.Chunk(settings.BlockWindows).Select((c, i) => (c, i)))
        {
            var lat = FeatureTracker.RunLatents(set, chunk);
            int T = chunk.Max(w => w.Length);
            for (int b = 0; b < chunk.Length; b++)
            {
                long w = (long)ci * settings.BlockWindows + b;
                for (int s = 0; s < S; s++)
                    column[(s, w)] = lat[s].AsSpan(b * T * set.Saes[s].DSae, chunk[b].Length * set.Saes[s].DSae).ToArray();
                for (int t = 0; t < chunk[b].Length; t++)
                {
                    if (chunk[b][t] == bos) continue;
                    counted++;
                    var row = w < settings.PartnerWindows ? new double[G] : null;
                    int g0 = 0;
                    for (int s = 0; s < S; s++)
                    {
                        int d = set.Saes[s].DSae;
                        for (int j = 0; j < d; j++)
                        {
                            float x = lat[s][(b * T + t) * d + j];
                            if (x > 0) fires[s][j].Add((w * C + t, x));
                            if (row != null && x > 0) row[g0 + j] = x;
                        }
                        g0 += d;
                    }
                    if (row != null) sampleRows.Add(row);
                }
            }
        }
        Assert.Equal(counted, store.Tokens);

        // dense partners over the sample
        int n = sampleRows.Count;
        var mean = new double[G]; var sd = new double[G];
        for (int g = 0; g < G; g++)
        {
            double m = 0; foreach (var r in sampleRows) m += r[g]; m /= n; mean[g] = m;
            double v = 0; foreach (var r in sampleRows) v += (r[g] - m) * (r[g] - m); sd[g] = Math.Sqrt(v);
        }
        double Pearson(int a, int b)
        {
            if (sd[a] == 0 || sd[b] == 0) return double.NaN;
            double c = 0; foreach (var r in sampleRows) c += (r[a] - mean[a]) * (r[b] - mean[b]);
            return c / (sd[a] * sd[b]);
        }
        var offsets = new int[S + 1];
        for (int s = 0; s < S; s++) offsets[s + 1] = offsets[s] + set.Saes[s].DSae;

        int firing = 0, multiInterval = 0, withPartners = 0, fullTop = 0;
        for (int s = 0; s < S; s++)
        {
            var sae = set.Saes[s];
            var ss = store.Sae(set.Hooks[s]);
            for (int j = 0; j < sae.DSae; j++)
            {
                var d = store.Dashboard(ss, j);
                var f = fires[s][j];
                string at = $"{where}: {set.Hooks[s]} latent {j}";
                // counts and moments
                Assert.True(f.Count == d.Count, $"{at}: count {d.Count}, recount {f.Count}");
                Assert.Equal((double)f.Count / counted, d.Frequency, 12);
                double sum = f.Sum(e => (double)e.X);
                Assert.True(Math.Abs(d.Mean - sum / counted) <= 1e-9 * Math.Max(1, sum / counted), $"{at}: mean {d.Mean} vs {sum / counted}");
                if (f.Count > 0)
                {
                    Assert.True(Math.Abs(d.MeanActive - sum / f.Count) <= 1e-9 * Math.Max(1, sum / f.Count), $"{at}: mean_active");
                    Assert.Equal(f.Max(e => e.X), (float)d.Max);
                }
                // histogram
                var hist = new long[120];
                foreach (var e in f) hist[HistBin(e.X)]++;
                if (f.Count == 0) Assert.Empty(d.Histogram.Counts);
                else
                {
                    int lo = Array.FindIndex(hist, c => c > 0), hi = Array.FindLastIndex(hist, c => c > 0);
                    Assert.Equal(hist[lo..(hi + 1)], d.Histogram.Counts);
                    for (int b = lo; b <= hi; b++)
                        if (b > 0) Assert.Equal(Math.Pow(10, -6 + b / 10.0), d.Histogram.Edges[b - lo], 1e-12 * Math.Pow(10, -6 + b / 10.0) + 1e-300);
                }
                // top examples
                var top = f.OrderByDescending(e => e.X).ThenBy(e => e.Token).Take(settings.TopExamples).ToList();
                Assert.True(top.Count == d.Top.Length, $"{at}: {d.Top.Length} top examples, expected {top.Count}");
                for (int i = 0; i < top.Count; i++) CheckExample(at, top[i], d.Top[i], windows, column, s, j, sae.DSae, C);
                // quantile intervals: populated sampling bins (2 histogram bins each) → ≤ Intervals groups, highest first
                if (f.Count > 0)
                {
                    int slo = f.Min(e => HistBin(e.X)) / 2, shi = f.Max(e => HistBin(e.X)) / 2, nb = shi - slo + 1;
                    var groups = new List<(int Lo, int Hi)>();
                    if (nb <= settings.Intervals) for (int b = slo; b <= shi; b++) groups.Add((b, b));
                    else for (int g = 0; g < settings.Intervals; g++) groups.Add((slo + g * nb / settings.Intervals, slo + (g + 1) * nb / settings.Intervals - 1));
                    groups = groups.Where(g => f.Any(e => HistBin(e.X) / 2 >= g.Lo && HistBin(e.X) / 2 <= g.Hi)).Reverse().ToList();
                    Assert.True(groups.Count == d.Intervals.Length, $"{at}: {d.Intervals.Length} intervals, expected {groups.Count}");
                    for (int g = 0; g < groups.Count; g++)
                    {
                        var inside = f.Where(e => HistBin(e.X) / 2 >= groups[g].Lo && HistBin(e.X) / 2 <= groups[g].Hi).ToList();
                        Assert.Equal(inside.Count, d.Intervals[g].Count);
                        Assert.Equal((double)inside.Count / f.Count, d.Intervals[g].Fraction, 12);
                        Assert.True(inside.All(e => e.X >= d.Intervals[g].Lower && e.X <= d.Intervals[g].Upper * (1 + 1e-12)), $"{at}: interval {g} range");
                        var chosen = inside.OrderBy(e => Priority(s, j, e.Token)).ThenBy(e => e.Token).Take(settings.IntervalExamples)
                            .OrderByDescending(e => e.X).ThenBy(e => e.Token).ToList();
                        var got = d.Quantiles.Where(q => q.Interval == g).ToList();
                        Assert.True(chosen.Count == got.Count, $"{at}: interval {g} has {got.Count} examples, expected {chosen.Count}");
                        for (int i = 0; i < chosen.Count; i++) CheckExample(at, chosen[i], got[i], windows, column, s, j, sae.DSae, C);
                    }
                }
                // partners
                int gj = offsets[s] + j;
                var expected = Enumerable.Range(0, G).Where(h => h != gj).Select(h => (H: h, R: Pearson(gj, h))).Where(x => x.R > 0)
                    .OrderByDescending(x => x.R).ThenBy(x => x.H).Take(settings.Partners).ToList();
                Assert.True(expected.Count == d.Partners.Length, $"{at}: {d.Partners.Length} partners, expected {expected.Count}");
                for (int i = 0; i < expected.Count; i++)
                {
                    Assert.True(Math.Abs(expected[i].R - d.Partners[i].R) <= 1e-9, $"{at}: partner {i} r {d.Partners[i].R} vs {expected[i].R}");
                    int ps = Array.FindLastIndex(offsets, o => o <= expected[i].H);
                    bool tied = (i > 0 && Math.Abs(expected[i - 1].R - expected[i].R) < 1e-9) || (i + 1 < expected.Count && Math.Abs(expected[i + 1].R - expected[i].R) < 1e-9);
                    if (!tied) Assert.True(set.Hooks[ps] == d.Partners[i].Sae && expected[i].H - offsets[ps] == d.Partners[i].Feature,
                        $"{at}: partner {i} is {d.Partners[i].Sae} {d.Partners[i].Feature}, expected {set.Hooks[ps]} {expected[i].H - offsets[ps]}");
                }
                // logit lens
                CheckLogitLens(at, set, s, j, d, settings.LogitTokens);
                if (d.Count > 0) firing++;
                if (d.Intervals.Length > 1) multiInterval++;
                if (d.Partners.Length > 0) withPartners++;
                if (d.Top.Length == settings.TopExamples) fullTop++;
            }
        }
        // the data exercised every part: most latents fire, many span several intervals and have partners
        Assert.True(firing > G / 2 && multiInterval > G / 4 && withPartners > G / 4 && fullTop > G / 4,
            $"{where}: too little exercised: {firing} firing, {multiInterval} with several intervals, {withPartners} with partners, {fullTop} with full top lists of {G}");
    }

    static void CheckExample(string at, (long Token, float X) e, DashboardExample got, List<int[]> windows,
        Dictionary<(int, long), float[]> column, int s, int j, int dSae, int C)
    {
        long w = e.Token / C;
        int pos = (int)(e.Token % C);
        Assert.True(e.X == got.Activation && w == got.Window && pos == got.Pos, $"{at}: example ({got.Activation}, window {got.Window}, pos {got.Pos}) expected ({e.X}, {w}, {pos})");
        Assert.Equal(windows[(int)w], got.Tokens);
        var acts = column[(s, w)];
        var values = Enumerable.Range(0, windows[(int)w].Length).Select(t => acts[t * dSae + j]).ToArray();
        Assert.Equal(values, got.Values);
        Assert.Equal(got.Tokens.Length, got.Text.Length);
    }

    /// <summary>The decoder row through W_O (hook_z), centred (LayerNorm) and scaled by the final norm's weight, times W_U, in double.</summary>
    static void CheckLogitLens(string at, SaeSet set, int s, int j, FeatureDashboard d, int k)
    {
        var m = set.Model; var cfg = m.Config; var w = m.Weights; var sae = set.Saes[s];
        int C = cfg.DModel, V = cfg.VocabSize;
        var dir = new double[C];
        string hook = set.Hooks[s];
        if (hook.EndsWith("attn.hook_z", StringComparison.Ordinal))
        {
            int layer = int.Parse(hook.Split('.')[1], CultureInfo.InvariantCulture);
            var wo = w.Layers[layer].Wo;
            for (int c = 0; c < C; c++)
                for (int i = 0; i < sae.DOut; i++) dir[c] += (double)sae.WDec[j * sae.DOut + i] * wo[i, c];
        }
        else for (int c = 0; c < C; c++) dir[c] = sae.WDec[j * C + c];
        if (cfg.Architecture == FeatureLens.Runtime.Models.Architecture.Gpt2) { double mu = dir.Average(); for (int c = 0; c < C; c++) dir[c] -= mu; }
        for (int c = 0; c < C; c++) dir[c] *= w.FinalNormWeight[c];
        var logits = new double[V];
        for (int v = 0; v < V; v++) { double acc = 0; for (int c = 0; c < C; c++) acc += dir[c] * w.Unembed[c, v]; logits[v] = acc; }
        Assert.NotNull(d.Logits);
        double scale = logits.Max(Math.Abs);
        var top = Enumerable.Range(0, V).OrderByDescending(v => logits[v]).ThenBy(v => v).Take(k).ToList();
        var bottom = Enumerable.Range(0, V).OrderBy(v => logits[v]).ThenBy(v => v).Take(k).ToList();
        foreach (var (want, got) in new[] { (top, d.Logits!.Top), (bottom, d.Logits!.Bottom) })
        {
            Assert.Equal(want.Count, got.Length);
            for (int i = 0; i < want.Count; i++)
            {
                Assert.True(Math.Abs(logits[want[i]] - got[i].Value) <= 1e-5 * scale, $"{at}: logit lens rank {i}: {got[i].Value} vs {logits[want[i]]}");
                // a near tie may swap two tokens; otherwise the token must agree
                if (Math.Abs(logits[got[i].Token] - logits[want[i]]) > 1e-5 * scale) Assert.Fail($"{at}: logit lens rank {i} is token {got[i].Token}, expected {want[i]}");
            }
        }
    }
}
