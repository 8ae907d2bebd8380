using FeatureLens.Runtime.Kernels;

namespace FeatureLens.Tests.Kernels;

/// <summary>CpuInfo against what Linux reports about the same CPU (/proc/cpuinfo, /sys caches).</summary>
public class CpuInfoTests
{
    [Fact]
    public void MatchesProcCpuinfoAndSysCaches()
    {
        var cpu = CpuInfo.Current;
        Assert.True(cpu.L1dBytes >= 16 * 1024, $"L1d {cpu.L1dBytes}");
        Assert.True(cpu.L2Bytes >= cpu.L1dBytes, $"L2 {cpu.L2Bytes} < L1d {cpu.L1dBytes}");
        Assert.True(cpu.Cores == Environment.ProcessorCount);
        if (!File.Exists("/proc/cpuinfo")) return;
        var fields = File.ReadLines("/proc/cpuinfo").TakeWhile(l => l.Length > 0)
            .Select(l => l.Split(':', 2)).Where(p => p.Length == 2).GroupBy(p => p[0].Trim()).ToDictionary(g => g.Key, g => g.First()[1].Trim());
        if (fields.TryGetValue("vendor_id", out var vendor)) Assert.Equal(vendor, cpu.Vendor);
        if (fields.TryGetValue("cpu family", out var family)) Assert.Equal(int.Parse(family, System.Globalization.CultureInfo.InvariantCulture), cpu.Family);
        if (fields.TryGetValue("model", out var model)) Assert.Equal(int.Parse(model, System.Globalization.CultureInfo.InvariantCulture), cpu.Model);
        if (fields.TryGetValue("flags", out var flags))
        {
            var set = flags.Split(' ').ToHashSet();
            Assert.Equal(set.Contains("avx512_bf16") && cpu.Avx512, cpu.Avx512Bf16);
            if (!set.Contains("avx512f")) Assert.False(cpu.Avx512);
        }
        foreach (var (level, expected) in new[] { (1, (long)cpu.L1dBytes), (2, cpu.L2Bytes) })
        {
            for (int i = 0; i < 8; i++)
            {
                string dir = $"/sys/devices/system/cpu/cpu0/cache/index{i}";
                if (!Directory.Exists(dir)) break;
                if (File.ReadAllText(Path.Combine(dir, "type")).Trim() == "Instruction") continue;
                if (File.ReadAllText(Path.Combine(dir, "level")).Trim() != level.ToString(System.Globalization.CultureInfo.InvariantCulture)) continue;
                string size = File.ReadAllText(Path.Combine(dir, "size")).Trim();
                long bytes = long.Parse(size.TrimEnd('K', 'M'), System.Globalization.CultureInfo.InvariantCulture) * (size.EndsWith('M') ? 1024 * 1024 : size.EndsWith('K') ? 1024 : 1);
                Assert.True(bytes == expected, $"L{level}: CPUID gives {expected} bytes, /sys {bytes}");
            }
        }
    }
}
