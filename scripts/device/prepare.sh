#!/usr/bin/env bash
# Lays out .dev/, what the device scripts carry (`carry: [".dev"]`), inside the 64 MiB the device
# tool takes with the repository: the CUDA build (scripts/device/build_cuda.sh writes
# .dev/cepa-cuda.xz) and a CIFAR-10 subset from ../shared/data: data_batch_1 (10,000 training
# images) and the first 2,000 test records. .dev/ is kept out of git by .git/info/exclude.
set -eu
cd "$(dirname "$0")/../.."
SRC=${1:-../shared/data/cifar10}
mkdir -p .git/info .dev/data/cifar10
grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo '/.dev/' >> .git/info/exclude
cp "$SRC/data_batch_1.bin.gz" "$SRC/batches.meta.txt" .dev/data/cifar10/
zcat "$SRC/test_batch.bin.gz" | head -c $((2000 * 3073)) | gzip -9 > .dev/data/cifar10/test_batch.bin.gz
# EXTRA_TRAIN=N adds the first N records of data_batch_2 (session 30: 3,500, which fits beside the
# binary once eval/ is kept out of the transfer; see scripts/device/gpu_population_scan.sh).
if [ "${EXTRA_TRAIN:-0}" -gt 0 ]; then
  zcat "$SRC/data_batch_2.bin.gz" | head -c $((EXTRA_TRAIN * 3073)) | gzip -9 > .dev/data/cifar10/data_batch_2.bin.gz
else
  rm -f .dev/data/cifar10/data_batch_2.bin.gz
fi
chmod -R u+w .dev
[ -f .dev/cepa-cuda.xz ] || echo "no .dev/cepa-cuda.xz yet: run scripts/device/build_cuda.sh"
du -sh .dev
