using System.Buffers;
using System.Numerics.Tensors;
using FeatureLens.Runtime.Models;
using FeatureLens.Runtime.Tensors;
using Tensor = FeatureLens.Runtime.Tensors.Tensor;

namespace FeatureLens.Saes;

/// <summary>
/// An SAE spliced into a model's forward pass at its hook point (a transcoder: read at hook_name, written at
/// hook_name_out). It fires <c>{hook}.hook_sae_input</c>, <c>.hook_sae_acts_pre</c>, <c>.hook_sae_acts_post</c>,
/// <c>.hook_sae_recons</c>, <c>.hook_sae_error</c> (with the error term) and <c>.hook_sae_output</c>, each
/// [batch, pos, width], which can be cached or hooked like any other activation.
/// <para>Without the error term the SAE's output replaces the activation. With it, the output is the
/// (possibly hooked) reconstruction plus error = activation − clean reconstruction, so an unhooked run
/// reproduces the unspliced model (to float32 rounding) and edits to latents move it by exactly their decoded change.</para>
/// </summary>
public sealed class SaeSplice : IHookSplice
{
    public Sae Sae { get; }
    public bool UseErrorTerm { get; }
    public string InputHook { get; }
    public string OutputHook { get; }
    public IReadOnlyList<string> HookNames { get; }

    readonly string _in, _pre, _post, _recons, _error, _out;

    /// <param name="sae">The SAE.</param>
    /// <param name="useErrorTerm">Add the reconstruction error back so the model's outputs are unchanged.</param>
    /// <param name="hookName">Overrides the hook the SAE claims (needed when its files do not name one).</param>
    public SaeSplice(Sae sae, bool useErrorTerm = false, string? hookName = null)
    {
        Sae = sae;
        UseErrorTerm = useErrorTerm;
        string where = sae.SourcePath ?? sae.ToString();
        InputHook = !string.IsNullOrEmpty(hookName) ? hookName : sae.Config.HookName;
        if (string.IsNullOrEmpty(InputHook))
            throw new ArgumentException($"SAE {where} does not say which hook it reads (no hook_name in its config); give the hook point explicitly");
        if (sae.Config.IsTranscoder)
        {
            OutputHook = sae.Config.Metadata.HookNameOut ?? "";
            if (string.IsNullOrEmpty(OutputHook))
                throw new ArgumentException($"transcoder {where} does not name the hook it writes (hook_name_out)");
        }
        else OutputHook = InputHook;
        string p = InputHook + ".";
        _in = p + "hook_sae_input"; _pre = p + "hook_sae_acts_pre"; _post = p + "hook_sae_acts_post";
        _recons = p + "hook_sae_recons"; _error = p + "hook_sae_error"; _out = p + "hook_sae_output";
        HookNames = useErrorTerm ? [_in, _pre, _post, _recons, _error, _out] : [_in, _pre, _post, _recons, _out];
    }

    /// <summary>The latents' hook name, e.g. "blocks.3.hook_resid_post.hook_sae_acts_post".</summary>
    public string ActsPostHook => _post;

    public void Validate(HookedTransformer model)
    {
        string where = Sae.SourcePath ?? Sae.ToString();
        CheckFits(model, InputHook, Sae.DIn, "d_in", where);
        CheckFits(model, OutputHook, Sae.DOut, "d_out", where);
    }

    void CheckFits(HookedTransformer model, string hook, int width, string field, string where)
    {
        try { model.CheckHookName(hook); }
        catch (ArgumentException e) { throw new ArgumentException($"SAE {where} reads/writes hook '{hook}', which this model does not have: {e.Message}"); }
        int? w = model.HookWidth(hook);
        if (w is null) throw new ArgumentException($"SAE {where}: hook '{hook}' is an attention pattern [batch, head, q, k]; SAEs cannot be spliced there");
        int? head = Sae.Config.Metadata.HookHeadIndex;
        if (head is int h)
        {
            var heads = model.HookHeads(hook) ?? throw new ArgumentException($"SAE {where} sets hook_head_index {h} but '{hook}' is not a per-head hook");
            if (h < 0 || h >= heads.Heads) throw new ArgumentException($"SAE {where}: hook_head_index {h} is outside the {heads.Heads} heads of '{hook}'");
            if (width != heads.DHead) throw new ArgumentException($"SAE {where} has {field} = {width} but one head of '{hook}' has width {heads.DHead}");
            return;
        }
        if (w != width)
            throw new ArgumentException($"SAE {where} has {field} = {width} but hook '{hook}' of this model has width {w} (d_model {model.Config.DModel}, d_mlp {model.Config.DMlp}); it belongs to a different model or hook");
    }

