using System.CommandLine;
using System.Text.Json;
using FeatureLens.Analysis;
using FeatureLens.Runtime.Models;
using FeatureLens.Web;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;

namespace FeatureLens.Cli.Commands;

/// <summary>
/// featurelens serve: the feature activation tracker web app over one model + SAE set (--model, --sae, --labels)
/// and/or the sets of a JSON config file:
/// <code>
/// { "sets": [ { "name": "stories260K", "model": "stories260K.bin", "tokenizer": null,
///               "sae": ["saes/stories260K"], "transcoders": ["transcoders"], "labels": "labels.csv" } ] }
/// </code>
/// Paths in the config are relative to the config file's folder. A set with transcoders (one per layer) can build
/// attribution graphs on the Graph page; <c>--graphs DIR</c> is the folder of saved graph files it lists and saves into.
/// <c>--db F.sqlite</c> (repeatable) serves feature databases (featurelens scan) on the Features page; with only --db, no
/// model is loaded.
/// </summary>
internal static class ServeCommand
{
    public static Command Build()
    {
        var model = new Option<string?>("--model") { Description = "A Hugging Face model folder, a llama2.c .bin checkpoint, or a repo id in the local Hugging Face cache" };
        var tokenizer = Cli.TokenizerOption();
        var compute = Cli.ComputeOption();
        var sae = new Option<string[]>("--sae") { Description = "SAE folder (or a folder of SAE folders); repeat for several", AllowMultipleArgumentsPerToken = true };
        var transcoders = new Option<string[]>("--transcoders") { Description = "Transcoder folder (or a folder of them, one per layer) for the --model set's attribution graphs; repeat for several", AllowMultipleArgumentsPerToken = true };
        var graphs = new Option<string?>("--graphs") { Description = "Folder of saved graph files the Graph page lists; computed graphs are saved there (default: a temporary folder)" };
        var labels = new Option<string?>("--labels") { Description = "Feature labels for the --model set: Neuronpedia JSONL export or CSV (layer, feature, label, f1, specialization)" };
        var name = new Option<string?>("--name") { Description = "Name of the --model set in the app (default: the model's file or folder name)" };
        var config = new Option<string?>("--config") { Description = "JSON file listing several model + SAE sets: {\"sets\": [{\"name\", \"model\", \"tokenizer\", \"sae\": [...], \"transcoders\": [...], \"labels\"}]}" };
        var host = new Option<string>("--host") { Description = "Address to listen on (default 127.0.0.1: this machine only)", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "Port to listen on", DefaultValueFactory = _ => 8600 };
        var dbs = new Option<string[]>("--db") { Description = "A feature database (featurelens scan) to browse on the Features page; repeat for several. With only --db, no model is needed", AllowMultipleArgumentsPerToken = true };
        var clusters = new Option<string[]>("--clusters") { Description = "A clusters file (featurelens cluster --out) for the Clusters page; repeat for several", AllowMultipleArgumentsPerToken = true };
        var maxText = new Option<int>("--max-text") { Description = "Longest prompt accepted, in characters", DefaultValueFactory = _ => 4000 };
        var cmd = new Command("serve", "Serve the feature activation tracker: a web page and JSON API showing which SAE features fire at every layer, their evolution and cross-layer correlations")
        {
            model, tokenizer, compute, sae, transcoders, labels, name, config, graphs, dbs, clusters, host, port, maxText,
        };
        cmd.SetAction(r =>
        {
            var specs = new List<SetSpec>();
            if (r.GetValue(model) is string m)
            {
                var saes = r.GetValue(sae) ?? [];
                var tcs = r.GetValue(transcoders) ?? [];
                if (saes.Length == 0 && tcs.Length == 0) throw new ArgumentException("--model needs its SAEs or transcoders: pass --sae DIR and/or --transcoders DIR (repeat for several)");
                specs.Add(new SetSpec(r.GetValue(name), m, r.GetValue(tokenizer), saes, r.GetValue(labels), tcs));
            }
            else if (r.GetValue(sae) is { Length: > 0 } || r.GetValue(transcoders) is { Length: > 0 } || r.GetValue(labels) != null)
                throw new ArgumentException("--sae, --transcoders and --labels belong to a --model: pass --model PATH too");
            string? graphsDir = r.GetValue(graphs);
            if (graphsDir != null && !Directory.Exists(graphsDir)) throw new DirectoryNotFoundException($"--graphs: the folder {graphsDir} does not exist");
            if (r.GetValue(config) is string configPath) specs.AddRange(ReadConfig(configPath));
            var databases = r.GetValue(dbs) ?? [];
            foreach (var d in databases) if (!File.Exists(d)) throw new FileNotFoundException($"--db: {d}: no such feature database");
            var clusterFiles = r.GetValue(clusters) ?? [];
            foreach (var c in clusterFiles) if (!File.Exists(c)) throw new FileNotFoundException($"--clusters: {c}: no such clusters file");
            if (specs.Count == 0 && databases.Length == 0 && clusterFiles.Length == 0)
                throw new ArgumentException("nothing to serve: pass --model PATH --sae DIR..., --config FILE, --db F.sqlite or --clusters FILE");
            int p = r.GetValue(port);

            var models = new List<HookedTransformer>();
            try
            {
                var sets = specs.Select(spec => LoadSet(spec, models, r.GetValue(compute))).ToList();
                Serve(sets, r.GetValue(host)!, p, r.GetValue(maxText), graphsDir, databases, clusterFiles);
                return 0;
            }
            finally
            {
                foreach (var model in models) model.Dispose();
            }
        });
        return cmd;
    }

