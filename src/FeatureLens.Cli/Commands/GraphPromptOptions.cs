using System.CommandLine;
using FeatureLens.Connections.Graphs;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;
using FeatureLens.Saes.Formats;

namespace FeatureLens.Cli.Commands;

/// <summary>The options the attribution-graph commands (graph, qk, intervene, feature-links) share: model, prompt, transcoders.</summary>
internal sealed class GraphPromptOptions
{
    public readonly Option<string> Model = Cli.ModelOption();
    public readonly Option<string?> Tokenizer = Cli.TokenizerOption();
    public readonly Option<string?> Text = new("--text") { Description = "The prompt (BOS prepended unless --no-bos)" };
    public readonly Option<string?> Tokens = new("--tokens") { Description = "The prompt as comma-separated token ids" };
    public readonly Option<string[]> Transcoders = new("--transcoders")
    {
        Description = "Transcoder folder (or a folder of them): one per layer, reading the MLP's input, writing blocks.L.hook_mlp_out; repeat for several. " +
                      "Or one circuit-tracer cross-layer transcoder folder (config.yaml with model_kind: cross_layer_transcoder)",
        Required = true,
    };
    public readonly Option<bool> NoBos = Cli.NoBosOption();

    public void AddTo(Command cmd)
    {
        foreach (Option o in new Option[] { Model, Tokenizer, Text, Tokens, Transcoders, NoBos }) cmd.Options.Add(o);
    }

    public HookedTransformer LoadModel(ParseResult r) => Cli.LoadModel(r.GetValue(Model)!, r.GetValue(Tokenizer));

    /// <summary>
    /// The --transcoders: one circuit-tracer cross-layer transcoder folder, or per-layer transcoders (checked against the model
    /// and ordered by layer) as the cross-layer transcoder whose decoders reach only their own layer.
    /// </summary>
    public CrossLayerTranscoder LoadTranscoders(ParseResult r, HookedTransformer m)
    {
        var paths = r.GetValue(Transcoders)!;
        var clt = paths.Where(p => Directory.Exists(p) && CircuitTracerFormat.IsCrossLayerFolder(p)).ToList();
        if (clt.Count == 0) return ReplacementModel.OrderByLayer(m, SaeCommand.LoadSaes(paths));
        if (paths.Length > 1)
            throw new ArgumentException($"--transcoders: '{clt[0]}' is a cross-layer transcoder, which replaces every MLP by itself; give it alone (got {paths.Length} paths)");
        return CircuitTracerFormat.LoadCrossLayer(clt[0]);
    }

    /// <summary>True when --text or --tokens was given.</summary>
    public bool HasPrompt(ParseResult r) => r.GetValue(Text) != null || r.GetValue(Tokens) != null;

    /// <summary>The prompt's ids from --text (encoded, BOS unless --no-bos) or --tokens; exactly one of them.</summary>
    public int[] Prompt(ParseResult r, HookedTransformer m)
    {
        string? text = r.GetValue(Text), ids = r.GetValue(Tokens);
        return text != null && ids != null ? throw new ArgumentException("give either --text or --tokens, not both")
            : ids != null ? Cli.ParseTokens(ids) : text != null ? Cli.Encode(m, text, !r.GetValue(NoBos)) : throw new ArgumentException("give --text TEXT or --tokens IDS");
    }
}
