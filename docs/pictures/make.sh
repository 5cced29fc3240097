#!/usr/bin/env bash
# The README's pictures, made by the project's own commands. Run from the repository root after
#   ddpm train                 (the digits run, runs/digits)
#   ddpm train --data mnist --data-dir ../shared/data/mnist --out runs/mnist   (or MNIST_RUN=the run of
#       benchmarks/quality.py --data mnist, which trains the same command)
#   .venv/bin/python benchmarks/text_to_image.py --out benchmarks/results/text_to_image
# MNIST comes from ../shared/data/mnist (the IDX files; any folder of them works: MNIST=DIR).
set -euo pipefail
RUN=${RUN:-runs/digits}
MNIST_RUN=${MNIST_RUN:-runs/mnist}
MNIST=${MNIST:-../shared/data/mnist}
OUT=docs/pictures
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ddpm forward --data mnist --data-dir "$MNIST" --n 4 --t 0,5,10,50,100,250,500,1000 --out "$OUT/forward.png" -q
ddpm sample --checkpoint "$RUN" --n 64 --seed 0 --trajectory --out "$tmp/digits" -q
cp "$tmp/digits/grid.png" "$OUT/digits.png"
cp "$tmp/digits/trajectory.png" "$OUT/trajectory.png"
ddpm sample --checkpoint "$MNIST_RUN" --n 64 --seed 0 --out "$tmp/mnist" -q
cp "$tmp/mnist/grid.png" "$OUT/mnist.png"
cp benchmarks/results/text_to_image/prompts_latent.png "$OUT/text_to_image.png"
ls -l "$OUT"
