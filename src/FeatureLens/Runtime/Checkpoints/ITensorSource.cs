using FeatureLens.Runtime.Tensors;

namespace FeatureLens.Runtime.Checkpoints;

/// <summary>
/// Named weights of one checkpoint, whatever its format (safetensors file or shards, llama2.c .bin).
/// Names are Hugging Face names; a llama2.c checkpoint presents its arrays under HF Llama names.
/// </summary>
public interface ITensorSource : IDisposable
{
    /// <summary>The file or folder, for error messages.</summary>
    string Location { get; }
    IEnumerable<string> Names { get; }
    bool Contains(string name);
    /// <summary>A zero-copy view of a float tensor (F32/F16/BF16); throws naming the tensor and file when absent or not a float.</summary>
    WeightTensor Get(string name);
}