    /// <summary>Runs the tracker on <paramref name="sets"/> until Ctrl-C / SIGTERM (the web host handles both).</summary>
    public static void Serve(IReadOnlyList<TrackerSet> sets, string host, int port, int maxText = 4000, string? graphsFolder = null, IReadOnlyList<string>? databases = null,
        IReadOnlyList<string>? clusters = null)
    {
        if (port is < 0 or > 65535) throw new ArgumentException($"--port must be 0..65535 (got {port})");
        string url = $"http://{(host.Contains(':') && !host.StartsWith('[') ? $"[{host}]" : host)}:{port}";
        var app = TrackerApp.Build(new TrackerAppOptions { Sets = sets, Urls = [url], MaxTextChars = maxText, GraphsFolder = graphsFolder, Databases = databases ?? [], Clusters = clusters ?? [] });
        app.StartAsync().GetAwaiter().GetResult();
        foreach (var s in sets)
            Console.WriteLine($"{s.Name}: {s.ModelSource} with {s.Set.Saes.Count} SAE(s) ({string.Join(", ", s.Set.Names)}), {s.Labels?.Count ?? 0} labels" +
                (s.Transcoders is { Count: > 0 } t ? $", {t.Count} transcoders (attribution graphs)" : ""));
        foreach (var d in databases ?? []) Console.WriteLine($"feature database: {Path.GetFullPath(d)} (Features page)");
        foreach (var c in clusters ?? []) Console.WriteLine($"clusters: {Path.GetFullPath(c)} (Clusters page)");
        foreach (var u in app.Urls) Console.WriteLine($"FeatureLens tracker listening on {u}  (Ctrl-C stops)");
        app.WaitForShutdownAsync().GetAwaiter().GetResult();
        app.DisposeAsync().AsTask().GetAwaiter().GetResult();
    }

    sealed record SetSpec(string? Name, string Model, string? Tokenizer, string[] Saes, string? Labels, string[] Transcoders);

    /// <summary>Loads one set's model (with --compute, which applies to every set) and its SAEs, transcoders and labels.</summary>
    static TrackerSet LoadSet(SetSpec spec, List<HookedTransformer> models, string? compute)
    {
        var m = Cli.LoadModel(spec.Model, spec.Tokenizer, compute);
        models.Add(m);
        var tcs = spec.Transcoders.Length == 0 ? null : SaeCommand.LoadSaes(spec.Transcoders);
        // a set given only transcoders tracks the transcoders' features
        var set = new SaeSet(m, spec.Saes.Length > 0 ? SaeCommand.LoadSaes(spec.Saes) : tcs!);
        var labels = spec.Labels is null ? null : FeatureLabels.Load(spec.Labels, set);
        string name = spec.Name ?? Path.GetFileNameWithoutExtension(Path.TrimEndingDirectorySeparator(spec.Model));
        return new TrackerSet { Name = name, Set = set, Labels = labels, ModelSource = spec.Model, Transcoders = tcs };
    }

    static List<SetSpec> ReadConfig(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"config file {path} does not exist");
        string dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        string Resolve(string p) => Path.IsPathRooted(p) ? p : Path.GetFullPath(Path.Combine(dir, p));
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllText(path)); }
        catch (JsonException e) { throw new FormatException($"{path} is not valid JSON: {e.Message}"); }
        using (doc)
        {
            if (!doc.RootElement.TryGetProperty("sets", out var sets) || sets.ValueKind != JsonValueKind.Array || sets.GetArrayLength() == 0)
                throw new FormatException($"{path}: expected {{\"sets\": [{{\"name\", \"model\", \"sae\": [...], \"labels\"}}, ...]}}");
            var list = new List<SetSpec>();
            int i = 0;
            foreach (var s in sets.EnumerateArray())
            {
                string where = $"{path}: sets[{i++}]";
                if (s.ValueKind != JsonValueKind.Object) throw new FormatException($"{where} is not an object");
                string? Str(string key) => s.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;
                string model = Str("model") ?? throw new FormatException($"{where} has no \"model\" (a path)");
                string[] saes = s.TryGetProperty("sae", out var sv) ? sv.ValueKind switch
                {
                    JsonValueKind.String => [sv.GetString()!],
                    JsonValueKind.Array => sv.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? x.GetString()! : throw new FormatException($"{where}.sae holds a non-string")).ToArray(),
                    _ => throw new FormatException($"{where}.sae must be a path or a list of paths"),
                } : [];
                string[] tcs = s.TryGetProperty("transcoders", out var tv) ? tv.ValueKind switch
                {
                    JsonValueKind.String => [tv.GetString()!],
                    JsonValueKind.Array => tv.EnumerateArray().Select(x => x.ValueKind == JsonValueKind.String ? x.GetString()! : throw new FormatException($"{where}.transcoders holds a non-string")).ToArray(),
                    _ => throw new FormatException($"{where}.transcoders must be a path or a list of paths"),
                } : [];
                if (saes.Length == 0 && tcs.Length == 0) throw new FormatException($"{where} has no \"sae\" or \"transcoders\" paths");
                // a model path that does not exist here may be a repo id in the Hugging Face cache
                string modelPath = File.Exists(Resolve(model)) || Directory.Exists(Resolve(model)) ? Resolve(model) : model;
                list.Add(new SetSpec(Str("name"), modelPath, Str("tokenizer") is string t ? Resolve(t) : null, saes.Select(Resolve).ToArray(),
                    Str("labels") is string l ? Resolve(l) : null, tcs.Select(Resolve).ToArray()));
            }
            return list;
        }
    }
}
