using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Tests.Saes;

namespace FeatureLens.Tests.Analysis;

/// <summary>Feature labels: CSV and Neuronpedia import, computation from a labelled prompt set, CSV export.</summary>
public class LabelTests
{
    static HookedTransformer Stories() => HookedTransformer.Load(Path.Combine(TestPaths.Shared, "models", "stories260K", "stories260K.bin"));

    static string ShippedPrompts => Path.Combine(TestPaths.RepoRoot, "data", "prompts", "stories260K-labelled.jsonl");

    /// <summary>A set of random SAEs on stories260K at the given hooks.</summary>
    static SaeSet RandomSet(HookedTransformer m, Random rng, SaeArchitecture arch, params string[] hooks) =>
        new(m, hooks.Select(h => SaeTestData.Random(rng, arch, m.HookWidth(h)!.Value, 48 + rng.Next(64), h, k: 8)));

    // ───────────────────────────── CSV ─────────────────────────────

    [Fact]
    public void CsvWithQuotesCommasOptionalColumnsLayersAndHooks()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        var set = RandomSet(m, rng, SaeArchitecture.Standard, "blocks.1.hook_resid_post", "blocks.3.hook_resid_post", "blocks.3.hook_mlp_out");
        int D(string hook) => set.Saes[set.IndexOf(hook)].DSae;
        int f1 = rng.Next(D("blocks.1.hook_resid_post")), f2 = rng.Next(D("blocks.3.hook_mlp_out")), f3 = rng.Next(D("blocks.3.hook_resid_post")), f4 = (f1 + 1) % D("blocks.1.hook_resid_post");
        double spec = Math.Round(rng.NextDouble(), 6);
        using var dir = new TempDir();
        string path = dir.File("labels.csv");
        // hook wins over layer; layer alone picks the only SAE at that layer; CRLF and LF mixed; blank lines; an extra column
        File.WriteAllText(path,
            "Layer,hook,feature,label,f1,specialization,notes\r\n" +
            $"1,,{f1},\"cats, dogs and \"\"pets\"\"\",0.5,{spec.ToString(System.Globalization.CultureInfo.InvariantCulture)},x\r\n" +
            "\r\n" +
            $",blocks.3.hook_mlp_out,{f2},\"two\nlines\",,,\n" +
            $"7,L3 resid_post,{f3},  plain label  ,1e-1,0.25,\n" +
            $"0,,5,layer without an SAE,,,\n" +
            $",blocks.4.hook_resid_post,5,hook without an SAE,,,\n" +
            $"1,,{f4},\"ok\",0.1,,\"quoted, last\"\n");
        var labels = FeatureLabels.Load(path, set, out var stats);
        Assert.Equal(new LabelImportStats(6, 4, 2, 0), stats);
        var a = labels.Get("blocks.1.hook_resid_post", f1)!;
        Assert.Equal("cats, dogs and \"pets\"", a.Label);
        Assert.Equal(0.5, a.F1);
        Assert.Equal(spec, a.Specialization);
        Assert.Null(a.Precision);
        Assert.Null(a.Recall);
        Assert.Equal("csv", a.Source);
        var b = labels.Get("blocks.3.hook_mlp_out", f2)!;
        Assert.Equal("two\nlines", b.Label);
        Assert.Null(b.F1);
        var c = labels.Get("blocks.3.hook_resid_post", f3)!;
        Assert.Equal("plain label", c.Label);
        Assert.Equal(0.1, c.F1);
        Assert.Equal("ok", labels.Get("blocks.1.hook_resid_post", f4)!.Label);
        Assert.Equal(4, labels.Count);
    }

    [Theory]
    [InlineData("hook,feature\nblocks.1.hook_resid_post,3\n", ":1:", "'label'")]
    [InlineData("hook,label\nblocks.1.hook_resid_post,x\n", ":1:", "'feature'")]
    [InlineData("feature,label\n3,x\n", ":1:", "'layer' or a 'hook'")]
    [InlineData("layer,feature,label,layer\n1,2,x,1\n", ":1:", "twice")]
    [InlineData("layer,feature,label\n1,2,x\n1,two,y\n", ":3:", "'feature'")]
    [InlineData("layer,feature,label\n1,2,x\n\n1,-1,y\n", ":4:", "'feature'")]
    [InlineData("layer,feature,label\n1,100000,x\n", ":2:", "only")]
    [InlineData("layer,feature,label\nL1,2,x\n", ":2:", "'layer'")]
    [InlineData("layer,feature,label\n3,2,x\n", ":2:", "use a 'hook' column")]
    [InlineData("layer,feature,label\n1,2\n", ":2:", "2 fields")]
    [InlineData("layer,feature,label\n1,2,x,extra\n", ":2:", "4 fields")]
    [InlineData("layer,feature,label\n1,2,\"x\" y\n", ":2:", "closing quote")]
    [InlineData("layer,feature,label\n1,2,x\n1,3,\"never\nclosed\n", ":3:", "never closed")]
    [InlineData("layer,feature,label,f1\n1,2,x,high\n", ":2:", "'f1'")]
    [InlineData("layer,feature,label,f1\n1,2,x,NaN\n", ":2:", "'f1'")]
    [InlineData("layer,feature,label\n1,2,  \n", ":2:", "'label' is empty")]
    [InlineData("layer,feature,label\n1,2,x\n1,3,y\n1,2,z\n", ":4:", "first on line 2")]
    [InlineData("hook,layer,feature,label\n,,2,x\n", ":2:", "both 'hook' and 'layer' are empty")]
    [InlineData("", "labels.csv", "empty")]
    public void BadCsvNamesFileLineAndField(string content, string line, string message)
    {
        var rng = new Random(Random.Shared.Next());
        using var m = Stories();
        var set = RandomSet(m, rng, SaeArchitecture.Standard, "blocks.1.hook_resid_post", "blocks.3.hook_resid_post", "blocks.3.hook_mlp_out");
        using var dir = new TempDir();
        string path = dir.File("labels.csv");
        File.WriteAllText(path, content);
        var e = Assert.ThrowsAny<Exception>(() => FeatureLabels.Load(path, set));
        Assert.True(e is InvalidDataException, $"{e.GetType().Name}: {e.Message}");
        Assert.Contains(path, e.Message);
        Assert.Contains(line, e.Message);
        Assert.Contains(message, e.Message);
    }

    [Fact]
    public void UnknownExtensionAndMissingFileAreClearErrors()
    {
        using var m = Stories();
        var set = RandomSet(m, new Random(Random.Shared.Next()), SaeArchitecture.Standard, "blocks.1.hook_resid_post");
        using var dir = new TempDir();
        File.WriteAllText(dir.File("labels.txt"), "x");
        Assert.Contains(".csv", Assert.Throws<ArgumentException>(() => FeatureLabels.Load(dir.File("labels.txt"), set)).Message);
        Assert.Contains("no such", Assert.Throws<FileNotFoundException>(() => FeatureLabels.Load(dir.File("none.csv"), set)).Message);
    }

    // ───────────────────────────── Neuronpedia ─────────────────────────────

    [Fact]
    public void NeuronpediaExportMapsSourcesKeepsBestExplanationAndSkipsOtherLayers()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        var set = RandomSet(m, rng, SaeArchitecture.Standard,
            "blocks.0.hook_resid_post", "blocks.2.hook_resid_post", "blocks.2.hook_mlp_out", "blocks.3.attn.hook_z", "blocks.4.hook_resid_pre", "blocks.4.hook_resid_post");
        int F(string hook) => rng.Next(set.Saes[set.IndexOf(hook)].DSae);
        int a = F("blocks.0.hook_resid_post"), b = F("blocks.2.hook_resid_post"), c = F("blocks.2.hook_mlp_out"), d = F("blocks.3.attn.hook_z"),
            e = F("blocks.4.hook_resid_pre"), f = F("blocks.4.hook_resid_post"), g = (a + 1) % set.Saes[set.IndexOf("blocks.0.hook_resid_post")].DSae;
        string Line(string layer, string index, string desc, string extra = "") =>
            $"{{\"modelId\":\"stories260k\",\"layer\":{layer},\"index\":{index},\"description\":\"{desc}\",\"explanationModelName\":\"gpt-4o-mini\",\"typeName\":\"oai_token-act-pair\"{extra}}}";
        var lines = new[]
        {
            Line("\"0-res-jb\"", $"\"{a}\"", " the word cat"),
            Line("\"2-res_post_32k-oai\"", $"{b}", "first", ",\"scores\":[0.2,0.5]"),
            Line("\"2-res_post_32k-oai\"", $"{b}", "best", ",\"score\":0.9"),
            Line("\"2-res_post_32k-oai\"", $"{b}", "worse", ",\"scores\":[{\"value\":0.1},{\"value\":0.3}]"),
            Line("\"2-mlp-tc\"", $"\"{c}\"", "mlp feature"),
            Line("\"3-att-kk\"", $"{d}", "attention feature"),
            Line("\"4-res_pre-x\"", $"{e}", "before block 4"),
            Line("\"4-resid-post-y\"", $"{f}", "after block 4"),
            Line("0", $"{g}", "plain layer number", ",\"score\":null"),
            "",
            Line("\"1-res-jb\"", "3", "no SAE at layer 1"),
            Line("\"3-res-jb\"", "3", "layer 3 has only an attention SAE"),
            Line("\"7-res-jb\"", "\"3\"", "beyond the model"),
            Line("\"0-res-jb\"", $"{a}", "unscored duplicate"),
        };
        using var dir = new TempDir();
        string path = dir.File("np.jsonl");
        File.WriteAllText(path, string.Join("\n", lines) + "\n");
        var labels = FeatureLabels.Load(path, set, out var stats);
        Assert.Equal(new LabelImportStats(13, 7, 3, 3), stats);
        Assert.Equal("the word cat", labels.Get("blocks.0.hook_resid_post", a)!.Label);
        Assert.Equal("neuronpedia", labels.Get("blocks.0.hook_resid_post", a)!.Source);
        Assert.Null(labels.Get("blocks.0.hook_resid_post", a)!.F1);
        Assert.Equal("best", labels.Get("blocks.2.hook_resid_post", b)!.Label);
        Assert.Equal("mlp feature", labels.Get("blocks.2.hook_mlp_out", c)!.Label);
        Assert.Equal("attention feature", labels.Get("blocks.3.attn.hook_z", d)!.Label);
        Assert.Equal("before block 4", labels.Get("blocks.4.hook_resid_pre", e)!.Label);
        Assert.Equal("after block 4", labels.Get("blocks.4.hook_resid_post", f)!.Label);
        Assert.Equal("plain layer number", labels.Get("blocks.0.hook_resid_post", g)!.Label);
    }

    [Theory]
    [InlineData("{oops", "not valid JSON")]
    [InlineData("[1,2]", "expected a JSON object")]
    [InlineData("{\"index\":1,\"description\":\"x\"}", "'layer' is missing")]
    [InlineData("{\"layer\":\"res-1\",\"index\":1,\"description\":\"x\"}", "'layer' is 'res-1'")]
    [InlineData("{\"layer\":\"1res\",\"index\":1,\"description\":\"x\"}", "'layer' is '1res'")]
    [InlineData("{\"layer\":true,\"index\":1,\"description\":\"x\"}", "'layer' is True")]
    [InlineData("{\"layer\":\"1-res-jb\",\"description\":\"x\"}", "'index' is missing")]
    [InlineData("{\"layer\":\"1-res-jb\",\"index\":\"abc\",\"description\":\"x\"}", "'index' is 'abc'")]
    [InlineData("{\"layer\":\"1-res-jb\",\"index\":1.5,\"description\":\"x\"}", "'index' is '1.5'")]
    [InlineData("{\"layer\":\"1-res-jb\",\"index\":100000,\"description\":\"x\"}", "only")]
    [InlineData("{\"layer\":\"1-res-jb\",\"index\":1}", "'description'")]
    [InlineData("{\"layer\":\"1-res-jb\",\"index\":1,\"description\":\" \"}", "'description' is empty")]
    [InlineData("{\"layer\":\"1-res-jb\",\"index\":1,\"description\":\"x\",\"score\":\"high\"}", "'score'")]
    [InlineData("{\"layer\":\"1-res-jb\",\"index\":1,\"description\":\"x\",\"scores\":[{\"v\":1}]}", "'scores'")]
    [InlineData("{\"layer\":\"3-res-jb\",\"index\":1,\"description\":\"x\"}", "could be any of")]
    public void MalformedNeuronpediaLinesNameFileLineAndField(string bad, string message)
    {
        using var m = Stories();
        var set = RandomSet(m, new Random(Random.Shared.Next()), SaeArchitecture.Standard,
            "blocks.1.hook_resid_post", "blocks.3.hook_resid_pre", "blocks.3.hook_resid_post");
        using var dir = new TempDir();
        string path = dir.File("np.jsonl");
        File.WriteAllText(path, "{\"layer\":\"1-res-jb\",\"index\":\"0\",\"description\":\"fine\"}\n\n" + bad + "\n");
        var e = Assert.Throws<InvalidDataException>(() => FeatureLabels.Load(path, set));
        Assert.Contains($"{path}:3:", e.Message);
        Assert.Contains(message, e.Message);
    }

    // ───────────────────────────── prompts ─────────────────────────────

    [Fact]
    public void ShippedPromptSetParsesWithEveryCategoryWellFilled()
    {
        var prompts = FeatureLabels.ReadLabelledPrompts(ShippedPrompts).ToList();
        var byLabel = prompts.GroupBy(p => p.Label).ToDictionary(g => g.Key, g => g.Count());
        Assert.InRange(byLabel.Count, 8, 10);
        foreach (var (label, n) in byLabel) Assert.True(n >= 15, $"category '{label}' has only {n} prompts");
        Assert.Equal(prompts.Count, prompts.Select(p => p.Text).Distinct().Count());
        using var m = Stories();
        foreach (var (text, _) in prompts)
        {
            int n = m.Tokenizer!.Encode(text, addBos: true).Length;
            Assert.InRange(n, 4, 64);
        }
    }

    [Theory]
    [InlineData("{\"text\":\"a\"}", "'label' is missing")]
    [InlineData("{\"label\":\"a\"}", "'text' is missing")]
    [InlineData("{\"text\":\"a\",\"label\":3}", "'label' is Number")]
    [InlineData("{\"text\":\"\",\"label\":\"x\"}", "'text' is empty")]
    [InlineData("\"just a string\"", "expected a JSON object")]
    [InlineData("{\"text\":\"a\",", "not valid JSON")]
    public void BadPromptLinesNameFileLineAndField(string bad, string message)
    {
        using var dir = new TempDir();
        string path = dir.File("p.jsonl");
        File.WriteAllText(path, "{\"text\":\"Once upon a time\",\"label\":\"openings\"}\n" + bad + "\n");
        var e = Assert.Throws<InvalidDataException>(() => FeatureLabels.ReadLabelledPrompts(path));
        Assert.Contains($"{path}:2:", e.Message);
        Assert.Contains(message, e.Message);
        File.WriteAllText(path, "\n\n");
        Assert.Contains("no prompts", Assert.Throws<InvalidDataException>(() => FeatureLabels.ReadLabelledPrompts(path)).Message);
    }

    // ───────────────────────────── compute ─────────────────────────────

    /// <summary>One prompt alone through the model: the SAE's activations and pre-activations, both (T, d_sae), from the activation cached at <paramref name="hook"/>.</summary>
    static (float[] Acts, float[] Pre) EncodeAlone(HookedTransformer m, string hook, Sae sae, int[] ids)
    {
        var (_, cache) = m.RunWithCache([ids], n => n == hook);
        var x = cache[hook].Reshape(ids.Length, sae.DIn);
        var acts = sae.Encode(x).Data;
        var saeIn = new float[ids.Length * sae.DIn];
        sae.Preprocess(x.Data, saeIn, ids.Length);
        var pre = new float[ids.Length * sae.DSae];
        sae.PreActivations(saeIn, pre, ids.Length);
        return (acts, pre);
    }

    [Fact]
    public void ComputedLabelsMatchABruteForceComputationOnePromptAtATime()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        var hooks = new[] { "blocks.0.hook_resid_post", "blocks.2.hook_mlp_out", "blocks.2.hook_resid_post", "blocks.4.hook_resid_post" };
        var set = RandomSet(m, rng, SaeArchitecture.Standard, hooks);
        var prompts = FeatureLabels.ReadLabelledPrompts(ShippedPrompts).ToList();
        var ids = prompts.Select(p => m.Tokenizer!.Encode(p.Text, addBos: true)).ToList();
        double threshold = rng.Next(2) == 0 ? 0 : 0.02 + 0.1 * rng.NextDouble();

        // Make the random SAEs selective: lower each feature's encoder bias so that it fires on a random share of the
        // prompts (between one prompt and most of them), and on none for about one feature in ten. The cut sits halfway
        // between two prompts' maxima (measured on the clean model), far from float rounding.
        for (int i = 0; i < set.Saes.Count; i++)
        {
            var sae = set.Saes[i];
            int d = sae.DSae;
            var maxPre = new double[d][];
            for (int j = 0; j < d; j++) maxPre[j] = new double[prompts.Count];
            for (int p = 0; p < prompts.Count; p++)
            {
                var (_, pre) = EncodeAlone(m, set.Hooks[i], sae, ids[p]);
                for (int j = 0; j < d; j++)
                {
                    double mx = double.NegativeInfinity;
                    for (int t = 1; t < ids[p].Length; t++) mx = Math.Max(mx, pre[t * d + j]);
                    maxPre[j][p] = mx;
                }
            }
            for (int j = 0; j < d; j++)
            {
                var sorted = maxPre[j].OrderByDescending(v => v).ToArray();
                // prompts that share a prefix share maxima: cut only where neighbouring maxima are clearly apart
                var gaps = Enumerable.Range(0, prompts.Count * 2 / 3).Where(k => sorted[k] - sorted[k + 1] > 1e-3).ToList();
                int cutAt = gaps.Count > 0 ? gaps[rng.Next(gaps.Count)] : -1;
                double cut = cutAt < 0 || rng.Next(10) == 0 ? sorted[0] + 1 : (sorted[cutAt] + sorted[cutAt + 1]) / 2;
                sae.BEnc[j] -= (float)(cut - threshold);
            }
        }

        var reported = new List<int>();
        var labels = FeatureLabels.Compute(set, prompts, threshold, new SyncProgress(reported.Add));
        Assert.Equal(prompts.Count, reported[^1]);
        Assert.Equal(reported.OrderBy(x => x), reported);

        // The brute force runs each prompt alone, with the same SAEs spliced in with their error terms (the model's
        // outputs are unchanged, but float32 rounding of output + error moves later layers' inputs by ~1e-7 relative),
        // and encodes each SAE's cached input with Sae.Encode.
        var attached = set.Saes.Select((s, i) => m.AddSplice(new SaeSplice(s, useErrorTerm: true, hookName: set.Hooks[i]))).ToList();

        var categories = prompts.Select(p => p.Label).Distinct().ToList();
        int C = categories.Count;
        var size = categories.Select(c => prompts.Count(p => p.Label == c)).ToArray();
        int checkedFeatures = 0, nearThreshold = 0, labelled = 0, dead = 0, partial = 0;
        for (int i = 0; i < set.Saes.Count; i++)
        {
            var sae = set.Saes[i];
            int d = sae.DSae;
            var fires = new long[C, d];
            var sums = new double[C, d];
            var margin = Enumerable.Repeat(double.PositiveInfinity, d).ToArray();   // closest approach of a prompt's max pre-activation to the threshold
            for (int p = 0; p < prompts.Count; p++)
            {
                var (acts, pre) = EncodeAlone(m, set.Hooks[i] + ".hook_sae_input", sae, ids[p]);
                int c = categories.IndexOf(prompts[p].Label);
                for (int j = 0; j < d; j++)
                {
                    double max = double.NegativeInfinity, maxPre = double.NegativeInfinity;
                    for (int t = 1; t < ids[p].Length; t++)
                    {
                        max = Math.Max(max, acts[t * d + j]);
                        maxPre = Math.Max(maxPre, pre[t * d + j]);
                        sums[c, j] += acts[t * d + j];
                    }
                    if (max > threshold) fires[c, j]++;
                    margin[j] = Math.Min(margin[j], Math.Abs(maxPre - threshold));
                }
            }
            for (int j = 0; j < d; j++)
            {
                // a prompt whose max sits within float rounding of the threshold may fire in one computation and not the other
                if (margin[j] < 1e-5) { nearThreshold++; continue; }
                checkedFeatures++;
                long total = 0;
                double totalSum = 0;
                for (int c = 0; c < C; c++) { total += fires[c, j]; totalSum += sums[c, j]; }
                var got = labels.Get(set.Hooks[i], j);
                if (total == 0) { dead++; Assert.True(got is null, $"seed {seed}: {set.Names[i]}:{j} never fires but got label {got?.Label}"); continue; }
                Assert.True(got is not null, $"seed {seed}: {set.Names[i]}:{j} fires on {total} prompts but has no label");
                labelled++;
                if (total < prompts.Count) partial++;
                int best = -1;
                double bestF1 = -1, bestP = -1, bestR = 0;
                for (int c = 0; c < C; c++)
                {
                    double p = (double)fires[c, j] / total, r = (double)fires[c, j] / size[c];
                    double f1 = p + r == 0 ? 0 : 2 * p * r / (p + r);
                    if (f1 > bestF1 || (f1 == bestF1 && p > bestP)) { best = c; bestF1 = f1; bestP = p; bestR = r; }
                }
                string where = $"seed {seed}, threshold {threshold}: {set.Names[i]}:{j}";
                Assert.True(categories[best] == got!.Label, $"{where}: label {got.Label}, brute force {categories[best]}");
                Assert.True(Math.Abs(got.F1!.Value - bestF1) <= 1e-9, $"{where}: F1 {got.F1} vs {bestF1}");
                Assert.True(Math.Abs(got.Precision!.Value - bestP) <= 1e-9, $"{where}: precision {got.Precision} vs {bestP}");
                Assert.True(Math.Abs(got.Recall!.Value - bestR) <= 1e-9, $"{where}: recall {got.Recall} vs {bestR}");
                double spec = sums[best, j] / totalSum;
                Assert.True(Math.Abs(got.Specialization!.Value - spec) <= 1e-6 * spec, $"{where}: specialization {got.Specialization} vs {spec}");
                Assert.Equal("computed", got.Source);
            }
        }
        attached.ForEach(h => h.Dispose());
        int all = set.Saes.Sum(s => s.DSae);
        Assert.True(nearThreshold <= all / 50, $"seed {seed}: {nearThreshold} of {all} features had a prompt within 1e-5 of the threshold");
        Assert.True(dead > 0 && partial > all / 2, $"seed {seed}: {dead} dead and {partial} selective features of {all}: the test SAEs are not selective enough");
        Assert.InRange(labels.Count, labelled, labelled + nearThreshold);
    }

    [Fact]
    public void ComputeRejectsBadInput()
    {
        using var m = Stories();
        var set = RandomSet(m, new Random(Random.Shared.Next()), SaeArchitecture.Standard, "blocks.1.hook_resid_post");
        Assert.Throws<ArgumentException>(() => FeatureLabels.Compute(set, []));
        Assert.Throws<ArgumentOutOfRangeException>(() => FeatureLabels.Compute(set, [("a cat", "animals")], fireThreshold: -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => FeatureLabels.Compute(set, [("a cat", "animals")], fireThreshold: double.NaN));
        Assert.Contains("BOS", Assert.Throws<ArgumentException>(() => FeatureLabels.Compute(set, [("", "animals")])).Message);
        Assert.Contains("empty label", Assert.Throws<ArgumentException>(() => FeatureLabels.Compute(set, [("a cat", " ")])).Message);
    }

    // ───────────────────────────── export ─────────────────────────────

    [Fact]
    public void SaveCsvThenLoadGivesTheSameLabels()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        using var m = Stories();
        var set = RandomSet(m, rng, SaeArchitecture.TopK, "blocks.1.hook_resid_post", "blocks.3.hook_resid_post", "blocks.3.hook_mlp_out");
        var prompts = FeatureLabels.ReadLabelledPrompts(ShippedPrompts).Where((_, k) => k % 3 == 0).ToList();
        var labels = FeatureLabels.Compute(set, prompts);
        // labels that need quoting, and one without numbers
        labels.Set("blocks.3.hook_mlp_out", 0, new FeatureLabel { Label = "a, \"quoted\"\nlabel", F1 = 1.0 / 3, Source = "computed" });
        labels.Set("blocks.1.hook_resid_post", 1, new FeatureLabel { Label = " padded ", Source = "csv" });
        using var dir = new TempDir();
        string path = dir.File("labels.csv");
        FeatureLabels.SaveCsv(labels, set, path);
        Assert.False(File.Exists(path + ".tmp"));
        Assert.StartsWith("hook,layer,feature,label,f1,precision,recall,specialization", File.ReadAllText(path));
        var back = FeatureLabels.Load(path, set, out var stats);
        Assert.Equal(labels.Count, back.Count);
        Assert.Equal(new LabelImportStats(labels.Count, labels.Count, 0, 0), stats);
        foreach (var (hook, feature, label) in labels.All())
        {
            var got = back.Get(hook, feature)!;
            Assert.True(got is not null, $"seed {seed}: {hook}:{feature} lost");
            Assert.Equal(label.Label.Trim(), got.Label);
            Assert.Equal(label.F1, got.F1);
            Assert.Equal(label.Precision, got.Precision);
            Assert.Equal(label.Recall, got.Recall);
            Assert.Equal(label.Specialization, got.Specialization);
        }
    }

    /// <summary>An IProgress that reports on the calling thread (Progress&lt;T&gt; posts to the thread pool).</summary>
    sealed class SyncProgress(Action<int> report) : IProgress<int>
    {
        public void Report(int value) => report(value);
    }
}
