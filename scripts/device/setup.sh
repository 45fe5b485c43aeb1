# Sourced by the device scripts (gpu_session.sh, gpu_population.sh, gpu_torch_population.sh):
# unpacks the carried CUDA build (.dev/cepa-cuda.xz) as /tmp/cepa and puts NVRTC on the
# loader's path. Appends what it found to "$S", the run's summary file.
xz -dc .dev/cepa-cuda.xz > /tmp/cepa.bin && chmod +x /tmp/cepa.bin
# A build from before build_cuda.sh linked its LLVM stubs in (session 17's runs) takes them
# preloaded, from .dev/libllvmstub.so, for cepa alone: PyTorch's own LLVM must not see them.
if [ -f .dev/libllvmstub.so ]; then
  printf '#!/bin/sh\nexec env LD_PRELOAD=%s /tmp/cepa.bin "$@"\n' "$PWD/.dev/libllvmstub.so" > /tmp/cepa
else
  cp /tmp/cepa.bin /tmp/cepa
fi
chmod +x /tmp/cepa
# NVRTC may sit outside the loader's path (the CUDA toolkit's lib64, or a pip wheel's lib); the
# toolkit's stubs folder must stay out (its libcuda.so is a link-time stub).
NV=$(find /usr/local /opt /usr/lib -name 'libnvrtc.so*' -not -path '*/stubs/*' -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH=${NV}${LD_LIBRARY_PATH:-}
echo "NVRTC folders: $NV" >> "$S"
