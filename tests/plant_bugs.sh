#!/usr/bin/env bash
# Tests that can fail: copies kernels/ to a scratch directory, plants one known bug at a time with a
# small substitution, builds the emulated CUDA library from the copy (only the changed sources are
# recompiled; the rest and the shim come from BUILD/emu) and runs build/tests/test_cuda_emu --ops
# against it. Each bug must make the test fail. Prints one line per bug (caught / NOT caught) and
# "N passed, N failed" last. Usage: tests/plant_bugs.sh [BUILD]   (make check-planted);
# PLANT_ONLY=TEXT plants only the bugs whose name contains TEXT; PLANT_ARGS="--only WORD" narrows each
# run to the checks named WORD (quicker while writing a plant; the full --ops run is the real check).
set -u
cd "$(dirname "$0")/.."
B=${1:-${KVS_BUILD:-build}}
TEST=$B/tests/test_cuda_emu
EMU=$B/emu
W=$(mktemp -d /tmp/kvscope-planted.XXXXXX)
trap 'rm -rf "$W"' EXIT
pass=0; fail=0

if [ ! -x "$TEST" ] || [ ! -f "$EMU/libkvscope_cuda_emu.so" ]; then
    echo "plant_bugs: build first (make BUILD=$B tests)"; echo "0 passed, 1 failed"; exit 1
fi
CXX=$(make -s --no-print-directory BUILD="$B" emu-cxx) || { echo "0 passed, 1 failed"; exit 1; }
{ read -r LINK; read -r LIBS; } < <(make -s --no-print-directory BUILD="$B" emu-link)

# the unpatched library must pass, or nothing below means anything
# shellcheck disable=SC2086
if ! KVS_CUDA_EMU_LIB=$PWD/$EMU/libkvscope_cuda_emu.so "$TEST" --ops ${PLANT_ARGS:-} >"$W/baseline.log" 2>&1; then
    echo "plant_bugs: the unpatched emulated library fails its tests:"
    grep FAIL "$W/baseline.log" | head -5
    echo "0 passed, 1 failed"; exit 1
fi

