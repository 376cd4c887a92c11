#!/usr/bin/env bash
# Build self-contained copies of peft, test_gpu, test_gpu_infer, bench_gpu, memory_bench, dump_logits and the serving benchmark's tools for a GPU machine that has the
# CUDA toolkit but none of the Debian packages (the lent device machine): OpenBLAS is replaced by
# tests/gpu/cblas_fallback.c, LAPACKE with the reference LAPACK and BLAS it calls (PiSSA's SVD, OLoRA's QR)
# and PCRE2 and libmicrohttpd are linked statically, libgfortran (the reference LAPACK's runtime), libcjson, libgomp and
# libmicrohttpd's GnuTLS (with what it needs) travel in lib/, and
# the shared HF PEFT reference cases are copied next to them (the repository's own travel with the tree).
# Output: $1 (default .carry/gpu).
#   tests/gpu/portable.sh [OUTDIR]      then on the GPU machine, in the repository:
#   OUTDIR/test_gpu tests/fixtures/hf-peft OUTDIR/shared-fixtures; OUTDIR/test_gpu_infer
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-.carry/gpu}
make -s build/peft build/libpeft.a build/tests/gpu/test_gpu.o build/tests/gpu/test_gpu_infer.o build/gpu/bench_gpu.o
rm -rf "$OUT/lib"; mkdir -p "$OUT/lib"  # afresh: ldd below must see the system libraries, not old copies
cc -std=c11 -O2 -fopenmp -c tests/gpu/cblas_fallback.c -o build/cblas_fallback.o
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}
LAPACK=(/usr/lib/x86_64-linux-gnu/liblapacke.a /usr/lib/x86_64-linux-gnu/lapack/liblapack.a /usr/lib/x86_64-linux-gnu/blas/libblas.a -l:libgfortran.so.5)
LIBS=(build/cblas_fallback.o build/libpeft.a "${LAPACK[@]}" -Wl,-Bstatic -lpcre2-8 -Wl,-Bdynamic -l:libcjson.so.1 -lm -fopenmp
      -L"$CUDA_HOME/lib64" -lcublasLt -lcudart_static -lrt -ldl -lpthread -lstdc++
      -Wl,--disable-new-dtags -Wl,-rpath,'$ORIGIN/lib' -Wl,-rpath,"$CUDA_HOME/lib64")  # RPATH: the libraries' own needs too
cc build/cli/*.o "${LIBS[@]}" -Wl,-Bstatic -lmicrohttpd -Wl,-Bdynamic -lgnutls -o "$OUT/peft"
cc build/tests/gpu/test_gpu.o "${LIBS[@]}" -o "$OUT/test_gpu"
cc build/tests/gpu/test_gpu_infer.o "${LIBS[@]}" -o "$OUT/test_gpu_infer"
cc build/gpu/bench_gpu.o "${LIBS[@]}" -o "$OUT/bench_gpu"
# memory_bench, and dump_logits for tools/interop/make_cases.sh (PEFT loads what we write).
for src in bench/memory_bench.c tools/interop/dump_logits.c; do
    t=$(basename "$src" .c)
    cc -std=c11 -g -O2 -fopenmp -D_GNU_SOURCE -Iinclude -Isrc $(for d in src/*/; do printf -- "-I%s " "${d%/}"; done)-Icli -c "$src" -o "build/$t.o"
    cc "build/$t.o" "${LIBS[@]}" -o "$OUT/$t"
done
# The serving benchmark's tools, for `NO_BUILD=1 bash bench/serve/run.sh OUTDIR` (their libraries: OUTDIR/lib).
mkdir -p "$OUT/serve"
for t in make_adapters mixed_bench; do
    cc -std=c11 -g -O2 -fopenmp -D_GNU_SOURCE -Iinclude -Isrc $(for d in src/*/; do printf -- "-I%s " "${d%/}"; done)-c "bench/serve/$t.c" -o "build/serve-$t.o"
    cc "build/serve-$t.o" "${LIBS[@]}" -Wl,-rpath,'$ORIGIN/../lib' -o "$OUT/serve/$t"
done
cc -std=c11 -O2 -D_GNU_SOURCE -pthread bench/serve/loadgen.c -o "$OUT/serve/loadgen"
for l in libcjson.so.1 libgomp.so.1 libgfortran.so.5 libquadmath.so.0; do cp -L "/usr/lib/x86_64-linux-gnu/$l" "$OUT/lib/"; done
# GnuTLS and its libraries (not the C library's own, which the machine has).
ldd "$OUT/peft" | awk '/=> \// {print $3}' | grep -E 'lib(gnutls|p11-kit|idn2|unistring|tasn1|nettle|hogweed|gmp|ffi)\.' |
    while read -r l; do cp -L "$l" "$OUT/lib/"; done
if [ -d ../shared/fixtures/hf-peft ]; then [ ! -d "$OUT/shared-fixtures" ] || chmod -R u+w "$OUT/shared-fixtures"; rm -rf "$OUT/shared-fixtures"; cp -r ../shared/fixtures/hf-peft "$OUT/shared-fixtures"; chmod -R u+w "$OUT/shared-fixtures"; fi
ls -la "$OUT" "$OUT/lib"
