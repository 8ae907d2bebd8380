using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using FeatureLens.Database;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Steering;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>
/// featurelens steer: baseline and steered continuations of a prompt with the same seed, steering by SAE features (decoder
/// rows), clamped latents and vectors from files, swept over strengths; per strength the next-token KL from the baseline,
/// chosen logits' changes and the SAEs' most changed latents.
/// </summary>
internal static class SteerCommand
{
    public static Command Build()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var prompt = new Option<string>("--prompt") { Description = "Text to continue", Required = true };
        var sae = new Option<string[]>("--sae") { Description = "SAE folder (or a folder of SAE folders); repeatable. Their latents are reported, and --feature/--clamp pick from them" };
        var feature = new Option<string[]>("--feature") { Description = "HOOK:I=S: add S × W_dec[I] (as stored) of the SAE at HOOK; repeatable" };
        var clamp = new Option<string[]>("--clamp") { Description = "HOOK:I=V: splice the SAE at HOOK with its error term and set latent I to V; repeatable" };
        var vector = new Option<string[]>("--vector") { Description = "FILE[:NAME]@HOOK=S: add S × a vector from a safetensors tensor NAME or a .npy file; repeatable" };
        var positions = new Option<string>("--positions") { Description = "all (default) | prompt | new: where to steer", DefaultValueFactory = _ => "all" };
        var strengths = new Option<string>("--strengths") { Description = "Comma-separated multipliers of every S (a sweep); default 1", DefaultValueFactory = _ => "1" };
        var relative = new Option<bool>("--relative") { Description = "--feature scales are relative to the latent's max activation (from --db, or the suite's features.sqlite)" };
        var db = new Option<string?>("--db") { Description = "Feature database (features.sqlite) for --relative" };
        var logit = new Option<string[]>("--logit") { Description = "A token (id or text) whose next-token logit change to report; repeatable" };
        var topFeatures = new Option<int>("--top-features") { Description = "Most changed latents to report per SAE", DefaultValueFactory = _ => 5 };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "Tokens to generate", DefaultValueFactory = _ => 32 };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy (default)", DefaultValueFactory = _ => 0f };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling mass in (0, 1]", DefaultValueFactory = _ => 1f };
        var seed = new Option<int>("--seed") { Description = "Sampling seed (the same for baseline and steered)", DefaultValueFactory = _ => 0 };
        var json = new Option<string?>("--json") { Description = "Write the results as JSON to this file" };
        var cmd = new Command("steer", "Steer generation with SAE features, clamped latents or vectors; baseline and steered continuations side by side")
        {
            model, tokenizer, prompt, sae, feature, clamp, vector, positions, strengths, relative, db, logit, topFeatures, maxNew, temperature, topP, seed, json,
        };
        cmd.SetAction(r =>
        {
            string? output = r.GetValue(json);
            if (output != null)
            {
                string dir = Path.GetDirectoryName(Path.GetFullPath(output))!;
                if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"--json {output}: the folder {dir} does not exist");
            }
            var where = SteeringSpec.ParsePositions(r.GetValue(positions)!);
            var ks = SteeringSpec.ParseStrengths(r.GetValue(strengths)!);
            var featureTerms = (r.GetValue(feature) ?? []).Select(f => SteeringSpec.ParseLatentTerm("--feature", f)).ToList();
            var clampTerms = (r.GetValue(clamp) ?? []).Select(c => SteeringSpec.ParseLatentTerm("--clamp", c)).ToList();
            var vectorTerms = (r.GetValue(vector) ?? []).Select(SteeringSpec.ParseVectorTerm).ToList();
            if (featureTerms.Count + clampTerms.Count + vectorTerms.Count == 0) throw new ArgumentException("give at least one --feature, --clamp or --vector");
            int top = r.GetValue(topFeatures);
            if (top < 0) throw new ArgumentException($"--top-features must be ≥ 0 (got {top})");
            var sampling = new SamplingOptions(r.GetValue(temperature), r.GetValue(topP), r.GetValue(seed));
            sampling.Validate();

            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer));
            var tok = m.Tokenizer ?? throw new InvalidOperationException("steer needs a tokenizer: pass --tokenizer PATH");
            int[] promptIds = Cli.Encode(m, r.GetValue(prompt)!, addBos: true);
            var saeDirs = r.GetValue(sae) ?? [];
            var saes = saeDirs.SelectMany(SaeLoader.LoadAll).ToList();
            var splices = saes.Select(s => new SaeSplice(s, useErrorTerm: true)).ToList();
            foreach (var s in splices) s.Validate(m);
            SaeSplice Find(string option, string hook) => splices.FirstOrDefault(s => s.InputHook == hook)
                ?? throw new ArgumentException($"{option} {hook}: no SAE at that hook" + (splices.Count == 0 ? " (give its folder with --sae)" : $" (SAEs at {string.Join(", ", splices.Select(s => s.InputHook))})"));

            FeatureStore? store = null;
            try
            {
                if (r.GetValue(relative) && featureTerms.Count > 0)
                {
                    string? dbPath = r.GetValue(db) ?? saeDirs.Select(SteeringScales.FindSuiteDatabase).FirstOrDefault(p => p != null)
                        ?? throw new ArgumentException("--relative needs the latents' max activations: give --db F.sqlite (no features.sqlite found beside the --sae folders)");
                    store = FeatureStore.Open(dbPath);
                }
                var additions = new List<SteeringAddition>();
                foreach (var (hook, latent, s) in featureTerms)
                {
                    var splice = Find("--feature", hook);
                    var a = Steerer.Feature(splice.Sae, latent, s);
                    if (store != null) a = a with { Scale = (float)(s * SteeringScales.MaxActivation(store, hook, latent)) };
                    additions.Add(a);
                }
                foreach (var (file, name, hook, s) in vectorTerms)
                    additions.Add(new SteeringAddition(hook, SteeringVectors.Read(file, name), s, $"--vector {file}{(name == null ? "" : ":" + name)}@{hook}"));
                var clamps = clampTerms.Select(c => new SteeringClamp(Find("--clamp", c.Hook), c.Latent, c.Value, $"{c.Hook}:{c.Latent}")).ToList();
                var steerer = new Steerer(m, additions, clamps, where);

                var watched = (r.GetValue(logit) ?? []).Select(t => InterveneCommand.ParseToken(m, t)).ToList();
                var o = new SweepOptions(watched, top > 0 ? splices : [], top, tok.TokenText, SteeringSweep.ContinuationText(tok, promptIds));
                var result = SteeringSweep.Run(steerer, promptIds, ks, r.GetValue(maxNew), sampling, o);
                Report(result, steerer);
                if (output != null)
                {
                    SteeringJson.Write(output, result);
                    AnsiConsole.MarkupLine(Markup.Escape($"wrote {output}"));
                }
            }
            finally { store?.Dispose(); }
            return 0;
        });
        return cmd;
    }

    static string Quote(string s) => JsonSerializer.Serialize(s);
    static string F(double v, string f = "F4") => v.ToString(f, CultureInfo.InvariantCulture);

    static void Report(SteeringResult r, Steerer s)
    {
        foreach (var a in s.Additions) AnsiConsole.MarkupLine(Markup.Escape($"add {a.Label} at {a.Hook}, scale {F(a.Scale)} × strength"));
        foreach (var c in s.Clamps) AnsiConsole.MarkupLine(Markup.Escape($"clamp {c.Label} to {F(c.Value)}"));
        AnsiConsole.MarkupLine(Markup.Escape($"positions: {r.Positions}"));
        var t = new Table().Border(TableBorder.Rounded).AddColumns("strength", "KL next token", "continuation");
        t.AddRow("baseline", "", Markup.Escape(Quote(r.Baseline.Text)));
        foreach (var st in r.Steered) t.AddRow(F(st.Strength, "G4"), F(st.Kl, "G4"), Markup.Escape(Quote(st.Text)));
        AnsiConsole.Write(t);
        if (r.Steered.Any(x => x.LogitChanges.Length > 0))
        {
            var l = new Table().Border(TableBorder.Rounded).AddColumns("strength", "token", "baseline logit", "steered", "Δ");
            foreach (var st in r.Steered)
                foreach (var c in st.LogitChanges)
                    l.AddRow(F(st.Strength, "G4"), Markup.Escape(Quote(c.Text)), F(c.Baseline), F(c.Steered), F(c.Delta, "+0.0000;-0.0000"));
            AnsiConsole.Write(l);
        }
        if (r.Steered.Any(x => x.Features.Length > 0))
        {
            var f = new Table().Border(TableBorder.Rounded).AddColumns("strength", "SAE", "latent", "mean baseline", "mean steered", "Δ");
            foreach (var st in r.Steered)
                foreach (var c in st.Features)
                    f.AddRow(F(st.Strength, "G4"), Markup.Escape(c.Hook), c.Latent.ToString(CultureInfo.InvariantCulture), F(c.Baseline), F(c.Steered), F(c.Delta, "+0.0000;-0.0000"));
            AnsiConsole.Write(f);
        }
    }
}
