using System.CommandLine;
using System.Runtime.InteropServices;
using FeatureLens.Connections;
using FeatureLens.Runtime.Checkpoints;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using FeatureLens.Saes;

namespace FeatureLens.Cli.Commands;

/// <summary>featurelens run: one forward pass, activations of the chosen hooks written to safetensors.</summary>
internal static class RunCommand
{
    public static Command Build()
    {
        var model = Cli.ModelOption();
        var tokenizer = Cli.TokenizerOption();
        var compute = Cli.ComputeOption();
        var text = new Option<string?>("--text") { Description = "Text to run (BOS is prepended unless --no-bos)" };
        var tokens = new Option<string?>("--tokens") { Description = "Comma-separated token ids to run, e.g. 1,403,407" };
        var hooks = new Option<string?>("--hooks") { Description = "Comma-separated hook-name globs to save, e.g. 'blocks.*.hook_resid_post' (default: none)" };
        var logits = new Option<bool>("--logits") { Description = "Also save the logits [pos, vocab]" };
        var noBos = Cli.NoBosOption();
        var output = new Option<string>("--out") { Description = "Output .safetensors file", Required = true };
        var saes = new Option<string[]>("--sae") { Description = "Splice this SAE (folder, or a folder of SAE folders) at its hook; repeat for several. Its hooks ({hook}.hook_sae_acts_post, ...) can be saved with --hooks" };
        var errorTerm = new Option<bool>("--sae-error-term") { Description = "Add the SAEs' reconstruction error back, so the model's outputs are unchanged" };
        var grad = new Option<string?>("--grad")
        {
            Description = "Also save the gradient of this metric at each saved hook (NAME.grad, same shape) and the metric's value (metric): " +
                "logit:T, logit-diff:T1,T2, logprob:T, prob:T, loss or feature:HOOK:I, with an optional @POS (default @-1)",
        };
        var cmd = new Command("run", "Run the model on one sequence and save hook activations (shape [pos, ...]), tokens and optionally logits")
        {
            model, tokenizer, compute, text, tokens, hooks, logits, noBos, output, saes, errorTerm, grad,
        };
        cmd.SetAction(r =>
        {
            string? textValue = r.GetValue(text), tokenValue = r.GetValue(tokens);
            if ((textValue is null) == (tokenValue is null)) throw new ArgumentException("give exactly one of --text or --tokens");
            if (r.GetValue(compute) == "bf16" && r.GetValue(grad) != null)
                throw new ArgumentException("--compute bf16 applies to forward passes only: --grad runs its forward and backward in float32; drop one of the two");
            using var m = Cli.LoadModel(r.GetValue(model)!, r.GetValue(tokenizer), r.GetValue(compute));
            var saePaths = r.GetValue(saes) ?? [];
            if (saePaths.Length > 0)
                foreach (var sae in SaeCommand.LoadSaes(saePaths)) m.AddSplice(new SaeSplice(sae, r.GetValue(errorTerm)));
            int[] ids = tokenValue != null ? Cli.ParseTokens(tokenValue) : Cli.Encode(m, textValue!, !r.GetValue(noBos));
            string? globs = r.GetValue(hooks);
            var filter = string.IsNullOrWhiteSpace(globs) ? (_ => false) : HookNames.Glob(globs);
            // includes the spliced SAEs' hooks, and circuit-tracer's extra mlp.hook_in / mlp.hook_out when a glob names them
            var selected = m.HookPointNames.Concat(HookNames.ExtraFor(m.Config)).Where(filter).ToList();
            if (!string.IsNullOrWhiteSpace(globs) && selected.Count == 0)
                throw new ArgumentException($"--hooks '{globs}' matches no hook point of this model (e.g. {string.Join(", ", m.HookPointNames.Take(4))})");
            string? metricText = r.GetValue(grad);
            var writer = new SafetensorsWriter();
            Tensor logitTensor;
            if (metricText != null)
            {
                var metric = Metric.Parse(metricText);
                var result = m.RunWithGradients([ids], metric, new GradientOptions { CacheFilter = filter });
                logitTensor = result.Logits;
                foreach (string name in selected)
                {
                    writer.Add(name, result.Activations.Sequence(name, 0));
                    writer.Add(name + ".grad", result.Gradients.Sequence(name, 0));
                }
                writer.Add("metric", new Tensor([1], [result.Value]));
                Console.Error.WriteLine($"{metric} = {result.Value:G6}");
            }
            else
            {
                (logitTensor, var cache) = m.RunWithCache([ids], filter);
                foreach (string name in selected) writer.Add(name, cache.Sequence(name, 0));
            }
            if (r.GetValue(logits)) writer.Add("logits", logitTensor.Reshape(ids.Length, m.Config.VocabSize));
            long[] ids64 = ids.Select(i => (long)i).ToArray();
            writer.Add("tokens", DType.I64, [ids.Length], MemoryMarshal.AsBytes(ids64.AsSpan()).ToArray());
            string outPath = r.GetValue(output)!;
            writer.Write(outPath, new Dictionary<string, string> { ["format"] = "pt", ["producer"] = "featurelens run" });
            Console.Error.WriteLine($"wrote {selected.Count} hook tensor(s){(metricText != null ? " with gradients" : "")}{(r.GetValue(logits) ? " + logits" : "")} + tokens for {ids.Length} positions to {outPath}");
            return 0;
        });
        return cmd;
    }
}
