using System.CommandLine;
using System.Globalization;
using FeatureLens.Analysis;
using FeatureLens.Clustering;
using FeatureLens.Connections.Graphs;
using FeatureLens.Database;
using FeatureLens.Saes.Formats;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>
/// featurelens cluster: clusters transcoder features by their connection profiles (attribution graphs over a prompt set, or
/// virtual weights), or, with --graph, writes a graph's automatic supernodes from a clusters file.
/// </summary>
internal static class ClusterCommand
{
    public static Command Build()
    {
        var model = new Option<string?>("--model") { Description = "The model (profile mode): a Hugging Face folder, a llama2.c .bin or a repo id" };
        var tokenizer = Cli.TokenizerOption();
        var transcoders = new Option<string[]>("--transcoders") { Description = "Transcoder folders (one per layer) or one cross-layer transcoder folder (profile mode)" };
        var prompts = new Option<string?>("--prompts") { Description = "Profiles from attribution graphs over this prompt set: JSONL, one {\"text\"} or {\"tokens\"} (or a JSON string) per line" };
        var weights = new Option<bool>("--weights") { Description = "Profiles from the weights alone: virtual weights decoder × later encoders through the residual stream" };
        var topPartners = new Option<int>("--top-partners") { Description = "--weights: partners kept per feature and side (largest |virtual weight|)", DefaultValueFactory = _ => 32 };
        var maxNodes = new Option<int>("--max-feature-nodes") { Description = "--prompts: the most feature nodes of each prompt's graph", DefaultValueFactory = _ => 7500 };
        var method = new Option<string>("--method") { Description = "hierarchical (average linkage) or louvain (on the kNN similarity graph)", DefaultValueFactory = _ => "hierarchical" };
        var cut = new Option<string>("--cut") { Description = "Hierarchical cut: a cosine distance (0.6 or d=0.6) or a number of clusters (k=12)", DefaultValueFactory = _ => "0.5" };
        var knn = new Option<int>("--knn") { Description = "Louvain: neighbours per feature in the similarity graph", DefaultValueFactory = _ => 10 };
        var seed = new Option<int>("--seed") { Description = "Louvain: seed of the node order", DefaultValueFactory = _ => 0 };
        var resolution = new Option<double>("--resolution") { Description = "Louvain: modularity resolution", DefaultValueFactory = _ => 1.0 };
        var labels = TrackCommand.LabelsOption();
        var db = new Option<string?>("--db") { Description = "A feature database (featurelens scan): labels (unless --labels) and each feature's top tokens" };
        var noBos = Cli.NoBosOption();
        var graph = new Option<string?>("--graph") { Description = "Supernode mode: the attribution graph JSON to group" };
        var clusters = new Option<string?>("--clusters") { Description = "Supernode mode: the clusters file (featurelens cluster --out)" };
        var layers = new Option<string?>("--layers") { Description = "Supernode mode: the layer range A-B whose feature nodes are grouped" };
        var output = new Option<string>("--out") { Description = "The clusters JSON (profile mode) or the graph JSON with supernodes (supernode mode)", Required = true };
        var cmd = new Command("cluster", "Cluster transcoder features by their connections (attribution graphs over prompts, or virtual weights); with --graph, group a graph's nodes into supernodes by cluster")
        {
            model, tokenizer, transcoders, prompts, weights, topPartners, maxNodes, method, cut, knn, seed, resolution, labels, db, noBos, graph, clusters, layers, output,
        };
        cmd.SetAction(r =>
        {
            string outPath = r.GetValue(output)!;
            string dirOut = Path.GetDirectoryName(Path.GetFullPath(outPath))!;
            if (!Directory.Exists(dirOut)) throw new DirectoryNotFoundException($"--out {outPath}: the folder {dirOut} does not exist");
            if (r.GetValue(graph) is string g)
            {
                string c = r.GetValue(clusters) ?? throw new ArgumentException("--graph needs --clusters FILE (from featurelens cluster --out)");
                var (from, to) = AutoSupernodes.ParseLayers(r.GetValue(layers) ?? throw new ArgumentException("--graph needs --layers A-B"));
                var sn = AutoSupernodes.Apply(g, ClusterFile.Read(c), from, to, outPath);
                AnsiConsole.MarkupLine(Markup.Escape($"{sn.Count} supernode(s) over layers {from}-{to}: " + string.Join("; ", sn.Select(s => $"{s[0]} ({s.Count - 1} nodes)"))));
                AnsiConsole.MarkupLine(Markup.Escape($"wrote {outPath}"));
                return 0;
            }
            string modelPath = r.GetValue(model) ?? throw new ArgumentException("give --model with --transcoders (profile mode), or --graph with --clusters (supernode mode)");
            var tcPaths = r.GetValue(transcoders);
            if (tcPaths == null || tcPaths.Length == 0) throw new ArgumentException("--transcoders is required in profile mode");
            string? promptsPath = r.GetValue(prompts);
            bool fromWeights = r.GetValue(weights);
            if ((promptsPath != null) == fromWeights) throw new ArgumentException("give exactly one of --prompts F.jsonl or --weights");
            var (cutDistance, cutCount) = ClusterOptions.ParseCut(r.GetValue(cut)!);
            var options = new ClusterOptions
            {
                Method = r.GetValue(method)!, CutDistance = cutDistance, CutCount = cutCount, Knn = r.GetValue(knn), Seed = r.GetValue(seed), Resolution = r.GetValue(resolution),
            };
            options.Check();

            using var m = Cli.LoadModel(modelPath, r.GetValue(tokenizer));
            var clt = tcPaths.Any(p => Directory.Exists(p) && CircuitTracerFormat.IsCrossLayerFolder(p))
                ? (tcPaths.Length == 1 ? CircuitTracerFormat.LoadCrossLayer(tcPaths[0]) : throw new ArgumentException("--transcoders: a cross-layer transcoder replaces every MLP by itself; give it alone"))
                : ReplacementModel.OrderByLayer(m, SaeCommand.LoadSaes(tcPaths));
            var lookup = r.GetValue(labels) is string lp ? FeatureLabels.Load(lp, new SaeSet(m, clt.Layers)) : null;
            using var store = r.GetValue(db) is string dbPath ? FeatureStore.Open(dbPath) : null;
            var hooks = clt.Layers.Select(t => t.Config.Metadata.HookName).ToList();

            ProfileSet set = null!;
            ClusterResult result = null!;
            int? nPrompts = null;
            AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
                .Start(p =>
                {
                    if (promptsPath != null)
                    {
                        var list = FeatureLinksCommand.ReadPrompts(promptsPath, m, !r.GetValue(noBos));
                        nPrompts = list.Count;
                        var task = p.AddTask("attribution graphs", maxValue: list.Count);
                        var graphs = new List<AttributionGraph>();
                        for (int i = 0; i < list.Count; i++)
                        {
                            graphs.Add(GraphBuilder.Build(ReplacementModel.Build(m, clt, list[i]), new GraphBuildOptions { MaxFeatureNodes = r.GetValue(maxNodes) }));
                            task.Value = i + 1;
                        }
                        set = ConnectionProfiles.FromGraphs(graphs);
                    }
                    else
                    {
                        var task = p.AddTask("virtual weights (layer pairs)", maxValue: 1);
                        set = ConnectionProfiles.FromWeights(clt, r.GetValue(topPartners), progress: new Progress<(int Done, int Total)>(x => { task.MaxValue = x.Total; task.Value = x.Done; }));
                    }
                    var phase = p.AddTask($"{options.Method} clustering of {set.Count} features", maxValue: 1);
                    result = FeatureClustering.Run(set, options, new Progress<ClusterProgress>(x => { phase.Description = $"{options.Method}: {x.Phase}"; phase.MaxValue = Math.Max(1, x.Total); phase.Value = x.Done; }));
                    phase.Value = phase.MaxValue;
                });

            string? Label(ClusterFeature f) => lookup != null ? lookup.Get(hooks[f.Layer], f.Latent)?.Label
                : store != null && TrySae(store, hooks[f.Layer]) is { } s ? store.LabelOf(s, f.Latent)?.Label : null;
            IReadOnlyList<string>? Tokens(ClusterFeature f) => store != null && TrySae(store, hooks[f.Layer]) is { } s
                ? [.. store.Dashboard(s, f.Latent).Top.Where(e => e.Pos < e.Text.Length).Select(e => e.Text[e.Pos]).Distinct().Take(5)]
                : null;
            ClusterFile.Write(outPath, result, new ClusterAnnotations
            {
                Transcoders = hooks, DSae = [.. clt.Layers.Select(t => t.DSae)], Label = Label, TopTokens = store != null ? Tokens : null, Prompts = nPrompts,
            });
            var data = ClusterFile.Read(outPath);
            var t = new Table().Border(TableBorder.Rounded).Title(Markup.Escape($"{result.ClusterCount} clusters of {set.Count} features ({set.Source} profiles, {options.Method})"))
                .AddColumns("cluster", "size", "members");
            var members = Enumerable.Range(0, result.ClusterCount).Select(c => Enumerable.Range(0, set.Count).Where(i => result.Assignment[i] == c).ToList()).ToList();
            foreach (var (c, mem) in members.Select((x, i) => (i, x)).Take(20))
                t.AddRow(Markup.Escape(data.ClusterNames[c]), mem.Count.ToString(CultureInfo.InvariantCulture),
                    Markup.Escape(string.Join(", ", mem.Take(8).Select(i => set.Features[i].ToString())) + (mem.Count > 8 ? ", …" : "")));
            AnsiConsole.Write(t);
            var score = FeatureClustering.LabelScore(result.Assignment, [.. set.Features.Select(Label)]);
            if (score.Labelled > 0)
                AnsiConsole.MarkupLine(Markup.Escape($"label score over {score.Labelled} labelled features: purity {score.Purity:F3}, NMI {score.Nmi:F3} (label word = the label's first word)"));
            AnsiConsole.MarkupLine(Markup.Escape($"wrote {outPath}"));
            return 0;
        });
        return cmd;
    }

    static StoreSae? TrySae(FeatureStore store, string hook) => store.Saes.FirstOrDefault(s => s.Hook == hook);
}
