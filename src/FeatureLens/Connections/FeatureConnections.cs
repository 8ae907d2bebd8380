using System.Text.Json.Serialization;
using FeatureLens.Database;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;

namespace FeatureLens.Connections;

/// <summary>A feature connected to a database feature: its SAE's hook, its latent, the mean effect or change, and its label.</summary>
public sealed record ConnectionPartner(
    [property: JsonPropertyName("sae")] string Sae,
    [property: JsonPropertyName("feature")] int Feature,
    [property: JsonPropertyName("effect")] double Effect,
    [property: JsonPropertyName("fraction")] double Fraction,
    [property: JsonPropertyName("label")] string? Label);

/// <summary>An upstream SAE's error nodes: their mean effect (summed over positions, mean over examples).</summary>
public sealed record ConnectionError(
    [property: JsonPropertyName("sae")] string Sae,
    [property: JsonPropertyName("effect")] double Effect);

/// <summary>
/// The upstream and downstream features of one database feature over its top examples (<see cref="FeatureConnections"/>).
/// </summary>
public sealed record FeatureConnectionsResult
{
    [JsonPropertyName("sae")] public required string Sae { get; init; }
    [JsonPropertyName("feature")] public required int Feature { get; init; }
    /// <summary>How many top examples were used (fewer than asked when the feature has fewer).</summary>
    [JsonPropertyName("examples")] public required int Examples { get; init; }
    /// <summary>Upstream latents by |mean effect| on the feature (gradient attribution, zero ablation), the largest first.</summary>
    [JsonPropertyName("upstream")] public required ConnectionPartner[] Upstream { get; init; }
    /// <summary>Downstream latents by |mean change| when the feature is set to 0 at every position (exact), the largest first.</summary>
    [JsonPropertyName("downstream")] public required ConnectionPartner[] Downstream { get; init; }
    /// <summary>Each upstream SAE's error nodes.</summary>
    [JsonPropertyName("upstream_errors")] public required ConnectionError[] UpstreamErrors { get; init; }
    /// <summary>Σ|error effects| / Σ|every upstream effect| (per node and example); null when nothing upstream has an effect.</summary>
    [JsonPropertyName("error_share")] public required double? ErrorShare { get; init; }
    /// <summary>Upstream SAEs (their hooks, in the model's order) that took part.</summary>
    [JsonPropertyName("upstream_saes")] public required string[] UpstreamSaes { get; init; }
    /// <summary>Downstream SAEs that took part.</summary>
    [JsonPropertyName("downstream_saes")] public required string[] DownstreamSaes { get; init; }
    /// <summary>The database's SAEs that were not loaded, so their latents are not among the partners.</summary>
    [JsonPropertyName("missing_saes")] public required string[] MissingSaes { get; init; }
}

/// <summary>
/// Upstream and downstream features of a feature of a feature database, computed on demand from its stored top examples
/// (each the whole window, BOS included, and the position it fired at) with the model and SAEs the database was built from.
/// <list type="bullet">
/// <item>Upstream: for each example, the gradient attribution (CONNECTIONS.md "Effects", zero ablation: effect = (0 − a)·∂m/∂a)
/// of the metric <c>feature:HOOK:I@pos</c> to every latent and error node of every SAE whose output fires before the feature's
/// SAE reads its input, at positions ≤ pos (<see cref="Attribution.Run"/>). Per latent: the effects summed over positions,
/// then the mean over examples; fraction = the share of examples where one of its effects is non-zero.</item>
/// <item>Downstream (exact): for each example, the window run again with the feature's latent set to 0 at every position (all SAEs
/// spliced with their error terms, so the unedited run is the model's) and the change of every latent of every SAE reading a hook
/// after the feature's SAE writes, at positions ≥ the first where the feature is active. Per latent: the change summed over
/// positions, then the mean over examples; fraction = the share of examples where it changed at some position.</item>
/// </list>
/// Partners are ranked by |mean| (ties by SAE order, then latent); labels come from the database.
/// </summary>
public static class FeatureConnections
{
    /// <summary>The loaded SAE standing for each of the database's SAEs (null where none was loaded).</summary>
    public sealed class Sources
    {
        internal Sources(HookedTransformer model, Sae?[] byStoreSae) { Model = model; BySae = byStoreSae; }
        public HookedTransformer Model { get; }
        /// <summary>Index: the database's SAE index (<see cref="StoreSae.Index"/>).</summary>
        public IReadOnlyList<Sae?> BySae { get; }
    }

