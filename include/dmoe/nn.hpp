// Umbrella for dmoe's nn layer: modules, losses, initialisers and experts.
#pragma once

#include <dmoe/nn/activation.hpp>
#include <dmoe/nn/adam.hpp>
#include <dmoe/nn/attention.hpp>
#include <dmoe/nn/checkpoint.hpp>
#include <dmoe/nn/dropout.hpp>
#include <dmoe/nn/embedding.hpp>
#include <dmoe/nn/expert.hpp>
#include <dmoe/nn/experts.hpp>
#include <dmoe/nn/init.hpp>
#include <dmoe/nn/layer_norm.hpp>
#include <dmoe/nn/linear.hpp>
#include <dmoe/nn/loss.hpp>
#include <dmoe/nn/module.hpp>
#include <dmoe/nn/optimizer.hpp>
#include <dmoe/nn/parameter.hpp>
#include <dmoe/nn/schedule.hpp>
#include <dmoe/nn/sequential.hpp>
#include <dmoe/nn/sgd.hpp>
#include <dmoe/nn/transformer_block.hpp>