# plant NAME FILE PERL-SUBSTITUTION: one bug in a fresh copy, built and tested
plant() {
    local name=$1 file=$2 subst=$3
    case "$name" in *"${PLANT_ONLY:-}"*) ;; *) return ;; esac
    local d=$W/$(echo "$name" | tr -c 'a-z0-9\n' '_')
    rm -rf "$d"; mkdir -p "$d/obj"
    cp -r kernels "$d/kernels"
    perl -0pi -e "$subst" "$d/kernels/$file"
    if cmp -s "kernels/$file" "$d/kernels/$file"; then
        echo "FAIL $name: the patch did not apply to kernels/$file (update tests/plant_bugs.sh)"
        fail=$((fail+1)); return
    fi
    local objs="" f o
    for f in kernels/*.cu; do
        o=$(basename "$f" .cu).o
        # a changed header recompiles everything, a changed .cu only itself
        if [ "$file" = "$(basename "$f")" ] || [ "${file##*.}" != cu ]; then
            if ! $CXX -I"$d/kernels" -c "$d/$f" -o "$d/obj/$o" 2>"$d/build.log"; then
                echo "FAIL $name: the planted copy does not compile:"; head -5 "$d/build.log"
                fail=$((fail+1)); return
            fi
            objs="$objs $d/obj/$o"
        else
            objs="$objs $EMU/kernels/$o"
        fi
    done
    # shellcheck disable=SC2086
    if ! $LINK -o "$d/lib.so" $objs "$EMU"/cuda_emu/*.o $LIBS 2>"$d/link.log"; then
        echo "FAIL $name: link failed:"; head -5 "$d/link.log"; fail=$((fail+1)); return
    fi
    # shellcheck disable=SC2086
    KVS_CUDA_EMU_LIB=$d/lib.so timeout 300 "$TEST" --ops ${PLANT_ARGS:-} >"$d/test.log" 2>&1
    local rc=$?
    local why
    why=$(grep -E '^(FAIL|cuda-emu:)' "$d/test.log" | head -n 1 | cut -c1-150)
    if [ $rc -ne 0 ]; then
        echo "caught:     $name  ($(grep -cE '^FAIL' "$d/test.log") failed checks; first: ${why:-exit $rc})"
        pass=$((pass+1))
    else
        echo "NOT caught: $name"
        fail=$((fail+1))
    fi
}

plant "softmax without the max subtraction" norm.cu 's/expf\(row\[i\] - m\)/expf(row[i])/'
plant "wrong output offset in the query-chunk loop" attention.cu \
    's/a->out \+ \(size_t\)t0 \* dq\)/a->out + (size_t)t0 * a->head_dim)/'
plant "last token of the cache dropped" attention.cu 's/if \(j >= n\) return;\n(\s*)float \*k = ks\[warp\];/if (j >= n - 1) return;\n$1float *k = ks[warp];/'
plant "GQA head->KV-head map shifted" attention.cu \
    's/int g = h \/ \(n_head \/ n_head_kv\);/int g = (h + 1) % n_head \/ (n_head \/ n_head_kv);/'
plant "bf16 conversion off by a factor" cuda_ctx.cu 's/__float2bfloat16_rn\(src\[i\]\)/__float2bfloat16_rn(src[i] * 2.0f)/'
plant "empty cache leaves the output unwritten" attention.cu \
    's/if \(a->n == 0\) \{\s*CUDA_CHECK\(cudaMemsetAsync\(a->out, 0, [^;]*;/if (a->n == 0) {/'
plant "RoPE pairing swapped (interleaved <-> neox)" rope.cu 's/int a = neox \? i : 2 \* i, b = neox \? i \+ half : 2 \* i \+ 1;/int a = neox ? 2 * i : i, b = neox ? 2 * i + 1 : i + half;/'
plant "missing __syncthreads before the block sum reads the partials" internal.cuh \
    's/(if \(lane == 0\) part\[warp\] = v;\n)\s*__syncthreads\(\);\n(\s*v = lane < nw \? part\[lane\] : 0\.0f;)/$1$2/'

# the K/V cache pool on the device (kv_pool.cu, the mass in attention.cu)
plant "kv pool: store writes the keys into V" kv_pool.cu 's/v\[off \+ i\] = __float2half_rn\(vs\[i\]\)/v[off + i] = __float2half_rn(ks[i])/'
plant "kv pool: store ignores the row offset" kv_pool.cu 's/size_t off = \(size_t\)row0 \* dkv;/size_t off = 0;/'
plant "kv pool: compaction gathers the wrong rows" kv_pool.cu 's/size_t from = \(size_t\)src\[r\] \* dkv/size_t from = (size_t)r * dkv/'
plant "kv pool: compaction leaves the positions behind" kv_pool.cu 's/gp\[r\] = pos\[src\[r\]\]/gp[r] = pos[r]/'
plant "kv pool: attention mass restarts at every query chunk" attention.cu 's/float s = mass\[j\];/float s = 0.0f;/'
plant "kv pool: attention mass not zeroed first" attention.cu 's/if \(a->mass && a->n\) CUDA_CHECK\(cudaMemsetAsync\(a->mass, [^;]*;//'

# CommonKV's latent segments on the device (latent_pool.cu)
plant "latent pool: store ignores the row offset" latent_pool.cu 's/size_t off = \(size_t\)row0 \* width;/size_t off = 0;/'
plant "latent pool: merge leaves out the group's last layer" latent_pool.cu \
    's/for \(int l = 0; l < a\.n_arr; l\+\+\)/for (int l = 0; l < a.n_arr - 1; l++)/'
plant "latent pool: merged rows overwrite the shared segment's first rows" latent_pool.cu \
    's/size_t to = \(size_t\)\(a\.row0 \+ r\) \* a\.width;/size_t to = (size_t)r * a.width;/'
plant "latent pool: compaction moves only the first layer's rows" latent_pool.cu \
    's/for \(int a = 0; a < n_arr; a\+\+\) \{/for (int a = 0; a < 1; a++) {/'
# attention over the latent segments' rows (attn_latent and lat_attend's prefill: the GEMM path and
# the gather in latent_attend.cu)
plant "latent attention: RoPE at the row index instead of the stored position" latent_attend.cu \
    's/sincos\(\(double\)pos\[jg \/ n_kv\] \*/sincos((double)(jg \/ n_kv) */'
plant "latent attention: mass counts every query, not the window" latent_attend.cu \
    's/int64_t r0 = t0 >= mass_from \? 0 : [^;]*;/int64_t r0 = 0;/'
plant "latent attention: shared rows gathered over the private ones" latent_attend.cu \
    's/C\[\(int64_t\)off \* rank \+ i\] = /C[i] = /'
plant "prefill: mask hides a row at the query's own position" latent_attend.cu \
    's/float v = pos\[j\] <= qp \?/float v = pos[j] < qp ?/'
plant "prefill: b_k of KV head 0 for every head" latent_attend.cu \
    's/if \(kb\) x0 \+= kb\[g \* d \+ ia\], x1 \+= kb\[g \* d \+ ib\];/if (kb) x0 += kb[ia], x1 += kb[ib];/'
plant "prefill: b_v of KV head 0 for every head" latent_attend.cu 's/out\[e\] \+= vb\[g \* d \+ i\];/out[e] += vb[i];/'
plant "prefill: b_v added where the query saw no row" latent_attend.cu \
    's/if \(seen\[th \/ n_head\]\) out\[e\]/out[e]/'
plant "prefill: score batches take the queries one head apart, not one KV group" latent_attend.cu \
    's/dq, \(long long\)gq \* d, &zero,/dq, (long long)d, &zero,/'
plant "prefill: output batches step B_v by a row, not by a KV head" latent_attend.cu \
    's/a->bv, r,\n(\s*)\(long long\)d \* r,/a->bv, r,\n$1(long long)r,/'
plant "prefill: mass window counted from each chunk's start" latent_attend.cu \
    's/\(int64_t\)\(mass_from - t0\) \* a->n_head;/(int64_t)mass_from * a->n_head;/'
# the element-wise steps of a device-resident token (embedding.cu, elementwise.cu)
plant "embedding reads a neighbouring token's row" embedding.cu \
    's/const __half \*row = table \+ \(size_t\)tokens\[blockIdx.x\] \* cols;/const __half *row = table + (size_t)(tokens[blockIdx.x] ^ 1) * cols;/'
plant "bias indexed by row instead of column" elementwise.cu 's/y\[i\] \+= b\[i % n\]/y[i] += b[i \/ n]/'
plant "SwiGLU sigmoid with the wrong sign" elementwise.cu 's/g\[i\] = v \/ \(1\.0f \+ expf\(-v\)\) \* u\[i\];/g[i] = v \/ (1.0f + expf(v)) * u[i];/'
plant "residual add drops the last element" elementwise.cu 's/i < n; i \+= stride\) x\[i\] \+= y\[i\];/i < n - 1; i += stride) x[i] += y[i];/'
# the card: its used/total memory and the fp16 activation overflow count (cuda_ctx.cu, matmul.cu)
plant "device memory: used and total swapped" cuda_ctx.cu \
    's/\*used = \(uint64_t\)\(t - f\);\n(\s*)\*total = \(uint64_t\)t;/*used = (uint64_t)t;\n$1*total = (uint64_t)(t - f);/'
plant "fp16 activation overflow: counter never incremented" matmul.cu 's/if \(over\) atomicAdd\(clamped, over\);//'
plant "fp16 activation overflow: counted but not clamped (inf)" matmul.cu 's/v = v > 0\.0f \? 65504\.0f : -65504\.0f;//'
# MiniCache's layer pairs on the device (minicache.cu)
plant "minicache: SLERP with t and 1-t swapped" minicache.cu \
    's/wa = sin\(\(1 - t\) \* om\) \/ so;\n(\s*)wb = sin\(t \* om\) \/ so;/wa = sin(t * om) \/ so;\n$1wb = sin((1 - t) * om) \/ so;/'
plant "minicache: a layer's norm taken from its partner" minicache.cu \
    's/nr\[\(2 \* kv\) \* nkv \+ h\] = __float2half_rn\(na\);/nr[(2 * kv) * nkv + h] = __float2half_rn(nb);/'
plant "minicache: retained tokens merged anyway" minicache.cu 's/int r = a\.keep \+ j;/int r = j;/'

# lat_attend's fused decode kernel (latent_attend.cu)
plant "fused decode: online softmax keeps the accumulator when the max grows" latent_attend.cu \
    's/float v = \*ap \* la_alpha\[qi\];/float v = *ap;/'
plant "fused decode: split combine ignores the last split's max" latent_attend.cu \
    's/la_w\[s\] = ms == -INFINITY \? 0\.0f : expf\(ms - M\);/la_w[s] = ms == -INFINITY ? 0.0f : s == splits - 1 ? 1.0f : expf(ms - M);/'
plant "fused decode: RoPE at the tile's first position" latent_attend.cu \
    's/sincos\(\(double\)la_pos\[rr\] \*/sincos((double)la_pos[0] */'
plant "fused decode: the last tile's tail rows dropped" latent_attend.cu \
    's/if \(j < jend\) \{/if (j0 + LA_ROWS <= jend) {/'
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]


