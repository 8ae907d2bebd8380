using FeatureLens.Bench;

// Benchmark dispatcher: `dotnet run -c Release --project bench/FeatureLens.Bench -- <name> [options]`.
switch (args.Length > 0 ? args[0] : "")
{
    case "gemm": return GemmBench.Run(args[1..]);
    case "probe": return TmpKernelProbe.Run(args[1..]);
    default:
        Console.Error.WriteLine("usage: FeatureLens.Bench gemm [options]");
        return 2;
}
