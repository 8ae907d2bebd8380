# bfloat16 GEMM micro-kernels for x86-64 CPUs with AVX512_BF16 (vdpbf16ps), System V calling convention.
#
# Assembled once by scripts/gen-bf16-kernel.sh into Bf16KernelCode.g.cs (the bytes of .text); GemmBf16.cs copies
# them into executable memory and calls them through function pointers. A test re-assembles this file and checks
# that the embedded bytes match it.
#
# Layout of the blob: a table of 8 dwords, entry k (k = 0..7) the offset from the blob start of the kernel for
# mr = k + 1 rows; then the 8 kernels.
#
# Each kernel computes an (mr × 32) float32 tile: C[r, j] (=|+=) Σ_p dot(A pair p of row r, B pair p of column j).
#   rdi  packed A: `pairs` steps of 8 dwords; dword r of step p holds bf16(A[r, 2p]) | bf16(A[r, 2p+1]) << 16
#        (rows ≥ mr are never read)
#   rsi  packed B: `pairs` steps of 32 dwords; dword j of step p holds B[2p, j] | B[2p+1, j] << 16
#   rdx  pairs (≥ 1)
#   rcx  C (float32, row r at rcx + r·ldc·4)
#   r8   ldc, in floats
#   r9   bits 0..31: which of the 32 columns to write (bit j = column j); bit 32: add the tile to C instead of
#        storing it. Columns outside the mask are neither read nor written (masked loads and stores).
# Registers: zmm(2r), zmm(2r+1) accumulate row r (columns 0..15, 16..31); zmm16, zmm17 hold B's step; zmm18 is
# a temporary; k1, k2 the column masks; rax the C row pointer. Only caller-saved registers are used.
# vdpbf16ps adds both products of a pair to the float32 accumulator (products exact, sums rounded to nearest even;
# bf16 denormal inputs count as zero and denormal results are flushed to zero, as the instruction defines).

    .intel_syntax noprefix
    .text

bf16_table:
    .long bf16_mr1 - bf16_table
    .long bf16_mr2 - bf16_table
    .long bf16_mr3 - bf16_table
    .long bf16_mr4 - bf16_table
    .long bf16_mr5 - bf16_table
    .long bf16_mr6 - bf16_table
    .long bf16_mr7 - bf16_table
    .long bf16_mr8 - bf16_table

# ROW mr, r, acc0, acc1, ofs: an instruction pair for row r, emitted only when r < mr.
.macro ZERO_ROW mr, r, acc0, acc1
    .if \r < \mr
    vpxord \acc0, \acc0, \acc0
    vpxord \acc1, \acc1, \acc1
    .endif
.endm

.macro DOT_ROW mr, r, acc0, acc1
    .if \r < \mr
    vdpbf16ps \acc0, zmm16, dword ptr [rdi + 4 * \r]{1to16}
    vdpbf16ps \acc1, zmm17, dword ptr [rdi + 4 * \r]{1to16}
    .endif
.endm

# row r of the tile: add C's row to it when bit 32 of r9 was set (flag in the carry, kept from `bt` since nothing
# in between writes flags), then store under the masks; rax moves to the next row.
.macro STORE_ROW mr, r, acc0, acc1
    .if \r < \mr
    jnc 1f
    vmovups zmm18{k1}{z}, [rax]
    vaddps \acc0, \acc0, zmm18
    vmovups zmm18{k2}{z}, [rax + 64]
    vaddps \acc1, \acc1, zmm18
1:
    vmovups [rax]{k1}, \acc0
    vmovups [rax + 64]{k2}, \acc1
    lea rax, [rax + r8]
    .endif
.endm

.macro KERNEL mr
    .p2align 5
bf16_mr\mr:
    ZERO_ROW \mr, 0, zmm0, zmm1
    ZERO_ROW \mr, 1, zmm2, zmm3
    ZERO_ROW \mr, 2, zmm4, zmm5
    ZERO_ROW \mr, 3, zmm6, zmm7
    ZERO_ROW \mr, 4, zmm8, zmm9
    ZERO_ROW \mr, 5, zmm10, zmm11
    ZERO_ROW \mr, 6, zmm12, zmm13
    ZERO_ROW \mr, 7, zmm14, zmm15
    .p2align 4
.Lloop\mr:
    vmovups zmm16, [rsi]
    vmovups zmm17, [rsi + 64]
    DOT_ROW \mr, 0, zmm0, zmm1
    DOT_ROW \mr, 1, zmm2, zmm3
    DOT_ROW \mr, 2, zmm4, zmm5
    DOT_ROW \mr, 3, zmm6, zmm7
    DOT_ROW \mr, 4, zmm8, zmm9
    DOT_ROW \mr, 5, zmm10, zmm11
    DOT_ROW \mr, 6, zmm12, zmm13
    DOT_ROW \mr, 7, zmm14, zmm15
    add rdi, 32
    sub rsi, -128
    dec rdx
    jnz .Lloop\mr

    shl r8, 2                 # ldc in bytes
    mov rax, rcx
    kmovd k1, r9d             # columns 0..15 from mask bits 0..15
    kshiftrd k2, k1, 16       # columns 16..31 from mask bits 16..31
    bt r9, 32                 # CF = add to C
    STORE_ROW \mr, 0, zmm0, zmm1
    STORE_ROW \mr, 1, zmm2, zmm3
    STORE_ROW \mr, 2, zmm4, zmm5
    STORE_ROW \mr, 3, zmm6, zmm7
    STORE_ROW \mr, 4, zmm8, zmm9
    STORE_ROW \mr, 5, zmm10, zmm11
    STORE_ROW \mr, 6, zmm12, zmm13
    STORE_ROW \mr, 7, zmm14, zmm15
    vzeroupper
    ret
.endm

    KERNEL 1
    KERNEL 2
    KERNEL 3
    KERNEL 4
    KERNEL 5
    KERNEL 6
    KERNEL 7
    KERNEL 8
