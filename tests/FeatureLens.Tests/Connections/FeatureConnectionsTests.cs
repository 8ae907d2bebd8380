using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureLens.Analysis;
using FeatureLens.Connections;
using FeatureLens.Database;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;
using FeatureLens.Tests.Analysis;
using FeatureLens.Tests.Cli;
using FeatureLens.Tests.Database;
using FeatureLens.Tests.Saes;
using Xunit.Abstractions;

namespace FeatureLens.Tests.Connections;

/// <summary>
/// A database feature's upstream and downstream features (<see cref="FeatureConnections"/>) on a fresh random scan of
/// stories260K (Llama-shaped) with three random SAEs at different layers and kinds (ScanTestData: TopK at blocks.0.hook_resid_post,
/// JumpReLU at blocks.1.attn.hook_z, ReLU at blocks.3.hook_resid_post), a random corpus and random settings and labels:
/// <list type="bullet">
/// <item>upstream of a blocks.3 feature equals the float64 torch oracle (python/effects_reference.py: autograd gradient of
/// <c>feature:HOOK:I@pos</c> with every SAE spliced with its error term, zero ablation), asked for every latent and error node
/// of the two earlier SAEs at every position ≤ pos, aggregated here (sum over positions, mean over examples): |ours − torch| ≤
/// 1e-4 · max(|torch|, 3e-2 · S), S the largest |torch| partner effect (EffectsParityTests' contract: float32 gradients carry
/// ~1e-6 of the scale of what they are computed from); fractions exactly;</item>
/// <item>downstream of a blocks.0 feature equals a brute-force recompute that never splices an SAE: the plain model run with
/// the hook's activation moved by Decode(a with the latent zeroed) − Decode(a), the later hooks encoded with Sae.Encode:
/// |ours − oracle| ≤ 1e-5 · max(1, |oracle|, the latent's largest clean activation over the summed positions) per latent —
/// each change is a sum of differences of two float32 activations, so its rounding scales with the activations, not with
/// the change (the worst seen over repeated runs: ~6e-6).</item>
/// </list>
/// </summary>
public sealed class FeatureConnectionsTests(ITestOutputHelper output) : IDisposable
{
    readonly TempDir dir = new();
    public void Dispose() => dir.Dispose();

    sealed record Scan(int Seed, string Db, List<Sae> Saes, FeatureStore Store) : IDisposable
    {
        public void Dispose() => Store.Dispose();
    }

    Scan MakeScan(int seed, int dSae = 32)
    {
        var rng = new Random(seed);
        string corpus = ScanTestData.Corpus(rng, dir.Path, documents: 40);
        var saes = ScanTestData.Saes(rng, dSae);
        var labels = new FeatureLabelLookup();
        foreach (var sae in saes)
            for (int f = 0; f < sae.DSae; f++)
                if (rng.NextDouble() < 0.6)
                    labels.Set(sae.Config.Metadata.HookName, f, new FeatureLabel { Label = $"label {rng.Next(1000)} of {f}", Source = "computed" });
        var settings = ScanTestData.Settings(rng) with { Tokens = rng.Next(900, 1400), TopExamples = rng.Next(4, 7) };
        string db = dir.File($"scan{seed}.sqlite");
        CorpusScan.Run(ScanTestData.Set(saes), [], [corpus], settings, ShardSpec.All, db, labels);
        return new Scan(seed, db, saes, FeatureStore.Open(db));
    }

    /// <summary>The features of <paramref name="sae"/> with at least <paramref name="min"/> top examples, most examples first, then at random.</summary>
    static List<int> Firing(FeatureStore store, StoreSae sae, Random rng, int min = 2) =>
        [.. Enumerable.Range(0, sae.DSae).Select(f => (f, n: store.Dashboard(sae, f).Top.Length)).Where(x => x.n >= min)
            .OrderByDescending(x => x.n).ThenBy(_ => rng.Next()).Select(x => x.f)];

