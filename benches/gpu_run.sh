#!/usr/bin/env bash
# One prepared run on a lent GPU machine (no network, files only through `carry`): checks CUDA
# against the CPU and measures moa-local and llama.cpp side by side on random-weight GGUFs that
# moa-local writes there. Results go to $OUT/all.txt (every
# step's output in order) and $OUT/steps.txt (exit codes and times); each step has its own timeout so
# a slow step leaves the others' results.
#
#   bash benches/gpu_run.sh DIR     # DIR holds moa-local.xz, device_path.xz, llama-bench.xz
#                                   # (optional: lib_tests.xz, moa-base.xz = a previous binary for A/B)
#   STEPS="cuda_test moa_bench" bash benches/gpu_run.sh DIR   # only these steps (default: all)
#
# The binaries are built on the CPU machine (see docs/gpu.md "Measuring on a lent GPU"):
# moa-local and the device_path test with `--features cuda`, CUDA_COMPUTE_CAP=90 and
# `-C target-cpu=x86-64-v3` (the GPU host's CPU differs), llama-bench from the llama-cpp-python
# sdist with GGML_CUDA=ON for sm_90. The CUDA runtime libraries come from that machine
# (PyTorch's pip folder, /usr/local/cuda); no stub library is ever put on its library path.
set -u
src=${1:?directory with the xz-compressed binaries}
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
bin=/tmp/moa-gpu; syn=/tmp/moa-syn; mkdir -p "$bin" "$syn"
for f in "$src"/*.xz; do xz -dc "$f" > "$bin/$(basename "$f" .xz)"; chmod +x "$bin/$(basename "$f" .xz)"; done
libdirs=$(timeout 60 find /usr /opt /root /home /lib /lib64 \( -name 'libcublas.so.13' -o -name 'libcudart.so.13' -o -name 'libcurand.so.10' -o -name 'libnvrtc.so.13' \) \
  -not -path '*/stubs/*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${libdirs}${LD_LIBRARY_PATH:-}"
step() { # name timeout command...
  local name=$1 t=$2; shift 2
  case " ${STEPS:-all} " in *" all "*|*" $name "*|*" ${name%%_*} "*) ;; *) return 0;; esac
  local s; s=$(date +%s%N)
  echo "=== $name: $*" >> "$OUT/all.txt"
  timeout "$t" "$@" >> "$OUT/all.txt" 2>&1; local rc=$?
  echo "$name rc=$rc $(( ($(date +%s%N) - s) / 1000000 )) ms" | tee -a "$OUT/steps.txt"
}
{ nvidia-smi; nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv; lscpu; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; } > "$OUT/machine.txt" 2>&1
ldd "$bin/moa-local" "$bin/llama-bench" >> "$OUT/machine.txt" 2>&1

# (a) CUDA vs CPU on small random-weight models (logits and 16 greedy tokens), and two models
# decoding at once on one device against their solo runs.
step cuda_test 150 "$bin/device_path" cuda_ --nocapture --test-threads 1
# (b) moa-local pp512/tg128 on 7B-shaped Q4_K_M files (written here, kept for llama-bench). The
# text output ends with each test's host time against device wait per pass.
step moa_bench 200 "$bin/moa-local" bench --device cuda:0 --synthetic qwen2:7b:q4_k_m --synthetic llama:7b:q4_k_m \
  --synthetic-dir "$syn" -p 512 -n 128 -r "${REPS:-3}"
# (c) llama.cpp on the same files (all layers on the GPU; flash attention off like moa-local).
step llama_bench 150 "$bin/llama-bench" -m "$syn/qwen2-7b-q4_k_m.gguf" -m "$syn/llama-7b-q4_k_m.gguf" -p 512 -n 128 -r "${REPS:-3}" -ngl 99 -fa 0
# (d) A/B in the same run: the previous binary (moa-base, when carried: before the shared masks
# and stacked projections) and this one with each host-cost setting back at candle's default.
if [ -x "$bin/moa-base" ]; then
  step moa_base 120 "$bin/moa-base" bench --device cuda:0 --synthetic qwen2:7b:q4_k_m --synthetic llama:7b:q4_k_m \
    --synthetic-dir "$syn" -p 512 -n 128 -r "${REPS:-3}"
fi
for cfg in MOA_CUDA_EVENTS=on; do
  (export "$cfg"; step "moa_${cfg#MOA_CUDA_}" 90 "$bin/moa-local" bench --device cuda:0 --synthetic qwen2:7b:q4_k_m \
    --synthetic-dir "$syn" -p 512 -n 128 -r "${REPS:-3}")
done
# (e) plan (free memory from the driver) and a 3-proposer MoA (text table: proposers done, wait for
# the first aggregate token, decode tok/s, per mode of the MoA bench), a stream per model (the
# default), then with STEPS=moa_modes one stream for all and one forward step at a time.
m3="$syn/qwen2-7b-q4_k_m.gguf,$syn/llama-7b-q4_k_m.gguf,$syn/qwen2-7b-q4_k_m.gguf"
step plan 30 "$bin/moa-local" plan --device cuda:0 --models "$m3" "hello"
step moa_default 150 "$bin/moa-local" bench --device cuda:0 --moa "$m3" --layers 2 --max-tokens 64 -r "${MOA_REPS:-1}"
case " ${STEPS:-all} " in *" moa_modes "*)
  for cfg in MOA_CUDA_STREAMS=shared MOA_CUDA_CONCURRENCY=steps; do
    (export "$cfg"; STEPS=all step "moa_${cfg#*=}" 150 "$bin/moa-local" bench --device cuda:0 --moa "$m3" --layers 2 --max-tokens 64 -r "${MOA_REPS:-1}")
  done;;
esac
# CPU kernels on this host's CPU (AVX-512 VNNI where it has it), when lib_tests is carried:
# correctness, then the Q4_0/Q5_0 prefill kernel AVX2 vs VNNI on a 0.5B-shaped file.
if [ -x "$bin/lib_tests" ]; then
  step cpu_kernels 60 "$bin/lib_tests" kernels:: --test-threads 4
  cat > /tmp/cpu_vnni.sh <<EOF2
for isa in avx2 best avx2 best; do
  MOA_KERNEL_ISA=\$isa "$bin/moa-local" bench --synthetic qwen2:0.5b:q4_k_m --synthetic-dir "$syn" -p 128 -n 0 -r 3 -t 4 2>&1 | sed "s/^/\$isa: /"
done
EOF2
  step cpu_vnni 90 bash /tmp/cpu_vnni.sh
fi
ls -la "$syn" >> "$OUT/steps.txt"