    public IHookSpliceRun Start() => new Run(this);

    sealed class Run(SaeSplice s) : IHookSpliceRun, IHookSpliceBackward
    {
        float[]? _x;           // (n, d_in) compacted input rows
        int _n;
        // kept for the backward pass when the forward is recorded: the latents (after hook functions) and the normalisation
        float[]? _acts;
        bool _actsCached;
        Sae.InputNorm? _norm;
        float[]? _pendingInput;   // (n, d_in): the gradient the splice adds at its input hook

        public void OnInput(SpliceContext ctx, Tensor act)
        {
            _x = s.Gather(ctx, act, s.Sae.DIn, out _n);
        }

        public void OnOutput(SpliceContext ctx, Tensor act)
        {
            var sae = s.Sae;
            if (_x is null) throw new InvalidOperationException($"transcoder output hook '{s.OutputHook}' fired before its input hook '{s.InputHook}'");
            int n = _n, B = act.Shape[0], T = act.Shape[1];
            var x = _x; _x = null;
            bool anyFunctions = false;

            var x0 = ctx.HasFunctions(s._in) ? (float[])x.Clone() : x;   // the input before hook functions edit it
            var gathered = x;
            x = FireRows(ctx, s._in, x, n, sae.DIn, B, T, ref anyFunctions);
            // (n, width) working rows come from the pool and go back to it when no hook saw them: a forward pass with 12
            // SAEs would otherwise take hundreds of megabytes of fresh memory per pass (each first touch a page fault)
            var saeIn = BufferPool.Rent(checked(n * sae.DIn));
            var norm = sae.Preprocess(x, saeIn, n);
            // (n, d_sae) blocks are hundreds of megabytes: every entry is written, so skip zeroing them; the
            // pre-activations go back to the pool unless the cache kept them
            bool keepPre = ctx.IsActive(s._pre);
            var pre = keepPre ? GC.AllocateUninitializedArray<float>(checked(n * sae.DSae)) : ArrayPool<float>.Shared.Rent(checked(n * sae.DSae));
            var gate = sae.Config.Architecture == SaeArchitecture.Gated ? GC.AllocateUninitializedArray<float>(checked(n * sae.DSae)) : null;
            sae.PreActivations(saeIn, pre.AsSpan(0, n * sae.DSae), n, gate);
            BufferPool.Return(saeIn);
            var firedPre = FireRows(ctx, s._pre, pre, n, sae.DSae, B, T, ref anyFunctions);
            var acts = BufferPool.Rent(checked(n * sae.DSae));
            sae.Activate(firedPre.AsSpan(0, n * sae.DSae), acts, n, gate);
            if (!keepPre) ArrayPool<float>.Shared.Return(pre);
            acts = FireRows(ctx, s._post, acts, n, sae.DSae, B, T, ref anyFunctions);
            if (ctx.Recording) { _acts = acts; _norm = norm; _n = n; _actsCached = ctx.IsActive(s._post); }
            var reconsRows = BufferPool.Rent(checked(n * sae.DOut));
            sae.DecodeRaw(acts, reconsRows, n);
            if (!ctx.Recording && !ctx.IsActive(s._post)) BufferPool.Return(acts);   // nobody else holds it
            var recons = FireRows(ctx, s._recons, reconsRows, n, sae.DOut, B, T, ref anyFunctions);
            var outputRows = BufferPool.Rent(checked(n * sae.DOut));
            var output = outputRows;
            sae.Postprocess(recons, output, n, norm, x);
            if (Private(ctx, s._recons, n, B, T)) BufferPool.Return(reconsRows);

            if (s.UseErrorTerm)
            {
                // error = what the hook holds − the clean (unhooked) reconstruction of the original input
                var actual = s.Gather(ctx, act, sae.DOut, out _);
                float[] clean = output;
                if (anyFunctions)
                {
                    clean = new float[(long)n * sae.DOut];
                    var a0 = new float[(long)n * sae.DSae];
                    var n0 = sae.EncodeRows(x0, a0, n);
                    var r0 = new float[(long)n * sae.DOut];
                    sae.DecodeRaw(a0, r0, n);
                    sae.Postprocess(r0, clean, n, n0, x0);
                }
                var errorRows = BufferPool.Rent(checked(n * sae.DOut));
                TensorPrimitives.Subtract(actual, clean, errorRows);
                BufferPool.Return(actual);
                var error = FireRows(ctx, s._error, errorRows, n, sae.DOut, B, T, ref anyFunctions);
                TensorPrimitives.Add(output, error, output);
                if (Private(ctx, s._error, n, B, T)) BufferPool.Return(errorRows);
            }
            output = FireRows(ctx, s._out, output, n, sae.DOut, B, T, ref anyFunctions);
            s.Scatter(ctx, act, output, sae.DOut);
            if (Private(ctx, s._out, n, B, T)) BufferPool.Return(outputRows);
            if (Private(ctx, s._in, n, B, T)) BufferPool.Return(gathered);
        }

