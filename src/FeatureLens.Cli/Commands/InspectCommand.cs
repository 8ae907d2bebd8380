using System.CommandLine;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens inspect: what a model folder, checkpoint or safetensors file holds.</summary>
internal static class InspectCommand
{
    public static Command Build()
    {
        var path = new Argument<string>("path") { Description = "Model folder, llama2.c .bin, .safetensors file, or cached repo id" };
        var cmd = new Command("inspect", "Summarise a model folder or checkpoint: architecture, shapes, dtypes, parameters, tokenizer") { path };
        cmd.SetAction(r =>
        {
            string p = ModelPath.Resolve(r.GetValue(path)!);
            if (File.Exists(p) && p.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase) && !File.Exists(Path.Combine(Path.GetDirectoryName(Path.GetFullPath(p))!, "config.json")))
            {
                using var f = SafetensorsFile.Open(p);
                PrintTensors(p, f.Entries.Select(e => (e.Name, e.DType, e.Shape)).ToList());
                return 0;
            }
            using var m = HookedTransformer.Load(p);
            var c = m.Config;
            var t = new Table().AddColumns("field", "value").Border(TableBorder.Rounded);
            t.AddRow("path", Markup.Escape(p));
            t.AddRow("architecture", c.Architecture.ToString());
            t.AddRow("d_model / layers / heads / kv heads", $"{c.DModel} / {c.NLayers} / {c.NHeads} / {c.NKvHeads}");
            t.AddRow("d_head / d_mlp", $"{c.DHead} / {c.DMlp}");
            t.AddRow("vocab / context", $"{c.VocabSize} / {c.NCtx}");
            t.AddRow("norm eps", c.NormEps.ToString("g"));
            if (c.Rope != RopeLayout.None) t.AddRow("rope", $"{c.Rope}, theta {c.RopeTheta:g}");
            t.AddRow("tied embeddings", c.TiedEmbeddings.ToString());
            var src = m.Weights.Source;
            var tensors = src.Names.Select(n => src.Get(n)).ToList();
            long parameters = tensors.Sum(x => x.ElementCount);
            t.AddRow("tensors", tensors.Count.ToString());
            t.AddRow("parameters", parameters.ToString("N0"));
            t.AddRow("dtypes", string.Join(", ", tensors.GroupBy(x => x.DType).Select(g => $"{g.Key} ×{g.Count()}")));
            t.AddRow("bytes of weights", tensors.Sum(x => x.ElementCount * x.DType.Size()).ToString("N0"));
            t.AddRow("tokenizer", m.Tokenizer is null ? "none found" : $"{m.Tokenizer.GetType().Name}, {m.Tokenizer.VocabSize} tokens, BOS {m.Tokenizer.BosId?.ToString() ?? "-"}, EOS {m.Tokenizer.EosId?.ToString() ?? "-"}");
            t.AddRow("hook points", m.HookPointNames.Count.ToString());
            AnsiConsole.Write(t);
            return 0;
        });
        return cmd;
    }

    static void PrintTensors(string path, List<(string Name, DType DType, int[] Shape)> entries)
    {
        var t = new Table().AddColumns("tensor", "dtype", "shape").Border(TableBorder.Rounded).Title(Markup.Escape(path));
        foreach (var e in entries.OrderBy(e => e.Name, StringComparer.Ordinal))
            t.AddRow(Markup.Escape(e.Name), e.DType.ToString(), "[" + string.Join(", ", e.Shape) + "]");
        AnsiConsole.Write(t);
    }
}