# the quantized K/V pool on the device (kv_quant.cu) and the packed codec it uses (quant_codec.cuh)
plant "kv quant: a code packed at the wrong bit offset" quant_codec.cuh \
    's/uint32_t bit = i \* bits;(\s+codes\[bit >> 3\] \|=)/uint32_t bit = ((i + 1) % n) * bits;$1/'
plant "kv quant: the minimum and scale swapped in the header" quant_codec.cuh \
    's/memcpy\(hdr, &hs, 2\);(\s+)memcpy\(hdr \+ 2, &hmin, 2\);/memcpy(hdr, &hmin, 2);$1memcpy(hdr + 2, &hs, 2);/'
plant "kv quant: the last token of a block dropped on compaction" kv_quant.cu \
    's/\(uint32_t\)kept, \(uint32_t\)dkv, \(uint32_t\)ch/(uint32_t)(kept - 1), (uint32_t)dkv, (uint32_t)ch/'
plant "kv quant: the eviction score's pooling window off by one" kv_quant.cu \
    's/hi = i \+ h >= n_ctx \? n_ctx - 1 : i \+ h;/hi = i + h - 1 >= n_ctx ? n_ctx - 1 : i + h - 1;/'

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]


# packed (quantized) CommonKV latent rows in device memory (kernels/latent_pool.cu's lat_q* paths)
plant "packed latents: device encoder writes the minimum where the scale goes" quant_codec.cuh \
    's/memcpy\(hdr, &hs, 2\);\n    memcpy\(hdr \+ 2, &hmin, 2\);/memcpy(hdr, &hmin, 2);\n    memcpy(hdr + 2, &hs, 2);/'
