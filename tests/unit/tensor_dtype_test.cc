// Tensor element types (core/tensor.h): int32 tensors next to the float default, typed accessors
// that refuse the other type, and the float behaviour unchanged.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "core/backend.h"
#include "core/tensor.h"

namespace moe {
namespace {

TEST(TensorDType, FloatIsTheDefault) {
  Tensor t({2, 3});
  EXPECT_EQ(t.dtype(), DType::kFloat32);
  EXPECT_EQ(t.device(), Device::kCPU);
  t.Fill(1.5f);
  EXPECT_EQ(t.ToVector(), std::vector<float>(6, 1.5f));
  const Tensor f = Tensor::FromVector({2}, {1.f, -2.f});
  EXPECT_EQ(f.dtype(), DType::kFloat32);
  EXPECT_EQ(f.at(1), -2.f);
}

TEST(TensorDType, Int32HoldsIntegersExactly) {
  Tensor t({4}, Device::kCPU, DType::kInt32);
  EXPECT_EQ(t.dtype(), DType::kInt32);
  EXPECT_EQ(t.numel(), 4);
  int32_t* p = t.int32_data();
  // Values a float cannot hold exactly must survive: the buffer is not a float buffer.
  const std::vector<int32_t> values = {0, -7, 16777217, 2147483647};
  for (int i = 0; i < 4; ++i) p[i] = values[i];
  EXPECT_EQ(t.ToInt32Vector(), values);
}

TEST(TensorDType, ZerosAndZeroWorkForInt32) {
  Tensor t = Tensor::Zeros({3}, Device::kCPU, DType::kInt32);
  EXPECT_EQ(t.ToInt32Vector(), std::vector<int32_t>(3, 0));
  t.int32_data()[1] = 5;
  t.Zero();
  EXPECT_EQ(t.ToInt32Vector(), std::vector<int32_t>(3, 0));
}

TEST(TensorDType, FromInt32VectorCloneReshapeAndCopyKeepTheType) {
  const Tensor a = Tensor::FromInt32Vector({2, 2}, {1, 2, 3, 4});
  EXPECT_EQ(a.dtype(), DType::kInt32);
  const Tensor c = a.Clone();
  EXPECT_EQ(c.dtype(), DType::kInt32);
  EXPECT_NE(c.int32_data(), a.int32_data());
  EXPECT_EQ(c.ToInt32Vector(), (std::vector<int32_t>{1, 2, 3, 4}));
  const Tensor r = a.Reshape({4});
  EXPECT_EQ(r.dtype(), DType::kInt32);
  EXPECT_EQ(r.int32_data(), a.int32_data());
  Tensor d({4}, Device::kCPU, DType::kInt32);
  d.CopyFrom(r);
  EXPECT_EQ(d.ToInt32Vector(), (std::vector<int32_t>{1, 2, 3, 4}));
}

TEST(TensorDType, BackendNewTensorHonoursTheType) {
  const Tensor t = BackendFor(Device::kCPU).NewTensor({5}, DType::kInt32);
  EXPECT_EQ(t.dtype(), DType::kInt32);
  EXPECT_EQ(t.numel(), 5);
  EXPECT_EQ(BackendFor(Device::kCPU).NewTensor({5}).dtype(), DType::kFloat32);
}

TEST(TensorDType, SizesAndNames) {
  EXPECT_EQ(DTypeSize(DType::kFloat32), 4u);
  EXPECT_EQ(DTypeSize(DType::kInt32), 4u);
  EXPECT_STREQ(DTypeName(DType::kFloat32), "float32");
  EXPECT_STREQ(DTypeName(DType::kInt32), "int32");
}

TEST(TensorDTypeDeathTest, FloatAccessOfAnInt32TensorIsFatal) {
  Tensor t({2}, Device::kCPU, DType::kInt32);
  EXPECT_DEATH(t.data(), "holds int32, read as float32");
  EXPECT_DEATH(t.Fill(1.f), "holds int32, read as float32");
  EXPECT_DEATH(t.ToVector(), "holds int32, read as float32");
}

TEST(TensorDTypeDeathTest, Int32AccessOfAFloatTensorIsFatal) {
  Tensor t({2});
  EXPECT_DEATH(t.int32_data(), "holds float32, read as int32");
  EXPECT_DEATH(t.ToInt32Vector(), "holds float32, read as int32");
}

TEST(TensorDTypeDeathTest, CopyAcrossTypesIsFatal) {
  Tensor f({2});
  const Tensor i({2}, Device::kCPU, DType::kInt32);
  EXPECT_DEATH(f.CopyFrom(i), "CopyFrom int32 into float32");
}

}  // namespace
}  // namespace moe
