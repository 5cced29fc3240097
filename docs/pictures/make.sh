#!/usr/bin/env bash
# The README's pictures, made by the project's own commands. Run from the repository root after
#   ddpm train                 (the digits run, runs/digits)
#   ddpm train --data mnist --data-dir ../shared/data/mnist --out runs/mnist   (or MNIST_RUN=the run of
#       benchmarks/quality.py --data mnist, which trains the same command)
#   .venv/bin/python benchmarks/text_to_image.py --out benchmarks/results/text_to_image
#   the CIFAR-10 run of benchmarks/results/cifar10_cpu/ (its results.md ends with the command; CIFAR_RUN=
#       OUT/ours of that command)
# MNIST comes from ../shared/data/mnist (the IDX files; any folder of them works: MNIST=DIR).
set -euo pipefail
RUN=${RUN:-runs/digits}
MNIST_RUN=${MNIST_RUN:-runs/mnist}
MNIST=${MNIST:-../shared/data/mnist}
CIFAR_RUN=${CIFAR_RUN:-bench_out/q_cifar_cpu/ours}
OUT=docs/pictures
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ddpm forward --data mnist --data-dir "$MNIST" --n 4 --t 0,5,10,50,100,250,500,1000 --out "$OUT/forward.png" -q
ddpm sample --checkpoint "$RUN" --n 64 --seed 0 --trajectory --out "$tmp/digits" -q
cp "$tmp/digits/grid.png" "$OUT/digits.png"
cp "$tmp/digits/trajectory.png" "$OUT/trajectory.png"
ddpm sample --checkpoint "$MNIST_RUN" --n 64 --seed 0 --out "$tmp/mnist" -q
cp "$tmp/mnist/grid.png" "$OUT/mnist.png"
ddpm sample --checkpoint "$CIFAR_RUN" --n 64 --seed 0 --sampler ddim --steps 100 --out "$tmp/cifar" -q
cp "$tmp/cifar/grid.png" "$OUT/cifar10.png"
cp benchmarks/results/text_to_image/prompts_latent.png "$OUT/text_to_image.png"
ls -l "$OUT"