plant "packed latents: merge encodes before it sums" latent_pool.cu \
    's/(\n    KVS_LAUNCH\(k_lat_qsum,[^;]*;\n    KVS_LAUNCH_CHECK\(\);)(\n    KVS_LAUNCH\(k_lat_qstore,[^;]*;\n    KVS_LAUNCH_CHECK\(\);)/$2$1/'
plant "packed latents: compaction copies rows at the fp16 row size" latent_pool.cu \
    's/int rb = f->row_bytes;/int rb = 2 * f->width;/'

# lat-cpu: the cosine scores that drive merging (lat_cosine in latent_pool.cu)
plant "latent cosine: without the norm of one side" latent_pool.cu \
    's/return aa > 0 && bb > 0 \? ab \/ sqrt\(aa \* bb\) : 0\.0;/return aa > 0 \&\& bb > 0 ? ab \/ sqrt(aa) : 0.0;/'
plant "latent cosine: adjacent mean stops one pair short" latent_pool.cu \
    's/for \(int l = 0; l \+ 1 < a\.n_arr; l\+\+\)/for (int l = 0; l + 2 < a.n_arr; l++)/'

# plant_cpu NAME FILE PERL-SUBSTITUTION: one bug in a copy of a CPU twin (engine/cpu/FILE), the
# engine's live CPU code. The sources and BUILD's objects are copied with their times, so make
# rebuilds only the patched object, the engine library and test_cuda_emu; the unpatched emulated
# library runs beside it (--ops). The test must fail.
plant_cpu() {
    local name=$1 file=$2 subst=$3
    case "$name" in *"${PLANT_ONLY:-}"*) ;; *) return ;; esac
    local d=$W/cpu_$(echo "$name" | tr -c 'a-z0-9\n' '_')
    rm -rf "$d"; mkdir -p "$d"
    tar -c Makefile app engine traces views tests kernels | tar -x -C "$d"
    tar -c "$B"/engine "$B"/traces "$B"/views "$B"/tests/lib "$B"/*.a | tar -x -C "$d"
    perl -0pi -e "$subst" "$d/engine/cpu/$file"
    if cmp -s "engine/cpu/$file" "$d/engine/cpu/$file"; then
        echo "FAIL $name: the patch did not apply to engine/cpu/$file (update tests/plant_bugs.sh)"
        fail=$((fail+1)); return
    fi
    touch "$d/engine/cpu/$file"
    if ! make -s -C "$d" BUILD="$B" "$B/tests/test_cuda_emu" >"$d/build.log" 2>&1; then
        echo "FAIL $name: the planted copy does not build:"; grep -E 'error' "$d/build.log" | head -5
        fail=$((fail+1)); return
    fi
    KVS_CUDA_EMU_LIB=$PWD/$EMU/libkvscope_cuda_emu.so timeout 300 "$d/$B/tests/test_cuda_emu" --ops >"$d/test.log" 2>&1
    local rc=$?
    local why
    why=$(grep -E '^(FAIL|cuda-emu:)' "$d/test.log" | head -n 1 | cut -c1-150)
    if [ $rc -ne 0 ]; then
        echo "caught:     $name  ($(grep -cE '^FAIL' "$d/test.log") failed checks; first: ${why:-exit $rc})"
        pass=$((pass+1))
    else
        echo "NOT caught: $name"
        fail=$((fail+1))
    fi
}
# the CPU's lat_attend (engine/cpu/latent_attend.c) and lat_cosine twin (latent_pool.c)
plant_cpu "cpu lat_attend: fused decode slots combined without rescaling" latent_attend.c \
    's/float f = st->m\[sh\] == -INFINITY \? 0\.0f : expf\(st->m\[sh\] - M\);/float f = st->m[sh] == -INFINITY ? 0.0f : 1.0f;/'
plant_cpu "cpu lat_attend: chunk mass counts every query, not the window" latent_attend.c \
    's/if \(ev && i0 \+ i >= j->ev_from\)/if (ev)/'
plant_cpu "cpu lat_attend: fused decode masks by row index, not the stored position" latent_attend.c \
    's/if \(w->rp\[i\] > qp\) sr\[i\] = -INFINITY;/if (r0 + i > qp) sr[i] = -INFINITY;/'
plant_cpu "cpu lat_cosine: without the norm of one side" latent_pool.c \
    's/return aa > 0 && bb > 0 \? ab \/ sqrt\(aa \* bb\) : 0\.0;/return aa > 0 \&\& bb > 0 ? ab \/ sqrt(aa) : 0.0;/'

# CommonKV's token on the device (lat_copy's load, the eviction scores by position, the exact factor)
plant "lat_load: rows read from row 0, not row0" latent_pool.cu \
    's/for \(; i < count; i \+= stride\) x\[i\] = __half2float\(rows\[off \+ i\]\);/for (; i < count; i += stride) x[i] = __half2float(rows[i]);/'
plant "lat_mass_add: mass added at the row index, not its position" latent_pool.cu \
    's/if \(p >= 0 && p < n_score\) score\[p\] \+= mass\[i\];/if (i < n_score) score[i] += mass[i];/'
plant "lat_mass_add: only the first segment's rows" latent_pool.cu \
    's/for \(int s = 0, off = 0; s < n_segs; off \+= n\[s\], s\+\+\)/for (int s = 0, off = 0; s < 1 \&\& s < n_segs; off += n[s], s++)/'
plant "fp32 factor: uploaded as fp16" cuda_ctx.cu \
    's/if \(w->dtype == KVS_CUDA_F32\) \{ \/\* kept as given \*\//if (w->dtype == KVS_CUDA_F32) { w->dtype = KVS_CUDA_F16; \/* kept as given *\//'
plant_cpu "cpu lat_copy: every chunk of rows written at the first row" latent_pool.c \
    's/kvs_cpu_lat_store\(dst, df, darr, drow0 \+ i, k,/kvs_cpu_lat_store(dst, df, darr, drow0, k,/'

# fp16 cache stores saturate at +-65504 and count what they clamp, on both sides, bit for bit (issue 13:
# test_cache_saturated): the device's conversion (internal.cuh), each store kernel's count, the
# decodes for attention; the CPU twin's conversion (attention.c, vector body and scalar tail) and count
plant "fp16 cache: device stores round beyond 65504 to inf" internal.cuh \
    's/v = v > 0\.0f \? 65504\.0f : -65504\.0f;\n        \(\*over\)\+\+;/(*over)++;/'
plant "fp16 cache: K/V store never counted" kv_pool.cu 's/if \(over\) atomicAdd\(clamped, over\);//'
plant "fp16 cache: latent store never counted" latent_pool.cu 's/if \(over\) atomicAdd\(clamped, over\);//'
plant "fp16 cache: latent merge never counted" latent_pool.cu \
    's/(kvs_dev_f2h_sat\(acc, &over\);\n    \}\n)    if \(over\) atomicAdd\(clamped, over\);\n/$1/'
plant "fp16 cache: minicache norms never counted" minicache.cu 's/if \(over\) atomicAdd\(clamped, over\);//'
plant "fp16 cache: minicache norm rounded to inf" minicache.cu \
    's/nr\[\(2 \* kv\) \* nkv \+ h\] = kvs_dev_f2h_sat\(na, &over\);/nr[(2 * kv) * nkv + h] = __float2half_rn(na);/'
plant "fp16 cache: packed keys decode to inf" kv_quant.cu \
    's/k\[r\] = kvs_dev_f2h_sat\((.*?), &over\);/k[r] = __float2half_rn($1);/'
plant_cpu "cpu fp16 cache: vector stores round beyond 65504 to inf" attention.c \
    's/x = _mm256_max_ps\(lo, _mm256_min_ps\(hi, x\)\);//'
plant_cpu "cpu fp16 cache: scalar stores round beyond 65504 to inf" attention.c \
    's/f = f > 0\.0f \? 65504\.0f : -65504\.0f;//'
plant_cpu "cpu fp16 cache: vector stores not counted" attention.c \
    's/clamped \+= \(uint64_t\)__builtin_popcount\(\(unsigned\)over\);//'
plant_cpu "cpu fp16 cache: K/V pool keys not counted" kv_pool.c \
    's/L->clamped \+= kvs_f32_to_f16_row\(k /kvs_f32_to_f16_row(k /'

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