    /// <summary>
    /// Checks that <paramref name="model"/> and <paramref name="saes"/> are what <paramref name="store"/> was scanned from (by
    /// the scan identity's fingerprints) and pairs each given SAE with the database's SAE it is. A model or an SAE the database
    /// was not built from is an ArgumentException naming it; database SAEs not given are left out (null).
    /// </summary>
    public static Sources Match(FeatureStore store, HookedTransformer model, IReadOnlyList<Sae> saes)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(saes);
        var identity = Identity(store);
        if (ScanIdentity.ModelFingerprint(model) != identity.Model)
            throw new ArgumentException($"--model: {ScanIdentity.NameOf(model.Config)} is not the model {store.Path} was scanned with ({identity.ModelName}; the fingerprints of their config, tokenizer and weights differ)");
        var bySae = new Sae?[store.Saes.Count];
        foreach (var sae in saes)
        {
            string fp = ScanIdentity.SaeFingerprint(sae);
            int i = identity.Saes.ToList().IndexOf(fp);
            if (i < 0)
                throw new ArgumentException($"SAE {sae.SourcePath ?? sae.Config.Metadata.HookName} (hook {sae.Config.Metadata.HookName}) is not one of the SAEs {store.Path} was scanned with " +
                    $"(its weights' fingerprint matches none of them; the database has SAEs at {string.Join(", ", store.Saes.Select(s => s.Hook))})");
            bySae[i] ??= sae;
        }
        return new Sources(model, bySae);
    }

    static ScanIdentity Identity(FeatureStore store)
    {
        var json = store.Meta.GetValueOrDefault("identity") ?? throw new InvalidDataException($"{store.Path}: the database lacks meta 'identity' (what it was scanned from)");
        var id = ScanIdentity.FromJson(System.Text.Json.Nodes.JsonNode.Parse(json) ?? throw new InvalidDataException($"{store.Path}: meta 'identity' is empty"), store.Path);
        if (id.Saes.Count != store.Saes.Count)
            throw new InvalidDataException($"{store.Path}: meta 'identity' lists {id.Saes.Count} SAEs but the saes table has {store.Saes.Count}");
        return id;
    }

    /// <summary>
    /// The connections of latent <paramref name="feature"/> of <paramref name="sae"/> over its top <paramref name="examples"/>
    /// examples, with the <paramref name="top"/> strongest partners on each side.
    /// </summary>
    public static FeatureConnectionsResult Compute(FeatureStore store, StoreSae sae, int feature, Sources sources, int examples = 8, int top = 10,
        CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(sae);
        ArgumentNullException.ThrowIfNull(sources);
        if (examples < 1) throw new ArgumentException($"examples must be at least 1 (got {examples})");
        if (top < 1) throw new ArgumentException($"top must be at least 1 (got {top})");
        if ((uint)feature >= (uint)sae.DSae) throw new ArgumentException($"--feature {feature} is outside [0, {sae.DSae}) (d_sae of {sae.Hook})");
        var own = sources.BySae[sae.Index] ?? throw new ArgumentException(
            $"the SAE of this feature ({sae.Hook}) was not loaded: give its folder with the model (loaded: {string.Join(", ", Loaded(store, sources).Select(s => s.Hook))})");
        var model = sources.Model;
        var order = HookNames.For(model.Config).Select((h, i) => (h, i)).ToDictionary(x => x.h, x => x.i, StringComparer.Ordinal);
        int Order(string hook) => order.TryGetValue(hook, out int i) ? i : throw new ArgumentException($"SAE hook '{hook}' is not a hook point of the model");
        var ownSplice = new SaeSplice(own, useErrorTerm: true);
        var loaded = Loaded(store, sources).Where(s => s.Index != sae.Index).Select(s => (Store: s, Splice: new SaeSplice(sources.BySae[s.Index]!, useErrorTerm: true))).ToList();
        var up = loaded.Where(x => Order(x.Splice.OutputHook) < Order(ownSplice.InputHook)).ToList();
        var down = loaded.Where(x => Order(x.Splice.InputHook) > Order(ownSplice.OutputHook)).ToList();

        var dash = store.Dashboard(sae, feature);
        var chosen = dash.Top.Take(examples).ToList();
        foreach (var e in chosen) model.ValidateTokens([e.Tokens]);

        // upstream: one gradient attribution per example (effects are per example, so examples are not batched together)
        var upAcc = new PartnerAccumulator(chosen.Count);
        var errors = new Dictionary<string, double>(StringComparer.Ordinal);
        double errorAbs = 0, allAbs = 0;
        if (up.Count > 0)
            for (int b = 0; b < chosen.Count; b++)
            {
                cancel.ThrowIfCancellationRequested();
                var ex = chosen[b];
                var ctx = new CircuitContext(model, [.. up.Select(x => x.Splice.Sae), own], [ex.Tokens],
                    [Metric.OfFeature(ownSplice.InputHook, feature, ex.Pos)], ablation: AblationKind.Zero);
                var r = Attribution.Run(ctx, new NodeSelection(), AttributionMethod.Gradient);
                foreach (var n in r.Nodes)
                {
                    if (n.Node.Pos > ex.Pos) continue;
                    var u = up.FirstOrDefault(x => x.Splice.InputHook == n.Node.Hook);
                    if (u.Store == null) continue;   // the feature's own SAE
                    allAbs += Math.Abs(n.Effect);
                    if (n.Node.Kind == NodeKind.Error)
                    {
                        errorAbs += Math.Abs(n.Effect);
                        errors[u.Store.Hook] = errors.GetValueOrDefault(u.Store.Hook) + n.Effect / chosen.Count;
                    }
                    else upAcc.Add(b, u.Store.Index, n.Node.Index!.Value, n.Effect);
                }
            }

        // downstream: per example, the clean window and the window with the latent zeroed, in one batch of two
        var downAcc = new PartnerAccumulator(chosen.Count);
        if (down.Count > 0)
        {
            var splices = down.Select(x => (IHookSplice)x.Splice).Prepend(ownSplice).ToList();
            var wanted = new HashSet<string>(down.Select(x => x.Splice.ActsPostHook).Append(ownSplice.ActsPostHook), StringComparer.Ordinal);
            HookFunction zero = (t, _) =>
            {
                // t: [2, T, d_sae]; sequence 1 is the edited one
                int T = t.Shape[1], w = t.Shape[2];
                for (int p = 0; p < T; p++) t.Data[((long)T + p) * w + feature] = 0;
                return null;
            };
            for (int b = 0; b < chosen.Count; b++)
            {
                cancel.ThrowIfCancellationRequested();
                var tokens = chosen[b].Tokens;
                int len = tokens.Length;
                using var cache = new ActivationCache { Lengths = [len, len] };
                model.Run([tokens, tokens], new RunOptions
                {
                    Splices = splices, Hooks = [(ownSplice.ActsPostHook, zero)], CacheFilter = wanted.Contains, Cache = cache, ReturnLogits = false,
                });
                var ownActs = cache[ownSplice.ActsPostHook];
                int first = -1;
                for (int p = 0; p < len && first < 0; p++) if (ownActs.Data[(long)p * own.DSae + feature] != 0) first = p;
                if (first < 0) continue;   // not active in this window as recomputed: nothing changes
                foreach (var d in down)
                {
                    var acts = cache[d.Splice.ActsPostHook];
                    int T = acts.Shape[1], w = acts.Shape[2];
                    for (int j = 0; j < w; j++)
                    {
                        double sum = 0;
                        bool changed = false;
                        for (int p = first; p < len; p++)
                        {
                            float clean = acts.Data[(long)p * w + j], edited = acts.Data[((long)T + p) * w + j];
                            if (clean != edited) { changed = true; sum += (double)edited - clean; }
                        }
                        if (changed) downAcc.Add(b, d.Store.Index, j, sum);
                    }
                }
            }
        }

        string? Label(int s, int f) => store.LabelOf(store.Saes[s], f)?.Label;
        return new FeatureConnectionsResult
        {
            Sae = sae.Hook, Feature = feature, Examples = chosen.Count,
            Upstream = upAcc.Top(top, store, Label), Downstream = downAcc.Top(top, store, Label),
            UpstreamErrors = [.. up.Select(x => new ConnectionError(x.Store.Hook, errors.GetValueOrDefault(x.Store.Hook)))],
            ErrorShare = allAbs > 0 ? errorAbs / allAbs : null,
            UpstreamSaes = [.. up.Select(x => x.Store.Hook)], DownstreamSaes = [.. down.Select(x => x.Store.Hook)],
            MissingSaes = [.. store.Saes.Where(s => sources.BySae[s.Index] == null).Select(s => s.Hook)],
        };
    }

    static IEnumerable<StoreSae> Loaded(FeatureStore store, Sources sources) => store.Saes.Where(s => sources.BySae[s.Index] != null);

    /// <summary>Per (SAE, latent): the sum over examples of each example's value, and the examples where it was non-zero.</summary>
    sealed class PartnerAccumulator(int examples)
    {
        readonly Dictionary<(int Sae, int Feature), (double Sum, HashSet<int> Examples)> _d = [];

        public void Add(int example, int sae, int feature, double value)
        {
            if (!_d.TryGetValue((sae, feature), out var e)) _d[(sae, feature)] = e = (0, []);
            if (value != 0) e.Examples.Add(example);
            _d[(sae, feature)] = (e.Sum + value, e.Examples);
        }

        public ConnectionPartner[] Top(int k, FeatureStore store, Func<int, int, string?> label) =>
            [.. _d.Where(kv => kv.Value.Examples.Count > 0)
                .Select(kv => (kv.Key, Mean: kv.Value.Sum / examples, Fraction: (double)kv.Value.Examples.Count / examples))
                .OrderByDescending(x => Math.Abs(x.Mean)).ThenBy(x => x.Key.Sae).ThenBy(x => x.Key.Feature).Take(k)
                .Select(x => new ConnectionPartner(store.Saes[x.Key.Sae].Hook, x.Key.Feature, x.Mean, x.Fraction, label(x.Key.Sae, x.Key.Feature)))];
    }
}
