using System.CommandLine;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens synth-model: a Hugging Face folder with deterministic random weights, at a real model's shape.</summary>
internal static class SynthModelCommand
{
    public static Command Build()
    {
        var arch = new Option<string?>("--arch") { Description = "gpt2 or llama for --preset tiny; for another preset, optional and must be its own (gpt2, llama, gemma2, neox)" };
        arch.AcceptOnlyFromAmong("gpt2", "llama", "gemma2", "neox");
        var preset = new Option<string>("--preset")
        {
            Description = "tiny, gpt2-small, llama-7b (Llama 2), gemma-2-2b, llama-3.2-1b, qwen2.5-0.5b, pythia-160m or mistral-7b",
            Required = true,
        };
        preset.AcceptOnlyFromAmong([.. SyntheticModel.PresetNames]);
        var dtype = new Option<string?>("--dtype") { Description = "f32, bf16 or f16 (default: bf16 for mistral-7b, f32 otherwise)" };
        dtype.AcceptOnlyFromAmong("f32", "bf16", "f16");
        var layers = new Option<int?>("--layers") { Description = "Write only the first N blocks (config.json says N layers); embeddings and unembedding stay whole" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "Copy a real tokenizer beside the weights: a folder with tokenizer.json (+ tokenizer_config.json, special_tokens_map.json), or the tokenizer.json file" };
        var seed = new Option<int>("--seed") { Description = "Seed of the random weights", Required = true };
        var output = new Option<string>("--out") { Description = "Output folder", Required = true };
        var cmd = new Command("synth-model", "Write a Hugging Face-format model folder with deterministic random weights at a real model's shape (tests, benchmarks)")
        {
            arch, preset, dtype, layers, tokenizer, seed, output,
        };
        cmd.SetAction(r =>
        {
            string name = r.GetValue(preset)!;
            var config = Resolve(name, r.GetValue(arch));
            if (r.GetValue(layers) is int n) config = SyntheticModel.Truncate(config, n);
            var d = r.GetValue(dtype) switch { "bf16" => DType.BF16, "f16" => DType.F16, "f32" => DType.F32, _ => SyntheticModel.DefaultDType(name) };
            string outDir = r.GetValue(output)!;
            string? tok = r.GetValue(tokenizer);
            if (tok is not null && !File.Exists(Path.Combine(tok, "tokenizer.json")) && !(File.Exists(tok) && Path.GetFileName(tok) == "tokenizer.json"))
                throw new ArgumentException($"--tokenizer: {Path.GetFullPath(tok)} is not a tokenizer.json file or a folder holding one");
            AnsiConsole.Progress().AutoClear(true).Start(ctx =>
            {
                var task = ctx.AddTask($"writing {name} ({d}, {config.NLayers} layers)", maxValue: 1.0);
                SyntheticModel.Write(outDir, config, d, r.GetValue(seed), new Progress<double>(p => task.Value = p));
                task.Value = 1.0;
            });
            if (tok is not null)
                Console.Error.WriteLine($"copied {string.Join(", ", SyntheticModel.CopyTokenizer(tok, outDir))} from {Path.GetFullPath(tok)}");
            Console.Error.WriteLine($"wrote {outDir}");
            return 0;
        });
        return cmd;
    }

    /// <summary>The preset's config; --arch is required for "tiny" and must match any other preset's architecture.</summary>
    static ModelConfig Resolve(string preset, string? arch)
    {
        Architecture? a = arch switch
        {
            "gpt2" => Architecture.Gpt2,
            "llama" => Architecture.Llama,
            "gemma2" => Architecture.Gemma2,
            "neox" => Architecture.NeoX,
            _ => null,
        };
        if (preset == "tiny")
        {
            if (a is not (Architecture.Gpt2 or Architecture.Llama))
                throw new ArgumentException("--preset tiny needs --arch gpt2 or --arch llama");
            return SyntheticModel.Preset(a.Value, preset);
        }
        var config = SyntheticModel.Preset(preset);
        if (a is Architecture given && given != config.Architecture)
            throw new ArgumentException($"--arch {arch} does not match --preset {preset}, a {config.Architecture} model (leave --arch out)");
        return config;
    }
}
