using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Steering;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Tests.Web;

/// <summary>
/// The steering panel's API (/api/steer) over a real server: the answer is the library's <see cref="SteeringSweep"/> result
/// for the same request, the watched latents per token equal an independent recomputation (the model run with the same
/// additions as plain hooks, the hook's activation cached and encoded by the SAE), and bad input is a 400 naming the field.
/// </summary>
[Collection(TrackerServerCollection.Name)]
public sealed class SteeringApiTests(TrackerServer server) : IDisposable
{
    readonly HttpClient http = new() { BaseAddress = new Uri(server.Url), Timeout = TimeSpan.FromSeconds(120) };

    public void Dispose() => http.Dispose();

    internal static string Prompt(Random rng)
    {
        string[] words = ["Once", "upon", "a", "time", "there", "was", "a", "little", "girl", "named", "Lily", "she", "liked", "to", "play", "with", "her", "dog", "in", "the", "park"];
        return string.Join(" ", Enumerable.Range(0, 4 + rng.Next(8)).Select(_ => words[rng.Next(words.Length)]));
    }

    async Task<(HttpStatusCode Status, JsonElement Body)> Post(object body)
    {
        using var resp = await http.PostAsJsonAsync("/api/steer", body);
        string text = await resp.Content.ReadAsStringAsync();
        Assert.True(resp.Content.Headers.ContentType?.MediaType == "application/json", $"/api/steer answered {resp.StatusCode} with {resp.Content.Headers.ContentType}: {text}");
        return (resp.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    static void AssertError((HttpStatusCode Status, JsonElement Body) r, params string[] mentions)
    {
        Assert.True(r.Status == HttpStatusCode.BadRequest, $"expected 400, got {r.Status}: {r.Body}");
        string error = r.Body.GetProperty("error").GetString()!;
        foreach (string m in mentions) Assert.Contains(m, error, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("Exception", error);
    }

    static int[] Ints(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];
    static float[] Floats(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetSingle())];

    [Fact]
    public async Task SteerGivesTheLibrarysSweepAndTheWatchedLatentsPerToken()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        string Why = $"test seed {seed}, server seed {server.Seed}";
        var set = server.Set;
        string prompt = Prompt(rng);
        var terms = Enumerable.Range(0, 1 + rng.Next(2)).Select(_ => (Sae: rng.Next(set.Saes.Count), Latent: rng.Next(256), Strength: (float)(2 + 6 * rng.NextDouble()))).ToList();
        float[] strengths = [.. Enumerable.Range(0, 1 + rng.Next(2)).Select(_ => (float)Math.Round(0.5 + 2 * rng.NextDouble(), 2))];
        var positions = (SteeringPositions)rng.Next(3);
        int maxNew = 4 + rng.Next(8);
        float temperature = rng.Next(2) == 0 ? 0f : 0.8f;
        int sampleSeed = rng.Next(1000);
        var watch = new List<(int Sae, int Latent)> { (terms[0].Sae, terms[0].Latent), (rng.Next(set.Saes.Count), rng.Next(256)) }.Distinct().ToList();
        int top = 1 + rng.Next(6);

        var r = await Post(new
        {
            set = TrackerServer.SetName, prompt,
            // the first term by its hook, the others by the SAE's name
            features = terms.Select((t, i) => new { hook = i == 0 ? set.Hooks[t.Sae] : set.Names[t.Sae], latent = t.Latent, strength = t.Strength }),
            strengths, positions = positions.ToString().ToLowerInvariant(), maxNewTokens = maxNew, temperature, seed = sampleSeed,
            watch = watch.Select(w => new { hook = set.Hooks[w.Sae], latent = w.Latent }), topFeatures = top,
        });
        Assert.True(r.Status == HttpStatusCode.OK, $"{Why}: {r.Body}");
        var b = r.Body;

        // the library's sweep for the same request
        var model = server.Model;
        var tok = model.Tokenizer!;
        var ids = FeatureTracker.Encode(set, prompt);
        var splices = set.Saes.Select(s => new SaeSplice(s, useErrorTerm: true)).ToList();
        var steerer = new Steerer(model, [.. terms.Select(t => Steerer.Feature(set.Saes[t.Sae], t.Latent, t.Strength))], [], positions);
        var expected = SteeringSweep.Run(steerer, ids, strengths, maxNew, new SamplingOptions(temperature, 1f, sampleSeed),
            new SweepOptions([], splices, top, tok.TokenText, SteeringSweep.ContinuationText(tok, ids)));
        var res = b.GetProperty("result");
        Assert.Equal(expected.PromptTokens, Ints(res.GetProperty("prompt_tokens")));
        Assert.Equal(positions.ToString().ToLowerInvariant(), res.GetProperty("positions").GetString());
        Assert.Equal(expected.Baseline.Tokens, Ints(res.GetProperty("baseline").GetProperty("tokens")));
        Assert.Equal(expected.Baseline.Text, res.GetProperty("baseline").GetProperty("text").GetString());
        var steered = res.GetProperty("steered").EnumerateArray().ToList();
        Assert.Equal(expected.Steered.Length, steered.Count);
        for (int k = 0; k < steered.Count; k++)
        {
            var want = expected.Steered[k];
            var got = steered[k];
            Assert.Equal(want.Strength, got.GetProperty("strength").GetSingle());
            Assert.True(want.Tokens.SequenceEqual(Ints(got.GetProperty("tokens"))), $"{Why}: strength {want.Strength}: tokens differ from the library's");
            Assert.Equal(want.Text, got.GetProperty("text").GetString());
            double kl = got.GetProperty("kl").GetDouble();
            Assert.True(Math.Abs(kl - want.Kl) <= 1e-9 + 1e-9 * want.Kl, $"{Why}: KL {kl}, library {want.Kl}");
            var features = got.GetProperty("features").EnumerateArray().ToList();
            Assert.Equal(want.Features.Length, features.Count);
            Assert.Equal(set.Saes.Count * top, features.Count);
            for (int j = 0; j < features.Count; j++)
            {
                Assert.Equal(want.Features[j].Hook, features[j].GetProperty("hook").GetString());
                Assert.Equal(want.Features[j].Latent, features[j].GetProperty("latent").GetInt32());
                Assert.Equal(want.Features[j].Delta, features[j].GetProperty("delta").GetDouble(), 1e-9);
            }
        }
        Assert.Equal(FeatureTracker.TokenTexts(set, ids), b.GetProperty("promptTokens").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(expected.Baseline.Tokens.Select(tok.TokenText), b.GetProperty("baselineTokens").EnumerateArray().Select(e => e.GetString()));
        var adds = b.GetProperty("additions").EnumerateArray().ToList();
        Assert.Equal(terms.Count, adds.Count);
        for (int i = 0; i < terms.Count; i++)
        {
            Assert.Equal($"{set.Hooks[terms[i].Sae]}:{terms[i].Latent}", adds[i].GetProperty("label").GetString());
            Assert.Equal(terms[i].Strength, adds[i].GetProperty("scale").GetSingle());
        }

        // the watched latents per token, recomputed without the Steerer: plain hooks add strength × k × W_dec[latent] at the
        // steered positions, the watched hook's activation is cached and encoded by its SAE
        float[] Independent(int[] sequence, float? k, int sae, int latent)
        {
            var hooks = new List<(string, HookFunction)>();
            if (k is float mult)
                foreach (var t in terms)
                {
                    var w = set.Saes[t.Sae];
                    int d = w.DOut;
                    float coef = mult * t.Strength;
                    hooks.Add((set.Hooks[t.Sae], (act, _) =>
                    {
                        int T = act.Shape[1];
                        for (int p = 0; p < T; p++)
                        {
                            if (!(positions == SteeringPositions.All || (positions == SteeringPositions.Prompt ? p < ids.Length : p >= ids.Length))) continue;
                            for (int c = 0; c < d; c++) act.Data[p * d + c] += coef * w.WDec[(long)t.Latent * d + c];
                        }
                        return null;
                    }
                    ));
                }
            string hook = set.Hooks[sae];
            using var cache = new ActivationCache { Lengths = [sequence.Length] };
            model.Run([sequence], new RunOptions { Hooks = hooks, CacheFilter = n => n == hook, Cache = cache });
            var x = cache[hook];
            var acts = set.Saes[sae].Encode(new Tensor([x.Shape[1], x.Shape[2]], x.Data.AsSpan(0, x.Shape[1] * x.Shape[2]).ToArray()));
            int dSae = set.Saes[sae].DSae;
            return [.. Enumerable.Range(0, sequence.Length).Select(p => acts.Data[(long)p * dSae + latent])];
        }
        static void Close(float[] want, float[] got, string what)
        {
            Assert.True(want.Length == got.Length, $"{what}: {got.Length} positions, expected {want.Length}");
            for (int p = 0; p < want.Length; p++)
                Assert.True(Math.Abs(want[p] - got[p]) <= 1e-5 + 1e-5 * Math.Abs(want[p]), $"{what}: position {p}: {got[p]}, recomputed {want[p]}");
        }
        var watched = b.GetProperty("watch").EnumerateArray().ToList();
        Assert.Equal(watch.Count, watched.Count);
        for (int i = 0; i < watch.Count; i++)
        {
            var (sae, latent) = watch[i];
            var w = watched[i];
            Assert.Equal(set.Hooks[sae], w.GetProperty("hook").GetString());
            Assert.Equal(set.Names[sae], w.GetProperty("sae").GetString());
            Assert.Equal(latent, w.GetProperty("latent").GetInt32());
            Assert.Equal(server.Labels.Get(set.Hooks[sae], latent)!.Label, w.GetProperty("label").GetProperty("label").GetString());
            var baseline = Floats(w.GetProperty("baseline"));
            Close(Independent([.. ids, .. expected.Baseline.Tokens], null, sae, latent), baseline, $"{Why}: watch {i} baseline");
            var perStrength = w.GetProperty("steered").EnumerateArray().Select(Floats).ToList();
            Assert.Equal(strengths.Length, perStrength.Count);
            for (int k = 0; k < strengths.Length; k++)
            {
                Close(Independent([.. ids, .. expected.Steered[k].Tokens], strengths[k], sae, latent), perStrength[k], $"{Why}: watch {i} strength {strengths[k]}");
            }
        }
    }

    [Fact]
    public async Task BadSteerRequestsAre400sNamingTheField()
    {
        var rng = new Random(Random.Shared.Next());
        string prompt = Prompt(rng);
        string hook = server.Set.Hooks[rng.Next(server.Set.Hooks.Count)];
        object Feature(object latent, object? strength = null) => new { hook, latent, strength = strength ?? 2 };
        AssertError(await Post(new { prompt }), "features is empty");
        AssertError(await Post(new { prompt = " ", features = new[] { Feature(3) } }), "prompt", "empty");
        AssertError(await Post(new { prompt, features = new[] { new { hook = "blocks.9.hook_resid_post", latent = 3, strength = 2 } } }), "features[0].hook", "unknown SAE");
        AssertError(await Post(new { prompt, features = new[] { new { hook = (string?)null, latent = 3, strength = 2 } } }), "features[0].hook is missing");
        AssertError(await Post(new { prompt, features = new[] { Feature(3), Feature(999) } }), "features[1].latent", "no latent 999");
        AssertError(await Post(new { prompt, features = new[] { Feature(-1) } }), "features[0].latent", "no latent -1");
        AssertError(await Post(new { prompt, features = new[] { Feature("abc") } }), "$.features[0].latent");
        AssertError(await Post(new { prompt, features = new[] { Feature(3, "NaN") } }), "features[0].strength");
        AssertError(await Post(new { prompt, features = new[] { Feature(3) }, strengths = new object[] { 1, "lots" } }), "$.strengths[1]");
        AssertError(await Post(new { prompt, features = new[] { Feature(3) }, strengths = new object[] { "Infinity" } }), "strengths[0]", "finite");
        AssertError(await Post(new { prompt, features = new[] { Feature(3) }, positions = "middle" }), "positions 'middle'", "all, prompt or new");
        AssertError(await Post(new { prompt, features = new[] { Feature(3) }, maxNewTokens = 1000 }), "maxNewTokens must be between 0 and 256");
        AssertError(await Post(new { prompt, features = new[] { Feature(3) }, temperature = -1 }), "temperature");
        AssertError(await Post(new { prompt, features = new[] { Feature(3) }, topP = 0 }), "topP");
        AssertError(await Post(new { prompt, features = new[] { Feature(3) }, topFeatures = 99 }), "topFeatures must be between 0 and 20");
        AssertError(await Post(new { prompt, features = new[] { Feature(3) }, logits = new[] { 99999 } }), "logits[0]", "outside the vocabulary");
        AssertError(await Post(new { prompt, features = new[] { Feature(3) }, watch = new[] { new { hook = (string?)null, latent = 1 } } }), "watch[0].hook is missing");
        AssertError(await Post(new { prompt, features = new[] { Feature(3) }, watch = new[] { new { hook, latent = 256 } } }), "watch[0].latent", "no latent 256");
        AssertError(await Post(new { prompt, clamps = new[] { new { hook, latent = 3 } } }), "clamps[0].value is missing");
        AssertError(await Post(new { set = "nope", prompt, features = new[] { Feature(3) } }), "unknown set 'nope'");
    }
}

/// <summary>
/// /api/steer with a graph's feature: a served transcoder's latent named in the graph's set (by the hook the transcoder reads,
/// the hook it writes or the graph's layer label) is steered exactly as <see cref="SteeringSweep"/> with
/// <see cref="Steerer.Feature"/> of that transcoder (added at the hook it writes), and watched through its own splice.
/// </summary>
[Collection(GraphServerCollection.Name)]
public sealed class SteeringTranscoderApiTests(GraphServer server) : IDisposable
{
    readonly HttpClient http = new() { BaseAddress = new Uri(server.Url), Timeout = TimeSpan.FromSeconds(120) };

    public void Dispose() => http.Dispose();

    async Task<(HttpStatusCode Status, JsonElement Body)> Post(object body)
    {
        using var resp = await http.PostAsJsonAsync("/api/steer", body);
        string text = await resp.Content.ReadAsStringAsync();
        return (resp.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    static int[] Ints(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];
    static float[] Floats(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetSingle())];

    [Fact]
    public async Task ATranscoderFeatureIsSteeredAsTheLibraryDoesWithThatTranscoder()
    {
        int seed = Random.Shared.Next();
        var rng = new Random(seed);
        string Why = $"test seed {seed}, server seed {server.Seed}";
        var tc = server.Transcoders[rng.Next(server.Transcoders.Count)];
        int layer = SaeSet.LayerOf(tc.Config.HookName), latent = rng.Next(tc.DSae);
        float strength = (float)(2 + 6 * rng.NextDouble());
        string[] names = [tc.Config.HookName, tc.Config.Metadata.HookNameOut!, $"L{layer}"];
        string name = names[rng.Next(names.Length)];
        string prompt = SteeringApiTests.Prompt(rng);
        float[] strengths = [1f, (float)Math.Round(0.5 + 2 * rng.NextDouble(), 2)];
        int maxNew = 4 + rng.Next(6), top = 1 + rng.Next(4);

        var r = await Post(new
        {
            set = GraphServer.SetName, prompt, features = new[] { new { hook = name, latent, strength } }, strengths, maxNewTokens = maxNew,
            watch = new[] { new { hook = name, latent } }, topFeatures = top,
        });
        Assert.True(r.Status == HttpStatusCode.OK, $"{Why}: {name}: {r.Body}");
        var b = r.Body;

        var model = server.Model;
        var tok = model.Tokenizer!;
        var set = server.Set;
        var ids = FeatureTracker.Encode(set, prompt);
        var steerer = new Steerer(model, [Steerer.Feature(tc, latent, strength)], []);
        var expected = SteeringSweep.Run(steerer, ids, strengths, maxNew, new SamplingOptions(0f, 1f, 0),
            new SweepOptions([], [.. set.Saes.Select(s => new SaeSplice(s, useErrorTerm: true))], top, tok.TokenText, SteeringSweep.ContinuationText(tok, ids)));
        var res = b.GetProperty("result");
        Assert.Equal(expected.Baseline.Tokens, Ints(res.GetProperty("baseline").GetProperty("tokens")));
        var steered = res.GetProperty("steered").EnumerateArray().ToList();
        Assert.Equal(strengths.Length, steered.Count);
        for (int k = 0; k < steered.Count; k++)
        {
            Assert.True(expected.Steered[k].Tokens.SequenceEqual(Ints(steered[k].GetProperty("tokens"))), $"{Why}: {name}: strength {strengths[k]}: tokens differ from the library's");
            Assert.Equal(expected.Steered[k].Text, steered[k].GetProperty("text").GetString());
            Assert.Equal(expected.Steered[k].Kl, steered[k].GetProperty("kl").GetDouble(), 1e-9);
            Assert.Equal(set.Saes.Count * top, steered[k].GetProperty("features").GetArrayLength());
        }
        var add = b.GetProperty("additions").EnumerateArray().Single();
        Assert.Equal($"{tc.Config.HookName}:{latent}", add.GetProperty("label").GetString());
        Assert.Equal(tc.Config.Metadata.HookNameOut, add.GetProperty("hook").GetString());   // added at the hook it writes

        // the watched transcoder latent: the Steerer's own observation through the transcoder's splice
        var w = b.GetProperty("watch").EnumerateArray().Single();
        Assert.Equal(tc.Config.HookName, w.GetProperty("hook").GetString());
        Assert.Equal(server.Labels.Get(tc.Config.HookName, latent)!.Label, w.GetProperty("label").GetProperty("label").GetString());
        var splice = new SaeSplice(tc, useErrorTerm: true);
        float[] Column(int[] generated, float? k)
        {
            var acts = steerer.Latents([.. ids, .. generated], ids.Length, k, [splice])[0];
            return [.. Enumerable.Range(0, ids.Length + generated.Length).Select(t => acts[(long)t * tc.DSae + latent])];
        }
        Assert.Equal(Column(expected.Baseline.Tokens, null), Floats(w.GetProperty("baseline")));
        var ws = w.GetProperty("steered").EnumerateArray().ToList();
        for (int k = 0; k < ws.Count; k++) Assert.Equal(Column(expected.Steered[k].Tokens, strengths[k]), Floats(ws[k]));

        // a hook that names neither an SAE nor a transcoder: the 400 lists the transcoders too
        var bad = await Post(new { set = GraphServer.SetName, prompt, features = new[] { new { hook = "blocks.0.hook_nothing", latent = 0 } } });
        Assert.Equal(HttpStatusCode.BadRequest, bad.Status);
        Assert.Contains("served transcoder", bad.Body.GetProperty("error").GetString()!);
    }
}
