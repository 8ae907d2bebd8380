using FeatureLens.Database;

namespace FeatureLens.Steering;

/// <summary>Relative steering scales: a latent's maximum activation from a feature database.</summary>
public static class SteeringScales
{
    /// <summary>The maximum activation of latent <paramref name="latent"/> of the SAE at <paramref name="hook"/> recorded in the feature database.</summary>
    public static double MaxActivation(FeatureStore store, string hook, int latent)
    {
        var sae = store.Sae(hook);
        double max = store.Dashboard(sae, latent).Max;
        if (!(max > 0))
            throw new ArgumentException($"--relative: latent {latent} of {hook} never fired in {store.Path} (max activation {max}); give an absolute scale instead");
        return max;
    }

    /// <summary>The suite's feature database for an SAE folder: features.sqlite in the folder or up to two folders above it (suites/NAME/saes/...).</summary>
    public static string? FindSuiteDatabase(string saeDir)
    {
        var dir = new DirectoryInfo(Path.GetFullPath(saeDir));
        for (int i = 0; i < 3 && dir != null; i++, dir = dir.Parent)
        {
            string db = Path.Combine(dir.FullName, "features.sqlite");
            if (File.Exists(db)) return db;
        }
        return null;
    }
}
