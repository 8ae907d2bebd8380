using System.CommandLine;
using FeatureLens.Runtime.Models;
using FeatureLens.Saes;

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
        Description = "Transcoder folder (or a folder of them): one per layer, reading the MLP's input, writing blocks.L.hook_mlp_out; repeat for several",
        Required = true,
    };
    public readonly Option<bool> NoBos = Cli.NoBosOption();

    public void AddTo(Command cmd)
    {
        foreach (Option o in new Option[] { Model, Tokenizer, Text, Tokens, Transcoders, NoBos }) cmd.Options.Add(o);
    }

    public HookedTransformer LoadModel(ParseResult r) => Cli.LoadModel(r.GetValue(Model)!, r.GetValue(Tokenizer));

    public List<Sae> LoadTranscoders(ParseResult r) => SaeCommand.LoadSaes(r.GetValue(Transcoders)!);

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