        /// <summary>
        /// True when no hook saw <paramref name="name"/>'s rows: the hook is neither cached nor hooked, or the rows were
        /// expanded to [B, T, width] (a copy) before it fired. Such rows can go back to the pool.
        /// </summary>
        static bool Private(SpliceContext ctx, string name, int n, int B, int T) => !ctx.IsActive(name) || n != B * T;

        /// <summary>
        /// The gradient g of the splice's output: fires the gradients of hook_sae_output, hook_sae_error (= g), hook_sae_recons,
        /// hook_sae_acts_post (W_dec·g for every latent, plus a feature metric's seed), hook_sae_acts_pre and hook_sae_input (the
        /// encoder path: what editing the SAE's input would do, the error being the unedited input's). Without the error term the
        /// replaced activation gets nothing and the input gets the encoder path. With it, the activation gets the error's
        /// gradient (the error is the true activation minus the clean reconstruction, a second path through the encoder), so
        /// the downstream gradient passes as through the identity and the input gets the encoder path minus that second path:
        /// nothing unless a seed or a backward hook changed the latents' gradients.
        /// </summary>
        public void OnOutputBackward(SpliceContext ctx, Tensor grad)
        {
            var sae = s.Sae;
            var acts = _acts ?? throw new InvalidOperationException($"SAE at '{s.OutputHook}': backward without a recorded forward");
            int B = grad.Shape[0], T = grad.Shape[1], n = _n;
            bool edited = false;
            var gRows = s.Gather(ctx, grad, sae.DOut, out _);
            var g = FireRows(ctx, s._out, gRows, n, sae.DOut, B, T, ref edited);
            float[]? gError = null, gErrorRows = null;
            if (s.UseErrorTerm)
            {
                gErrorRows = BufferPool.Rent(checked(n * sae.DOut));
                g.AsSpan(0, n * sae.DOut).CopyTo(gErrorRows);
                gError = FireRows(ctx, s._error, gErrorRows, n, sae.DOut, B, T, ref edited);
            }
            var dReconsRows = BufferPool.Rent(checked(n * sae.DOut));
            sae.PostprocessBackward(g, dReconsRows, n, _norm);
            var dRecons = FireRows(ctx, s._recons, dReconsRows, n, sae.DOut, B, T, ref edited);
            var dActs = BufferPool.Rent(checked(n * sae.DSae));   // every entry is written below
            if (ctx.ActiveLatentGradients != null && ctx.ActiveLatentGradients.TryGetValue(s._post, out var extra))
                sae.DecodeBackward(dRecons, dActs, n, ActiveLatents(ctx, acts, extra, n, B, T));
            else sae.DecodeBackward(dRecons, dActs, n);
            dActs = FireRows(ctx, s._post, dActs, n, sae.DSae, B, T, ref edited);
            // with the error term and nothing edited, the encoder path reaches nothing upstream: compute it only when asked for
            bool needIn = !s.UseErrorTerm || edited || ctx.IsActive(s._in);
            float[] dIn = [];
            if (needIn || ctx.IsActive(s._pre))
            {
                var dPre = new float[(long)n * sae.DSae];
                sae.ActivateBackward(acts, dActs, dPre, n);
                dPre = FireRows(ctx, s._pre, dPre, n, sae.DSae, B, T, ref edited);
                needIn |= edited;
                if (needIn)
                {
                    dIn = new float[(long)n * sae.DIn];
                    sae.EncodeBackward(dPre, dIn, n, _norm);
                    sae.SkipBackward(g, dIn, n);
                    dIn = FireRows(ctx, s._in, dIn, n, sae.DIn, B, T, ref edited);
                }
            }
            if (s.UseErrorTerm)
            {
                s.Scatter(ctx, grad, gError!, sae.DOut);
                // the encoder path minus the clean reconstruction's path of the error's gradient; they cancel exactly
                // unless a seed or a hook edited a gradient in between
                if (edited)
                {
                    var second = EncoderPath(sae, gError!, acts, n);
                    TensorPrimitives.Subtract(dIn, second, second);     // dIn itself may be in the gradient cache
                    _pendingInput = second;
                }
                else _pendingInput = null;
            }
            else
            {
                var zeros = BufferPool.RentZeroed(checked(n * sae.DOut));
                s.Scatter(ctx, grad, zeros, sae.DOut);
                BufferPool.Return(zeros);
                _pendingInput = dIn;
            }
            if (Private(ctx, s._out, n, B, T)) BufferPool.Return(gRows);
            if (gErrorRows != null && Private(ctx, s._error, n, B, T)) BufferPool.Return(gErrorRows);
            if (Private(ctx, s._recons, n, B, T)) BufferPool.Return(dReconsRows);
            // buffers nobody holds go back to the pool: the gradient unless cached, the latents unless the forward cached them
            if (!ctx.IsActive(s._post)) BufferPool.Return(dActs);
            if (!_actsCached) BufferPool.Return(acts);
            _acts = null; _norm = null;
        }

