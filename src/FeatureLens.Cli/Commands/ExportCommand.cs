using System.CommandLine;
using FeatureLens.Database;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens export: a feature database's dashboards as SAEDashboard / Neuronpedia batch JSON (see <see cref="NeuronpediaExport"/>).</summary>
internal static class ExportCommand
{
    public static Command Build()
    {
        var db = new Option<string>("--db") { Description = "A feature database (featurelens scan / merge)", Required = true };
        var sae = new Option<string>("--sae") { Description = "The SAE: its hook (blocks.3.hook_resid_post) or short name", Required = true };
        var features = new Option<string?>("--features") { Description = "Feature indices to export, e.g. 1,2,3" };
        var all = new Option<bool>("--all") { Description = "Export every feature of the SAE" };
        var saeSet = new Option<string?>("--sae-set") { Description = "Neuronpedia's SAE set name written into the batch (default: featurelens)" };
        var modelId = new Option<string?>("--model-id") { Description = "Neuronpedia's model id written into the batch (default: the scan's model name)" };
        var output = new Option<string>("--out") { Description = "The JSON file to write (SAEDashboard's Neuronpedia batch format)", Required = true };
        var cmd = new Command("export", "Export features of a feature database as SAEDashboard / Neuronpedia batch JSON (for uploading to Neuronpedia)")
        {
            db, sae, features, all, saeSet, modelId, output,
        };
        cmd.SetAction(r =>
        {
            using var store = FeatureStore.Open(r.GetValue(db)!);
            var s = store.Sae(r.GetValue(sae)!);
            string? list = r.GetValue(features);
            if (list != null == r.GetValue(all)) throw new ArgumentException("give --features 1,2,3 or --all (one of them)");
            var chosen = list != null ? NeuronpediaExport.ParseFeatures(list, s.DSae) : Enumerable.Range(0, s.DSae).ToList();
            var batch = NeuronpediaExport.Build(store, s, chosen, r.GetValue(saeSet), r.GetValue(modelId));
            string path = r.GetValue(output)!;
            NeuronpediaExport.Write(path, batch);
            AnsiConsole.MarkupLine($"exported {chosen.Count} feature(s) of {s.Hook.EscapeMarkup()} → {Path.GetFullPath(path).EscapeMarkup()}");
            return 0;
        });
        return cmd;
    }
}
