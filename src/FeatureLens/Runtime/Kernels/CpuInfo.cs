using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using System.Text;

namespace FeatureLens.Runtime.Kernels;

/// <summary>
/// What this CPU reports about itself (CPUID, with /sys as a fallback for the caches): vendor, brand, family and model,
/// per-core cache sizes, AVX-512 and AVX512_BF16 support, and whether 512-bit operations run at full width or
/// double-pumped on 256-bit units (Zen 4). The GEMM sizes its blocks from it and the benchmarks print it.
/// </summary>
public sealed record CpuInfo
{
    /// <summary>"AuthenticAMD", "GenuineIntel", … (empty when CPUID is unavailable).</summary>
    public string Vendor { get; init; } = "";
    /// <summary>The brand string (may be generic under a hypervisor, e.g. "AMD EPYC").</summary>
    public string Brand { get; init; } = "";
    /// <summary>Display family and model (extended fields folded in, as lscpu prints them).</summary>
    public int Family { get; init; }
    public int Model { get; init; }
    /// <summary>Per-core data cache sizes in bytes (L3 is the whole shared cache).</summary>
    public int L1dBytes { get; init; }
    public int L2Bytes { get; init; }
    public long L3Bytes { get; init; }
    /// <summary>AVX-512 F usable by .NET (Vector512 accelerated).</summary>
    public bool Avx512 { get; init; }
    /// <summary>AVX512_BF16 (vdpbf16ps): CPUID leaf 7 sub-leaf 1, EAX bit 5.</summary>
    public bool Avx512Bf16 { get; init; }
    /// <summary>512-bit operations issue as two 256-bit halves (AMD Zen 4): the FMA peak equals AVX2's.</summary>
    public bool Avx512DoublePumped { get; init; }
    /// <summary>Logical processors .NET may use.</summary>
    public int Cores { get; init; }

    /// <summary>This machine (detected once).</summary>
    public static CpuInfo Current { get; } = Detect();

    /// <summary>"Zen 4", "Zen 5", … for the AMD families this project meets; otherwise the vendor.</summary>
    public string Kind => Vendor switch
    {
        "AuthenticAMD" when Family == 25 => "Zen 4",
        "AuthenticAMD" when Family == 26 => "Zen 5",
        "AuthenticAMD" when Family == 23 => "Zen 2",
        "AuthenticAMD" => "AMD",
        "GenuineIntel" => "Intel",
        _ => Vendor.Length > 0 ? Vendor : "unknown",
    };

    /// <summary>AVX-512 width as the benchmarks print it.</summary>
    public string Avx512Width => !Avx512 ? "no AVX-512" : Avx512DoublePumped ? "AVX-512 double-pumped (256-bit units)" : "AVX-512 full width";

    /// <summary>One line: brand, kind, family/model, SIMD, caches.</summary>
    public override string ToString() =>
        $"{(Brand.Length > 0 ? Brand : Vendor)} ({Kind}, family {Family} model {Model}), {Cores} cores, {Avx512Width}" +
        $"{(Avx512Bf16 ? ", AVX512_BF16" : "")}, L1d {L1dBytes / 1024} KiB, L2 {L2Bytes / 1024} KiB per core, L3 {L3Bytes / (1024 * 1024)} MiB";

