using System.CommandLine;
using System.Globalization;
using FeatureLens.Analysis;
using FeatureLens.Connections;
using FeatureLens.Database;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;
using FeatureLens.Steering;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>
/// featurelens compare-vector: a steering vector against the SAEs at its hook — cosines with every decoder row and encoder
/// column, the SAE's encoding and a greedy NNLS fit over the decoder, steering with the vector vs its k-atom reconstructions
/// — and, with --metric, its effect on a metric as an attribution node (by gradient and exactly).
/// </summary>
internal static class CompareVectorCommand
{
    public static Command Build()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var vector = new Option<string>("--vector") { Description = "FILE[:NAME]: a safetensors tensor NAME (or the file's only tensor) or a .npy vector", Required = true };
        var sae = new Option<string[]>("--sae") { Description = "SAE folder (or a folder of SAE folders); repeatable. Those writing the vector's hook are compared", Required = true };
        var hook = new Option<string?>("--hook") { Description = "The hook the vector belongs to (default: the \"hook\" metadata that featurelens steering-vector writes)" };
        var prompt = new Option<string?>("--prompt") { Description = "A prompt for the behavioural comparison and --metric" };
        var prompts = new Option<string?>("--prompts") { Description = "Prompts, one per line (or .jsonl with a \"text\" field)" };
        var top = new Option<int>("--top") { Description = "Matches and terms to show per SAE", DefaultValueFactory = _ => 10 };
        var strength = new Option<float>("--strength") { Description = "Steering strength S: S × vector and S × reconstruction are added", DefaultValueFactory = _ => 1f };
        var positions = new Option<string>("--positions") { Description = "all (default) | prompt: where the vector is added", DefaultValueFactory = _ => "all" };
        var metric = new Option<string?>("--metric") { Description = "Also the vector's effect on this metric (logit:T, logit-diff:T1,T2, logprob:T, prob:T, loss, @POS) by gradient and exactly" };
        var labels = TrackCommand.LabelsOption();
        var db = new Option<string?>("--db") { Description = "A feature database for labels (default: the suite's features.sqlite beside the --sae folders, if any)" };
        var json = new Option<string?>("--json") { Description = "Write the results as JSON to this file" };
        var cmd = new Command("compare-vector", "Compare a steering vector with SAE features: cosines, sparse decompositions, steering with its k-feature reconstructions, its effect on a metric")
        {
            model, tokenizer, vector, sae, hook, prompt, prompts, top, strength, positions, metric, labels, db, json,
        };
        cmd.SetAction(r =>
        {
            string? output = r.GetValue(json);
            if (output != null)
            {
                string dir = Path.GetDirectoryName(Path.GetFullPath(output))!;
                if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"--json {output}: the folder {dir} does not exist");
            }
            int n = r.GetValue(top);
            if (n < 1) throw new ArgumentException($"--top must be at least 1 (got {n})");
            var where = SteeringSpec.ParsePositions(r.GetValue(positions)!);
            if (where == SteeringPositions.New) throw new ArgumentException("--positions new: compare-vector reads the next token after the prompt; use all or prompt");
            float s = r.GetValue(strength);
            if (!float.IsFinite(s)) throw new ArgumentException($"--strength {s} is not a finite number");
            var parsedMetric = r.GetValue(metric) is string mt ? Metric.Parse(mt) : null;
            var (file, name) = SteeringSpec.ParseVectorSource(r.GetValue(vector)!);
            var v = SteeringVectors.Read(file, name);
            string h = r.GetValue(hook) ?? HookFromMetadata(file)
                ?? throw new ArgumentException($"--vector {file}: the file names no hook (metadata \"hook\"); give --hook");

            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer));
            try { m.CheckHookName(h); }
            catch (ArgumentException e) { throw new ArgumentException($"--hook: {e.Message}"); }
            int width = m.HookWidth(h) ?? throw new ArgumentException($"--hook {h}: an attention pattern; a vector cannot be added there");
            VectorComparison.CheckVector(v, width, $"--vector {file} at hook '{h}'");

            var saeDirs = r.GetValue(sae) ?? [];
            var all = saeDirs.SelectMany(SaeLoader.LoadAll).ToList();
            var saes = all.Where(x => VectorComparison.OutputHook(x) == h).ToList();
            if (saes.Count == 0)
                throw new ArgumentException($"--sae: no SAE writes the vector's hook '{h}' (the SAEs write {string.Join(", ", all.Select(VectorComparison.OutputHook).Distinct())})");
            foreach (var x in saes) new SaeSplice(x).Validate(m);

            var texts = new List<string>();
            if (r.GetValue(prompt) is string pt) texts.Add(pt);
            if (r.GetValue(prompts) is string pf) texts.AddRange(SteeringVectors.ReadPrompts(pf, "--prompts"));
            var ids = texts.Select(t => Cli.Encode(m, t, addBos: true)).ToArray();
            if (parsedMetric != null && ids.Length == 0) throw new ArgumentException("--metric needs --prompt or --prompts");

            var lookup = r.GetValue(labels) is string lp ? FeatureLabels.Load(lp, new SaeSet(m, saes)) : null;
            string? dbPath = r.GetValue(db) ?? (lookup == null ? saeDirs.Select(SteeringScales.FindSuiteDatabase).FirstOrDefault(p => p != null) : null);
            using var store = dbPath != null ? FeatureStore.Open(dbPath) : null;
            Func<int, string?> LabelOf(Sae x)
            {
                string hk = x.Config.HookName;
                if (lookup != null) return i => lookup.Get(hk, i)?.Label;
                var ss = store?.Saes.FirstOrDefault(z => z.Hook == hk);
                return ss == null ? _ => null : i => store!.LabelOf(ss, i)?.Label;
            }

            double norm = Math.Sqrt(v.Sum(x => (double)x * x));
            AnsiConsole.MarkupLine(Markup.Escape($"vector {file}{(name == null ? "" : ":" + name)} at {h}: width {v.Length}, norm {F(norm)}" + (dbPath != null && lookup == null ? $"; labels from {dbPath}" : "")));
            var results = new List<VectorComparison.SaeComparison>();
            foreach (var x in saes)
            {
                var label = LabelOf(x);
                var dec = VectorComparison.Top(VectorComparison.DecoderCosines(x, v), n, label);
                var enc = x.DIn == v.Length ? VectorComparison.Top(VectorComparison.EncoderCosines(x, v), n, label) : [];
                var encoding = x.DIn == v.Length ? VectorComparison.Encoding(x, v, label) : new SparseFit(0, double.NaN, []);
                var fits = VectorComparison.Nnls(x, v, VectorComparison.Atoms[^1], label);
                var chosen = fits.Where(f => VectorComparison.Atoms.Contains(f.Atoms) || f == fits[^1]).DistinctBy(f => f.Atoms).ToList();
                var behaviour = ids.Length > 0 ? VectorComparison.Behaviour(m, h, v, s, x, chosen, ids, where) : [];
                var cmp = new VectorComparison.SaeComparison(x.Config.HookName, x.DSae, dec, enc, encoding, [.. chosen], [.. behaviour]);
                results.Add(cmp);
                Report(cmp, n);
            }
            VectorNodeEffect? effect = null;
            if (parsedMetric != null)
            {
                effect = VectorComparison.NodeEffect(m, h, v, s, parsedMetric, ids, where);
                AnsiConsole.MarkupLine(Markup.Escape($"vector as a node, metric {effect.Metric} over {ids.Length} prompt(s): clean {F(effect.Clean)}, effect by gradient {F(effect.Gradient, "+0.0000;-0.0000")}, exact {F(effect.Exact, "+0.0000;-0.0000")}"));
            }
            if (output != null)
            {
                var result = new CompareVectorResult(r.GetValue(vector)!, h, norm, s, ids.Length, [.. results], effect);
                VectorComparison.WriteJson(output, result);
                AnsiConsole.MarkupLine(Markup.Escape($"wrote {output}"));
            }
            return 0;
        });
        return cmd;
    }

    static string? HookFromMetadata(string file)
    {
        if (!file.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) return null;
        using var f = SafetensorsFile.Open(file);
        return f.Metadata.TryGetValue("hook", out var hk) ? hk : null;
    }

    static string F(double v, string f = "F4") => v.ToString(f, CultureInfo.InvariantCulture);

    static void Report(VectorComparison.SaeComparison c, int n)
    {
        string L(string? label) => Markup.Escape(label ?? "");
        var t = new Table().Border(TableBorder.Rounded).Title(Markup.Escape($"SAE at {c.Hook} ({c.DSae} latents): best aligned directions"))
            .AddColumns("decoder latent", "cos", "label", "encoder latent", "cos", "label");
        for (int i = 0; i < Math.Max(c.Decoder.Length, c.Encoder.Length); i++)
        {
            var d = i < c.Decoder.Length ? c.Decoder[i] : null;
            var e = i < c.Encoder.Length ? c.Encoder[i] : null;
            t.AddRow(d?.Latent.ToString(CultureInfo.InvariantCulture) ?? "", d != null ? F(d.Cosine) : "", L(d?.Label),
                e?.Latent.ToString(CultureInfo.InvariantCulture) ?? "", e != null ? F(e.Cosine) : "", L(e?.Label));
        }
        AnsiConsole.Write(t);
        string Terms(SparseFit f) => string.Join(", ", f.Terms.Take(n).Select(x => $"{x.Latent}×{F(x.Coefficient, "G3")}" + (x.Label != null ? $" ({x.Label})" : ""))) + (f.Terms.Length > n ? ", …" : "");
        AnsiConsole.MarkupLine(Markup.Escape($"SAE encoding of the vector: {c.Encoding.Atoms} active, explained {F(c.Encoding.Explained)}: {Terms(c.Encoding)}"));
        var fitTable = new Table().Border(TableBorder.Rounded).Title("non-negative sparse fit over the decoder rows").AddColumns("k", "explained", "terms");
        foreach (var f in c.Nnls) fitTable.AddRow(f.Atoms.ToString(CultureInfo.InvariantCulture), F(f.Explained), Markup.Escape(Terms(f)));
        AnsiConsole.Write(fitTable);
        if (c.Behaviour.Length > 0)
        {
            var b = new Table().Border(TableBorder.Rounded).Title("steering with the vector vs its k-atom reconstruction (next token, mean over prompts)")
                .AddColumns("k", "explained", "KL(vector ‖ recon)", "KL(vector ‖ base)", "KL(recon ‖ base)", "corr Δlogits", "RMS ΔΔlogits");
            foreach (var x in c.Behaviour)
                b.AddRow(x.Atoms.ToString(CultureInfo.InvariantCulture), F(x.Explained), F(x.Kl, "G4"), F(x.KlVector, "G4"), F(x.KlReconstruction, "G4"), F(x.LogitCorrelation), F(x.LogitRmsDifference, "G4"));
            AnsiConsole.Write(b);
        }
    }
}
