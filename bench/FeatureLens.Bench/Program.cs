using FeatureLens.Bench;
using Spectre.Console;

// Benchmark dispatcher: `dotnet run -c Release --project bench/FeatureLens.Bench -- <name> [options]`.
// Every benchmark runs PyTorch (Debian's python3-torch) on the same work in the same run.
AnsiConsole.Profile.Width = Math.Max(AnsiConsole.Profile.Width, 160); // whole rows when piped to a file
switch (args.Length > 0 ? args[0] : "")
{
    case "machine": return BenchSummary.Machine();
    case "summary": return BenchSummary.Print();
    case "gemm": return GemmBench.Run(args[1..]);
    case "forward": return ForwardBench.Run(args[1..]);
    case "llama7b": return Llama7bBench.Run(args[1..]);
    case "sae": return SaeBench.Run(args[1..]);
    case "tracker": return TrackerBench.Run(args[1..]);
    case "attribution": return AttributionBench.Run(args[1..]);
    case "grad7b": return Grad7bBench.Run(args[1..]);
    case "graph": return GraphBench.Run(args[1..]);
    case "scan": return ScanBench.Run(args[1..]);
    case "steering": return SteeringBench.Run(args[1..]);
    case "cluster": return ClusterBench.Run(args[1..]);
    case "forward-arch": return ForwardArchBench.Run(args[1..]);
    case "track-mistral": return TrackMistralBench.Run(args[1..]);
    default:
        Console.Error.WriteLine("usage: FeatureLens.Bench machine | summary | gemm [options] | forward [repeats] | llama7b [repeats] [--no-torch] | sae [--runs N] [--train-runs N] [--no-torch] [--no-train] | tracker [--runs N] | attribution [--runs N] [--no-torch] | grad7b [repeats] [--no-torch] | graph [--case stories|gpt2|all] [--max-feature-nodes N] [--no-torch] | scan [--tokens N] [--runs N] [--partner-tokens N] [--logit-tokens N] [--no-torch] | steering [--runs N] [--tokens N] [--gpt2] | cluster [--layers L] [--latents N] [--d-model C] [--hierarchical] | forward-arch [--presets a,b] [--model DIR] [--layers N] [--batch B] [--seq T] [--repeats R] [--no-torch] | track-mistral [--layers 0,10,20,31] [--latents N] [--k K] [--tokens N] [--tokenizer PATH]");
        return 2;
}
