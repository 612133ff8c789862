// The demo (`cmake --workflow --preset demo`): a DMoE model trained on Fashion-MNIST over a swarm in one process.
// A DHT node, 4 expert servers hosting the 16 ffn experts of a 4 x 4 grid, and a trainer whose model is
// Linear(784 -> 256) -> ReLU -> DMoE(grid 4 x 4, k = 4, k_min = 2) -> Linear(256 -> 10), trained with Adam. Halfway
// through, server 1 is stopped; a quarter later it starts again from the checkpoint it wrote; the training goes on.
// Prints progress, the test accuracy, where the metrics CSV and the plot are, and last a JSON line. Every flag of
// train_fashion_mnist works here too (e.g. --epochs 0.1 for a short run).
#include "fashion_mnist.hpp"

int main(int argc, char** argv) {
  fashion::config c;
  c.program = "fashion_mnist";
  c.epochs = 5;
  c.stop_server_at = 0.5;
  c.restart_server_at = 0.75;
  c.out = "demo-out";
  CLI::App app("dmoe demo: a DMoE model trained on Fashion-MNIST over 4 expert servers; one fails and comes back");
  return fashion::main_with(app, c, argc, argv);
}
