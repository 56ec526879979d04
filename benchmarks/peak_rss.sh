#!/bin/sh
# Peak resident memory (/usr/bin/time's maxrss) of a short `chainrule train gated_pixelcnn` on
# binarized MNIST (3 steps; validation on the 10k validation images, test on the 10k test images,
# one sample) and of `chainrule eval` on its test set, for two source trees side by side:
#
#   sh benchmarks/peak_rss.sh OLD_SRC NEW_SRC      # e.g. a `git archive` of the old commit's src/ and ./src
#
# The model is tiny on purpose: the data and the evaluation dominate the memory.
OLD=$1; NEW=$2; OUT=${OUT:-/tmp/chainrule_peak_rss}
export CHAINRULE_CACHE_DIR=$OUT/cache OMP_NUM_THREADS=1
mkdir -p $OUT
for v in old new; do
  if [ $v = old ]; then SRC=$OLD; else SRC=$NEW; fi
  rm -rf $OUT/run_$v
  PYTHONPATH=$SRC /usr/bin/time -f "$v train maxrss_kb=%M wall_s=%e" python -m chainrule train gated_pixelcnn \
    --dataset binarized-mnist -p channels=16 -p num_layers=2 -p head_channels=16 --epochs 1 --steps-per-epoch 3 \
    --num-samples 1 --threads 1 --precision float32 --out $OUT/run_$v > $OUT/${v}_train.log 2>&1
  tail -n 1 $OUT/${v}_train.log
  PYTHONPATH=$SRC /usr/bin/time -f "$v eval maxrss_kb=%M wall_s=%e" python -m chainrule eval $OUT/run_$v \
    --split test --threads 1 > $OUT/${v}_eval.log 2>&1
  tail -n 1 $OUT/${v}_eval.log
done