        /// <summary>Per compact row, the latents active in this run's <paramref name="acts"/> or nonzero in <paramref name="extra"/> ([B, T, d_sae]).</summary>
        int[][] ActiveLatents(SpliceContext ctx, float[] acts, Tensor? extra, int n, int B, int T)
        {
            int dSae = s.Sae.DSae;
            if (extra != null && (extra.Length != (long)B * T * dSae))
                throw new ArgumentException($"ActiveLatentGradients['{s._post}'] has shape [{string.Join(",", extra.Shape)}], expected [{B},{T},{dSae}]");
            var lengths = ctx.Lengths.Length == B ? ctx.Lengths : Enumerable.Repeat(T, B).ToArray();
            var rows = new int[n][];
            var list = new List<int>();
            int r = 0;
            for (int b = 0; b < B; b++)
                for (int t = 0; t < Math.Min(lengths[b], T); t++, r++)
                {
                    list.Clear();
                    long o = (long)r * dSae, e = ((long)b * T + t) * dSae;
                    for (int j = 0; j < dSae; j++)
                        if (acts[o + j] != 0 || (extra != null && extra.Data[e + j] != 0)) list.Add(j);
                    rows[r] = [.. list];
                }
            return rows;
        }

        /// <summary>The gradient the SAE's encoder-decoder passes back from a gradient <paramref name="v"/> of its output (no hooks).</summary>
        float[] EncoderPath(Sae sae, float[] v, float[] acts, int n)
        {
            var dRecons = new float[(long)n * sae.DOut];
            sae.PostprocessBackward(v, dRecons, n, _norm);
            var dActs = new float[(long)n * sae.DSae];
            sae.DecodeBackward(dRecons, dActs, n);
            var dPre = new float[(long)n * sae.DSae];
            sae.ActivateBackward(acts, dActs, dPre, n);
            var dIn = new float[(long)n * sae.DIn];
            sae.EncodeBackward(dPre, dIn, n, _norm);
            sae.SkipBackward(v, dIn, n);
            return dIn;
        }

