// The Fashion-MNIST trainer: Linear(784 -> h) -> ReLU -> DMoE(grid, k, k_min) -> Linear(h -> 10), trained with Adam,
// over expert servers it starts (threads, or processes with --processes) or over an existing swarm
// (--initial-peers); --dense trains the same model with one dense ffn block of equal compute per sample instead.
// Fault injection on the expert calls (--latency-ms, --jitter, --failure-rate), checkpoints (--checkpoint,
// --resume). See --help.
#include "fashion_mnist.hpp"

int main(int argc, char** argv) {
  fashion::config c;
  CLI::App app("Train a DMoE model (or a dense one) on Fashion-MNIST over a swarm of expert servers");
  return fashion::main_with(app, c, argc, argv);
}