    [Fact]
    public void UpstreamEffectsMatchTorch()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed + 1);
        using var scan = MakeScan(seed);
        var store = scan.Store;
        var target = store.Saes.Single(s => s.Hook == "blocks.3.hook_resid_post");
        var upSaes = store.Saes.Where(s => s.Hook != target.Hook).ToList();
        var sources = FeatureConnections.Match(store, AnalysisTestData.Model, scan.Saes);
        string saesPath = dir.File("saes.safetensors");
        GradReference.WriteSaes(saesPath, scan.Saes);
        int examples = rng.Next(2, 4);
        var candidates = Firing(store, target, rng).Take(3).ToList();
        Assert.True(candidates.Count > 0, $"seed {seed}: no feature of {target.Hook} fired twice");

        // one oracle start: a job per (candidate feature, example) asking for every node of the earlier SAEs at positions ≤ pos
        var jobs = new List<JsonObject>();
        var nodesOf = new List<List<Node>>();
        foreach (int f in candidates)
            foreach (var ex in store.Dashboard(target, f).Top.Take(examples))
            {
                var nodes = new List<Node>();
                foreach (var u in upSaes)
                    for (int p = 0; p <= ex.Pos; p++)
                    {
                        for (int j = 0; j < u.DSae; j++) nodes.Add(new Node(NodeKind.Feature, u.Hook, p, j));
                        nodes.Add(new Node(NodeKind.Error, u.Hook, p));
                    }
                nodesOf.Add(nodes);
                jobs.Add(EffectsReference.Job(AnalysisTestData.Stories, saesPath, [ex.Tokens], null, $"feature:{target.Hook}:{f}@{ex.Pos}", [("gradient", 0, nodes)]));
            }
        var answers = EffectsReference.RunJobs(dir.Path, jobs);

        int job = 0, compared = 0;
        foreach (int f in candidates)
        {
            var exs = store.Dashboard(target, f).Top.Take(examples).ToList();
            var mine = answers.Skip(job).Take(exs.Count).ToList();
            var myNodes = nodesOf.Skip(job).Take(exs.Count).ToList();
            job += exs.Count;
            double margin = mine.Min(a => Math.Min(a!["sae_margin"]?.GetValue<double>() ?? 1, a!["metric_margin"]?.GetValue<double>() ?? 1));
            if (margin < 1e-5) { output.WriteLine($"seed {seed}: feature {f} skipped (an SAE decision within {margin:G2} of its boundary)"); continue; }
            // the oracle's aggregate: per latent the effects summed over positions, the mean over examples
            var sum = new Dictionary<(string, int), double>();
            var hits = new Dictionary<(string, int), int>();
            var errors = new Dictionary<string, double>();
            double errAbs = 0, allAbs = 0;
            for (int b = 0; b < exs.Count; b++)
            {
                var effects = mine[b]!["tasks"]![0]!["effects"]!.AsArray().Select(x => x!.GetValue<double>()).ToList();
                var nonzero = new HashSet<(string, int)>();
                for (int i = 0; i < effects.Count; i++)
                {
                    var n = myNodes[b][i];
                    allAbs += Math.Abs(effects[i]);
                    if (n.Kind == NodeKind.Error) { errors[n.Hook] = errors.GetValueOrDefault(n.Hook) + effects[i] / exs.Count; errAbs += Math.Abs(effects[i]); continue; }
                    var key = (n.Hook, n.Index!.Value);
                    sum[key] = sum.GetValueOrDefault(key) + effects[i] / exs.Count;
                    if (effects[i] != 0) nonzero.Add(key);
                }
                foreach (var key in nonzero) hits[key] = hits.GetValueOrDefault(key) + 1;
            }
            var ours = FeatureConnections.Compute(store, target, f, sources, examples, top: 100_000);
            string what = $"seed {seed}, {target.Hook} feature {f}, {exs.Count} examples";
            Assert.Equal(exs.Count, ours.Examples);
            Assert.Equal(upSaes.Select(s => s.Hook), ours.UpstreamSaes);
            Assert.Empty(ours.DownstreamSaes);
            Assert.Empty(ours.MissingSaes);
            double scale = sum.Values.Select(Math.Abs).DefaultIfEmpty(0).Max();
            Assert.True(scale > 0, $"{what}: the oracle finds no upstream effect");
            double floor = 3e-2 * scale;
            var byKey = ours.Upstream.ToDictionary(p => (p.Sae, p.Feature));
            Assert.Equal(byKey.Count, ours.Upstream.Length);
            // every partner the oracle sees is listed (top is large) and no other; values, fractions and labels agree
            Assert.Equal(hits.Keys.OrderBy(k => k), byKey.Keys.OrderBy(k => k));
            double worst = 0;
            foreach (var (key, expected) in sum)
            {
                double got = byKey.TryGetValue(key, out var p) ? p.Effect : 0;
                double err = Math.Abs(got - expected) / Math.Max(Math.Abs(expected), floor);
                worst = Math.Max(worst, err);
                Assert.True(err <= 1e-4, $"{what}: {key} effect {got:G9}, torch {expected:G9} (relative to max(|torch|, {floor:G3}): {err:G3})");
                if (p != null)
                {
                    Assert.Equal((double)hits[key] / exs.Count, p.Fraction);
                    Assert.Equal(store.LabelOf(store.Sae(key.Item1), key.Item2)?.Label, p.Label);
                }
            }
            // ranked by |effect|
            Assert.Equal(ours.Upstream.Select(p => Math.Abs(p.Effect)).OrderByDescending(x => x), ours.Upstream.Select(p => Math.Abs(p.Effect)));
            foreach (var e in ours.UpstreamErrors)
                Assert.True(Math.Abs(e.Effect - errors[e.Sae]) <= 1e-4 * Math.Max(Math.Abs(errors[e.Sae]), floor), $"{what}: error nodes of {e.Sae}: {e.Effect:G9}, torch {errors[e.Sae]:G9}");
            Assert.True(Math.Abs(ours.ErrorShare!.Value - errAbs / allAbs) <= 1e-4, $"{what}: error share {ours.ErrorShare}, torch {errAbs / allAbs}");
            // a smaller top is a prefix
            int k = rng.Next(1, 6);
            Assert.Equal(ours.Upstream.Take(k), FeatureConnections.Compute(store, target, f, sources, examples, top: k).Upstream);
            output.WriteLine($"{what}: {sum.Count} latents, {hits.Count} with an effect, worst relative error {worst:G3}, error share {ours.ErrorShare:P1}");
            compared++;
        }
        Assert.True(compared > 0, $"seed {seed}: every candidate feature had an SAE decision too close to its boundary to compare float32 with float64");
    }

    /// <summary>[T, ...] → [T, rest] (hook_z's heads side by side, as an SAE on hook_z reads them).</summary>
    static Tensor Flat(Tensor t) => new([t.Shape[0], (int)(t.Length / t.Shape[0])], t.Data);

    [Fact]
    public void DownstreamChangesMatchABruteForceRecompute()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed + 2);
        using var scan = MakeScan(seed);
        var store = scan.Store;
        var model = AnalysisTestData.Model;
        var source = store.Saes.Single(s => s.Hook == "blocks.0.hook_resid_post");
        var downSaes = store.Saes.Where(s => s.Hook != source.Hook).ToList();
        Sae SaeOf(StoreSae s) => scan.Saes.Single(x => x.Config.Metadata.HookName == s.Hook);
        var own = SaeOf(source);
        var sources = FeatureConnections.Match(store, model, scan.Saes);
        int f = Firing(store, source, rng)[0];
        int examples = rng.Next(2, 5);
        var exs = store.Dashboard(source, f).Top.Take(examples).ToList();

        // the oracle: no splice; the hook's rows moved by the decoded change of zeroing the latent, later hooks encoded directly
        var sum = new Dictionary<(string, int), double>();
        var hits = new Dictionary<(string, int), int>();
        var scale = new Dictionary<(string, int), double>();
        foreach (var ex in exs)
        {
            var hooks = new HashSet<string>(store.Saes.Select(s => s.Hook), StringComparer.Ordinal);
            var (_, clean) = model.RunWithCache([ex.Tokens], hooks.Contains);
            var x = clean.Sequence(source.Hook, 0);
            var a = own.Encode(x);
            var zeroed = new Tensor(a.Shape[0], a.Shape[1]);
            Array.Copy(a.Data, zeroed.Data, a.Length);
            for (int p = 0; p < a.Shape[0]; p++) zeroed.Data[p * own.DSae + f] = 0;
            var delta = own.Decode(zeroed).Data.Zip(own.Decode(a).Data, (u, v) => u - v).ToArray();
            var cache = new ActivationCache { Lengths = [ex.Tokens.Length] };
            model.Run([ex.Tokens], new RunOptions
            {
                Hooks = [(source.Hook, (t, _) => { for (int i = 0; i < delta.Length; i++) t.Data[i] += delta[i]; return null; })],
                CacheFilter = hooks.Contains, Cache = cache, ReturnLogits = false,
            });
            int first = Enumerable.Range(0, a.Shape[0]).First(p => a.Data[p * own.DSae + f] != 0);
            foreach (var d in downSaes)
            {
                var sae = SaeOf(d);
                var c0 = sae.Encode(Flat(clean.Sequence(d.Hook, 0))).Data;
                var c1 = sae.Encode(Flat(cache.Sequence(d.Hook, 0))).Data;
                for (int j = 0; j < sae.DSae; j++)
                {
                    double s = 0;
                    bool changed = false;
                    for (int p = first; p < ex.Tokens.Length; p++)
                    {
                        double diff = (double)c1[p * sae.DSae + j] - c0[p * sae.DSae + j];
                        s += diff;
                        changed |= diff != 0;
                    }
                    sum[(d.Hook, j)] = sum.GetValueOrDefault((d.Hook, j)) + s / exs.Count;
                    for (int p = first; p < ex.Tokens.Length; p++)
                        scale[(d.Hook, j)] = Math.Max(scale.GetValueOrDefault((d.Hook, j)), Math.Abs(c0[p * sae.DSae + j]));
                    if (changed) hits[(d.Hook, j)] = hits.GetValueOrDefault((d.Hook, j)) + 1;
                }
            }
        }

        var ours = FeatureConnections.Compute(store, source, f, sources, examples, top: 100_000);
        string what = $"seed {seed}, {source.Hook} feature {f}, {exs.Count} examples";
        Assert.Equal(downSaes.Select(s => s.Hook), ours.DownstreamSaes);
        Assert.Empty(ours.UpstreamSaes);
        Assert.Empty(ours.Upstream);
        Assert.Null(ours.ErrorShare);
        var byKey = ours.Downstream.ToDictionary(p => (p.Sae, p.Feature));
        double worst = 0;
        foreach (var (key, expected) in sum)
        {
            double got = byKey.TryGetValue(key, out var p) ? p.Effect : 0;
            double err = Math.Abs(got - expected) / Math.Max(1, Math.Max(Math.Abs(expected), scale[key]));
            worst = Math.Max(worst, err);
            Assert.True(err <= 1e-5, $"{what}: {key} change {got:G9}, brute force {expected:G9} (the latent's largest activation {scale[key]:G4}; error relative to max(1, |change|, that) {err:G3})");
            // a latent that moved for real is listed, with the share of examples where it moved
            if (Math.Abs(expected) > 1e-4)
            {
                Assert.NotNull(p);
                Assert.Equal((double)hits[key] / exs.Count, p!.Fraction);
                Assert.Equal(store.LabelOf(store.Sae(key.Item1), key.Item2)?.Label, p.Label);
            }
        }
        Assert.True(sum.Values.Any(v => Math.Abs(v) > 1e-3), $"{what}: zeroing the feature changes nothing downstream");
        Assert.Equal(ours.Downstream.Select(p => Math.Abs(p.Effect)).OrderByDescending(x => x), ours.Downstream.Select(p => Math.Abs(p.Effect)));
        output.WriteLine($"{what}: {sum.Count} latents, {byKey.Count} changed, worst error {worst:G3}");
    }

    [Fact]
    public void BadSourcesAreClearErrors()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed + 3);
        using var scan = MakeScan(seed, dSae: 16);
        var store = scan.Store;
        var model = AnalysisTestData.Model;
        // an SAE the database was not built from (same hook, other weights)
        var other = SaeTestData.Random(rng, SaeArchitecture.Standard, model.Config.DModel, 16, "blocks.3.hook_resid_post");
        var e = Assert.Throws<ArgumentException>(() => FeatureConnections.Match(store, model, [scan.Saes[0], other]));
        Assert.Contains("blocks.3.hook_resid_post", e.Message, StringComparison.Ordinal);
        Assert.Contains("is not one of the SAEs", e.Message, StringComparison.Ordinal);
        // the feature's own SAE not loaded
        var partial = FeatureConnections.Match(store, model, [.. scan.Saes.Where(s => s.Config.Metadata.HookName != "blocks.1.attn.hook_z")]);
        var hz = store.Sae("blocks.1.attn.hook_z");
        e = Assert.Throws<ArgumentException>(() => FeatureConnections.Compute(store, hz, 0, partial));
        Assert.Contains("the SAE of this feature (blocks.1.attn.hook_z) was not loaded", e.Message, StringComparison.Ordinal);
        // … while the others still compute, listing what is missing
        var r = FeatureConnections.Compute(store, store.Sae("blocks.3.hook_resid_post"), Firing(store, store.Sae("blocks.3.hook_resid_post"), rng, 1)[0], partial, 2);
        Assert.Equal(["blocks.1.attn.hook_z"], r.MissingSaes);
        Assert.Equal(["blocks.0.hook_resid_post"], r.UpstreamSaes);
        // feature out of range, bad counts
        var s0 = store.Saes[0];
        var full = FeatureConnections.Match(store, model, scan.Saes);
        Assert.Contains("outside [0, 16)", Assert.Throws<ArgumentException>(() => FeatureConnections.Compute(store, s0, 16, full)).Message, StringComparison.Ordinal);
        Assert.Contains("examples must be at least 1", Assert.Throws<ArgumentException>(() => FeatureConnections.Compute(store, s0, 0, full, examples: 0)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void OtherModelIsAClearError()
    {
        int seed = Random.Shared.Next();
        using var scan = MakeScan(seed, dSae: 16);
        // the same architecture and tokenizer, one weight changed: token 0's embedding (right after the 7-int header)
        string bin = dir.File("other.bin");
        var bytes = File.ReadAllBytes(AnalysisTestData.Stories);
        bytes[28 + 4 * new Random(seed).Next(8) + 2] ^= 0x40;
        File.WriteAllBytes(bin, bytes);
        File.Copy(Path.Combine(Path.GetDirectoryName(AnalysisTestData.Stories)!, "tok512.bin"), dir.File("tok512.bin"));
        using var other = HookedTransformer.Load(bin);
        var e = Assert.Throws<ArgumentException>(() => FeatureConnections.Match(scan.Store, other, scan.Saes));
        Assert.Contains("is not the model", e.Message, StringComparison.Ordinal);
        Assert.Contains("stories260K", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void CliPrintsAndWritesConnections()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed + 4);
        using var scan = MakeScan(seed, dSae: 16);
        var store = scan.Store;
        var dirs = ScanTestData.SaveSaes(scan.Saes, dir.File("saes"));
        var sae = store.Sae("blocks.1.attn.hook_z");
        int f = Firing(store, sae, rng, 1)[0];
        int n = rng.Next(1, 4), top = rng.Next(2, 6);
        string json = dir.File("f.json");
        string[] baseArgs = ["feature", "--db", scan.Db, "--sae", sae.Hook, "--feature", $"{f}"];
        var r = CliTests.Run([.. baseArgs, "--connections", "--model", AnalysisTestData.Stories, .. dirs.SelectMany(d => new[] { "--sae-dir", d }),
            "--connection-examples", $"{n}", "--top", $"{top}", "--json", json]);
        Assert.True(r.ExitCode == 0, $"seed {seed}: {r.Stderr}");
        Assert.Contains("upstream features", r.Text, StringComparison.Ordinal);
        Assert.Contains("downstream features", r.Text, StringComparison.Ordinal);
        var expected = FeatureConnections.Compute(store, sae, f, FeatureConnections.Match(store, AnalysisTestData.Model, scan.Saes), n, top);
        var doc = JsonNode.Parse(File.ReadAllText(json))!.AsObject();
        Assert.Equal(f, doc["feature"]!.GetValue<int>());
        Assert.NotNull(doc["top"]);   // the dashboard's fields are still there
        foreach (var (name, list) in new[] { ("upstream", expected.Upstream), ("downstream", expected.Downstream) })
        {
            var arr = doc[name]!.AsArray();
            Assert.Equal(list.Length, arr.Count);
            for (int i = 0; i < list.Length; i++)
            {
                var o = arr[i]!.AsObject();
                Assert.Equal(["sae", "feature", "effect", "fraction", "label"], o.Select(kv => kv.Key));
                Assert.Equal(list[i].Sae, o["sae"]!.GetValue<string>());
                Assert.Equal(list[i].Feature, o["feature"]!.GetValue<int>());
                Assert.Equal(list[i].Effect, o["effect"]!.GetValue<double>());
                Assert.Equal(list[i].Fraction, o["fraction"]!.GetValue<double>());
                Assert.Equal(list[i].Label, o["label"]?.GetValue<string>());
            }
        }
        Assert.True(expected.Upstream.Length + expected.Downstream.Length > 0, $"seed {seed}: no partners at all");
        Assert.Equal(n, doc["connections"]!["examples"]!.GetValue<int>());

        // bad input: exit 1 with a clear message, no JSON written
        string bad = dir.File("bad.json");
        void Fails(string why, params string[] args)
        {
            var x = CliTests.Run([.. args, "--json", bad]);
            Assert.True(x.ExitCode == 1, $"{string.Join(" ", args)}: exit {x.ExitCode}\n{x.Stderr}");
            Assert.Contains(why, x.Stderr, StringComparison.Ordinal);
            Assert.False(File.Exists(bad));
        }
        Fails("--connections needs the model and the SAE folders", [.. baseArgs, "--connections"]);
        Fails("are for --connections", [.. baseArgs, "--model", AnalysisTestData.Stories]);
        string missing = dir.File("no-such-sae");
        Fails("no-such-sae", [.. baseArgs, "--connections", "--model", AnalysisTestData.Stories, "--sae-dir", missing]);
        Fails("the SAE of this feature (blocks.1.attn.hook_z) was not loaded",
            [.. baseArgs, "--connections", "--model", AnalysisTestData.Stories, "--sae-dir", dirs[0], "--sae-dir", dirs[1]]);
        Fails($"outside [0, {sae.DSae})", ["feature", "--db", scan.Db, "--sae", sae.Hook, "--feature", $"{sae.DSae}", "--connections", "--model", AnalysisTestData.Stories, "--sae-dir", dirs[0]]);
        // SAE folders of another scan
        var otherSaes = ScanTestData.SaveSaes(ScanTestData.Saes(rng, 16), dir.File("other-saes"));
        Fails("is not one of the SAEs", [.. baseArgs, "--connections", "--model", AnalysisTestData.Stories, .. otherSaes.SelectMany(d => new[] { "--sae-dir", d })]);
    }
}
