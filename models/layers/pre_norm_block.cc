#include "models/layers/pre_norm_block.h"

#include <glog/logging.h>

#include <utility>

namespace moe {

namespace {
std::vector<std::unique_ptr<Layer>> Branch(std::unique_ptr<Layer> a, std::unique_ptr<Layer> b,
                                           std::unique_ptr<Layer> last) {
  std::vector<std::unique_ptr<Layer>> v;
  v.push_back(std::move(a));
  v.push_back(std::move(b));
  if (last) v.push_back(std::move(last));
  return v;
}
}  // namespace

PreNormBlock::PreNormBlock(std::unique_ptr<Layer> ln1, std::unique_ptr<Layer> attn,
                           std::unique_ptr<Layer> ln2, std::unique_ptr<Layer> mlp,
                           std::unique_ptr<Layer> attn_drop, std::unique_ptr<Layer> mlp_drop)
    : attn_(attn.get()), mlp_(mlp.get()) {
  CHECK(attn_ != nullptr && mlp_ != nullptr) << "PreNormBlock: null attention or MLP";
  attn_part_ =
      std::make_unique<Residual>(Branch(std::move(ln1), std::move(attn), std::move(attn_drop)));
  mlp_part_ =
      std::make_unique<Residual>(Branch(std::move(ln2), std::move(mlp), std::move(mlp_drop)));
}

Tensor PreNormBlock::Forward(const Tensor& x) { return mlp_part_->Forward(attn_part_->Forward(x)); }

Tensor PreNormBlock::Backward(const Tensor& dy) {
  return attn_part_->Backward(mlp_part_->Backward(dy));
}

std::vector<Parameter*> PreNormBlock::Parameters() {
  std::vector<Parameter*> ps = attn_part_->Parameters();
  for (Parameter* p : mlp_part_->Parameters()) ps.push_back(p);
  return ps;
}

void PreNormBlock::MoveTo(Device d) {
  attn_part_->MoveTo(d);
  mlp_part_->MoveTo(d);
}

}  // namespace moe