    static CpuInfo Detect()
    {
        bool avx512 = Avx512F.IsSupported && Vector512.IsHardwareAccelerated;
        var info = new CpuInfo { Avx512 = avx512, Cores = Environment.ProcessorCount };
        if (!X86Base.IsSupported) return WithSysCaches(info);

        var (maxLeaf, ebx0, ecx0, edx0) = X86Base.CpuId(0, 0);
        string vendor = Ascii(ebx0, edx0, ecx0);
        var (eax1, _, _, _) = X86Base.CpuId(1, 0);
        int baseFamily = (eax1 >> 8) & 0xF, baseModel = (eax1 >> 4) & 0xF;
        int family = baseFamily == 0xF ? baseFamily + ((eax1 >> 20) & 0xFF) : baseFamily;
        int model = baseFamily is 0x6 or 0xF ? baseModel | ((eax1 >> 12) & 0xF0) : baseModel;
        bool bf16 = maxLeaf >= 7 && avx512 && (X86Base.CpuId(7, 1).Eax & (1 << 5)) != 0;

        var brand = new StringBuilder();
        if ((uint)X86Base.CpuId(unchecked((int)0x80000000), 0).Eax >= 0x80000004)
            for (int leaf = 0; leaf < 3; leaf++)
            {
                var (a, b, c, d) = X86Base.CpuId(unchecked((int)0x80000002) + leaf, 0);
                brand.Append(Ascii(a, b, c, d));
            }

        info = info with
        {
            Vendor = vendor,
            Brand = brand.ToString().Trim('\0', ' '),
            Family = family,
            Model = model,
            Avx512Bf16 = bf16,
            // Zen 4 (family 19h) executes 512-bit FMAs on its 256-bit units; Zen 5 desktop/server parts and
            // Intel's AVX-512 cores have full-width units.
            Avx512DoublePumped = avx512 && vendor == "AuthenticAMD" && family == 25,
        };
        // Deterministic cache parameters: AMD leaf 8000_001Dh, Intel leaf 4 (same register layout).
        int cacheLeaf = vendor == "AuthenticAMD" ? unchecked((int)0x8000001D) : vendor == "GenuineIntel" ? 4 : 0;
        if (cacheLeaf != 0)
        {
            for (int sub = 0; sub < 16; sub++)
            {
                var (a, b, c, _) = X86Base.CpuId(cacheLeaf, sub);
                int type = a & 0x1F;
                if (type == 0) break;
                int level = (a >> 5) & 0x7;
                long bytes = (long)(((b >> 22) & 0x3FF) + 1) * (((b >> 12) & 0x3FF) + 1) * ((b & 0xFFF) + 1) * ((long)(uint)c + 1);
                if (type is 1 or 3)
                {
                    if (level == 1) info = info with { L1dBytes = (int)bytes };
                    else if (level == 2) info = info with { L2Bytes = (int)bytes };
                    else if (level == 3) info = info with { L3Bytes = bytes };
                }
            }
        }
        return WithSysCaches(info);
    }

    /// <summary>Fills cache sizes CPUID did not give from /sys (Linux), then from typical values.</summary>
    static CpuInfo WithSysCaches(CpuInfo info)
    {
        if (info.L1dBytes <= 0 || info.L2Bytes <= 0)
        {
            for (int i = 0; i < 8; i++)
            {
                string dir = $"/sys/devices/system/cpu/cpu0/cache/index{i}";
                try
                {
                    if (!Directory.Exists(dir)) break;
                    string type = File.ReadAllText(Path.Combine(dir, "type")).Trim();
                    int level = int.Parse(File.ReadAllText(Path.Combine(dir, "level")).Trim(), System.Globalization.CultureInfo.InvariantCulture);
                    long bytes = ParseSize(File.ReadAllText(Path.Combine(dir, "size")).Trim());
                    if (type == "Instruction" || bytes <= 0) continue;
                    if (level == 1 && info.L1dBytes <= 0) info = info with { L1dBytes = (int)bytes };
                    else if (level == 2 && info.L2Bytes <= 0) info = info with { L2Bytes = (int)bytes };
                    else if (level == 3 && info.L3Bytes <= 0) info = info with { L3Bytes = bytes };
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { break; }
            }
        }
        return info with
        {
            L1dBytes = info.L1dBytes > 0 ? info.L1dBytes : 32 * 1024,
            L2Bytes = info.L2Bytes > 0 ? info.L2Bytes : 512 * 1024,
            L3Bytes = info.L3Bytes > 0 ? info.L3Bytes : 8L * 1024 * 1024,
        };
    }

    static long ParseSize(string s)
    {
        long mult = 1;
        if (s.EndsWith('K')) { mult = 1024; s = s[..^1]; }
        else if (s.EndsWith('M')) { mult = 1024 * 1024; s = s[..^1]; }
        return long.TryParse(s, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out long v) ? v * mult : 0;
    }

    static string Ascii(params int[] regs)
    {
        var sb = new StringBuilder(regs.Length * 4);
        foreach (int r in regs)
            for (int i = 0; i < 4; i++) sb.Append((char)((r >> (8 * i)) & 0xFF));
        return sb.ToString();
    }
}
