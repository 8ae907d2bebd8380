using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Models;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>
/// featurelens intervene: set, clamp or zero transcoder features of a prompt and compare the next-token predictions of the
/// unedited model, the frozen replacement model, the graph's linear prediction and the real model with the transcoders spliced
/// (see <see cref="GraphInterventions"/>).
/// </summary>
internal static class InterveneCommand
{
    public static Command Build()
    {
        var o = new GraphPromptOptions();
        var set = new Option<string[]>("--set") { Description = "L:LATENT@POS=VALUE: set the latent at POS (an integer, negative from the end, or * = every position where it is active), active or not; repeatable" };
        var clamp = new Option<string[]>("--clamp") { Description = "L:LATENT@POS=VALUE: set the latent only where it is active on the prompt; repeatable" };
        var zero = new Option<string[]>("--zero") { Description = "L:LATENT@POS: set the latent to 0 where it is active; repeatable" };
        var top = new Option<int>("--top") { Description = "Predictions to list per model", DefaultValueFactory = _ => 10 };
        var logit = new Option<string[]>("--logit") { Description = "A token (id, its exact text as the tables print it, or text that encodes to one token) whose logit change to report; repeatable (default: the baseline's top tokens)" };
        var json = new Option<string?>("--json") { Description = "Write every number as JSON to this file" };
        var cmd = new Command("intervene", "Set, clamp or zero transcoder features of a prompt; compare next-token predictions: unedited, frozen replacement model, the graph's linear prediction, the real model with transcoders spliced")
        {
            set, clamp, zero, top, logit, json,
        };
        o.AddTo(cmd);
        cmd.SetAction(r =>
        {
            int k = r.GetValue(top);
            if (k <= 0) throw new ArgumentException($"--top must be positive (got {k})");
            string? output = r.GetValue(json);
            if (output != null)
            {
                string dir = Path.GetDirectoryName(Path.GetFullPath(output))!;
                if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"--json {output}: the folder {dir} does not exist");
            }
            var edits = (r.GetValue(set) ?? []).Select(s => FeatureIntervention.Parse(InterventionKind.Set, s))
                .Concat((r.GetValue(clamp) ?? []).Select(s => FeatureIntervention.Parse(InterventionKind.Clamp, s)))
                .Concat((r.GetValue(zero) ?? []).Select(s => FeatureIntervention.Parse(InterventionKind.Zero, s))).ToList();
            if (edits.Count == 0) throw new ArgumentException("give at least one --set, --clamp or --zero");
            using var m = o.LoadModel(r);
            int[] prompt = o.Prompt(r, m);
            var watched = (r.GetValue(logit) ?? []).Select(t => ParseToken(m, t)).ToList();
            var tcs = o.LoadTranscoders(r, m);

            var rm = ReplacementModel.Build(m, tcs, prompt);
            var result = GraphInterventions.Run(m, rm, edits);
            if (watched.Count == 0) watched = InterventionJson.Top(result.Baseline, k).Select(t => t.Token).ToList();
            string Tok(int id) => m.Tokenizer?.TokenText(id) ?? id.ToString(CultureInfo.InvariantCulture);
            Report(result, Tok, k, watched);
            if (output != null)
            {
                InterventionJson.Write(output, InterventionJson.ToJson(result, Tok, k, watched));
                AnsiConsole.MarkupLine(Markup.Escape($"wrote {output}"));
            }
            return 0;
        });
        return cmd;
    }


    /// <summary>A token id, or a text that the tokenizer encodes to exactly one token.</summary>
    internal static int ParseToken(HookedTransformer m, string s)
    {
        int V = m.Config.VocabSize;
        if (int.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out int id))
            return id < V ? id : throw new ArgumentException($"--logit {s}: token id outside the vocabulary [0, {V})");
        var tok = m.Tokenizer ?? throw new ArgumentException($"--logit '{s}': the model has no tokenizer; give a token id");
        // a token whose text is exactly s (e.g. " Lily", as the tables print it), else what s encodes to
        for (int v = 0; v < V; v++)
            if (tok.TokenText(v) == s) return v;
        var ids = tok.Encode(s, false);
        return ids.Length == 1 ? ids[0] : throw new ArgumentException($"--logit '{s}': encodes to {ids.Length} tokens [{string.Join(",", ids)}]; give one token (or its id)");
    }

    static string Quote(string s) => JsonSerializer.Serialize(s);

    static void Report(InterventionResult r, Func<int, string> tok, int k, List<int> watched)
    {
        var edits = new Table().Border(TableBorder.Rounded).AddColumns("layer", "latent", "pos", "clean", "value");
        foreach (var e in r.Edits)
            edits.AddRow(e.Layer.ToString(CultureInfo.InvariantCulture), e.Latent.ToString(CultureInfo.InvariantCulture),
                $"{e.Pos} {Markup.Escape(Quote(tok(r.Tokens[e.Pos])))}", e.Clean.ToString("G5", CultureInfo.InvariantCulture), e.Value.ToString("G5", CultureInfo.InvariantCulture));
        AnsiConsole.Write(edits);
        foreach (var s in r.Skipped) AnsiConsole.MarkupLine(Markup.Escape("skipped: " + s));

        var top = new Table().Border(TableBorder.Rounded).AddColumn("#");
        foreach (var name in new[] { "baseline", "replacement model", "linear prediction", "real model (spliced)" }) top.AddColumn(name);
        var lists = InterventionJson.Models.Select(mn => InterventionJson.Top(InterventionJson.Logits(r, mn), k)).ToArray();
        for (int i = 0; i < k; i++)
            top.AddRow([(i + 1).ToString(CultureInfo.InvariantCulture), .. lists.Select(l => i < l.Length ? Markup.Escape($"{Quote(tok(l[i].Token))} {l[i].Prob:F3}") : "")]);
        AnsiConsole.Write(top);

        var w = new Table().Border(TableBorder.Rounded).AddColumns("token", "baseline logit", "Δ replacement", "Δ linear", "Δ real");
        foreach (int t in watched)
            w.AddRow(Markup.Escape(Quote(tok(t))), r.Baseline[t].ToString("F4", CultureInfo.InvariantCulture),
                (r.Replacement[t] - r.Baseline[t]).ToString("+0.0000;-0.0000", CultureInfo.InvariantCulture),
                (r.Linear[t] - r.Baseline[t]).ToString("+0.0000;-0.0000", CultureInfo.InvariantCulture),
                (r.Real[t] - r.Baseline[t]).ToString("+0.0000;-0.0000", CultureInfo.InvariantCulture));
        AnsiConsole.Write(w);
    }
}
