using System.CommandLine;
using FeatureLens.Cli.Commands;

namespace FeatureLens.Cli;

/// <summary>The featurelens command: batch work over models, SAEs and corpora.</summary>
public static class Program
{
    public static int Main(string[] args)
    {
        var root = new RootCommand("FeatureLens: run transformer models with every TransformerLens hook point, and analyse SAE features.")
        {
            GenerateCommand.Build(),
            RunCommand.Build(),
            TokenizeCommand.Build(),
            InspectCommand.Build(),
            SynthModelCommand.Build(),
        };
        var parsed = root.Parse(args);
        try
        {
            return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            Console.Error.WriteLine($"error: {Cli.Describe(e)}");
            if (Environment.GetEnvironmentVariable("FEATURELENS_DEBUG") == "1") Console.Error.WriteLine(e);
            return 1;
        }
    }
}
