using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using FeatureLens.Analysis;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tokenizers;
using FeatureLens.Saes;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>
/// featurelens feature-links: a transcoder feature's strongest upstream sources and downstream targets by direct effect in the
/// local replacement model, on one prompt or aggregated over a prompt set (<see cref="FeatureLinks"/>), with labels and top
/// activating corpus examples of each partner feature.
/// </summary>
internal static class FeatureLinksCommand
{
    public static Command Build()
    {
        var o = new GraphPromptOptions();
        var prompts = new Option<string?>("--prompts") { Description = "A prompt set: JSONL, one {\"text\": ...} or {\"tokens\": [...]} (or a JSON string) per line" };
        var feature = new Option<string>("--feature") { Description = "The feature as LAYER:LATENT", Required = true };
        var pos = new Option<int?>("--pos") { Description = "One prompt only: the position (negative from the end; default every position where the feature is active)" };
        var top = new Option<int>("--top") { Description = "Partners to list on each side", DefaultValueFactory = _ => 10 };
        var labels = TrackCommand.LabelsOption();
        var corpus = new Option<string?>("--corpus") { Description = "Text corpus (one document per line or blank-line separated) for each partner feature's top activating examples" };
        var examples = new Option<int>("--examples") { Description = "Top examples per partner feature (with --corpus)", DefaultValueFactory = _ => 5 };
        var corpusTokens = new Option<long>("--corpus-tokens") { Description = "Tokens of --corpus to scan", DefaultValueFactory = _ => 20_000 };
        var batch = new Option<int>("--batch-size") { Description = "Target rows per batched backward pass", DefaultValueFactory = _ => 64 };
        var json = new Option<string?>("--json") { Description = "Write every number as JSON to this file" };
        var cmd = new Command("feature-links", "A transcoder feature's strongest upstream and downstream features (direct effects in the replacement model) on a prompt or over a prompt set, with labels and top examples")
        {
            prompts, feature, pos, top, labels, corpus, examples, corpusTokens, batch, json,
        };
        o.AddTo(cmd);
        cmd.SetAction(r =>
        {
            int k = r.GetValue(top), nEx = r.GetValue(examples), bs = r.GetValue(batch);
            if (k <= 0) throw new ArgumentException($"--top must be positive (got {k})");
            if (nEx <= 0) throw new ArgumentException($"--examples must be positive (got {nEx})");
            if (bs <= 0) throw new ArgumentException($"--batch-size must be positive (got {bs})");
            var (layer, latent) = ParseFeature(r.GetValue(feature)!);
            string? output = r.GetValue(json);
            if (output != null && !Directory.Exists(Path.GetDirectoryName(Path.GetFullPath(output))))
                throw new DirectoryNotFoundException($"--json {output}: the folder {Path.GetDirectoryName(Path.GetFullPath(output))} does not exist");
            using var m = o.LoadModel(r);
            bool bos = !r.GetValue(o.NoBos);
            string? promptsPath = r.GetValue(prompts);
            List<int[]> set;
            if (promptsPath != null)
            {
                if (o.HasPrompt(r)) throw new ArgumentException("give --text/--tokens or --prompts, not both");
                if (r.GetValue(pos) != null) throw new ArgumentException("--pos applies to one prompt (--text/--tokens), not to --prompts");
                set = ReadPrompts(promptsPath, m, bos);
            }
            else set = [o.Prompt(r, m)];
            var tcs = o.LoadTranscoders(r, m);
            var lookup = r.GetValue(labels) is string lp ? FeatureLabels.Load(lp, new SaeSet(m, tcs.Layers)) : null;
            string? corpusPath = r.GetValue(corpus);
            if (corpusPath != null && !File.Exists(corpusPath)) throw new FileNotFoundException($"--corpus {corpusPath}: no such file");

            var perPrompt = new List<IReadOnlyList<FeatureLinksAt>>();
            IReadOnlyList<Sae> byLayer = [];
            AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new RemainingTimeColumn())
                .Start(p =>
                {
                    var task = p.AddTask("prompts", maxValue: set.Count);
                    for (int i = 0; i < set.Count; i++)
                    {
                        var rm = ReplacementModel.Build(m, tcs, set[i]);
                        byLayer = rm.Transcoders;
                        try { perPrompt.Add(FeatureLinks.OnPrompt(rm, layer, latent, r.GetValue(pos), bs)); }
                        catch (ArgumentException e) when (set.Count > 1) { throw new ArgumentException($"{promptsPath} prompt {i + 1}: {e.Message}", e); }
                        task.Value = i + 1;
                    }
                });
            var agg = FeatureLinks.Aggregate(layer, latent, perPrompt);
            var tok = m.Tokenizer;
            string Tok(int id) => tok?.TokenText(id) ?? id.ToString(CultureInfo.InvariantCulture);
            string? Label(PartnerKey key) => key.Kind == GraphNodeKind.Feature ? lookup?.Get(byLayer[key.Layer].Config.Metadata.HookName, key.Index)?.Label : null;

            Dictionary<PartnerKey, List<string>>? ex = null;
            if (corpusPath != null)
            {
                if (tok == null) throw new ArgumentException("--corpus needs the model's tokenizer (pass --tokenizer)");
                var windows = Corpus.Windows(Corpus.Documents(corpusPath), tok, Math.Min(m.Config.NCtx, 128), prependBos: true, maxTokens: r.GetValue(corpusTokens)).ToList();
                var collected = TopExamples.Collect(m, byLayer, windows, topN: nEx);
                var wanted = agg.Upstream.Take(k).Concat(agg.Downstream.Take(k)).Select(a => a.Partner).Append(new PartnerKey(GraphNodeKind.Feature, layer, latent))
                    .Where(p => p.Kind == GraphNodeKind.Feature).Distinct();
                ex = wanted.ToDictionary(p => p, p => collected[p.Layer].Examples[p.Index].Select(e => Snippet(tok, windows[e.Sequence], e.Position, e.Activation)).ToList());
            }

            Report(agg, perPrompt, set, k, Tok, Label, ex);
            if (output != null)
            {
                var doc = ToJson(agg, perPrompt, set, k, Tok, Label, ex);
                FeatureLens.Connections.Graphs.InterventionJson.Write(output, doc);
                AnsiConsole.MarkupLine(Markup.Escape($"wrote {output}"));
            }
            return 0;
        });
        return cmd;
    }

    static (int, int) ParseFeature(string s)
    {
        var parts = s.Split(':');
        if (parts.Length == 2 && int.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out int l) && int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out int j))
            return (l, j);
        throw new ArgumentException($"--feature '{s}': expected LAYER:LATENT, e.g. 2:17");
    }

    internal static List<int[]> ReadPrompts(string path, HookedTransformer m, bool bos)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"--prompts {path}: no such file");
        var list = new List<int[]>();
        int line = 0;
        foreach (var raw in File.ReadLines(path))
        {
            line++;
            if (string.IsNullOrWhiteSpace(raw)) continue;
            string where = $"{path} line {line}";
            JsonNode? node;
            try { node = JsonNode.Parse(raw); }
            catch (JsonException e) { throw new InvalidDataException($"{where}: not JSON ({e.Message})", e); }
            if (node is JsonValue v && v.TryGetValue(out string? str)) list.Add(Cli.Encode(m, str, bos));
            else if (node is JsonObject o && o["text"] is JsonValue t && t.TryGetValue(out string? txt)) list.Add(Cli.Encode(m, txt, bos));
            else if (node is JsonObject o2 && o2["tokens"] is JsonArray a)
            {
                try { list.Add(a.Select(x => x!.GetValue<int>()).ToArray()); }
                catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
                { throw new InvalidDataException($"{where}: \"tokens\" must be a list of integer ids", e); }
            }
            else throw new InvalidDataException($"{where}: expected a JSON string, {{\"text\": ...}} or {{\"tokens\": [...]}}");
        }
        if (list.Count == 0) throw new InvalidDataException($"{path}: no prompts");
        foreach (var p in list) m.ValidateTokens([p]);
        return list;
    }

    static string Snippet(ITokenizer tok, int[] window, int pos, float act)
    {
        int from = Math.Max(0, pos - 10);
        string before = tok.Decode(window.AsSpan(from, pos - from)), at = tok.TokenText(window[pos]);
        return $"{before.ReplaceLineEndings(" ")}[{at}] ({act.ToString("F2", CultureInfo.InvariantCulture)})";
    }

    static string Name(PartnerKey p, Func<int, string> tok) => p.Kind switch
    {
        GraphNodeKind.Feature => $"{p.Layer}:{p.Index}",
        GraphNodeKind.Error => $"error L{p.Layer}",
        _ => $"embed {JsonSerializer.Serialize(tok(p.Index))}",
    };

    static string F(double x, string f = "G4") => x.ToString(f, CultureInfo.InvariantCulture);

    static void Report(AggregatedLinks agg, List<IReadOnlyList<FeatureLinksAt>> perPrompt, List<int[]> set, int k, Func<int, string> tok,
        Func<PartnerKey, string?> label, Dictionary<PartnerKey, List<string>>? ex)
    {
        var self = new PartnerKey(GraphNodeKind.Feature, agg.Layer, agg.Latent);
        AnsiConsole.MarkupLine(Markup.Escape($"feature {agg.Layer}:{agg.Latent}{(label(self) is string own ? " — " + own : "")}: active on {agg.PromptsActive} of {agg.PromptsTotal} prompt(s)"));
        if (ex != null && ex.TryGetValue(self, out var mine)) foreach (var s in mine) AnsiConsole.MarkupLine(Markup.Escape("  " + s));
        if (set.Count == 1)
            foreach (var at in perPrompt[0])
                foreach (var (side, links) in new[] { ("upstream", at.Upstream), ("downstream", at.Downstream) })
                {
                    var t = new Table().Border(TableBorder.Rounded).Title(Markup.Escape($"{side} of {agg.Layer}:{agg.Latent} at {at.Feature.Pos} {JsonSerializer.Serialize(tok(set[0][at.Feature.Pos]))} (a = {F(at.Activation)})"))
                        .AddColumns("partner", "pos", "activation", "effect", "label");
                    foreach (var l in links.Take(k))
                        t.AddRow(Markup.Escape(Name(PartnerKey.Of(l.Partner), tok)), l.Partner.Pos.ToString(CultureInfo.InvariantCulture), F(l.PartnerActivation), F(l.Effect, "+0.0000;-0.0000"), Markup.Escape(label(PartnerKey.Of(l.Partner)) ?? ""));
                    AnsiConsole.Write(t);
                }
        foreach (var (side, links) in new[] { ("upstream", agg.Upstream), ("downstream", agg.Downstream) })
        {
            var t = new Table().Border(TableBorder.Rounded).Title($"{side}, per partner over {agg.PromptsActive} prompt(s)")
                .AddColumns("partner", "mean |effect|", "mean effect", "sign consistency", "prompts", "label", "top examples");
            foreach (var a in links.Take(k))
                t.AddRow(Markup.Escape(Name(a.Partner, tok)), F(a.MeanAbsEffect), F(a.MeanEffect, "+0.0000;-0.0000"), F(a.SignConsistency, "F2"),
                    a.Prompts.ToString(CultureInfo.InvariantCulture), Markup.Escape(label(a.Partner) ?? ""),
                    Markup.Escape(ex != null && ex.TryGetValue(a.Partner, out var e) ? string.Join("\n", e) : ""));
            AnsiConsole.Write(t);
        }
    }

    static JsonObject ToJson(AggregatedLinks agg, List<IReadOnlyList<FeatureLinksAt>> perPrompt, List<int[]> set, int k, Func<int, string> tok,
        Func<PartnerKey, string?> label, Dictionary<PartnerKey, List<string>>? ex)
    {
        JsonNode Partner(PartnerKey p) => new JsonObject
        {
            ["kind"] = p.Kind.ToString().ToLowerInvariant(), ["layer"] = p.Layer, ["index"] = p.Index, ["label"] = label(p),
            ["examples"] = ex != null && ex.TryGetValue(p, out var e) ? new JsonArray(e.Select(s => (JsonNode)s).ToArray()) : null,
        };
        JsonArray Links(IReadOnlyList<FeatureLink> links) => new(links.Take(k).Select(l => (JsonNode)new JsonObject
        {
            ["partner"] = Partner(PartnerKey.Of(l.Partner)), ["pos"] = l.Partner.Pos, ["activation"] = l.PartnerActivation, ["effect"] = l.Effect,
        }).ToArray());
        JsonArray Agg(IReadOnlyList<AggregatedLink> links) => new(links.Take(k).Select(a => (JsonNode)new JsonObject
        {
            ["partner"] = Partner(a.Partner), ["mean_abs_effect"] = a.MeanAbsEffect, ["mean_effect"] = a.MeanEffect,
            ["sign_consistency"] = a.SignConsistency, ["prompts"] = a.Prompts,
        }).ToArray());
        return new JsonObject
        {
            ["feature"] = Partner(new PartnerKey(GraphNodeKind.Feature, agg.Layer, agg.Latent)),
            ["prompts_total"] = agg.PromptsTotal, ["prompts_active"] = agg.PromptsActive,
            ["prompts"] = new JsonArray(set.Select((p, i) => (JsonNode)new JsonObject
            {
                ["tokens"] = new JsonArray(p.Select(t => (JsonNode)t).ToArray()),
                ["positions"] = new JsonArray(perPrompt[i].Select(at => (JsonNode)new JsonObject
                {
                    ["pos"] = at.Feature.Pos, ["token"] = tok(p[at.Feature.Pos]), ["activation"] = at.Activation,
                    ["upstream"] = Links(at.Upstream), ["downstream"] = Links(at.Downstream),
                }).ToArray()),
            }).ToArray()),
            ["upstream"] = Agg(agg.Upstream), ["downstream"] = Agg(agg.Downstream),
        };
    }
}
