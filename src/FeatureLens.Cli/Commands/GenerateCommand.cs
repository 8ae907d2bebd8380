using System.CommandLine;
using FeatureLens.Runtime.Models;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens generate: text from a model, greedy or sampled; prints only the generated text.</summary>
internal static class GenerateCommand
{
    public static Command Build()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var compute = Cli.ComputeOption();
        var prompt = new Option<string>("--prompt") { Description = "Text to continue (default: start from BOS alone)", DefaultValueFactory = _ => "" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "How many tokens to generate at most", Required = true };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy (default); higher = more random", DefaultValueFactory = _ => 0f };
        var topP = new Option<float>("--top-p") { Description = "Nucleus sampling mass in (0, 1]", DefaultValueFactory = _ => 1f };
        var seed = new Option<int>("--seed") { Description = "Random seed for sampling", DefaultValueFactory = _ => 0 };
        var cmd = new Command("generate", "Generate text with a KV cache and print it (stdout holds only the generated text)")
        {
            model, tokenizer, compute, prompt, maxNew, temperature, topP, seed,
        };
        cmd.SetAction(r =>
        {
            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer), r.GetValue(compute));
            var tok = m.Tokenizer ?? throw new InvalidOperationException("generate needs a tokenizer: pass --tokenizer PATH");
            int[] promptIds = Cli.Encode(m, r.GetValue(prompt) ?? "", addBos: true);
            var sampling = new SamplingOptions(r.GetValue(temperature), r.GetValue(topP), r.GetValue(seed));
            var all = new List<int>(promptIds);
            int promptBytes = tok.DecodeBytes(promptIds).Length;
            using var stdout = Console.OpenStandardOutput();
            int written = promptBytes;
            foreach (int id in m.Generate(promptIds, r.GetValue(maxNew), sampling))
            {
                all.Add(id);
                // print the bytes this token completes (decoding is prefix-stable)
                var bytes = tok.DecodeBytes(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(all));
                if (bytes.Length > written) { stdout.Write(bytes, written, bytes.Length - written); written = bytes.Length; }
                stdout.Flush();
            }
            stdout.WriteByte((byte)'\n');
            return 0;
        });
        return cmd;
    }
}
