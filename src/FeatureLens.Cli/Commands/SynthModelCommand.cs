using System.CommandLine;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using Spectre.Console;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens synth-model: a Hugging Face folder with deterministic random weights.</summary>
internal static class SynthModelCommand
{
    public static Command Build()
    {
        var arch = new Option<string>("--arch") { Description = "gpt2 or llama", Required = true };
        arch.AcceptOnlyFromAmong("gpt2", "llama");
        var preset = new Option<string>("--preset") { Description = "tiny, gpt2-small or llama-7b", Required = true };
        preset.AcceptOnlyFromAmong("tiny", "gpt2-small", "llama-7b");
        var dtype = new Option<string>("--dtype") { Description = "f32 (default), bf16 or f16", DefaultValueFactory = _ => "f32" };
        dtype.AcceptOnlyFromAmong("f32", "bf16", "f16");
        var seed = new Option<int>("--seed") { Description = "Seed of the random weights", Required = true };
        var output = new Option<string>("--out") { Description = "Output folder", Required = true };
        var cmd = new Command("synth-model", "Write a Hugging Face-format model folder with deterministic random weights (tests, benchmarks)")
        {
            arch, preset, dtype, seed, output,
        };
        cmd.SetAction(r =>
        {
            var a = r.GetValue(arch) == "gpt2" ? Architecture.Gpt2 : Architecture.Llama;
            var d = r.GetValue(dtype) switch { "bf16" => DType.BF16, "f16" => DType.F16, _ => DType.F32 };
            string outDir = r.GetValue(output)!;
            AnsiConsole.Progress().AutoClear(true).Start(ctx =>
            {
                var task = ctx.AddTask($"writing {r.GetValue(preset)} ({r.GetValue(dtype)})", maxValue: 1.0);
                SyntheticModel.Write(outDir, a, r.GetValue(preset)!, d, r.GetValue(seed), new Progress<double>(p => task.Value = p));
                task.Value = 1.0;
            });
            Console.Error.WriteLine($"wrote {outDir}");
            return 0;
        });
        return cmd;
    }
}
