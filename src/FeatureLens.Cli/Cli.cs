using System.CommandLine;
using FeatureLens.Runtime.Models;

namespace FeatureLens.Cli;

/// <summary>Options and helpers shared by several commands.</summary>
internal static class Cli
{
    public static Option<string> ModelOption() => new("--model")
    {
        Description = "A Hugging Face model folder, a llama2.c .bin checkpoint, or a repo id in the local Hugging Face cache",
        Required = true,
    };

    public static Option<string?> TokenizerOption() => new("--tokenizer")
    {
        Description = "Tokenizer file or folder (default: found beside the model)",
    };

    /// <summary>The required, repeatable --sae option of the commands that analyse a model's SAEs.</summary>
    public static Option<string[]> SaeOption() => new("--sae")
    {
        Description = "SAE folder (or a folder of SAE folders); repeat for several", Required = true, AllowMultipleArgumentsPerToken = false,
    };

    public static Option<bool> NoBosOption() => new("--no-bos")
    {
        Description = "Do not prepend the beginning-of-sequence token to text",
    };

    public static HookedTransformer LoadModel(string model, string? tokenizer) => HookedTransformer.Load(model, tokenizer);

    /// <summary>--compute f32|bf16: how forward passes multiply by the weights (<see cref="ComputeMode"/>).</summary>
    public static Option<string> ComputeOption()
    {
        var o = new Option<string>("--compute")
        {
            Description = "Weight products of the forward pass: f32 (default, float32-exact) or bf16 (bf16 weights with AVX512_BF16 dot products: " +
                "faster, activations rounded to bfloat16 at each product; gradients stay float32)",
            DefaultValueFactory = _ => "f32",
        };
        o.AcceptOnlyFromAmong("f32", "bf16");
        return o;
    }

    /// <summary>Loads a model and sets its compute mode (--compute), failing clearly when bf16 cannot be used with it.</summary>
    public static HookedTransformer LoadModel(string model, string? tokenizer, string? compute)
    {
        var m = LoadModel(model, tokenizer);
        if (compute is null or "f32") return m;
        try
        {
            if (compute != "bf16") throw new ArgumentException($"--compute must be f32 or bf16 (got '{compute}')");
            if (m.ComputeProblem(ComputeMode.BFloat16) is string problem) throw new ArgumentException($"--compute bf16 {problem}");
            m.Compute = ComputeMode.BFloat16;
            return m;
        }
        catch
        {
            m.Dispose();
            throw;
        }
    }

    /// <summary>Encodes text with the model's tokenizer, or fails saying how to give one.</summary>
    public static int[] Encode(HookedTransformer model, string text, bool addBos)
    {
        var tok = model.Tokenizer ?? throw new InvalidOperationException("this model has no tokenizer beside it: pass --tokenizer PATH (or --tokens for raw ids)");
        if (text.Length == 0 && !addBos) throw new ArgumentException("the text is empty and --no-bos was given: there is no token to run");
        var ids = tok.Encode(text, addBos);
        if (ids.Length == 0) throw new ArgumentException("the text encodes to no tokens");
        return ids;
    }

    /// <summary>Parses "1,2,3" into ids.</summary>
    public static int[] ParseTokens(string s)
    {
        var parts = s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) throw new ArgumentException("--tokens is empty: give comma-separated token ids, e.g. 1,2,3");
        return parts.Select(p => int.TryParse(p, out int v) ? v : throw new ArgumentException($"--tokens: '{p}' is not an integer token id")).ToArray();
    }

    /// <summary>The message of an exception chain, without stack traces.</summary>
    public static string Describe(Exception e)
    {
        if (e is AggregateException { InnerExceptions.Count: 1 } a) return Describe(a.InnerExceptions[0]);
        return e.InnerException is null || e.Message.Contains(e.InnerException.Message) ? e.Message : $"{e.Message} ({Describe(e.InnerException)})";
    }
}
