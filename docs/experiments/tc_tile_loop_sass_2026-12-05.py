#!/usr/bin/env python3
"""Static SASS size of the tensor-core encoder's codeword-tile loop.

Counts the instructions of the innermost loop around the HMMA instructions
of each RvqEncodeTcKernel instance, from a cuobjdump dump of the sm_90
object that tests/gpu/run.sh --build-only compiles (no GPU needed):

  cuobjdump -sass build-gpu/CMakeFiles/vqkv_gpu_kernels.dir/*/kernels/cuda/rvq_encode_tc.cu.o > tc.sass
  python3 docs/experiments/tc_tile_loop_sass_2026-12-05.py tc.sass

(cuobjdump is not in the toolkit of this VM; `pip download
nvidia-cuda-cuobjdump` has it.) The loop may hold one tile or the compiler's
unrolled copies of several: the HMMA count says which (kSteps HMMA a tile).
"""
import re
import subprocess
import sys


def main(path):
    text = open(path).read()
    for part in re.split(r"\n\s*Function : ", text)[1:]:
        mangled = part.split("\n", 1)[0].strip()
        name = subprocess.run(["c++filt", mangled], capture_output=True,
                              text=True).stdout.strip()
        name = name.replace("(anonymous namespace)", "").split("(")[0]
        if "RvqEncodeTcKernel<" not in name:
            continue
        ins = [(int(a, 16), t.strip()) for a, t in
               re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", part)]
        hmma = [a for a, t in ins if "HMMA" in t]
        if not hmma:
            continue
        # The innermost backward branch from after the first HMMA to at or
        # before it.
        loops = []
        for a, t in ins:
            m = re.search(r"BRA\s+(0x[0-9a-f]+)", t)
            if m and a > hmma[0] and int(m.group(1), 16) <= hmma[0]:
                loops.append((a - int(m.group(1), 16), int(m.group(1), 16), a))
        if not loops:
            continue
        _, lo, hi = min(loops)
        body = [t for a, t in ins if lo <= a <= hi]
        print(f"{name.split('::')[-1]}: {len(body)} instructions, "
              f"{sum('HMMA' in t for t in body)} HMMA, "
              f"{sum('BRA' in t for t in body)} branches")


if __name__ == "__main__":
    main(sys.argv[1])
