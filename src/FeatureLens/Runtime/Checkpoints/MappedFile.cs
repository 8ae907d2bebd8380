using System.IO.MemoryMappedFiles;

namespace FeatureLens.Runtime.Checkpoints;

/// <summary>A whole file mapped read-only into memory; the one place checkpoints are mapped.</summary>
internal sealed unsafe class MappedFile : IDisposable
{
    readonly MemoryMappedFile _map;
    readonly MemoryMappedViewAccessor _view;
    byte* _base;

    public string Path { get; }
    public long Length { get; }

    /// <summary>First byte of the file; throws once disposed.</summary>
    public byte* Pointer => _base != null ? _base : throw new ObjectDisposedException(Path);

    MappedFile(string path, long length, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* basePtr)
    {
        Path = path; Length = length; _map = map; _view = view; _base = basePtr;
    }

    /// <summary>Maps an opened stream (taking ownership of it).</summary>
    public static MappedFile Map(string path, FileStream stream)
    {
        long length = stream.Length;
        MemoryMappedFile? map = null;
        MemoryMappedViewAccessor? view = null;
        try
        {
            map = MemoryMappedFile.CreateFromFile(stream, null, 0, MemoryMappedFileAccess.Read, HandleInheritability.None, leaveOpen: false);
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            return new MappedFile(path, length, map, view, p + view.PointerOffset);
        }
        catch
        {
            view?.Dispose();
            if (map is not null) map.Dispose(); else stream.Dispose();
            throw;
        }
    }

    /// <summary>Opens a file for shared reading (callers check its length before mapping).</summary>
    public static FileStream OpenRead(string path) => new(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);

    public void Dispose()
    {
        if (_base != null)
        {
            _base = null;
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
        }
        _view.Dispose();
        _map.Dispose();
    }
}
