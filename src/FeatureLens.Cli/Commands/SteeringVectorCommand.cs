using System.CommandLine;
using System.Globalization;
using FeatureLens.Steering;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens steering-vector: the mean difference of a hook's activation over contrastive prompt pairs (CAA), as safetensors.</summary>
internal static class SteeringVectorCommand
{
    public static Command Build()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var hook = new Option<string>("--hook") { Description = "The hook whose activation is contrasted, e.g. blocks.2.hook_resid_post", Required = true };
        var positive = new Option<string>("--positive") { Description = "Prompts, one per line (or .jsonl with a \"text\" field)", Required = true };
        var negative = new Option<string>("--negative") { Description = "As many prompts, paired line by line with --positive", Required = true };
        var output = new Option<string>("--out") { Description = "The vector file (.safetensors: tensor \"vector\" with metadata hook, count, position)", Required = true };
        var position = new Option<string>("--position") { Description = "last (default): the prompt's last position; mean: averaged over its positions", DefaultValueFactory = _ => "last" };
        var cmd = new Command("steering-vector", "A steering vector from contrastive prompt pairs: mean over pairs of activation(positive) − activation(negative)")
        {
            model, tokenizer, hook, positive, negative, output, position,
        };
        cmd.SetAction(r =>
        {
            string outPath = r.GetValue(output)!;
            if (!outPath.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) throw new ArgumentException($"--out {outPath}: expected a .safetensors file name");
            string dir = Path.GetDirectoryName(Path.GetFullPath(outPath))!;
            if (!Directory.Exists(dir)) throw new DirectoryNotFoundException($"--out {outPath}: the folder {dir} does not exist");
            var mode = r.GetValue(position)!.Trim().ToLowerInvariant() switch
            {
                "last" => ContrastPosition.Last,
                "mean" => ContrastPosition.Mean,
                var p => throw new ArgumentException($"--position '{p}': expected last or mean"),
            };
            var pos = SteeringVectors.ReadPrompts(r.GetValue(positive)!, "--positive");
            var neg = SteeringVectors.ReadPrompts(r.GetValue(negative)!, "--negative");
            if (pos.Count != neg.Count) throw new ArgumentException($"--positive has {pos.Count} prompts but --negative has {neg.Count}; they are paired line by line");
            string modelPath = r.GetValue(model)!;
            using var m = Cli.LoadModel(modelPath, r.GetValue(tokenizer));
            string h = r.GetValue(hook)!;
            m.CheckHookName(h);
            var pairs = pos.Zip(neg, (p, n) => (Cli.Encode(m, p, addBos: true), Cli.Encode(m, n, addBos: true))).ToList();
            var v = SteeringVectors.Contrastive(m, h, pairs, mode);
            SteeringVectors.Save(outPath, v, h, pairs.Count, mode, Path.GetFileName(Path.TrimEndingDirectorySeparator(modelPath)));
            double norm = Math.Sqrt(v.Sum(x => (double)x * x));
            AnsiConsole.MarkupLine(Markup.Escape($"wrote {outPath}: {pairs.Count} pairs at {h} ({mode.ToString().ToLowerInvariant()} position), width {v.Length}, norm {norm.ToString("G5", CultureInfo.InvariantCulture)}"));
            return 0;
        });
        return cmd;
    }
}