        /// <summary>Adds the input's share (computed by <see cref="OnOutputBackward"/>) to the input hook's gradient.</summary>
        public void OnInputBackward(SpliceContext ctx, Tensor grad)
        {
            var dIn = _pendingInput;
            if (dIn is null) return;      // nothing reaches the input beyond what the output hook passed on
            _pendingInput = null;
            var current = s.Gather(ctx, grad, s.Sae.DIn, out _);
            TensorPrimitives.Add(current, dIn, current);
            s.Scatter(ctx, grad, current, s.Sae.DIn);
            BufferPool.Return(current);
        }

        static float[] FireRows(SpliceContext ctx, string name, float[] rows, int n, int width, int B, int T, ref bool anyFunctions)
        {
            if (!ctx.IsActive(name)) return rows;
            bool compact = n != B * T;
            float[] full = compact ? Expand(ctx.Lengths, rows, width, B, T) : rows;
            // the splice never writes a fired buffer again (it reads it, or keeps it for the backward): no copy for the cache
            ctx.FireOwned(name, full, B, T, width);
            if (!ctx.HasFunctions(name)) return rows;
            anyFunctions = true;
            return compact ? Compact(ctx.Lengths, full, width, B, T) : full;
        }
    }

    /// <summary>(n, width) rows of the valid positions (for a head-indexed SAE, that head's slice).</summary>
    float[] Gather(SpliceContext ctx, Tensor act, int width, out int n)
    {
        int B = act.Shape[0], T = act.Shape[1];
        long inner = act.Length / ((long)B * T);
        var lengths = ctx.Lengths.Length == B ? ctx.Lengths : Enumerable.Repeat(T, B).ToArray();
        n = 0;
        for (int b = 0; b < B; b++) n += Math.Min(lengths[b], T);
        var rows = BufferPool.Rent(checked(n * width));   // every entry is written below
        int? head = Sae.Config.Metadata.HookHeadIndex;
        int r = 0;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Math.Min(lengths[b], T); t++, r++)
            {
                long src = ((long)b * T + t) * inner + (head is int h ? (long)h * width : 0);
                Array.Copy(act.Data, src, rows, (long)r * width, width);
            }
        return rows;
    }

    void Scatter(SpliceContext ctx, Tensor act, float[] rows, int width)
    {
        int B = act.Shape[0], T = act.Shape[1];
        long inner = act.Length / ((long)B * T);
        var lengths = ctx.Lengths.Length == B ? ctx.Lengths : Enumerable.Repeat(T, B).ToArray();
        int? head = Sae.Config.Metadata.HookHeadIndex;
        int r = 0;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Math.Min(lengths[b], T); t++, r++)
            {
                long dst = ((long)b * T + t) * inner + (head is int h ? (long)h * width : 0);
                Array.Copy(rows, (long)r * width, act.Data, dst, width);
            }
    }

    static float[] Expand(int[] lengths, float[] rows, int width, int B, int T)
    {
        var full = new float[(long)B * T * width];
        int r = 0;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Math.Min(lengths[b], T); t++, r++)
                Array.Copy(rows, (long)r * width, full, ((long)b * T + t) * width, width);
        return full;
    }

    static float[] Compact(int[] lengths, float[] full, int width, int B, int T)
    {
        int n = 0;
        for (int b = 0; b < B; b++) n += Math.Min(lengths[b], T);
        var rows = new float[(long)n * width];
        int r = 0;
        for (int b = 0; b < B; b++)
            for (int t = 0; t < Math.Min(lengths[b], T); t++, r++)
                Array.Copy(full, ((long)b * T + t) * width, rows, (long)r * width, width);
        return rows;
    }
}
