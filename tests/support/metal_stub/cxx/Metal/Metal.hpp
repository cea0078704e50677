// tests/metal_stub/cxx/Metal/Metal.hpp: declarations standing in for Apple's
// metal-cpp, just enough for MLX's Metal backend headers
// (mlx/backend/metal/device.h, utils.h) and fastmuon's eval_gpu code to be
// type-checked by g++ -fsyntax-only -D_METAL_ on Linux
// (tests/test_metal_sources.py). Nothing here is defined: it never links.
#pragma once

#include <cstddef>
#include <cstdint>

namespace NS {

using UInteger = std::uintptr_t;
using Integer = std::intptr_t;

enum StringEncoding : UInteger { UTF8StringEncoding = 4 };

class Object {
 public:
  void release();
  Object* retain();
};

class String : public Object {
 public:
  static String* string(const char* cstr, StringEncoding encoding);
  const char* utf8String() const;
};

class Error : public Object {
 public:
  String* localizedDescription() const;
};

class AutoreleasePool : public Object {};

template <class T>
class SharedPtr {
 public:
  SharedPtr();
  ~SharedPtr();
  SharedPtr(const SharedPtr&);
  SharedPtr(SharedPtr&&) noexcept;
  SharedPtr& operator=(const SharedPtr&);
  SharedPtr& operator=(SharedPtr&&) noexcept;
  T* get() const;
  T* operator->() const;
  explicit operator bool() const;
};

template <class T>
SharedPtr<T> TransferPtr(T* p);
template <class T>
SharedPtr<T> RetainPtr(T* p);

} // namespace NS

namespace MTL {

enum DataType : NS::UInteger { DataTypeNone = 0 };
enum BarrierScope : NS::UInteger { BarrierScopeBuffers = 1 };

struct Size {
  Size();
  Size(NS::UInteger width, NS::UInteger height, NS::UInteger depth);
  NS::UInteger width;
  NS::UInteger height;
  NS::UInteger depth;
};

class Resource : public NS::Object {};
class Allocation : public NS::Object {};
class Buffer : public Resource {
 public:
  void* contents();
  NS::UInteger length() const;
};
class Heap : public NS::Object {};
class Fence : public NS::Object {};
class Function : public NS::Object {};
class LinkedFunctions : public NS::Object {};
class Library : public NS::Object {};
class ResidencySet : public NS::Object {};
class Device : public NS::Object {};

class ComputePipelineState : public NS::Object {
 public:
  NS::UInteger maxTotalThreadsPerThreadgroup() const;
  NS::UInteger threadExecutionWidth() const;
};

class ComputeCommandEncoder : public NS::Object {
 public:
  void setComputePipelineState(const ComputePipelineState* state);
  void setBuffer(const Buffer* buffer, NS::UInteger offset, NS::UInteger index);
  void setBytes(const void* bytes, NS::UInteger length, NS::UInteger index);
  void setThreadgroupMemoryLength(NS::UInteger length, NS::UInteger index);
  void dispatchThreads(Size threadsPerGrid, Size threadsPerThreadgroup);
  void dispatchThreadgroups(Size threadgroupsPerGrid, Size threadsPerThreadgroup);
  void memoryBarrier(BarrierScope scope);
};

class CommandBuffer : public NS::Object {
 public:
  NS::String* label() const;
  void setLabel(const NS::String* label);
};

class CommandQueue : public NS::Object {
 public:
  void setLabel(const NS::String* label);
};

} // namespace MTL
