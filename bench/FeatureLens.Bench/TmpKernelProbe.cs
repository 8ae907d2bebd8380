using System.Diagnostics;
using FeatureLens.Runtime.Kernels;
namespace FeatureLens.Bench;
public static unsafe class TmpKernelProbe
{
    public static int Run(string[] args)
    {
        int kc = 256, panels = int.Parse(args[0]);
        float* a = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(6 * 256 * 4, 64);
        float* b = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(kc * 32 * panels * 4), 64);
        float* c = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc((nuint)(6 * 32 * panels * 4), 64);
        for (int i = 0; i < 6 * 256; i++) a[i] = 0.001f * i;
        for (int i = 0; i < kc * 32 * panels; i++) b[i] = 0.0001f * (i % 1000);
        for (int rep = 0; rep < 5; rep++)
        {
            var p = Process.GetCurrentProcess(); p.Refresh(); var t0 = p.TotalProcessorTime;
            var sw = Stopwatch.StartNew();
            long calls = 0;
            for (int it = 0; it < 20000000 / panels / 16; it++)
                for (int j = 0; j < panels; j++) { GemmMicroKernels.Run(GemmPath.Vector512, 6, a, kc, 1, b + (nint)j * kc * 32, kc, c + j * 32, 32 * panels, 32, true); calls++; }
            p.Refresh();
            double cpu = (p.TotalProcessorTime - t0).TotalSeconds;
            double flop = calls * 2.0 * 6 * 32 * kc;
            Console.WriteLine($"panels {panels}: wall {flop / sw.Elapsed.TotalSeconds / 1e9:F1} cpu {flop / cpu / 1e9:F1} GFLOP/s");
        }
        return 0;
    }
}
