using System.CommandLine;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens tokenize: text → comma-separated ids.</summary>
internal static class TokenizeCommand
{
    public static Command Build()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var text = new Option<string>("--text") { Description = "Text to tokenize", Required = true };
        var noBos = Cli.NoBosOption();
        var cmd = new Command("tokenize", "Print the token ids of a text, comma-separated (BOS first unless --no-bos)") { model, tokenizer, text, noBos };
        cmd.SetAction(r =>
        {
            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer));
            Console.Out.WriteLine(string.Join(",", Cli.Encode(m, r.GetValue(text)!, !r.GetValue(noBos))));
            return 0;
        });
        return cmd;
    }
}
