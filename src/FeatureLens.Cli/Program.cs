using System.CommandLine;
using FeatureLens.Cli.Commands;
using Spectre.Console;

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
            AttributeCommand.Build(),
            GraphCommand.Build(),
            QkCommand.Build(),
            InterveneCommand.Build(),
            SteerCommand.Build(),
            SteeringVectorCommand.Build(),
            CompareVectorCommand.Build(),
            FeatureLinksCommand.Build(),
            ClusterCommand.Build(),
            PatchCommand.Build(),
            TokenizeCommand.Build(),
            InspectCommand.Build(),
            SynthModelCommand.Build(),
            SaeCommand.Build(),
            TrackCommand.Build(),
            CorrelateCommand.Build(),
            ScanCommand.Build(),
            ScanCommand.Merge(),
            ScanCommand.Feature(),
            ExportCommand.Build(),
            LabelsCommand.Build(),
            DownloadCommand.Build(),
            ServeCommand.Build(),
            DemoCommand.Build(),
        };
        if (Console.IsOutputRedirected)
        {
            // files and pipes get plain text, with tables wide enough not to wrap
            AnsiConsole.Console = AnsiConsole.Create(new AnsiConsoleSettings
            {
                Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors, Interactive = InteractionSupport.No,
                Out = new AnsiConsoleOutput(Console.Out),
            });
            AnsiConsole.Profile.Width = 240;
        }
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
